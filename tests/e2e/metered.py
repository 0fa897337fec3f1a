"""A stack whose gateways and connectors have metrics and operator endpoints, as their processes
would (``gateway/app.py``, ``connectors/app.py``: :class:`tongban.metrics.ComponentMonitor`), and
helpers to read the endpoints over real HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from connectors.adapters import Adapter
from connectors.demo.backends import CountingAdapter, DemoBackend, demo_adapters
from connectors.runtime import Connector
from gateway.server import Gateway
from ledger.configured import store_for
from tests.conftest import SZ, WX, Node, Stack
from tests.helpers import eventually
from tongban import subjects
from tongban.catalogue import Catalogue
from tongban.config import Config
from tongban.devstate import DevState
from tongban.metrics import ComponentMonitor, Metrics
from tongban.natsserver import Topology
from tongban.node import load_registry, load_secrets

METRICS_CONFIG = {
    "gateway_listen": "127.0.0.1:0",
    "gateway_port_file": "gateway-metrics.port",
    "connector_listen": "127.0.0.1:0",
    "connector_port_file": "connector-metrics.port",
    "ledger_sample_s": 0.05,
}


@dataclass
class Metered:
    """A stack plus the monitor of each (region, role)."""

    stack: Stack
    monitors: dict[tuple[str, str], ComponentMonitor] = field(default_factory=dict)

    def url(self, region: str, role: str, path: str) -> str:
        return f"http://127.0.0.1:{self.monitors[region, role].port}{path}"

    async def get(self, region: str, role: str, path: str) -> tuple[int, str]:
        return await http_get(self.url(region, role, path))

    async def scrape(self, region: str, role: str) -> Scrape:
        status, text = await self.get(region, role, "/metrics")
        assert status == 200, text
        return Scrape(text)


async def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET, off the event loop (the endpoints answer from their own thread)."""

    def get() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


class Scrape:
    """One /metrics text, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples: list[Sample] = [s for f in self.families.values() for s in f.samples]

    def find(self, name: str, **labels: str) -> list[Sample]:
        return [
            s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.find(name, **labels))


async def start_metered_stack(
    topology: Topology,
    state: DevState,
    *,
    serving: tuple[str, ...] = (SZ, WX),
    adapters: dict[str, dict[str, Adapter]] | None = None,
    catalogue: Catalogue | None = None,
) -> Metered:
    """Like ``tests.conftest.start_stack``, each gateway and connector with its own metrics;
    ``adapters`` replace single demo back ends (the others stay)."""
    catalogue = catalogue or Catalogue.load()
    metered = Metered(Stack({}, topology, state))
    for region in serving:
        cfg = Config.load(state.config_path(region))
        for key, value in METRICS_CONFIG.items():
            setattr(cfg.metrics, key, value)
        ledger = store_for(cfg)
        await ledger.open()
        node = Node(region, cfg, ledger)
        metered.stack.nodes[region] = node
        base = dict(demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db))))
        base.update((adapters or {}).get(region, {}))
        node.adapters = {code: CountingAdapter(a) for code, a in base.items()}
        registry = load_registry(cfg)
        cm = Metrics("connector", region, services=catalogue.codes())
        connector = node.connector = Connector(
            cfg,
            registry=registry,
            secrets=load_secrets(cfg, registry),
            catalogue=catalogue,
            adapters=node.adapters,
            ledger=ledger,
            metrics=cm,
        )
        metered.monitors[region, "connector"] = monitor = ComponentMonitor(
            cfg,
            "connector",
            cm,
            ledger=ledger,
            registry=registry,
            nats_connected=connected(connector),
            readiness=connector.readiness,
        )
        await monitor.start()
        await connector.start()
        registry = load_registry(cfg)
        gm = Metrics("gateway", region, services=catalogue.codes())
        gateway = node.gateway = Gateway(
            cfg,
            registry=registry,
            secrets=load_secrets(cfg, registry),
            catalogue=catalogue,
            ledger=ledger,
            metrics=gm,
        )
        metered.monitors[region, "gateway"] = monitor = ComponentMonitor(
            cfg,
            "gateway",
            gm,
            ledger=ledger,
            registry=registry,
            nats_connected=connected(gateway),
            readiness=gateway.readiness,
        )
        await monitor.start()
        await gateway.start()
    await _wait_reachable(metered.stack, serving)
    return metered


def connected(component: Gateway | Connector) -> Callable[[], bool]:
    return lambda: component.nc is not None and component.nc.is_connected


async def _wait_reachable(stack: Stack, serving: tuple[str, ...]) -> None:
    """Subscription interest propagates through the hub asynchronously: wait until it has."""
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


async def stop_metered_stack(metered: Metered) -> None:
    """Components first, then their monitors, then the ledgers (as the processes stop)."""
    for ch in metered.stack.channels:
        await ch.close()

    async def stop(node: Node) -> None:
        if node.gateway:
            await node.gateway.stop()
        if node.connector:
            await node.connector.stop()
        for role in ("gateway", "connector"):
            await metered.monitors[node.region, role].stop()
        await node.ledger.close()

    await asyncio.gather(*(stop(n) for n in metered.stack.nodes.values()))


def readyz(body: str) -> dict[str, Any]:
    checks: dict[str, Any] = json.loads(body)
    return checks
