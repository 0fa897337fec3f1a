"""The checkpoint signer of a region's ledger: it never signs two checkpoints inconsistent with each
other (tlog-checkpoint "Signatures"). It keeps the last checkpoint it signed on disk and signs a new
one only when its own tree proves consistency from it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import structlog

from ledger.checkpoint import Checkpoint, SignedCheckpoint, origin_of, read_note, sign_checkpoint
from ledger.errors import CheckpointError, CheckpointRefused, LedgerError
from ledger.files import write_atomically
from ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from ledger.note import NoteKey
from ledger.store import LedgerStore
from ledger.tree import LedgerTree

log = structlog.get_logger("ledger.checkpoint")


OnCheckpoint = Callable[[SignedCheckpoint], Awaitable[None]]


class CheckpointSigner:
    """Signs checkpoints of one region's ledger, never two inconsistent ones.

    The last signed note is kept in ``state_path`` (a small JSON file, written atomically and fsynced *before*
    the new note is returned, so no signed checkpoint can be lost by a crash). A new checkpoint is signed only
    when the signer's tree — recomputed from the ledger's entries by :class:`~ledger.tree.LedgerTree` when the
    signer opens — is at least as large as the last one and proves consistency with it; otherwise
    :class:`CheckpointRefused`. Deleting the state file lifts that protection: keep it with the ledger.

    Checkpoints come on demand (:meth:`sign_now`, :meth:`checkpoint`) and, between :meth:`start` and
    :meth:`stop`, every ``interval_s``: a new one when the ledger grew, else the last one again, handed to
    ``on_checkpoint`` (which publishes it).

    Args:
        store: the region's ledger.
        key: the key to sign with, or a callable returning the key to use now (a region's current key during a
            rotation, e.g. ``lambda: secrets.signing``).
        state_path: where the last signed checkpoint is kept.
        origin: the log's origin; :func:`origin_of` the store's region by default. Also the key name.
        interval_s: period of scheduled checkpoints.
        on_checkpoint: called with each scheduled checkpoint.
        tree: the store's tree to use (shared with, e.g., the gateway's ledger service); a new one when None.
            It must cover this store from index 0.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        key: NoteKey | Callable[[], NoteKey],
        state_path: str | os.PathLike[str],
        origin: str | None = None,
        interval_s: float = 60.0,
        on_checkpoint: OnCheckpoint | None = None,
        tree: LedgerTree | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.store = store
        self.origin = origin or origin_of(store.region)
        self.state_path = Path(state_path)
        self.interval_s = interval_s
        self.tree = LedgerTree() if tree is None else tree
        self._key = key
        self._on_checkpoint = on_checkpoint
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: SignedCheckpoint | None = None
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def last(self) -> SignedCheckpoint | None:
        """The last checkpoint signed (in this run or, from the state file, before)."""
        return self._last

    async def open(self) -> None:
        """Read the state file and build the tree from the ledger; idempotent.

        Raises:
            LedgerError: the state file is unreadable or belongs to another log.
        """
        async with self._lock:
            if self._opened:
                return
            self._last = self._load()
            await self.tree.sync(self.store)
            self._opened = True

    async def start(self) -> None:
        """Open, then sign and hand over a checkpoint now and every ``interval_s``; idempotent."""
        await self.open()
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"checkpoints-{self.origin}")

    async def stop(self, timeout: float = 2.0) -> None:
        """End the schedule within ``timeout`` seconds; idempotent. Signing and persisting a checkpoint
        happen in one synchronous step, so a cancellation never separates a signature from its record.

        The schedule ends on its stop flag; the cancel only cuts its wait short. A cancel alone can be
        lost on Python 3.11 (``asyncio.wait_for``, which ``on_checkpoint``'s NATS flush uses, drops one
        that arrives with its result), and the loop would run on. It is repeated until the task ends,
        up to ``timeout``; a task still running then is left behind, and logged.
        """
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not task.done() and loop.time() < until:
            task.cancel()
            await asyncio.wait({task}, timeout=min(0.2, max(0.0, until - loop.time())))
        if not task.done():
            log.error("checkpoint.schedule_not_stopped", origin=self.origin)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def checkpoint(self) -> SignedCheckpoint:
        """A checkpoint of the ledger as it is now: a new one if it grew since the last, else the last.

        Raises:
            CheckpointRefused: the ledger does not prove consistency with the last signed checkpoint.
        """
        await self.open()
        async with self._lock:
            size = await self._sync()
            last = self._last
            if (
                last is not None
                and last.checkpoint.size == size
                and self.tree.tree.root(size) == last.checkpoint.root
            ):
                return last
            return await self._sign()

    async def sign_now(self) -> SignedCheckpoint:
        """Sign a fresh checkpoint of the ledger as it is now (a new timestamp even if it did not grow).

        Raises:
            CheckpointRefused: the ledger does not prove consistency with the last signed checkpoint.
        """
        await self.open()
        async with self._lock:
            await self.tree.sync(self.store)
            return await self._sign()

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The consistency proof between two sizes of this ledger (what a witness asks for).

        Raises:
            ValueError: not ``0 < old_size <= new_size <= size of the ledger``.
        """
        await self.open()
        async with self._lock:
            size = self.tree.tree.size
            if new_size > size:
                size = await self._sync()
            if not 0 < old_size <= new_size <= size:
                raise ValueError(f"cannot prove {old_size} -> {new_size} in a tree of size {size}")
            return self.tree.tree.consistency_proof(old_size, new_size)

    async def _sync(self) -> int:
        await self.tree.sync(self.store)
        return self.tree.tree.size

    async def _sign(self) -> SignedCheckpoint:
        """Sign under the lock that every signer of this log shares: the store's own (PostgreSQL:
        all replicas of the region, on any host), else the state file's (processes of one host)."""
        shared = getattr(self.store, "checkpoint_state", None)
        if shared is None:
            return self._sign_locked()
        async with shared() as (note, save):
            if note is not None:
                stored = read_note(note)
                if stored.checkpoint.origin != self.origin:
                    raise LedgerError(f"the store's last checkpoint belongs to {stored.checkpoint.origin!r}")
                self._last = stored
            signed = self._sign_with_lock_held()
            await save(signed.note)
            return signed

    def _sign_locked(self) -> SignedCheckpoint:
        # Other processes of the region (another gateway on this host, `tongban ledger export`)
        # sign with the same state file: under a file lock, the last checkpoint signed by anyone is
        # the one to be consistent with.
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.state_path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._last = self._load() or self._last
            return self._sign_with_lock_held()

    def _sign_with_lock_held(self) -> SignedCheckpoint:
        size = self.tree.tree.size
        root = self.tree.tree.root(size)
        now_ms = int(self._clock() * 1000)
        last = self._last
        if last is not None:
            self._check_consistent(last.checkpoint, size, root)
            # Never go back in time within one log, even if the clock does.
            now_ms = max(now_ms, last.checkpoint.timestamp_ms)
        cp = Checkpoint(origin=self.origin, size=size, root=root, timestamp_ms=now_ms)
        key = self._key() if callable(self._key) else self._key
        signed = SignedCheckpoint(cp, sign_checkpoint(cp, key, self.origin))
        self._save(signed)
        self._last = signed
        log.info("checkpoint.signed", origin=self.origin, size=size, root=base64.b64encode(root).decode())
        return signed

    def _check_consistent(self, last: Checkpoint, size: int, root: bytes) -> None:
        if size < last.size:
            raise CheckpointRefused(last_size=last.size, size=size, reason="the ledger shrank")
        if last.size == 0:
            if last.root != EMPTY_ROOT:
                raise CheckpointRefused(last_size=0, size=size, reason="last checkpoint has a bad empty root")
            return
        try:
            proof = [] if size == last.size else self.tree.tree.consistency_proof(last.size, size)
            verify_consistency(last.size, size, last.root, root, proof)
        except ProofError:
            raise CheckpointRefused(
                last_size=last.size, size=size, reason="the ledger is not consistent with the last checkpoint"
            ) from None

    def _load(self) -> SignedCheckpoint | None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            signed = read_note(doc["note"].encode("utf-8"))
        except (ValueError, KeyError, TypeError, AttributeError, CheckpointError) as exc:
            raise LedgerError(f"checkpoint state {self.state_path} is unreadable: {exc}") from None
        if signed.checkpoint.origin != self.origin:
            raise LedgerError(f"checkpoint state {self.state_path} belongs to {signed.checkpoint.origin!r}")
        return signed

    def _save(self, signed: SignedCheckpoint) -> None:
        write_atomically(
            self.state_path, json.dumps({"v": 1, "note": signed.note.decode("utf-8")}).encode(), mode=0o600
        )

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                signed = await self.checkpoint()
                if self._on_checkpoint is not None:
                    await self._on_checkpoint(signed)
            except CheckpointRefused as exc:
                log.error(
                    "checkpoint.refused",
                    origin=self.origin,
                    last_size=exc.last_size,
                    size=exc.size,
                    reason=exc.reason,
                )
            except asyncio.CancelledError:
                raise
            except LedgerError as exc:
                # E.g. the store now holds fewer entries than the tree: it was truncated or replaced.
                log.error(
                    "checkpoint.failed", origin=self.origin, error=type(exc).__name__, detail=str(exc)[:200]
                )
            except Exception as exc:
                log.warning(
                    "checkpoint.failed", origin=self.origin, error=type(exc).__name__, detail=str(exc)[:200]
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stopping.wait()
