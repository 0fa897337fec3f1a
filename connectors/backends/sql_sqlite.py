"""A SQLite back end: a database file opened read-only, statements run on worker threads.

Each connection is opened with ``mode=ro`` (the file cannot be written through it) and ``PRAGMA
query_only`` (nor can an attached one). At most ``max_concurrency`` statements run at once, each on
a worker thread with a connection of its own, so the event loop never waits on the file. A
statement is stopped by a progress handler when its time (the configured timeout, or less when the
request's deadline is nearer) runs out, and interrupted from the event loop if the call is given up.

Values are bound as text to ``$1 … $n`` (SQLite's numbered form of a named parameter); SQLite compares
them with a column by the column's affinity, so ``'2024'`` matches an INTEGER 2024.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import structlog

from connectors.adapters import AdapterFailure
from connectors.backends.sql_engine import CLOSE_TIMEOUT_S, Rows, budget, failure, timed_out
from connectors.backends.sql_settings import SqliteSettings

__all__ = ["SqliteEngine"]

log = structlog.get_logger("tongban.connector.sql")

_PROGRESS_STEPS: Final = 1000
"""SQLite virtual-machine steps between two looks at the clock (a fraction of a millisecond)."""
_GRACE_S: Final = 0.5
"""How much longer than its statement's timeout a call waits for the worker thread."""


class _Stopped(Exception):
    """A statement the progress handler stopped: its time ran out."""


def _run(
    conn: sqlite3.Connection,
    sql: str,
    values: Sequence[str],
    limit: int,
    stop_at: float,
    given_up: threading.Event,
) -> Rows:
    """On a worker thread: ``sql`` with ``values`` bound to ``$1 … $n``, at most ``limit`` rows;
    stopped by the progress handler once past ``stop_at`` or once the caller has ``given_up`` (which
    also covers a caller that gave up before the statement began, where ``interrupt`` does nothing)."""
    stopped = False

    def over_time() -> bool:
        nonlocal stopped
        stopped = given_up.is_set() or time.monotonic() > stop_at
        return stopped

    conn.set_progress_handler(over_time, _PROGRESS_STEPS)
    try:
        cursor = conn.execute(sql, {str(k): v for k, v in enumerate(values, start=1)})
        try:
            rows = cursor.fetchmany(limit)
            columns = tuple(d[0] for d in cursor.description or ())
        finally:
            cursor.close()
    except sqlite3.OperationalError as exc:
        if stopped:
            raise _Stopped from exc
        raise
    finally:
        conn.set_progress_handler(None, 0)
    return Rows(columns, rows)


class SqliteEngine:
    """Read-only connections to ``settings.path`` on worker threads (see the module docstring)."""

    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self._uri = f"file:{urllib.parse.quote(str(settings.path))}?mode=ro"
        self._executor: ThreadPoolExecutor | None = None
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._idle: list[sqlite3.Connection] = []
        self._running: dict[asyncio.Future[Rows], sqlite3.Connection] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"SqliteEngine({self.settings.name!r})"

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._uri,
            uri=True,
            check_same_thread=False,  # used by one worker thread at a time, closed by another
            isolation_level=None,
            timeout=self.settings.statement_timeout_s,  # waiting on a writer's lock
        )
        try:
            conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def fetch(
        self, sql: str, values: Sequence[str], *, limit: int, deadline: float, service: str
    ) -> Rows:
        s = self.settings
        try:
            timeout_s = s.statement_timeout_s
            b = budget(deadline, statement_timeout_s=timeout_s, otherwise_s=timeout_s + _GRACE_S)
            async with asyncio.timeout(b.call_s), self._slots:
                return await self._fetch(sql, values, limit, b.statement_s)
        except AdapterFailure as exc:
            self._log(service, exc)
            raise
        except (TimeoutError, _Stopped, sqlite3.Error) as exc:
            failed = _classified(exc)
            self._log(service, failed, exc)
            raise failed from exc

    async def _fetch(self, sql: str, values: Sequence[str], limit: int, statement_s: float) -> Rows:
        if self._closed:
            raise failure(f"the SQL back end {self.settings.name} is closed")
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.settings.max_concurrency, thread_name_prefix=f"sql-{self.settings.name}"
            )
        executor = self._executor
        conn = self._idle.pop() if self._idle else await self._new_connection(executor)
        stop_at = time.monotonic() + statement_s
        given_up = threading.Event()
        work = loop.run_in_executor(executor, _run, conn, sql, values, limit, stop_at, given_up)
        self._running[work] = conn
        # The connection goes back (or is closed) when its statement has ended, whoever waits for it.
        work.add_done_callback(lambda done: self._finished(done, conn))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller gave up: stop the statement rather than let it run on (only while it runs:
            # once done, the connection may already be another call's).
            given_up.set()
            if not work.done():
                conn.interrupt()
            raise

    async def _new_connection(self, executor: ThreadPoolExecutor) -> sqlite3.Connection:
        opening = asyncio.get_running_loop().run_in_executor(executor, self._open)
        try:
            return await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The caller gave up while the file was being opened: keep the connection for the next.
            opening.add_done_callback(self._opened_late)
            raise

    def _opened_late(self, opening: asyncio.Future[sqlite3.Connection]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self._release(opening.result())

    @property
    def running(self) -> int:
        """Statements in progress on this back end's worker threads."""
        return len(self._running)

    def _finished(self, work: asyncio.Future[Rows], conn: sqlite3.Connection) -> None:
        self._running.pop(work, None)
        if not work.cancelled():
            work.exception()  # retrieved: the caller may have gone
        self._release(conn)

    def _release(self, conn: sqlite3.Connection) -> None:
        if self._closed or len(self._idle) >= self.settings.max_concurrency:
            conn.close()
        else:
            self._idle.append(conn)

    def _log(self, service: str, exc: AdapterFailure, cause: BaseException | None = None) -> None:
        # The failure's own text and SQLite's error name only: a message may quote bound values.
        log.warning(
            "sql.failed",
            backend=self.settings.name,
            service=service,
            reason=exc.reason,
            error=exc.message,
            sqlite_error=getattr(cause, "sqlite_errorname", None),
            cause=type(cause).__name__ if cause is not None else None,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._running:
            await asyncio.wait(set(self._running), timeout=CLOSE_TIMEOUT_S)
        for conn in list(self._running.values()):
            conn.interrupt()  # still running after the bound: stop it
        if self._running:
            await asyncio.wait(set(self._running), timeout=_GRACE_S)
        idle, self._idle = self._idle, []
        executor, self._executor = self._executor, None
        if executor is not None:
            for conn in idle:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
            # A thread that did not stop even when interrupted is left behind rather than waited for.
            executor.shutdown(wait=not self._running, cancel_futures=True)
        log.info("sql.closed", backend=self.settings.name)


def _classified(exc: BaseException) -> AdapterFailure:
    """What a database error means for the caller, in a fixed text (never SQLite's message)."""
    if isinstance(exc, TimeoutError):
        return timed_out("the database did not answer within the deadline")
    if isinstance(exc, _Stopped):
        return timed_out("the statement ran out of time")
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    if name.startswith("SQLITE_READONLY"):
        return failure("the statement tried to write; SQL back ends are read-only")
    if name.startswith("SQLITE_CANTOPEN"):
        return failure("cannot open the database file")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return failure("the database is locked by a writer")
    return failure(f"the database refused the statement ({name})")
