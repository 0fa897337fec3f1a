"""Fixtures of the SQL adapter tests: the machine's PostgreSQL (a schema of each test's own), a SQLite
file, a catalogue item and requests.

PostgreSQL is at ``TONGBAN_TEST_PG_DSN`` (default ``postgresql://postgres@127.0.0.1:5432/test``), as for
the ledger tests (tests/ledger/conftest.py): when it cannot be reached the PostgreSQL tests fail under
``CI=true`` (CI promises a database) and skip otherwise.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from connectors.adapters import AdapterRequest
from connectors.backends.sql import SqlBackend
from tests.postgres import PG_DSN, PG_PROBE_TIMEOUT_S, probe_postgres, require_postgres
from tongban.core.catalogue import CatalogueItem
from tongban.runtime.config import Config

CODE = "TESTSQL0000000001"

INJECTIONS = ["'; DROP TABLE persons; --", "1 OR 1=1", "$1", "' OR '1'='1", 'x"; DELETE FROM persons; --']
"""Field values that would change a statement they were written into."""

ITEM = CatalogueItem(
    code=CODE, name="SQL adapter test item", response_fields=["id", "name", "note", "born", "records"]
)
"""The catalogue item the test services answer."""


@pytest.fixture(scope="session")
def postgres_problem() -> str | None:
    return probe_postgres()


def request(
    applicant_id: str = "110101199003070012", *, deadline_s: float = 30.0, **fields: str
) -> AdapterRequest:
    """A verified request for ``ITEM`` as an adapter sees it (deadline ``deadline_s`` from now)."""
    return AdapterRequest(
        message_id="msg-sql-test",
        service_code=CODE,
        requester_region="440300",
        applicant_kind="person",
        applicant_id=applicant_id,
        applicant_name="张三",
        fields=dict(fields),
        deadline=time.time() + deadline_s,
    )


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(base_dir=tmp_path)


@dataclass
class Pg:
    """A raw connection (as the database's owner) and a schema of this test's own."""

    conn: asyncpg.Connection
    schema: str

    def table(self, name: str) -> str:
        """The qualified name of table ``name`` in this test's schema."""
        return f'"{self.schema}".{name}'

    def backend(self, cfg: Config, **settings: Any) -> SqlBackend:
        """A PostgreSQL back end on the test database, named after the schema (its application_name)."""
        return SqlBackend.from_table(self.schema, {"kind": "postgres", "dsn": PG_DSN, **settings}, cfg)

    @property
    def application_name(self) -> str:
        return f"tongban-sql-{self.schema}"[:63]


@pytest.fixture
async def pg(postgres_problem: str | None) -> AsyncIterator[Pg]:
    """The test database with a schema of this test's own, dropped (with its tables) afterwards."""
    require_postgres(postgres_problem, what="the SQL adapter tests")
    conn = await asyncpg.connect(PG_DSN, timeout=PG_PROBE_TIMEOUT_S)
    schema = f"sql_test_{uuid.uuid4().hex[:16]}"
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield Pg(conn, schema)
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def closing_backends() -> AsyncIterator[list[SqlBackend]]:
    """Back ends a test opens; closed afterwards."""
    opened: list[SqlBackend] = []
    yield opened
    for backend in opened:
        await backend.aclose()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Iterator[Path]:
    """A SQLite database in WAL mode (as the demo back ends write theirs) with a persons table."""
    path = tmp_path / "registry.db"
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE persons (id TEXT PRIMARY KEY, name TEXT, note TEXT, born TEXT, visits INTEGER)"
        )
    yield path


def sqlite_rows(path: Path, statement: str, *values: Any) -> list[tuple[Any, ...]]:
    """Run one statement on ``path`` as its owner (read-write); its rows."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(statement, values).fetchall()


def service_table(sql: str, params: list[str] | None = None, **more: Any) -> Mapping[str, Any]:
    return {"sql": sql, "params": params if params is not None else ["applicant.id"], **more}
