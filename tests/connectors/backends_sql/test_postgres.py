"""The SQL adapter on the machine's real PostgreSQL (issue 14, acceptance 2): one row, several rows, no
row, the statement timeout, injection strings as values, the read-only transaction, the pool limit."""

from __future__ import annotations

import asyncio
import decimal
import json
from pathlib import Path

import asyncpg
import pytest

from connectors.adapters import Adapter, AdapterFailure
from connectors.backends.sql import SqlBackend
from tests.helpers import eventually, free_port
from tongban.core.errors import NotFound, Reason
from tongban.runtime.config import Config

from .conftest import INJECTIONS, ITEM, PG_DSN, Pg, request, service_table

pytestmark = pytest.mark.postgres

ALICE = "110101199003070012"
BOB = "320202198512120023"


async def persons(pg: Pg) -> str:
    """A persons table with Alice and Bob; its qualified name."""
    table = pg.table("persons")
    await pg.conn.execute(
        f"CREATE TABLE {table} (id text PRIMARY KEY, name text NOT NULL, note text, born date, "
        "balance numeric(12, 2), visits int, tags text[], extra jsonb, seen timestamptz)"
    )
    await pg.conn.execute(
        f"INSERT INTO {table} VALUES ($1, '王小明', NULL, '1990-03-07', 1234.50, 3, ARRAY['a', 'b'], "
        """'{"level": 2}', '2026-01-02 03:04:05+00'), """
        "($2, '李华', 'note', '1985-12-12', 10, 0, '{}', NULL, NULL)",
        ALICE,
        BOB,
    )
    return table


async def open_service(
    pg: Pg, cfg: Config, opened: list[SqlBackend], sql: str, params: list[str] | None = None, **more: object
) -> Adapter:
    backend = pg.backend(cfg)
    opened.append(backend)
    return backend.service(ITEM.code, service_table(sql, params, **more), ITEM)


