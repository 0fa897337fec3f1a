"""Limits a hostile or broken caller runs into: in-flight RPCs per connection, per partner over all
its connections and on the whole gateway (health never starved), idle and half-open connections
closed, envelope size at the providing connector. (Message size at the gateway and the per-partner
rate: test_envelope_refusals, test_rate_limit.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from connectors.demo.backends import DemoBackend, demo_adapters
from ledger import Event
from tests.conftest import SZ, WX, Pki, Stack, start_stack, stop_stack
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import pension
from tests.e2e.tamper import craft, send
from tests.e2e.test_case_progress import AcceptingBackend
from tests.e2e.test_outcomes import SlowAdapter
from tests.helpers import eventually, note
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

PENSION = "SBJFJLCX0001"


@pytest.fixture
async def slow_two_streams(topology: Topology, state: DevState) -> AsyncIterator[tuple[Stack, SlowAdapter]]:
    adapter = SlowAdapter()
    stack = await start_stack(
        topology,
        state,
        adapters={WX: {PENSION: adapter}},  # type: ignore[dict-item]
        config={"gateway": {"max_in_flight_per_connection": 2}},
    )
    yield stack, adapter
    adapter.release.set()
    await stop_stack(stack)


async def test_in_flight_requests_per_connection_are_bounded(
    slow_two_streams: tuple[Stack, SlowAdapter],
) -> None:
    """Two slow calls fill a connection's bound of two: a third call on that connection is refused
    at once with RetryInfo, while another connection is served; once the two end, so is the first."""
    stack, adapter = slow_two_streams
    address = stack.nodes[SZ].address
    own = [("grpc.use_local_subchannel_pool", 1)]  # two channels, two connections (no shared subchannel)
    async with (
        grpc.aio.insecure_channel(address, options=own) as first,
        grpc.aio.insecure_channel(address, options=own) as second,
    ):
        busy = exchange_pb2_grpc.ExchangeStub(first)
        calls = [asyncio.ensure_future(busy.Query(pension(), timeout=20)) for _ in range(2)]
        await eventually(lambda: stack.nodes[WX].backend_calls() == 2, what="two calls at the back end")
        probe = exchange_pb2.GetCaseRequest(case_no="KS440300000000000000")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await busy.GetCase(probe, timeout=5)
        d = details_of(err.value)
        assert (d.code, d.reason, d.retry) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_IN_FLIGHT", True)
        assert d.message == "2 calls are already in flight on this connection (at most 2)"
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await exchange_pb2_grpc.ExchangeStub(second).GetCase(probe, timeout=5)
        assert other.value.code() == grpc.StatusCode.NOT_FOUND  # served: the bound is per connection
        adapter.release.set()
        for answer in await asyncio.gather(*calls):
            assert answer.data["status"] == "late"
        with pytest.raises(grpc.aio.AioRpcError) as freed:
            await busy.GetCase(probe, timeout=5)
        assert freed.value.code() == grpc.StatusCode.NOT_FOUND
    # The two served queries and nothing else: a refused call is not a request in the ledger.
    events = sorted(e.event.name for e in await stack.nodes[SZ].ledger.entries())
    assert events == ["RESPONDED", "RESPONDED", "SUBMITTED", "SUBMITTED"]


def _with_unknown_field(data: bytes, size: int) -> bytes:
    """``data`` plus an unknown length-delimited field 15 of ``size`` bytes: still a valid,
    validly signed envelope to a protobuf parser (signatures cover header and body only)."""
    n, length = size, bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        length.append(byte | (0x80 if n else 0))
        if not n:
            break
    return data + bytes([15 << 3 | 2]) + bytes(length) + b"\0" * size


async def test_oversized_envelope_is_refused_unread_by_the_connector(stack: Stack) -> None:
    wx = stack.nodes[WX]
    limit = wx.cfg.connector.max_envelope_bytes
    data = _with_unknown_field(craft(stack).data, limit + 1)
    assert len(data) < 4 << 20  # under NATS max_payload: only the connector's own limit stops it
    problem = await send(stack, data)
    assert (problem.reason, problem.code) == (
        "ENVELOPE_TOO_LARGE",
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    )
    assert problem.message == f"envelope of {len(data)} bytes is over the limit of {limit}"
    assert [(e.event, note(e)) for e in await wx.ledger.entries()] == [(Event.REJECTED, "ENVELOPE_TOO_LARGE")]
    assert wx.backend_calls() == 0
    # The same envelope without the padding is served: the padding alone made the difference.
    assert (await stack.stub(SZ).Query(pension(), timeout=10)).responder_region == WX


TOKENS = {"szgov-ywtb": "dev-token-a-0123456789abcdef", "szgov-other": "dev-token-b-0123456789abcdef"}
STREAMS_PER_PARTNER = 256  # the default of [gateway] max_streams_per_partner
OWN = [("grpc.use_local_subchannel_pool", 1)]
"""A channel with this option makes its own connection (no subchannel shared with other channels)."""


def bearer(system: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[system]}"),)


@pytest.fixture
async def two_partners(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    """Two partner systems (dev tokens); Wuxi accepts cases and decides later, so watches stay open.
    The gateway-wide bound leaves room for the first partner's streams and two more calls."""
    wx = Config.load(state.config_path(WX))
    backends = {**demo_adapters(DemoBackend(wx.path(wx.connector.demo_db))), CASE_SERVICE: AcceptingBackend()}
    stack = await start_stack(
        topology,
        state,
        adapters={WX: backends},  # type: ignore[dict-item]
        config={
            "gateway": {
                "dev_tokens": [f"{system}:{token}" for system, token in TOKENS.items()],
                "max_concurrent_rpcs": STREAMS_PER_PARTNER + 2,
            }
        },
    )
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def health_check(address: str) -> int:
    """One gRPC health Check of the overall status, on a connection of its own."""
    async with grpc.aio.insecure_channel(address, options=OWN) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status


