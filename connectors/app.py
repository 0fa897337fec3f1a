"""Entry point of a connector process: config file in, serving connector out, graceful stop on signal."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from connectors.adapters import Adapter
from connectors.backend_api import BackendApi
from connectors.declared import AdapterSet, declare
from connectors.demo.backends import DemoBackend, demo_adapters
from connectors.runtime import Connector
from tongban.core.catalogue import Catalogue
from tongban.core.errors import ConfigError
from tongban.runtime.component import ComponentParts, run_component
from tongban.runtime.config import Config

DEMO = "demo"
"""``[connector] adapters`` naming the shipped demo back ends (dev mode only)."""


def load_adapters(cfg: Config, catalogue: Catalogue, *, case_desk: Adapter | None = None) -> AdapterSet:
    """The region's back ends: the services ``[services]`` declares (:mod:`connectors.declared`), over
    those a ``[connector] adapters`` factory (``module:function`` → function(cfg) → {code: Adapter})
    gives.

    The shipped demo back ends (``adapters = "demo"``, or nothing declared at all) answer from made-up
    records: they serve in dev mode (``[gateway] dev_mode``) only, so a production connector whose
    config names no back end fails to start instead of answering partners with demo data.

    Raises:
        ConfigError: no back end named outside dev mode, a malformed setting, or a factory that
            does not load.
    """
    declared = declare(cfg, catalogue, case_desk=case_desk)
    spec = cfg.connector.adapters
    if spec == DEMO or (spec == "" and not declared):
        if not cfg.gateway.dev_mode:
            raise ConfigError(
                "the connector names no back end ([services], or [connector] adapters = "
                "'module:function'); the demo back ends serve in dev mode only"
            )
        return declared.merged(demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db))))
    if spec == "":
        return declared
    return declared.merged(_factory(cfg, spec))


def _factory(cfg: Config, spec: str) -> Mapping[str, Adapter]:
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
    api = BackendApi.from_parts(parts) if BackendApi.configured(parts.cfg) else None
    adapters = load_adapters(parts.cfg, parts.catalogue, case_desk=api.adapter() if api else None)
    return Connector(parts, adapters=adapters, backend_api=api)


async def run(cfg: Config) -> None:
    await run_component(cfg, "connector", build)
