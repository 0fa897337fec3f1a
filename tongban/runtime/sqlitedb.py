"""A small SQLite store run on one worker thread: the state files of gateways and connectors.

Ledgers have their own store (``ledger/``); this is for operational state (cases, the outbox, the
connector's processed-message record). One connection per process, used by one thread, so calls
are serialised without locks; several processes may share a file (WAL, ``BEGIN IMMEDIATE``,
busy timeout).

Writes are group-committed: the calls waiting when the thread gets to them run in one transaction,
each inside its own savepoint (a call that raises rolls back only itself), so concurrent requests
share one fsync instead of paying one each. A call returns only after the commit that holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

T = TypeVar("T")
log = structlog.get_logger("tongban.runtime.sqlitedb")


class SqliteDb:
    """``await db.run(fn)`` runs ``fn(conn)`` inside one transaction on the store's thread."""

    def __init__(self, path: Path, schema: Sequence[str], *, synchronous: str = "FULL") -> None:
        self.path = path
        self._schema = tuple(schema)
        self._synchronous = synchronous
        self._pool: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._queue: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._draining = False
        self.commits = 0

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

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read in its own (deferred) transaction: one consistent snapshot."""
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN")
        try:
            result = fn(conn)
            conn.execute("COMMIT")
            return result
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the store's thread: commit everything queued, batch after batch, until none is left."""
        try:
            self._drain_batches(loop)
        except BaseException as exc:
            # Never leave callers waiting on a drain that died: fail what is queued, let the next
            # write start a new drain.
            with self._lock:
                batch, self._queue = self._queue, []
                self._draining = False
            for _, fut in batch:
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(_settle, fut, None, exc)
            raise

    def _drain_batches(self, loop: asyncio.AbstractEventLoop) -> None:
        conn = self._conn
        assert conn is not None
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._draining = False
                    return
            results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, fut in batch:
                    conn.execute("SAVEPOINT call")
                    try:
                        value = fn(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO call")
                        conn.execute("RELEASE call")
                        results.append((fut, None, exc))
                    else:
                        conn.execute("RELEASE call")
                        results.append((fut, value, None))
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # the commit itself failed: nothing of the batch is stored
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                results = [(fut, None, exc) for _, fut in batch]
            for fut, value, error in results:
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(_settle, fut, value, error)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = True) -> T:
        if self._pool is None:
            raise RuntimeError(f"{self.path.name} is not open")
        loop = asyncio.get_running_loop()
        if not write:
            fut = loop.run_in_executor(self._pool, self._read, fn)
        else:
            fut = loop.create_future()
            with self._lock:
                self._queue.append((fn, fut))
                start = not self._draining
                self._draining = True
            if start:
                drain = loop.run_in_executor(self._pool, self._drain, loop)
                drain.add_done_callback(_log_drain_failure)
        # Shielded: a cancelled caller must not leave a transaction half-run on the thread.
        return await asyncio.shield(fut)

    async def __aenter__(self) -> SqliteDb:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def _log_drain_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("sqlite.drain_failed", error=type(fut.exception()).__name__)
