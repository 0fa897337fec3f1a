"""The settings of a SQL back end and of each service it answers, checked at start-up.

A ``[backends.<name>]`` table with ``kind = "postgres"`` or ``kind = "sqlite"`` becomes a
:class:`PostgresSettings` or :class:`SqliteSettings`; each ``[services.<code>]`` table naming it becomes
a :class:`StatementSettings`. Every mistake (an unknown key, a wrong type, a placeholder without a
source, a second statement) is a :class:`~tongban.core.errors.ConfigError` naming the table and the key,
never a surprise at request time. Error messages never quote a DSN (it may hold a password).

Statements are written with PostgreSQL's numbered placeholders ``$1, $2, …`` for both kinds, so one
statement text works on both; ``params`` lists the request sources bound to them in order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from connectors.backends.mapping import Source
from tongban.core.catalogue import CatalogueItem
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config

__all__ = [
    "KINDS",
    "Dialect",
    "PostgresSettings",
    "SqliteSettings",
    "StatementSettings",
    "backend_settings",
    "placeholders",
    "statement_settings",
]

Dialect = Literal["postgres", "sqlite"]
KINDS: Final[tuple[Dialect, ...]] = ("postgres", "sqlite")
"""The ``kind`` values of a SQL back end."""

MAX_ROWS_LIMIT: Final = 10_000
"""The most ``max_rows`` may be: a list answer travels sealed in one NATS message."""

_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")
_COLUMN = re.compile(r"[^\x00-\x1f]{1,63}")


@dataclass(frozen=True)
class PostgresSettings:
    """``[backends.<name>]`` with ``kind = "postgres"``: an asyncpg connection pool."""

    name: str
    """The back end's name (``[backends.<name>]``); also the pool's ``application_name``."""
    dsn: str = field(repr=False)
    """``postgresql://user:password@host:port/database?...``: from ``dsn``, or read from ``dsn_file``
    so the password stays out of the config."""
    pool_min: int = 1
    """Connections the pool opens when it is created and keeps."""
    pool_max: int = 10
    """The most connections the pool holds: calls beyond it wait (within their deadline) for one."""
    statement_timeout_s: float = 5.0
    """The longest one statement may run; the server cancels it (``SET LOCAL statement_timeout``, made
    shorter when the request's deadline is nearer)."""
    connect_timeout_s: float = 5.0
    """The longest opening one connection may take."""


@dataclass(frozen=True)
class SqliteSettings:
    """``[backends.<name>]`` with ``kind = "sqlite"``: a SQLite file opened read-only."""

    name: str
    """The back end's name (``[backends.<name>]``)."""
    path: Path
    """The database file (relative to the config file's directory), opened ``mode=ro``."""
    statement_timeout_s: float = 5.0
    """The longest one statement may run before it is interrupted (shorter near the deadline)."""
    max_concurrency: int = 4
    """The most statements running at once (one worker thread and connection each)."""


@dataclass(frozen=True)
class StatementSettings:
    """``[services.<code>]`` on a SQL back end: one parametrised statement and how its rows answer."""

    code: str
    """The catalogue item code."""
    sql: str
    """One statement with placeholders ``$1 … $n``."""
    params: tuple[Source, ...] = ()
    """The request sources bound to ``$1 … $n``, in order (never interpolated into the text)."""
    rows: Literal["one", "many"] = "one"
    """``one``: the single row is the answer (none: NOT_FOUND, more: BACKEND_FAILURE); ``many``:
    the rows are a list under ``list_field``."""
    list_field: str = ""
    """``rows = "many"``: the declared response field holding the list."""
    max_rows: int = 100
    """``rows = "many"``: more rows than this is a BACKEND_FAILURE (add ``LIMIT`` to the statement)."""
    empty: Literal["not_found", "empty_list"] = "not_found"
    """``rows = "many"``: what no row means: NOT_FOUND, or an answer with an empty list."""
    response: tuple[tuple[str, str], ...] = ()
    """Field → column pairs; empty: every column is a field of its own name."""
    booleans: frozenset[str] = frozenset()
    """Columns whose 0 and 1 are answered as false and true (SQLite has no boolean type)."""


def backend_settings(name: str, table: Mapping[str, Any], cfg: Config) -> PostgresSettings | SqliteSettings:
    """The settings of ``[backends.<name>]`` (``kind`` is ``postgres`` or ``sqlite``).

    Raises:
        ConfigError: an unknown or badly typed setting, a missing DSN or path, an unreadable
            ``dsn_file``.
    """
    t = _Table(table, f"[backends.{name}]")
    kind = t.text("kind")
    if kind == "postgres":
        inline = t.text("dsn", "")
        dsn_file = t.text("dsn_file", "")
        if bool(inline) == bool(dsn_file):
            raise ConfigError(f"{t.where}: give exactly one of dsn and dsn_file")
        dsn = inline or _read_secret(cfg.path(dsn_file), f"{t.where} dsn_file")
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ConfigError(f"{t.where}: the DSN must be a postgresql:// URL")
        pool_min = t.count("pool_min", 1, minimum=0)
        pool_max = t.count("pool_max", 10, minimum=1)
        if pool_min > pool_max:
            raise ConfigError(f"{t.where}: pool_min must not exceed pool_max")
        settings: PostgresSettings | SqliteSettings = PostgresSettings(
            name=name,
            dsn=dsn,
            pool_min=pool_min,
            pool_max=pool_max,
            statement_timeout_s=t.seconds("statement_timeout_s", 5.0),
            connect_timeout_s=t.seconds("connect_timeout_s", 5.0),
        )
    elif kind == "sqlite":
        path = t.text("path", "")
        if not path:
            raise ConfigError(f"{t.where}: path (the SQLite file) is required")
        settings = SqliteSettings(
            name=name,
            path=cfg.path(path),
            statement_timeout_s=t.seconds("statement_timeout_s", 5.0),
            max_concurrency=t.count("max_concurrency", 4, minimum=1),
        )
    else:
        raise ConfigError(f"{t.where}: kind must be one of {', '.join(KINDS)} for a SQL back end")
    t.done()
    return settings


def statement_settings(
    code: str, table: Mapping[str, Any], item: CatalogueItem, *, dialect: Dialect
) -> StatementSettings:
    """The settings of ``[services.<code>]`` (without its ``backend`` key) for item ``item``.

    Raises:
        ConfigError: an unknown or badly typed setting; placeholders that do not match ``params``;
            more than one statement; a mapped field the item does not declare.
    """
    t = _Table(table, f"[services.{code}]")
    sql = t.text("sql")
    raw_params = t.value("params", [])
    if not isinstance(raw_params, list):
        raise ConfigError(f"{t.where} params: must be a list of sources such as 'applicant.id'")
    params = tuple(Source.parse(p, where=f"{t.where} params[{i}]") for i, p in enumerate(raw_params))
    used = placeholders(sql, dialect=dialect, where=f"{t.where} sql")
    if used != set(range(1, len(params) + 1)):
        raise ConfigError(
            f"{t.where}: the statement's placeholders ({_listed(used)}) must be $1 … ${len(params)}, "
            f"one per source in params"
        )
    rows = t.text("rows", "one")
    if rows not in ("one", "many"):
        raise ConfigError(f'{t.where} rows: must be "one" or "many"')
    response = _response(t.value("response", {}), t.where)
    raw_booleans = t.value("booleans", [])
    if not isinstance(raw_booleans, list) or not all(isinstance(c, str) and c for c in raw_booleans):
        raise ConfigError(f"{t.where} booleans: must be a list of column names")
    booleans = frozenset(raw_booleans)
    declared = set(item.response_fields)
    if rows == "one":
        for key in ("list_field", "max_rows", "empty"):
            if key in table:
                raise ConfigError(f'{t.where} {key}: only for rows = "many"')
        undeclared = sorted({f for f, _ in response} - declared)
        if undeclared:
            raise ConfigError(f"{t.where} response: {', '.join(undeclared)} not a response field of {code}")
        settings = StatementSettings(code=code, sql=sql, params=params, response=response, booleans=booleans)
    else:
        list_field = t.text("list_field", "")
        if list_field not in declared:
            raise ConfigError(f'{t.where} list_field: rows = "many" needs a response field of {code}')
        empty = t.text("empty", "not_found")
        if empty not in ("not_found", "empty_list"):
            raise ConfigError(f'{t.where} empty: must be "not_found" or "empty_list"')
        settings = StatementSettings(
            code=code,
            sql=sql,
            params=params,
            rows="many",
            list_field=list_field,
            max_rows=t.count("max_rows", 100, minimum=1, maximum=MAX_ROWS_LIMIT),
            empty="empty_list" if empty == "empty_list" else "not_found",
            response=response,
            booleans=booleans,
        )
    t.done()
    return settings


def placeholders(sql: str, *, dialect: Dialect, where: str) -> set[int]:
    """The numbers of the ``$n`` placeholders in ``sql``, outside strings, quoted names and comments.

    Raises:
        ConfigError: an unterminated string or comment, a second statement after a ``;``, or (SQLite)
            another placeholder style (``?``, ``:name``, ``@name``, ``$name``).
    """
    found: set[int] = set()
    i, n = 0, len(sql)
    ended = False  # a ';' was seen: only blanks and comments may follow
    while i < n:
        c = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        if c in " \t\r\n":
            i += 1
            continue
        if c == "-" and nxt == "-":
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if c == "/" and nxt == "*":
            i = _past(sql, "*/", i + 2, where, "comment")
            continue
        if ended:
            raise ConfigError(f"{where}: one statement only (text follows a ';')")
        if c == ";":
            ended = True
            i += 1
        elif c in "'\"":
            i = _past_quoted(sql, c, i + 1, where)
        elif c.isalnum() or c == "_":
            # A word (a name, a keyword, a number); a '$' inside a name such as a$1 is no placeholder.
            while i < n and (sql[i].isalnum() or sql[i] in "_$"):
                i += 1
        elif c == "$" and nxt.isdigit():
            j = i + 1
            while j < n and sql[j].isdigit():
                j += 1
            found.add(int(sql[i + 1 : j]))
            i = j
        elif c == "$" and dialect == "postgres" and (m := _DOLLAR_TAG.match(sql, i)):
            i = _past(sql, m.group(0), m.end(), where, "dollar-quoted string")
        elif dialect == "sqlite" and (c in "?:@" or c == "$") and _starts_parameter(c, nxt):
            raise ConfigError(f"{where}: use the numbered placeholders $1, $2, … (not {c}…)")
        else:
            i += 1
    return found


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")


def _starts_parameter(c: str, nxt: str) -> bool:
    return c == "?" or nxt.isalpha() or nxt == "_"


def _past(sql: str, closing: str, start: int, where: str, what: str) -> int:
    end = sql.find(closing, start)
    if end < 0:
        raise ConfigError(f"{where}: unterminated {what}")
    return end + len(closing)


def _past_quoted(sql: str, quote: str, start: int, where: str) -> int:
    """Past the closing ``quote`` (a doubled quote is a quote inside)."""
    i = start
    while True:
        end = sql.find(quote, i)
        if end < 0:
            what = "string" if quote == "'" else "quoted name"
            raise ConfigError(f"{where}: unterminated {what}")
        if sql.startswith(quote * 2, end):
            i = end + 2
            continue
        return end + 1


def _listed(numbers: set[int]) -> str:
    return ", ".join(f"${k}" for k in sorted(numbers)) or "none"


def _response(table: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(table, Mapping):
        raise ConfigError(f'{where} response: must be a table of field = "column"')
    pairs: list[tuple[str, str]] = []
    for name, column in table.items():
        if not _FIELD.fullmatch(str(name)) or not isinstance(column, str) or not _COLUMN.fullmatch(column):
            raise ConfigError(f"{where} response: {name!r} must be a field name mapped to a column name")
        pairs.append((str(name), column))
    return tuple(pairs)


def _read_secret(path: Path, where: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read {path} ({type(exc).__name__})") from exc
    if not text:
        raise ConfigError(f"{where}: {path} is empty")
    return text


class _Table:
    """A config table read key by key; :meth:`done` refuses the keys nobody read."""

    def __init__(self, table: Mapping[str, Any], where: str) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: must be a table")
        self.table = table
        self.where = where
        self.read: set[str] = set()

    def value(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        if key not in self.table:
            if default is None:
                raise ConfigError(f"{self.where}: {key} is required")
            return default
        return self.table[key]

    def text(self, key: str, default: str | None = None) -> str:
        value = self.value(key, default)
        if not isinstance(value, str):
            raise ConfigError(f"{self.where} {key}: must be a string")
        return value

    def count(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self.value(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"{self.where} {key}: must be an integer >= {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{self.where} {key}: must be at most {maximum}")
        return value

    def seconds(self, key: str, default: float) -> float:
        value = self.value(key, default)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"{self.where} {key}: must be a number of seconds > 0")
        return float(value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.read)
        if unknown:
            raise ConfigError(f"{self.where}: unknown setting(s) {', '.join(map(repr, unknown))}")
