"""``tongban maintenance on | off | status``: a gateway in or out of maintenance."""

from __future__ import annotations

import argparse

from tongban.ops.cli.common import Subparsers, missing_node, node_flags, tool_config


def add_parsers(sub: Subparsers) -> None:
    mt = sub.add_parser(
        "maintenance", help="a gateway in or out of maintenance (NOT_SERVING, new calls refused)"
    )
    mt.add_argument("state", choices=("on", "off", "status"))
    node_flags(mt)
    mt.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # The words as the command line has always printed them (the command named twice): a change of
    # output is not this module's to make.
    if missing_node(args, "maintenance maintenance"):
        return 2
    cfg = tool_config(args)
    path = cfg.path(cfg.gateway.maintenance_file)
    if args.state == "on":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    elif args.state == "off":
        path.unlink(missing_ok=True)
    on = path.exists()
    print(
        f"gateway of {cfg.region.code}: maintenance {'ON' if on else 'off'} ({path}); "
        f"the gateway follows within {cfg.gateway.maintenance_poll_s:g} s"
    )
    return 0
