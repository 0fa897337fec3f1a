"""The embedded ledger store: one SQLite file in WAL mode per region, with group commit.

Threading: SQLite calls block, so they run in two dedicated single-thread executors, each owning one
connection that only its thread ever touches (sqlite3's ``check_same_thread`` stays on as a guard):

* the *write* thread holds the only writing connection. A writer task on the event loop drains every queued
  ``append`` (up to ``max_batch`` drafts), and the write thread seals the whole batch into the hash chain and
  inserts it in ONE transaction: N concurrent appenders cost one fsync, not N.
* the *read* thread holds a ``query_only`` connection. WAL lets it read committed entries while the write
  thread is inside a commit, so reads never queue behind an fsync.

The chain head (last index and hash) lives in memory, is loaded on ``open()`` and advances only after a batch
has committed, so a failed batch leaves both the file and the head as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import structlog

from ledger import _sqlite
from ledger._batching import BatchingStore, State
from ledger.entry import ZERO_HASH, Entry, EntryDraft, seal
from ledger.errors import LedgerClosed, LedgerError

log = structlog.get_logger(__name__)

SYNCHRONOUS_LEVELS: Final = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})
BUSY_TIMEOUT_S: Final = 5.0
"""How long a connection waits for a lock held by another process (a verifier, a backup) before failing."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Resources:
    """Everything that exists only while the ledger is open."""

    write_executor: ThreadPoolExecutor
    write_conn: sqlite3.Connection
    read_executor: ThreadPoolExecutor
    read_conn: sqlite3.Connection
    writer: asyncio.Task[None]


