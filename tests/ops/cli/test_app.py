"""The `tongban` parser (tongban/ops/cli/app.py): the commands keep their names and order, every
one has a handler, and those that act for a node say so, in one line, when none is named."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tongban.ops.cli import build_parser, main
from tongban.ops.cli.app import GROUPS

CASE_NO = "440300-20260301-7K3M9Q2XWA"
COMMANDS = [
    "dev",
    "gateway",
    "connector",
    "demo-backend",
    "query",
    "submit",
    "case",
    "dlq",
    "certs",
    "maintenance",
    "registry",
    "keys",
    "catalogue",
    "config",
    "region",
    "nats-config",
    "trace",
    "ledger",
    "report",
]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every command that has no subcommands, with the parser it has."""
    below = subcommands(parser)
    if not below:
        yield path
    for name, sub in below.items():
        yield from leaves(sub, (*path, name))


def test_the_commands_in_their_order() -> None:
    assert list(subcommands(build_parser())) == COMMANDS
    assert all(callable(group.add_parsers) for group in GROUPS)


def test_every_command_has_a_handler() -> None:
    parser = build_parser()
    paths = list(leaves(parser))
    assert len(paths) == 43  # 42 commands and the hidden alias `case report`
    for path in paths:
        p = parser
        for name in path:
            p = subcommands(p)[name]
        assert callable(p.get_default("func")), path


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["dlq", "list"], "dlq list"),
        (["dlq", "replay", "3"], "dlq replay"),
        (["keys", "new", "--use", "signing"], "keys new"),
        (["maintenance", "on"], "maintenance maintenance"),  # as it has always read
        (["case", "send-status", CASE_NO, "--status", "6"], "case send-status"),
        (["case", "report", CASE_NO, "--status", "6"], "case report"),
        (["case", "deliveries"], "case deliveries"),
        (["registry", "publish", "--file", "registry.signed"], "registry publish"),
        (["ledger", "verify"], "ledger verify"),
        (["ledger", "prove", "M"], "ledger prove"),
        (["ledger", "export", "-o", "bundle.json", "--receipt", "missing"], "ledger export"),
        (["ledger", "check-receipt", "M"], "ledger check-receipt"),
        (["report"], "report"),
    ],
)
def test_a_command_for_a_node_needs_one(
    argv: list[str],
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"tongban {command}: give --config or --region\n"
    assert list(tmp_path.iterdir()) == []  # nothing read, nothing written


def test_case_send_status_and_its_hidden_alias(capsys: pytest.CaptureFixture[str]) -> None:
    """`tongban case report` (a name that overlapped `tongban report`) is `case send-status`: the
    old name still parses the same, and the help names only the new one."""
    parser = build_parser()
    flags = [CASE_NO, "--status", "11", "--local-code", "L", "--note", "n", "--region", "440300"]
    new = vars(parser.parse_args(["case", "send-status", *flags]))
    old = vars(parser.parse_args(["case", "report", *flags]))
    assert old == new | {"case_command": "report"}
    with pytest.raises(SystemExit):
        parser.parse_args(["case", "--help"])
    text = capsys.readouterr().out
    assert "{get,watch,send-status,deliveries}" in text and "formerly `case report`" in text
    assert not [line for line in text.splitlines() if line.split()[:1] == ["report"]]
