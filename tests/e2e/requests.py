"""Valid requests for every catalogue item, from tests/vectors/catalogue_requests.json."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from tongban.core.catalogue import Catalogue
from tongban.v1 import exchange_pb2

VECTORS = Path(__file__).parent.parent / "vectors" / "catalogue_requests.json"
KINDS = {"person": exchange_pb2.APPLICANT_KIND_PERSON, "enterprise": exchange_pb2.APPLICANT_KIND_ENTERPRISE}


@functools.cache
def _catalogue() -> Catalogue:
    return Catalogue.load()


def govern(req: exchange_pb2.ServiceRequest) -> None:
    """The approval, legal reference and sensitivity flag the catalogue item asks for."""
    item = _catalogue().get(req.service_code)
    req.governance.legal_reference = "国办发〔2020〕35号"
    if item is not None and item.share_attribute == exchange_pb2.SHARE_ATTRIBUTE_CONDITIONAL:
        req.governance.approval_reference = "SZ-APPROVAL-2026-0001"
    req.governance.sensitive = item is not None and item.sensitive


def cases() -> list[dict[str, Any]]:
    return list(json.loads(VECTORS.read_text(encoding="utf-8")))


def build(case: dict[str, Any], *, to: str = "320200") -> exchange_pb2.QueryRequest:
    req = exchange_pb2.ServiceRequest(service_code=case["service_code"], target_region=to)
    req.applicant.kind = KINDS[case["applicant"]["kind"]]
    req.applicant.id_no = case["applicant"]["id_no"]
    req.fields.update(case.get("fields", {}))
    req.governance.purpose_code = "KSTB_CASE_HANDLING"
    req.governance.purpose_text = "跨省通办 test"
    req.governance.legal_basis = exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY
    govern(req)
    return exchange_pb2.QueryRequest(request=req)


def pension() -> exchange_pb2.QueryRequest:
    return build(next(c for c in cases() if c["service_code"] == "SBJFJLCX0001"))
