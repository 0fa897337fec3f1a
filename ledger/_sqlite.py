"""The SQLite file format of a ledger, shared by the async store and the offline verifier.

Kept apart from ``store_sqlite`` so ``verify`` can read a file without importing the async machinery, and so
the schema is written down in one place.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from ledger.entry import Entry, Event

SCHEMA_VERSION: Final = "1"

# Column order of every SELECT and INSERT below, and of the tuples entry_to_row/entry_from_row exchange.
COLUMNS: Final = (
    "idx",
    "time_ns",
    "region",
    "event",
    "message_id",
    "peer_region",
    "service_code",
    "envelope_digest",
    "trace_id",
    "detail",
    "prev_hash",
    "entry_hash",
)
_COLUMN_LIST: Final = ", ".join(COLUMNS)

# Applied statement by statement inside one transaction (executescript would commit first). IF NOT EXISTS also
# puts back triggers that someone with file access dropped.
DDL: Final = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entries (
        idx INTEGER PRIMARY KEY CHECK (idx >= 0),
        time_ns INTEGER NOT NULL,
        region TEXT NOT NULL,
        event TEXT NOT NULL,
        message_id TEXT NOT NULL,
        peer_region TEXT NOT NULL,
        service_code TEXT NOT NULL,
        envelope_digest BLOB NOT NULL,
        trace_id TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash BLOB NOT NULL,
        entry_hash BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_message_id ON entries (message_id)",
    "CREATE INDEX IF NOT EXISTS entries_trace_id ON entries (trace_id)",
    "CREATE INDEX IF NOT EXISTS entries_time ON entries (time_ns)",
    """CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: UPDATE refused'); END""",
    """CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
       BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only: DELETE refused'); END""",
)

INSERT_ENTRY: Final = f"INSERT INTO entries ({_COLUMN_LIST}) VALUES ({', '.join('?' * len(COLUMNS))})"
SELECT_ENTRIES: Final = f"SELECT {_COLUMN_LIST} FROM entries"
SELECT_HEAD: Final = f"{SELECT_ENTRIES} ORDER BY idx DESC LIMIT 1"

Row = tuple[object, ...]


def entry_to_row(entry: Entry) -> Row:
    """The INSERT parameters of an entry, in :data:`COLUMNS` order."""
    return (
        entry.index,
        entry.time_ns,
        entry.region,
        str(entry.event),
        entry.message_id,
        entry.peer_region,
        entry.service_code,
        entry.envelope_digest,
        entry.trace_id,
        entry.detail,
        entry.prev_hash,
        entry.entry_hash,
    )


def entry_from_row(row: Sequence[object]) -> Entry:
    """Decode a row selected in :data:`COLUMNS` order, strictly: a tampered file must not decode loosely.

    Text columns may arrive as ``str`` or, from a connection with ``text_factory=bytes``, as UTF-8 ``bytes``.

    Raises:
        ValueError: a value is not of its column's type, not UTF-8, or not a known event.
    """
    if len(row) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} columns, got {len(row)}")
    idx, time_ns, region, event, message_id, peer, service, digest, trace_id, detail, prev, chained = row
    return Entry(
        index=_int("idx", idx),
        time_ns=_int("time_ns", time_ns),
        region=_text("region", region),
        event=Event(_text("event", event)),
        message_id=_text("message_id", message_id),
        peer_region=_text("peer_region", peer),
        service_code=_text("service_code", service),
        envelope_digest=_blob("envelope_digest", digest),
        trace_id=_text("trace_id", trace_id),
        detail=_text("detail", detail),
        prev_hash=_blob("prev_hash", prev),
        entry_hash=_blob("entry_hash", chained),
    )


def read_meta(conn: sqlite3.Connection) -> dict[str, str] | None:
    """The ``meta`` table as a dict, or None when the file has no ``meta`` table (not a ledger, or new)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if found is None:
        return None
    rows = conn.execute("SELECT key, value FROM meta")
    return {_text("meta key", key): _text("meta value", value) for key, value in rows}


def _int(column: str, value: object) -> int:
    if not isinstance(value, int):
        raise ValueError(f"{column} is {type(value).__name__}, not INTEGER")
    return value


def _text(column: str, value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{column} is not UTF-8: {exc.reason}") from None
    if not isinstance(value, str):
        raise ValueError(f"{column} is {type(value).__name__}, not TEXT")
    return value


def _blob(column: str, value: object) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError(f"{column} is {type(value).__name__}, not BLOB")
    return value
