"""The SQLite ledger store on real temporary files: appends, group commit, reopen, triggers, tampering."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ledger import (
    Entry,
    EntryDraft,
    Event,
    LedgerClosed,
    LedgerError,
    LedgerStore,
    SQLiteLedger,
    open_ledger,
    verify_entries,
)
from ledger.entry import ZERO_HASH, canonical_bytes, chain_hash
from ledger.verify import verify_sqlite_file

from .helpers import PEER, REGION, make_draft, raw_db

ENTRY_COLUMNS = (
    "time_ns, region, event, message_id, peer_region, service_code, envelope_digest, trace_id, detail, "
    "prev_hash, entry_hash"
)


@pytest.fixture
async def ledger(ledger_path: Path) -> AsyncIterator[SQLiteLedger]:
    async with SQLiteLedger(ledger_path, REGION) as opened:
        yield opened


async def _fill(path: Path, n: int) -> list[Entry]:
    """Write ``n`` entries to a new ledger file and close it."""
    async with SQLiteLedger(path, REGION) as ledger:
        return await ledger.append(*(make_draft(i, detail=f"step {i}") for i in range(n)))


def _row_count(path: Path) -> int:
    with raw_db(path) as conn:
        count: int = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    return count


def _drop_triggers(conn: sqlite3.Connection) -> None:
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("DROP TRIGGER entries_no_delete")


# --- appending and reading ---------------------------------------------------------------------------------


async def test_round_trip(ledger: SQLiteLedger) -> None:
    assert await ledger.size() == 0
    assert await ledger.head() is None

    [first] = await ledger.append(make_draft(1, time_ns=1_700_000_000_000_000_000))
    [second] = await ledger.append(make_draft(2, event=Event.PUBLISHED, detail="à 深圳"))

    assert (first.index, first.region, first.time_ns, first.prev_hash) == (
        0,
        REGION,
        1_700_000_000_000_000_000,
        ZERO_HASH,
    )
    assert first.entry_hash == chain_hash(ZERO_HASH, canonical_bytes(first))
    assert (second.index, second.prev_hash, second.event, second.detail) == (
        1,
        first.entry_hash,
        Event.PUBLISHED,
        "à 深圳",
    )
    assert second.time_ns > 0  # None was stamped at append
    assert await ledger.get(0) == first
    assert await ledger.get(1) == second
    assert await ledger.entries() == [first, second]
    assert await ledger.entries(1) == [second]
    assert await ledger.entries(0, 1) == [first]
    assert await ledger.entries(5) == []
    assert await ledger.head() == second
    assert await ledger.size() == 2
    assert await ledger.append() == []


async def test_get_and_entries_bounds(ledger: SQLiteLedger) -> None:
    await ledger.append(make_draft(0))
    with pytest.raises(IndexError):
        await ledger.get(1)
    with pytest.raises(IndexError):
        await ledger.get(-1)
    with pytest.raises(ValueError):
        await ledger.entries(-1)


async def test_implements_ledger_store(ledger: SQLiteLedger) -> None:
    store: LedgerStore = ledger  # checked by mypy
    assert isinstance(store, LedgerStore)
    assert store.region == REGION


async def test_open_ledger_helper(ledger_path: Path) -> None:
    ledger = await open_ledger(ledger_path, REGION, synchronous="normal", max_batch=8)
    try:
        assert (await ledger.append(make_draft(0)))[0].index == 0
    finally:
        await ledger.close()


def test_constructor_rejects_bad_settings(ledger_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteLedger(ledger_path, REGION, synchronous="FULL; DROP TABLE entries")
    with pytest.raises(ValueError, match="max_batch"):
        SQLiteLedger(ledger_path, REGION, max_batch=0)
    with pytest.raises(ValueError, match="region"):
        SQLiteLedger(ledger_path, "")


async def test_lookup_by_message_and_trace(ledger: SQLiteLedger) -> None:
    submitted = make_draft(1, event=Event.SUBMITTED)
    published = make_draft(1, event=Event.PUBLISHED)
    await ledger.append(submitted, make_draft(2))
    await ledger.append(published)

    by_message = await ledger.by_message_id(submitted.message_id)
    assert [(e.index, e.event) for e in by_message] == [(0, Event.SUBMITTED), (2, Event.PUBLISHED)]
    by_trace = await ledger.by_trace_id(submitted.trace_id)
    assert [e.index for e in by_trace] == [0, 2]
    assert await ledger.by_message_id("unknown") == []
    assert await ledger.by_trace_id("f" * 32) == []


async def test_file_uses_wal_and_stores_region(ledger: SQLiteLedger, ledger_path: Path) -> None:
    await ledger.append(make_draft(0))
    with raw_db(ledger_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    assert meta == {"schema_version": "1", "region": REGION}


# --- atomicity and group commit ----------------------------------------------------------------------------


async def test_multi_draft_append_is_contiguous(ledger: SQLiteLedger) -> None:
    calls = [[make_draft(10 * c + k) for k in range(3)] for c in range(20)]
    results = await asyncio.gather(*(ledger.append(*drafts) for drafts in calls))

    for drafts, entries in zip(calls, results, strict=True):
        indexes = [e.index for e in entries]
        assert indexes == list(range(indexes[0], indexes[0] + 3))
        assert [e.message_id for e in entries] == [d.message_id for d in drafts]
    assert sorted(e.index for entries in results for e in entries) == list(range(60))


async def test_concurrent_appenders_share_transactions(ledger: SQLiteLedger, ledger_path: Path) -> None:
    n = 500
    results = await asyncio.gather(*(ledger.append(make_draft(i)) for i in range(n)))

    indexes = sorted(entries[0].index for entries in results)
    assert indexes == list(range(n))
    assert ledger.commits < n // 10  # group commit: far fewer transactions (fsyncs) than appends
    assert await ledger.size() == n
    report = verify_entries(await ledger.entries(), region=REGION)
    assert report.ok and report.count == n
    assert report.head_hash == (await ledger.head() or pytest.fail("no head")).entry_hash
    assert verify_sqlite_file(ledger_path, REGION).ok


async def test_max_batch_caps_transactions(ledger_path: Path) -> None:
    n, max_batch = 500, 64
    async with SQLiteLedger(ledger_path, REGION, max_batch=max_batch) as ledger:
        await asyncio.gather(*(ledger.append(make_draft(i)) for i in range(n)))
        assert math.ceil(n / max_batch) <= ledger.commits < n
        # One call larger than max_batch is still one transaction: atomicity per call comes first.
        before = ledger.commits
        entries = await ledger.append(*(make_draft(n + i) for i in range(3 * max_batch)))
        assert ledger.commits == before + 1
        assert [e.index for e in entries] == list(range(n, n + 3 * max_batch))
    assert verify_sqlite_file(ledger_path).ok


async def test_failed_batch_rejects_every_caller_and_changes_nothing(
    ledger: SQLiteLedger, ledger_path: Path
) -> None:
    await ledger.append(make_draft(0), make_draft(1), make_draft(2))
    head = await ledger.head()
    commits = ledger.commits
    # A real database failure in the middle of the batch: rows before the poisoned one are already inserted
    # inside the transaction when it aborts, so only a rollback of the whole transaction leaves nothing.
    with raw_db(ledger_path) as conn:
        conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON entries WHEN NEW.detail = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )

    drafts = [make_draft(10 + i, detail="poison" if i == 5 else "") for i in range(10)]
    # All ten are queued before the writer task runs, so they form one batch.
    results = await asyncio.gather(*(ledger.append(d) for d in drafts), return_exceptions=True)
    for result in results:
        assert isinstance(result, LedgerError), result
        assert isinstance(result.__cause__, sqlite3.IntegrityError)
    # One call's drafts fail together too.
    with pytest.raises(LedgerError):
        await ledger.append(make_draft(20), make_draft(21), make_draft(22, detail="poison"))

    assert await ledger.head() == head
    assert await ledger.size() == 3
    assert ledger.commits == commits
    assert _row_count(ledger_path) == 3

    with raw_db(ledger_path) as conn:
        conn.execute("DROP TRIGGER poison")
    [entry] = await ledger.append(make_draft(30))
    assert head is not None
    assert (entry.index, entry.prev_hash) == (3, head.entry_hash)
    assert verify_sqlite_file(ledger_path, REGION).ok


# --- lifecycle ---------------------------------------------------------------------------------------------


async def test_reopen_continues_the_chain(ledger_path: Path) -> None:
    first = await _fill(ledger_path, 5)
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        assert await ledger.size() == 5
        assert await ledger.head() == first[-1]
        [entry] = await ledger.append(make_draft(5))
        assert (entry.index, entry.prev_hash) == (5, first[-1].entry_hash)
        assert verify_entries(await ledger.entries(), region=REGION).ok


async def test_other_region_refused(ledger_path: Path) -> None:
    await _fill(ledger_path, 1)
    other = SQLiteLedger(ledger_path, PEER)
    with pytest.raises(LedgerError, match="region"):
        await other.open()
    with pytest.raises(LedgerClosed):
        await other.append(make_draft(1))
    assert _row_count(ledger_path) == 1


async def test_close_commits_queued_appends(ledger_path: Path) -> None:
    ledger = await open_ledger(ledger_path, REGION)
    drafts = [make_draft(i) for i in range(50)]
    # Tasks start in creation order: all appends are queued before close() begins.
    appends = [asyncio.create_task(ledger.append(d)) for d in drafts]
    await asyncio.create_task(ledger.close())
    assert _row_count(ledger_path) == 50  # on disk by the time close() returns
    results = await asyncio.gather(*appends)
    assert sorted(entries[0].index for entries in results) == list(range(50))
    assert verify_sqlite_file(ledger_path, REGION).ok


async def test_closed_ledger_refuses_everything(ledger_path: Path) -> None:
    ledger = await open_ledger(ledger_path, REGION)
    await ledger.append(make_draft(0))
    await ledger.close()
    await ledger.close()  # idempotent
    with pytest.raises(LedgerClosed):
        await ledger.append(make_draft(1))
    with pytest.raises(LedgerClosed):
        await ledger.entries()
    with pytest.raises(LedgerClosed):
        await ledger.size()
    with pytest.raises(LedgerClosed):
        await ledger.open()
    assert _row_count(ledger_path) == 1


async def test_never_opened_ledger(ledger_path: Path) -> None:
    ledger = SQLiteLedger(ledger_path, REGION)
    with pytest.raises(LedgerClosed):
        await ledger.append(make_draft(0))
    await ledger.close()
    with pytest.raises(LedgerError, match="no ledger file"):  # closing it created nothing
        verify_sqlite_file(ledger_path)


# --- append-only enforcement and tampering -----------------------------------------------------------------


async def test_triggers_refuse_update_and_delete(ledger_path: Path) -> None:
    await _fill(ledger_path, 3)
    with raw_db(ledger_path) as conn:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("UPDATE entries SET detail = 'edited' WHERE idx = 1")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute("DELETE FROM entries WHERE idx = 2")
    assert _row_count(ledger_path) == 3
    assert verify_sqlite_file(ledger_path, REGION).ok


async def test_reopen_restores_dropped_triggers(ledger_path: Path) -> None:
    await _fill(ledger_path, 1)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
    await _fill(ledger_path, 0)
    with raw_db(ledger_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("DELETE FROM entries")


async def test_tamper_edit_detail(ledger_path: Path) -> None:
    entries = await _fill(ledger_path, 10)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
        conn.execute("UPDATE entries SET detail = 'nothing happened' WHERE idx = 4")
    report = verify_sqlite_file(ledger_path, REGION)
    assert (report.ok, report.first_bad_index, report.reason) == (False, 4, "entry hash mismatch")
    assert report.count == 10
    assert report.head_hash == entries[3].entry_hash
    # The async store reads the same rows and the in-memory verifier agrees.
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        assert verify_entries(await ledger.entries(), region=REGION) == report


async def test_tamper_delete_entry(ledger_path: Path) -> None:
    await _fill(ledger_path, 10)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
        conn.execute("DELETE FROM entries WHERE idx = 6")
    report = verify_sqlite_file(ledger_path, REGION)
    assert (report.ok, report.first_bad_index, report.reason) == (False, 6, "index gap: expected 6, found 7")
    assert report.count == 9


async def test_tamper_swap_two_entries(ledger_path: Path) -> None:
    await _fill(ledger_path, 10)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
        row3 = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE idx = 3").fetchone()
        row7 = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM entries WHERE idx = 7").fetchone()
        assignments = ", ".join(f"{column.strip()} = ?" for column in ENTRY_COLUMNS.split(","))
        conn.execute(f"UPDATE entries SET {assignments} WHERE idx = 3", row7)
        conn.execute(f"UPDATE entries SET {assignments} WHERE idx = 7", row3)
    report = verify_sqlite_file(ledger_path, REGION)
    assert (report.ok, report.first_bad_index, report.reason) == (
        False,
        3,
        "prev_hash does not match entry 2",
    )


async def test_tamper_undecodable_value(ledger_path: Path) -> None:
    await _fill(ledger_path, 5)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
        conn.execute("UPDATE entries SET event = 'DELIVERED' WHERE idx = 2")
    report = verify_sqlite_file(ledger_path, REGION)
    assert (report.first_bad_index, report.count) == (2, 5)
    assert report.reason.startswith("undecodable entry")
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        with pytest.raises(LedgerError, match="undecodable"):
            await ledger.entries()


async def test_truncated_tail_is_not_detected_by_the_chain(ledger_path: Path) -> None:
    """Cutting entries off the end leaves a shorter chain that is valid in itself.

    The chain only links each entry to its predecessors, so nothing in the remaining entries says that more
    followed. Detecting truncation (or a rewritten, re-hashed tail) needs a head the region committed to
    earlier: the signed Merkle tree heads published to peer regions, added by the Merkle issue, whose
    consistency proofs catch a log that shrank. This test pins the limitation down so nobody relies on the
    chain for it.
    """
    entries = await _fill(ledger_path, 10)
    with raw_db(ledger_path) as conn:
        _drop_triggers(conn)
        conn.execute("DELETE FROM entries WHERE idx >= 7")
    report = verify_sqlite_file(ledger_path, REGION)
    assert report.ok and report.count == 7
    assert report.head_hash == entries[6].entry_hash != entries[9].entry_hash


# --- the offline verifier ----------------------------------------------------------------------------------


def test_verify_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger file"):
        verify_sqlite_file(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


async def test_verify_other_region_and_foreign_file(ledger_path: Path, tmp_path: Path) -> None:
    await _fill(ledger_path, 2)
    assert verify_sqlite_file(ledger_path).ok  # region taken from the file
    with pytest.raises(LedgerError, match="region"):
        verify_sqlite_file(ledger_path, PEER)
    foreign = tmp_path / "foreign.db"
    with raw_db(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not a tongban ledger"):
        verify_sqlite_file(foreign)


async def test_verify_while_the_ledger_is_open(ledger: SQLiteLedger, ledger_path: Path) -> None:
    await ledger.append(*(make_draft(i) for i in range(20)))
    report = verify_sqlite_file(ledger_path, REGION)
    assert report.ok and report.count == 20


async def test_two_writers_on_one_file_chain_onto_each_other(tmp_path: Path) -> None:
    """A region's gateway and connector append to one file: their batches must not fork the chain."""
    path = tmp_path / "shared.sqlite"
    a, b = SQLiteLedger(path, "440300"), SQLiteLedger(path, "440300")
    await a.open()
    await b.open()
    try:
        await asyncio.gather(
            *(
                (a if i % 2 else b).append(EntryDraft(Event.SUBMITTED, f"m{i}", "320200", "SBJFJLCX0001"))
                for i in range(200)
            )
        )
        assert await a.size() == await b.size() == 200
    finally:
        await a.close()
        await b.close()
    report = verify_sqlite_file(path, region="440300")
    assert report.ok and report.count == 200
