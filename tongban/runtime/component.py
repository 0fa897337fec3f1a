"""One component process (``tongban gateway``, ``tongban connector``), from its configuration to its
bounded stop.

:func:`run_component` is the whole life of such a process, written once: tracing; the trust
registry, ledger, catalogue, metrics and keys; the component built from them; its operator side
(:class:`~tongban.runtime.monitor.ComponentMonitor`); then start, serve until a signal and stop
within ``[process] grace_s`` (:func:`~tongban.runtime.process.serve_until_signal`). Logging is set
up before, by the command line that loaded the configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from ledger import LedgerStore
from tongban.core.catalogue import Catalogue
from tongban.core.registry import Registry
from tongban.runtime.config import Config
from tongban.runtime.ledgers import store_for
from tongban.runtime.live_catalogue import load_catalogue
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.monitor import ComponentMonitor, Monitored, component_metrics, monitor_component
from tongban.runtime.node import RegionSecrets, load_registry, load_secrets
from tongban.runtime.process import serve_until_signal
from tongban.runtime.shutdown import Deadline, in_daemon_thread, within
from tongban.runtime.telemetry import configure_tracing

Role = Literal["gateway", "connector"]
"""The kinds of component a region runs (label ``role`` of their metrics)."""

TAIL_S: Final = 1.5
"""Of a process's grace, kept for what stops after its component: operator endpoint, ledger, traces."""


class Component(Monitored, Protocol):
    """A gateway or a connector, as its process starts, monitors and stops it."""

    async def start(self) -> None: ...

    async def stop(self, deadline: Deadline | None = None) -> None: ...


@dataclass(frozen=True)
class ComponentParts:
    """What a gateway or a connector is built from, loaded once by :func:`run_component`."""

    cfg: Config
    registry: Registry
    """The trust registry as loaded at start (the component follows it live from there)."""
    secrets: RegionSecrets
    """The region's keys, following ``registry``."""
    catalogue: Catalogue
    """The live catalogue (the component's watcher adopts newer revisions into it in place)."""
    ledger: LedgerStore
    """The region's ledger, not open yet: the process opens it before the component starts."""
    tracer: trace.Tracer
    """The component's tracer (instrumentation scope ``tongban.<role>``)."""
    metrics: Metrics
    """Real instruments when ``[metrics]`` gives the role an endpoint, else no-ops."""

    @classmethod
    def load(
        cls,
        cfg: Config,
        role: Role,
        ledger: LedgerStore,
        *,
        metrics: Metrics = NO_METRICS,
        catalogue: Catalogue | None = None,
        registry: Registry | None = None,
        tracer: trace.Tracer | None = None,
    ) -> ComponentParts:
        """The parts of ``cfg``'s ``role`` component: its registry (the newest of its file and cache,
        unless given) and the keys following it, its catalogue (``[catalogue] file`` or the shipped
        one, or the newer one it cached; unless given), the tracer of the global provider (unless
        given).

        Raises:
            TongbanError: the registry or the keys cannot be loaded (``ConfigError``, ``RegistryError``).
        """
        registry = registry or load_registry(cfg)
        return cls(
            cfg,
            registry=registry,
            secrets=load_secrets(cfg, registry),
            catalogue=catalogue if catalogue is not None else load_catalogue(cfg),
            ledger=ledger,
            tracer=tracer or trace.get_tracer(f"tongban.{role}"),
            metrics=metrics,
        )


async def run_component(cfg: Config, role: Role, build: Callable[[ComponentParts], Component]) -> None:
    """Run the ``role`` component that ``build`` makes from its parts until SIGINT, SIGTERM or
    SIGHUP, then stop it within ``[process] grace_s``.

    Start order: the ledger opens, then the operator endpoint (``/livez`` answers, and ``/readyz``
    says why not ready, while the component is still starting), then the component. Stop order:
    :func:`stop_component`.

    Raises:
        TongbanError: what loading the registry, keys or adapters raised (``ConfigError``,
            ``RegistryError``), before anything started; or what a failed start raised, after
            the bounded stop of what it had started.
    """
    provider = configure_tracing(
        cfg.telemetry.service_name or f"tongban-{role}",
        region=cfg.region.code,
        otlp_endpoint=cfg.telemetry.otlp_endpoint,
        otlp_ca=cfg.path(cfg.telemetry.otlp_ca).read_bytes() if cfg.telemetry.otlp_ca else None,
    )
    trace.set_tracer_provider(provider)
    ledger = store_for(cfg)
    catalogue = load_catalogue(cfg)
    metrics = component_metrics(cfg, role, services=catalogue.codes())
    parts = ComponentParts.load(
        cfg, role, ledger, metrics=metrics, catalogue=catalogue, tracer=provider.get_tracer(f"tongban.{role}")
    )
    component = build(parts)
    monitor = monitor_component(cfg, role, metrics, component, ledger=ledger, registry=parts.registry)

    async def start() -> None:
        await ledger.open()
        await monitor.start()
        await component.start()

    async def stop(deadline: Deadline) -> None:
        await stop_component(deadline, component, monitor=monitor, ledger=ledger, provider=provider)

    await serve_until_signal(start, stop, grace_s=cfg.process.grace_s)


async def stop_component(
    deadline: Deadline,
    component: Component,
    *,
    monitor: ComponentMonitor,
    ledger: LedgerStore,
    provider: TracerProvider,
) -> None:
    """A component process's stop: the component within the grace less :data:`TAIL_S`, then its
    operator endpoint, its ledger (after everything that appends) and its trace export, each within
    its share."""
    await within(component.stop(deadline.less(TAIL_S)), timeout=deadline.remaining(), what="component")
    await within(monitor.stop(), timeout=deadline.budget(0.5), what="operator endpoint")
    await ledger.close(timeout=deadline.budget(1.0))
    await in_daemon_thread(provider.shutdown, timeout=deadline.budget(1.0), what="trace export")
