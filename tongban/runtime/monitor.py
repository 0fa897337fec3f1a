"""The operator side of one gateway or connector: its metrics' live sources, a sampler of its
ledger's size, and its operator endpoint, started and stopped together.

:func:`component_metrics` and :func:`monitor_component` are what a component's process
(:func:`tongban.runtime.component.run_component`) and the tests' stacks build it with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import structlog

from tongban.runtime.config import Config
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.operator_endpoint import OperatorEndpoint, Readiness

log = structlog.get_logger("tongban.runtime.monitor")


class LedgerSampler:
    """Reads the ledger's size every ``interval_s`` on the event loop and keeps it for the scrape
    thread (reading the store from there would block on its reader thread or need the loop).

    ``ok`` is whether the last read succeeded: the ledger is open and answering.
    """

    def __init__(self, ledger: Any, *, interval_s: float = 5.0) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.size: int | None = None
        self.ok = False
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        try:
            self.size = await self.ledger.size()
            self.ok = True
        except Exception as exc:
            if self.ok:
                log.warning("metrics.ledger_unreadable", error=type(exc).__name__)
            self.ok = False

    async def start(self) -> None:
        if self._task is None:
            await self.sample()
            self._task = asyncio.create_task(self._loop(), name="ledger-sampler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # a periodic sample: there is no event to wait on
            await self.sample()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ok = False


def component_metrics(cfg: Config, role: str, *, services: Iterable[str]) -> Metrics:
    """The metrics of a ``role`` process: real ones when its endpoint is configured, else
    :data:`NO_METRICS`. ``services``: the catalogue's codes (the only service labels)."""
    listen, _ = cfg.metrics.listen(role)
    return Metrics(role, cfg.region.code, services=services) if listen else NO_METRICS


def component_endpoint(
    cfg: Config, role: str, metrics: Metrics, readiness: Readiness, informational: Readiness = dict
) -> OperatorEndpoint | None:
    """The operator endpoint of a ``role`` process, or None when ``[metrics]`` configures none."""
    listen, port_file = cfg.metrics.listen(role)
    if not listen:
        return None
    return OperatorEndpoint(
        listen,
        metrics,
        readiness=readiness,
        port_file=cfg.path(port_file) if port_file else None,
        informational=informational,
    )


class ComponentMonitor:
    """The operator side of one gateway or connector: its gauges' sources, the ledger sampler and
    the endpoint. ``start()`` after the ledger is open (the endpoint answers ``/livez`` and a 503
    ``/readyz`` while the component itself is still starting); ``stop()`` after the component.

    Args:
        readiness: the component's own checks. When they hold no ``ledger`` check, the sampler's
            (its last read of the ledger succeeded) is added; a component that probes its ledger
            itself (the gateway, for gRPC health) keeps its own, so ``/readyz`` and gRPC health
            agree and the ledger has one probe per component.
        nats_connected: read at each scrape (the component's connection may come and go).
        informational: checks ``/readyz`` shows without requiring them (see :data:`NOT_REQUIRED`).
    """

    def __init__(
        self,
        cfg: Config,
        role: str,
        metrics: Metrics,
        *,
        ledger: Any,
        registry: Any,
        nats_connected: Callable[[], bool],
        readiness: Readiness,
        informational: Readiness = dict,
    ) -> None:
        self.metrics = metrics
        self.sampler = LedgerSampler(ledger, interval_s=cfg.metrics.ledger_sample_s)
        self._readiness = readiness
        metrics.observe(
            nats_connected=nats_connected,
            registry_version=lambda: int(registry.version),
            ledger_entries=lambda: self.sampler.size,
        )
        self.endpoint = component_endpoint(cfg, role, metrics, self.ready, informational)

    def ready(self) -> Mapping[str, bool]:
        """The component's readiness checks, with the sampler's ``ledger`` check unless it has its own."""
        checks = dict(self._readiness())
        if "ledger" not in checks:
            checks["ledger"] = self.sampler.ok
        return checks

    @property
    def port(self) -> int:
        """The endpoint's bound port (0 when there is none)."""
        return self.endpoint.port if self.endpoint is not None else 0

    async def start(self) -> None:
        if self.endpoint is None:
            return
        await self.sampler.start()
        await self.endpoint.start()

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.sampler.stop()
        self.metrics.shutdown()

    async def __aenter__(self) -> ComponentMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Monitored(Protocol):
    """What :func:`monitor_component` reads of a gateway or connector."""

    @property
    def nc(self) -> Any: ...

    def readiness(self) -> Mapping[str, bool]: ...


@runtime_checkable
class Informative(Protocol):
    """A component with checks to show beside its readiness, not required for it (the gateway)."""

    def informational(self) -> Mapping[str, bool]: ...


def monitor_component(
    cfg: Config, role: str, metrics: Metrics, component: Monitored, *, ledger: Any, registry: Any
) -> ComponentMonitor:
    """The :class:`ComponentMonitor` of a gateway or connector: its NATS state and readiness as it
    reports them, its ledger and the live registry it follows."""
    return ComponentMonitor(
        cfg,
        role,
        metrics,
        ledger=ledger,
        registry=registry,
        nats_connected=lambda: component.nc is not None and bool(component.nc.is_connected),
        readiness=component.readiness,
        informational=component.informational if isinstance(component, Informative) else dict,
    )
