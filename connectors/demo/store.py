"""The base of the demo stores: some tables of one SQLite file, created and seeded on first use."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tongban.core.errors import NotFound

NO_RECORD = "no record for this applicant"
"""What a store's :class:`~tongban.core.errors.NotFound` says (never the applicant's ID number)."""


def one(conn: sqlite3.Connection, sql: str, *params: object) -> sqlite3.Row:
    """The row ``sql`` selects.

    Raises:
        NotFound: there is none (:data:`NO_RECORD`).
    """
    row: sqlite3.Row | None = conn.execute(sql, params).fetchone()
    if row is None:
        raise NotFound(NO_RECORD)
    return row


class SQLiteStore:
    """A store owning some tables of a SQLite file; one connection per thread (thread-safe).

    A store declares its tables in ``SCHEMA`` and fills them in :meth:`seed` (``INSERT OR IGNORE``:
    opening the file again seeds nothing twice).
    """

    SCHEMA = ""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        with self.transaction() as conn:
            conn.executescript(self.SCHEMA)
            self.seed(conn)

    def seed(self, conn: sqlite3.Connection) -> None:
        """Insert the store's seed rows (from :mod:`connectors.demo.seed`)."""
        raise NotImplementedError

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, in one transaction (committed when the block ends)."""
        # One connection per worker thread, kept open: opening a SQLite connection per call costs more
        # than the query itself. WAL lets the threads read while one writes.
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        with conn:  # one transaction: commit on success, roll back on error
            yield conn
