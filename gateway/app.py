"""Entry point of a gateway process: config file in, serving gateway out, graceful stop on signal."""

from __future__ import annotations

import structlog

from gateway.server import Gateway
from tongban.runtime.component import ComponentParts, run_component
from tongban.runtime.config import Config

log = structlog.get_logger("tongban.gateway")


def build(parts: ComponentParts) -> Gateway:
    """The region's gateway, from what its process loaded."""
    return Gateway(parts)


async def run(cfg: Config) -> None:
    if cfg.gateway.dev_mode:
        log.warning(
            "gateway.dev_mode",
            detail=(
                "DEV MODE: no partner authentication"
                + ("" if cfg.gateway.client_ca else ", plaintext gRPC")
                + ". Never in production."
            ),
        )
    await run_component(cfg, "gateway", build)
