"""The cases a region submitted: receipts, the outbox of sealed requests, and status events.

One SQLite file per region (``[gateway] case_store``), shared by the region's gateway replicas. A
Submit is accepted when its row (with the sealed envelope, the outbox copy the reconciler re-sends
from) and its SUBMITTED ledger entry are committed. Idempotency keys are unique per calling system.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ledger import EntryDraft, Event
from tongban.core.delivery import delivery_rank
from tongban.core.details import Detail
from tongban.runtime.records import draft
from tongban.runtime.sqlitedb import SqliteDb
from tongban.v1 import exchange_pb2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS cases (
        case_no TEXT PRIMARY KEY,
        message_id TEXT NOT NULL UNIQUE,
        caller TEXT NOT NULL,
        idem_key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        service TEXT NOT NULL,
        to_region TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        request_digest BLOB NOT NULL,
        envelope BLOB NOT NULL,
        out_subject TEXT NOT NULL,
        deadline_ms INTEGER NOT NULL,
        traceparent TEXT NOT NULL,
        accepted_ns INTEGER NOT NULL,
        updated_ns INTEGER NOT NULL,
        published INTEGER NOT NULL DEFAULT 0,
        resends INTEGER NOT NULL DEFAULT 0,
        delivery INTEGER NOT NULL,
        status INTEGER NOT NULL DEFAULT 0,
        local_code TEXT NOT NULL DEFAULT '',
        local_system TEXT NOT NULL DEFAULT '',
        last_seq INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS cases_idem ON cases (caller, idem_key) WHERE idem_key <> ''",
    "CREATE INDEX IF NOT EXISTS cases_in_transit ON cases (delivery, accepted_ns) WHERE delivery <= 1",
    """CREATE TABLE IF NOT EXISTS case_events (
        case_no TEXT NOT NULL,
        seq INTEGER NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (case_no, seq)
    )""",
    # Receiving regions' signed receipts for what this region sent (Query and Submit alike).
    """CREATE TABLE IF NOT EXISTS receipts (
        message_id TEXT PRIMARY KEY,
        region TEXT NOT NULL,
        leaf_index INTEGER NOT NULL,
        signed BLOB NOT NULL,
        received_ns INTEGER NOT NULL
    )""",
)

_ROW = (
    "case_no, message_id, caller, idem_key, fingerprint, service, to_region, trace_id, request_digest, "
    "envelope, out_subject, deadline_ms, traceparent, accepted_ns, updated_ns, published, resends, delivery, "
    "status, local_code, local_system, last_seq"
)


@dataclass
class CaseRow:
    case_no: str
    message_id: str
    caller: str
    idem_key: str
    """Keyed digest of the caller's idempotency key ('' without one): the key itself is caller
    text and is never stored."""
    fingerprint: str
    service: str
    to_region: str
    trace_id: str
    request_digest: bytes
    envelope: bytes
    out_subject: str
    deadline_ms: int
    traceparent: str
    accepted_ns: int
    updated_ns: int = 0
    published: int = 0
    resends: int = 0
    delivery: int = exchange_pb2.DELIVERY_STATE_ACCEPTED
    status: int = 0
    local_code: str = ""
    local_system: str = ""
    last_seq: int = 0

    def receipt(self, *, replayed: bool = False) -> exchange_pb2.SubmitResponse:
        r = exchange_pb2.SubmitResponse(
            message_id=self.message_id,
            case_no=self.case_no,
            request_digest=self.request_digest,
            trace_id=self.trace_id,
            replayed=replayed,
        )
        r.accepted_at.FromNanoseconds(self.accepted_ns)
        return r

    def entry(self, event: Event, detail: Detail, *, digest: bytes | None = None) -> EntryDraft:
        """The ledger entry for ``event`` of this case (naming its request's digest unless ``digest``)."""
        return draft(
            event,
            self.message_id,
            peer=self.to_region,
            service=self.service,
            digest=self.request_digest if digest is None else digest,
            trace_id=self.trace_id,
            detail=detail,
        )


class IdempotencyConflict(Exception):
    """The idempotency key was used before, for another request."""


class CaseStore:
    """The region's case table and event log."""

    def __init__(self, path: Path) -> None:
        self.db = SqliteDb(path, _SCHEMA)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    @staticmethod
    def _row(r: tuple[object, ...] | None) -> CaseRow | None:
        return None if r is None else CaseRow(*r)  # type: ignore[arg-type]

    async def insert(self, row: CaseRow) -> tuple[CaseRow, bool]:
        """Insert ``row``; if its idempotency key exists, return the existing row instead.

        Returns:
            (the stored row, True if it was inserted now).

        Raises:
            IdempotencyConflict: the key exists with another request fingerprint.
        """

        def tx(conn: sqlite3.Connection) -> tuple[CaseRow, bool]:
            if row.idem_key:
                found = conn.execute(
                    f"SELECT {_ROW} FROM cases WHERE caller = ? AND idem_key = ?", (row.caller, row.idem_key)
                ).fetchone()
                if found is not None:
                    existing = CaseRow(*found)
                    if existing.fingerprint != row.fingerprint:
                        raise IdempotencyConflict(row.idem_key)
                    return existing, False
            row.updated_ns = row.accepted_ns
            values = tuple(getattr(row, f.strip()) for f in _ROW.split(","))
            conn.execute(f"INSERT INTO cases ({_ROW}) VALUES ({','.join('?' * len(values))})", values)
            return row, True

        return await self.db.run(tx)

    async def by_idempotency_key(self, caller: str, key: str) -> CaseRow | None:
        return await self.db.run(
            lambda c: self._row(
                c.execute(
                    f"SELECT {_ROW} FROM cases WHERE caller = ? AND idem_key = ?", (caller, key)
                ).fetchone()
            ),
            write=False,
        )

    async def get(self, case_no: str) -> CaseRow | None:
        return await self.db.run(
            lambda c: self._row(
                c.execute(f"SELECT {_ROW} FROM cases WHERE case_no = ?", (case_no,)).fetchone()
            ),
            write=False,
        )

    async def by_message_id(self, message_id: str) -> CaseRow | None:
        return await self.db.run(
            lambda c: self._row(
                c.execute(f"SELECT {_ROW} FROM cases WHERE message_id = ?", (message_id,)).fetchone()
            ),
            write=False,
        )

    async def mark_published(self, message_id: str) -> None:
        await self.db.run(
            lambda c: c.execute("UPDATE cases SET published = 1 WHERE message_id = ?", (message_id,))
        )

    async def set_delivery(self, message_id: str, state: int) -> CaseRow | None:
        """Advance the delivery state (never back to an earlier one). Returns the row if it changed."""

        def tx(conn: sqlite3.Connection) -> CaseRow | None:
            found = self._row(
                conn.execute(f"SELECT {_ROW} FROM cases WHERE message_id = ?", (message_id,)).fetchone()
            )
            if found is None or delivery_rank(state) <= delivery_rank(found.delivery):
                return None
            now = time.time_ns()
            conn.execute(
                "UPDATE cases SET delivery = ?, updated_ns = ? WHERE message_id = ?", (state, now, message_id)
            )
            found.delivery, found.updated_ns = state, now
            return found

        return await self.db.run(tx)

    async def apply_events(self, events: list[exchange_pb2.CaseEvent]) -> bool:
        """Record status events from the handling region; False if all were already recorded.

        The case's status and delivery state follow the event with the highest sequence.
        """

        def tx(conn: sqlite3.Connection) -> bool:
            return any([_apply(conn, ev) for ev in events])

        return await self.db.run(tx)

    async def store_receipt(self, message_id: str, region: str, leaf_index: int, signed: bytes) -> None:
        """Keep a verified receipt (the first one per message: a redelivered event repeats it)."""
        await self.db.run(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO receipts (message_id, region, leaf_index, signed, received_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (message_id, region, leaf_index, signed, time.time_ns()),
            )
        )

    async def receipt(self, message_id: str) -> bytes | None:
        """The signed receipt the receiving region gave for ``message_id``, if any."""
        row = await self.db.run(
            lambda c: c.execute("SELECT signed FROM receipts WHERE message_id = ?", (message_id,)).fetchone(),
            write=False,
        )
        return None if row is None else bytes(row[0])

    async def events(self, case_no: str, after: int = 0) -> list[exchange_pb2.CaseEvent]:
        rows = await self.db.run(
            lambda c: c.execute(
                "SELECT event FROM case_events WHERE case_no = ? AND seq > ? ORDER BY seq", (case_no, after)
            ).fetchall(),
            write=False,
        )
        return [exchange_pb2.CaseEvent.FromString(r[0]) for r in rows]

    async def in_transit(
        self, *, accepted_before_ns: int, after: tuple[int, str] = (0, ""), limit: int = 500
    ) -> list[CaseRow]:
        """Cases accepted before the given time that were neither forwarded nor given up on, in
        (accepted_ns, message_id) order after the cursor ``after``: page on with the last row's."""
        return await self.db.run(
            lambda c: [
                CaseRow(*r)
                for r in c.execute(
                    f"SELECT {_ROW} FROM cases WHERE delivery <= 1 AND accepted_ns < ?"
                    " AND (accepted_ns, message_id) > (?, ?) ORDER BY accepted_ns, message_id LIMIT ?",
                    (accepted_before_ns, after[0], after[1], limit),
                ).fetchall()
            ],
            write=False,
        )

    async def count_resend(self, message_id: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            conn.execute("UPDATE cases SET resends = resends + 1 WHERE message_id = ?", (message_id,))
            r = conn.execute("SELECT resends FROM cases WHERE message_id = ?", (message_id,)).fetchone()
            return int(r[0]) if r else 0

        return await self.db.run(tx)


def _apply(conn: sqlite3.Connection, event: exchange_pb2.CaseEvent) -> bool:
    cur = conn.execute(
        "INSERT OR IGNORE INTO case_events (case_no, seq, event) VALUES (?, ?, ?)",
        (event.case_no, event.sequence, event.SerializeToString(deterministic=True)),
    )
    if cur.rowcount == 0:
        return False
    now = time.time_ns()
    conn.execute(
        """UPDATE cases SET
            status = CASE WHEN ? > 0 THEN ? ELSE status END,
            local_code = ?, local_system = ?, delivery = ?, last_seq = ?, updated_ns = ?
           WHERE case_no = ? AND last_seq < ?""",
        (
            event.status,
            event.status,
            event.local_code,
            event.local_system,
            event.delivery_state,
            event.sequence,
            now,
            event.case_no,
            event.sequence,
        ),
    )
    return True


def message_ids_with_status(path: Path, status: int) -> set[str]:
    """Message ids of the cases in the store at ``path`` whose status is ``status``; read-only, for
    tools and tests that watch a running region from outside."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT message_id FROM cases WHERE status = ?", (status,))}
    finally:
        conn.close()
