"""A signed document followed live through one key of a region's JetStream key-value bucket: the
mechanism the trust registry (:mod:`tongban.runtime.live_registry`) and the catalogue
(:mod:`tongban.runtime.live_catalogue`) share.

Anyone who can write the bucket can only *offer* a document: a node adopts it only if it verifies
(signed by a pinned root key) and is newer than the one it holds, so the bucket needs no more trust
than the file it replaces. The watcher:

- at start, reads the bucket once: adopts what is newer, and seeds the bucket with its own document
  if the bucket is empty or holds something older, forged or deleted (a rollback written to the
  bucket is refused and then repaired);
- watches the key, and re-reads it every ``recheck_s`` in case a watch silently died;
- on a newer document: adopts it in place (every holder of the live object sees it at once), writes
  the cache off the event loop, and calls its listeners.

Subclasses say what the document is: how to verify one, its version, how to adopt it and cache it.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from tongban.runtime.shutdown import stop_task
from tongban.runtime.streams import jetstream

log = structlog.get_logger("tongban.runtime.kv_watch")

KEY = "signed"
"""The one key of a document bucket."""

T = TypeVar("T")


async def document_bucket(
    nc: NATS, region: str, bucket: str, *, description: str, replicas: int = 1
) -> KeyValue:
    """``bucket`` in ``region``'s own JetStream domain, created if missing (with a history of 16
    values: a node that restarts finds the revisions it may still be asked about)."""
    js = jetstream(nc, region)
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket, description=description, history=16, storage=StorageType.FILE, replicas=replicas
    )
    return await js.create_key_value(config)


class Refusal(Exception):
    """An offered document a node does not adopt; ``code`` names the failed check (UPPER_SNAKE)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class Applied:
    """One document a watcher adopted."""

    version: int
    at_monotonic: float
    source: str


