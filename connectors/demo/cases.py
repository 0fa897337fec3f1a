"""Demo case back ends: take a Submit, decide it from the demo records (秒批), remember the effect.

Each case a back end takes is one row in ``demo_case_effects`` (the effect the exchange must cause
exactly once). The table is keyed by message id, so a request redelivered after a connector crash
finds its row and gets the same answer: the back end is idempotent, as :class:`CaseAdapter` asks.
``attempts`` counts how often the same request came, so tests can tell calls from effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from connectors.adapters import Adapter, AdapterRequest, StatusUpdate, submit_via_call

LOCAL_SYSTEM = "demo-ywtb"
_SCHEMA = """CREATE TABLE IF NOT EXISTS demo_case_effects (
    message_id TEXT PRIMARY KEY,
    case_no TEXT NOT NULL,
    service TEXT NOT NULL,
    requester_region TEXT NOT NULL,
    statuses TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    created_ns INTEGER NOT NULL
)"""


class DemoCaseAdapter:
    """Wraps a data adapter: Query goes to it unchanged, Submit decides from its answer.

    A record found means approved (1 已接件 → 3 已受理 → 11 办结（通过）); no record means refused at
    acceptance (1 → 5 不予受理). Local codes imitate a city system's own (SJ/SL/BJ/BYSL).
    """

    def __init__(self, inner: Adapter, effects_db: str | Path) -> None:
        self.inner = inner
        self.path = Path(effects_db)
        with sqlite3.connect(self.path, timeout=30) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        return await self.inner.call(request)

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        stored = await asyncio.to_thread(self._seen, request.message_id)
        if stored is not None:
            return stored
        statuses = await submit_via_call(self.inner, request, local_system=LOCAL_SYSTEM)
        return await asyncio.to_thread(self._record, request, statuses)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own in a write transaction taken at once, committed when the block
        ends (rolled back if it raises)."""
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _seen(self, message_id: str) -> list[StatusUpdate] | None:
        with self._write() as conn:
            return _attempt_again(conn, message_id)

    def _record(self, request: AdapterRequest, statuses: list[StatusUpdate]) -> list[StatusUpdate]:
        with self._write() as conn:
            stored = _attempt_again(conn, request.message_id)
            if stored is not None:  # a concurrent attempt won: its answer stands
                return stored
            conn.execute(
                "INSERT INTO demo_case_effects"
                " (message_id, case_no, service, requester_region, statuses, created_ns)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    request.message_id,
                    request.case_no,
                    request.service_code,
                    request.requester_region,
                    json.dumps([s.__dict__ for s in statuses], ensure_ascii=False),
                    time.time_ns(),
                ),
            )
            return statuses


def _attempt_again(conn: sqlite3.Connection, message_id: str) -> list[StatusUpdate] | None:
    """The statuses stored for ``message_id`` (counting this attempt), or None for a new case."""
    row = conn.execute(
        "SELECT statuses FROM demo_case_effects WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE demo_case_effects SET attempts = attempts + 1 WHERE message_id = ?", (message_id,))
    return [StatusUpdate(**s) for s in json.loads(row[0])]


def case_effects(path: str | Path) -> dict[str, int]:
    """message id → attempts, for every case the demo back ends took (test and chaos accounting)."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        conn.execute(_SCHEMA)
        return dict(conn.execute("SELECT message_id, attempts FROM demo_case_effects").fetchall())
    finally:
        conn.close()
