"""The ``tongban`` parser and entry point: each command group registers itself on it.

The command line is the composition root: the one place of ``tongban`` that reaches into the
deployables (``gateway``, ``connectors``, ``ledger``), in the groups that run or read them.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Protocol

from tongban.core.errors import TongbanError
from tongban.ops.cli import (
    catalogue,
    certs,
    config,
    dev,
    dlq,
    exchange,
    ledger,
    maintenance,
    nats_config,
    processes,
    region,
    report,
    trace,
    trust,
)
from tongban.ops.cli.common import Subparsers


class CommandGroup(Protocol):
    """A module of commands: ``add_parsers`` adds its commands to ``tongban``'s subparsers, each
    with ``func`` set (the handler, which takes the parsed arguments and returns the exit code)."""

    def add_parsers(self, sub: Subparsers) -> None: ...


GROUPS: tuple[CommandGroup, ...] = (
    dev,
    processes,
    exchange,
    dlq,
    certs,
    maintenance,
    trust,
    catalogue,
    config,
    region,
    nats_config,
    trace,
    ledger,
    report,
)
"""In the order ``tongban --help`` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tongban", description="tongban (通办): cross-province data-exchange gateway"
    )
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``tongban`` with ``argv`` (default: the process's arguments); the exit code."""
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except TongbanError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return rc
