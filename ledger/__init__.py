"""The delivery ledger of one region: an append-only, hash-chained log of what happened to each message.

Record with a :class:`LedgerStore` (``SQLiteLedger`` embedded; ``open_ledger`` opens one), check with
:func:`verify_entries` or ``ledger.verify.verify_sqlite_file``. The entry encoding is specified in
``ledger.entry``.
"""

from __future__ import annotations

from ledger.entry import Entry, EntryDraft, Event
from ledger.errors import ChainBroken, LedgerClosed, LedgerError
from ledger.store import LedgerStore
from ledger.store_sqlite import SQLiteLedger, open_ledger
from ledger.verify import VerifyReport, verify_entries

__all__ = [
    "ChainBroken",
    "Entry",
    "EntryDraft",
    "Event",
    "LedgerClosed",
    "LedgerError",
    "LedgerStore",
    "SQLiteLedger",
    "VerifyReport",
    "open_ledger",
    "verify_entries",
]