async def test_one_row_every_column_as_a_json_value(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    table = await persons(pg)
    service = await open_service(
        pg,
        cfg,
        closing_backends,
        f"SELECT name, born, balance, visits, tags, extra, seen, note FROM {table} WHERE id = $1",
    )
    answer = await service.call(request(ALICE))
    assert answer == {
        "name": "王小明",
        "born": "1990-03-07",
        "balance": 1234.5,
        "visits": 3,
        "tags": ["a", "b"],
        "extra": {"level": 2},
        "seen": "2026-01-02T03:04:05+00:00",
        "note": None,
    }
    json.dumps(answer)  # JSON-like all the way down


async def test_response_maps_fields_to_columns_and_values_take_their_parameter_types(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    table = await persons(pg)
    service = await open_service(
        pg,
        cfg,
        closing_backends,
        f"SELECT name AS full_name, born FROM {table} WHERE id = $1 AND visits >= $2 AND born < $3",
        ["applicant.id", "fields.visits", "fields.before"],
        response={"name": "full_name", "born": "born"},
    )
    # "3" is bound as an int4 and "2000-01-01" as a date: the server said what the parameters are.
    assert await service.call(request(ALICE, visits="3", before="2000-01-01")) == {
        "name": "王小明",
        "born": "1990-03-07",
    }
    with pytest.raises(NotFound):
        await service.call(request(ALICE, visits="4", before="2000-01-01"))
    with pytest.raises(AdapterFailure) as caught:
        await service.call(request(ALICE, visits="three", before="2000-01-01"))
    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert "three" not in caught.value.message


async def test_several_rows_are_a_list(pg: Pg, cfg: Config, closing_backends: list[SqlBackend]) -> None:
    table = pg.table("payments")
    await pg.conn.execute(f"CREATE TABLE {table} (id text, month text, amount numeric(10, 2))")
    await pg.conn.executemany(
        f"INSERT INTO {table} VALUES ($1, $2, $3)",
        [(ALICE, f"2026-0{m}", decimal.Decimal("812.40")) for m in (3, 1, 2)] + [(BOB, "2026-01", 1)],
    )
    service = await open_service(
        pg,
        cfg,
        closing_backends,
        f"SELECT month, amount FROM {table} WHERE id = $1 ORDER BY month",
        rows="many",
        list_field="records",
    )
    assert await service.call(request(ALICE)) == {
        "records": [
            {"month": "2026-01", "amount": 812.4},
            {"month": "2026-02", "amount": 812.4},
            {"month": "2026-03", "amount": 812.4},
        ]
    }
    with pytest.raises(NotFound):
        await service.call(request("no such person"))
    month = f"SELECT month FROM {table} WHERE id = $1"
    capped = await open_service(
        pg, cfg, closing_backends, month, rows="many", list_field="records", max_rows=2
    )
    with pytest.raises(AdapterFailure, match="max_rows"):
        await capped.call(request(ALICE))
    empty_ok = await open_service(
        pg, cfg, closing_backends, month, rows="many", list_field="records", empty="empty_list"
    )
    assert await empty_ok.call(request("no such person")) == {"records": []}


async def test_no_row_is_not_found_and_two_rows_a_failure(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    table = await persons(pg)
    one = await open_service(pg, cfg, closing_backends, f"SELECT name FROM {table} WHERE id = $1")
    with pytest.raises(NotFound):
        await one.call(request("110101200001010000"))
    every = await open_service(pg, cfg, closing_backends, f"SELECT name FROM {table} WHERE id <> $1")
    with pytest.raises(AdapterFailure, match="expected one row") as caught:
        await every.call(request("nobody"))
    assert caught.value.reason is Reason.BACKEND_FAILURE


async def test_statement_timeout_is_backend_timeout_and_the_server_stops_the_statement(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    backend = pg.backend(cfg, statement_timeout_s=0.2)
    closing_backends.append(backend)
    slow = backend.service(ITEM.code, service_table("SELECT pg_sleep(60) AS slept, $1::text AS id"), ITEM)
    # Far shorter than the 60 s sleep: only the statement timeout can end the call within it.
    async with asyncio.timeout(20):
        with pytest.raises(AdapterFailure) as caught:
            await slow.call(request(ALICE))
    assert caught.value.reason is Reason.BACKEND_TIMEOUT

    async def none_sleeping() -> bool:
        count: int = await pg.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
            pg.application_name,
        )
        return count == 0

    await eventually(none_sleeping, what="the server stopped the statement")
    # The pool is still good afterwards.
    quick = backend.service(ITEM.code, service_table("SELECT $1::text AS id"), ITEM)
    assert await quick.call(request(ALICE)) == {"id": ALICE}


async def test_the_request_deadline_bounds_the_statement(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    backend = pg.backend(cfg, statement_timeout_s=60)
    closing_backends.append(backend)
    slow = backend.service(ITEM.code, service_table("SELECT pg_sleep(60) AS slept, $1::text AS id"), ITEM)
    async with asyncio.timeout(20):  # far shorter than the sleep and the statement timeout
        with pytest.raises(AdapterFailure) as caught:
            await slow.call(request(ALICE, deadline_s=0.5))
    assert caught.value.reason is Reason.BACKEND_TIMEOUT
    with pytest.raises(AdapterFailure) as caught:
        await slow.call(request(ALICE, deadline_s=-1))  # already past: not even sent
    assert caught.value.reason is Reason.BACKEND_TIMEOUT


@pytest.mark.parametrize("hostile", INJECTIONS)
async def test_injection_strings_are_values(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend], hostile: str
) -> None:
    table = await persons(pg)
    await pg.conn.execute(f"INSERT INTO {table} (id, name, note) VALUES ($1, $1, $1)", hostile)
    service = await open_service(
        pg,
        cfg,
        closing_backends,
        f"SELECT id, name, note FROM {table} WHERE id = $1 AND note = $2",
        ["applicant.id", "fields.note"],
    )
    assert await service.call(request(hostile, note=hostile)) == {
        "id": hostile,
        "name": hostile,
        "note": hostile,
    }
    # As a value it matches only itself: never every row, never a statement of its own.
    with pytest.raises(NotFound):
        await service.call(request(f"{ALICE}' OR '1'='1", note=hostile))
    assert await pg.conn.fetchval(f"SELECT count(*) FROM {table}") == 3
    assert await pg.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f'"{pg.schema}".persons')


async def test_a_statement_that_writes_is_refused_and_changes_nothing(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    table = await persons(pg)
    writer = await open_service(
        pg, cfg, closing_backends, f"UPDATE {table} SET name = 'changed' WHERE id = $1 RETURNING name"
    )
    with pytest.raises(AdapterFailure, match="read-only") as caught:
        await writer.call(request(ALICE))
    assert caught.value.reason is Reason.BACKEND_FAILURE
    assert await pg.conn.fetchval(f"SELECT name FROM {table} WHERE id = $1", ALICE) == "王小明"


async def test_the_pool_never_holds_more_than_pool_max_connections(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    table = await persons(pg)
    backend = pg.backend(cfg, pool_min=1, pool_max=2)
    closing_backends.append(backend)
    service = backend.service(ITEM.code, service_table(f"SELECT name FROM {table} WHERE id = $1"), ITEM)

    async def connections(waiting: bool = False) -> int:
        count: int = await pg.conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND (NOT $2 OR wait_event_type = 'Lock')",
            pg.application_name,
            waiting,
        )
        return count

    # The table locked by another connection of the test: every statement waits, holding its
    # connection. (pg_stat_activity is read outside that transaction: inside, it is a snapshot.)
    locker = await asyncpg.connect(PG_DSN)
    try:
        await locker.execute("BEGIN")
        await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        calls = [asyncio.create_task(service.call(request(ALICE))) for _ in range(6)]
        try:

            async def two_waiting() -> bool:
                return await connections(waiting=True) == 2

            await eventually(two_waiting, what="two statements wait on the lock")
            # Six calls, two connections: the other four wait for one in the pool, not in the database.
            assert await connections() == 2
            assert not any(c.done() for c in calls)
        finally:
            await locker.execute("ROLLBACK")  # the lock goes, the statements run
            answers = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await locker.close()
    assert answers == [{"name": "王小明"}] * 6
    assert await connections() <= 2


async def test_an_unreachable_database_is_a_backend_failure(
    cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    backend = SqlBackend.from_table(
        "down", {"kind": "postgres", "dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/test"}, cfg
    )
    closing_backends.append(backend)
    service = backend.service(ITEM.code, service_table("SELECT $1::text AS id"), ITEM)
    for _ in range(2):  # a failed opening is tried again by the next call
        with pytest.raises(AdapterFailure, match="cannot connect") as caught:
            await service.call(request(ALICE))
        assert caught.value.reason is Reason.BACKEND_FAILURE


async def test_dsn_file_and_close(pg: Pg, cfg: Config, tmp_path: Path) -> None:
    (tmp_path / "db.dsn").write_text(PG_DSN + "\n", encoding="utf-8")
    backend = SqlBackend.from_table("filed", {"kind": "postgres", "dsn_file": "db.dsn"}, cfg)
    assert PG_DSN not in repr(backend)
    service = backend.service(ITEM.code, service_table("SELECT $1::text AS id"), ITEM)
    assert await service.call(request(ALICE)) == {"id": ALICE}
    await backend.aclose()
    await backend.aclose()  # idempotent
    with pytest.raises(AdapterFailure, match="closed"):
        await service.call(request(ALICE))


async def test_a_binary_column_is_refused_by_name(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    service = await open_service(pg, cfg, closing_backends, "SELECT 'secret'::bytea AS photo, $1::text AS id")
    with pytest.raises(AdapterFailure, match="'photo' is binary"):
        await service.call(request(ALICE))


async def test_the_sqlstate_but_never_the_value_reaches_the_failure(
    pg: Pg, cfg: Config, closing_backends: list[SqlBackend]
) -> None:
    service = await open_service(pg, cfg, closing_backends, "SELECT $1::int / 0 AS x")
    with pytest.raises(AdapterFailure) as caught:
        await service.call(request("7"))
    assert caught.value.message == "the database refused the statement (SQLSTATE 22012)"
    service = await open_service(pg, cfg, closing_backends, "SELECT 1 AS x FROM no_such_table WHERE $1 = 'x'")
    with pytest.raises(AdapterFailure, match="42P01"):
        await service.call(request(ALICE))
