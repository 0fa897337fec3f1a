"""The parts a test builds a connector from, as its process would load them."""

from __future__ import annotations

from opentelemetry import trace

from ledger import LedgerStore
from tongban.core.catalogue import Catalogue
from tongban.core.registry import Registry
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import Config
from tongban.runtime.metrics import NO_METRICS, Metrics
from tongban.runtime.node import load_registry, load_secrets


def connector_parts(
    cfg: Config,
    ledger: LedgerStore,
    *,
    registry: Registry | None = None,
    catalogue: Catalogue | None = None,
    metrics: Metrics = NO_METRICS,
) -> ComponentParts:
    """A connector's parts from ``cfg``: its own registry (unless given) and the keys following it,
    the shipped catalogue (unless given), the global tracer provider's tracer, no metrics (unless
    given)."""
    registry = registry or load_registry(cfg)
    return ComponentParts(
        cfg,
        registry=registry,
        secrets=load_secrets(cfg, registry),
        catalogue=catalogue or Catalogue.load(),
        ledger=ledger,
        tracer=trace.get_tracer("tongban.connector"),
        metrics=metrics,
    )
