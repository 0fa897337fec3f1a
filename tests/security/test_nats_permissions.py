"""NATS least privilege between regions: a region's credentials do not read another region's traffic.

Threat: a region's NATS credentials (its NKey seed and leafnode client certificate) are stolen, or a
region's own servers are compromised, and used to read another region's requests, Query answers or
JetStream streams through the hub, or to publish where the region has no business. Control: the hub
binds each region's NKey user to least-privilege permissions (tongban/ops/natsconfig.py), requires a
client certificate from the NATS CA on every leafnode link, and denies every ``$JS.>`` API across
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
from typing import Any

import nats
import nats.js.errors
import nkeys
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from tests.conftest import QD, SZ, WX
from tests.helpers import eventually, nkey_connect
from tongban.core import subjects
from tongban.core.errors import ConfigError
from tongban.ops import dlq, natsconfig
from tongban.ops.devstate import init_state
from tongban.ops.natsserver import NatsServer, ServerSpec, Topology
from tongban.runtime import certs, live_registry, natsroles, streams
from tongban.runtime.config import Config, RegionConfig
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats, nats_seed_file
from tongban.runtime.streams import ensure_streams

SVC = "SBJFJLCX0001"
SENTINEL = subjects.rpc_subject(SZ, "sentinel")
"""What Shenzhen's credentials may receive: Qingdao sends it after the messages they must not."""

READ_TIMEOUT = 10.0


def wuxi_subjects() -> list[str]:
    """Subjects of Wuxi's traffic Qingdao may publish into: its RPC, requests, events, ping, inbox."""
    return [
        subjects.rpc_subject(WX, SVC),
        subjects.request_subject(WX, SVC),
        subjects.event_subject(WX, SVC),
        subjects.ping_subject(WX),
        f"{subjects.inbox_prefix(WX)}.answer",
    ]


def connections(topology: Topology, region: str) -> dict[str, Any]:
    """``/connz`` of ``region``'s leaf, with each connection's user."""
    url = f"{topology.leaves[region].monitor_url}/connz?auth=1"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def leafnode_count(topology: Topology) -> int:
    with urllib.request.urlopen(f"{topology.hub.monitor_url}/leafz", timeout=5) as resp:
        return int(json.loads(resp.read())["leafnodes"])


async def connect(topology: Topology, region: str) -> NATS:
    """A test's client of ``region``'s own leaf: the topology's admin, with the region's inbox prefix
    (every subject of the region: these tests are about what the *hub* lets through)."""
    return await topology.admin_client(region)


# -- a leaf that ignores the permissions the hub sends it ------------------------------------------


