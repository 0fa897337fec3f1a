"""The interface every ledger store implements (SQLite now, PostgreSQL later)."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from ledger.entry import Entry, EntryDraft


@runtime_checkable
class LedgerStore(Protocol):
    """An append-only, hash-chained log of one region's deliveries.

    Lifecycle: ``open()``, use, ``close()``; both idempotent, and ``async with store:`` does the pair. Every
    method other than ``open``/``close`` raises :class:`~ledger.errors.LedgerClosed` when the store is not
    open.
    """

    @property
    def region(self) -> str:
        """The region whose ledger this is; every entry carries it."""
        ...

    async def open(self) -> None:
        """Open the store and load its head; a no-op when already open.

        Raises:
            LedgerError: the store cannot be opened or belongs to another region.
        """
        ...

    async def close(self, timeout: float | None = None) -> None:
        """Commit whatever appends are queued, then release the store; a no-op when already closed. With a
        ``timeout``, a close that overruns it gives up on what is queued and returns (logged)."""
        ...

    async def append(self, *drafts: EntryDraft) -> list[Entry]:
        """Append drafts atomically: all land, contiguous and in argument order, or none does.

        Args:
            *drafts: the entries to record; none is a no-op.

        Returns:
            The committed entries, in order; durable when this returns.

        Raises:
            LedgerClosed: the store is not open.
            LedgerError: the commit failed; nothing of this call is in the store.
        """
        ...

    async def size(self) -> int:
        """Number of committed entries (the next entry's index)."""
        ...

    async def head(self) -> Entry | None:
        """The last committed entry, or None for an empty ledger."""
        ...

    async def get(self, index: int) -> Entry:
        """The entry at ``index``.

        Raises:
            IndexError: no entry has that index (negative indexes do not count from the end).
        """
        ...

    async def entries(self, start: int = 0, stop: int | None = None) -> list[Entry]:
        """Entries with ``start <= index < stop`` (to the end when ``stop`` is None), in index order.

        Raises:
            ValueError: ``start`` or ``stop`` is negative.
        """
        ...

    async def by_message_id(self, message_id: str) -> list[Entry]:
        """Every entry about one message, in index order."""
        ...

    async def by_trace_id(self, trace_id: str) -> list[Entry]:
        """Every entry of one trace, in index order."""
        ...

    async def by_time(self, start_ns: int, end_ns: int, limit: int) -> list[Entry]:
        """At most ``limit`` entries with ``start_ns <= time_ns < end_ns``: the earliest by time when
        more match (so a reader can page through a range by time), returned in index order (indexed:
        the cost follows the entries found, not the ledger's size)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
