"""``tongban region init``: a new region's keys, configs, TLS request and registration request."""

from __future__ import annotations

import argparse
from pathlib import Path

from tongban.ops.cli.common import Subparsers
from tongban.ops.region_init import init_region


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("region", help="a new region, before it joins the exchange")
    rsub = p.add_subparsers(dest="region_command", required=True)
    i = rsub.add_parser(
        "init",
        help="keys, production configs, the gateway's CSR and a signed registration request, in one "
        "directory (nothing secret leaves it)",
    )
    i.add_argument("--region", required=True, help="GB/T 2260 code, e.g. 370200")
    i.add_argument("--name", required=True, help="e.g. 青岛市")
    i.add_argument("--out", required=True, help="the new region's directory (must not hold one already)")
    i.add_argument(
        "--gateway-address", required=True, help="host:port partners and regions reach the gateway at"
    )
    i.add_argument("--service", action="append", default=[], help="a catalogue item it offers to provide")
    i.add_argument("--nats", default="tls://127.0.0.1:4222", help="the region's nats-server URL")
    i.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    files = init_region(
        Path(args.out),
        args.region,
        args.name,
        gateway_address=args.gateway_address,
        services=tuple(args.service),
        nats_url=args.nats,
    )
    print(f"region {args.region} {args.name} in {files.directory}")
    print(f"  keys        {files.signing_key_id} (signing), {files.sealing_key_id} (sealing), correlation")
    print(f"  configs     {files.configs[0]}, {files.configs[1]}")
    print(f"  TLS         {files.csr}: send it to the province's CA, put the certificate at tls/gateway.crt")
    print(f"  register    {files.request}: send it to the registry authority (tongban registry apply);")
    print("              it sends back registry.signed and its root.pub, to put beside the configs")
    print(f"then: tongban config check {files.configs[0]}")
    return 0
