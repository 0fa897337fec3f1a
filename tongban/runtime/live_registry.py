"""The live trust registry: distributed through a JetStream key-value bucket, watched by every node.

Each region's JetStream domain holds a bucket ``TB_REGISTRY_<region>`` with one key, ``signed``: the
SignedRegistry bytes. Anyone who can write the bucket can only offer a document; a node adopts it
only if it is signed by a pinned root key and newer than the one it holds (versions only go up), so
the bucket needs no more trust than the file it replaces. A node:

- at start, loads the newest of its registry file and its cache (``[registry] cache``);
- seeds the bucket with its registry if the bucket is empty or holds an older version (so a
  rollback written to the bucket is refused and then repaired);
- watches the key, and re-reads it every ``recheck_s`` in case a watch silently died;
- on a newer document: adopts it in place (:meth:`Registry.adopt`, so every holder sees it at once),
  writes the cache, and calls its listeners (the region's keys re-select their signing key).

The registry authority edits documents with :func:`edit_signed` (:func:`add_key`,
:func:`revoke_key`) and hands them to each region's bucket with :func:`publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from ledger.files import write_atomically
from tongban.core.errors import Reason, RegistryError
from tongban.core.keys import SEALING_ALGORITHM, SIGNING_ALGORITHM, key_id
from tongban.core.messages import timestamp
from tongban.core.registry import Registry, sign_registry
from tongban.runtime.shutdown import stop_task
from tongban.runtime.streams import jetstream
from tongban.v1 import registry_pb2

log = structlog.get_logger("tongban.runtime.live_registry")

KEY = "signed"
"""The one key of a registry bucket."""


def bucket_name(region: str) -> str:
    """The region's registry bucket (named per region: buckets of one name in several leaf domains
    would capture each other's writes through the hub)."""
    return f"TB_REGISTRY_{region}"


async def registry_bucket(nc: NATS, region: str, *, replicas: int = 1) -> KeyValue:
    """The region's registry bucket in its own JetStream domain, created if missing."""
    js = jetstream(nc, region)
    try:
        return await js.key_value(bucket_name(region))
    except nats.js.errors.BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket_name(region),
        description="tongban trust registry (root-signed SignedRegistry bytes)",
        history=16,
        storage=StorageType.FILE,
        replicas=replicas,
    )
    return await js.create_key_value(config)


async def publish(nc: NATS, region: str, data: bytes, *, replicas: int = 1) -> int:
    """Put a signed registry into ``region``'s bucket; returns the bucket revision.

    Nodes decide whether to adopt it; publishing an older or forged document changes nothing but the
    bucket (and the nodes repair that).
    """
    kv = await registry_bucket(nc, region, replicas=replicas)
    return await kv.put(KEY, data)


# -- the registry authority's edits ----------------------------------------------------------------


def read_signed(data: bytes) -> registry_pb2.TrustRegistry:
    """The TrustRegistry inside SignedRegistry bytes (not verified: for the authority's own file)."""
    return registry_pb2.TrustRegistry.FromString(registry_pb2.SignedRegistry.FromString(data).document)


def edit_signed(
    data: bytes, root: Ed25519PrivateKey, edit: Callable[[registry_pb2.TrustRegistry], None]
) -> bytes:
    """Verify ``data`` with ``root``, apply ``edit``, raise the version by one and re-sign."""
    current = Registry.from_signed(data, [root.public_key()])
    doc = registry_pb2.TrustRegistry()
    doc.CopyFrom(current.document)
    edit(doc)
    doc.version = current.version + 1
    doc.issued_at.CopyFrom(timestamp(time.time()))
    return sign_registry(doc, root)


def _region(doc: registry_pb2.TrustRegistry, code: str) -> registry_pb2.Region:
    for region in doc.regions:
        if region.code == code:
            return region
    raise RegistryError(f"region {code} is not in the trust registry", reason=Reason.REGION_UNKNOWN)


def add_key(
    doc: registry_pb2.TrustRegistry,
    region: str,
    use: int,
    public_raw: bytes,
    *,
    overlap_s: float,
    at_s: float | None = None,
) -> str:
    """Add a new key of ``use`` to ``region``, valid from now; the region's other keys of that use
    stay valid for ``overlap_s`` more (the rotation overlap), then expire. Returns the key id."""
    now = time.time() if at_s is None else at_s
    r = _region(doc, region)
    label, algorithm = (
        ("sig", SIGNING_ALGORITHM) if use == registry_pb2.KEY_USE_SIGNING else ("kem", SEALING_ALGORITHM)
    )
    kid = key_id(region, label, public_raw)
    if any(k.key_id == kid for k in r.keys):
        raise RegistryError(f"key {kid} is already in the registry", reason=Reason.KEY_EXISTS)
    end = now + overlap_s
    for k in r.keys:
        old_end = k.not_after.seconds + k.not_after.nanos / 1e9
        if k.use == use and not k.revoked and (old_end == 0 or old_end > end):
            k.not_after.CopyFrom(timestamp(end))
    r.keys.append(
        registry_pb2.RegionKey(
            key_id=kid,
            use=registry_pb2.KeyUse.ValueType(use),
            algorithm=algorithm,
            public_key=public_raw,
            not_before=timestamp(now),
        )
    )
    return kid


def revoke_key(doc: registry_pb2.TrustRegistry, kid: str) -> None:
    for region in doc.regions:
        for k in region.keys:
            if k.key_id == kid:
                k.revoked = True
                return
    raise RegistryError(f"key {kid} is not in the trust registry", reason=Reason.UNKNOWN_KEY)


# -- a node's side -----------------------------------------------------------------------------------


