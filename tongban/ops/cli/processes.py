"""``tongban gateway`` and ``tongban connector``: run one process of a node from its config file."""

from __future__ import annotations

import argparse
import asyncio

import connectors.app
import gateway.app
from tongban.ops.cli.common import Subparsers
from tongban.runtime.config import Config
from tongban.runtime.telemetry import configure_logging


def add_parsers(sub: Subparsers) -> None:
    for role, func in (("gateway", _run_gateway), ("connector", _run_connector)):
        r = sub.add_parser(role, help=f"run a {role} from a config file until SIGTERM")
        r.add_argument("--config", required=True, help="TOML config file")
        r.set_defaults(func=func)


def _load_config(path: str) -> Config:
    cfg = Config.load(path)
    configure_logging(fmt=cfg.log.format, level=cfg.log.level, region=cfg.region.code)
    return cfg


def _run_gateway(args: argparse.Namespace) -> int:
    asyncio.run(gateway.app.run(_load_config(args.config)))
    return 0


def _run_connector(args: argparse.Namespace) -> int:
    asyncio.run(connectors.app.run(_load_config(args.config)))
    return 0