async def test_one_partner_with_1100_streams_starves_neither_health_nor_other_partners(
    two_partners: Stack,
) -> None:
    """Finding 5: 1,100 WatchCase streams from one partner over 12 connections: 256 open (its bound
    over all its connections), the rest refused RESOURCE_EXHAUSTED ``PARTNER_TOO_MANY_STREAMS`` with
    RetryInfo; meanwhile health says SERVING, and the second partner's Query and watch are served.
    With the gateway-wide bound reached too, a further call is refused ``GATEWAY_BUSY`` and health
    Check still answers. Once the streams end, nothing is left counted."""
    stack = two_partners
    node = stack.nodes[SZ]
    gateway = node.gateway
    assert gateway is not None and gateway.interceptor is not None
    calls = gateway.interceptor.calls
    address = node.address
    a, b = "szgov-ywtb", "szgov-other"
    channels = [grpc.aio.insecure_channel(address, options=OWN) for _ in range(12)]
    other = grpc.aio.insecure_channel(address, options=OWN)
    streams: list[grpc.aio.UnaryStreamCall] = []  # type: ignore[type-arg]
    try:
        stubs = [exchange_pb2_grpc.ExchangeStub(ch) for ch in channels]
        submitted = await stubs[0].Submit(submit_request(key="limits-a"), timeout=10, metadata=bearer(a))
        case_a = submitted.case_no
        other_stub = exchange_pb2_grpc.ExchangeStub(other)
        case_b = (
            await other_stub.Submit(submit_request(key="limits-b"), timeout=10, metadata=bearer(b))
        ).case_no

        async def open_watch(i: int) -> str:
            call = stubs[i % len(stubs)].WatchCase(
                exchange_pb2.WatchCaseRequest(case_no=case_a), timeout=120, metadata=bearer(a)
            )
            streams.append(call)
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as err:
                d = details_of(err)
                return f"{d.code.name} {d.reason} retry={d.retry}"
            return "open" if isinstance(first, exchange_pb2.WatchCaseResponse) else f"ended {first!r}"

        with capture_logs() as logs:
            outcomes = Counter(await asyncio.gather(*(open_watch(i) for i in range(1100))))
        refused = Counter(e["reason"] for e in logs if e["event"] == "rpc.refused")
        print("1100 streams of one partner, client side:", dict(outcomes), "gateway refusals:", dict(refused))
        limited = "RESOURCE_EXHAUSTED PARTNER_TOO_MANY_STREAMS retry=True"
        cancelled = "CANCELLED  retry=False"
        assert outcomes["open"] == STREAMS_PER_PARTNER
        # Every other call that reached the gateway was refused with the reason and RetryInfo. A
        # burst of streams also has a few cancelled by grpc core before any handler runs (bare
        # grpc.aio does the same: 0-6 in 1,100): they never reached the gateway.
        assert refused == {"PARTNER_TOO_MANY_STREAMS": outcomes[limited]}
        assert set(outcomes) <= {"open", limited, cancelled} and outcomes[cancelled] < 0.02 * 1100
        assert calls.held(a) == (0, STREAMS_PER_PARTNER)

        # The load balancer's view, and the other partner: served.
        assert await health_check(address) == health_pb2.HealthCheckResponse.SERVING
        answer = await other_stub.Query(pension(), timeout=10, metadata=bearer(b))
        assert answer.responder_region == WX
        watch_b = other_stub.WatchCase(
            exchange_pb2.WatchCaseRequest(case_no=case_b), timeout=120, metadata=bearer(b)
        )
        streams.append(watch_b)
        assert isinstance(await watch_b.read(), exchange_pb2.WatchCaseResponse)
        second_b = other_stub.WatchCase(
            exchange_pb2.WatchCaseRequest(case_no=case_b), timeout=120, metadata=bearer(b)
        )
        streams.append(second_b)
        assert isinstance(await second_b.read(), exchange_pb2.WatchCaseResponse)
        assert calls.total == STREAMS_PER_PARTNER + 2  # the gateway-wide bound, reached

        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await other_stub.Query(pension(), timeout=10, metadata=bearer(b))
        d = details_of(busy.value)
        assert (d.code, d.reason, d.retry) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "GATEWAY_BUSY", True)
        assert await health_check(address) == health_pb2.HealthCheckResponse.SERVING
    finally:
        for call in streams:
            call.cancel()
        for ch in (*channels, other):
            await ch.close()
    await eventually(lambda: calls.total == 0, what="every stream uncounted once it ended")
    assert calls.held(a) == calls.held(b) == (0, 0)


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
"""The client connection preface and an empty SETTINGS frame: an HTTP/2 connection, then silence."""


