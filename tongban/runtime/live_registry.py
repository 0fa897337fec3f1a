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
:func:`revoke_key`) and hands them to each region's bucket with :func:`publish`. The watch itself is
the mechanism the catalogue shares (:mod:`tongban.runtime.kv_watch`).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ledger.files import write_atomically
from tongban.core.errors import Reason, RegistryError
from tongban.core.keys import SEALING_ALGORITHM, SIGNING_ALGORITHM, key_id
from tongban.core.messages import timestamp
from tongban.core.registry import Registry, sign_registry
from tongban.runtime import kv_watch
from tongban.runtime.kv_watch import Applied, DocumentWatcher, Refusal
from tongban.v1 import registry_pb2

__all__ = [
    "KEY",
    "Applied",
    "RegistryWatcher",
    "add_key",
    "bucket_name",
    "edit_signed",
    "load_newest",
    "publish",
    "read_signed",
    "registry_bucket",
    "revoke_key",
    "write_cache",
]

log = structlog.get_logger("tongban.runtime.live_registry")

KEY = kv_watch.KEY
"""The one key of a registry bucket."""


def bucket_name(region: str) -> str:
    """The region's registry bucket (named per region: buckets of one name in several leaf domains
    would capture each other's writes through the hub)."""
    return f"TB_REGISTRY_{region}"


async def registry_bucket(nc: NATS, region: str, *, replicas: int = 1) -> KeyValue:
    """The region's registry bucket in its own JetStream domain, created if missing."""
    return await kv_watch.document_bucket(
        nc, region, bucket_name(region), description=_DESCRIPTION, replicas=replicas
    )


_DESCRIPTION = "tongban trust registry (root-signed SignedRegistry bytes)"


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


class RegistryWatcher(DocumentWatcher[Registry]):
    """Keeps ``registry`` current from the region's bucket (see the module docstring)."""

    kind = "registry"

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
        super().__init__(
            registry, nc=nc, region=region, replicas=replicas, recheck_s=recheck_s, listeners=listeners
        )
        self.roots = list(roots)
        self.cache = cache

    @property
    def registry(self) -> Registry:
        """The live registry this watcher keeps current."""
        return self.held

    def bucket(self) -> str:
        return bucket_name(self.region)

    def description(self) -> str:
        return _DESCRIPTION

    def verify(self, data: bytes, *, min_version: int) -> Registry:
        try:
            return Registry.from_signed(data, self.roots, min_version=min_version)
        except RegistryError as exc:
            raise Refusal(exc.reason) from exc

    def version(self, doc: Registry) -> int:
        return doc.version

    def signed(self, doc: Registry) -> bytes:
        return doc.signed

    def same(self, a: Registry, b: Registry) -> bool:
        return a.document == b.document

    def adopt(self, newer: Registry) -> None:
        self.held.adopt(newer)

    def write_cache(self, doc: Registry) -> None:
        if self.cache is not None:
            write_cache(self.cache, doc, self.roots)

    def peek_version(self, data: bytes) -> int | None:
        return _peek_version(data)


def _peek_version(data: bytes) -> int | None:
    try:
        return int(read_signed(data).version)
    except Exception:
        return None
