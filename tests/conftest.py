"""Fixture chain for tests that run real parts: nats-server topology → dev trust domain → stack.

``topology`` starts a real hub and one leaf nats-server per region on random loopback ports;
``state`` writes keys, a root-signed registry and configs into a temp dir; ``stack`` runs, in this
process, one gateway (real grpc.aio server on port 0) and one connector per serving region, each
with its own SQLite ledger file, and waits until requests cross between regions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from hypothesis import settings
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from connectors.adapters import Adapter
from connectors.demo.backends import DemoBackend, demo_adapters
from connectors.runtime import Connector
from gateway.server import Gateway
from ledger import LedgerStore
from tests.adapters import CountingAdapter
from tests.helpers import eventually
from tongban.core import subjects
from tongban.core.catalogue import Catalogue
from tongban.core.registry import Registry, sign_registry
from tongban.ops.devstate import DevState, init_state
from tongban.ops.natsserver import Topology
from tongban.runtime import certs
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import Config
from tongban.runtime.ledgers import store_for
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.monitor import ComponentMonitor, monitor_component
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import load_registry
from tongban.v1 import exchange_pb2_grpc, registry_pb2

SZ, WX, QD = "440300", "320200", "370200"

# `make fuzz`: the property tests of tests/security with many more examples.
settings.register_profile("fuzz", max_examples=20_000)
REGIONS = {SZ: "深圳市", WX: "无锡市", QD: "青岛市"}


@pytest.fixture(scope="session", autouse=True)
def tracer_provider() -> Iterator[TracerProvider]:
    """A real SDK provider (no exporter) so spans carry trace ids through the whole flow."""
    provider = TracerProvider()
    trace.set_tracer_provider(provider)
    yield provider


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    async with Topology(tmp_path / "nats", list(REGIONS)) as topo:
        yield topo


@pytest.fixture
def state(tmp_path: Path, topology: Topology) -> DevState:
    return init_state(
        tmp_path / "state",
        REGIONS,
        nats_urls={r: topology.url(r) for r in REGIONS},
        nats_seeds=topology.client_seeds(),
    )


@dataclass
class Node:
    """One region's in-process gateway and connector with their ledger."""

    region: str
    cfg: Config
    ledger: LedgerStore
    gateway: Gateway | None = None
    connector: Connector | None = None
    adapters: dict[str, CountingAdapter] = field(default_factory=dict)
    monitors: dict[str, ComponentMonitor] = field(default_factory=dict)
    """Per role, when the stack runs with metrics: the operator endpoint and its sources."""

    @property
    def address(self) -> str:
        assert self.gateway is not None
        return f"127.0.0.1:{self.gateway.port}"

    def backend_calls(self) -> int:
        return sum(a.total for a in self.adapters.values())


@dataclass
class Stack:
    nodes: dict[str, Node]
    topology: Topology
    state: DevState
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def stub(self, region: str) -> exchange_pb2_grpc.ExchangeStub:
        ch = grpc.aio.insecure_channel(self.nodes[region].address)
        self.channels.append(ch)
        return exchange_pb2_grpc.ExchangeStub(ch)

    async def nats(self, region: str, role: NatsRole = NatsRole.ADMIN) -> NATS:
        """A test's own client of ``region``'s nats-server: the admin (every subject: tests forge,
        spy and probe) unless a process ``role`` is asked for."""
        return await self.topology.connect(region, role)


