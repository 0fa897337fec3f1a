"""The trust registry changes under running gateways and connectors (JetStream KV, no restart).

- a rollback or a forged document put in a region's bucket is refused, and the bucket repaired;
- a key revoked while running stops verifying within the watch latency;
- a signing key rotates with an overlap while traffic flows without a single error.

The latencies measured here (publish → adopted by the node, publish → first refusal) are printed:
run ``pytest -s tests/security/test_registry_live.py`` to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import Event
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import ask_wuxi, craft, send, send_ok
from tests.helpers import eventually, note, signing_key_of
from tongban.core import envelope
from tongban.core.keys import SealingKey, SigningKey
from tongban.core.registry import Registry, sign_registry
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime import live_registry
from tongban.runtime.config import Config
from tongban.runtime.keyfiles import save_sealing_key, save_signing_key
from tongban.runtime.live_registry import RegistryWatcher
from tongban.v1 import envelope_pb2, registry_pb2


def root_key(stack: Stack) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key((stack.state.root / "root.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def watchers(stack: Stack) -> list[RegistryWatcher]:
    out = []
    for node in stack.nodes.values():
        for part in (node.gateway, node.connector):
            assert part is not None and part.trust is not None
            out.append(part.trust)
    return out


def connector_registry(stack: Stack, region: str) -> Registry:
    connector = stack.nodes[region].connector
    assert connector is not None
    return connector.registry


async def publish_everywhere(stack: Stack, data: bytes) -> float:
    """Put ``data`` in every serving region's bucket; returns the monotonic time of the first put."""
    started = time.monotonic()
    for region in stack.nodes:
        nc = await stack.nats(region)
        try:
            await live_registry.publish(nc, region, data)
        finally:
            await nc.close()
    return started


async def adopted_everywhere(stack: Stack, version: int) -> float:
    """Wait until every node runs ``version``; the monotonic time the last one adopted it."""
    ws = watchers(stack)
    await eventually(
        lambda: all(w.registry.version >= version for w in ws), what=f"registry v{version} adopted"
    )
    return max(a.at_monotonic for w in ws for a in w.applied if a.version == version)


async def bucket_holds(stack: Stack, region: str, version: int) -> None:
    """Wait until ``region``'s bucket holds the registry of ``version`` again (repaired)."""
    nc = await stack.nats(region)
    try:
        kv = await live_registry.registry_bucket(nc, region)

        async def repaired() -> bool:
            held = (await kv.get(live_registry.KEY)).value or b""
            return (
                connector_registry(stack, region).signed == held
                and live_registry.read_signed(held).version == version
            )

        await eventually(repaired, what=f"{region}'s bucket repaired")
    finally:
        await nc.close()


async def test_registry_rollback_attempt_is_refused(stack: Stack) -> None:
    """An older, genuinely signed registry put in the bucket is refused by every node, and the
    bucket is put back to the newest version."""
    root = root_key(stack)
    old = connector_registry(stack, WX).signed
    newer = live_registry.edit_signed(old, root, lambda doc: None)
    await publish_everywhere(stack, newer)
    await adopted_everywhere(stack, live_registry.read_signed(newer).version)
    wx = [w for w in watchers(stack) if w.region == WX]

    await publish_everywhere(stack, old)  # the rollback attempt
    await eventually(lambda: all("REGISTRY_ROLLBACK" in w.refused for w in wx), what="rollback refused")
    assert connector_registry(stack, WX).version == live_registry.read_signed(newer).version
    await bucket_holds(stack, WX, connector_registry(stack, WX).version)
    # Traffic is unaffected.
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX


async def test_registry_signed_by_another_root_is_refused(stack: Stack) -> None:
    forged_doc = registry_pb2.TrustRegistry()
    forged_doc.CopyFrom(connector_registry(stack, WX).document)
    forged_doc.version += 10
    del forged_doc.access_rules[:]  # what a forger would want: everyone cut off
    forged = sign_registry(forged_doc, Ed25519PrivateKey.generate())
    before = connector_registry(stack, WX).version
    await publish_everywhere(stack, forged)
    wx = [w for w in watchers(stack) if w.region == WX]
    await eventually(lambda: all("REGISTRY_SIGNATURE" in w.refused for w in wx), what="forgery refused")
    assert connector_registry(stack, WX).version == before
    # The forgery claims a higher version, but it does not verify: the nodes put theirs back.
    await bucket_holds(stack, WX, before)
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX


async def test_revoked_key_while_running_is_refused(stack: Stack) -> None:
    """Shenzhen's signing key is revoked in a registry published while everything runs: Wuxi's
    connector refuses Shenzhen's next request, with nothing delivered."""
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX
    wx = stack.nodes[WX]
    before = await wx.ledger.size()
    root = root_key(stack)
    revoked = live_registry.edit_signed(
        connector_registry(stack, WX).signed,
        root,
        lambda doc: setattr(signing_key_of(doc, SZ), "revoked", True),
    )
    nc = await stack.nats(WX)
    try:
        await live_registry.publish(
            nc, WX, revoked
        )  # Wuxi only: Shenzhen's gateway still believes its key is good
    finally:
        await nc.close()
    assert wx.connector is not None and wx.connector.trust is not None
    w = wx.connector.trust
    await eventually(
        lambda: w.registry.version == live_registry.read_signed(revoked).version, what="Wuxi adopts"
    )
    calls = wx.backend_calls()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub(SZ).Query(pension(), timeout=10)
    d = details_of(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    entries = (await wx.ledger.entries())[before:]
    assert [(e.event, note(e)) for e in entries] == [(Event.REJECTED, "KEY_REVOKED")]
    assert wx.backend_calls() == calls


@dataclass
class Traffic:
    """Queries from Shenzhen to Wuxi, one after another, until stopped; every outcome counted."""

    stack: Stack
    ok: int = 0
    errors: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        stub = self.stack.stub(SZ)
        while not stop.is_set():
            try:
                await stub.Query(pension(), timeout=10)
                self.ok += 1
            except grpc.aio.AioRpcError as exc:
                self.errors.append(f"{exc.code().name}: {details_of(exc).reason}")

    async def at_least(self, more: int) -> None:
        target = self.ok + more
        await eventually(lambda: self.ok >= target or bool(self.errors), what=f"{more} more queries")
        assert not self.errors, self.errors


@contextlib.asynccontextmanager
async def traffic(stack: Stack) -> AsyncIterator[Traffic]:
    t, stop = Traffic(stack), asyncio.Event()
    task = asyncio.create_task(t.run(stop))
    try:
        await t.at_least(5)
        yield t
    finally:
        stop.set()
        await task


async def test_key_rotation_on_a_running_stack(stack: Stack) -> None:
    """Rotate Shenzhen's signing key with an overlap: traffic never fails, Shenzhen switches to the
    new key, the old one keeps verifying until revoked, and is refused once revoked."""
    sz_cfg = Config.load(stack.state.config_path(SZ))
    assert stack.nodes[SZ].gateway is not None
    sz_secrets = stack.nodes[SZ].gateway.secrets
    old_kid = sz_secrets.signing.key_id
    old_key = sz_secrets.signing
    new_key = SigningKey.generate(SZ)
    save_signing_key(sz_cfg.path(sz_cfg.keys.signing_key).with_name("signing-next.pem"), new_key)
    root = root_key(stack)

    async with traffic(stack) as t:
        # 1. The new key joins the registry; the old one stays valid for an overlap of 10 minutes.
        rotated = live_registry.edit_signed(
            connector_registry(stack, WX).signed,
            root,
            lambda doc: live_registry.add_key(
                doc, SZ, registry_pb2.KEY_USE_SIGNING, new_key.public_raw, overlap_s=600
            ),
        )
        put = await publish_everywhere(stack, rotated)
        adopted = await adopted_everywhere(stack, live_registry.read_signed(rotated).version)
        # Shenzhen signs with the new key once the registry has listed it for the activation delay.
        await eventually(lambda: sz_secrets.signing.key_id == new_key.key_id, what="Shenzhen switches")
        assert new_key.key_id != old_kid
        await t.at_least(20)  # signed with the new key now
        # During the overlap the old key still verifies (a message signed just before the switch).
        await send_ok(stack, craft(stack, signer=old_key).data)

        # 2. The old key is revoked.
        revoked = live_registry.edit_signed(rotated, root, lambda doc: live_registry.revoke_key(doc, old_kid))
        revoked_at = await publish_everywhere(stack, revoked)

        async def old_key_refused() -> bool:
            _, header = envelope.parse(await ask_wuxi(stack, craft(stack, signer=old_key).data))
            return header.kind == envelope_pb2.MESSAGE_KIND_REJECTION

        await eventually(old_key_refused, what="old key refused")
        refused_after = time.monotonic() - revoked_at
        problem = await send(stack, craft(stack, signer=old_key).data)
        assert problem.reason == "KEY_REVOKED"
        revoke_adopted = await adopted_everywhere(stack, live_registry.read_signed(revoked).version)
        await t.at_least(20)
    assert not t.errors
    print(
        f"\nregistry watch latency: rotation adopted by all 4 nodes {1000 * (adopted - put):.1f} ms after "
        f"the first put; revocation adopted {1000 * (revoke_adopted - revoked_at):.1f} ms, old key refused "
        f"within {1000 * refused_after:.1f} ms; {t.ok} queries, 0 errors"
    )


async def test_sealing_key_rotation_on_a_running_stack(stack: Stack) -> None:
    """Wuxi rotates its sealing key: Shenzhen seals to the new one as soon as the registry says so,
    Wuxi opens both during the overlap, and traffic never fails; revoking the old key changes nothing
    for traffic sealed to the new one."""
    wx_cfg = Config.load(stack.state.config_path(WX))
    new_key = SealingKey.generate(WX)
    save_sealing_key(wx_cfg.path(wx_cfg.keys.sealing_key).with_name("sealing-next.pem"), new_key)
    root = root_key(stack)
    old_kid, _ = connector_registry(stack, SZ).sealing_key_for(WX)
    async with traffic(stack) as t:
        rotated = live_registry.edit_signed(
            connector_registry(stack, WX).signed,
            root,
            lambda doc: live_registry.add_key(
                doc, WX, registry_pb2.KEY_USE_SEALING, new_key.public_raw, overlap_s=600
            ),
        )
        await publish_everywhere(stack, rotated)
        await adopted_everywhere(stack, live_registry.read_signed(rotated).version)
        assert connector_registry(stack, SZ).sealing_key_for(WX)[0] == new_key.key_id
        connector = stack.nodes[WX].connector
        assert connector is not None
        assert connector.secrets.sealing_for(new_key.key_id) is not None
        await t.at_least(20)  # sealed to the new key, opened by Wuxi
        # A body sealed to the old key during the overlap still opens.
        await send_ok(stack, craft(stack, seal_to=old_kid).data)
        revoked = live_registry.edit_signed(rotated, root, lambda doc: live_registry.revoke_key(doc, old_kid))
        await publish_everywhere(stack, revoked)
        await adopted_everywhere(stack, live_registry.read_signed(revoked).version)
        await t.at_least(20)
    assert not t.errors


@pytest.fixture
async def slow_activation(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(topology, state, config={"keys": {"activation_delay_s": 3600.0}})
    try:
        yield s
    finally:
        await stop_stack(s)


async def test_new_key_waits_until_other_regions_can_know_it(slow_activation: Stack) -> None:
    """The authority published the rotation to Shenzhen only (Wuxi has not got it yet): Shenzhen
    keeps signing with the old key for the activation delay, so Wuxi still verifies it."""
    stack = slow_activation
    sz_cfg = Config.load(stack.state.config_path(SZ))
    new_key = SigningKey.generate(SZ)
    save_signing_key(sz_cfg.path(sz_cfg.keys.signing_key).with_name("signing-next.pem"), new_key)
    gateway = stack.nodes[SZ].gateway
    assert gateway is not None
    old_kid = gateway.secrets.signing.key_id
    rotated = live_registry.edit_signed(
        connector_registry(stack, SZ).signed,
        root_key(stack),
        lambda doc: live_registry.add_key(
            doc, SZ, registry_pb2.KEY_USE_SIGNING, new_key.public_raw, overlap_s=600
        ),
    )
    nc = await stack.nats(SZ)
    try:
        await live_registry.publish(nc, SZ, rotated)
    finally:
        await nc.close()
    version = live_registry.read_signed(rotated).version
    assert gateway.trust is not None
    await eventually(
        lambda: gateway.trust is not None and gateway.trust.registry.version == version,
        what="adopted",
    )
    assert gateway.secrets.signing.key_id == old_kid
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX
