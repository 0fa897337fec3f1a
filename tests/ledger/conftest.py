"""Fixtures of the ledger tests: one store-agnostic suite, on a SQLite file and on the machine's PostgreSQL.

``backend`` is parametrised (ids ``sqlite`` / ``postgres``): a fresh, empty storage place (a temp file, or a
schema of its own that is dropped afterwards) that makes ledgers on it and reaches behind them with raw SQL,
as someone with database access could. ``ledger`` is an open ledger on it.

PostgreSQL is at ``TONGBAN_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``). When it
cannot be reached the PostgreSQL tests fail under ``CI=true`` (CI promises a database) and skip otherwise.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger import LedgerStore, PostgresLedger, SQLiteLedger, VerifyReport
from ledger.verify import verify_sqlite_file
from ledger.verify_store import verify_store
from tests.postgres import PG_DSN, PG_PROBE_TIMEOUT_S, probe_postgres, require_postgres

from .helpers import REGION, raw_db

ENTRY_COLUMNS = (
    "time_ns",
    "region",
    "event",
    "message_id",
    "peer_region",
    "service_code",
    "envelope_digest",
    "trace_id",
    "detail",
    "prev_hash",
    "entry_hash",
)
"""Every column of the entries table but the index, the same on both stores (the schema, pinned)."""


@pytest.fixture(scope="session")
def postgres_problem() -> str | None:
    return probe_postgres()


class Backend:
    """A fresh storage place for ledgers, plus raw access that bypasses the ledger.

    Raw statements name the tables ``{entries}`` and ``{meta}``; each backend fills in its own names.

    Attributes:
        name: ``sqlite`` or ``postgres``.
        refused: what a raw UPDATE or DELETE raises while the append-only triggers are in place.
        constraint_error: the cause a failed batch carries when a constraint (the poison trigger) stops it.
    """

    name: str
    refused: type[Exception]
    constraint_error: type[Exception]

    def make(self, region: str = REGION, **kw: Any) -> LedgerStore:
        """A new, unopened ledger on this storage."""
        raise NotImplementedError

    async def sql(self, statement: str) -> None:
        """Run one raw statement (autocommit)."""
        raise NotImplementedError

    async def scalar(self, query: str) -> Any:
        """The first column of the first row of a raw query."""
        raise NotImplementedError

    async def meta(self) -> dict[str, str]:
        """The ledger metadata table."""
        raise NotImplementedError

    async def exists(self) -> bool:
        """Whether the storage holds a ledger at all (a file, a schema)."""
        raise NotImplementedError

    async def drop_guards(self) -> None:
        """Remove the append-only triggers, as someone with write access to the database could."""
        raise NotImplementedError

    async def poison(self) -> None:
        """Make every insert of an entry whose detail is ``poison`` fail inside the database."""
        raise NotImplementedError

    async def unpoison(self) -> None:
        raise NotImplementedError

    async def verify(self, region: str | None = REGION) -> VerifyReport:
        """Verify the stored ledger with a ledger of its own (the file verifier for SQLite)."""
        raise NotImplementedError

    async def row_count(self) -> int:
        count: int = await self.scalar("SELECT count(*) FROM {entries}")
        return count

    async def swap(self, i: int, j: int) -> None:
        """Exchange the content of two entries, keeping their indexes."""
        assignments = ", ".join(f"{c} = other.{c}" for c in ENTRY_COLUMNS)
        # One UPDATE … FROM (a self-join) swaps both rows at once in both dialects.
        await self.sql(
            f"UPDATE {{entries}} SET {assignments} FROM "
            f"(SELECT idx AS other_idx, {', '.join(ENTRY_COLUMNS)} FROM {{entries}} WHERE idx IN ({i}, {j})) "
            f"AS other WHERE {{entries}}.idx IN ({i}, {j}) AND other.other_idx <> {{entries}}.idx"
        )


class SQLiteBackend(Backend):
    name = "sqlite"
    refused = sqlite3.IntegrityError
    constraint_error = sqlite3.IntegrityError

    def __init__(self, path: Path) -> None:
        self.path = path

    def make(self, region: str = REGION, **kw: Any) -> LedgerStore:
        return SQLiteLedger(self.path, region, **kw)

    def _format(self, statement: str) -> str:
        return statement.format(entries="entries", meta="meta")

    async def sql(self, statement: str) -> None:
        with raw_db(self.path) as conn:
            conn.execute(self._format(statement))

    async def scalar(self, query: str) -> Any:
        with raw_db(self.path) as conn:
            return conn.execute(self._format(query)).fetchone()[0]

    async def meta(self) -> dict[str, str]:
        with raw_db(self.path) as conn:
            return dict(conn.execute("SELECT key, value FROM meta").fetchall())

    async def exists(self) -> bool:
        return self.path.exists()

    async def drop_guards(self) -> None:
        await self.sql("DROP TRIGGER entries_no_update")
        await self.sql("DROP TRIGGER entries_no_delete")

    async def poison(self) -> None:
        await self.sql(
            "CREATE TRIGGER poison BEFORE INSERT ON entries WHEN NEW.detail = 'poison' "
            "BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
        )

    async def unpoison(self) -> None:
        await self.sql("DROP TRIGGER poison")

    async def verify(self, region: str | None = REGION) -> VerifyReport:
        return verify_sqlite_file(self.path, region)


class PostgresBackend(Backend):
    name = "postgres"
    refused = asyncpg.RestrictViolationError
    constraint_error = asyncpg.CheckViolationError

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.dsn = PG_DSN

    def make(self, region: str = REGION, **kw: Any) -> LedgerStore:
        return PostgresLedger(PG_DSN, region, schema=self.schema, **kw)

    def _format(self, statement: str) -> str:
        return statement.format(entries=f'"{self.schema}".entries', meta=f'"{self.schema}".meta')

    async def sql(self, statement: str) -> None:
        await self.conn.execute(self._format(statement))

    async def scalar(self, query: str) -> Any:
        return await self.conn.fetchval(self._format(query))

    async def meta(self) -> dict[str, str]:
        rows = await self.conn.fetch(self._format("SELECT key, value FROM {meta}"))
        return {row["key"]: row["value"] for row in rows}

    async def exists(self) -> bool:
        found: bool = await self.conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", self.schema
        )
        return found

    async def drop_guards(self) -> None:
        await self.sql("DROP TRIGGER entries_no_update_delete ON {entries}")
        await self.sql("DROP TRIGGER entries_no_truncate ON {entries}")

    async def poison(self) -> None:
        await self.sql(
            f"""CREATE FUNCTION "{self.schema}".poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'poisoned' USING ERRCODE = 'check_violation'; END $$"""
        )
        await self.sql(
            "CREATE TRIGGER poison BEFORE INSERT ON {entries} FOR EACH ROW "
            f"WHEN (NEW.detail = 'poison') EXECUTE FUNCTION \"{self.schema}\".poison()"
        )

    async def unpoison(self) -> None:
        await self.sql("DROP TRIGGER poison ON {entries}")

    async def verify(self, region: str | None = REGION) -> VerifyReport:
        async with self.make(region or REGION) as ledger:
            return await verify_store(ledger, region=region)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """A fresh ledger file location; the file itself is created by the first open."""
    return tmp_path / "ledger.db"


@contextlib.asynccontextmanager
async def _own_schema(problem: str | None) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    require_postgres(problem, what="the ledger tests")
    conn = await asyncpg.connect(PG_DSN, timeout=PG_PROBE_TIMEOUT_S)
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"
    try:
        yield conn, schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def pg_schema(postgres_problem: str | None) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A raw connection and the name of a schema of this test's own, dropped (with its tables) afterwards."""
    async with _own_schema(postgres_problem) as found:
        yield found


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, ledger_path: Path) -> AsyncIterator[Backend]:
    """A fresh storage place, on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        yield SQLiteBackend(ledger_path)
        return
    # Looked up only for the postgres parameter, so SQLite runs never probe the database.
    problem: str | None = request.getfixturevalue("postgres_problem")
    async with _own_schema(problem) as (conn, schema):
        yield PostgresBackend(conn, schema)


@pytest.fixture
async def ledger(backend: Backend) -> AsyncIterator[LedgerStore]:
    """An open ledger on a fresh backend."""
    async with backend.make() as opened:
        yield opened
