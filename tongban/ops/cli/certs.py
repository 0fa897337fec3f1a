"""``tongban certs init | server | client``: a development CA and mutual-TLS certificates."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tongban.ops.cli.common import DEFAULT_STATE, Subparsers
from tongban.runtime import certs


def add_parsers(sub: Subparsers) -> None:
    ct = sub.add_parser("certs", help="a development CA and mutual-TLS certificates (x509, ECDSA P-256)")
    ctsub = ct.add_subparsers(dest="certs_command", required=True)
    for verb, text in (
        ("init", "create the CA (ca.key, ca.crt)"),
        ("server", "a gateway's server certificate"),
        ("client", "a partner system's client certificate (identity: region + system id)"),
    ):
        c = ctsub.add_parser(verb, help=text)
        c.add_argument("--dir", default=f"{DEFAULT_STATE}/certs", help="where the CA and certificates live")
        if verb == "init":
            c.add_argument("--name", default="tongban dev CA")
            c.add_argument("--force", action="store_true", help="replace an existing CA")
        else:
            c.add_argument("--days", type=int, default=365)
        if verb == "server":
            c.add_argument("--host", action="append", required=True, help="DNS name or IP (repeat)")
            c.add_argument("--stem", default="gateway", help="file name stem (default gateway)")
        if verb == "client":
            c.add_argument("--region", required=True, help="the partner's GB/T 2260 region code")
            c.add_argument(
                "--system", required=True, help="the partner's system id, as the registry names it"
            )
            c.add_argument("--stem", default="", help="file name stem (default <region>-<system>)")
        c.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    if args.certs_command == "init":
        if (out / "ca.key").exists() and not args.force:
            print(f"{out / 'ca.key'} exists: keeping it (--force makes a new CA)", file=sys.stderr)
            return 1
        key, crt = certs.write(certs.create_ca(args.name), out, "ca")
    elif args.certs_command == "server":
        key, crt = certs.write(
            certs.issue_server(certs.load(out, "ca"), args.host, days=args.days), out, args.stem
        )
    else:
        partner = certs.Partner(args.region, args.system)
        issued = certs.issue_client(certs.load(out, "ca"), partner, days=args.days)
        key, crt = certs.write(issued, out, args.stem or f"{args.region}-{args.system}")
    print(f"wrote {crt} and {key}")
    return 0