def established_to(port: int) -> int:
    """Server-side TCP connections of this host on ``port`` (the kernel's table, not the client's
    view: a socket the gateway still holds open counts)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # a dual-stack listener's are in tcp6
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rpartition(":")[2], 16) == port and state == "01":
                count += 1
    return count


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Read until the server closes the socket (EOF or reset); anything it sends first is ignored."""
    try:
        while await reader.read(4096):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
async def idle_stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    stack = await start_stack(topology, state, config={"gateway": {"max_connection_idle_s": 2.0}})
    try:
        yield stack
    finally:
        await stop_stack(stack)


async def test_idle_and_silent_connections_are_closed(idle_stack: Stack) -> None:
    """Finding 6: 200 raw TCP sockets that never speak, 200 that open HTTP/2 and go silent and 10
    gRPC channels whose call ended: the gateway closes every one after ``max_connection_idle_s``
    (the sockets read EOF, the kernel holds no connection to the port, the channels go IDLE), and a
    channel's next call simply reconnects."""
    node = idle_stack.nodes[SZ]
    port = node.gateway.port if node.gateway else 0
    sockets = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(400)))
    for _, writer in sockets[200:]:
        writer.write(HTTP2_PREFACE)
    opened = established_to(port)  # well within the idle time: every socket is still open
    assert opened == 400
    channels = [grpc.aio.insecure_channel(node.address, options=OWN) for _ in range(10)]
    try:
        for ch in channels:
            assert await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert ch.get_state() == grpc.ChannelConnectivity.READY
        closed = await asyncio.wait_for(
            asyncio.gather(*(closed_by_server(reader) for reader, _ in sockets)), timeout=30
        )
        assert all(closed)

        def channels_idle() -> bool:
            return all(ch.get_state() == grpc.ChannelConnectivity.IDLE for ch in channels)

        await eventually(channels_idle, what="every channel's connection closed by the gateway")
        await eventually(lambda: established_to(port) == 0, what="no connection left on the gateway")
        print(f"connections to the gateway: {opened} sockets + 10 channels open, none after the idle time")
        stub = health_pb2_grpc.HealthStub(channels[0])
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING  # reconnected on demand
    finally:
        for _, writer in sockets:
            writer.close()
        for ch in channels:
            await ch.close()


async def test_an_unfinished_tls_handshake_is_closed(topology: Topology, state: DevState, pki: Pki) -> None:
    """Under mutual TLS a silent socket never gets as far as an HTTP/2 connection, so no idle timer
    runs for it: ``handshake_timeout_s`` closes it (gRPC's own default would keep it 120 s)."""
    gateway = {
        "dev_mode": False,
        "tls_cert": str(pki.dir / "gateway.crt"),
        "tls_key": str(pki.dir / "gateway.key"),
        "client_ca": str(pki.dir / "ca.crt"),
        "handshake_timeout_s": 1.0,
        "max_connection_idle_s": 3600.0,
    }
    stack = await start_stack(topology, state, config={"gateway": gateway})
    sockets: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        port = stack.nodes[SZ].gateway.port if stack.nodes[SZ].gateway else 0
        sockets = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(100)))
        closed = await asyncio.wait_for(
            asyncio.gather(*(closed_by_server(reader) for reader, _ in sockets)), timeout=30
        )
        assert all(closed)
        await eventually(lambda: established_to(port) == 0, what="no half-open connection left")
    finally:
        for _, writer in sockets:
            writer.close()
        await stop_stack(stack)


async def test_a_client_that_pings_too_often_is_disconnected(stack: Stack) -> None:
    """Pings enforced: a client sending keepalive pings every 100 ms with no call open (a cheap way to
    keep the gateway busy) gets GOAWAY after ``max_ping_strikes`` (2) pings closer than
    ``min_client_ping_interval_s`` (30 s); a well-behaved client on the same gateway keeps its
    connection, and the offender's next call reconnects."""
    address = stack.nodes[SZ].address
    pinging = grpc.aio.insecure_channel(
        address,
        options=[
            *OWN,
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    polite = grpc.aio.insecure_channel(address, options=OWN)
    try:
        for ch in (pinging, polite):
            assert await health_check_on(ch) == health_pb2.HealthCheckResponse.SERVING
        await eventually(
            lambda: pinging.get_state() != grpc.ChannelConnectivity.READY,
            timeout=15,
            what="the pinging client's connection closed by the gateway",
        )
        assert polite.get_state() == grpc.ChannelConnectivity.READY
        assert await health_check_on(pinging) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await pinging.close()
        await polite.close()


async def health_check_on(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(answer.status)
