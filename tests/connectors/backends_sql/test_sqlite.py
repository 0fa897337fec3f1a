"""The SQL adapter on a SQLite file (the embedded demo database's kind): one row, several rows, no row,
injection strings as values, a write refused by the read-only connection, the statement timeout."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from connectors.adapters import Adapter, AdapterFailure, AdapterRequest
from connectors.backends.sql import SqlBackend
from connectors.backends.sql_sqlite import SqliteEngine
from connectors.demo.backends import DemoBackend
from connectors.demo.seed import HOUSING_FUND
from tests.helpers import eventually
from tongban.core.catalogue import CatalogueItem
from tongban.core.errors import NotFound, Reason
from tongban.runtime.config import Config

from .conftest import INJECTIONS, ITEM, request, service_table, sqlite_rows

ALICE = "110101199003070012"
BOB = "320202198512120023"
SLOW = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) AS n, $1 AS id FROM c"
"""A statement that never ends by itself: only its timeout stops it."""


@pytest.fixture
def persons(sqlite_file: Path) -> Path:
    sqlite_rows(
        sqlite_file,
        "INSERT INTO persons VALUES (?, '王小明', NULL, '1990-03-07', 3), "
        "(?, '李华', 'note', '1985-12-12', 0)",
        ALICE,
        BOB,
    )
    return sqlite_file


def open_service(
    cfg: Config, opened: list[SqlBackend], sql: str, params: list[str] | None = None, **more: Any
) -> Adapter:
    backend = SqlBackend.from_table(
        "registry",
        {"kind": "sqlite", "path": "registry.db", **more.pop("backend", {})},
        cfg,
    )
    opened.append(backend)
    return backend.service(ITEM.code, service_table(sql, params, **more), ITEM)


async def test_one_row(persons: Path, cfg: Config, closing_backends: list[SqlBackend]) -> None:
    service = open_service(
        cfg,
        closing_backends,
        "SELECT name AS full_name, born, visits, note FROM persons WHERE id = $1 AND visits >= $2",
        ["applicant.id", "fields.visits"],
        response={"name": "full_name", "born": "born", "note": "note"},
    )
    # "2" compares with the INTEGER column by its affinity.
    assert await service.call(request(ALICE, visits="2")) == {
        "name": "王小明",
        "born": "1990-03-07",
        "note": None,
    }
    with pytest.raises(NotFound):
        await service.call(request(ALICE, visits="4"))


async def test_several_rows_and_none(persons: Path, cfg: Config, closing_backends: list[SqlBackend]) -> None:
    service = open_service(
        cfg,
        closing_backends,
        "SELECT id, name FROM persons WHERE id <> $1 ORDER BY id",
        rows="many",
        list_field="records",
    )
    assert await service.call(request("nobody")) == {
        "records": [{"id": ALICE, "name": "王小明"}, {"id": BOB, "name": "李华"}]
    }
    with pytest.raises(NotFound):
        await open_service(
            cfg, closing_backends, "SELECT id FROM persons WHERE id = $1", rows="many", list_field="records"
        ).call(request("nobody"))
    with pytest.raises(NotFound):
        await open_service(cfg, closing_backends, "SELECT id FROM persons WHERE id = $1").call(
            request("nobody")
        )


@pytest.mark.parametrize("hostile", INJECTIONS)
async def test_injection_strings_are_values(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend], hostile: str
) -> None:
    sqlite_rows(persons, "INSERT INTO persons (id, name, note) VALUES (?1, ?1, ?1)", hostile)
    service = open_service(
        cfg,
        closing_backends,
        "SELECT id, name, note FROM persons WHERE id = $1 AND note = $2",
        ["applicant.id", "fields.note"],
    )
    assert await service.call(request(hostile, note=hostile)) == {
        "id": hostile,
        "name": hostile,
        "note": hostile,
    }
    with pytest.raises(NotFound):
        await service.call(request(f"{ALICE}' OR '1'='1", note=hostile))
    assert sqlite_rows(persons, "SELECT count(*) FROM persons") == [(3,)]


async def test_a_statement_that_writes_is_refused_and_changes_nothing(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    writer = open_service(
        cfg, closing_backends, "UPDATE persons SET name = 'changed' WHERE id = $1 RETURNING name"
    )
    with pytest.raises(AdapterFailure, match="read-only") as caught:
        await writer.call(request(ALICE))
    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert sqlite_rows(persons, "SELECT name FROM persons WHERE id = ?", ALICE) == [("王小明",)]


async def test_statement_timeout_is_backend_timeout(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    slow = open_service(cfg, closing_backends, SLOW, backend={"statement_timeout_s": 0.2})
    async with asyncio.timeout(20):  # the statement never ends: only its timeout can end the call
        with pytest.raises(AdapterFailure) as caught:
            await slow.call(request(ALICE))
    assert caught.value.reason is Reason.BACKEND_TIMEOUT
    assert caught.value.message == "the statement ran out of time"
    # The connection is good afterwards.
    quick = closing_backends[0].service(ITEM.code, service_table("SELECT $1 AS id"), ITEM)
    assert await quick.call(request(ALICE)) == {"id": ALICE}


async def test_the_request_deadline_bounds_the_statement(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    slow = open_service(cfg, closing_backends, SLOW, backend={"statement_timeout_s": 60})
    async with asyncio.timeout(20):  # far shorter than the statement timeout
        with pytest.raises(AdapterFailure) as caught:
            await slow.call(request(ALICE, deadline_s=0.3))
    assert caught.value.reason is Reason.BACKEND_TIMEOUT


async def test_a_caller_that_gives_up_stops_its_statement(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    slow = open_service(
        cfg, closing_backends, SLOW, backend={"statement_timeout_s": 60, "max_concurrency": 1}
    )
    call = asyncio.create_task(slow.call(request(ALICE)))
    engine = closing_backends[0].engine
    assert isinstance(engine, SqliteEngine)
    await eventually(lambda: engine.running == 1, what="the statement handed to its worker thread")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # With one worker thread, the next statement runs only once the interrupted one has ended.
    quick = closing_backends[0].service(ITEM.code, service_table("SELECT $1 AS id"), ITEM)
    async with asyncio.timeout(20):
        assert await quick.call(request(ALICE)) == {"id": ALICE}


async def test_worker_threads_are_bounded_by_max_concurrency(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    service = open_service(
        cfg, closing_backends, "SELECT name FROM persons WHERE id = $1", backend={"max_concurrency": 2}
    )
    answers = await asyncio.gather(*(service.call(request(ALICE)) for _ in range(20)))
    assert answers == [{"name": "王小明"}] * 20
    workers = [t for t in threading.enumerate() if t.name.startswith("sql-registry")]
    assert 1 <= len(workers) <= 2


async def test_a_writer_holding_the_file_does_not_stop_readers(
    persons: Path, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    service = open_service(cfg, closing_backends, "SELECT name FROM persons WHERE id = $1")
    with closing(sqlite3.connect(persons)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE persons SET name = 'pending' WHERE id = ?", (ALICE,))
        assert await service.call(request(ALICE)) == {"name": "王小明"}  # WAL: the committed row
        writer.execute("ROLLBACK")


async def test_a_missing_file_is_a_backend_failure(cfg: Config, closing_backends: list[SqlBackend]) -> None:
    service = open_service(cfg, closing_backends, "SELECT $1 AS id")
    with pytest.raises(AdapterFailure, match="cannot open") as caught:
        await service.call(request(ALICE))
    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert not (cfg.base_dir / "registry.db").exists()  # read-only: not created either


async def test_close(persons: Path, cfg: Config) -> None:
    backend = SqlBackend.from_table("registry", {"kind": "sqlite", "path": "registry.db"}, cfg)
    service = backend.service(ITEM.code, service_table("SELECT $1 AS id"), ITEM)
    assert await service.call(request(ALICE)) == {"id": ALICE}
    await backend.aclose()
    await backend.aclose()
    with pytest.raises(AdapterFailure, match="closed"):
        await service.call(request(ALICE))


async def test_the_demo_database_answers_through_the_adapter(tmp_path: Path, cfg: Config) -> None:
    # The demo stores keep their own read-write connections open on the same (WAL) file meanwhile.
    demo = DemoBackend(tmp_path / "wuxi.db")
    id_no, _, status, balance, *_ = HOUSING_FUND[0]
    backend = SqlBackend.from_table("wuxi_demo", {"kind": "sqlite", "path": "wuxi.db"}, cfg)
    item = CatalogueItem(code="ZFGJJTQ00001", response_fields=["account_status", "account_balance"])
    service = backend.service(
        item.code,
        {
            "sql": "SELECT status AS account_status, balance AS account_balance "
            "FROM hf_account WHERE id_no = $1",
            "params": ["applicant.id"],
        },
        item,
    )
    try:
        assert await service.call(request(id_no)) == {"account_status": status, "account_balance": balance}
    finally:
        await backend.aclose()
    assert demo.housing_fund.path.exists()


async def test_columns_named_booleans_answer_true_and_false(tmp_path: Path) -> None:
    db = tmp_path / "flags.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (id TEXT, name TEXT)")
        conn.execute("INSERT INTO t VALUES ('a', 'x')")
    cfg = Config(base_dir=tmp_path)
    backend = SqlBackend.from_table("flags", {"kind": "sqlite", "path": str(db)}, cfg)
    item = CatalogueItem(code="FLAGTEST0001", response_fields=["matches", "count"])
    service = backend.service(
        item.code,
        {
            "sql": "SELECT name = $2 AS matches, 1 AS count FROM t WHERE id = $1",
            "params": ["applicant.id", "fields.name"],
            "booleans": ["matches"],
        },
        item,
    )
    try:
        request = AdapterRequest("m", item.code, "440300", "person", "a", "", {"name": "x"})
        assert await service.call(request) == {"matches": True, "count": 1}
        request = AdapterRequest("m", item.code, "440300", "person", "a", "", {"name": "y"})
        assert await service.call(request) == {"matches": False, "count": 1}
    finally:
        await backend.aclose()
