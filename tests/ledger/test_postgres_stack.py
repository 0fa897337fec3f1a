"""Gateways and connectors of two regions running on PostgreSQL ledgers ([ledger] backend =
"postgres"): a Query is recorded on both sides, receipts name PostgreSQL leaves, and the operator's
`tongban ledger verify` checks the PostgreSQL ledger and its signed checkpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledger import Event, PostgresLedger
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.cli import tongban
from tests.e2e.requests import pension
from tests.ledger.conftest import PG_DSN
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config


@pytest.fixture
async def pg_stack(
    topology: Topology, state: DevState, pg_schema: tuple[asyncpg.Connection, str]
) -> AsyncIterator[Stack]:
    conn, schema = pg_schema
    schemas = {SZ: schema, WX: f"{schema}_wx"}
    # The CLI reads the node configs from disk: point them at PostgreSQL too.
    for region, name in schemas.items():
        _set_ledger(state.config_path(region), name)
    s = await start_stack(topology, state)
    try:
        yield s
    finally:
        await stop_stack(s)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schemas[WX]}" CASCADE')


def _set_ledger(p: Path, schema: str) -> None:
    text = p.read_text(encoding="utf-8")
    head, sep, rest = text.partition("[ledger]\n")
    assert sep, "the dev config has a [ledger] section"
    p.write_text(
        f'{head}[ledger]\nbackend = "postgres"\ndsn = "{PG_DSN}"\npg_schema = "{schema}"\n{rest}',
        encoding="utf-8",
    )


async def test_query_on_postgres_ledgers_and_verify(pg_stack: Stack) -> None:
    stack = pg_stack
    for node in stack.nodes.values():
        assert isinstance(node.ledger, PostgresLedger)
    resp = await stack.stub(SZ).Query(pension(), timeout=10)
    assert [e.event for e in await stack.nodes[WX].ledger.by_message_id(resp.message_id)] == [
        Event.RECEIVED,
        Event.PROCESSED,
    ]
    assert [e.event for e in await stack.nodes[SZ].ledger.by_message_id(resp.message_id)] == [
        Event.SUBMITTED,
        Event.RESPONDED,
    ]
    wx_cfg = str(stack.state.config_path(WX))
    assert Config.load(wx_cfg).ledger.backend == "postgres"
    rc, out, err = await tongban(
        "ledger", "export", "--config", wx_cfg, "-o", str(stack.state.root / "b.json")
    )
    assert rc == 0, err
    rc, out, err = await tongban("ledger", "verify", "--config", wx_cfg)
    assert rc == 0, out + err
    assert (
        "2 entries, hash chain OK" in out and "Merkle tree matches the signed checkpoint of 2 entries" in out
    )
