"""What the back-end API's tests share: the region's keys, a case request, a config, a stand-in for
the case worker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from connectors.adapters import AdapterRequest, StatusUpdate
from connectors.state import OutEvent
from tongban.core.errors import NotFound, Reason
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.message_ids import new_case_no, new_message_id
from tongban.core.privacy import Correlator
from tongban.runtime.config import Config
from tongban.runtime.node import RegionSecrets

WX = "320200"
SERVICE = "YLBXZYJX0001"
ID_NO = "11010519491231002X"
NAME = "张三"
PHONE = "13912345678"


def region_keys(region: str = WX) -> RegionSecrets:
    """A region's signing and sealing keys, as a connector holds them."""
    return RegionSecrets(
        [SigningKey.generate(region)],
        [SealingKey.generate(region)],
        Correlator(os.urandom(32)),
        region=region,
    )


def case_request(message_id: str = "", *, service: str = SERVICE) -> AdapterRequest:
    """A verified, opened Submit as the case worker hands it to an adapter."""
    return AdapterRequest(
        message_id=message_id or new_message_id(),
        service_code=service,
        requester_region="440300",
        applicant_kind="person",
        applicant_id=ID_NO,
        applicant_name=NAME,
        applicant_phone=PHONE,
        fields={
            "transfer_out_region": "440300",
            "transfer_in_region": "320200",
            "new_employer_name": "无锡某公司",
        },
        case_no=new_case_no("440300"),
        origin_system="szgov-ywtb",
        purpose="KSTB_CASE_HANDLING",
    )


KNOWN_CASE = new_case_no("440300")


class RecordingCaseWorker:
    """Stands in for the case worker's ``report_status``: records each report, numbers it after the
    last, knows one case; with ``hold`` set, each report waits until it is released (``started`` says
    one has begun)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, list[StatusUpdate]]] = []
        self.report_ids: list[str] = []
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.seq = 2

    async def report_status(
        self, case_no: str, updates: Sequence[StatusUpdate], *, report_id: str = ""
    ) -> list[OutEvent]:
        self.report_ids.append(report_id)
        if case_no != KNOWN_CASE:
            raise NotFound("this region has no such case", reason=Reason.CASE_NOT_FOUND)
        self.started.set()
        if self.hold is not None:
            await self.hold.wait()
        self.seq += 1
        self.reports.append((case_no, list(updates)))
        return [OutEvent(new_message_id(), self.seq, self.seq, "tb.v1.out", b"")]


def api_config(tmp_path: Path, **backend_api: object) -> Config:
    cfg = Config(base_dir=tmp_path)
    cfg.region.code = WX
    cfg.gateway.dev_mode = True
    cfg.backend_api.listen = "127.0.0.1:0"
    cfg.backend_api.lease_s = 60.0
    for key, value in backend_api.items():
        setattr(cfg.backend_api, key, value)
    return cfg
