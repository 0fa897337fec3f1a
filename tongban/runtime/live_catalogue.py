"""The live catalogue: loaded from the deployment's file, then followed through a JetStream key-value
bucket like the trust registry.

Each region's JetStream domain holds a bucket ``TB_CATALOGUE_<region>`` with one key, ``signed``: the
SignedCatalogue bytes the registry authority published (``tongban catalogue publish``). Every gateway
and connector (:class:`CatalogueWatcher`, the mechanism of :mod:`tongban.runtime.kv_watch`):

- at start, loads ``[catalogue] file`` (protobuf JSON, or ``*.signed``; empty: the catalogue shipped
  in the package), or the newer catalogue it adopted earlier and cached (``[catalogue] cache``);
- reads the bucket: adopts a newer catalogue signed by a pinned root key, refuses an older or badly
  signed one (and puts its own back, when it holds a signed one), and takes the earlier revisions
  still in the bucket's history into its held revisions;
- watches the key (re-reading it every ``[registry] recheck_s``) and adopts newer revisions in
  place, keeping ``[catalogue] keep_revisions`` of them for requests validated against an earlier one;
- on a request naming a revision it does not hold, re-reads the bucket once (:meth:`find`).

docs/catalogue.md says what a request validated against another revision meets.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import nats.js.errors
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ledger.files import write_atomically
from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_signing import (
    CatalogueCheck,
    CatalogueError,
    load_file,
    peek_revision,
    verify_catalogue,
)
from tongban.runtime import kv_watch
from tongban.runtime.config import Config
from tongban.runtime.kv_watch import DocumentWatcher, Refusal
from tongban.runtime.node import load_root_keys
from tongban.runtime.shutdown import stop_task

__all__ = [
    "CatalogueWatcher",
    "bucket_name",
    "catalogue_bucket",
    "catalogue_watcher",
    "load_catalogue",
    "publish",
    "write_cache",
]

log = structlog.get_logger("tongban.runtime.live_catalogue")

KEY = kv_watch.KEY
_DESCRIPTION = "tongban catalogue (root-signed SignedCatalogue bytes)"
REREAD_INTERVAL_S = 1.0
"""At most this often, a request naming an unknown revision makes a node re-read its bucket: a
peer cannot turn requests into a stream of bucket reads."""
REREAD_TIMEOUT_S = 2.0
"""How long a request waits for that re-read (it goes on in the background after)."""


def bucket_name(region: str) -> str:
    """The region's catalogue bucket (per region, as the registry's)."""
    return f"TB_CATALOGUE_{region}"


async def catalogue_bucket(nc: NATS, region: str, *, replicas: int = 1) -> KeyValue:
    """The region's catalogue bucket in its own JetStream domain, created if missing."""
    return await kv_watch.document_bucket(
        nc, region, bucket_name(region), description=_DESCRIPTION, replicas=replicas
    )


async def publish(nc: NATS, region: str, data: bytes, *, replicas: int = 1) -> int:
    """Put a signed catalogue into ``region``'s bucket; returns the bucket revision. Nodes decide
    whether to adopt it: an older or forged document changes nothing but the bucket."""
    kv = await catalogue_bucket(nc, region, replicas=replicas)
    return await kv.put(KEY, data)


