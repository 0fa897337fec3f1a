"""``tongban trace <message-id | case-no>``: one request's timeline across regions (tongban/ops/trace/)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from tongban.core.message_ids import is_case_no, is_message_id
from tongban.ops.cli.common import Subparsers, channel, node_config, node_flags, tls_flags
from tongban.ops.trace import (
    LedgerReader,
    LocalUnreachable,
    NotTraced,
    collect,
    is_region_code,
    local_gateway_address,
    render,
    to_document,
    verdict,
)
from tongban.runtime.node import load_registry
from tongban.runtime.telemetry import configure_logging


def add_parsers(sub: Subparsers) -> None:
    t = sub.add_parser(
        "trace",
        help="a request's timeline across regions from their ledgers (message id or case number)",
        description="Rebuild a request's path across regions from the regions' ledgers: one timeline "
        "ordered by time, the time between hops, the failing hop and a verdict. Peer regions' ledgers are "
        "read through the local gateway, which asks them over NATS for their entries about this region's "
        "traffic; --peer and --direct read them at their own gateways instead. Each region stamps entries "
        "with its own clock: durations across regions include the skew between them.",
    )
    t.add_argument("id", metavar="MESSAGE_ID|CASE_NO", help="message id (26-character ULID) or case number")
    t.add_argument(
        "--gateway", default="", help="host:port of the local gateway (default: from the node config)"
    )
    t.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="REGION=HOST:PORT",
        help="read this peer region directly at its gateway (repeat); needs a certificate it accepts",
    )
    t.add_argument(
        "--direct",
        action="store_true",
        help="read every peer region directly at the gateway address the registry gives, not through the "
        "local gateway (dev and ops set-ups where the operator's certificate is accepted everywhere)",
    )
    t.add_argument("--json", action="store_true", help="print a machine-readable document")
    t.add_argument("--timeout", type=float, default=5.0, help="deadline of each ledger read in seconds")
    tls_flags(t)
    node_flags(t)
    t.set_defaults(func=_run)


def _peers(values: list[str]) -> dict[str, str]:
    peers = {}
    for item in values:
        region, sep, address = item.partition("=")
        if not sep or not is_region_code(region) or ":" not in address:
            raise ValueError(f"--peer {item!r} must be REGION=HOST:PORT (a 6-digit region code)")
        peers[region] = address
    return peers


def _run(args: argparse.Namespace) -> int:
    """0 with the timeline printed; 1 when the local gateway is unreachable or knows nothing of
    the request; 2 on bad arguments."""
    configure_logging(fmt="console", level="error", stream=sys.stderr)
    query = args.id.strip()
    if not (is_message_id(query) or is_case_no(query)):
        print(
            f"tongban trace: {query!r} is neither a message id (26 characters, e.g. 01JD3...) nor a case "
            "number (440300-20260301-7K3M9Q2XWA)",
            file=sys.stderr,
        )
        return 2
    try:
        peers = _peers(args.peer)
    except ValueError as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        return 2
    cfg = registry = None
    if args.config or args.region:
        cfg = node_config(args)
        registry = load_registry(cfg)
    local_address = args.gateway or (local_gateway_address(cfg, registry) if cfg is not None else "")
    if not local_address:
        print("tongban trace: give --gateway, or --config / --region of the local node", file=sys.stderr)
        return 2

    def route(region: str) -> str | None:
        if region in peers:
            return peers[region]
        if not args.direct:
            return None
        r = registry.region(region) if registry is not None else None
        return r.gateway_address if r is not None else ""

    reader = LedgerReader(
        lambda address: channel(address, ca=args.ca, cert=args.cert, key=args.key), timeout=args.timeout
    )
    try:
        trace = collect(
            query,
            local_address=local_address,
            local_region=cfg.region.code if cfg is not None else "",
            route=route,
            reader=reader,
        )
    except LocalUnreachable as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        if cfg is not None and cfg.gateway.client_ca and not args.cert:
            print("  the gateway requires mutual TLS: give --ca, --cert and --key", file=sys.stderr)
        return 1
    except NotTraced as exc:
        print(f"tongban trace: {exc}", file=sys.stderr)
        return 1
    finally:
        reader.close()
    v = verdict(trace)
    if args.json:
        print(json.dumps(to_document(trace, v), ensure_ascii=False, indent=2))
    else:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        print(render(trace, v, colour=colour))
    return 0
