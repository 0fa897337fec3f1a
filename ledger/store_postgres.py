"""The shared ledger store: one region's log in PostgreSQL, for a region that runs several replicas.

Several gateway and connector processes of one region append to the same log. What keeps them from forking
it: every append transaction first takes a transaction-scoped advisory lock keyed by (schema, region), then
reads the head from the entries table, seals its batch after it and inserts it. The lock is released only
when the transaction ends, after its rows became visible, so the next holder's head read (a fresh READ
COMMITTED snapshot) sees them. The primary key (region, idx) is the second line of defence: a transaction
that somehow skipped the lock and reused an index fails on the key and leaves nothing.

Within one process, appends are group-committed as in :mod:`ledger.store_sqlite`: a writer task drains
every queued ``append`` (up to ``max_batch`` drafts) into ONE transaction, so N concurrent callers cost one
commit. Reads use the same bounded connection pool and never wait for the writer.

The head is not cached: ``size()`` and ``head()`` read the table, since other replicas append too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import structlog

from ledger import _sqlite
from ledger._batching import BatchingStore, State
from ledger.entry import ZERO_HASH, Entry, EntryDraft, seal
from ledger.errors import LedgerClosed, LedgerError

log = structlog.get_logger(__name__)

SCHEMA_VERSION: Final = "1"
DEFAULT_SCHEMA: Final = "tongban_ledger"
DEFAULT_TIMEOUT_S: Final = 10.0

_IDENTIFIER: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_COLUMN_LIST: Final = ", ".join(_sqlite.COLUMNS)
# The PostgreSQL type of each column, in _sqlite.COLUMNS order (the order entry_to_row produces).
_COLUMN_TYPES: Final = (
    "bigint",
    "bigint",
    "text",
    "text",
    "text",
    "text",
    "text",
    "bytea",
    "text",
    "text",
    "bytea",
    "bytea",
)
# Waits for a transaction-scoped advisory lock on a 64-bit hash of $1 (released at COMMIT or ROLLBACK).
_LOCK: Final = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
# What a database call raises when the database, the network or the deadline fails it.
_DB_ERRORS: Final = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
_TRIGGERS: Final = ("entries_no_update_delete", "entries_no_truncate")


@dataclasses.dataclass(frozen=True, slots=True)
class _Resources:
    """Everything that exists only while the ledger is open."""

    pool: asyncpg.Pool
    writer: asyncio.Task[None]


@dataclasses.dataclass(frozen=True, slots=True)
class _Sql:
    """The statements of one schema, formatted once (identifiers cannot be query parameters)."""

    ddl: tuple[str, ...]
    insert: str
    select: str
    head: str
    meta: str
    triggers: str
    trigger_ddl: tuple[str, ...]

    @classmethod
    def for_schema(cls, schema: str) -> _Sql:
        s = f'"{schema}"'
        entries = f"{s}.entries"
        select = f"SELECT {_COLUMN_LIST} FROM {entries} WHERE region = $1"
        unnest = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_COLUMN_TYPES))
        return cls(
            ddl=(
                f"CREATE SCHEMA IF NOT EXISTS {s}",
                f"CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
                f"""CREATE TABLE IF NOT EXISTS {entries} (
                    region text NOT NULL,
                    idx bigint NOT NULL CHECK (idx >= 0),
                    time_ns bigint NOT NULL,
                    event text NOT NULL,
                    message_id text NOT NULL,
                    peer_region text NOT NULL,
                    service_code text NOT NULL,
                    envelope_digest bytea NOT NULL,
                    trace_id text NOT NULL,
                    detail text NOT NULL,
                    prev_hash bytea NOT NULL,
                    entry_hash bytea NOT NULL,
                    PRIMARY KEY (region, idx)
                )""",
                f"CREATE INDEX IF NOT EXISTS entries_message_id ON {entries} (region, message_id, idx)",
                f"CREATE INDEX IF NOT EXISTS entries_trace_id ON {entries} (region, trace_id, idx)",
                f"CREATE INDEX IF NOT EXISTS entries_time ON {entries} (region, time_ns)",
                # The region's last signed checkpoint, shared by every replica that signs them.
                f"CREATE TABLE IF NOT EXISTS {s}.checkpoints (region text PRIMARY KEY, note bytea NOT NULL)",
            ),
            insert=f"INSERT INTO {entries} ({_COLUMN_LIST}) SELECT * FROM unnest({unnest})",
            select=select,
            head=f"{select} ORDER BY idx DESC LIMIT 1",
            meta=f"SELECT key, value FROM {s}.meta",
            triggers=(
                "SELECT tgname FROM pg_trigger "
                f"WHERE tgrelid = '{entries}'::regclass AND NOT tgisinternal AND tgenabled = 'O'"
            ),
            # Only run when a trigger is missing or disabled: they take table locks that would stall appends.
            trigger_ddl=(
                f"""CREATE OR REPLACE FUNCTION {s}.entries_append_only() RETURNS trigger
                    LANGUAGE plpgsql AS $$
                    BEGIN
                        RAISE EXCEPTION 'ledger entries are append-only: % refused', TG_OP
                            USING ERRCODE = 'restrict_violation';
                    END $$""",
                f"""CREATE OR REPLACE TRIGGER entries_no_update_delete BEFORE UPDATE OR DELETE ON {entries}
                    FOR EACH ROW EXECUTE FUNCTION {s}.entries_append_only()""",
                f"""CREATE OR REPLACE TRIGGER entries_no_truncate BEFORE TRUNCATE ON {entries}
                    FOR EACH STATEMENT EXECUTE FUNCTION {s}.entries_append_only()""",
                f"ALTER TABLE {entries} ENABLE TRIGGER entries_no_update_delete",
                f"ALTER TABLE {entries} ENABLE TRIGGER entries_no_truncate",
            ),
        )


class PostgresLedger(BatchingStore[_Resources]):
    """A region's ledger in PostgreSQL; implements :class:`~ledger.store.LedgerStore`.

    Several objects, in one process or many, may append to the same (schema, region) at once: they produce
    one log (see the module docstring). A schema holds the ledger of one region, recorded on first open, like
    a SQLite ledger file.

    Args:
        dsn: libpq connection URI, e.g. ``postgresql://ledger@db:5432/tongban``.
        region: the region whose ledger this is; a schema created for another region is refused.
        schema: the schema that holds the ledger's tables; created on first open. Lower-case letters, digits
            and ``_``.
        max_batch: most drafts per transaction. A single ``append`` with more drafts still commits alone and
            whole, since atomicity per call comes first.
        pool_size: most connections this object holds (the writer uses one at a time; reads share the rest).
        timeout: deadline in seconds of every database call: connecting, taking a pooled connection, each
            read, and each append transaction including its wait for the region's append lock.

    Attributes:
        commits: number of append transactions committed since this object was opened (to observe batching).

    Raises:
        ValueError: an argument is out of range, or ``schema`` is not a plain identifier.
    """

    def __init__(
        self,
        dsn: str,
        region: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        max_batch: int = 1024,
        pool_size: int = 4,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if not region:
            raise ValueError("region must not be empty")
        if not _IDENTIFIER.fullmatch(schema):
            # Also what makes it safe to format into SQL, where identifiers cannot be parameters.
            raise ValueError(f"schema must match {_IDENTIFIER.pattern}, got {schema!r}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._dsn = dsn
        self._where = _describe(dsn, schema)
        self._schema = schema
        self._pool_size = pool_size
        self._timeout = timeout
        self._sql = _Sql.for_schema(schema)
        self._lock_key = f"tongban.ledger:{schema}:{region}"
        self._init_batching(region, max_batch)

    @property
    def schema(self) -> str:
        """The schema that holds the ledger's tables."""
        return self._schema

    def __repr__(self) -> str:
        return f"PostgresLedger({self._where}, region={self._region!r}, state={self._state.value})"

    async def open(self) -> None:
        """Connect, create the schema if needed, check it belongs to this region and start the writer.

        A no-op when already open. A closed ledger cannot be reopened: make a new object.

        Raises:
            LedgerClosed: this object was closed.
            LedgerError: the database cannot be reached, the schema is not a ledger or has another schema
                version, or it belongs to another region.
        """
        async with self._lifecycle:
            if self._state is State.OPEN:
                return
            if self._state is not State.NEW:
                raise LedgerClosed(f"{self!r} was closed; open a new PostgresLedger")
            try:
                async with asyncio.timeout(self._timeout):
                    pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=1,
                        max_size=self._pool_size,
                        timeout=self._timeout,
                        command_timeout=self._timeout,
                        server_settings={"application_name": f"tongban-ledger-{self._region}"},
                    )
            except _DB_ERRORS as exc:
                raise LedgerError(
                    f"cannot connect to the ledger database {self._where}: {_brief(exc)}"
                ) from exc
            try:
                size = await self._prepare(pool)
            except BaseException:
                pool.terminate()
                raise
            self.commits = 0
            writer = asyncio.get_running_loop().create_task(
                self._run_writer(lambda drafts: self._write_batch(pool, drafts), describe=_brief),
                name=f"ledger-{self._region}-writer",
            )
            self._res = _Resources(pool, writer)
            self._state = State.OPEN
            log.info("ledger.opened", region=self._region, store=self._where, size=size)

    async def _prepare(self, pool: asyncpg.Pool) -> int:
        """Create or check the schema in one transaction; the size of the log."""
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn, conn.transaction():
                # Replicas starting together would race on CREATE … IF NOT EXISTS (it is not atomic).
                await conn.execute(
                    _LOCK,
                    f"tongban.ledger.ddl:{self._schema}",
                )
                for statement in self._sql.ddl:
                    await conn.execute(statement)
                meta = {row["key"]: row["value"] for row in await conn.fetch(self._sql.meta)}
                if not meta:
                    if await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{self._schema}".entries)'):
                        raise LedgerError(f"{self._where} holds entries but no ledger metadata; refusing it")
                    await conn.executemany(
                        f'INSERT INTO "{self._schema}".meta (key, value) VALUES ($1, $2)',
                        [("schema_version", SCHEMA_VERSION), ("region", self._region)],
                    )
                elif meta.get("schema_version") != SCHEMA_VERSION:
                    raise LedgerError(
                        f"{self._where} has ledger schema version {meta.get('schema_version')!r}, "
                        f"this code reads {SCHEMA_VERSION!r}"
                    )
                elif meta.get("region") != self._region:
                    raise LedgerError(
                        f"{self._where} is the ledger of region {meta.get('region')!r}, not {self._region!r}"
                    )
                enabled = {row["tgname"] for row in await conn.fetch(self._sql.triggers)}
                if not enabled.issuperset(_TRIGGERS):
                    if meta:
                        # Someone with table access dropped or disabled the append-only guards: put them back.
                        log.warning("ledger.triggers_restored", region=self._region, store=self._where)
                    for statement in self._sql.trigger_ddl:
                        await conn.execute(statement)
                row = await conn.fetchrow(self._sql.head, self._region)
        except LedgerError:
            raise
        except _DB_ERRORS as exc:
            raise LedgerError(f"cannot open the ledger {self._where}: {_brief(exc)}") from exc
        return 0 if row is None else _decode(row).index + 1

    async def _shutdown(self, res: _Resources) -> None:
        try:
            await asyncio.wait([res.writer])
            try:
                async with asyncio.timeout(self._timeout):
                    await res.pool.close()
            except TimeoutError:
                # A connection still busy after the deadline: drop them all rather than hang the shutdown.
                res.pool.terminate()
        finally:
            self._res = None
            self._state = State.CLOSED
        log.info("ledger.closed", region=self._region, store=self._where)

    async def size(self) -> int:
        """Number of committed entries (read from the database: other replicas append too)."""
        head = await self.head()
        return 0 if head is None else head.index + 1

    async def head(self) -> Entry | None:
        """The last committed entry, or None when the ledger is empty (read from the database)."""
        found = await self._read(self._sql.head)
        return found[0] if found else None

    async def get(self, index: int) -> Entry:
        """The entry at ``index``.

        Raises:
            IndexError: no entry has that index.
        """
        if index < 0:
            raise IndexError(f"ledger index must not be negative, got {index}")
        found = await self._read(f"{self._sql.select} AND idx = $2", index)
        if not found:
            raise IndexError(f"no ledger entry {index}")
        return found[0]

    async def entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """Entries with ``start <= index < stop`` (to the end when ``stop`` is None), in index order.

        Raises:
            ValueError: ``start`` or ``stop`` is negative.
        """
        if start < 0 or (stop is not None and stop < 0):
            raise ValueError(f"entries range must not be negative, got [{start}, {stop})")
        if stop is None:
            return await self._read(f"{self._sql.select} AND idx >= $2 ORDER BY idx", start)
        return await self._read(f"{self._sql.select} AND idx >= $2 AND idx < $3 ORDER BY idx", start, stop)

    async def by_message_id(self, message_id: str) -> list[Entry]:
        """Every entry about one message, in index order."""
        return await self._read(f"{self._sql.select} AND message_id = $2 ORDER BY idx", message_id)

    async def by_trace_id(self, trace_id: str) -> list[Entry]:
        """Every entry of one trace, in index order."""
        return await self._read(f"{self._sql.select} AND trace_id = $2 ORDER BY idx", trace_id)

    async def by_time(self, start_ns: int, end_ns: int, limit: int) -> list[Entry]:
        """At most ``limit`` entries with ``start_ns <= time_ns < end_ns``, in index order."""
        found = await self._read(
            f"{self._sql.select} AND time_ns >= $2 AND time_ns < $3 ORDER BY time_ns LIMIT $4",
            start_ns,
            end_ns,
            limit,
        )
        return sorted(found, key=lambda e: e.index)

    @contextlib.asynccontextmanager
    async def checkpoint_state(
        self,
    ) -> AsyncIterator[tuple[bytes | None, Callable[[bytes], Awaitable[None]]]]:
        """The region's last signed checkpoint note and a way to replace it, both under a lock of the
        region held until the block ends: every replica of the region that signs checkpoints checks
        the last one anyone signed, so none signs one inconsistent with another's.

        Yields:
            (the last note or None, ``save(note)``), inside one transaction committed at the end.
        """
        res = self._require_open()
        table = f'"{self._schema}".checkpoints'
        async with res.pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            async with asyncio.timeout(self._timeout):
                await conn.execute(_LOCK, f"{self._lock_key}:checkpoint")
            row = await conn.fetchrow(f"SELECT note FROM {table} WHERE region = $1", self._region)

            async def save(note: bytes) -> None:
                await conn.execute(
                    f"INSERT INTO {table} (region, note) VALUES ($1, $2) "
                    "ON CONFLICT (region) DO UPDATE SET note = excluded.note",
                    self._region,
                    note,
                )

            yield (None if row is None else bytes(row[0])), save

    async def _read(self, sql: str, *args: object) -> list[Entry]:
        res = self._require_open()
        try:
            async with asyncio.timeout(self._timeout), res.pool.acquire() as conn:
                rows = await conn.fetch(sql, self._region, *args)
        except _DB_ERRORS as exc:
            raise LedgerError(f"cannot read the ledger {self._where}: {_brief(exc)}") from exc
        return [_decode(row) for row in rows]

    async def _write_batch(self, pool: asyncpg.Pool, drafts: Sequence[EntryDraft]) -> list[Entry]:
        """Seal drafts after the region's current head and insert them in one transaction, or leave nothing.

        The advisory lock serialises this head-read-then-insert with every other process appending to the
        region; the head is read after taking it, never from memory.
        """
        async with pool.acquire(timeout=self._timeout) as conn:
            transaction = conn.transaction()
            try:
                # The deadline covers the wait for the region's lock too, however long other replicas hold it.
                async with asyncio.timeout(self._timeout):
                    await transaction.start()
                    await conn.execute(_LOCK, self._lock_key)
                    row = await conn.fetchrow(self._sql.head, self._region)
                    head = None if row is None else _decode(row)
                    index = 0 if head is None else head.index + 1
                    prev_hash = ZERO_HASH if head is None else head.entry_hash
                    entries: list[Entry] = []
                    for offset, draft in enumerate(drafts):
                        entry = seal(draft, index=index + offset, region=self._region, prev_hash=prev_hash)
                        entries.append(entry)
                        prev_hash = entry.entry_hash
                    columns = zip(*(_sqlite.entry_to_row(e) for e in entries), strict=True)
                    await conn.execute(self._sql.insert, *(list(column) for column in columns))
            except BaseException:
                # Best effort: a connection released inside a transaction is reset (ROLLBACK) or, failing
                # that, closed by the pool, which aborts the transaction just the same.
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            try:
                # Bounded by the pool's command_timeout; kept out of asyncio.timeout so a deadline cannot
                # cancel it half-way and skip the check below.
                await transaction.commit()
            except Exception as exc:
                # The COMMIT may have reached the server before the connection broke or the deadline passed:
                # find out rather than report a failure for entries that are in the log.
                if await self._committed(pool, entries[-1]):
                    log.info("ledger.commit_confirmed", region=self._region, error=_brief(exc))
                    return entries
                raise
        return entries

    async def _committed(self, pool: asyncpg.Pool, last: Entry) -> bool:
        """Whether a batch ending with ``last`` is in the log, asked after its COMMIT failed.

        Taking the region's lock first waits for that transaction to end (its backend holds the lock until it
        commits or aborts), so the answer is final.
        """
        try:
            async with asyncio.timeout(self._timeout), pool.acquire() as conn, conn.transaction():
                await conn.execute(_LOCK, self._lock_key)
                found = await conn.fetchval(
                    f'SELECT entry_hash FROM "{self._schema}".entries WHERE region = $1 AND idx = $2',
                    self._region,
                    last.index,
                )
        except _DB_ERRORS as exc:
            raise LedgerError(
                f"append to {self._where}: COMMIT failed and its outcome is unknown ({_brief(exc)}); "
                f"look for entry {last.index} or the message ids before retrying"
            ) from exc
        return bool(found == last.entry_hash)


def _decode(row: Sequence[object]) -> Entry:
    try:
        # The same strict decoding as the SQLite store: the columns come in the same order and types.
        return _sqlite.entry_from_row(tuple(row))
    except ValueError as exc:
        # Only a table edited behind the ledger's back holds such a row; verify_store says more.
        raise LedgerError(f"undecodable ledger row idx={row[0]!r}: {exc}") from exc


def _brief(exc: BaseException) -> str:
    """A one-line description of a database failure for a LedgerError message."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _describe(dsn: str, schema: str) -> str:
    """Where the ledger lives, for messages and logs: host, port, database and schema, never the password."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"postgresql schema {schema!r}"
    database = parts.path.lstrip("/") or "(default database)"
    return f"postgresql://{host}{port}/{database} schema {schema!r}"
