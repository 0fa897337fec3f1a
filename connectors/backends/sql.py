"""The declarative SQL adapter: a catalogue item answered by one parametrised, read-only statement.

One :class:`SqlBackend` per ``[backends.<name>]`` with ``kind = "postgres"`` (an asyncpg pool) or
``kind = "sqlite"`` (a read-only file on worker threads); one :class:`SqlService` adapter per
``[services.<code>]`` that names it. The settings are in :mod:`connectors.backends.sql_settings` and
``docs/adapters/sql.md``::

    [backends.shebao_db]
    kind = "postgres"
    dsn_file = "secrets/shebao_db.dsn"
    pool_max = 8

    [services.YLDYZGRZ0001]
    backend = "shebao_db"
    sql = "SELECT status AS certification_status FROM certification WHERE id_no = $1 AND year = $2"
    params = ["applicant.id", "fields.certification_year"]

Values are bound, never written into the statement, so a field value such as ``'; DROP TABLE
persons; --`` is only ever a value. Rows become JSON-like values (:func:`json_value`). No row is
NOT_FOUND; a database that fails, refuses or is unreachable is BACKEND_FAILURE; a statement out of
time is BACKEND_TIMEOUT.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Final

import structlog

from connectors.adapters import Adapter, AdapterFailure, AdapterRequest
from connectors.backends.sql_engine import Rows, SqlEngine, failure
from connectors.backends.sql_postgres import PostgresEngine
from connectors.backends.sql_settings import (
    Dialect,
    PostgresSettings,
    SqliteSettings,
    StatementSettings,
    backend_settings,
    statement_settings,
)
from connectors.backends.sql_sqlite import SqliteEngine
from tongban.core.catalogue import CatalogueItem
from tongban.core.errors import NotFound
from tongban.runtime.config import Config

__all__ = ["SqlBackend", "SqlService", "json_value"]

_EXACT_INT: Final = 2**53
"""Integers beyond ±2**53 lose digits as a JSON (double) number: they are given as text."""
_AS_TEXT: Final = (
    uuid.UUID,
    ipaddress.IPv4Address,
    ipaddress.IPv6Address,
    ipaddress.IPv4Network,
    ipaddress.IPv6Network,
    ipaddress.IPv4Interface,
    ipaddress.IPv6Interface,
)
"""Values given as their text (``inet``, ``cidr``, ``uuid`` columns)."""

log = structlog.get_logger("tongban.connector.sql")


class SqlBackend:
    """One SQL database a connector answers services from (``[backends.<name>]``)."""

    def __init__(self, settings: PostgresSettings | SqliteSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.engine: SqlEngine = (
            PostgresEngine(settings) if isinstance(settings, PostgresSettings) else SqliteEngine(settings)
        )

    def __repr__(self) -> str:
        return f"SqlBackend({self.name!r}, {self.engine!r})"

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any], cfg: Config) -> SqlBackend:
        """The back end ``[backends.<name>]`` describes; nothing is connected yet.

        Raises:
            ConfigError: a bad or unknown setting (see ``docs/adapters/sql.md``).
        """
        return cls(backend_settings(name, table, cfg))

    def service(self, code: str, table: Mapping[str, Any], item: CatalogueItem) -> Adapter:
        """The adapter of ``[services.<code>]`` (``table`` without its ``backend`` key) for ``item``.

        Raises:
            ConfigError: a bad or unknown setting, placeholders that do not match ``params``, a mapped
                field ``item`` does not declare.
        """
        dialect: Dialect = "postgres" if isinstance(self.settings, PostgresSettings) else "sqlite"
        settings = statement_settings(code, table, item, dialect=dialect)
        return SqlService(settings, self.engine, backend=self.name)

    async def aclose(self) -> None:
        """Close the pool (or the connections); statements in flight get a bounded time. Idempotent."""
        await self.engine.aclose()


class SqlService:
    """The adapter of one catalogue item: its statement, run on its back end's engine."""

    def __init__(self, settings: StatementSettings, engine: SqlEngine, *, backend: str) -> None:
        self.settings = settings
        self.engine = engine
        self.backend = backend

    def __repr__(self) -> str:
        return f"SqlService({self.settings.code!r}, {self.engine!r})"

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        """The answer to ``request``: the row's fields (``rows = "one"``), or the rows as a list.

        Raises:
            NotFound: no row.
            AdapterFailure: ``BACKEND_TIMEOUT`` (the statement or the deadline ran out), or
                ``BACKEND_FAILURE`` (the database failed or is unreachable; more rows than expected;
                a column the response names is missing or holds a value with no JSON form).
        """
        s = self.settings
        values = [source.of(request) for source in s.params]
        # One more row than accepted, to notice more.
        limit = (1 if s.rows == "one" else s.max_rows) + 1
        rows = await self.engine.fetch(s.sql, values, limit=limit, deadline=request.deadline, service=s.code)
        try:
            return self._answer(rows)
        except AdapterFailure as exc:
            # The engine logged its own failures; these are the answer's (too many rows, a column).
            log.warning(
                "sql.failed", backend=self.backend, service=s.code, reason=exc.reason, error=exc.message
            )
            raise

    def _answer(self, rows: Rows) -> dict[str, Any]:
        s = self.settings
        if s.rows == "one":
            if not rows.values:
                raise NotFound("no record for this applicant")
            if len(rows.values) > 1:
                raise failure("the statement gave more than one row; expected one row")
            return self._fields(rows, rows.values[0])
        if len(rows.values) > s.max_rows:
            raise failure(f"the statement gave more than max_rows = {s.max_rows} rows")
        if not rows.values and s.empty == "not_found":
            raise NotFound("no record for this applicant")
        return {s.list_field: [self._fields(rows, row) for row in rows.values]}

    def _fields(self, rows: Rows, row: Sequence[Any]) -> dict[str, Any]:
        if not self.settings.response:
            if len(set(rows.columns)) != len(rows.columns):
                raise failure("the statement gives two columns of one name; name them apart (AS)")
            pairs = zip(rows.columns, row, strict=True)
            return {column: self._value(value, column) for column, value in pairs}
        at = {column: i for i, column in enumerate(rows.columns)}
        out: dict[str, Any] = {}
        for name, column in self.settings.response:
            i = at.get(column)
            if i is None:
                raise failure(f"the statement gives no column {column!r} (response.{name})")
            out[name] = self._value(row[i], column)
        return out

    def _value(self, value: Any, column: str) -> Any:
        if column in self.settings.booleans and type(value) is int and value in (0, 1):
            return bool(value)
        return json_value(value, column)