@dataclass
class RogueLeaf:
    """A leafnode link to the hub that speaks the protocol itself (software that ignores the
    permissions the hub tells it), with a region's credentials."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    msgs: list[str] = field(default_factory=list)
    """Subjects of the messages the hub delivered."""
    errors: list[str] = field(default_factory=list)
    closed: bool = False

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

    async def send(self, line: str, payload: bytes | None = None) -> None:
        data = line.encode() + b"\r\n"
        if payload is not None:
            data += payload + b"\r\n"
        self.writer.write(data)
        await self.writer.drain()

    async def ping(self) -> None:
        """PING and read up to the PONG: every protocol line sent before is then processed."""
        await self.send("PING")
        await self.read_until(lambda line: line == "PONG")

    async def read_until(self, stop: Callable[[str], bool]) -> None:
        """Read protocol lines (recording messages and errors) until ``stop`` holds for one or the
        hub closes the link."""
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                self.closed = True
                return
            line = raw.decode().rstrip("\r\n")
            if line == "PING":
                await self.send("PONG")
            elif line.startswith("-ERR"):
                self.errors.append(line)
            elif line.startswith(("LMSG ", "HLMSG ")):
                parts = line.split()
                await asyncio.wait_for(self.reader.readexactly(int(parts[-1]) + 2), READ_TIMEOUT)
                self.msgs.append(parts[1])
            if stop(line):
                return

    async def read_to_close(self) -> None:
        await self.read_until(lambda _line: False)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


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
# client port admits only the region's role users (tongban/ops/natsconfig.py client_permissions), each
# with the subjects and JetStream API calls its role makes. A client's refused publish or
# subscription gets ``-ERR 'Permissions Violation for …'`` and keeps its connection (unlike a leaf);
# the raw-protocol client below reads the server's exact words, nats-py would lower-case them.


@dataclass
class RawClient:
    """A client of a region's leaf that speaks the protocol itself (software that tries whatever
    it likes), logged in as one NKey user."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    errors: list[str] = field(default_factory=list)
    msgs: list[str] = field(default_factory=list)
    closed: bool = False
    _sid: int = 0

    @classmethod
    async def connect(cls, url: str, seed_file: Path | None) -> RawClient:
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), READ_TIMEOUT)
        info = await asyncio.wait_for(r.readline(), READ_TIMEOUT)
        assert json.loads(info.decode().split(" ", 1)[1])["auth_required"] is True
        client = cls(r, w)
        if seed_file is None:
            # No PING after it: the server answers and closes, and a PING racing the close could
            # make the socket reset before the answer is read.
            w.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
            await client._read(until_pong=False)
        else:
            w.write(nkey_connect(info, seed_file, headers=True))
            await client.ping()
        return client

    async def ping(self) -> None:
        """PING and read up to the PONG (or the close): every line sent before is then processed."""
        self.writer.write(b"PING\r\n")
        await self.writer.drain()
        await self._read(until_pong=True)

    async def _read(self, *, until_pong: bool) -> None:
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT)
            if not raw:
                self.closed = True
                return
            line = raw.decode().rstrip("\r\n")
            if line == "PONG" and until_pong:
                return
            if line.startswith("-ERR"):
                self.errors.append(line)
            elif line.startswith(("MSG ", "HMSG ")):
                parts = line.split()
                await asyncio.wait_for(self.reader.readexactly(int(parts[-1]) + 2), READ_TIMEOUT)
                self.msgs.append(parts[1])

    async def pub(self, subject: str, payload: bytes = b"{}", reply: str = "") -> None:
        self.writer.write(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        await self.ping()

    async def sub(self, subject: str) -> None:
        self._sid += 1
        self.writer.write(f"SUB {subject} {self._sid}\r\n".encode())
        await self.ping()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def pub_violation(subject: str) -> str:
    """The refusal of a publish to ``subject`` on Wuxi's leaf. nats-server 2.15.1 maps a client's
    own-domain JetStream API prefix (``$JS.320200.API.``) to ``$JS.API.`` before it checks
    permissions, and names the mapped subject; another domain's prefix is not mapped and is named
    as sent."""
    checked = subject.replace(f"$JS.{WX}.API.", "$JS.API.", 1)
    return f"-ERR 'Permissions Violation for Publish to \"{checked}\"'"


def sub_violation(subject: str) -> str:
    return f"-ERR 'Permissions Violation for Subscription to \"{subject}\"'"


@pytest.fixture
async def raw(topology: Topology) -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """Open raw clients of Wuxi's leaf as a role (``None``: no credentials)."""
    opened: list[RawClient] = []

    async def open_(role: NatsRole | None, region: str = WX) -> RawClient:
        seed = None if role is None else topology.client_seed(region, role)
        client = await RawClient.connect(topology.url(region), seed)
        opened.append(client)
        return client

    yield open_
    for c in opened:
        await c.close()


@pytest.fixture
async def wuxi_streams(topology: Topology) -> AsyncIterator[NATS]:
    """Wuxi's streams as its processes make them (``ensure_streams`` as the gateway user), one
    request in ``IN_320200`` and one dead letter in ``DLQ_320200``; yields the admin's client, to
    look at what is left afterwards."""
    gw = await topology.connect(WX, NatsRole.GATEWAY)
    admin = await topology.admin_client(WX)
    try:
        await ensure_streams(gw, WX)
        js = admin.jetstream(domain=WX)
        await js.publish(subjects.request_subject(WX, SVC), b"a request", headers={"Nats-Msg-Id": "r1"})
        await js.publish(
            subjects.dlq_subject(WX, SVC),
            b"a dead letter",
            headers={
                subjects.Header.MSG_ID: "d1",
                subjects.Header.MESSAGE_ID: "m-dead",
                subjects.Header.REASON: "BACKEND_FAILED",
                subjects.Header.ATTEMPTS: "5",
                subjects.Header.ORIGINAL_SUBJECT: subjects.request_subject(WX, SVC),
            },
        )
        yield admin
    finally:
        await gw.close()
        await admin.close()


async def stream_messages(admin: NATS) -> dict[str, int]:
    js = admin.jetstream(domain=WX)
    return {
        s.name: (await js.stream_info(s.name)).state.messages
        for s in streams.region_streams(WX)
        if s.name is not None
    }


async def test_unauthenticated_client_is_refused_by_a_regions_nats_server(
    topology: Topology, raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """No credentials, an NKey the region does not know, or the region's *hub-link* seed (a user of
    the hub, not of the region's client port): each refused by name, with nats-py as with a raw
    client, and the connection closed."""
    anonymous = await raw(None)
    assert anonymous.errors == ["-ERR 'Authorization Violation'"] and anonymous.closed
    once = {"connect_timeout": 5, "allow_reconnect": False, "max_reconnect_attempts": 0}
    for creds in (
        {},
        {"nkeys_seed_str": natsroles.new_user_seed().decode()},
        {"nkeys_seed_str": topology.secrets.seed(WX).decode()},
    ):
        with pytest.raises(nats.errors.Error, match=r"^nats: 'Authorization Violation'$"):
            await nats.connect(topology.url(WX), **creds, **once)  # type: ignore[arg-type]
    log = (topology.leaves[WX].workdir / f"leaf-{WX}.log").read_text()
    assert "authentication error" in log.lower()


@pytest.mark.parametrize(
    "subject",
    [
        f"$JS.{WX}.API.STREAM.DELETE.IN_{WX}",  # delete the inbound stream
        f"$JS.API.STREAM.DELETE.IN_{WX}",  # the same, domain-less
        f"$JS.{WX}.API.STREAM.PURGE.OUT_{WX}",  # empty its own store and forward
        f"$JS.{WX}.API.STREAM.MSG.GET.IN_{WX}",  # read a request meant for the connector
        f"$JS.{WX}.API.CONSUMER.CREATE.IN_{WX}",  # or consume them
        f"$JS.{WX}.API.CONSUMER.DURABLE.CREATE.IN_{WX}.connector",  # as the connectors do
        f"$JS.{WX}.API.STREAM.MSG.GET.DLQ_{WX}",  # read dead letters
        f"$JS.{WX}.API.STREAM.MSG.DELETE.DLQ_{WX}",
        f"$JS.{WX}.API.CONSUMER.DELETE.IN_{WX}.connector",  # stop the connectors' consumer
        f"$JS.{WX}.API.STREAM.NAMES",  # survey the account
        f"$JS.{QD}.API.STREAM.INFO.IN_{QD}",  # another domain
        subjects.dlq_subject(WX, SVC),  # forge a dead letter
        subjects.outbound_filter(WX, subjects.OutKind.EVENT).replace(">", f"{SZ}.{SVC}.m1"),  # an event
    ],
)
async def test_gateway_user_cannot_read_delete_or_manage_streams_it_does_not_use(
    raw: Callable[..., Awaitable[RawClient]], wuxi_streams: NATS, subject: str
) -> None:
    """Wuxi's gateway user: JetStream API calls on streams and consumers that are not its own work
    are refused by name; every stream keeps its messages."""
    before = await stream_messages(wuxi_streams)
    gateway = await raw(NatsRole.GATEWAY)
    await gateway.pub(subject)
    assert gateway.errors == [pub_violation(subject)]
    assert not gateway.closed
    assert (
        await stream_messages(wuxi_streams)
        == before
        == {
            f"IN_{WX}": 1,
            f"OUT_{WX}": 0,
            f"EVT_{WX}": 0,
            f"DLQ_{WX}": 1,
        }
    )


@pytest.mark.parametrize(
    "subject",
    [
        subjects.rpc_wildcard(WX),  # Query requests to its region's connectors
        subjects.request_wildcard(WX),  # durable requests as they are stored
        f"{subjects.client_inbox_prefix(WX, NatsRole.CONNECTOR.value)}.>",  # another role's replies
        f"{subjects.inbox_prefix(WX)}.>",  # every reply of the region
        f"$JS.{WX}.API.>",  # the JetStream API's requests
        ">",
    ],
)
async def test_gateway_user_cannot_listen_where_it_does_not_work(
    raw: Callable[..., Awaitable[RawClient]], subject: str
) -> None:
    gateway = await raw(NatsRole.GATEWAY)
    await gateway.sub(subject)
    assert gateway.errors == [sub_violation(subject)]


@pytest.mark.parametrize(
    "subject",
    [
        subjects.rpc_subject(SZ, SVC),  # Query requests: a gateway's
        subjects.ping_subject(SZ),
        subjects.request_subject(WX, SVC),  # inject a request into its own inbound stream
        subjects.request_subject(SZ, SVC),  # or another region's (a gateway's forwarder's)
        subjects.outbound_filter(WX, subjects.OutKind.REQUEST).replace(">", f"{SZ}.{SVC}.m1"),
        subjects.checkpoint_subject(SZ, WX),  # checkpoints: the gateway's
        subjects.ledger_proof_subject(SZ),
        subjects.case_notify_subject(WX),
        f"{subjects.inbox_prefix(SZ)}.answer",  # an unsolicited "reply"
        f"$JS.{WX}.API.STREAM.DELETE.DLQ_{WX}",
        f"$JS.{WX}.API.STREAM.PURGE.IN_{WX}",
        f"$JS.{WX}.API.STREAM.MSG.DELETE.IN_{WX}",
        f"$JS.{WX}.API.CONSUMER.DURABLE.CREATE.EVT_{WX}.gateway-events",  # the gateway's consumer
        f"$JS.{WX}.API.STREAM.MSG.GET.OUT_{WX}",
    ],
)
async def test_connector_user_cannot_publish_where_it_should_not(
    raw: Callable[..., Awaitable[RawClient]], wuxi_streams: NATS, subject: str
) -> None:
    """Wuxi's connector user sends answers, events, dead letters and its own consumers' calls:
    anything else is refused by name, and nothing changed in the streams."""
    before = await stream_messages(wuxi_streams)
    connector = await raw(NatsRole.CONNECTOR)
    await connector.pub(subject)
    assert connector.errors == [pub_violation(subject)]
    assert await stream_messages(wuxi_streams) == before


async def test_connector_user_answers_only_what_it_was_asked(
    topology: Topology, raw: Callable[..., Awaitable[RawClient]]
) -> None:
    """``allow_responses``: a connector may answer a request it received (once), on the request's
    reply subject in another region's inbox; an answer to nothing is refused."""
    connector = await raw(NatsRole.CONNECTOR)
    await connector.sub(subjects.rpc_wildcard(WX))
    shenzhen = await topology.connect(SZ, NatsRole.GATEWAY)
    try:
        await wait_for_interest(shenzhen, subjects.rpc_subject(WX, SVC))
        asked = asyncio.ensure_future(shenzhen.request(subjects.rpc_subject(WX, SVC), b"q", timeout=5))
        reply = await read_request(connector)
        assert reply.startswith(f"{subjects.client_inbox_prefix(SZ, NatsRole.GATEWAY.value)}.")
        await connector.pub(reply, b"answer")
        assert (await asked).data == b"answer" and connector.errors == []
        await connector.pub(reply, b"again")  # one answer per request
        assert connector.errors == [pub_violation(reply)]
    finally:
        await shenzhen.close()


async def wait_for_interest(nc: NATS, subject: str) -> None:
    """Until a request on ``subject`` would find a responder through the hub (no reply needed:
    NoResponders means no interest yet, a timeout means someone got it)."""

    async def arrived() -> bool:
        try:
            await nc.request(subject, b"probe", timeout=0.2)
        except nats.errors.NoRespondersError:
            return False
        except nats.errors.TimeoutError:
            return True
        return True

    await eventually(arrived, what=f"interest in {subject}")


async def read_request(client: RawClient) -> str:
    """The reply subject of the next real request (not a probe) ``client`` receives."""
    while True:
        raw = await asyncio.wait_for(client.reader.readline(), READ_TIMEOUT)
        line = raw.decode().rstrip("\r\n")
        if line == "PING":
            client.writer.write(b"PONG\r\n")
            continue
        if not line.startswith(("MSG ", "HMSG ")):
            continue
        parts = line.split()
        payload = await asyncio.wait_for(client.reader.readexactly(int(parts[-1]) + 2), READ_TIMEOUT)
        if payload[:-2].endswith(b"q"):
            return parts[3]


async def test_operator_user_does_its_admin_work_and_no_more(
    topology: Topology, raw: Callable[..., Awaitable[RawClient]], wuxi_streams: NATS
) -> None:
    """Wuxi's operator user, through tongban's own code paths: sees every stream, lists and replays
    the dead letter (back into IN_), publishes a registry into the region's bucket. It may not
    delete a stream, read a request, or consume the inbound stream."""
    op = await topology.connect(WX, NatsRole.OPERATOR)
    try:
        assert await stream_messages(op) == {f"IN_{WX}": 1, f"OUT_{WX}": 0, f"EVT_{WX}": 0, f"DLQ_{WX}": 1}
        (dead,) = await dlq.list_dead_letters(op, WX)
        assert (dead.message_id, dead.reason, dead.attempts) == ("m-dead", "BACKEND_FAILED", 5)
        await dlq.replay(op, WX, dead.seq)
        assert await dlq.list_dead_letters(op, WX) == []
        assert await stream_messages(op) == {f"IN_{WX}": 2, f"OUT_{WX}": 0, f"EVT_{WX}": 0, f"DLQ_{WX}": 0}
        assert await live_registry.publish(op, WX, b"a registry document") >= 1
    finally:
        await op.close()
    operator = await raw(NatsRole.OPERATOR)
    refused = [
        f"$JS.{WX}.API.STREAM.DELETE.IN_{WX}",
        f"$JS.{WX}.API.STREAM.MSG.GET.IN_{WX}",
        f"$JS.{WX}.API.CONSUMER.DURABLE.CREATE.IN_{WX}.connector",
        subjects.rpc_subject(SZ, SVC),
    ]
    for subject in refused:
        await operator.pub(subject)
    assert operator.errors == [pub_violation(s) for s in refused]
    assert await stream_messages(wuxi_streams) == {
        f"IN_{WX}": 2,
        f"OUT_{WX}": 0,
        f"EVT_{WX}": 0,
        f"DLQ_{WX}": 0,
    }


def test_a_process_refuses_to_connect_without_a_usable_seed(tmp_path: Path) -> None:
    """No anonymous fallback: a role without a seed, a seed others can read, or something that is
    not an NKey user seed stops the process before it dials (ConfigError, named)."""
    seed = tmp_path / "gateway.nk"
    seed.write_bytes(natsroles.new_user_seed())
    cfg = Config(region=RegionConfig(code=WX))
    with pytest.raises(ConfigError, match=r"^\[nats\] gateway_nkey_seed is not set"):
        nats_seed_file(cfg, NatsRole.GATEWAY)
    cfg.nats.gateway_nkey_seed = str(seed)
    seed.chmod(0o644)
    with pytest.raises(ConfigError, match=r"is readable by others: chmod 600 it$"):
        nats_seed_file(cfg, NatsRole.GATEWAY)
    seed.chmod(0o600)
    assert nats_seed_file(cfg, NatsRole.GATEWAY) == seed
    seed.write_bytes(b"SUnot-a-seed")
    with pytest.raises(ConfigError, match=r"^not a valid NKey seed$"):
        nats_seed_file(cfg, NatsRole.GATEWAY)


async def test_each_process_role_logs_in_as_its_own_user(topology: Topology, tmp_path: Path) -> None:
    """``connect_nats`` with the dev state's config: each role is its own NKey user on Wuxi's leaf
    (the server's connection list names them), with its own inbox prefix; the admin is no process
    role."""
    state = init_state(
        tmp_path / "state",
        {WX: "无锡市"},
        nats_urls={WX: topology.url(WX)},
        nats_seeds=topology.client_seeds(),
    )
    cfg = Config.load(state.config_path(WX))
    conns = {
        role: await connect_nats(cfg, role=role, name=f"t-{role.value}") for role in natsroles.PROCESS_ROLES
    }
    try:
        connz = (await asyncio.to_thread(connections, topology, WX))["connections"]
        users = {c.get("name"): c.get("authorized_user") for c in connz}
        keys = topology.secrets.client_public_keys(WX)
        for role, nc in conns.items():
            assert users[f"t-{role.value}"] == keys[role]
            assert nc.new_inbox().startswith(f"_INBOX_{WX}.{role.value}.")
        with pytest.raises(ConfigError, match="admin is not a process role"):
            await connect_nats(cfg, role=NatsRole.ADMIN, name="t-admin")
    finally:
        for nc in conns.values():
            await nc.close()


async def test_a_process_whose_nkey_the_region_does_not_know_stops_at_once(
    topology: Topology, tmp_path: Path
) -> None:
    """A valid seed the region's authorization does not list: the server refuses it by name and
    ``connect_nats`` fails at once with a ConfigError naming the role (nats-py alone would retry
    for ever), leaving no connection behind."""
    seed = tmp_path / "gateway.nk"
    seed.write_bytes(natsroles.new_user_seed())
    seed.chmod(0o600)
    cfg = Config(region=RegionConfig(code=WX))
    cfg.nats.servers = [topology.url(WX)]
    cfg.nats.gateway_nkey_seed = str(seed)
    with pytest.raises(ConfigError, match=r"^the nats-server refused the gateway user's NKey"):
        await asyncio.wait_for(connect_nats(cfg, role=NatsRole.GATEWAY, name="t-unknown"), READ_TIMEOUT)
    left = (await asyncio.to_thread(connections, topology, WX))["connections"]
    assert [c for c in left if c.get("name") == "t-unknown"] == []
