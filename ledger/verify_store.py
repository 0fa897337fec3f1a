"""Verification of a ledger through its store, whatever the store is (SQLite, PostgreSQL).

``ledger.verify.verify_sqlite_file`` reads a SQLite file directly; this reads any open
:class:`~ledger.store.LedgerStore` page by page, so a PostgreSQL ledger is checked the same way and with the
same report. The limits of chain verification are those described in :mod:`ledger.verify`.
"""

from __future__ import annotations

from typing import Final

from ledger.errors import LedgerError
from ledger.store import LedgerStore
from ledger.verify import ChainCheck, VerifyReport

PAGE_SIZE: Final = 10_000
"""Entries fetched per read: bounds memory for a log of millions of entries."""


async def verify_store(
    store: LedgerStore, *, region: str | None = None, page: int = PAGE_SIZE
) -> VerifyReport:
    """Verify an open store's ledger from its first entry, recomputing every encoding and hash.

    Reads index ranges ``[k * page, (k + 1) * page)`` until one comes back empty and nothing follows it, so
    entries appended meanwhile may or may not be included. An entry the store cannot decode (a tampered value)
    is reported as the first bad index, like any other tampering.

    Args:
        store: an open ledger store.
        region: the region every entry must carry; None means the store's region.
        page: entries per read.

    Returns:
        The report, as :func:`ledger.verify.verify_entries` makes it.

    Raises:
        LedgerError: the store cannot be read (not open, database down).
        ValueError: ``page`` is below 1.
    """
    if page < 1:
        raise ValueError(f"page must be at least 1, got {page}")
    check = ChainCheck(region if region is not None else store.region)
    start = 0
    while True:
        try:
            found = await store.entries(start, start + page)
        except LedgerError:
            await _bisect(store, check, start, start + page)
            start += page
            continue
        if not found:
            # An empty range is the end, or a gap of at least a page: a tampered log must not end the check.
            # The rest of the log is then read in one go, which only a log with such a gap ever does.
            rest = await store.entries(start)
            for entry in rest:
                check.feed(entry)
            return check.report()
        for entry in found:
            check.feed(entry)
        start += page


async def _bisect(store: LedgerStore, check: ChainCheck, start: int, stop: int) -> None:
    """Feed a range the store failed to read as a whole, halving it to single out the undecodable entries."""
    try:
        found = await store.entries(start, stop)
    except LedgerError as exc:
        if stop - start > 1:
            middle = (start + stop) // 2
            await _bisect(store, check, start, middle)
            await _bisect(store, check, middle, stop)
            return
        # Tell a row that cannot be decoded from a store that cannot be read: the latter fails this too.
        await store.entries(0, 0)
        check.undecodable(str(exc))
        return
    for entry in found:
        check.feed(entry)