class DocumentWatcher(abc.ABC, Generic[T]):
    """Keeps the live document ``held`` current from ``region``'s bucket (see the module docstring).

    Args:
        held: the live document (changed in place by :meth:`adopt`).
        nc: the node's NATS connection.
        region: the node's region (the bucket is in its JetStream domain).
        replicas: the bucket's replicas when it has to be created.
        recheck_s: re-read the bucket this often.
        listeners: called with ``held`` at start and after every adoption.
    """

    kind: ClassVar[str]
    """The document's name in log events (``<kind>.updated``, ``<kind>.refused``, ...)."""

    def __init__(
        self,
        held: T,
        *,
        nc: NATS,
        region: str,
        replicas: int = 1,
        recheck_s: float = 30.0,
        listeners: Sequence[Callable[[T], None]] = (),
    ) -> None:
        self.held = held
        self.nc = nc
        self.region = region
        self.replicas = replicas
        self.recheck_s = recheck_s
        self.listeners = list(listeners)
        self.applied: list[Applied] = []
        self.refused: list[str] = []
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    # -- what a document is ------------------------------------------------------------------------

    @abc.abstractmethod
    def bucket(self) -> str:
        """The bucket's name (one per region: buckets of one name in several leaf domains would
        capture each other's writes through the hub)."""

    @abc.abstractmethod
    def description(self) -> str: ...

    @abc.abstractmethod
    def verify(self, data: bytes, *, min_version: int) -> T:
        """The document in ``data`` if it verifies and is at least ``min_version``.

        Raises:
            Refusal: it does not.
        """

    @abc.abstractmethod
    def version(self, doc: T) -> int: ...

    @abc.abstractmethod
    def signed(self, doc: T) -> bytes:
        """The signed bytes of ``doc`` (empty: not signed, e.g. a catalogue from a JSON file)."""

    @abc.abstractmethod
    def same(self, a: T, b: T) -> bool:
        """Whether two documents of one version say the same (else one of them equivocates)."""

    @abc.abstractmethod
    def adopt(self, newer: T) -> None:
        """Make ``held`` take over ``newer`` in place, in one synchronous step."""

    @abc.abstractmethod
    def write_cache(self, doc: T) -> None:
        """Persist ``doc`` for the next start (runs in a worker thread; no cache: do nothing)."""

    @abc.abstractmethod
    def peek_version(self, data: bytes) -> int | None:
        """The version ``data`` claims, unverified (for the log of a refusal)."""

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        self._kv = await document_bucket(
            self.nc, self.region, self.bucket(), description=self.description(), replicas=self.replicas
        )
        await self.sync()
        self._notify()  # listeners follow the document from the start
        self._task = asyncio.create_task(self._run(), name=f"{self.kind}-watch-{self.region}")

    async def stop(self, timeout: float = 2.0) -> None:
        """End the watch (its stop flag set, then cancelled) within ``timeout`` seconds; idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        await stop_task(task, timeout=timeout, what=f"{self.kind} watch")

    @property
    def kv(self) -> KeyValue:
        """The bucket (once started)."""
        assert self._kv is not None, "the watcher is not started"
        return self._kv

    # -- offers --------------------------------------------------------------------------------------

    def offer(self, data: bytes, *, source: str) -> bool:
        """Adopt ``data`` if it is a valid document newer than ours; True if adopted."""
        current = self.held
        held_version = self.version(current)
        try:
            newer = self.verify(data, min_version=held_version)
        except Refusal as exc:
            self._refuse(exc.code, source, offered=self.peek_version(data))
            return False
        if self.version(newer) == held_version:
            if not self.same(newer, current):
                self._refuse(f"{self.kind.upper()}_EQUIVOCATION", source, offered=held_version)
            return False
        self.adopt(newer)
        self.applied.append(Applied(self.version(newer), time.monotonic(), source))
        # Off the event loop (a file lock and an fsync); the next start reads the newest anyway.
        task = asyncio.get_running_loop().run_in_executor(None, self.write_cache, newer)
        task.add_done_callback(self._cache_written)
        self._notify()
        log.info(
            f"{self.kind}.updated",
            region=self.region,
            version=self.version(newer),
            was=held_version,
            source=source,
        )
        return True

    def _cache_written(self, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error(f"{self.kind}.cache_write_failed", error=type(exc).__name__)

    def _notify(self) -> None:
        for listener in self.listeners:
            try:
                listener(self.held)
            except Exception as exc:  # one failing listener must not stop the others
                log.error(f"{self.kind}.listener_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def _refuse(self, code: str, source: str, *, offered: int | None) -> None:
        self.refused.append(code)
        log.warning(
            f"{self.kind}.refused",
            region=self.region,
            reason=code,
            offered_version=offered,
            held_version=self.version(self.held),
            source=source,
        )

    # -- the bucket ----------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Read the bucket once: adopt what is newer; put ours back if it holds something older."""
        kv = self.kv
        ours = self.signed(self.held)
        try:
            entry = await kv.get(KEY)
        except nats.js.errors.KeyNotFoundError:
            if ours:
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                    await kv.create(KEY, ours)
            return
        if entry.value:
            self.offer(entry.value, source="bucket")
        await self._repair(entry.value or b"", entry.revision or 0)

    async def _repair(self, held: bytes, revision: int) -> None:
        """Replace what the bucket holds by ours unless it is a valid document at least as new: an
        older, forged, equivocating or deleted document is overwritten (an unsigned document of
        ours, e.g. a catalogue from a JSON file, is never written)."""
        ours = self.signed(self.held)
        if not ours:
            return
        version: int | None = None
        with contextlib.suppress(Refusal):
            valid = self.verify(held, min_version=self.version(self.held))
            if self.same(valid, self.held) or self.version(valid) > self.version(self.held):
                return
            version = self.version(valid)
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            await self.kv.update(KEY, ours, last=revision)
            log.info(
                f"{self.kind}.bucket_repaired",
                region=self.region,
                version=self.version(self.held),
                was=version,
            )

    async def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                await self._watch()
                backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS down, bucket gone: retry, never crash the node
                log.warning(f"{self.kind}.watch_failed", region=self.region, error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):  # retry back-off
                        await self._stopping.wait()
                backoff = min(backoff * 2, self.recheck_s)

    async def _watch(self) -> None:
        watcher = await self.kv.watch(KEY)
        try:
            while not self._stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=self.recheck_s)
                except nats.errors.TimeoutError:
                    await self.sync()  # belt and braces: a watch can die silently
                    continue
                if isinstance(entry, KeyValue.Entry):
                    value = entry.value if entry.operation is None else b""  # a delete or purge
                    if not (value and self.offer(value, source="watch")):
                        await self._repair(value or b"", entry.revision or 0)
                elif entry is not None:  # the watcher was stopped under us
                    return
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
