"""A small SQLite store run on one worker thread: the state files of gateways and connectors.

Ledgers have their own store (``ledger/``); this is for operational state (cases, the outbox, the
connector's processed-message record). One connection per process, used by one thread, so calls
are serialised without locks; several processes may share a file (WAL, ``BEGIN IMMEDIATE``,
busy timeout).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class SqliteDb:
    """``await db.run(fn)`` runs ``fn(conn)`` inside one transaction on the store's thread."""

    def __init__(self, path: Path, schema: Sequence[str], *, synchronous: str = "FULL") -> None:
        self.path = path
        self._schema = tuple(schema)
        self._synchronous = synchronous
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in self._schema:
                conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._conn = conn

    async def open(self) -> None:
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"sqlite-{self.path.name}")
        await asyncio.get_running_loop().run_in_executor(self._pool, self._open)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        pool.shutdown(wait=True)

    def _tx(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if self._pool is None:
            raise RuntimeError(f"{self.path.name} is not open")
        # Shielded: a cancelled caller must not leave a transaction half-run on the thread.
        fut = asyncio.get_running_loop().run_in_executor(self._pool, self._tx, fn, write)
        return await asyncio.shield(fut)

    async def __aenter__(self) -> SqliteDb:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
