"""What a region's connectors remember of durable requests: which were processed, with what events.

One SQLite file per region (``[connector] state_store``), shared by its connector replicas. A
request is *processed* once its outcome and the signed status events it produced are committed
here, in one transaction; a redelivered request finds that row and its events are re-sent (the
streams drop the duplicates) instead of calling the back end again. Case sequences live here too,
so every event of a case gets the next number, whichever replica emits it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tongban.core.delivery import TERMINAL_STATUSES
from tongban.runtime.sqlitedb import SqliteDb

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS processed (
        message_id TEXT PRIMARY KEY,
        case_no TEXT NOT NULL,
        outcome TEXT NOT NULL,
        done_ns INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS case_seq (
        case_no TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        from_region TEXT NOT NULL,
        service TEXT NOT NULL,
        next_seq INTEGER NOT NULL,
        request_header BLOB NOT NULL,
        request_digest BLOB NOT NULL,
        last_status INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS reports (
        case_no TEXT NOT NULL,
        report_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (case_no, report_id)
    )""",
    """CREATE TABLE IF NOT EXISTS out_events (
        event_id TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        case_no TEXT NOT NULL,
        seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        subject TEXT NOT NULL,
        data BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS out_events_message ON out_events (message_id, seq)",
    # Every request message id this region received, on either path, until it can no longer be
    # accepted (a query's freshness window, a case's deadline): replay protection across restarts,
    # replicas and paths. ``path`` is 'query' or 'case'.
    """CREATE TABLE IF NOT EXISTS seen_ids (
        message_id TEXT PRIMARY KEY,
        expires_s REAL NOT NULL,
        path TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS seen_ids_expiry ON seen_ids (expires_s)",
    # Stores made before paths were recorded kept query ids only, in ``seen``: fold them in once.
    "CREATE TABLE IF NOT EXISTS seen (message_id TEXT PRIMARY KEY, expires_s REAL NOT NULL)",
    "INSERT OR IGNORE INTO seen_ids (message_id, expires_s, path) "
    "SELECT message_id, expires_s, 'query' FROM seen",
    "DROP TABLE seen",
)

_SEEN_PURGE_BATCH = 5000
"""Expired ids dropped per purge (at most one a second, with an insert): the table stays near the
window's traffic without a sweeper."""


@dataclass(frozen=True)
class OutEvent:
    """A signed event envelope (the statuses ``seq`` … ``last_seq`` of a case) and its outbound subject."""

    event_id: str
    seq: int
    last_seq: int
    subject: str
    data: bytes

    @property
    def sequences(self) -> range:
        return range(self.seq, self.last_seq + 1)


@dataclass(frozen=True)
class CaseRef:
    """A case this region handles: enough of its request to address later events."""

    case_no: str
    message_id: str
    from_region: str
    service: str
    next_seq: int
    request_header: bytes
    """The request's signed header bytes (no personal data in clear), for the events' headers."""
    request_digest: bytes
    last_status: int


class CaseClosed(Exception):
    """The case reached a terminal status; no later status can follow."""


_CASE_COLUMNS = (
    "case_no, message_id, from_region, service, next_seq, request_header, request_digest, last_status"
)

Build = Callable[[int], list[OutEvent]]
"""Given the first free sequence number of the case, build the signed events."""


Arrival = Literal["query", "case"]
"""The path a request arrived on: the RPC subject (Query) or the region's inbound stream (Submit)."""


