"""Per-partner rate limits: a partner over its rate gets RESOURCE_EXHAUSTED with RetryInfo, and
nothing it sent beyond the limit is processed or recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.ratelimit import PartnerLimiter
from tests.conftest import SZ, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.v1 import exchange_pb2


@pytest.fixture
async def limited(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    # A rate so low that refilling during the test cannot matter: 3 calls, then limited.
    s = await start_stack(
        topology, state, config={"gateway": {"rate_per_partner_s": 0.001, "burst_per_partner": 3}}
    )
    try:
        yield s
    finally:
        await stop_stack(s)


def retry_delay_s(err: grpc.aio.AioRpcError) -> float:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for any_ in status_pb2.Status.FromString(value).details:
                if any_.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    any_.Unpack(info)
                    return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("no RetryInfo")


async def test_rate_limit_exceeded_is_resource_exhausted_with_retry_info(limited: Stack) -> None:
    stub = limited.stub(SZ)
    for _ in range(3):  # the burst: answered (NOT_FOUND: no such case), nothing recorded
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetCase(exchange_pb2.GetCaseRequest(case_no="440300-20260101-0000000000"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(pension(), timeout=5)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED and d.reason == "RATE_LIMITED" and d.retry
    assert retry_delay_s(err.value) > 1  # about 1/rate: a thousand seconds here
    assert await limited.nodes[SZ].ledger.size() == 0
    assert limited.nodes["320200"].backend_calls() == 0


def test_buckets_are_per_partner_and_refill() -> None:
    now = [0.0]
    limiter = PartnerLimiter(2.0, 2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token at 2/s
    assert limiter.take("b") == 0.0  # another partner has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert PartnerLimiter(0, 1).take("a") == 0.0  # rate 0: no limit
