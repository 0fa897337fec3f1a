"""Valid requests for every catalogue item, from tests/vectors/catalogue_requests.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tongban.v1 import exchange_pb2

VECTORS = Path(__file__).parent.parent / "vectors" / "catalogue_requests.json"
KINDS = {"person": exchange_pb2.APPLICANT_KIND_PERSON, "enterprise": exchange_pb2.APPLICANT_KIND_ENTERPRISE}


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
    return exchange_pb2.QueryRequest(request=req)


def pension() -> exchange_pb2.QueryRequest:
    return build(next(c for c in cases() if c["service_code"] == "SBJFJLCX0001"))
