"""Submit helpers shared by the durable-delivery tests."""

from __future__ import annotations

import grpc

from tests.e2e.requests import build, cases
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

CASE_SERVICE = "YLBXZYJX0001"  # 企业职工基本养老保险关系转移接续 (全程网办)


def submit_request(
    service: str = CASE_SERVICE, *, to: str = "320200", key: str = "", ttl_s: float = 0
) -> exchange_pb2.SubmitRequest:
    case = next(c for c in cases() if c["service_code"] == service)
    req = exchange_pb2.SubmitRequest(request=build(case, to=to).request)
    req.request.idempotency_key = key
    if ttl_s:
        req.time_to_live.FromMilliseconds(int(ttl_s * 1000))
    return req


async def watch(
    stub: exchange_pb2_grpc.ExchangeStub, case_no: str, *, after: int = 0, timeout: float = 20
) -> list[exchange_pb2.CaseEvent]:
    """Every event WatchCase streams until it ends (terminal status or failed delivery)."""
    out = []
    call = stub.WatchCase(
        exchange_pb2.WatchCaseRequest(case_no=case_no, after_sequence=after), timeout=timeout
    )
    async for item in call:
        out.append(item.event)
    assert await call.code() == grpc.StatusCode.OK
    return out
