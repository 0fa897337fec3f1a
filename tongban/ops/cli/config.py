"""``tongban config check FILE``: the effective config of a node and every problem in it."""

from __future__ import annotations

import argparse

from tongban.ops.cli.common import Subparsers
from tongban.ops.config_check import check


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("config", help="check a node's config file")
    csub = p.add_subparsers(dest="config_command", required=True)
    c = csub.add_parser(
        "check",
        help="print the effective config and every problem found (missing or exposed files, dev-only "
        "settings, declared back ends, unreachable NATS); exit 1 on a problem",
    )
    c.add_argument("file", help="the node's TOML config")
    c.add_argument("--no-network", action="store_true", help="do not try to reach the NATS servers")
    c.add_argument("--quiet", action="store_true", help="print the problems only, not the effective config")
    c.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    report = check(args.file, network=not args.no_network)
    if report.effective and not args.quiet:
        print(f"# effective config of {args.file} (defaults included, passwords masked)")
        print(report.effective)
    for warning in report.warnings:
        print(f"warning: {warning}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print("ok" if report.ok else f"{len(report.problems)} problem(s)")
    return 0 if report.ok else 1
