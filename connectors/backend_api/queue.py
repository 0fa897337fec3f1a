"""The deliveries waiting for the region's own case system: a durable queue with leases.

One SQLite file (``[backend_api] store``), shared by the region's connector replicas. A row is one
delivered case: its ids, case number, service code, state, attempts and times in columns, and its
opened request as one blob sealed to the region's own sealing key (:mod:`.sealed`): no column holds
personal data, and the blob is dropped once the case system has the case.

A delivery is ``pending`` until the case system takes it (``acked``), or until the webhook gave up
on it (``dead``: the operator lists it with ``tongban case deliveries --state dead`` and may put it
back). A pending delivery is *leased* to whoever streams or posts it (a WatchDeliveries stream, the
webhook pusher) until ``lease_until_s``: nobody else takes it meanwhile, and once the lease runs out
without an acknowledgement it is taken again, oldest first.

Each change wakes the waiters of this process at once (:meth:`DeliveryQueue.waiter`); a change
another replica made to the shared file is seen at their next look (see :data:`RECHECK_S`).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from tongban.runtime.sqlitedb import SqliteDb

RECHECK_S: Final = 5.0
"""The longest a waiter sleeps without a change in this process: what another replica stored in the
shared file, or freed, is seen within it."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT NOT NULL UNIQUE,
        case_no TEXT NOT NULL,
        service_code TEXT NOT NULL,
        state TEXT NOT NULL,
        received_s REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        push_attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT NOT NULL DEFAULT '',
        lease_until_s REAL NOT NULL DEFAULT 0,
        push_at_s REAL NOT NULL DEFAULT 0,
        done_s REAL NOT NULL DEFAULT 0,
        acked_via TEXT NOT NULL DEFAULT '',
        local_code TEXT NOT NULL DEFAULT '',
        local_system TEXT NOT NULL DEFAULT '',
        sealed_key_id TEXT NOT NULL,
        sealed BLOB
    )""",
    "CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (seq) WHERE state = 'pending'",
)


class State(StrEnum):
    """Where a delivery stands (column ``state``)."""

    PENDING = "pending"
    """Not taken by the case system yet (maybe leased to a stream or the webhook right now)."""
    ACKED = "acked"
    """The case system has it: acknowledged on the stream, or answered 2xx to the webhook."""
    DEAD = "dead"
    """The webhook gave up after ``[backend_api] webhook_max_attempts``: the operator's to look at."""


class Via(StrEnum):
    """How the case system took a delivery (column ``acked_via``)."""

    STREAM = "stream"
    WEBHOOK = "webhook"


@dataclass(frozen=True)
class Stored:
    """A delivery as the case desk stores it."""

    delivery_id: str
    case_no: str
    service_code: str
    received_s: float
    sealed_key_id: str
    """The region's sealing key the body is sealed to."""
    sealed: bytes


@dataclass(frozen=True)
class Taken:
    """A delivery leased to a stream or the webhook, with its sealed body."""

    delivery_id: str
    case_no: str
    service_code: str
    attempts: int
    """Times it was streamed or posted, this one included (1 the first time)."""
    push_attempts: int
    """Times it was posted to the webhook, this one included if it is the webhook's."""
    sealed_key_id: str
    sealed: bytes


@dataclass(frozen=True)
class Row:
    """A delivery as the operator sees it: no body, nothing personal."""

    delivery_id: str
    case_no: str
    service_code: str
    state: State
    attempts: int
    push_attempts: int
    received_s: float
    done_s: float
    acked_via: str
    local_code: str
    local_system: str


