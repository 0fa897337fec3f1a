"""Submit, case events, WatchCase and GetCase across three regions (hub + three leaf nats-servers)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from connectors.demo.cases import case_effects
from ledger import Event
from tests.conftest import QD, SZ, WX, Stack
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import cases
from tests.helpers import eventually, note
from tongban.core import subjects
from tongban.v1 import exchange_pb2

APPROVED = [
    exchange_pb2.CASE_STATUS_RECEIVED,
    exchange_pb2.CASE_STATUS_ACCEPTED,
    exchange_pb2.CASE_STATUS_APPROVED,
]


async def test_submit_events_flow_back_in_order(stack: Stack) -> None:
    assert len(stack.topology.leaves) == 3  # SZ, WX and QD leaves under one hub
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    assert receipt.case_no.startswith(f"{SZ}-") and receipt.message_id and not receipt.replayed
    assert len(receipt.request_digest) == 32

    events = await watch(stub, receipt.case_no)
    assert [e.sequence for e in events] == [1, 2, 3]
    assert [e.status for e in events] == APPROVED
    assert [e.local_code for e in events] == ["SJ", "SL", "BJ"]
    assert {e.delivery_state for e in events} == {exchange_pb2.DELIVERY_STATE_PROCESSED}
    assert all(e.event_id and e.case_no == receipt.case_no for e in events)

    case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
    assert case.status == exchange_pb2.CASE_STATUS_APPROVED
    assert case.delivery_state == exchange_pb2.DELIVERY_STATE_PROCESSED
    assert case.last_sequence == 3 and case.local_code == "BJ"
    assert list(case.events) == events
    assert case.message_id == receipt.message_id and case.handling_region == WX

    # Both ledgers hold their half; the back end was called once.
    sz = [e.event for e in await stack.nodes[SZ].ledger.by_message_id(receipt.message_id)]
    wx = [e.event for e in await stack.nodes[WX].ledger.by_message_id(receipt.message_id)]
    assert sz[:2] == [Event.SUBMITTED, Event.PUBLISHED] and sz.count(Event.STATUS) == 3
    assert wx.count(Event.RECEIVED) == 1 and wx.count(Event.PROCESSED) == 1 and wx.count(Event.STATUS) == 3
    assert stack.nodes[WX].adapters[CASE_SERVICE].calls[receipt.message_id] == 1

    # Resuming a watch after the last event seen ends at once with nothing new.
    assert await watch(stub, receipt.case_no, after=3) == []


async def test_watch_started_before_the_events_arrive(stack: Stack) -> None:
    wx = stack.nodes[WX].connector
    gw = stack.nodes[SZ].gateway
    assert wx is not None and gw is not None
    await wx.stop()  # nothing is handled in Wuxi until the watch is open
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(), timeout=10)
    watching = asyncio.create_task(watch(stub, receipt.case_no))
    await eventually(lambda: bool(gw.desk and gw.desk.watchers.by_case), what="watch waiting")
    assert not watching.done()
    await wx.start()
    assert [e.status for e in await watching] == APPROVED


async def test_no_record_is_refused_acceptance(stack: Stack) -> None:
    req = submit_request()
    req.request.applicant.id_no = "110101199003074477"  # valid, unknown to Wuxi's demo records
    stub = stack.stub(SZ)
    receipt = await stub.Submit(req, timeout=10)
    events = await watch(stub, receipt.case_no)
    assert [e.status for e in events] == [
        exchange_pb2.CASE_STATUS_RECEIVED,
        exchange_pb2.CASE_STATUS_REFUSED_ACCEPTANCE,
    ]


async def test_every_case_item_can_be_submitted(stack: Stack) -> None:
    stub = stack.stub(SZ)
    case_items = [c["service_code"] for c in cases() if c["service_code"] != "SBJFJLCX0001"]
    receipts = [await stub.Submit(submit_request(code), timeout=10) for code in case_items]
    for r in receipts:
        events = await watch(stub, r.case_no)
        assert events[-1].status in (
            exchange_pb2.CASE_STATUS_APPROVED,
            exchange_pb2.CASE_STATUS_REFUSED_ACCEPTANCE,
        )
    effects = case_effects(stack.nodes[WX].cfg.path(stack.nodes[WX].cfg.connector.demo_db))
    assert {r.message_id for r in receipts} <= set(effects)


async def test_same_idempotency_key_is_one_case(stack: Stack) -> None:
    stub = stack.stub(SZ)
    first = await stub.Submit(submit_request(key="szywtb-2026-000001"), timeout=10)
    again = await stub.Submit(submit_request(key="szywtb-2026-000001"), timeout=10)
    assert again.replayed and not first.replayed
    assert (again.case_no, again.message_id, again.request_digest) == (
        first.case_no,
        first.message_id,
        first.request_digest,
    )
    await watch(stub, first.case_no)
    assert stack.nodes[WX].adapters[CASE_SERVICE].total == 1
    sz = await stack.nodes[SZ].ledger.entries()
    assert sum(e.event == Event.SUBMITTED for e in sz) == 1


async def test_idempotency_key_reused_for_another_request_is_refused(stack: Stack) -> None:
    stub = stack.stub(SZ)
    await stub.Submit(submit_request(key="k-reused"), timeout=10)
    other = submit_request(key="k-reused")
    other.request.fields["new_employer_name"] = "另一家公司"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Submit(other, timeout=10)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.ALREADY_EXISTS and d.reason == "IDEMPOTENCY_KEY_REUSED"
    entries = await stack.nodes[SZ].ledger.entries()
    assert [e.event for e in entries].count(Event.SUBMITTED) == 1
    assert [note(e) for e in entries if e.event == Event.REJECTED] == ["IDEMPOTENCY_KEY_REUSED"]


async def test_query_item_is_not_submitted(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub(SZ).Submit(submit_request("SBJFJLCX0001"), timeout=10)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "request.service_code" in d.violations


async def test_bad_idempotency_key_is_a_field_violation(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub(SZ).Submit(submit_request(key="no spaces allowed"), timeout=10)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "request.idempotency_key" in d.violations
    # Refused before anything was accepted: one REJECTED entry, nothing submitted.
    assert [e.event for e in await stack.nodes[SZ].ledger.entries()] == [Event.REJECTED]


@pytest.mark.parametrize("seconds,nanos", [(10**15, 0), (0, 500_000_000), (-5, 0), (31 * 24 * 3600, 0)])
async def test_time_to_live_out_of_range_is_a_field_violation(stack: Stack, seconds: int, nanos: int) -> None:
    req = submit_request()
    req.time_to_live.seconds, req.time_to_live.nanos = seconds, nanos
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub(SZ).Submit(req, timeout=10)
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "time_to_live" in d.violations
    entries = await stack.nodes[SZ].ledger.entries()
    assert [(e.event, note(e)) for e in entries] == [(Event.REJECTED, "INVALID_REQUEST: time_to_live")]


async def test_unknown_case_is_not_found(stack: Stack) -> None:
    for case_no in ("440300-20261122-0000000000", "'; drop table cases; --"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.stub(SZ).GetCase(exchange_pb2.GetCaseRequest(case_no=case_no), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await watch(stack.stub(SZ), case_no)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_submit_to_a_region_with_no_streams_waits_in_the_outbound_stream(stack: Stack) -> None:
    # Qingdao has a leaf but runs no tongban process, so it has no inbound stream yet: the request
    # is accepted all the same and waits in Shenzhen's outbound stream.
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(to=QD), timeout=10)
    case = (await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=receipt.case_no), timeout=5)).case
    assert case.delivery_state == exchange_pb2.DELIVERY_STATE_ACCEPTED
    nc = await stack.nats(SZ)
    try:
        info = await nc.jetstream(domain=SZ).stream_info(subjects.outbound_stream_name(SZ))
        assert info.state.messages == 1
    finally:
        await nc.close()


async def test_gateway_stop_ends_open_watches_promptly(stack: Stack) -> None:
    stub = stack.stub(SZ)
    receipt = await stub.Submit(submit_request(to=QD), timeout=10)  # nobody in Qingdao handles it
    call = stub.WatchCase(exchange_pb2.WatchCaseRequest(case_no=receipt.case_no), timeout=30)
    gw = stack.nodes[SZ].gateway
    assert gw is not None

    async def first_state() -> None:
        async for _ in call:
            pass

    reader = asyncio.create_task(first_state())
    await eventually(lambda: bool(gw.desk and gw.desk.watchers.by_case), what="watch registered")
    await gw.stop()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reader
    # Ended by the gateway with a reason to resume elsewhere, not cut off when the grace ran out.
    d = details_of(err.value)
    assert d.code == grpc.StatusCode.UNAVAILABLE and d.reason == "SHUTTING_DOWN"
