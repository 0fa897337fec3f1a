"""`tongban dev` as a user runs it: start, paste the printed command, verify ledgers, Ctrl-C, nothing left."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            pids.append(int(d.name))
    return pids


def _wait_output(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    out = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        out.append(line)
        if marker in line:
            return "".join(out)
    raise AssertionError(f"no {marker!r} in time; output so far:\n{''.join(out)}")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to prove no stray processes")
def test_dev_stack_query_verify_and_clean_stop(tmp_path: Path) -> None:
    state = tmp_path / "dev-state"
    tongban = Path(sys.executable).parent / "tongban"
    proc = subprocess.Popen(
        [str(tongban), "dev", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        banner = _wait_output(proc, "Ctrl-C stops everything", timeout=90)
        assert "DEV MODE" in banner
        command = next(line.strip() for line in banner.splitlines() if " query --gateway " in line)
        assert "--to 320200" in command and "id_no=320213198511200025" in command

        result = subprocess.run(shlex.split(command), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        answer = json.loads(result.stdout)
        assert answer["verified"] is True and answer["responder_region"] == "320200"
        assert re.fullmatch(r"[0-9A-Z]{26}", answer["message_id"])
        assert answer["data"]["status"] == "正常参保"

        for region, at_least in (("440300", 2), ("320200", 2)):
            v = subprocess.run(
                [str(tongban), "ledger", "verify", "--region", region, "--state-dir", str(state)],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert v.returncode == 0, v.stdout + v.stderr
            count = int(re.search(r"(\d+) entries, hash chain OK", v.stdout).group(1))  # type: ignore[union-attr]
            assert count >= at_least
        assert _processes_mentioning(str(state)), "children run with the state dir on their command line"
    finally:
        proc.send_signal(signal.SIGINT)
        tail, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, tail
    assert "stopped." in tail
    assert _processes_mentioning(str(state)) == []


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to prove no stray processes")
@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL], ids=["hup", "term", "kill"])
def test_no_strays_however_the_supervisor_ends(tmp_path: Path, how: signal.Signals) -> None:
    """A closed terminal (SIGHUP), a service manager (SIGTERM) or SIGKILL of the supervisor itself:
    every nats-server, gateway and connector it started goes too (the last through PR_SET_PDEATHSIG)."""
    state = tmp_path / "dev-state"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "tongban"), "dev", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        _wait_output(proc, "Ctrl-C stops everything", timeout=90)
        children = set(_processes_mentioning(str(state))) - {proc.pid}
        assert len(children) == 7  # hub, 2 leaves, 2 gateways, 2 connectors
    finally:
        proc.send_signal(how)
        proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while _processes_mentioning(str(state)) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling interval of a condition wait (children exiting), not a fixed delay
    assert _processes_mentioning(str(state)) == []
