"""NATS least privilege inside a region: each process role logs in as its own NKey user with only
the subjects and JetStream API calls it makes (tongban/ops/natsconfig/permissions.py
``client_permissions``); a client without a known key is refused at the region's own nats-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from tests.conftest import QD, SZ, WX
from tests.helpers import eventually, nkey_connect
from tests.security.natsprobe import READ_TIMEOUT, SVC, ProtocolLink, connections
from tongban.core import subjects
from tongban.core.errors import ConfigError
from tongban.ops import dlq
from tongban.ops.devstate import init_state
from tongban.ops.natsserver import Topology
from tongban.runtime import live_registry, natsroles, streams
from tongban.runtime.config import Config, RegionConfig
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats, nats_seed_file
from tongban.runtime.streams import ensure_streams


@dataclass
class RawClient(ProtocolLink):
    """A client of a region's leaf that speaks the protocol itself (software that tries whatever
    it likes), logged in as one NKey user."""

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
            await client.read_to_close()
        else:
            w.write(nkey_connect(info, seed_file, headers=True))
            await client.ping()
        return client

    async def pub(self, subject: str, payload: bytes = b"{}", reply: str = "") -> None:
        self.writer.write(f"PUB {subject} {reply} {len(payload)}\r\n".encode() + payload + b"\r\n")
        await self.ping()

    async def sub(self, subject: str) -> None:
        self._sid += 1
        self.writer.write(f"SUB {subject} {self._sid}\r\n".encode())
        await self.ping()


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
    delete a stream, read a request, consume the inbound stream, or put a status event of a case
    into the outbound stream (later statuses go through the connector's back-end API)."""
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
        subjects.outbound_filter(WX, subjects.OutKind.EVENT).replace(">", f"{SZ}.{SVC}.m1"),
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