async def start_stack(
    topology: Topology,
    state: DevState,
    *,
    serving: tuple[str, ...] = (SZ, WX),
    adapters: dict[str, dict[str, Adapter]] | None = None,
    catalogue: Catalogue | None = None,
    config: dict[str, dict[str, Any]] | None = None,
    metered: bool = False,
) -> Stack:
    """Gateway + connector for every region in ``serving`` (other regions are in the registry only).

    ``config`` overrides settings of every node (``{"connector": {"ack_wait_s": 1.0}}``). ``metered``:
    each gateway and connector has its metrics and operator endpoint, wired as its process wires them
    (configure ``[metrics]`` through ``config``).
    """
    catalogue = catalogue or Catalogue.load()
    nodes: dict[str, Node] = {}
    for region in serving:
        cfg = Config.load(state.config_path(region))
        for section, values in (config or {}).items():
            for key, value in values.items():
                setattr(getattr(cfg, section), key, value)
        ledger = store_for(cfg)
        await ledger.open()
        node = Node(region, cfg, ledger)
        nodes[region] = node
        base = (adapters or {}).get(region) or demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))
        node.adapters = {code: CountingAdapter(a) for code, a in base.items()}
        # Gateway and connector each load their own registry and keys, as their processes would.
        registry = load_registry(cfg)
        metrics = Metrics("connector", region, services=catalogue.codes()) if metered else NO_METRICS
        node.connector = Connector(
            ComponentParts.load(
                cfg, "connector", ledger, registry=registry, catalogue=catalogue, metrics=metrics
            ),
            adapters=node.adapters,
        )
        if metered:
            node.monitors["connector"] = monitor_component(
                cfg, "connector", metrics, node.connector, ledger=ledger, registry=registry
            )
            await node.monitors["connector"].start()
        await node.connector.start()
        metrics = Metrics("gateway", region, services=catalogue.codes()) if metered else NO_METRICS
        parts = ComponentParts.load(cfg, "gateway", ledger, catalogue=catalogue, metrics=metrics)
        registry = parts.registry
        node.gateway = Gateway(parts)
        if metered:
            node.monitors["gateway"] = monitor_component(
                cfg, "gateway", metrics, node.gateway, ledger=ledger, registry=registry
            )
            await node.monitors["gateway"].start()
        await node.gateway.start()
    stack = Stack(nodes, topology, state)
    # Subscription interest propagates through the hub asynchronously: wait until it has.
    for src in serving:
        nc = await stack.nats(src)
        try:
            for dst in serving:

                async def reachable(dst: str = dst, nc: NATS = nc) -> bool:
                    try:
                        await nc.request(subjects.ping_subject(dst), b"", timeout=0.5)
                        return True
                    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                        return False

                await eventually(reachable, what=f"{dst} reachable from {src}")
        finally:
            await nc.close()
    return stack


async def stop_stack(stack: Stack) -> None:
    for ch in stack.channels:
        await ch.close()

    async def stop(node: Node) -> None:
        if node.gateway:
            await node.gateway.stop()
        if node.connector:
            await node.connector.stop()
        for monitor in node.monitors.values():
            await monitor.stop()
        await node.ledger.close()

    await asyncio.gather(*(stop(n) for n in stack.nodes.values()))


@pytest.fixture
async def stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(topology, state)
    try:
        yield s
    finally:
        await stop_stack(s)


async def wait_visible(stack: Stack, owner: NATS, src: str, probe_subject: str) -> None:
    """Make ``owner`` answer ``probe_subject`` and wait until a request from ``src``'s leaf gets an
    answer: interest travels leaf → hub → leaf in order, so every subscription ``owner`` made
    before the probe is then visible from ``src`` too."""

    async def pong(msg: Any) -> None:
        await msg.respond(b"")

    await owner.subscribe(probe_subject, cb=pong)
    await owner.flush()
    nc = await stack.nats(src)

    async def answers() -> bool:
        try:
            await nc.request(probe_subject, b"", timeout=0.5)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    try:
        await eventually(answers, what=f"{probe_subject} visible from {src}")
    finally:
        await nc.close()


def resigned_registry(state: DevState, edit: Callable[[registry_pb2.TrustRegistry], None]) -> Registry:
    """The dev registry with ``edit`` applied, re-signed by the dev root key with a higher version."""
    from cryptography.hazmat.primitives import serialization

    root = serialization.load_pem_private_key((state.root / "root.key").read_bytes(), password=None)
    signed = registry_pb2.SignedRegistry.FromString((state.root / "registry.signed").read_bytes())
    doc = registry_pb2.TrustRegistry.FromString(signed.document)
    edit(doc)
    doc.version += 1
    return Registry.from_signed(sign_registry(doc, root), [root.public_key()])  # type: ignore[arg-type]


@dataclass
class Pki:
    """A test partner CA, its files in ``dir``."""

    ca: certs.Issued
    dir: Path

    def client(self, region: str = SZ, system: str = "szgov-ywtb", **kw: object) -> certs.Issued:
        return certs.issue_client(self.ca, certs.Partner(region, system), **kw)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A partner CA and a gateway server certificate (``certs/ca.crt``, ``certs/gateway.*``)."""
    ca = certs.create_ca()
    d = tmp_path / "certs"
    certs.write(ca, d, "ca")
    certs.write(certs.issue_server(ca, ["127.0.0.1", "localhost"]), d, "gateway")
    return Pki(ca, d)


@pytest.fixture
async def tls_stack(topology: Topology, state: DevState, pki: Pki) -> AsyncIterator[Stack]:
    gateway = {
        "dev_mode": False,
        "tls_cert": str(pki.dir / "gateway.crt"),
        "tls_key": str(pki.dir / "gateway.key"),
        "client_ca": str(pki.dir / "ca.crt"),
    }
    s = await start_stack(topology, state, config={"gateway": gateway})
    try:
        yield s
    finally:
        await stop_stack(s)