async def held_in_bucket(nc: NATS, region: str, roots: Iterable[Ed25519PublicKey]) -> Catalogue | None:
    """The valid catalogue ``region``'s bucket holds now, if any (what its nodes run, or will)."""
    kv = await catalogue_bucket(nc, region)
    try:
        entry = await kv.get(KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    with contextlib.suppress(CatalogueError):
        return verify_catalogue(entry.value or b"", roots)
    return None


# -- a node's side -----------------------------------------------------------------------------------


def catalogue_cache(cfg: Config) -> Path | None:
    return cfg.path(cfg.catalogue.cache) if cfg.catalogue.cache else None


def load_catalogue(cfg: Config) -> Catalogue:
    """The catalogue a node starts with: ``[catalogue] file`` (or the shipped one), or the newer
    signed catalogue it adopted and cached while running (if that verifies).

    Raises:
        ConfigError: the file cannot be read, does not verify, or breaks the catalogue's rules.
    """
    keep = cfg.catalogue.keep_revisions
    roots = load_root_keys(cfg)
    if cfg.catalogue.file:
        catalogue = load_file(cfg.path(cfg.catalogue.file), roots, keep_revisions=keep)
    else:
        catalogue = Catalogue.load()
        catalogue.keep_revisions = keep
    cache = catalogue_cache(cfg)
    if cache is not None and cache.exists():
        try:
            cached = verify_catalogue(
                cache.read_bytes(), roots, min_revision=catalogue.revision + 1, keep_revisions=keep
            )
        except CatalogueError as exc:
            if exc.check != CatalogueCheck.ROLLBACK:
                log.warning("catalogue.cache_ignored", path=str(cache), reason=exc.check.value)
        else:
            cached.remember(catalogue)
            catalogue = cached
    return catalogue


def write_cache(path: Path, catalogue: Catalogue, roots: Sequence[Ed25519PublicKey]) -> None:
    """Persist a signed ``catalogue`` unless the cache already holds a newer one (gateway and
    connector of a region share the file: the check and the replace happen under a lock)."""
    if not catalogue.signed:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            with contextlib.suppress(CatalogueError):
                verify_catalogue(path.read_bytes(), roots, min_revision=catalogue.revision)
                return  # the cache holds this revision or a newer one already
        write_atomically(path, catalogue.signed)


class CatalogueWatcher(DocumentWatcher[Catalogue]):
    """Keeps the live ``catalogue`` current from the region's bucket (see the module docstring)."""

    kind = "catalogue"

    def __init__(
        self,
        catalogue: Catalogue,
        roots: Iterable[Ed25519PublicKey],
        *,
        nc: NATS,
        region: str,
        cache: Path | None = None,
        replicas: int = 1,
        recheck_s: float = 30.0,
        listeners: Sequence[Callable[[Catalogue], None]] = (),
        reread_interval_s: float = REREAD_INTERVAL_S,
    ) -> None:
        super().__init__(
            catalogue, nc=nc, region=region, replicas=replicas, recheck_s=recheck_s, listeners=listeners
        )
        self.roots = list(roots)
        self.cache = cache
        self.reread_interval_s = reread_interval_s
        self._reread: asyncio.Task[None] | None = None
        self._reread_at = -reread_interval_s

    @property
    def catalogue(self) -> Catalogue:
        """The live catalogue this watcher keeps current."""
        return self.held

    async def start(self) -> None:
        await super().start()
        await self._remember_history()

    async def stop(self, timeout: float = 2.0) -> None:
        reread, self._reread = self._reread, None
        await stop_task(reread, timeout=timeout / 2, what="catalogue re-read")
        await super().stop(timeout=timeout / 2)

    async def find(self, revision: int, *, timeout_s: float = REREAD_TIMEOUT_S) -> Catalogue | None:
        """The catalogue of ``revision``: held already, or found by re-reading the bucket (its
        value and history) once; None if neither has it (or the re-read takes over ``timeout_s``:
        it goes on, for the next request).

        Concurrent callers share one re-read, and the bucket is re-read at most every
        ``reread_interval_s`` seconds (:data:`REREAD_INTERVAL_S`).
        """
        found = self.held.at(revision)
        if found is not None:
            return found
        task = self._reread
        if task is None and time.monotonic() - self._reread_at >= self.reread_interval_s:
            task = self._reread = asyncio.create_task(self._reread_bucket(), name="catalogue-reread")
        if task is not None:
            with contextlib.suppress(Exception):  # NATS down or slow: the revision stays unknown
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(task)
        return self.held.at(revision)

    async def _reread_bucket(self) -> None:
        try:
            log.info("catalogue.reread", region=self.region, held=self.held.revision)
            await self.sync()
            await self._remember_history()
        finally:
            self._reread_at = time.monotonic()
            self._reread = None

    async def _remember_history(self) -> None:
        """Take the earlier revisions still in the bucket's history (each verified) into the held
        ones: a node that restarted can still validate a request against the revision before."""
        try:
            entries = await self.kv.history(KEY)
        except nats.js.errors.NoKeysError:
            return
        for entry in entries:
            if entry.value and entry.operation is None:
                with contextlib.suppress(CatalogueError):
                    self.held.remember(verify_catalogue(entry.value, self.roots))

    # -- DocumentWatcher ----------------------------------------------------------------------------

    def bucket(self) -> str:
        return bucket_name(self.region)

    def description(self) -> str:
        return _DESCRIPTION

    def verify(self, data: bytes, *, min_version: int) -> Catalogue:
        try:
            return verify_catalogue(
                data, self.roots, min_revision=min_version, keep_revisions=self.held.keep_revisions
            )
        except CatalogueError as exc:
            raise Refusal(exc.check.value) from exc

    def version(self, doc: Catalogue) -> int:
        return doc.revision

    def signed(self, doc: Catalogue) -> bytes:
        return doc.signed

    def same(self, a: Catalogue, b: Catalogue) -> bool:
        return (bool(a.signed) and a.signed == b.signed) or a.to_proto() == b.to_proto()

    def adopt(self, newer: Catalogue) -> None:
        self.held.adopt(newer)

    def write_cache(self, doc: Catalogue) -> None:
        if self.cache is not None:
            write_cache(self.cache, doc, self.roots)

    def peek_version(self, data: bytes) -> int | None:
        return peek_revision(data)


def catalogue_watcher(cfg: Config, catalogue: Catalogue, nc: NATS) -> CatalogueWatcher:
    """The watcher that keeps ``catalogue`` (the node's live one) current."""
    return CatalogueWatcher(
        catalogue,
        load_root_keys(cfg),
        nc=nc,
        region=cfg.region.code,
        cache=catalogue_cache(cfg),
        replicas=cfg.nats.stream_replicas,
        recheck_s=cfg.registry.recheck_s,
    )
