"""Exactly-once effect under redelivery, replicas sharing the work, deadlines, and the reconciler."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from nats.aio.msg import Msg

from connectors.demo.cases import case_effects
from connectors.runtime import Connector
from connectors.state import ConnectorState
from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.helpers import eventually
from tongban.core import subjects
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.v1 import exchange_pb2

APPROVED = [
    exchange_pb2.CASE_STATUS_RECEIVED,
    exchange_pb2.CASE_STATUS_ACCEPTED,
    exchange_pb2.CASE_STATUS_APPROVED,
]


@pytest.fixture
async def quick_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    """Short ack wait (redelivery after 1 s) and a reconciler that re-sends at once when asked."""
    s = await start_stack(
        topology,
        state,
        config={
            "connector": {"ack_wait_s": 1.0},
            "gateway": {
                "resend_after_s": 0.0,
                "reconcile_interval_s": 3600.0,
                "default_deadline_s": 1.0,
                "max_deadline_s": 1.0,
            },
        },
    )
    try:
        yield s
    finally:
        await stop_stack(s)


def events_of(entries: list[Any], event: Event) -> int:
    return sum(e.event == event for e in entries)


async def test_redelivered_after_the_back_end_call_is_not_called_again(
    quick_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    acks: list[str] = []
    real = Msg.ack_sync

    async def lossy_ack(self: Msg, timeout: float = 1.0) -> Msg:
        if self.subject.startswith("tb.v1.req."):
            acks.append(self.subject)
            if len(acks) == 1:
                return self  # the ack is lost: as if the connector died right here
        return await real(self, timeout)

    monkeypatch.setattr(Msg, "ack_sync", lossy_ack)
    stub = quick_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    assert [e.status for e in await watch(stub, receipt.case_no)] == APPROVED
    await eventually(lambda: len(acks) >= 2, what="the request redelivered and acked")

    wx = quick_stack.nodes[WX]
    assert wx.adapters[CASE_SERVICE].calls[receipt.message_id] == 1
    entries = await wx.ledger.by_message_id(receipt.message_id)
    assert events_of(entries, Event.PROCESSED) == 1 and events_of(entries, Event.STATUS) == 3
    # The stored events were sent again and dropped as duplicates on the way.
    case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
    assert [e.sequence for e in case.events] == [1, 2, 3]
    assert events_of(await quick_stack.nodes[SZ].ledger.by_message_id(receipt.message_id), Event.STATUS) == 3


async def test_crash_between_back_end_and_record_leaves_one_effect(
    quick_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ConnectorState.record
    failures: list[str] = []

    async def crash_once(self: ConnectorState, **kw: Any) -> Any:
        if not failures:
            failures.append(kw["message_id"])
            raise OSError("disk gone")  # after the back end answered, before anything was recorded
        return await real(self, **kw)

    monkeypatch.setattr(ConnectorState, "record", crash_once)
    stub = quick_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    assert [e.status for e in await watch(stub, receipt.case_no)] == APPROVED

    wx = quick_stack.nodes[WX]
    # The back end was asked twice and took the case once: it is idempotent on the message id.
    assert wx.adapters[CASE_SERVICE].calls[receipt.message_id] == 2
    assert case_effects(wx.cfg.path(wx.cfg.connector.demo_db))[receipt.message_id] == 2  # attempts on one row
    entries = await wx.ledger.by_message_id(receipt.message_id)
    assert events_of(entries, Event.PROCESSED) == 1 and events_of(entries, Event.RECEIVED) == 2


async def test_two_connector_replicas_share_one_consumer(topology: Topology, state: DevState) -> None:
    stack = await start_stack(topology, state, config={"connector": {"fetch_batch": 1}})
    node = stack.nodes[WX]
    assert node.connector is not None
    second = Connector(node.connector.parts, adapters=node.adapters)
    await second.start()
    try:
        stub = stack.stub(SZ)
        receipts = [await stub.Submit(submit_request(key=f"r-{i}"), timeout=10) for i in range(30)]
        for r in receipts:
            assert [e.status for e in await watch(stub, r.case_no)] == APPROVED
        first_cases, second_cases = node.connector.cases, second.cases
        assert first_cases is not None and second_cases is not None
        assert first_cases.processed + second_cases.processed == 30
        assert first_cases.processed > 0 and second_cases.processed > 0
        assert all(node.adapters[CASE_SERVICE].calls[r.message_id] == 1 for r in receipts)
    finally:
        await second.stop()
        await stop_stack(stack)


async def test_request_expired_in_the_inbound_stream_is_never_processed(stack: Stack) -> None:
    wx = stack.nodes[WX]
    assert wx.connector is not None
    await wx.connector.stop()  # Wuxi's connectors are down; its nats-server keeps the request
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(ttl_s=1.0), timeout=10)

    async def forwarded() -> bool:
        case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
        return case.delivery_state == exchange_pb2.DELIVERY_STATE_FORWARDED

    await eventually(forwarded, what="request in Wuxi's inbound stream")
    deadline = receipt.accepted_at.ToNanoseconds() / 1e9 + 1.0
    await eventually(lambda: time.time() > deadline + 0.1, what="the deadline passed")
    await wx.connector.start()

    events = await watch(stub, receipt.case_no)
    assert [e.delivery_state for e in events] == [exchange_pb2.DELIVERY_STATE_EXPIRED]
    assert events[0].problem.reason == "EXPIRED"
    assert wx.backend_calls() == 0
    entries = await wx.ledger.by_message_id(receipt.message_id)
    assert entries[0].event == Event.EXPIRED
    sz = [e.event for e in await stack.nodes[SZ].ledger.by_message_id(receipt.message_id)]
    assert Event.EXPIRED in sz


async def test_request_expired_in_the_outbound_stream_is_never_forwarded(stack: Stack) -> None:
    leaf = stack.topology.leaves[WX]
    await leaf.stop()
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(ttl_s=1.0), timeout=10)
    events = await watch(stub, receipt.case_no)  # ends when the forwarder gives up at the deadline
    assert len(events) == 1 and events[0].sequence == 0
    assert events[0].delivery_state == exchange_pb2.DELIVERY_STATE_EXPIRED
    sz = [e.event for e in await stack.nodes[SZ].ledger.by_message_id(receipt.message_id)]
    assert sz == [Event.SUBMITTED, Event.EXPIRED]

    await leaf.start()
    await stack.topology.hub.wait_leafnodes(len(stack.topology.leaves))
    # A request submitted after the outage goes through, and the expired one never did.
    fresh = await stub.Submit(submit_request(), timeout=10)
    assert [e.status for e in await watch(stub, fresh.case_no, timeout=60)] == APPROVED
    assert stack.nodes[WX].adapters[CASE_SERVICE].calls[receipt.message_id] == 0


async def test_reconciler_sends_what_never_reached_the_outbound_stream(
    quick_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = quick_stack.nodes[SZ].gateway
    assert gw is not None and gw.desk is not None
    desk = gw.desk

    async def crashed(*args: Any, **kw: Any) -> bool:
        return False  # as if the gateway died between the outbox commit and the publish

    monkeypatch.setattr(desk.outbox, "publish", crashed)
    stub = quick_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    monkeypatch.undo()
    case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
    assert case.delivery_state == exchange_pb2.DELIVERY_STATE_ACCEPTED

    assert await desk.reconcile(everything=True) == 1
    assert [e.status for e in await watch(stub, receipt.case_no)] == APPROVED
    sz = [e.event for e in await quick_stack.nodes[SZ].ledger.by_message_id(receipt.message_id)]
    assert sz.count(Event.SUBMITTED) == 1 and Event.RESENT not in sz
    assert await desk.reconcile(everything=True) == 0  # nothing left to do


async def test_reconciler_resends_what_the_stream_lost(quick_stack: Stack) -> None:
    leaf = quick_stack.topology.leaves[WX]
    await leaf.stop()
    stub = quick_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    nc = await quick_stack.nats(SZ)
    try:
        # The outbound stream loses the request (an operator purged it, a disk was replaced, ...).
        await nc.jetstream(domain=SZ).purge_stream(subjects.outbound_stream_name(SZ))
    finally:
        await nc.close()
    gw = quick_stack.nodes[SZ].gateway
    assert gw is not None and gw.desk is not None
    assert await gw.desk.reconcile(everything=True) == 1

    await leaf.start()
    await quick_stack.topology.hub.wait_leafnodes(len(quick_stack.topology.leaves))
    assert [e.status for e in await watch(stub, receipt.case_no, timeout=60)] == APPROVED
    sz = [e.event for e in await quick_stack.nodes[SZ].ledger.by_message_id(receipt.message_id)]
    assert sz.count(Event.RESENT) == 1
    assert quick_stack.nodes[WX].adapters[CASE_SERVICE].calls[receipt.message_id] == 1


async def test_submit_accepted_when_the_ledger_fails_is_completed_by_the_reconciler(
    quick_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    sz = quick_stack.nodes[SZ]
    real = type(sz.ledger).append

    async def failing_submitted(self: Any, *drafts: Any) -> Any:
        if any(d.event == Event.SUBMITTED for d in drafts):
            raise OSError("ledger disk full")
        return await real(self, *drafts)

    monkeypatch.setattr(type(sz.ledger), "append", failing_submitted)
    stub = quick_stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)  # accepted: the outbox row is on disk
    monkeypatch.undo()
    assert not await sz.ledger.by_message_id(receipt.message_id)

    gw = sz.gateway
    assert gw is not None and gw.desk is not None
    # A Submit may still be writing its record until the longest call deadline has passed.
    assert await gw.desk.reconcile(everything=True) == 0
    accepted = receipt.accepted_at.ToNanoseconds() / 1e9
    await eventually(lambda: time.time() > accepted + gw.cfg.gateway.max_deadline_s, what="deadline passed")
    assert await gw.desk.reconcile(everything=True) == 1
    assert [e.status for e in await watch(stub, receipt.case_no)] == APPROVED
    events = [e.event for e in await sz.ledger.by_message_id(receipt.message_id)]
    assert events[:2] == [Event.SUBMITTED, Event.PUBLISHED] and events.count(Event.SUBMITTED) == 1
