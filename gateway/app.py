"""Entry point of a gateway process: config file in, serving gateway out, graceful stop on signal."""

from __future__ import annotations

import structlog
from opentelemetry import trace

from gateway.server import Gateway
from tongban.core.catalogue import Catalogue
from tongban.runtime.config import Config
from tongban.runtime.ledgers import store_for
from tongban.runtime.monitor import component_metrics, monitor_component
from tongban.runtime.node import load_registry, load_secrets
from tongban.runtime.process import serve_until_signal, stop_node
from tongban.runtime.shutdown import Deadline
from tongban.runtime.telemetry import configure_tracing

log = structlog.get_logger("tongban.gateway")


async def run(cfg: Config) -> None:
    provider = configure_tracing(
        cfg.telemetry.service_name or "tongban-gateway",
        region=cfg.region.code,
        otlp_endpoint=cfg.telemetry.otlp_endpoint,
        otlp_ca=cfg.path(cfg.telemetry.otlp_ca).read_bytes() if cfg.telemetry.otlp_ca else None,
    )
    trace.set_tracer_provider(provider)
    if cfg.gateway.dev_mode:
        log.warning(
            "gateway.dev_mode",
            detail=(
                "DEV MODE: no partner authentication"
                + ("" if cfg.gateway.client_ca else ", plaintext gRPC")
                + ". Never in production."
            ),
        )
    registry = load_registry(cfg)
    ledger = store_for(cfg)
    catalogue = Catalogue.load()
    metrics = component_metrics(cfg, "gateway", services=catalogue.codes())
    gateway = Gateway(
        cfg,
        registry=registry,
        secrets=load_secrets(cfg, registry),
        catalogue=catalogue,
        ledger=ledger,
        tracer=provider.get_tracer("tongban.gateway"),
        metrics=metrics,
    )
    monitor = monitor_component(cfg, "gateway", metrics, gateway, ledger=ledger, registry=registry)

    async def start() -> None:
        await ledger.open()
        await monitor.start()  # /livez answers (and /readyz says why not ready) while starting
        await gateway.start()

    async def stop(deadline: Deadline) -> None:
        await stop_node(deadline, gateway, monitor=monitor, ledger=ledger, provider=provider)

    await serve_until_signal(start, stop, grace_s=cfg.process.grace_s)
