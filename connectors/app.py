"""Entry point of a connector process: config file in, serving connector out, graceful stop on signal."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from opentelemetry import trace

from connectors.adapters import Adapter
from connectors.runtime import Connector
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.config import Config
from tongban.runtime.ledgers import store_for
from tongban.runtime.monitor import component_metrics, monitor_component
from tongban.runtime.node import load_registry, load_secrets
from tongban.runtime.process import serve_until_signal, stop_node
from tongban.runtime.shutdown import Deadline
from tongban.runtime.telemetry import configure_tracing


def load_adapters(cfg: Config) -> Mapping[str, Adapter]:
    """``demo`` → the shipped demo back ends; ``module:function`` → function(cfg) → {code: Adapter}."""
    spec = cfg.connector.adapters
    if spec == "demo":
        from connectors.demo.backends import DemoBackend, demo_adapters

        return demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))
    module, _, func = spec.partition(":")
    if not module or not func:
        raise ConfigError("[connector] adapters must be 'demo' or 'module:function'")
    try:
        factory = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"[connector] adapters: cannot load {spec}") from exc
    adapters: Mapping[str, Adapter] = factory(cfg)
    return adapters


async def run(cfg: Config) -> None:
    provider = configure_tracing(
        cfg.telemetry.service_name or "tongban-connector",
        region=cfg.region.code,
        otlp_endpoint=cfg.telemetry.otlp_endpoint,
        otlp_ca=cfg.path(cfg.telemetry.otlp_ca).read_bytes() if cfg.telemetry.otlp_ca else None,
    )
    trace.set_tracer_provider(provider)
    registry = load_registry(cfg)
    ledger = store_for(cfg)
    catalogue = Catalogue.load()
    metrics = component_metrics(cfg, "connector", services=catalogue.codes())
    connector = Connector(
        cfg,
        registry=registry,
        secrets=load_secrets(cfg, registry),
        catalogue=catalogue,
        adapters=load_adapters(cfg),
        ledger=ledger,
        tracer=provider.get_tracer("tongban.connector"),
        metrics=metrics,
    )
    monitor = monitor_component(cfg, "connector", metrics, connector, ledger=ledger, registry=registry)

    async def start() -> None:
        await ledger.open()
        await monitor.start()  # /livez answers (and /readyz says why not ready) while starting
        await connector.start()

    async def stop(deadline: Deadline) -> None:
        await stop_node(deadline, connector, monitor=monitor, ledger=ledger, provider=provider)

    await serve_until_signal(start, stop, grace_s=cfg.process.grace_s)
