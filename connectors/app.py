"""Entry point of a connector process: config file in, serving connector out, graceful stop on signal."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from connectors.adapters import Adapter
from connectors.demo.backends import DemoBackend, demo_adapters
from connectors.runtime import Connector
from tongban.core.errors import ConfigError
from tongban.runtime.component import ComponentParts, run_component
from tongban.runtime.config import Config


def load_adapters(cfg: Config) -> Mapping[str, Adapter]:
    """``demo`` → the shipped demo back ends; ``module:function`` → function(cfg) → {code: Adapter}."""
    spec = cfg.connector.adapters
    if spec == "demo":
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


def build(parts: ComponentParts) -> Connector:
    """The region's connector, from what its process loaded, with its configured adapters."""
    return Connector(parts, adapters=load_adapters(parts.cfg))


async def run(cfg: Config) -> None:
    await run_component(cfg, "connector", build)
