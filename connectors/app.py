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

DEMO = "demo"
"""``[connector] adapters`` naming the shipped demo back ends (the default: dev mode only)."""


def load_adapters(cfg: Config) -> Mapping[str, Adapter]:
    """The back ends ``[connector] adapters`` names: ``module:function`` → function(cfg) →
    {code: Adapter}.

    The shipped demo back ends (``demo``, or no back end named) answer from made-up records: they
    serve in dev mode (``[gateway] dev_mode``) only, so a production connector whose config names
    no back end fails to start instead of answering partners with demo data.

    Raises:
        ConfigError: no back end named outside dev mode, a malformed setting, or a factory that
            does not load.
    """
    spec = cfg.connector.adapters
    if spec in ("", DEMO):
        if not cfg.gateway.dev_mode:
            raise ConfigError(
                "[connector] adapters names no back end ('module:function'); "
                "the demo back ends serve in dev mode only"
            )
        return demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))
    module, _, func = spec.partition(":")
    if not module or not func:
        raise ConfigError("[connector] adapters must be 'module:function' (or 'demo' in dev mode)")
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
