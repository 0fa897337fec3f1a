"""The Wuxi demo back ends plus one for an item that exists only in a later catalogue revision: a
connector is configured for an item before the authority publishes it (docs/catalogue.md)."""

from __future__ import annotations

from collections.abc import Mapping

from connectors.adapters import Adapter
from connectors.demo.backends import DemoBackend, demo_adapters
from tongban.runtime.config import Config

NEW_ITEM = "SBJFJLCX0009"
"""灵活就业人员参保缴费查询: answered by the contribution-record back end."""


def adapters(cfg: Config) -> Mapping[str, Adapter]:
    """``[connector] adapters = "tests.e2e.catalogue_backends:adapters"``."""
    out = demo_adapters(DemoBackend(cfg.path(cfg.connector.demo_db)))
    out[NEW_ITEM] = out["SBJFJLCX0001"]
    return out
