"""Limits a hostile or broken caller runs into: in-flight RPCs per connection, envelope size at the
providing connector. (Message size at the gateway and the per-partner rate: test_envelope_refusals,
test_rate_limit.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import craft, send
from tests.e2e.test_outcomes import SlowAdapter
from tests.helpers import eventually
from tongban.devstate import DevState
from tongban.natsserver import Topology
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

PENSION = "SBJFJLCX0001"


@pytest.fixture
async def slow_two_streams(topology: Topology, state: DevState) -> AsyncIterator[tuple[Stack, SlowAdapter]]:
    adapter = SlowAdapter()
    stack = await start_stack(
        topology,
        state,
        adapters={WX: {PENSION: adapter}},  # type: ignore[dict-item]
        config={"gateway": {"max_in_flight_per_connection": 2}},
    )
    yield stack, adapter
    adapter.release.set()
    await stop_stack(stack)


async def test_in_flight_requests_per_connection_are_bounded(
    slow_two_streams: tuple[Stack, SlowAdapter],
) -> None:
    """Two slow calls fill a connection's bound of two: a third call on that connection is refused
    at once with RetryInfo, while another connection is served; once the two end, so is the first."""
    stack, adapter = slow_two_streams
    address = stack.nodes[SZ].address
    own = [("grpc.use_local_subchannel_pool", 1)]  # two channels, two connections (no shared subchannel)
    async with (
        grpc.aio.insecure_channel(address, options=own) as first,
        grpc.aio.insecure_channel(address, options=own) as second,
    ):
        busy = exchange_pb2_grpc.ExchangeStub(first)
        calls = [asyncio.ensure_future(busy.Query(pension(), timeout=20)) for _ in range(2)]
        await eventually(lambda: stack.nodes[WX].backend_calls() == 2, what="two calls at the back end")
        probe = exchange_pb2.GetCaseRequest(case_no="KS440300000000000000")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await busy.GetCase(probe, timeout=5)
        d = details_of(err.value)
        assert (d.code, d.reason, d.retry) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_IN_FLIGHT", True)
        assert d.message == "2 calls are already in flight on this connection (at most 2)"
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await exchange_pb2_grpc.ExchangeStub(second).GetCase(probe, timeout=5)
        assert other.value.code() == grpc.StatusCode.NOT_FOUND  # served: the bound is per connection
        adapter.release.set()
        for answer in await asyncio.gather(*calls):
            assert answer.data["status"] == "late"
        with pytest.raises(grpc.aio.AioRpcError) as freed:
            await busy.GetCase(probe, timeout=5)
        assert freed.value.code() == grpc.StatusCode.NOT_FOUND
    # The two served queries and nothing else: a refused call is not a request in the ledger.
    events = sorted(e.event.name for e in await stack.nodes[SZ].ledger.entries())
    assert events == ["RESPONDED", "RESPONDED", "SUBMITTED", "SUBMITTED"]


def _with_unknown_field(data: bytes, size: int) -> bytes:
    """``data`` plus an unknown length-delimited field 15 of ``size`` bytes: still a valid,
    validly signed envelope to a protobuf parser (signatures cover header and body only)."""
    n, length = size, bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return data + bytes([15 << 3 | 2]) + bytes(length) + b"\0" * size


async def test_oversized_envelope_is_refused_unread_by_the_connector(stack: Stack) -> None:
    wx = stack.nodes[WX]
    limit = wx.cfg.connector.max_envelope_bytes
    data = _with_unknown_field(craft(stack).data, limit + 1)
    assert len(data) < 4 << 20  # under NATS max_payload: only the connector's own limit stops it
    problem = await send(stack, data)
    assert (problem.reason, problem.code) == (
        "ENVELOPE_TOO_LARGE",
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    )
    assert problem.message == f"envelope of {len(data)} bytes is over the limit of {limit}"
    assert [(e.event, e.detail) for e in await wx.ledger.entries()] == [
        (Event.REJECTED, "ENVELOPE_TOO_LARGE")
    ]
    assert wx.backend_calls() == 0
    # The same envelope without the padding is served: the padding alone made the difference.
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX
