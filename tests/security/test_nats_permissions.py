"""NATS least privilege between regions: a region's credentials do not read another region's traffic.

Threat: a region's NATS credentials (its NKey seed and leafnode client certificate) are stolen, or a
region's own servers are compromised, and used to read another region's requests, Query answers or
JetStream streams through the hub, or to publish where the region has no business. Control: the hub
binds each region's NKey user to least-privilege permissions (tongban/ops/natsconfig/permissions.py),
requires a client certificate from the NATS CA on every leafnode link, and denies every ``$JS.>`` API across
the hub. The hub enforces them itself: the tests speak the leafnode protocol to it directly (a
compromised leaf ignores the permissions the hub sends it), and also run an unmodified nats-server
with the stolen credentials.

What nats-server 2.15.1 does, as these tests pin it: a leaf's *publish* outside its permissions is
refused with ``-ERR 'Permissions Violation for Publish to "<subject>"'`` and the link is closed. A
leaf's subscription interest is checked strictly for a literal subject (``-ERR 'Permissions Violation
for Subscription to "<subject>"'``, link closed) but accepted for a wildcard the hub can narrow
(``tb.v1.req.320200.>``, even ``>``): the hub then filters each message against the permissions
before it delivers to the leaf, so nothing outside them arrives.

Non-delivery is shown by order, not by waiting: the same publisher sends the messages the rogue
must not get and then a sentinel it may get, over one leaf link into the hub and out of it over the
rogue's one link; once the sentinel arrives, anything before it would have arrived too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.js.errors
import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.conftest import QD, SZ, WX
from tests.helpers import eventually
from tests.security.natsprobe import READ_TIMEOUT, SVC, ProtocolLink
from tongban.core import subjects
from tongban.ops import natsconfig
from tongban.ops.natsserver import NatsServer, ServerSpec, Topology
from tongban.runtime import certs, natsroles, streams
from tongban.runtime.natsroles import NatsRole

SENTINEL = subjects.rpc_subject(SZ, "sentinel")
"""What Shenzhen's credentials may receive: Qingdao sends it after the messages they must not."""


def wuxi_subjects() -> list[str]:
    """Subjects of Wuxi's traffic Qingdao may publish into: its RPC, requests, events, ping, inbox."""
    return [
        subjects.rpc_subject(WX, SVC),
        subjects.request_subject(WX, SVC),
        subjects.event_subject(WX, SVC),
        subjects.ping_subject(WX),
        f"{subjects.inbox_prefix(WX)}.answer",
    ]


def leafnode_count(topology: Topology) -> int:
    with urllib.request.urlopen(f"{topology.hub.monitor_url}/leafz", timeout=5) as resp:
        return int(json.loads(resp.read())["leafnodes"])


async def connect(topology: Topology, region: str) -> NATS:
    """A test's client of ``region``'s own leaf: the topology's admin, with the region's inbox prefix
    (every subject of the region: these tests are about what the *hub* lets through)."""
    return await topology.admin_client(region)


# -- a leaf that ignores the permissions the hub sends it ------------------------------------------


class RogueLeaf(ProtocolLink):
    """A leafnode link to the hub that speaks the protocol itself (software that ignores the
    permissions the hub tells it), with a region's credentials."""

    @classmethod
    async def connect(
        cls,
        topology: Topology,
        *,
        seed: bytes,
        cert_dir: Path,
        expect_auth: bool = True,
    ) -> RogueLeaf:
        r, w = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", topology.hub.spec.leaf_port), READ_TIMEOUT
        )
        line = await asyncio.wait_for(r.readline(), READ_TIMEOUT)
        info = json.loads(line.decode().split(" ", 1)[1])
        assert info["tls_required"] and info["auth_required"]
        ctx = ssl.create_default_context(cafile=str(topology.secrets.hub_dir / "ca.crt"))
        ctx.load_cert_chain(cert_dir / "leaf.crt", cert_dir / "leaf.key")
        await asyncio.wait_for(w.start_tls(ctx, server_hostname="127.0.0.1"), READ_TIMEOUT)
        kp = nkeys.from_seed(bytearray(seed))
        try:
            connect = {
                "nkey": kp.public_key.decode(),
                "sig": base64.b64encode(kp.sign(info["nonce"].encode())).decode(),
                "tls_required": True,
                "name": "rogue",
                "headers": True,
            }
        finally:
            kp.wipe()
        leaf = cls(r, w)
        await leaf.send(f"CONNECT {json.dumps(connect)}")
        if expect_auth:
            await leaf.ping()
        return leaf


@pytest.fixture
async def rogue(topology: Topology) -> AsyncIterator[Callable[..., Awaitable[RogueLeaf]]]:
    """Open rogue leafnode links (Shenzhen's stolen credentials unless told otherwise)."""
    opened: list[RogueLeaf] = []

    async def open_(seed: bytes | None = None, cert_dir: Path | None = None, **kw: object) -> RogueLeaf:
        leaf = await RogueLeaf.connect(
            topology,
            seed=seed if seed is not None else topology.secrets.seed(SZ),
            cert_dir=cert_dir or topology.secrets.region_dir(SZ),
            **kw,  # type: ignore[arg-type]
        )
        opened.append(leaf)
        return leaf

    yield open_
    for leaf in opened:
        await leaf.close()


@dataclass
class Listener:
    """Wuxi's legitimate subscriber on its own subjects (and its inbox), answering RPCs."""

    nc: NATS
    got: list[str] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        self.got.append(msg.subject)
        if msg.reply and msg.subject.startswith(f"{subjects.PREFIX}.rpc."):
            await msg.respond(b"answer")


@pytest.fixture
async def wuxi(topology: Topology) -> AsyncIterator[Listener]:
    nc = await connect(topology, WX)
    listener = Listener(nc)
    for s in (
        subjects.rpc_wildcard(WX),
        subjects.request_wildcard(WX),
        subjects.event_wildcard(WX),
        subjects.ping_subject(WX),
        f"{subjects.inbox_prefix(WX)}.>",
    ):
        await nc.subscribe(s, cb=listener.on_msg)
    await nc.flush()
    try:
        yield listener
    finally:
        await nc.close()


@pytest.fixture
async def qingdao(topology: Topology) -> AsyncIterator[NATS]:
    nc = await connect(topology, QD)
    try:
        yield nc
    finally:
        await nc.close()


async def send_wuxi_traffic_then_sentinel(qd: NATS, wuxi: Listener) -> None:
    """Qingdao asks Wuxi (a Query and its answer into Qingdao's inbox), sends into Wuxi's other
    subjects, then the sentinel; repeated until Wuxi has seen them all (interest propagated)."""
    want = set(wuxi_subjects())

    async def all_seen() -> bool:
        wuxi.got.clear()
        with contextlib.suppress(nats.errors.NoRespondersError, nats.errors.TimeoutError):
            answer = await qd.request(subjects.rpc_subject(WX, SVC), b"request", timeout=0.5)
            assert answer.data == b"answer"
        for s in wuxi_subjects()[1:]:
            await qd.publish(s, b"secret")
        await qd.publish(SENTINEL, b"sentinel")
        await qd.flush()
        await wuxi.nc.flush()
        return want <= set(wuxi.got)

    await eventually(all_seen, what="Wuxi receives its traffic from Qingdao")


# -- the tests -----------------------------------------------------------------------------------


async def test_stolen_region_credentials_cannot_read_another_regions_requests_or_replies(
    topology: Topology, rogue: Callable[..., Awaitable[RogueLeaf]], wuxi: Listener, qingdao: NATS
) -> None:
    """Shenzhen's credentials, in software that ignores the hub's permissions, subscribe to all of
    Wuxi's subject spaces, every inbox and ``>``: Wuxi gets its requests and Qingdao its answers;
    the rogue gets only the sentinel addressed to Shenzhen."""
    leaf = await rogue()
    for s in (
        subjects.request_wildcard(WX),
        subjects.rpc_wildcard(WX),
        subjects.event_wildcard(WX),
        f"{subjects.PREFIX}.ping.*",
        f"{subjects.inbox_prefix(WX)}.>",
        f"{subjects.inbox_prefix(QD)}.>",
        f"$JS.{WX}.API.>",
        ">",
        SENTINEL,
    ):
        await leaf.send(f"LS+ {s}")
    await leaf.ping()
    assert leaf.errors == [] and not leaf.closed  # wildcards: accepted, narrowed at delivery

    await send_wuxi_traffic_then_sentinel(qingdao, wuxi)
    await leaf.read_until(lambda _line: SENTINEL in leaf.msgs)
    # Everything Qingdao sent before the sentinel has passed the hub: none of it reached the rogue.
    assert set(leaf.msgs) == {SENTINEL}, leaf.msgs
    assert leaf.errors == []


async def test_nats_subscribe_to_another_regions_subjects_is_denied(
    topology: Topology, rogue: Callable[..., Awaitable[RogueLeaf]], wuxi: Listener, qingdao: NATS
) -> None:
    """A literal subscription to Wuxi's request subject with Shenzhen's credentials is refused by
    name and the link closed; Wuxi still receives the request, and nothing reached the rogue."""
    leaf = await rogue()
    await send_wuxi_traffic_then_sentinel(qingdao, wuxi)
    wuxi.got.clear()
    subject = subjects.request_subject(WX, SVC)
    await leaf.send(f"LS+ {subject}")
    await leaf.read_to_close()
    assert leaf.errors == [f"-ERR 'Permissions Violation for Subscription to \"{subject}\"'"]
    assert leaf.closed and leaf.msgs == []
    await qingdao.publish(subject, b"secret")
    await qingdao.flush()
    await eventually(lambda: subject in wuxi.got, what="Wuxi receives its request")
    log = (topology.hub.workdir / "hub.log").read_text()
    assert f'Subscription Violation on "{subject}"' in log


@pytest.mark.parametrize(
    "subject",
    [
        subjects.rpc_subject(SZ, SVC),  # its own inbound subjects: only other regions send there
        subjects.dlq_subject(WX, SVC),  # another region's dead letters
        f"$JS.{WX}.API.CONSUMER.CREATE.IN_{WX}",  # another region's JetStream API
        f"$JS.{WX}.API.STREAM.MSG.GET.IN_{WX}",
        subjects.checkpoint_subject(WX, QD),  # a checkpoint under another region's name
        "_INBOX.answer",  # the default inbox prefix: no region's
    ],
)
async def test_nats_publish_outside_permissions_is_denied(
    topology: Topology,
    rogue: Callable[..., Awaitable[RogueLeaf]],
    wuxi: Listener,
    qingdao: NATS,
    subject: str,
) -> None:
    """A publish outside Shenzhen's permissions is refused by name and the link closed; nothing
    reached Wuxi."""
    leaf = await rogue()
    await send_wuxi_traffic_then_sentinel(qingdao, wuxi)  # Wuxi's interest is in the hub
    wuxi.got.clear()
    sniff = await connect(topology, WX)
    try:
        got: list[str] = []

        async def record(msg: Msg) -> None:
            got.append(msg.subject)

        await sniff.subscribe(">", cb=record)  # inside Wuxi's leaf: whatever enters it
        await sniff.flush()
        await leaf.send(f"LMSG {subject} 6", b"forged")
        await leaf.read_to_close()
        assert leaf.errors == [f"-ERR 'Permissions Violation for Publish to \"{subject}\"'"]
        assert leaf.closed
        # Qingdao's sentinel into Wuxi's leaf after the refusal: the forged message is not before it.
        await qingdao.publish(subjects.ping_subject(WX), b"after")
        await qingdao.flush()
        await eventually(lambda: subjects.ping_subject(WX) in got, what="Wuxi's leaf gets Qingdao's ping")
        assert subject not in got and subject not in wuxi.got
    finally:
        await sniff.close()
    log = (topology.hub.workdir / "hub.log").read_text()
    assert f'Publish Violation on "{subject}"' in log


async def test_another_regions_jetstream_api_is_unreachable(
    topology: Topology, tmp_path: Path, qingdao: NATS
) -> None:
    """An unmodified nats-server joined as a leaf with Shenzhen's credentials: its clients reach
    neither Wuxi's inbound stream through Wuxi's JetStream domain nor its requests, while Qingdao's
    request is stored there (PubAck back to Qingdao's inbox)."""
    wx = await connect(topology, WX)
    admin = natsroles.new_user_seed()  # the rogue's own client user: it lets in whoever it wants
    server = NatsServer(
        ServerSpec(
            name="rogue",
            domain="rogue",
            hub_leaf_url=topology.hub.leaf_url,
            security=topology.secrets.leaf_link(SZ),
            client_users=tuple(natsconfig.region_users(SZ, {NatsRole.ADMIN: natsroles.public_key(admin)})),
        ),
        tmp_path / "rogue",
    )
    await server.start()
    nc = await nats.connect(server.client_url, connect_timeout=5, nkeys_seed_str=admin.decode())
    try:
        await topology.hub.wait_leafnodes(len(topology.regions) + 1)
        await wx.jetstream(domain=WX).add_stream(streams.inbound_stream(WX))
        stolen: list[str] = []

        async def record(msg: Msg) -> None:
            stolen.append(msg.subject)

        everything = await nc.subscribe(">", cb=record)
        await nc.subscribe(SENTINEL, cb=record)
        await nc.flush()

        async def sentinel_arrives() -> bool:
            try:  # until the new stream's interest has reached Qingdao's leaf
                ack = await qingdao.jetstream(timeout=1).publish(subjects.request_subject(WX, SVC), b"secret")
            except (
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
                nats.js.errors.NoStreamResponseError,
            ):
                return False
            assert ack.stream == subjects.inbound_stream_name(WX)
            await qingdao.publish(SENTINEL, b"sentinel")
            await qingdao.flush()
            await nc.flush()
            return SENTINEL in stolen

        await eventually(sentinel_arrives, what="the rogue leaf gets Shenzhen's sentinel")
        assert set(stolen) == {SENTINEL}, stolen
        await everything.unsubscribe()  # it would make the rogue its own JetStream API's listener
        with pytest.raises(nats.js.errors.ServiceUnavailableError):
            await nc.jetstream(domain=WX, timeout=2).stream_info(subjects.inbound_stream_name(WX))
        with pytest.raises(nats.js.errors.ServiceUnavailableError):
            await nc.jetstream(domain=WX, timeout=2).add_consumer(subjects.inbound_stream_name(WX))
        info = await wx.jetstream(domain=WX).stream_info(subjects.inbound_stream_name(WX))
        assert info.state.messages >= 1 and info.state.consumer_count == 0
    finally:
        await nc.close()
        await wx.close()
        await server.stop()


async def test_leaf_without_the_regions_nkey_cannot_join(
    topology: Topology, rogue: Callable[..., Awaitable[RogueLeaf]]
) -> None:
    """A valid client certificate with a seed the hub does not know: refused, link closed."""
    leaf = await rogue(seed=natsroles.new_user_seed(), expect_auth=False)
    await leaf.read_to_close()
    assert leaf.errors == ["-ERR 'Authorization Violation'"]
    assert leaf.closed and leaf.msgs == []
    assert await asyncio.to_thread(leafnode_count, topology) == len(topology.regions)


async def test_leaf_without_a_certificate_from_the_nats_ca_cannot_join(
    topology: Topology, rogue: Callable[..., Awaitable[RogueLeaf]], tmp_path: Path
) -> None:
    """Shenzhen's real seed with a client certificate from another CA: the hub ends the TLS
    handshake (the client sees the link reset or a TLS alert) and names the reason in its log."""
    other = certs.create_ca("not the NATS CA")
    certs.write(natsconfig.issue_leaf(other, SZ), tmp_path, "leaf")
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        leaf = await rogue(cert_dir=tmp_path)
        await leaf.read_to_close()  # TLS 1.3: the refusal may only show at the first read
        assert not leaf.closed, "the hub closed the link without an error"
    refusal = (
        "TLS leafnode handshake error: tls: failed to verify certificate: "
        "x509: certificate signed by unknown authority"
    )
    await eventually(
        lambda: refusal in (topology.hub.workdir / "hub.log").read_text(),
        what="the hub logs the refused certificate",
    )
    assert await asyncio.to_thread(leafnode_count, topology) == len(topology.regions)


async def test_region_credentials_are_refused_on_the_hubs_client_port(topology: Topology) -> None:
    """Region users are leafnode-only: as a plain client of the hub they are not authorised."""
    seed = topology.secrets.seed(SZ).decode()
    with pytest.raises(nats.errors.Error, match=r"[Aa]uthorization [Vv]iolation"):
        await nats.connect(
            topology.hub.client_url,
            nkeys_seed_str=seed,
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )


# -- inside a region: its own nats-server's client port -------------------------------------------
#
# Threat: anyone on a region's network (or one compromised process of it) connects to the region's
# own nats-server and reads its durable streams, publishes into them or deletes them. Control: the
# client port admits only the region's role users (tongban/ops/natsconfig/permissions.py
# client_permissions), each with the subjects and JetStream API calls its role makes. A client's
# refused publish or subscription gets ``-ERR 'Permissions Violation for …'`` and keeps its
# connection (unlike a leaf); the raw-protocol client below reads the server's exact words, nats-py
# would lower-case them.
