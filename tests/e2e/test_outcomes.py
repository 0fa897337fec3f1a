"""Outcomes other than an answer: deadlines, unreachable regions, refusals and failures on the far side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import nats
import pytest

from connectors.adapters import AdapterRequest
from ledger import Event
from tests.adapters import FailingAdapter
from tests.conftest import QD, SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.helpers import eventually, note
from tongban.core import subjects
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology

# A subject only the test's subscriber serves, inside what the hub lets Shenzhen publish to and
# Wuxi subscribe to (Wuxi's inbox space).
PROBE = f"{subjects.inbox_prefix(WX)}.probe.sink"


class SlowAdapter:
    """A back end that answers only after ``release`` is set (never, unless the test sets it)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        self.started.set()
        await self.release.wait()
        return {"status": "late"}


async def _stack_with(topology: Topology, state: DevState, adapter: object) -> Stack:
    return await start_stack(topology, state, adapters={WX: {"SBJFJLCX0001": adapter}})  # type: ignore[dict-item]


@pytest.fixture
async def slow(topology: Topology, state: DevState) -> AsyncIterator[tuple[Stack, SlowAdapter]]:
    adapter = SlowAdapter()
    stack = await _stack_with(topology, state, adapter)
    yield stack, adapter
    adapter.release.set()
    await stop_stack(stack)


async def test_slow_back_end_answers_deadline_exceeded_and_both_ledgers_agree(
    slow: tuple[Stack, SlowAdapter],
) -> None:
    """The header carries the gateway's wait deadline; the connector stops the back end just before
    it, so the caller learns why (BACKEND_TIMEOUT) and both ledgers say the same."""
    stack, adapter = slow
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=0.5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.DEADLINE_EXCEEDED and d.reason == "BACKEND_TIMEOUT"
    assert adapter.started.is_set()
    sz = await stack.nodes[SZ].ledger.entries()
    assert [(e.event, note(e)) for e in sz] == [(Event.SUBMITTED, ""), (Event.RESPONDED, "BACKEND_TIMEOUT")]
    wx = await stack.nodes[WX].ledger.entries()
    assert [(e.event, note(e)) for e in wx] == [(Event.RECEIVED, ""), (Event.PROCESSED, "BACKEND_TIMEOUT")]


async def test_no_reply_within_deadline_is_expired(stack: Stack) -> None:
    """A responder that swallows requests (a stuck peer) leaves the gateway to give up on its own."""
    node = stack.nodes[WX]
    assert node.connector is not None
    await node.connector.stop()
    sink = await stack.nats(WX)
    swallowed: list[str] = []

    async def swallow(msg: object) -> None:
        swallowed.append(getattr(msg, "subject", ""))

    async def pong(msg: object) -> None:
        await msg.respond(b"")  # type: ignore[attr-defined]

    await sink.subscribe(f"tb.v1.rpc.{WX}.>", cb=swallow)
    await sink.subscribe(PROBE, cb=pong)
    await sink.flush()
    # Interest travels leaf → hub → leaf in order: once the probe answers from Shenzhen's leaf,
    # the swallowing subscription (made first) is known there too.
    probe = await stack.nats(SZ)

    async def probe_answers() -> bool:
        try:
            await probe.request(PROBE, b"", timeout=0.5)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    await eventually(probe_answers, what="sink subscription visible from Shenzhen")
    await probe.close()
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stack.stub(SZ).Query(pension(), timeout=1.0)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert swallowed
        sz = await stack.nodes[SZ].ledger.entries()
        assert [(e.event, note(e)) for e in sz] == [
            (Event.SUBMITTED, ""),
            (Event.EXPIRED, "NO_REPLY_IN_DEADLINE"),
        ]
    finally:
        await sink.close()


async def test_no_connector_in_target_region_is_unavailable(stack: Stack) -> None:
    q = pension()
    q.request.target_region = QD  # in the registry, but no connector runs there
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(q, timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.UNAVAILABLE and d.reason == "NO_RESPONDERS" and d.retry
    assert [e.event for e in await stack.nodes[SZ].ledger.entries()] == [Event.SUBMITTED, Event.REJECTED]


async def test_receiving_region_nats_down_is_unavailable(stack: Stack) -> None:
    await stack.topology.leaves[WX].stop()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unknown_applicant_is_not_found(stack: Stack) -> None:
    q = pension()
    q.request.applicant.id_no = "110105198001010032"
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(q, timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.NOT_FOUND and d.reason == "NOT_FOUND"
    assert "110105198001010032" not in d.message
    sz = await stack.nodes[SZ].ledger.entries()
    assert [(e.event, note(e)) for e in sz] == [(Event.SUBMITTED, ""), (Event.RESPONDED, "NOT_FOUND")]
    wx = await stack.nodes[WX].ledger.entries()
    assert [(e.event, note(e)) for e in wx] == [(Event.RECEIVED, ""), (Event.PROCESSED, "NOT_FOUND")]


async def test_failing_back_end_is_unavailable(topology: Topology, state: DevState) -> None:
    stack = await _stack_with(topology, state, FailingAdapter())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await stack.stub(SZ).Query(pension(), timeout=5)
        d = details_of(exc.value)
        assert d.code == grpc.StatusCode.UNAVAILABLE and d.reason == "BACKEND_FAILURE"
    finally:
        await stop_stack(stack)


async def test_refusal_at_the_receiver_reaches_the_caller(stack: Stack) -> None:
    """Wuxi's connector refuses (here: every request looks stale to it); Shenzhen's caller gets the
    signed reason as a gRPC status, and both ledgers record the refusal."""
    connector = stack.nodes[WX].connector
    assert connector is not None
    connector.cfg.connector.freshness_window_s = -1.0
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stack.stub(SZ).Query(pension(), timeout=5)
    d = details_of(exc.value)
    assert d.code == grpc.StatusCode.UNAUTHENTICATED and d.reason == "STALE"
    assert [e.event for e in await stack.nodes[SZ].ledger.entries()] == [Event.SUBMITTED, Event.REJECTED]
    assert [note(e) for e in await stack.nodes[WX].ledger.entries()] == ["STALE"]
    assert stack.nodes[WX].backend_calls() == 0


async def test_health_serving(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(stack.nodes[SZ].address) as ch:
        r = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="tongban.v1.Exchange"), timeout=2
        )
    assert r.status == health_pb2.HealthCheckResponse.SERVING