def load_newest(file: Path, cache: Path | None, roots: Sequence[Ed25519PublicKey]) -> Registry:
    """The registry file, or the cache of a newer one a node adopted earlier (if it verifies)."""
    registry = Registry.load(file, roots)
    if cache is not None and cache.exists():
        try:
            cached = Registry.from_signed(cache.read_bytes(), roots, min_version=registry.version + 1)
        except RegistryError as exc:
            if exc.reason != "REGISTRY_ROLLBACK":
                log.warning("registry.cache_ignored", path=str(cache), reason=exc.reason)
        else:
            registry = cached
    return registry


def write_cache(path: Path, registry: Registry, roots: Sequence[Ed25519PublicKey]) -> None:
    """Persist ``registry`` unless the cache already holds a newer one (gateway and connector of a
    region share the file: the check and the replace happen under a lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            with contextlib.suppress(RegistryError):
                Registry.from_signed(path.read_bytes(), roots, min_version=registry.version)
                return  # the cache holds this version or a newer one already
        write_atomically(path, registry.signed)


@dataclass(frozen=True)
class Applied:
    version: int
    at_monotonic: float
    source: str


class RegistryWatcher:
    """Keeps ``registry`` current from the region's bucket (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        roots: Iterable[Ed25519PublicKey],
        *,
        nc: NATS,
        region: str,
        cache: Path | None = None,
        replicas: int = 1,
        recheck_s: float = 30.0,
        listeners: Sequence[Callable[[Registry], None]] = (),
    ) -> None:
        self.registry = registry
        self.roots = list(roots)
        self.nc = nc
        self.region = region
        self.cache = cache
        self.replicas = replicas
        self.recheck_s = recheck_s
        self.listeners = list(listeners)
        self.applied: list[Applied] = []
        self.refused: list[str] = []
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._kv = await registry_bucket(self.nc, self.region, replicas=self.replicas)
        await self._sync()
        self._notify()  # listeners follow this registry from the start (e.g. the keys re-select)
        self._task = asyncio.create_task(self._run(), name=f"registry-watch-{self.region}")

    async def stop(self, timeout: float = 2.0) -> None:
        """End the watch (its stop flag set, then cancelled) within ``timeout`` seconds; idempotent."""
        self._stopping.set()
        task, self._task = self._task, None
        await stop_task(task, timeout=timeout, what="registry watch")

    def offer(self, data: bytes, *, source: str) -> bool:
        """Adopt ``data`` if it is a valid registry newer than ours; True if adopted."""
        current = self.registry
        try:
            newer = Registry.from_signed(data, self.roots, min_version=current.version)
        except RegistryError as exc:
            self._refuse(exc.reason, source, offered=_peek_version(data))
            return False
        if newer.version == current.version:
            if newer.document != current.document:
                self._refuse("REGISTRY_EQUIVOCATION", source, offered=newer.version)
            return False
        was = current.version
        current.adopt(newer)
        self.applied.append(Applied(newer.version, time.monotonic(), source))
        if self.cache is not None:
            # Off the event loop (a file lock and an fsync); the next start reads the newest anyway.
            task = asyncio.get_running_loop().run_in_executor(
                None, write_cache, self.cache, newer, self.roots
            )
            task.add_done_callback(self._cache_written)
        self._notify()
        log.info("registry.updated", region=self.region, version=newer.version, was=was, source=source)
        return True

    def _cache_written(self, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.error("registry.cache_write_failed", path=str(self.cache), error=type(exc).__name__)

    def _notify(self) -> None:
        for listener in self.listeners:
            try:
                listener(self.registry)
            except Exception as exc:  # one failing listener must not stop the others
                log.error("registry.listener_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def _refuse(self, reason: str, source: str, *, offered: int | None) -> None:
        self.refused.append(reason)
        log.warning(
            "registry.refused",
            region=self.region,
            reason=reason,
            offered_version=offered,
            held_version=self.registry.version,
            source=source,
        )

    async def _sync(self) -> None:
        """Read the bucket once: adopt what is newer; put ours back if it holds something older."""
        assert self._kv is not None
        try:
            entry = await self._kv.get(KEY)
        except nats.js.errors.KeyNotFoundError:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
                await self._kv.create(KEY, self.registry.signed)
            return
        if entry.value:
            self.offer(entry.value, source="bucket")
        await self._repair(entry.value or b"", entry.revision or 0)

    async def _repair(self, held: bytes, revision: int) -> None:
        """Replace what the bucket holds by ours unless it is a valid registry at least as new:
        an older, forged, equivocating or deleted document is overwritten."""
        assert self._kv is not None
        version: int | None = None
        with contextlib.suppress(RegistryError):
            valid = Registry.from_signed(held, self.roots, min_version=self.registry.version)
            if valid.document == self.registry.document or valid.version > self.registry.version:
                return
            version = valid.version
        with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.APIError):
            await self._kv.update(KEY, self.registry.signed, last=revision)
            log.info(
                "registry.bucket_repaired", region=self.region, version=self.registry.version, was=version
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
                log.warning("registry.watch_failed", region=self.region, error=type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(backoff):  # retry back-off
                        await self._stopping.wait()
                backoff = min(backoff * 2, self.recheck_s)

    async def _watch(self) -> None:
        assert self._kv is not None
        watcher = await self._kv.watch(KEY)
        try:
            while not self._stopping.is_set():
                try:
                    entry = await watcher.updates(timeout=self.recheck_s)
                except nats.errors.TimeoutError:
                    await self._sync()  # belt and braces: a watch can die silently
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


def _peek_version(data: bytes) -> int | None:
    try:
        return int(read_signed(data).version)
    except Exception:
        return None