class SQLiteLedger(BatchingStore[_Resources]):
    """A region's ledger in a SQLite file; implements :class:`~ledger.store.LedgerStore`.

    Args:
        path: the database file; created (with its schema) on first open.
        region: the region whose ledger this is; a file created for another region is refused.
        synchronous: SQLite ``PRAGMA synchronous``. ``FULL`` (the default) fsyncs the WAL on every commit, so
            an acknowledged append survives power loss; ``NORMAL`` may lose the last commits on power loss.
        max_batch: most drafts per transaction. A single ``append`` with more drafts still commits alone and
            whole, since atomicity per call comes first.

    Attributes:
        commits: number of append transactions committed since this object was opened (to observe batching).

    Raises:
        ValueError: ``synchronous`` is not a SQLite level, ``max_batch`` is below 1, or ``region`` is empty.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        region: str,
        *,
        synchronous: str = "FULL",
        max_batch: int = 1024,
    ) -> None:
        if not region:
            raise ValueError("region must not be empty")
        level = synchronous.upper()
        if level not in SYNCHRONOUS_LEVELS:
            # Also what makes it safe to format into the PRAGMA, which takes no parameters.
            raise ValueError(f"synchronous must be one of {sorted(SYNCHRONOUS_LEVELS)}, got {synchronous!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._path = os.fspath(path)
        self._synchronous = level
        self._init_batching(region, max_batch)
        self._head: Entry | None = None

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteLedger({self._path!r}, region={self._region!r}, state={self._state.value})"

    async def open(self) -> None:
        """Open the file (creating it and its schema if needed), load the head and start the writer.

        A no-op when already open. A closed ledger cannot be reopened: make a new object.

        Raises:
            LedgerClosed: this object was closed.
            LedgerError: the file cannot be opened, is not a ledger, has another schema version, or belongs to
                another region.
        """
        async with self._lifecycle:
            if self._state is State.OPEN:
                return
            if self._state is not State.NEW:
                raise LedgerClosed(f"{self!r} was closed; open a new SQLiteLedger")
            loop = asyncio.get_running_loop()
            name = f"ledger-{self._region}"
            write_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-write")
            read_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-read")
            opened: sqlite3.Connection | None = None
            try:
                write_conn, head = await loop.run_in_executor(
                    write_executor, _open_writer, self._path, self._region, self._synchronous
                )
                opened = write_conn
                read_conn = await loop.run_in_executor(read_executor, _open_reader, self._path)
            except BaseException:
                if opened is not None:
                    await loop.run_in_executor(write_executor, opened.close)
                write_executor.shutdown(wait=False)
                read_executor.shutdown(wait=False)
                raise
            self._head = head
            self.commits = 0
            writer = loop.create_task(
                self._writer_loop(write_executor, write_conn), name=f"ledger-{self._region}-writer"
            )
            self._res = _Resources(write_executor, write_conn, read_executor, read_conn, writer)
            self._state = State.OPEN
            log.info("ledger.opened", region=self._region, path=self._path, size=_size(head))

    async def _shutdown(self, res: _Resources) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The writer drains the queue before it returns; a writer that failed has failed its futures, and
            # asyncio.wait does not re-raise that here.
            await asyncio.wait([res.writer])
            # Each connection is closed on the thread that owns it.
            await loop.run_in_executor(res.write_executor, res.write_conn.close)
            await loop.run_in_executor(res.read_executor, res.read_conn.close)
        finally:
            res.write_executor.shutdown(wait=False)
            res.read_executor.shutdown(wait=False)
            self._res = None
            self._state = State.CLOSED
        log.info("ledger.closed", region=self._region, path=self._path, size=_size(self._head))

    async def size(self) -> int:
        """Number of committed entries (read from the file: other processes may append too)."""
        return _size(await self.head())

    async def head(self) -> Entry | None:
        """The last committed entry, or None when the ledger is empty (read from the file)."""
        self._require_open()
        found = await self._read(_sqlite.SELECT_HEAD, ())
        return found[0] if found else None

    async def get(self, index: int) -> Entry:
        """The entry at ``index``.

        Raises:
            IndexError: no entry has that index.
        """
        if index < 0:
            raise IndexError(f"ledger index must not be negative, got {index}")
        found = await self._read(f"{_sqlite.SELECT_ENTRIES} WHERE idx = ?", (index,))
        if not found:
            raise IndexError(f"no ledger entry {index} (size {_size(self._head)})")
        return found[0]

    async def entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """Entries with ``start <= index < stop`` (to the end when ``stop`` is None), in index order.

        Raises:
            ValueError: ``start`` or ``stop`` is negative.
        """
        if start < 0 or (stop is not None and stop < 0):
            raise ValueError(f"entries range must not be negative, got [{start}, {stop})")
        if stop is None:
            return await self._read(f"{_sqlite.SELECT_ENTRIES} WHERE idx >= ? ORDER BY idx", (start,))
        sql = f"{_sqlite.SELECT_ENTRIES} WHERE idx >= ? AND idx < ? ORDER BY idx"
        return await self._read(sql, (start, stop))

    async def by_message_id(self, message_id: str) -> list[Entry]:
        """Every entry about one message, in index order."""
        return await self._read(f"{_sqlite.SELECT_ENTRIES} WHERE message_id = ? ORDER BY idx", (message_id,))

    async def by_trace_id(self, trace_id: str) -> list[Entry]:
        """Every entry of one trace, in index order."""
        return await self._read(f"{_sqlite.SELECT_ENTRIES} WHERE trace_id = ? ORDER BY idx", (trace_id,))

    async def by_time(self, start_ns: int, end_ns: int, limit: int) -> list[Entry]:
        """At most ``limit`` entries with ``start_ns <= time_ns < end_ns``, in index order."""
        return await self._read(
            f"SELECT * FROM ({_sqlite.SELECT_ENTRIES} WHERE time_ns >= ? AND time_ns < ? "
            "ORDER BY time_ns LIMIT ?) ORDER BY idx",
            (start_ns, end_ns, limit),
        )

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Entry]:
        res = self._require_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(res.read_executor, _select, res.read_conn, sql, params)

    async def _writer_loop(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        loop = asyncio.get_running_loop()

        def committed(entries: list[Entry]) -> None:
            self._head = entries[-1]

        await self._run_writer(
            lambda drafts: loop.run_in_executor(executor, _write_batch, conn, self._region, drafts),
            committed=committed,
        )


async def open_ledger(path: str | os.PathLike[str], region: str, **kw: Any) -> SQLiteLedger:
    """Create and open a :class:`SQLiteLedger`; close it (or use ``async with``) when done.

    Args:
        path: the database file.
        region: the ledger's region.
        **kw: further :class:`SQLiteLedger` keyword arguments (``synchronous``, ``max_batch``).

    Returns:
        The open ledger.
    """
    ledger = SQLiteLedger(path, region, **kw)
    await ledger.open()
    return ledger


def _size(head: Entry | None) -> int:
    return 0 if head is None else head.index + 1


# --- run on the executor threads ---------------------------------------------------------------------------


def _open_writer(path: str, region: str, synchronous: str) -> tuple[sqlite3.Connection, Entry | None]:
    try:
        # isolation_level=None: sqlite3 issues no implicit BEGIN/COMMIT; every transaction here is explicit.
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open ledger file {path}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"ledger file {path} cannot use WAL (journal_mode is {mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        with _transaction(conn):
            for statement in _sqlite.DDL:
                conn.execute(statement)
            meta = _sqlite.read_meta(conn) or {}
            if not meta:
                if conn.execute("SELECT 1 FROM entries LIMIT 1").fetchone() is not None:
                    raise LedgerError(f"{path} holds entries but no ledger metadata; refusing to adopt it")
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema_version", _sqlite.SCHEMA_VERSION), ("region", region)],
                )
            elif meta.get("schema_version") != _sqlite.SCHEMA_VERSION:
                raise LedgerError(
                    f"{path} has ledger schema version {meta.get('schema_version')!r}, "
                    f"this code reads {_sqlite.SCHEMA_VERSION!r}"
                )
            elif meta.get("region") != region:
                raise LedgerError(f"{path} is the ledger of region {meta.get('region')!r}, not {region!r}")
            row = conn.execute(_sqlite.SELECT_HEAD).fetchone()
        head = None if row is None else _decode(row)
    except sqlite3.Error as exc:
        conn.close()
        raise LedgerError(f"cannot open ledger file {path}: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn, head


def _open_reader(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _write_batch(conn: sqlite3.Connection, region: str, drafts: Sequence[EntryDraft]) -> list[Entry]:
    """Seal drafts after the file's current head and insert them in one transaction; on failure leave nothing.

    The head is read inside the write transaction (BEGIN IMMEDIATE holds the file's write lock), not
    taken from memory: a region's gateway and connector processes append to one ledger file, and
    each batch must chain onto whatever the other process committed last.
    """
    entries: list[Entry] = []
    with _transaction(conn):
        row = conn.execute(_sqlite.SELECT_HEAD).fetchone()
        head = None if row is None else _decode(row)
        index = 0 if head is None else head.index + 1
        prev_hash = ZERO_HASH if head is None else head.entry_hash
        for offset, draft in enumerate(drafts):
            entry = seal(draft, index=index + offset, region=region, prev_hash=prev_hash)
            entries.append(entry)
            prev_hash = entry.entry_hash
        conn.executemany(_sqlite.INSERT_ENTRY, [_sqlite.entry_to_row(e) for e in entries])
    return entries


def _select(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Entry]:
    return [_decode(row) for row in conn.execute(sql, params)]


def _decode(row: Sequence[object]) -> Entry:
    try:
        return _sqlite.entry_from_row(row)
    except ValueError as exc:
        # Only a file edited behind the ledger's back holds such a row; verify_sqlite_file says more.
        raise LedgerError(f"undecodable ledger row idx={row[0]!r}: {exc}") from exc


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy file fails at BEGIN rather than half-way through.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        # Inside the try: a failed COMMIT (I/O error, busy) must roll back too.
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            # The original error matters; a failing rollback (e.g. connection gone) must not replace it.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
