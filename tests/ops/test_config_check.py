"""``tongban config check``: a node's effective config and every problem in it, on real files and a
real nats-server."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tongban.ops.cli.app import main
from tongban.ops.config_check import check
from tongban.ops.devstate import DevState

WX = "320200"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dev_region_s_config_is_ok_with_its_nats_server_up(state: DevState) -> None:
    report = await asyncio.to_thread(check, state.config_path(WX))
    assert report.problems == []
    assert report.warnings == [
        "[gateway] dev_mode is on: plaintext gRPC, no partner authentication, demo data"
    ]
    assert "[gateway]\n" in report.effective and "max_deadline_s = 60.0" in report.effective  # defaults too


async def test_every_problem_is_named_at_once(state: DevState) -> None:
    config = state.config_path(WX)
    node = config.parent
    (node / "keys" / "sealing.pem").unlink()
    (node / "keys" / "signing.pem").chmod(0o644)
    _edit(config, "dev_mode = true", "dev_mode = false")  # the dev config's adapters = "demo" stays
    port = _closed_port()
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace('servers = ["', f'servers = ["nats://127.0.0.1:{port}", "', 1)
        + '\n[backends.register]\nkind = "postgres"\ndsn = "postgresql://tongban:s3cret-pw@db.internal/x"\n'
        + '[services.SBJFJLCX0001]\nbackend = "register"\nsql = "SELECT 1 AS status WHERE $1 = $2"\n'
        + 'params = ["applicant.id"]\n',
        encoding="utf-8",
    )
    report = await asyncio.to_thread(check, config)
    problems = "\n".join(report.problems)
    assert f"[keys] sealing_key: {node / 'keys' / 'sealing.pem'} does not exist" in problems
    assert "[keys] signing_key" in problems and "chmod 600" in problems
    assert '[connector] adapters = "demo" serves in dev mode only' in problems
    assert "$1 … $1" in problems  # the SQL service's placeholders do not match its params
    assert f"nats://127.0.0.1:{port} does not accept connections" in problems
    assert len(report.problems) == 5, report.problems  # nothing else: the root key file is there
    assert (
        "s3cret-pw" not in report.effective and "postgresql://tongban:***@db.internal/x" in report.effective
    )


def test_a_root_key_given_in_hex_is_not_taken_for_a_file(state: DevState) -> None:
    config = state.config_path(WX)
    hex_key = (state.root / "root.pub").read_text().strip()
    _edit(config, 'root_keys = ["../root.pub"]', f'root_keys = ["{hex_key}", "../missing.pub"]')
    problems = check(config, network=False).problems
    assert problems == [f"[registry] root_keys[1]: {config.parent / '../missing.pub'} does not exist"]


def test_a_config_that_does_not_load_is_one_problem_and_the_command_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text("[gateway\nlisten = 1\n", encoding="utf-8")
    report = check(bad, network=False)
    assert len(report.problems) == 1 and "is not valid TOML" in report.problems[0]
    assert report.effective == ""
    assert main(["config", "check", str(bad), "--no-network"]) == 1
    out, err = capsys.readouterr()
    assert "problem: config file" in out and "1 problem(s)" in out and err == ""


def test_the_command_prints_the_effective_config_and_ok(
    state: DevState, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config", "check", str(state.config_path(WX)), "--no-network"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("# effective config of ")
    assert (
        "[backend_api]" in out and "warning: [gateway] dev_mode is on" in out and out.rstrip().endswith("ok")
    )
