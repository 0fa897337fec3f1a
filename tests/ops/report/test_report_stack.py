"""`tongban report` on ledgers written by the real stack (gateway and connector of Shenzhen and Wuxi):
answered queries, a NOT_FOUND answer, a query refused at Shenzhen's gateway and a Submit that
completes, counted from Shenzhen's ledger (sent) and Wuxi's (received). The entries' details are
whatever gateway/ and connectors/ write today: a change of their format that the report would
miscount fails here, not in a briefing."""

from __future__ import annotations

import time

import grpc
import pytest

from ledger import Event
from tests.conftest import SZ, WX, Stack
from tests.e2e.cases import CASE_SERVICE, submit_request, watch
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import build, cases, pension
from tests.helpers import note
from tongban.ops.report import Row, Stats, Window, collect
from tongban.v1 import exchange_pb2

PENSION = "SBJFJLCX0001"
ANSWERED = 3


def counts(s: Stats) -> tuple[int, int, int, int]:
    return s.requests, s.ok, s.failed, s.pending


def rows(rs: tuple[Row, ...]) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    return {(r.direction, r.key): counts(r.stats) for r in rs}


async def test_report_counts_what_the_stack_wrote(stack: Stack) -> None:
    start_ns = time.time_ns()
    stub = stack.stub(SZ)
    for _ in range(ANSWERED):
        answer = await stub.Query(pension(), timeout=10)
        assert answer.data
    unknown = pension()
    unknown.request.applicant.id_no = "110105198001010032"  # valid, no record in Wuxi's demo back end
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(unknown, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    bad = build(next(c for c in cases() if c["service_code"] == PENSION))
    bad.request.applicant.id_no = "320213198511200026"  # wrong check digit: refused by Shenzhen
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Query(bad, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refusal = details_of(err.value).reason
    receipt = await stub.Submit(submit_request(key="report-stack"), timeout=10)
    events = await watch(stub, receipt.case_no)
    assert events and events[-1].delivery_state == exchange_pb2.DELIVERY_STATE_PROCESSED
    now_ns = time.time_ns()
    window = Window(start_ns, now_ns + 1, "custom")

    sz_ledger, wx_ledger = stack.nodes[SZ].ledger, stack.nodes[WX].ledger
    # What the report is counting from (a failure message shows it when the numbers drift).
    entries = {r: [(str(e.event), note(e)) for e in await stack.nodes[r].ledger.entries()] for r in (SZ, WX)}

    sz = await collect(sz_ledger, window, now_ns=now_ns + 1)
    assert counts(sz.total) == (ANSWERED + 3, ANSWERED + 2, 1, 0), entries[SZ]
    # The refusal's reason is the one the caller was told.
    assert dict(sz.total.reasons) == {refusal: 1} == {"INVALID_REQUEST": 1}, entries[SZ]
    assert rows(sz.directions) == {
        ("out", "out"): (ANSWERED + 3, ANSWERED + 2, 1, 0),
        ("in", "in"): (0, 0, 0, 0),
    }
    assert rows(sz.services) == {
        ("out", PENSION): (ANSWERED + 2, ANSWERED + 1, 1, 0),  # NOT_FOUND is an answer
        ("out", CASE_SERVICE): (1, 1, 0, 0),
    }
    assert {r.key: counts(r.stats) for r in sz.pairs} == {f"{SZ}→{WX}": (ANSWERED + 3, ANSWERED + 2, 1, 0)}
    # Answered requests are timed (SUBMITTED → RESPONDED/STATUS).
    pension_row = next(r for r in sz.services if r.key == PENSION)
    assert pension_row.stats.p50_ms is not None and pension_row.stats.p50_ms > 0

    wx = await collect(wx_ledger, window, now_ns=now_ns + 1)
    assert counts(wx.total) == (ANSWERED + 2, ANSWERED + 2, 0, 0), entries[WX]
    assert rows(wx.services) == {
        ("in", PENSION): (ANSWERED + 1, ANSWERED + 1, 0, 0),
        ("in", CASE_SERVICE): (1, 1, 0, 0),
    }
    assert {r.key: counts(r.stats) for r in wx.pairs} == {f"{SZ}→{WX}": (ANSWERED + 2, ANSWERED + 2, 0, 0)}
    assert wx.total.p99_ms is not None

    # The entries the report read are the kinds it expects (so the counts above are not luck).
    assert {e for e, _ in entries[SZ]} >= {Event.SUBMITTED, Event.RESPONDED, Event.REJECTED, Event.STATUS}
    assert {e for e, _ in entries[WX]} >= {Event.RECEIVED, Event.PROCESSED, Event.STATUS}
