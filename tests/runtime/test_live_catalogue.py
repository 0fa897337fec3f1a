"""The live catalogue on a real nats-server: adopted when newer and signed by the root, refused when
older or badly signed (and the bucket repaired), cached across restarts, earlier revisions recovered
from the bucket's history, and the bucket re-read when a request names an unknown revision."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from tests.conftest import SZ
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_signing import read_unverified, sign_catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime import live_catalogue
from tongban.runtime.config import Config
from tongban.runtime.live_catalogue import CatalogueWatcher, catalogue_watcher, load_catalogue
from tongban.runtime.natsroles import NatsRole


def root_of(state: DevState) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((state.root / "root.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def signed(root: Ed25519PrivateKey, revision: int, *, drop: str = "") -> bytes:
    msg = Catalogue.load().to_proto()
    msg.revision, msg.version = revision, f"test.{revision}"
    if drop:
        kept = [i for i in msg.items if i.code != drop]
        del msg.items[:]
        msg.items.extend(kept)
    return sign_catalogue(msg, root)


@pytest.fixture
def cfg(state: DevState) -> Config:
    return Config.load(state.config_path(SZ))


@pytest.fixture
async def admin(topology: Topology) -> AsyncIterator[NATS]:
    nc = await topology.connect(SZ, NatsRole.ADMIN)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def node_nc(topology: Topology) -> AsyncIterator[NATS]:
    """A gateway's connection: the role's permissions on the region's server apply."""
    nc = await topology.connect(SZ, NatsRole.GATEWAY)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def watcher(cfg: Config, node_nc: NATS) -> AsyncIterator[CatalogueWatcher]:
    w = catalogue_watcher(cfg, load_catalogue(cfg), node_nc)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def bucket_value(nc: NATS) -> bytes:
    kv = await live_catalogue.catalogue_bucket(nc, SZ)
    return (await kv.get(live_catalogue.KEY)).value or b""


async def test_a_newer_signed_catalogue_is_adopted_in_place_and_cached(
    watcher: CatalogueWatcher, admin: NATS, state: DevState, cfg: Config
) -> None:
    live = watcher.catalogue
    started = live.revision
    data = signed(root_of(state), started + 5, drop="WFZJLZM00001")
    await live_catalogue.publish(admin, SZ, data)
    await eventually(lambda: live.revision == started + 5, what="newer catalogue adopted")
    assert "WFZJLZM00001" not in live and live.signed == data
    assert live.at(started) is not None  # what it held before, kept
    cache = cfg.path(cfg.catalogue.cache)
    await eventually(lambda: cache.exists() and cache.read_bytes() == data, what="cache written")
    # A restart starts from the cache, not the shipped catalogue.
    assert load_catalogue(cfg).revision == started + 5


async def test_older_forged_and_equivocating_catalogues_are_refused_and_repaired(
    watcher: CatalogueWatcher, admin: NATS, state: DevState
) -> None:
    root = root_of(state)
    live = watcher.catalogue
    newer = signed(root, 10)
    await live_catalogue.publish(admin, SZ, newer)
    await eventually(lambda: live.revision == 10, what="revision 10 adopted")

    await live_catalogue.publish(admin, SZ, signed(root, 9))  # a rollback attempt
    await eventually(lambda: "CATALOGUE_ROLLBACK" in watcher.refused, what="rollback refused")
    await eventually(lambda: bucket_value(admin), what="bucket written")
    await eventually(lambda: _same(admin, newer), what="bucket repaired after the rollback")

    forged = signed(Ed25519PrivateKey.generate(), 50)
    await live_catalogue.publish(admin, SZ, forged)
    await eventually(lambda: "CATALOGUE_SIGNATURE" in watcher.refused, what="forgery refused")
    await eventually(lambda: _same(admin, newer), what="bucket repaired after the forgery")

    other = signed(root, 10, drop="GJJDWKH00001")  # revision 10 again, but another document
    await live_catalogue.publish(admin, SZ, other)
    await eventually(lambda: "CATALOGUE_EQUIVOCATION" in watcher.refused, what="equivocation refused")
    await live_catalogue.publish(admin, SZ, b"\x0a\x03abc")
    await eventually(lambda: "CATALOGUE_UNDECODABLE" in watcher.refused, what="garbage refused")
    assert live.revision == 10 and live.signed == newer and "GJJDWKH00001" in live


async def _same(nc: NATS, data: bytes) -> bool:
    return await bucket_value(nc) == data


async def test_a_restarted_node_recovers_earlier_revisions_from_the_bucket_history(
    cfg: Config, admin: NATS, node_nc: NATS, state: DevState
) -> None:
    root = root_of(state)
    for revision in (2, 3, 4):
        await live_catalogue.publish(admin, SZ, signed(root, revision))
    fresh = Catalogue.load()  # a node that never saw them (no cache)
    w = catalogue_watcher(cfg, fresh, node_nc)
    await w.start()
    try:
        assert fresh.revision == 4
        assert {2, 3} <= set(fresh.revisions())
        earlier = fresh.at(3)
        assert earlier is not None and earlier.revision == 3
    finally:
        await w.stop()


async def test_an_unknown_revision_makes_the_node_reread_its_bucket_once(
    cfg: Config, admin: NATS, node_nc: NATS, state: DevState
) -> None:
    root = root_of(state)
    live = Catalogue.load()
    w = catalogue_watcher(cfg, live, node_nc)
    await w.start()
    await w.stop()  # the watch is gone (as a silently dead one would be): only a re-read can help
    try:
        await live_catalogue.publish(admin, SZ, signed(root, 6))
        w.reread_interval_s = 0.0
        found = await w.find(6)
        assert found is live and live.revision == 6
        with capture_logs() as logs:
            missing = await asyncio.gather(w.find(99), w.find(99), w.find(99))
        assert missing == [None, None, None]
        assert [e["event"] for e in logs].count("catalogue.reread") == 1  # shared by the three
        # Within the interval, a request naming an unknown revision does not touch the bucket.
        w.reread_interval_s = 3600.0
        await live_catalogue.publish(admin, SZ, signed(root, 7))
        assert await w.find(7) is None
        assert live.revision == 6
    finally:
        await w.stop()


async def test_a_signed_catalogue_file_seeds_an_empty_bucket(
    tmp_path: Path, cfg: Config, admin: NATS, node_nc: NATS, state: DevState
) -> None:
    data = signed(root_of(state), 12)
    path = tmp_path / "catalogue.signed"
    path.write_bytes(data)
    cfg.catalogue.file = str(path)
    cfg.catalogue.cache = ""
    live = load_catalogue(cfg)
    assert live.revision == 12 and live.signed == data
    w = catalogue_watcher(cfg, live, node_nc)
    await w.start()
    try:
        assert read_unverified(await bucket_value(admin)).revision == 12
    finally:
        await w.stop()
