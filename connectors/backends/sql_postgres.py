"""A PostgreSQL back end: an asyncpg pool, each statement in a read-only transaction with a timeout.

The pool is opened by the first call (one opening shared by every call that waits for it; a failed
opening is tried again by the next call) and holds at most ``pool_max`` connections; calls beyond
that wait for a connection within their deadline. Its connections are read-only twice over: the
session default (``default_transaction_read_only``) and each call's ``transaction(readonly=True)``.
Each statement runs under ``SET LOCAL statement_timeout`` (the configured timeout, or what is left
before the request's deadline if that is less), and the whole call is bounded on this side too.

Values are bound, never interpolated. Every request value is text; the first call of a statement
asks the server for its parameter types, and each value is converted to the type of its parameter
(``int4`` → int, ``date`` → date, …; an empty value is NULL for a non-text parameter).
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import asyncpg
import structlog

from connectors.adapters import AdapterFailure
from connectors.backends.sql_engine import CLOSE_TIMEOUT_S, Rows, budget, failure, timed_out
from connectors.backends.sql_settings import PostgresSettings

__all__ = ["PostgresEngine"]

log = structlog.get_logger("tongban.connector.sql")


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "t", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "f", "0", "no", "n", "off"):
        return False
    raise ValueError("not a boolean")


_CONVERT: Final[dict[str, Callable[[str], Any]]] = {
    "int2": int,
    "int4": int,
    "int8": int,
    "oid": int,
    "float4": float,
    "float8": float,
    "numeric": decimal.Decimal,
    "bool": _boolean,
    "date": datetime.date.fromisoformat,
    "timestamp": datetime.datetime.fromisoformat,
    "timestamptz": datetime.datetime.fromisoformat,
    "time": datetime.time.fromisoformat,
    "uuid": uuid.UUID,
}
"""Parameter type → conversion of the request's text; any other type takes the text as it is."""


def _json_text(value: Any) -> str:
    # A request value is already JSON text: bind it as it is.
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json and jsonb columns arrive as values rather than as JSON text.
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_json_text, decoder=json.loads, schema="pg_catalog")


class PostgresEngine:
    """An asyncpg pool on ``settings.dsn`` (see the module docstring)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._opening: asyncio.Task[asyncpg.Pool] | None = None
        self._closed = False
        self._param_types: dict[str, tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"PostgresEngine({self.settings.name!r})"  # never the DSN

    async def fetch(
        self, sql: str, values: Sequence[str], *, limit: int, deadline: float, service: str
    ) -> Rows:
        s = self.settings
        try:
            b = budget(
                deadline,
                statement_timeout_s=s.statement_timeout_s,
                otherwise_s=s.connect_timeout_s + s.statement_timeout_s,
            )
            async with asyncio.timeout(b.call_s):
                pool = await self._pool()
                async with pool.acquire() as conn, conn.transaction(readonly=True):
                    await conn.execute(
                        "SELECT set_config('statement_timeout', $1, true)",
                        str(max(1, round(b.statement_s * 1000))),
                    )
                    args = await self._arguments(conn, sql, values)
                    cursor = await conn.cursor(sql, *args)
                    records = await cursor.fetch(limit)
        except AdapterFailure as exc:
            self._log(service, exc)
            raise
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            failed = _classified(exc)
            self._log(service, failed, exc)
            raise failed from exc
        columns = tuple(records[0].keys()) if records else ()
        return Rows(columns, [tuple(r.values()) for r in records])

    async def _pool(self) -> asyncpg.Pool:
        """The pool, opened by the first call that needs it."""
        if self._closed:
            raise failure(f"the SQL back end {self.settings.name} is closed")
        opening = self._opening
        if opening is None:
            opening = self._opening = asyncio.get_running_loop().create_task(
                self._open(), name=f"sql-{self.settings.name}-pool"
            )
            # Nobody may be waiting when it fails (every caller timed out): fetch its error anyway.
            opening.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            # Shielded: a caller running out of time must not abort an opening the others wait for.
            return await asyncio.shield(opening)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The opening itself failed (this call's own deadline is a cancellation, not caught here).
            if self._opening is opening:
                self._opening = None  # the next call tries again
            raise failure(f"cannot connect to the database ({type(exc).__name__})") from exc

    async def _open(self) -> asyncpg.Pool:
        s = self.settings
        pool = await asyncpg.create_pool(
            s.dsn,
            min_size=s.pool_min,
            max_size=s.pool_max,
            timeout=s.connect_timeout_s,
            command_timeout=None,  # each call has its own bound
            init=_init_connection,
            server_settings={
                "application_name": f"tongban-sql-{s.name}"[:63],
                "default_transaction_read_only": "on",
            },
        )
        log.info("sql.pool_opened", backend=s.name, pool_min=s.pool_min, pool_max=s.pool_max)
        return pool

    async def _arguments(self, conn: asyncpg.Connection, sql: str, values: Sequence[str]) -> list[Any]:
        """``values`` converted to the statement's parameter types (asked of the server once)."""
        types = self._param_types.get(sql)
        if types is None:
            statement = await conn.prepare(sql)
            types = self._param_types[sql] = tuple(t.name for t in statement.get_parameters())
        if len(types) != len(values):
            raise failure(f"the statement has {len(types)} parameters, the service binds {len(values)}")
        args: list[Any] = []
        for number, (value, type_name) in enumerate(zip(values, types, strict=True), start=1):
            convert = _CONVERT.get(type_name)
            if convert is None:
                args.append(value)
                continue
            try:
                args.append(None if value == "" else convert(value))
            except (ValueError, ArithmeticError) as exc:
                raise failure(f"the value for ${number} is not a {type_name}") from exc
        return args

    def _log(self, service: str, exc: AdapterFailure, cause: BaseException | None = None) -> None:
        # The failure's own text and the SQLSTATE only: a database's message may quote bound values.
        log.warning(
            "sql.failed",
            backend=self.settings.name,
            service=service,
            reason=exc.reason,
            error=exc.message,
            sqlstate=getattr(cause, "sqlstate", None),
            cause=type(cause).__name__ if cause is not None else None,
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        opening, self._opening = self._opening, None
        if opening is None:
            return
        if not opening.done():
            # An opening under way ends within its connect timeout; past the bound it is dropped.
            await asyncio.wait([opening], timeout=CLOSE_TIMEOUT_S)
            if not opening.done():
                opening.cancel()
                return
        if opening.cancelled() or opening.exception() is not None:
            return  # never opened: nothing to close
        pool = opening.result()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await pool.close()
        except TimeoutError:
            # A statement still running after the bound: drop every connection rather than hang.
            pool.terminate()
        log.info("sql.pool_closed", backend=self.settings.name)


def _classified(exc: BaseException) -> AdapterFailure:
    """What a database error means for the caller, in a fixed text (never the database's message)."""
    if isinstance(exc, TimeoutError):
        return timed_out("the database did not answer within the deadline")
    if isinstance(exc, asyncpg.QueryCanceledError):
        return timed_out("the statement ran out of time")
    if isinstance(exc, asyncpg.ReadOnlySQLTransactionError):
        return failure("the statement tried to write; SQL back ends are read-only")
    if isinstance(exc, asyncpg.PostgresError):
        return failure(f"the database refused the statement (SQLSTATE {exc.sqlstate})")
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return failure("a value does not fit its parameter")  # asyncpg's own DataError: its codec refused
    return failure("the database connection failed")
