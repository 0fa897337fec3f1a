"""`tongban dev` as a user runs it: start, paste the printed command, verify ledgers, Ctrl-C, nothing left;
a killed child is restarted on the same address while the rest keep serving."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from structlog.testing import capture_logs

from tests.e2e.requests import pension
from tests.helpers import eventually, eventually_sync
from tongban.ops.dev import Backoff, DevStack
from tongban.v1 import exchange_pb2_grpc

SZ, WX = "440300", "320200"


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


def _start_dev(state: Path) -> subprocess.Popen[str]:
    """``tongban dev`` on ``state``, its output (stdout and stderr) on one pipe."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "tongban"), "dev", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


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
    proc = _start_dev(state)
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
                [
                    str(Path(sys.executable).parent / "tongban"),
                    "ledger",
                    "verify",
                    "--region",
                    region,
                    "--state-dir",
                    str(state),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert v.returncode == 0, v.stdout + v.stderr
            count = int(re.search(r"(\d+) entries, hash chain OK", v.stdout).group(1))  # type: ignore[union-attr]
            assert count >= at_least
        assert _processes_mentioning(str(state)), "children run with the state dir on their command line"
    finally:
        tail = _interrupt(proc)
    assert proc.returncode == 0, tail
    assert "stopped." in tail
    assert _processes_mentioning(str(state)) == []


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to prove no stray processes")
@pytest.mark.parametrize("how", [signal.SIGHUP, signal.SIGTERM, signal.SIGKILL], ids=["hup", "term", "kill"])
def test_no_strays_however_the_supervisor_ends(tmp_path: Path, how: signal.Signals) -> None:
    """A closed terminal (SIGHUP), a service manager (SIGTERM) or SIGKILL of the supervisor itself:
    every nats-server, gateway, connector and demo back end it started goes too (the last three
    through PR_SET_PDEATHSIG)."""
    state = tmp_path / "dev-state"
    proc = _start_dev(state)
    try:
        _wait_output(proc, "Ctrl-C stops everything", timeout=90)
        children = set(_processes_mentioning(str(state))) - {proc.pid}
        assert len(children) == 9  # hub, 2 leaves, 2 gateways, 2 connectors, 2 demo back ends
    finally:
        proc.send_signal(how)
        proc.communicate(timeout=60)
    eventually_sync(lambda: _processes_mentioning(str(state)) == [], timeout=30, what="every child gone")


def test_backoff_doubles_to_a_cap() -> None:
    b = Backoff(initial_s=0.5, cap_s=15.0)
    assert [b.delay(n) for n in range(1, 9)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0]


# What identifies each victim on its command line (``{state}`` is the dev state directory). The
# query goes Shenzhen's gateway → Wuxi's connector, through both leaves and the hub.
VICTIMS = {
    "connector": f"connector --config {{state}}/{WX}/node.toml",
    # Wuxi's demo REST services: the pension query is answered through its declared HTTP back end.
    "demo-backend": f"demo-backend --config {{state}}/{WX}/node.toml",
    "gateway": f"gateway --config {{state}}/{SZ}/node.toml",
    "nats-leaf": f"{{state}}/nats/leaf-{WX}/leaf-{WX}.conf",
    "nats-hub": "{state}/nats/hub/hub.conf",
}


async def _answered(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            resp = await exchange_pb2_grpc.ExchangeStub(ch).Query(pension(), timeout=5)
        except grpc.aio.AioRpcError:
            return False
    return bool(resp.responder_region == WX)


async def _serves(url: str) -> bool:
    try:
        await asyncio.to_thread(urllib.request.urlopen, url, timeout=2)
    except OSError:
        return False
    return True


def _interrupt(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C the stack and return the rest of its output; SIGKILL it if it does not stop in time
    (its children then get their parent-death signal)."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=10)
        raise


def _running(pid: int, text: str) -> bool:
    """``pid`` is alive and still the process we saw (its command line mentions ``text``)."""
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find and kill children")
@pytest.mark.parametrize("victim", list(VICTIMS))
async def test_dev_stack_serves_again_after_a_child_is_killed(tmp_path: Path, victim: str) -> None:
    """SIGKILL one child: the supervisor logs it, restarts it (new pid, same address), the printed
    query command answers again; Ctrl-C then leaves none of the old or new processes."""
    state = tmp_path / "dev-state"
    marker = VICTIMS[victim].format(state=state)
    proc = _start_dev(state)
    seen: set[int] = set()
    try:
        banner = _wait_output(proc, "Ctrl-C stops everything", timeout=90)
        command = next(line.strip() for line in banner.splitlines() if " query --gateway " in line)
        address = command.split(" --gateway ", 1)[1].split()[0]
        assert await _answered(address)
        seen = set(_processes_mentioning(str(state))) - {proc.pid}
        assert len(seen) == 9  # hub, 2 leaves, 2 gateways, 2 connectors, 2 demo back ends
        [old] = _processes_mentioning(marker)
        # A gateway or connector also comes back on its printed /metrics address.
        metrics = ""
        if victim in ("gateway", "connector"):
            port = (state / (SZ if victim == "gateway" else WX) / f"{victim}-metrics.port").read_text()
            metrics = f"http://127.0.0.1:{port}/metrics"

        os.kill(old, signal.SIGKILL)
        await eventually(
            lambda: [p for p in _processes_mentioning(marker) if p != old] != [],
            timeout=30,
            what=f"{victim} restarted",
        )
        [new] = _processes_mentioning(marker)
        assert new != old
        seen.add(new)
        await eventually(lambda: _answered(address), timeout=60, what=f"a Query after the {victim} kill")
        if metrics:
            await eventually(lambda: _serves(metrics), timeout=30, what=f"{metrics} after the restart")
        pasted = await asyncio.create_subprocess_exec(*shlex.split(command), stdout=subprocess.PIPE)
        answer, _ = await asyncio.wait_for(pasted.communicate(), timeout=60)
        assert pasted.returncode == 0 and json.loads(answer)["verified"] is True
        assert proc.poll() is None, "the stack kept running"
    finally:
        tail = _interrupt(proc)
    print(tail)
    assert proc.returncode == 0, tail
    [exited] = [line for line in tail.splitlines() if "dev.child_exited" in line]  # the others kept running
    assert f"role={victim}" in exited and "signal=SIGKILL" in exited and "attempt=1" in exited
    assert any("dev.child_restarted" in line and f"role={victim}" in line for line in tail.splitlines())
    assert [pid for pid in seen if _running(pid, str(state))] == []
    assert _processes_mentioning(str(state)) == []


@pytest.mark.skipif(sys.platform != "linux", reason="holds a port the way another program would")
async def test_a_gateway_that_cannot_start_is_retried_at_the_cap_until_it_can(tmp_path: Path) -> None:
    """A gateway that keeps failing at start (its port taken) is not given up: each failure is
    logged, at error once the back-off is capped, and it serves again once the port is free."""
    stack = DevStack(tmp_path / "dev", backoff=Backoff(initial_s=0.05, cap_s=0.2, stable_s=30.0))
    blocker = socket.socket()
    try:
        await stack.start(timeout=90)
        gateway = next(c for c in stack.children if c.role == "gateway" and c.region == SZ)
        address = f"127.0.0.1:{stack.ports[SZ]}"
        with capture_logs() as logs:
            assert gateway.proc is not None
            gateway.proc.kill()
            await asyncio.to_thread(gateway.proc.wait, 10)
            # Without SO_REUSEPORT on this socket, gRPC's bind (which sets it) is refused.
            blocker.bind(("127.0.0.1", stack.ports[SZ]))
            blocker.listen()

            def looping() -> list[MutableMapping[str, Any]]:
                return [e for e in logs if e["event"] == "dev.child_crash_looping" and e["role"] == "gateway"]

            await eventually(lambda: len(looping()) >= 2, timeout=60, what="a capped crash loop, logged")
            blocker.close()
            await eventually(
                lambda: _answered(address), timeout=60, what="the gateway back after the port is free"
            )
        exits = [e for e in logs if e["event"] in ("dev.child_exited", "dev.child_crash_looping")]
        print(*exits, sep="\n")
        first, capped = exits[0], looping()[0]
        assert (first["log_level"], first["signal"], first["attempt"]) == ("warning", "SIGKILL", 1)
        assert capped["log_level"] == "error" and capped["delay_s"] == 0.2 and capped["exit_code"] != 0
        assert capped["region"] == SZ and str(capped["log"]).endswith(f"{SZ}/gateway.log")
        assert any(e["event"] == "dev.child_restarted" and e["role"] == "gateway" for e in logs)
    finally:
        blocker.close()
        await stack.stop()
    assert _processes_mentioning(str(stack.root)) == []
