"""A stack whose gateways and connectors have metrics and operator endpoints, as their processes
would (``gateway/app.py``, ``connectors/app.py``: :class:`tongban.runtime.monitor.ComponentMonitor`), and
helpers to read the endpoints over real HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from connectors.adapters import Adapter
from connectors.demo.backends import DemoBackend, demo_adapters
from tests.conftest import SZ, WX, Stack, start_stack, stop_stack
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.runtime.monitor import ComponentMonitor

METRICS_CONFIG = {
    "gateway_listen": "127.0.0.1:0",
    "gateway_port_file": "gateway-metrics.port",
    "connector_listen": "127.0.0.1:0",
    "connector_port_file": "connector-metrics.port",
    "ledger_sample_s": 0.05,
}


@dataclass
class Metered:
    """A stack whose components have metrics, and ways to read their endpoints."""

    stack: Stack

    @property
    def monitors(self) -> dict[tuple[str, str], ComponentMonitor]:
        """The monitor of each (region, role)."""
        return {(n.region, role): m for n in self.stack.nodes.values() for role, m in n.monitors.items()}

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
    """``tests.conftest.start_stack`` with metrics and operator endpoints on port 0; ``adapters``
    replace single demo back ends (the others stay)."""
    merged: dict[str, dict[str, Adapter]] = {}
    for region in serving:
        cfg = Config.load(state.config_path(region))
        merged[region] = {
            **demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db))),
            **(adapters or {}).get(region, {}),
        }
    stack = await start_stack(
        topology,
        state,
        serving=serving,
        adapters=merged,
        catalogue=catalogue,
        config={"metrics": METRICS_CONFIG},
        metered=True,
    )
    return Metered(stack)


async def stop_metered_stack(metered: Metered) -> None:
    await stop_stack(metered.stack)


def readyz(body: str) -> dict[str, Any]:
    checks: dict[str, Any] = json.loads(body)
    return checks
