"""``tongban gateway`` and ``tongban connector``: run one process of a node from its config file;
``tongban demo-backend``: the demo REST services a dev region's declared HTTP back end calls."""

from __future__ import annotations

import argparse
import asyncio
from urllib.parse import urlsplit

from aiohttp import web

import connectors.app
import gateway.app
from connectors.demo.http_service import BACKEND_NAME, demo_http_app
from tongban.ops.cli.common import Subparsers
from tongban.runtime.config import Config
from tongban.runtime.telemetry import configure_logging


def add_parsers(sub: Subparsers) -> None:
    for role, func in (("gateway", _run_gateway), ("connector", _run_connector)):
        r = sub.add_parser(role, help=f"run a {role} from a config file until SIGTERM")
        r.add_argument("--config", required=True, help="TOML config file")
        r.set_defaults(func=func)
    d = sub.add_parser(
        "demo-backend",
        help="serve the demo REST services on the address of [backends.demo_http] (dev mode only)",
    )
    d.add_argument("--config", required=True, help="a dev region's TOML config file")
    d.set_defaults(func=_run_demo_backend)


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


def _run_demo_backend(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    table = cfg.backends.get(BACKEND_NAME, {})
    url = urlsplit(str(table.get("base_url", "")))
    if not cfg.gateway.dev_mode or url.scheme != "http" or url.hostname is None or url.port is None:
        print(f"demo-backend: needs dev mode and [backends.{BACKEND_NAME}] base_url = 'http://host:port'")
        return 2
    app = demo_http_app(cfg.path(cfg.connector.demo_db))
    # SIGINT and SIGTERM stop it, gracefully within the shutdown timeout.
    web.run_app(app, host=url.hostname, port=url.port, print=None, shutdown_timeout=5.0)
    return 0
