"""``tongban report``: a region's exchange over a period, from its ledger (tongban/ops/report/).

Prints aligned tables (or ``--json``) of volumes, success rates, latency percentiles and the 堵点
(slowest and most failing services and region pairs), and with ``--chart FILE.png|FILE.svg`` draws
them for a briefing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from ledger.errors import LedgerError
from tongban.core.catalogue import Catalogue
from tongban.ops.cli.common import Subparsers, missing_node, node_flags, tool_config
from tongban.ops.report import Report, collect, dumps, period_window, render_text, window_between, write_chart
from tongban.runtime.ledgers import store_for


def add_parsers(sub: Subparsers) -> None:
    rp = sub.add_parser(
        "report",
        help="a region's exchange over a period from its ledger: volumes, success, latency, 堵点; "
        "text, JSON or a chart",
    )
    rp.add_argument(
        "--period",
        choices=("week", "month", "quarter", "year"),
        default="week",
        help="whole days (UTC+8) ending now: week = today and the 6 days before (default), "
        "month/quarter/year from the day after the same date 1/3/12 months ago",
    )
    rp.add_argument(
        "--since",
        default="",
        help="instead of --period: start, an ISO date or date-time (UTC+8 unless given)",
    )
    rp.add_argument("--until", default="", help="with --since: end (exclusive); default now")
    rp.add_argument("--json", action="store_true", help="print JSON instead of tables")
    rp.add_argument("--chart", default="", help="also draw the report into this .png or .svg file")
    rp.add_argument("--top", type=int, default=5, help="entries in each 堵点 list (default 5)")
    rp.add_argument(
        "--min-requests",
        type=int,
        default=5,
        help="smallest service or pair the 堵点 lists consider (default 5)",
    )
    rp.add_argument("--rows", type=int, default=20, help="rows of the service and pair tables (default 20)")
    node_flags(rp)
    rp.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if missing_node(args, "report"):
        return 2
    if args.until and not args.since:
        print("tongban report: --until goes with --since", file=sys.stderr)
        return 2
    if args.top < 1 or args.min_requests < 1 or args.rows < 1:
        print("tongban report: --top, --min-requests and --rows must be >= 1", file=sys.stderr)
        return 2
    if args.chart and not args.chart.lower().endswith((".png", ".svg")):
        print("tongban report: --chart must name a .png or .svg file", file=sys.stderr)
        return 2
    # One clock: a period ending now ends when the report is made, with nothing after it to read.
    now_ns = time.time_ns()
    try:
        window = (
            window_between(args.since, args.until, now_ns=now_ns)
            if args.since
            else period_window(args.period, now_ns=now_ns)
        )
    except ValueError as exc:
        print(f"tongban report: {exc}", file=sys.stderr)
        return 2
    cfg = tool_config(args)
    if cfg.ledger.backend == "sqlite" and not cfg.path(cfg.ledger.path).exists():
        # Opening would create an empty ledger: say what is missing instead.
        print(f"tongban report: no ledger at {cfg.path(cfg.ledger.path)}", file=sys.stderr)
        return 1
    if args.chart and (problem := _chart_dir_problem(Path(args.chart))):
        # Before the ledger is read: not a traceback after the tables.
        print(f"tongban report: --chart {args.chart}: {problem}", file=sys.stderr)
        return 1

    async def run() -> Report:
        async with store_for(cfg) as store:
            return await collect(store, window, top=args.top, min_requests=args.min_requests, now_ns=now_ns)

    try:
        report = asyncio.run(run())
    except (LedgerError, OSError) as exc:  # the database is down, the file unreadable, …
        print(f"tongban report: cannot read the ledger of {cfg.region.code}: {exc}", file=sys.stderr)
        return 1
    names = {item.code: item.name for item in Catalogue.load()}
    print(dumps(report, names) if args.json else render_text(report, names, rows=args.rows), end="")
    if args.json:
        print()
    if args.chart:
        try:
            path = write_chart(report, args.chart)
        except OSError as exc:
            print(f"tongban report: cannot write the chart {args.chart}: {exc}", file=sys.stderr)
            return 1
        print(f"chart written to {path}", file=sys.stderr)
    return 0


def _chart_dir_problem(chart: Path) -> str:
    """Why the chart could not be written into its directory, or "" when it can."""
    where = chart.parent
    if not where.is_dir():
        return f"no directory {where}"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"directory {where} is not writable"
    if chart.is_dir():
        return "is a directory"
    return ""
