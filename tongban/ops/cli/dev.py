"""``tongban dev``: a two-region dev stack on this machine until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tongban.ops.cli.common import DEFAULT_STATE, Subparsers
from tongban.ops.dev import run_dev
from tongban.ops.natsserver import NatsServerError
from tongban.runtime.telemetry import configure_logging


def add_parsers(sub: Subparsers) -> None:
    d = sub.add_parser("dev", help="run a two-region dev stack (Shenzhen 440300, Wuxi 320200) until Ctrl-C")
    d.add_argument(
        "--state-dir", default=DEFAULT_STATE, help="keys, registry, configs, ledgers (default .tongban)"
    )
    d.add_argument("--otlp", default="", help="OTLP/gRPC endpoint to export traces to (default: none)")
    d.add_argument(
        "--log-format",
        choices=("console", "json"),
        default="console",
        help="the processes' log files: human-friendly lines (default) or one JSON object per line",
    )
    d.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    configure_logging(fmt="console", level="warning")
    try:
        asyncio.run(run_dev(Path(args.state_dir), otlp_endpoint=args.otlp, log_format=args.log_format))
    except (NatsServerError, RuntimeError, TimeoutError, OSError) as exc:
        print(f"tongban dev: {exc}", file=sys.stderr)
        return 1
    return 0
