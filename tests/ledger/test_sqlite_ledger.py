"""What only the SQLite store has: its settings, its file (WAL, metadata) and the offline file verifier.

The store contract itself (appends, group commit, lifecycle, triggers, tampering) runs on every store in
test_store.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import LedgerError, SQLiteLedger, open_ledger, verify_store
from ledger.verify import verify_sqlite_file

from .helpers import PEER, REGION, make_draft, raw_db


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


async def test_file_uses_wal(ledger_path: Path) -> None:
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        await ledger.append(make_draft(0))
        with raw_db(ledger_path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_verify_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no ledger file"):
        verify_sqlite_file(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


async def test_verify_other_region_and_foreign_file(ledger_path: Path, tmp_path: Path) -> None:
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        await ledger.append(make_draft(0), make_draft(1))
    assert verify_sqlite_file(ledger_path).ok  # region taken from the file
    with pytest.raises(LedgerError, match="region"):
        verify_sqlite_file(ledger_path, PEER)
    foreign = tmp_path / "foreign.db"
    with raw_db(foreign) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not a tongban ledger"):
        verify_sqlite_file(foreign)


async def test_verify_while_the_ledger_is_open(ledger_path: Path) -> None:
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        await ledger.append(*(make_draft(i) for i in range(20)))
        report = verify_sqlite_file(ledger_path, REGION)
        assert report.ok and report.count == 20
        assert await verify_store(ledger) == report


async def test_undecodable_blob_in_a_text_column(ledger_path: Path) -> None:
    """A value of the wrong SQLite type is one bad entry for both verifiers, not a crash."""
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        await ledger.append(*(make_draft(i) for i in range(6)))
    with raw_db(ledger_path) as conn:
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET detail = x'ff00' WHERE idx = 3")
    report = verify_sqlite_file(ledger_path, REGION)
    assert (report.first_bad_index, report.count) == (3, 6)
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        paged = await verify_store(ledger, page=4)
    assert (paged.first_bad_index, paged.count, paged.head_hash) == (3, 6, report.head_hash)
    assert paged.reason.startswith("undecodable entry")