def json_value(value: Any, column: str = "") -> Any:
    """A database value as a JSON-like value.

    ``None``, ``bool``, ``str`` as they are; ``int`` (beyond ±2**53 as text); ``Decimal`` as an int
    when whole, else a float (cast to text in the statement to keep every digit); non-finite floats
    as ``None``; dates, times and datetimes as ISO 8601 text; an interval as seconds; UUIDs and
    network addresses as text; arrays as lists; JSON columns as their values.

    Raises:
        AdapterFailure: a value with no JSON form (``bytea``/BLOB: encode it in the statement, e.g.
            ``encode(photo, 'base64')``), named by its column, never by its value.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value if -_EXACT_INT <= value <= _EXACT_INT else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return None
        return int(value) if value == value.to_integral_value() and abs(value) <= _EXACT_INT else float(value)
    if isinstance(value, datetime.date | datetime.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, _AS_TEXT):
        return str(value)
    if isinstance(value, list | tuple):
        return [json_value(v, column) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v, column) for k, v in value.items()}
    if isinstance(value, bytes | bytearray | memoryview):
        raise failure(f"column {column!r} is binary; encode it in the statement (e.g. encode(x, 'base64'))")
    raise failure(f"column {column!r} holds a {type(value).__name__}, which has no JSON form")
