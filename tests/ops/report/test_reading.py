"""How `tongban report` reads the ledger (tongban/ops/report/reading.py, ``collect``): in a few
time-ordered range reads, never one look-up per request. A flood of refusals (the 堵点 case) and
requests still open at the period's end cost no look-up by message id; the failures that memory
cannot settle are settled the same by look-ups and by one read; a period that ends now reads
nothing after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger.entry import Entry, EntryDraft, Event
from ledger.store_sqlite import SQLiteLedger
from tongban.core.message_ids import new_message_id
from tongban.ops.report import Report, collect, period_window, window_between

SZ, WX, QD = "440300", "320200", "370200"
QUERY, CASE = "SBJFJLCX0001", "YLBXZYJX0001"
S, MS, MIN, HOUR, DAY = 10**9, 10**6, 60 * 10**9, 3600 * 10**9, 86_400 * 10**9
DIGEST = b"\x02" * 32
WINDOW = window_between("2026-03-02", "2026-03-09")
T0 = WINDOW.start_ns


class CountingLedger(SQLiteLedger):
    """A real SQLite ledger that records the reads made of it."""

    def __init__(self, path: Path, region: str) -> None:
        super().__init__(path, region)
        self.ranges: list[tuple[int, int]] = []
        self.lookups: list[str] = []

    async def by_time(self, start_ns: int, end_ns: int, limit: int) -> list[Entry]:
        self.ranges.append((start_ns, end_ns))
        return await super().by_time(start_ns, end_ns, limit)

    async def by_message_id(self, message_id: str) -> list[Entry]:
        self.lookups.append(message_id)
        return await super().by_message_id(message_id)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[CountingLedger]:
    async with CountingLedger(tmp_path / "ledger.sqlite", SZ) as store:
        yield store


def mid(at: int) -> str:
    return new_message_id(at // MS)


def draft(
    event: Event,
    m: str,
    at: int,
    detail: str = "",
    *,
    peer: str = WX,
    svc: str = QUERY,
    digest: bytes = DIGEST,
) -> EntryDraft:
    return EntryDraft(event, m, peer, svc, digest, "", detail, at)


def counts(r: Report) -> tuple[int, int, int, int]:
    t = r.total
    return t.requests, t.ok, t.failed, t.pending


async def test_a_flood_of_refusals_and_open_requests_need_no_lookups(ledger: CountingLedger) -> None:
    drafts = []
    for i in range(400):  # partners' calls refused by this gateway before sealing
        at = T0 + DAY + i * S
        drafts.append(draft(Event.REJECTED, mid(at - 3 * MS), at, "PERMISSION_DENIED", digest=b""))
    for i in range(200):  # envelopes from Qingdao this connector could not verify, sent a minute earlier
        at = T0 + 2 * DAY + i * S
        drafts.append(draft(Event.REJECTED, mid(at - MIN), at, "SIGNATURE_INVALID", peer=QD))
    for i in range(5):  # envelopes without a usable message id, named by their digest
        drafts.append(draft(Event.REJECTED, f"sha256:{i:016x}", T0 + 3 * DAY + i * S, "MALFORMED", peer="?"))
    late = [mid(WINDOW.end_ns - MIN + i * S) for i in range(3)]
    for i, m in enumerate(late):  # open at the period's end; the first is answered after it
        drafts.append(draft(Event.SUBMITTED, m, WINDOW.end_ns - MIN + i * S))
    drafts.append(draft(Event.RESPONDED, late[0], WINDOW.end_ns + MIN, "OK"))
    await ledger.append(*drafts)

    report = await collect(ledger, WINDOW, now_ns=WINDOW.end_ns + DAY)
    assert counts(report) == (608, 1, 605, 2)
    assert dict(report.total.reasons) == {"PERMISSION_DENIED": 400, "SIGNATURE_INVALID": 200, "MALFORMED": 5}
    assert ledger.lookups == []
    # Before the period, the period, after it: one page each.
    assert ledger.ranges == [
        (T0 - 10 * MIN, T0),
        (T0, WINDOW.end_ns),
        (WINDOW.end_ns, WINDOW.end_ns + DAY),
    ]


async def test_what_memory_cannot_settle_is_settled_alike_by_lookups_and_one_read(
    ledger: CountingLedger,
) -> None:
    drafts = []
    # Not this period's requests:
    # a query opened a minute before the period and refused by Wuxi in it;
    a = mid(T0 - MIN)
    drafts += [
        draft(Event.SUBMITTED, a, T0 - MIN),
        draft(Event.REJECTED, a, T0 + 30 * S, "NO_RESPONDERS", digest=b""),
    ]
    # one opened three hours before it that expired in it.
    b = mid(T0 - 3 * HOUR)
    drafts += [
        draft(Event.SUBMITTED, b, T0 - 3 * HOUR),
        draft(Event.EXPIRED, b, T0 + HOUR, "NO_REPLY_IN_DEADLINE", digest=b""),
    ]
    # Refused: a case from Qingdao sent two days ago, expired when it arrived (never RECEIVED).
    c = mid(T0 - DAY)
    drafts.append(draft(Event.EXPIRED, c, T0 + DAY, "case=C1 reason=EXPIRED", peer=QD, svc=CASE))
    # Refused once: the same unverifiable envelope three times (a minute, then hours apart).
    d = mid(T0 + 2 * DAY - S)
    for at in (T0 + 2 * DAY, T0 + 2 * DAY + MIN, T0 + 2 * DAY + 3 * HOUR):
        drafts.append(draft(Event.REJECTED, d, at, "SIGNATURE_INVALID", peer=QD, svc=CASE))
    # A case sent to Wuxi: answered (ok), dead-lettered there two hours later (not another request).
    f = mid(T0 + 3 * DAY)
    drafts += [
        draft(Event.SUBMITTED, f, T0 + 3 * DAY, "CASE-F", svc=CASE),
        draft(Event.STATUS, f, T0 + 3 * DAY + 30 * S, "seq=1 status=1 event=e1", svc=CASE),
        draft(Event.DEAD_LETTERED, f, T0 + 3 * DAY + 2 * HOUR, "seq=2 status=0 reason=X event=e2", svc=CASE),
    ]
    # A case from Qingdao dead-lettered here, and again on a redelivery hours later (one request).
    g = mid(T0 + 4 * DAY - S)
    drafts += [
        draft(Event.RECEIVED, g, T0 + 4 * DAY, "case=C2 attempt=1", peer=QD, svc=CASE),
        draft(
            Event.DEAD_LETTERED, g, T0 + 4 * DAY + MIN, "case=C2 reason=BACKEND_FAILURE", peer=QD, svc=CASE
        ),
        draft(
            Event.DEAD_LETTERED,
            g,
            T0 + 4 * DAY + 3 * HOUR,
            "case=C2 reason=BACKEND_FAILURE",
            peer=QD,
            svc=CASE,
        ),
    ]
    await ledger.append(*drafts)

    def expected(r: Report) -> None:
        assert counts(r) == (4, 1, 3, 0)
        assert dict(r.total.reasons) == {"EXPIRED": 1, "SIGNATURE_INVALID": 1, "BACKEND_FAILURE": 1}

    by_memory = await collect(ledger, WINDOW)
    expected(by_memory)
    # Beyond the horizon: b's expiry, c, d's third refusal, f's dead letter, g's second one.
    assert sorted(ledger.lookups) == sorted([b, c, d, f, g])
    ledger.lookups.clear()
    by_read = await collect(ledger, WINDOW, lookups=0)
    expected(by_read)
    assert ledger.lookups == []
    # Without memory at all: every failure of a message not open is settled by look-ups or a read.
    expected(await collect(ledger, WINDOW, horizon_ns=0))
    expected(await collect(ledger, WINDOW, horizon_ns=0, lookups=0))
    assert (by_read.services, by_read.pairs, by_read.buckets) == (
        by_memory.services,
        by_memory.pairs,
        by_memory.buckets,
    )


async def test_a_period_ending_now_reads_nothing_after_it(ledger: CountingLedger) -> None:
    now = T0 + 3 * DAY
    m = mid(now - MIN)
    await ledger.append(
        draft(Event.SUBMITTED, m, now - MIN), draft(Event.RESPONDED, m, now + MIN, "OK")
    )  # answered after "now": not known yet
    window = period_window("week", now_ns=now)
    report = await collect(ledger, window, now_ns=now)
    assert counts(report) == (1, 0, 0, 1) and report.generated_ns == now
    assert all(end <= now for _, end in ledger.ranges) and ledger.lookups == []
    # Looked at a day later, the same week's request is answered.
    ledger.ranges.clear()
    report = await collect(ledger, window, now_ns=now + DAY)
    assert counts(report) == (1, 1, 0, 0) and ledger.ranges[-1] == (now, now + DAY)