class DeliveryQueue:
    """The back-end API's deliveries in ``path``. ``open()`` before use, ``close()`` after.

    Every method that frees or adds a takeable delivery wakes this process's waiters.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = SqliteDb(path, _SCHEMA)
        self._changed = asyncio.Event()
        self.is_open = False

    async def open(self) -> None:
        await self.db.open()
        self.is_open = True

    async def close(self) -> None:
        self.is_open = False
        await self.db.close()

    # -- waking -------------------------------------------------------------------------------------

    def waiter(self) -> asyncio.Event:
        """An event set at the next change in this process. Take it *before* looking at the queue,
        so a change between the look and the wait is not missed."""
        return self._changed

    def ring(self) -> None:
        """Wake every waiter (a change, or a stop)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- the case desk ------------------------------------------------------------------------------

    async def store(self, d: Stored) -> bool:
        """Store a new delivery; False when one with its id is there already (a request
        redelivered after a crash stores one delivery)."""

        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, case_no, service_code, state, received_s,"
                " sealed_key_id, sealed) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    d.delivery_id,
                    d.case_no,
                    d.service_code,
                    State.PENDING,
                    d.received_s,
                    d.sealed_key_id,
                    d.sealed,
                ),
            )
            return cur.rowcount == 1

        first = await self.db.run(tx)
        if first:
            self.ring()
        return first

    # -- streams and the webhook --------------------------------------------------------------------

    async def take(
        self,
        owner: str,
        *,
        now_s: float,
        lease_s: float,
        services: Collection[str] = (),
        push: bool = False,
    ) -> Taken | None:
        """Lease the oldest pending delivery nobody holds to ``owner`` until ``now_s + lease_s``.

        Args:
            services: only these service codes (empty: any).
            push: for the webhook: only a delivery whose next webhook attempt is due, and the
                attempt is counted.
        """
        where, args = _takeable(now_s, services, push)

        def tx(conn: sqlite3.Connection) -> Taken | None:
            row = conn.execute(
                "SELECT seq, delivery_id, case_no, service_code, attempts, push_attempts, sealed_key_id,"
                f" sealed FROM deliveries WHERE {where} ORDER BY seq LIMIT 1",
                args,
            ).fetchone()
            if row is None:
                return None
            seq, delivery_id, case_no, service, attempts, pushes, key_id, sealed = row
            conn.execute(
                "UPDATE deliveries SET lease_owner = ?, lease_until_s = ?, attempts = ?, push_attempts = ?"
                " WHERE seq = ?",
                (owner, now_s + lease_s, attempts + 1, pushes + push, seq),
            )
            return Taken(delivery_id, case_no, service, attempts + 1, pushes + push, key_id, sealed)

        return await self.db.run(tx)

    async def next_due(
        self, *, now_s: float, services: Collection[str] = (), push: bool = False
    ) -> float | None:
        """When a pending delivery held or waiting now becomes takeable (a lease runs out, a
        webhook retry is due); None when nothing is waiting for a time."""
        due = "MAX(lease_until_s, push_at_s)" if push else "lease_until_s"
        codes = tuple(services)
        only = f" AND service_code IN ({', '.join('?' * len(codes))})" if codes else ""

        def read(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"SELECT MIN({due}) FROM deliveries WHERE state = ? AND {due} > ?{only}",
                (State.PENDING, now_s, *codes),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self.db.run(read, write=False)

    async def ack(
        self, delivery_id: str, *, now_s: float, via: Via, local_code: str = "", local_system: str = ""
    ) -> bool:
        """The case system has the delivery: keep its own code and system, drop the sealed body.

        Returns:
            True the first time; False when it was acknowledged already (harmless).

        Raises:
            KeyError: no such delivery.
        """

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                raise KeyError(delivery_id)
            if row[0] == State.ACKED:
                return False
            conn.execute(
                "UPDATE deliveries SET state = ?, done_s = ?, acked_via = ?, local_code = ?,"
                " local_system = ?, lease_owner = '', lease_until_s = 0, sealed = NULL"
                " WHERE delivery_id = ?",
                (State.ACKED, now_s, via, local_code, local_system, delivery_id),
            )
            return True

        return await self.db.run(tx)

    async def release(self, owner: str) -> int:
        """Free what ``owner`` holds and has not had acknowledged (its stream ended): takeable at once."""

        def tx(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE deliveries SET lease_owner = '', lease_until_s = 0"
                " WHERE lease_owner = ? AND state = ?",
                (owner, State.PENDING),
            ).rowcount

        freed = await self.db.run(tx)
        if freed:
            self.ring()
        return freed

    async def retry_later(self, delivery_id: str, owner: str, *, at_s: float) -> None:
        """A webhook attempt failed: free the delivery, its next webhook attempt not before ``at_s``
        (a stream may take it meanwhile)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE deliveries SET lease_owner = '', lease_until_s = 0, push_at_s = ?"
                " WHERE delivery_id = ? AND lease_owner = ? AND state = ?",
                (at_s, delivery_id, owner, State.PENDING),
            )

        await self.db.run(tx)
        self.ring()

    async def kill(self, delivery_id: str, *, now_s: float) -> bool:
        """Dead-letter a pending delivery (it keeps its sealed body for a requeue); False if it was
        not pending."""

        def tx(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE deliveries SET state = ?, done_s = ?, lease_owner = '', lease_until_s = 0"
                    " WHERE delivery_id = ? AND state = ?",
                    (State.DEAD, now_s, delivery_id, State.PENDING),
                ).rowcount
                == 1
            )

        return await self.db.run(tx)

    # -- the operator ------------------------------------------------------------------------------

    async def requeue(self, delivery_id: str) -> bool:
        """Put a dead delivery back: pending, its webhook attempts counted from zero again.

        Returns:
            False when the delivery is not dead.

        Raises:
            KeyError: no such delivery.
        """

        def tx(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
            if row is None:
                raise KeyError(delivery_id)
            if row[0] != State.DEAD:
                return False
            conn.execute(
                "UPDATE deliveries SET state = ?, done_s = 0, push_attempts = 0, push_at_s = 0"
                " WHERE delivery_id = ?",
                (State.PENDING, delivery_id),
            )
            return True

        back = await self.db.run(tx)
        if back:
            self.ring()
        return back

    async def rows(self, state: State | None = None, *, limit: int = 100) -> list[Row]:
        """Deliveries, oldest first (only those in ``state``, if given)."""
        where, args = ("WHERE state = ?", (state,)) if state is not None else ("", ())

        def read(conn: sqlite3.Connection) -> list[Row]:
            return [
                Row(r[0], r[1], r[2], State(r[3]), *r[4:])
                for r in conn.execute(
                    "SELECT delivery_id, case_no, service_code, state, attempts, push_attempts, received_s,"
                    f" done_s, acked_via, local_code, local_system FROM deliveries {where}"
                    " ORDER BY seq LIMIT ?",
                    (*args, limit),
                )
            ]

        return await self.db.run(read, write=False)

    async def state_of(self, delivery_id: str) -> State | None:
        """The state of one delivery, or None when there is no such delivery."""

        def read(conn: sqlite3.Connection) -> State | None:
            row = conn.execute(
                "SELECT state FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
            return None if row is None else State(row[0])

        return await self.db.run(read, write=False)


def _takeable(now_s: float, services: Collection[str], push: bool) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (and its arguments) of a pending delivery nobody holds at ``now_s``."""
    codes = tuple(services)
    where = "state = ? AND lease_until_s <= ?"
    args: tuple[object, ...] = (State.PENDING, now_s)
    if push:
        where += " AND push_at_s <= ?"
        args += (now_s,)
    if codes:
        where += f" AND service_code IN ({', '.join('?' * len(codes))})"
        args += codes
    return where, args
