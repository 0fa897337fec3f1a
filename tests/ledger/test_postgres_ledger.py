"""What only the PostgreSQL store has: its settings, its errors, the region lock and the primary key.

The store contract itself runs on PostgreSQL too, in test_store.py; several processes appending at once are in
test_postgres_concurrency.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from ledger import LedgerError, PostgresLedger, SQLiteLedger
from ledger.checkpoint_signer import CheckpointSigner
from ledger.errors import CheckpointRefused
from tongban.core.keys import SigningKey

from .conftest import PG_DSN
from .helpers import REGION, make_draft

pytestmark = pytest.mark.postgres


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresLedger(PG_DSN, REGION, schema='x"; DROP TABLE entries; --')
    with pytest.raises(ValueError, match="schema"):
        PostgresLedger(PG_DSN, REGION, schema="Upper")
    with pytest.raises(ValueError, match="max_batch"):
        PostgresLedger(PG_DSN, REGION, max_batch=0)
    with pytest.raises(ValueError, match="pool_size"):
        PostgresLedger(PG_DSN, REGION, pool_size=0)
    with pytest.raises(ValueError, match="timeout"):
        PostgresLedger(PG_DSN, REGION, timeout=0)
    with pytest.raises(ValueError, match="region"):
        PostgresLedger(PG_DSN, "")


async def test_unreachable_database_is_a_clear_ledger_error() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    ledger = PostgresLedger("postgresql://ledger:s3cret@127.0.0.1:9/tongban", REGION, timeout=2)
    with pytest.raises(
        LedgerError, match=r"cannot connect to the ledger database postgresql://127\.0\.0\.1:9/"
    ):
        await ledger.open()
    assert "s3cret" not in repr(ledger)


async def test_same_drafts_same_entries_as_sqlite(
    pg_schema: tuple[asyncpg.Connection, str], tmp_path: Path
) -> None:
    drafts = [make_draft(i, time_ns=1_700_000_000_000_000_000 + i, detail=f"第 {i} 步") for i in range(30)]
    _, schema = pg_schema
    async with (
        SQLiteLedger(tmp_path / "l.db", REGION) as lite,
        PostgresLedger(PG_DSN, REGION, schema=schema) as pg,
    ):
        for group in (drafts[:1], drafts[1:10], drafts[10:11], drafts[11:]):
            assert await lite.append(*group) == await pg.append(*group)
        assert await lite.entries() == await pg.entries()
        assert await lite.head() == await pg.head()


async def test_append_waits_for_the_region_lock_within_its_deadline(
    pg_schema: tuple[asyncpg.Connection, str],
) -> None:
    """Another replica holding the region's append lock too long fails the batch cleanly, leaving nothing."""
    conn, schema = pg_schema
    async with PostgresLedger(PG_DSN, REGION, schema=schema, timeout=0.5) as ledger:
        await ledger.append(make_draft(0))
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"tongban.ledger:{schema}:{REGION}"
            )
            started = time.monotonic()
            with pytest.raises(LedgerError, match="rolled back: timed out"):
                await ledger.append(make_draft(1), make_draft(2))
            assert 0.4 < time.monotonic() - started < 5
        assert await ledger.size() == 1
        [entry] = await ledger.append(make_draft(3))
        assert entry.index == 1


async def test_primary_key_refuses_a_second_entry_at_an_index(
    pg_schema: tuple[asyncpg.Connection, str],
) -> None:
    """The last line against a fork: even a writer that skipped the lock cannot reuse an index."""
    conn, schema = pg_schema
    async with PostgresLedger(PG_DSN, REGION, schema=schema) as ledger:
        await ledger.append(make_draft(0), make_draft(1))
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(f'INSERT INTO "{schema}".entries SELECT * FROM "{schema}".entries WHERE idx = 1')


async def test_many_concurrent_callers_one_process(pg_schema: tuple[asyncpg.Connection, str]) -> None:
    _, schema = pg_schema
    async with PostgresLedger(PG_DSN, REGION, schema=schema, pool_size=2) as ledger:
        # More callers than pooled connections: reads and appends queue for the pool, none fails.
        appends = asyncio.gather(*(ledger.append(make_draft(i)) for i in range(300)))
        reads = asyncio.gather(*(ledger.size() for _ in range(50)))
        appended, sizes = await asyncio.gather(appends, reads)
        assert sorted(entries[0].index for entries in appended) == list(range(300))
        assert all(0 <= size <= 300 for size in sizes)
        assert ledger.commits < 30


async def test_replicas_on_other_hosts_never_sign_inconsistent_checkpoints(
    pg_schema: tuple[asyncpg.Connection, str], tmp_path: Path
) -> None:
    """Two gateway replicas of one region on different hosts (each its own state file) sign
    checkpoints of one PostgreSQL log: the last one either signed is kept in the database under the
    region's lock, so after the table is edited the replica with the honest tree in memory refuses
    to sign beside the other's checkpoint of the edited one."""

    conn, schema = pg_schema
    key = SigningKey.generate(REGION)
    store = PostgresLedger(PG_DSN, REGION, schema=schema)
    await store.open()
    try:
        await store.append(*(make_draft(i) for i in range(4)))
        a = CheckpointSigner(store, key=key, state_path=tmp_path / "host-a" / "ckpt.json")
        assert (await a.sign_now()).checkpoint.size == 4
        await store.append(*(make_draft(i) for i in range(4, 8)))
        await a.tree.sync(store)  # replica A holds the honest 8 leaves
        await conn.execute(f'DROP TRIGGER entries_no_update_delete ON "{schema}".entries')
        await conn.execute(f"UPDATE \"{schema}\".entries SET detail = 'edited' WHERE idx = 6")
        b = CheckpointSigner(store, key=key, state_path=tmp_path / "host-b" / "ckpt.json")
        edited = await b.sign_now()  # consistent with 4, which B reads from the database
        assert edited.checkpoint.size == 8
        await store.append(make_draft(8))
        with pytest.raises(CheckpointRefused) as caught:
            await a.sign_now()
        assert (caught.value.last_size, caught.value.size) == (8, 9)
        row = await conn.fetchval(f'SELECT note FROM "{schema}".checkpoints WHERE region = $1', REGION)
        assert bytes(row) == edited.note
    finally:
        await store.close()
