"""``tongban nats-config``: deploy/nats/'s configs and, apart, the NATS secrets (tongban/ops/natsconfig/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tongban.ops.cli.common import Subparsers
from tongban.ops.natsconfig import INSTALL_DIR, SECRETS_DIR, generate


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "nats-config",
        help="generate deploy/nats/ (hub and region configs) and the per-region NATS credentials and TLS",
    )
    p.add_argument("--regions", required=True, help="comma-separated region codes, e.g. 440300,320200,370200")
    p.add_argument("--out", default="deploy/nats", help="where the configs go (default deploy/nats)")
    p.add_argument(
        "--secrets-dir",
        default=str(SECRETS_DIR),
        help=f"where seeds, keys and certificates go, never committed (default {SECRETS_DIR}); "
        f"copy hub/ or <code>/ to {INSTALL_DIR} on each node",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="also name 127.0.0.1 and localhost in the hub certificate (boot the configs on one machine)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    secrets = generate(Path(args.out), regions, Path(args.secrets_dir), dev=args.dev)
    print(f"configs written to {args.out}; secrets in {secrets.root}")
    print(f"  hub nodes:          copy {secrets.hub_dir}/ to {INSTALL_DIR}/")
    for r in regions:
        print(f"  region {r} nodes: copy {secrets.region_dir(r)}/ to {INSTALL_DIR}/")
        for role in secrets.roles:
            print(
                f"  region {r} {role.value} hosts: {secrets.client_seed_file(r, role)} and "
                f"{secrets.clients_dir(r) / 'ca.crt'} ([nats] {role.value}_nkey_seed, tls_ca)"
            )
    print(f"  keep {secrets.root / 'ca.key'} offline: it issues every link certificate")
    return 0
