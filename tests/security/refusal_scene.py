"""The scene of the envelope refusal tests (test_envelope_refusals.py): one stack shared by the
module, what each test caused since it started, registry edits, envelopes changed one thing at a time,
and the assertions that a refusal was exact and delivered nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

import grpc
import nats.errors
import pytest

from connectors.runtime import Connector
from ledger import Entry, Event
from tests.conftest import QD, SZ, WX, Stack, resigned_registry
from tests.e2e.grpc_errors import Details, details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import craft, send, send_ok
from tests.helpers import eventually, note, signing_key_of
from tongban.core import envelope, messages, subjects
from tongban.core.keys import SigningKey
from tongban.core.registry import Registry
from tongban.runtime.config import Config
from tongban.runtime.node import RegionSecrets, load_registry, load_secrets
from tongban.v1 import envelope_pb2, exchange_pb2, registry_pb2

SERVICE = "SBJFJLCX0001"  # what craft() and pension() ask Wuxi for
OTHER_SERVICE = "WFZJLZM00001"
Code = grpc.StatusCode
UNDECODABLE = b"\x0a\xff\xff\xff\x0f"  # a field whose length runs past the end
GARBAGE = UNDECODABLE + b"not a protobuf"
Edit = Callable[[registry_pb2.TrustRegistry], None]


class Sent(NamedTuple):
    """An envelope sent to Wuxi, and the name its REJECTED entry must carry."""

    data: bytes
    message_id: str


@dataclass
class Scene:
    """One test's view of the shared stack: what the test caused (ledger entries and back-end calls
    since it started) and envelopes with message ids no other test of the module used.

    craft() names a message by the millisecond it was made in, and Wuxi's connector remembers every
    id for the freshness window: two envelopes made in one millisecond would be refused as REPLAYED.
    """

    stack: Stack
    sizes: dict[str, int] = field(default_factory=dict)
    calls: int = 0

    async def rebase(self) -> None:
        """From now on, count only what comes after this point."""
        self.sizes = {region: await node.ledger.size() for region, node in self.stack.nodes.items()}
        self.calls = self.stack.nodes[WX].backend_calls()

    def craft(self, **kw: Any) -> messages.Built:
        """craft() (tests/e2e/tamper.py): a fresh message id each time."""
        return craft(self.stack, **kw)

    def sent(self, **kw: Any) -> Sent:
        """What :meth:`craft` makes, named by its message id."""
        built = self.craft(**kw)
        return Sent(built.data, built.header.message_id)

    async def entries(self, region: str) -> list[Entry]:
        return await self.stack.nodes[region].ledger.entries(self.sizes[region])

    def backend_calls(self) -> int:
        return self.stack.nodes[WX].backend_calls() - self.calls


class HoldsRegistry(Protocol):
    registry: Registry


def connector(stack: Stack) -> Connector:
    connector = stack.nodes[WX].connector
    assert connector is not None
    return connector


@contextlib.contextmanager
def edited_registry(
    stack: Stack, edit: Edit | None, *, at: Literal["connector", "gateway"]
) -> Iterator[None]:
    """Wuxi's connector (``at="connector"``) or Shenzhen's gateway (``at="gateway"``) holds the dev
    registry with ``edit`` applied (if any), re-signed by the root, until the block ends."""
    if edit is None:
        yield
        return
    holder: HoldsRegistry
    if at == "connector":
        holder = connector(stack)
    else:
        gateway = stack.nodes[SZ].gateway
        assert gateway is not None and gateway.desk is not None
        holder = gateway.desk.core
    original = holder.registry
    holder.registry = resigned_registry(stack.state, edit)
    try:
        yield
    finally:
        holder.registry = original


# -- registry edits ------------------------------------------------------------------------------


def shenzhen_to_wuxi(doc: registry_pb2.TrustRegistry) -> list[registry_pb2.AccessRule]:
    rules = [r for r in doc.access_rules if r.caller_region == SZ and r.provider_region == WX]
    assert rules
    return rules


def only_partner_szgov_ywtb(doc: registry_pb2.TrustRegistry) -> None:
    """Shenzhen may call Wuxi only from its 一网通办 platform, not from the dev partner."""
    for rule in shenzhen_to_wuxi(doc):
        rule.caller_system = "szgov-ywtb"


def only_another_service(doc: registry_pb2.TrustRegistry) -> None:
    """Shenzhen may call Wuxi for another service, not for the pension record."""
    for rule in shenzhen_to_wuxi(doc):
        rule.service_code = OTHER_SERVICE


def wuxi_does_not_provide(doc: registry_pb2.TrustRegistry) -> None:
    for region in doc.regions:
        if region.code == WX:
            keep = [s for s in region.provided_services if s != SERVICE]
            del region.provided_services[:]
            region.provided_services.extend(keep)


def shenzhen_signing_key_expired(doc: registry_pb2.TrustRegistry) -> None:
    signing_key_of(doc, SZ).not_after.CopyFrom(messages.timestamp(time.time() - 60))


def shenzhen_signing_key_not_yet_valid(doc: registry_pb2.TrustRegistry) -> None:
    signing_key_of(doc, SZ).not_before.CopyFrom(messages.timestamp(time.time() + 3600))


# -- envelopes -----------------------------------------------------------------------------------


def secrets(stack: Stack, region: str) -> RegionSecrets:
    return load_secrets(Config.load(stack.state.config_path(region)))


def signing_key(stack: Stack, region: str) -> SigningKey:
    return secrets(stack, region).signing


def resigned(stack: Stack, data: bytes, edit: Callable[[envelope_pb2.Header], None]) -> bytes:
    """``data`` with its header edited and signed again with Shenzhen's real key. The body stays
    sealed under the old header: the checks these edits meet come before the seal is opened."""
    env = envelope_pb2.Envelope.FromString(data)
    header = envelope_pb2.Header.FromString(env.header)
    edit(header)
    return envelope.sign(header.SerializeToString(deterministic=True), env.body, signing_key(stack, SZ))


def sealed(stack: Stack, built: messages.Built, plaintext: bytes) -> bytes:
    """``built``'s header with ``plaintext`` sealed for Wuxi under it, signed with Shenzhen's real key."""
    header = envelope_pb2.Header()
    header.CopyFrom(built.header)
    kid, recipient = load_registry(Config.load(stack.state.config_path(SZ))).sealing_key_for(WX)
    return messages.build_sealed(
        header, plaintext, recipient_key_id=kid, recipient=recipient, signer=signing_key(stack, SZ)
    ).data


def request_body(request: exchange_pb2.ServiceRequest | None = None) -> bytes:
    return exchange_pb2.RequestBody(request=request or pension().request).SerializeToString()


def edited(data: bytes, edit: Callable[[envelope_pb2.Envelope], None]) -> bytes:
    env = envelope_pb2.Envelope.FromString(data)
    edit(env)
    return env.SerializeToString()


# -- the changes ---------------------------------------------------------------------------------


def unnamed(data: bytes) -> Sent:
    """Bytes with no usable message id: the connector names them by their digest."""
    return Sent(data, "sha256:" + envelope.digest(data)[:8].hex())


def edit(s: Scene, edit: Callable[[envelope_pb2.Envelope], None]) -> Sent:
    """A crafted envelope, ``edit`` made to it after signing."""
    built = s.craft()
    return Sent(edited(built.data, edit), built.header.message_id)


def reheadered(s: Scene, **fields: Any) -> Sent:
    """A crafted envelope, ``fields`` set in its header, signed again by Shenzhen (:func:`resigned`)."""
    built = s.craft()

    def edit(h: envelope_pb2.Header) -> None:
        for name, value in fields.items():
            setattr(h, name, value)

    return Sent(resigned(s.stack, built.data, edit), built.header.message_id)


def sealing(s: Scene, plaintext: bytes) -> Sent:
    """A crafted header, ``plaintext`` sealed under it for Wuxi and signed by Shenzhen."""
    built = s.craft()
    return Sent(sealed(s.stack, built, plaintext), built.header.message_id)


def forged(s: Scene, private_of: str | None) -> Sent:
    """Signed under Shenzhen's key id with the real key of ``private_of`` (None: a key no registry
    knows)."""
    key = signing_key(s.stack, private_of) if private_of else SigningKey.generate(SZ)
    return s.sent(signer=SigningKey(signing_key(s.stack, SZ).key_id, key.private))


def sealing_key_as_signer(s: Scene) -> Sent:
    """A registered key of the sender, but its sealing (KEM) key, named as the signer."""
    sz = secrets(s.stack, SZ)
    return s.sent(signer=SigningKey(sz.sealing.key_id, sz.signing.private))


def sealed_for_qingdao_under_our_key_id(s: Scene) -> Sent:
    wx_kid, _ = load_registry(Config.load(s.stack.state.config_path(SZ))).sealing_key_for(WX)
    return s.sent(sealed_for=QD, recipient_key_id=wx_kid)


def for_qingdao() -> bytes:
    """The header says Wuxi; the request sealed inside targets Qingdao."""
    request = pension().request
    request.target_region = QD
    return request_body(request)


def from_the_future(s: Scene) -> Sent:
    created = time.time() + s.stack.nodes[WX].cfg.connector.clock_skew_s + 5
    return s.sent(created=created, deadline=created + 10)


def validity(s: Scene) -> str:
    return f"key {signing_key(s.stack, SZ).key_id} is outside its validity period"


async def served_once(s: Scene, sent: Sent) -> None:
    await send_ok(s.stack, sent.data)
    assert [e.event for e in await s.entries(WX)] == [Event.RECEIVED, Event.PROCESSED]
    assert s.stack.nodes[WX].adapters[SERVICE].calls[sent.message_id] == 1
    await s.rebase()


async def served_then_restarted(s: Scene, sent: Sent) -> None:
    await send_ok(s.stack, sent.data)
    await restart_wuxi_connector(s.stack)
    await s.rebase()


async def restart_wuxi_connector(stack: Stack) -> None:
    """Wuxi's connector process stops; a new one (same config, keys, ledger, back ends) starts."""
    node = stack.nodes[WX]
    old = connector(stack)
    await old.stop()
    node.connector = Connector(old.parts, adapters=node.adapters)
    await node.connector.start()
    nc = await stack.nats(SZ)

    async def reachable() -> bool:
        try:
            await nc.request(subjects.ping_subject(WX), b"", timeout=0.5)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    try:
        await eventually(reachable, what="the new Wuxi connector reachable from Shenzhen")
    finally:
        await nc.close()


# -- assertions ----------------------------------------------------------------------------------


async def refused_by_connector(
    scene: Scene,
    data: bytes,
    *,
    reason: str,
    code: grpc.StatusCode,
    message: str,
    message_id: str,
    service: str = SERVICE,
) -> None:
    """Wuxi answers ``data`` with a signed Problem saying exactly this, records REJECTED and nothing
    else under ``message_id``; neither its back end nor Shenzhen's ledger sees anything."""
    problem = await send(scene.stack, data, service)
    assert (problem.reason, problem.code, problem.message) == (reason, code.value[0], message), problem
    assert not problem.field_violations
    wx = await scene.entries(WX)
    assert [(e.event, note(e), e.message_id, e.envelope_digest) for e in wx] == [
        (Event.REJECTED, reason, message_id, envelope.digest(data))
    ]
    assert scene.backend_calls() == 0
    assert await scene.entries(SZ) == []


async def refused_by_gateway(scene: Scene, request: exchange_pb2.QueryRequest, *, detail: str) -> Details:
    """Shenzhen's gateway refuses ``request``: one REJECTED entry (``detail``), nothing sent on."""
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await scene.stack.stub(SZ).Query(request, timeout=5)
    sz = await scene.entries(SZ)
    assert [(e.event, note(e), e.peer_region, e.service_code) for e in sz] == [
        (Event.REJECTED, detail, WX, SERVICE)
    ]
    assert await scene.entries(WX) == []
    assert scene.backend_calls() == 0
    return details_of(exc.value)
