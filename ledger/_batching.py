"""What both ledger stores share: the open/close lifecycle and the queue of appends that their writer
task commits in batches (group commit).

A store subclasses :class:`BatchingStore`, sets up its fields with :meth:`BatchingStore._init_batching`,
implements ``open`` (which creates its resources, one of them the writer task, and sets the state to
OPEN) and ``_shutdown`` (which waits for the writer to drain the queue and releases the resources),
and runs :meth:`BatchingStore._run_writer` as its writer task with a function that commits one batch.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Generic, Protocol, Self, TypeVar

import structlog

from ledger.entry import Entry, EntryDraft
from ledger.errors import LedgerClosed, LedgerError

log = structlog.get_logger("ledger.store")

_CANCELLED_CLOSE_S: Final = 1.0
"""How long a close past its timeout waits for the cancelled shutdown's own cleanup."""


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One ``append`` call waiting for its batch."""

    drafts: tuple[EntryDraft, ...]
    future: asyncio.Future[list[Entry]]


class Resources(Protocol):
    """What a store holds only while open; the writer task among it."""

    @property
    def writer(self) -> asyncio.Task[None]: ...


R = TypeVar("R", bound=Resources)


class BatchingStore(Generic[R]):
    """Lifecycle and append queue of a ledger store (see the module docstring)."""

    _region: str
    _max_batch: int
    _state: State
    _res: R | None
    _lifecycle: asyncio.Lock
    _pending: collections.deque[Request]
    _wakeup: asyncio.Event
    _closer: asyncio.Future[None] | None
    commits: int

    def _init_batching(self, region: str, max_batch: int) -> None:
        self._region = region
        self._max_batch = max_batch
        self._state = State.NEW
        self._res = None
        self._lifecycle = asyncio.Lock()
        self._pending = collections.deque()
        self._wakeup = asyncio.Event()
        self._closer = None
        self.commits = 0

    @property
    def region(self) -> str:
        """The region whose ledger this is."""
        return self._region

    async def open(self) -> None:
        raise NotImplementedError

    async def _shutdown(self, res: R) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, timeout: float | None = None) -> None:
        """Commit every queued append, stop the writer and release what the store holds. Idempotent.

        Appends that were queued before ``close`` complete normally; appends after it raise LedgerClosed.
        Concurrent calls all wait for the same shutdown, and cancelling one does not interrupt it.

        Args:
            timeout: seconds to wait for that (None: as long as it takes). A shutdown still running then,
                its writer stuck in a commit (a disk that does not answer, a lock another process holds),
                is cancelled: appends still queued fail with LedgerError, the store is CLOSED, and a batch
                the database was committing lands or not as the database decides (look its messages up).
        """
        async with self._lifecycle:
            if self._state is State.NEW:
                self._state = State.CLOSED
            if self._state is State.CLOSED:
                return
            if self._closer is None:
                assert self._res is not None  # OPEN always has resources
                self._state = State.CLOSING
                self._wakeup.set()
                self._closer = asyncio.ensure_future(self._shutdown(self._res))
            closer, res = self._closer, self._res
        if timeout is None:
            await asyncio.shield(closer)
            return
        # Like the shield above: a cancelled caller leaves the shutdown running.
        done, _ = await asyncio.wait({closer}, timeout=timeout)
        if done:
            closer.result()
            return
        log.error("ledger.close_timed_out", region=self._region, timeout_s=timeout, queued=len(self._pending))
        if res is not None:
            res.writer.cancel()  # it fails what is queued; its thread finishes the commit in hand
        closer.cancel()  # its cleanup marks the store CLOSED and lets the executors go
        await asyncio.wait({closer}, timeout=_CANCELLED_CLOSE_S)

    async def append(self, *drafts: EntryDraft) -> list[Entry]:
        """Append drafts atomically; see :meth:`ledger.store.LedgerStore.append`.

        Drafts without ``time_ns`` get the time of this call. Once called, the drafts are committed with their
        batch even if the caller is cancelled meanwhile: cancellation does not withdraw an append (look the
        message up with ``by_message_id`` to learn its fate).

        Raises:
            LedgerClosed: the ledger is not open.
            LedgerError: the batch transaction failed (its cause is chained); nothing of it was written.
            TypeError: an argument is not an EntryDraft.
        """
        self._require_open()
        if not drafts:
            return []
        for draft in drafts:
            if not isinstance(draft, EntryDraft):
                raise TypeError(f"append takes EntryDraft, not {type(draft).__name__}")
        now = time.time_ns()
        stamped = tuple(d if d.time_ns is not None else dataclasses.replace(d, time_ns=now) for d in drafts)
        future: asyncio.Future[list[Entry]] = asyncio.get_running_loop().create_future()
        # Queued synchronously, so the order of append() calls is the order of this process's batches.
        self._pending.append(Request(stamped, future))
        self._wakeup.set()
        return await future

    def _require_open(self) -> R:
        if self._state is not State.OPEN or self._res is None:
            raise LedgerClosed(f"{self!r} is not open")
        if self._res.writer.done():
            # Only a bug or an outside cancellation ends the writer early; appends would wait forever.
            raise LedgerError(f"{self!r}: its writer task has stopped")
        return self._res

    def _take_batch(self) -> list[Request]:
        # Strict FIFO (never skip ahead to fill a batch), so the log keeps the order of the append() calls.
        batch = [self._pending.popleft()]
        count = len(batch[0].drafts)
        while self._pending and count + len(self._pending[0].drafts) <= self._max_batch:
            request = self._pending.popleft()
            count += len(request.drafts)
            batch.append(request)
        return batch

    async def _run_writer(
        self,
        write: Callable[[list[EntryDraft]], Awaitable[list[Entry]]],
        *,
        describe: Callable[[BaseException], str] = repr,
        committed: Callable[[list[Entry]], None] | None = None,
    ) -> None:
        """The writer task. Group commit: whatever queued up while the previous batch was committing
        forms the next batch, committed by ``write`` (all or nothing); ``committed`` sees each
        committed batch; ``describe`` words a failure for the log and the callers' errors."""
        batch: list[Request] = []
        try:
            while True:
                if not self._pending:
                    if self._state is not State.OPEN:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                batch = self._take_batch()
                drafts = [d for request in batch for d in request.drafts]
                try:
                    entries = await write(drafts)
                except Exception as exc:
                    log.warning(
                        "ledger.batch_failed",
                        region=self._region,
                        requests=len(batch),
                        entries=len(drafts),
                        error=describe(exc),
                    )
                    for request in batch:
                        _fail(request.future, exc, len(drafts), describe)
                    batch = []
                    continue
                if committed is not None:
                    committed(entries)
                self.commits += 1
                offset = 0
                for request in batch:
                    n = len(request.drafts)
                    if not request.future.done():  # the caller may have been cancelled
                        request.future.set_result(entries[offset : offset + n])
                    offset += n
                batch = []
        except BaseException as exc:
            # Cancelled from outside or a bug: nobody may be left waiting on a future that will never resolve.
            for request in [*batch, *self._pending]:
                _fail(request.future, exc, len(request.drafts), describe)
            self._pending.clear()
            raise


def _fail(
    future: asyncio.Future[list[Entry]],
    cause: BaseException,
    batch_size: int,
    describe: Callable[[BaseException], str],
) -> None:
    if future.done():
        return
    # One error object per caller: a shared exception would collect every caller's traceback.
    error = LedgerError(
        f"append failed, its batch of {batch_size} entries was rolled back: {describe(cause)}"
    )
    error.__cause__ = cause
    future.set_exception(error)
