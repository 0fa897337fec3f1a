"""Adapters for benchmarks: a back end that answers instantly with the same record the bare
baseline's responder returns, so the ratio measures tongban itself, not a demo database."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.bare import SAMPLE
from connectors.adapters import Adapter, AdapterRequest
from tongban.core.catalogue import Catalogue
from tongban.runtime.config import Config


class FixedAdapter:
    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        return SAMPLE


def fixed(cfg: Config) -> Mapping[str, Adapter]:
    """``[connector] adapters = "bench.adapters:fixed"``: every catalogue item answers SAMPLE."""
    del cfg
    return {code: FixedAdapter() for code in Catalogue.load().codes()}
