"""The delivery ledger of one region: an append-only, hash-chained log of what happened to each message.

Record with a :class:`LedgerStore` (``SQLiteLedger`` embedded, ``open_ledger`` opens one; ``PostgresLedger``
shared by a region's replicas), check with :func:`verify_entries`, :func:`verify_store` or
``ledger.verify.verify_sqlite_file``. The entry encoding is specified in
``ledger.entry``.
"""

from __future__ import annotations

from ledger.entry import Entry, EntryDraft, Event
from ledger.errors import ChainBroken, LedgerClosed, LedgerError
from ledger.store import LedgerStore
from ledger.store_postgres import PostgresLedger
from ledger.store_sqlite import SQLiteLedger, open_ledger
from ledger.verify import VerifyReport, verify_entries
from ledger.verify_store import verify_store

__all__ = [
    "ChainBroken",
    "Entry",
    "EntryDraft",
    "Event",
    "LedgerClosed",
    "LedgerError",
    "LedgerStore",
    "PostgresLedger",
    "SQLiteLedger",
    "VerifyReport",
    "open_ledger",
    "verify_entries",
    "verify_store",
]