class ConnectorState:
    def __init__(self, path: Path) -> None:
        self.db = SqliteDb(path, _SCHEMA)
        self._next_purge_s = 0.0

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def first_sighting(
        self, message_id: str, *, expires_s: float, now_s: float, path: Arrival = "query"
    ) -> bool:
        """Remember ``message_id`` until ``expires_s``; False if that is a replay.

        A query id is a replay if it was seen before on either path. A case id may come again on
        the case path (streams redeliver; the processed record answers those) but not after it came
        as a query, nor a query after a case. One statement decides, so two replicas sharing the
        store cannot both take one id.
        """

        purge = now_s >= self._next_purge_s
        if purge:
            self._next_purge_s = now_s + 1.0

        def tx(conn: sqlite3.Connection) -> bool:
            if purge:
                conn.execute(
                    "DELETE FROM seen_ids WHERE message_id IN "
                    "(SELECT message_id FROM seen_ids WHERE expires_s <= ? LIMIT ?)",
                    (now_s, _SEEN_PURGE_BATCH),
                )
            cur = conn.execute(
                "INSERT INTO seen_ids (message_id, expires_s, path) VALUES (?, ?, ?) "
                "ON CONFLICT (message_id) DO UPDATE "
                "SET expires_s = MAX(seen_ids.expires_s, excluded.expires_s), path = excluded.path "
                "WHERE seen_ids.expires_s <= ? OR (excluded.path = 'case' AND seen_ids.path = 'case')",
                (message_id, expires_s, path, now_s),
            )
            return cur.rowcount == 1

        return await self.db.run(tx)

    async def processed(self, message_id: str) -> tuple[str, list[OutEvent]] | None:
        """(outcome, events) of a processed request, or None."""

        def tx(conn: sqlite3.Connection) -> tuple[str, list[OutEvent]] | None:
            row = conn.execute("SELECT outcome FROM processed WHERE message_id = ?", (message_id,)).fetchone()
            if row is None:
                return None
            return row[0], _events(conn, message_id)

        return await self.db.run(tx, write=False)

    async def record(
        self,
        *,
        message_id: str,
        case_no: str,
        from_region: str,
        service: str,
        outcome: str,
        build: Build,
        final: bool,
        request_header: bytes,
        request_digest: bytes,
        last_status: int,
    ) -> tuple[list[OutEvent], bool]:
        """Allocate sequence numbers, store the events and (if ``final``) the processed mark, atomically.

        Returns:
            (the events, True) or, when another replica finished this request first, (its events, False).
        """

        def tx(conn: sqlite3.Connection) -> tuple[list[OutEvent], bool]:
            if (
                final
                and conn.execute("SELECT 1 FROM processed WHERE message_id = ?", (message_id,)).fetchone()
            ):
                return _events(conn, message_id), False
            row = conn.execute("SELECT next_seq FROM case_seq WHERE case_no = ?", (case_no,)).fetchone()
            first = row[0] if row else 1
            events = build(first)
            conn.executemany(
                "INSERT INTO out_events (event_id, message_id, case_no, seq, last_seq, subject, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.event_id, message_id, case_no, e.seq, e.last_seq, e.subject, e.data) for e in events],
            )
            conn.execute(
                f"""INSERT INTO case_seq ({_CASE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (case_no) DO UPDATE SET
                     next_seq = excluded.next_seq,
                     last_status = CASE WHEN excluded.last_status > 0
                                        THEN excluded.last_status ELSE last_status END""",
                (
                    case_no,
                    message_id,
                    from_region,
                    service,
                    events[-1].last_seq + 1 if events else first,
                    request_header,
                    request_digest,
                    last_status,
                ),
            )
            if final:
                conn.execute(
                    "INSERT INTO processed (message_id, case_no, outcome, done_ns) VALUES (?, ?, ?, ?)",
                    (message_id, case_no, outcome, time.time_ns()),
                )
            return events, True

        return await self.db.run(tx)

    async def record_report(
        self,
        case_no: str,
        build: Callable[[CaseRef], list[OutEvent]],
        last_status: int,
        *,
        report_id: str = "",
        on_case: Callable[[CaseRef], None] = lambda ref: None,
    ) -> list[OutEvent]:
        """Store later events of a case (a back end reporting progress), numbered after the last.

        A ``report_id`` the case has seen gives back the events that report stored (nothing new is
        built): one transaction checks and records it, so a retried report counts once, whichever
        replica takes it. ``on_case`` sees the case first, either way.

        Raises:
            KeyError: this region never handled the case.
            CaseClosed: the case's last status is terminal.
        """

        def tx(conn: sqlite3.Connection) -> list[OutEvent]:
            row = conn.execute(
                f"SELECT {_CASE_COLUMNS} FROM case_seq WHERE case_no = ?", (case_no,)
            ).fetchone()
            if row is None:
                raise KeyError(case_no)
            ref = CaseRef(*row)
            on_case(ref)
            if report_id:
                earlier = conn.execute(
                    "SELECT e.event_id, e.seq, e.last_seq, e.subject, e.data FROM reports r"
                    " JOIN out_events e ON e.event_id = r.event_id"
                    " WHERE r.case_no = ? AND r.report_id = ?",
                    (case_no, report_id),
                ).fetchall()
                if earlier:
                    return [OutEvent(*r) for r in earlier]
            if ref.last_status in TERMINAL_STATUSES:
                raise CaseClosed(case_no)
            events = build(ref)
            if report_id:
                conn.executemany(
                    "INSERT INTO reports (case_no, report_id, event_id) VALUES (?, ?, ?)",
                    [(case_no, report_id, e.event_id) for e in events],
                )
            conn.executemany(
                "INSERT INTO out_events (event_id, message_id, case_no, seq, last_seq, subject, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(e.event_id, ref.message_id, case_no, e.seq, e.last_seq, e.subject, e.data) for e in events],
            )
            conn.execute(
                "UPDATE case_seq SET next_seq = ?, last_status = CASE WHEN ? > 0 THEN ? ELSE last_status END"
                " WHERE case_no = ?",
                (events[-1].last_seq + 1 if events else ref.next_seq, last_status, last_status, case_no),
            )
            return events

        return await self.db.run(tx)


def _events(conn: sqlite3.Connection, message_id: str) -> list[OutEvent]:
    return [
        OutEvent(*r)
        for r in conn.execute(
            "SELECT event_id, seq, last_seq, subject, data FROM out_events WHERE message_id = ? ORDER BY seq",
            (message_id,),
        ).fetchall()
    ]
