"""``tongban dlq list | replay``: a region's dead letters (tongban/ops/dlq.py)."""

from __future__ import annotations

import argparse
import asyncio
import json

from ledger import Event
from tongban.core.details import Detail
from tongban.core.errors import is_reason_code
from tongban.ops import dlq
from tongban.ops.cli.common import Subparsers, missing_node, node_flags, tool_config, tool_nats
from tongban.runtime.ledgers import store_for
from tongban.runtime.records import draft


def add_parsers(sub: Subparsers) -> None:
    dq = sub.add_parser("dlq", help="a region's dead letters: list, replay")
    dsub = dq.add_subparsers(dest="dlq_command", required=True)
    for verb, text in (("list", "list the dead letters"), ("replay", "send one back to the inbound stream")):
        c = dsub.add_parser(verb, help=text)
        if verb == "replay":
            c.add_argument("id", type=int, help="dead letter id (its DLQ stream sequence, from dlq list)")
        else:
            c.add_argument("--json", action="store_true")
            c.add_argument("--limit", type=int, default=1000)
        node_flags(c)
        c.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if missing_node(args, f"dlq {args.dlq_command}"):
        return 2
    cfg = tool_config(args)
    region = cfg.region.code

    async def run() -> int:
        nc = await tool_nats(cfg, "dlq")
        try:
            if args.dlq_command == "list":
                letters = await dlq.list_dead_letters(nc, region, limit=args.limit)
                if args.json:
                    print(json.dumps([d.__dict__ for d in letters], ensure_ascii=False, indent=2))
                    return 0
                print(f"{len(letters)} dead letter(s) in DLQ_{region}")
                for d in letters:
                    print(
                        f"  {d.seq:>6}  {d.dead_lettered_at}  {d.message_id}  {d.service_code}  "
                        f"{d.reason}  attempts={d.attempts}"
                    )
                return 0
            dead = await dlq.replay(nc, region, args.id)
            # An operator's action is on the record, like every other step.
            async with store_for(cfg) as ledger:
                await ledger.append(
                    draft(
                        Event.RESENT,
                        dead.message_id or f"dlq:{args.id}",
                        peer=region,
                        service=dead.service_code,
                        detail=Detail(
                            dlq_seq=args.id, outcome=dead.reason if is_reason_code(dead.reason) else "?"
                        ),
                    )
                )
            print(f"replayed dead letter {args.id} ({dead.message_id}, {dead.service_code}) to IN_{region}")
            return 0
        finally:
            await nc.close()

    return asyncio.run(run())
