"""Chaos run: steady Submit load from Shenzhen to Wuxi while processes are SIGKILLed and restarted.

Real processes throughout: a hub and three leaf nats-servers (Shenzhen, Wuxi, Qingdao), Shenzhen's
gateway and two Wuxi connector replicas (``tongban gateway`` / ``tongban connector`` children with
the demo back ends). During the load, at fixed fractions of the Submits accepted so far, it kills
with SIGKILL and restarts on the same store: a Wuxi connector three times, the gateway once, Wuxi's
nats-server once and the hub once.

The client behaves as a partner system should: every Submit carries its own idempotency key and is
retried with that key after any error until it gets a receipt (or the run's time budget ends, which
counts the Submit as rejected, with its last error).

Afterwards it counts, from the stores themselves:

* accepted: Submits that got a receipt; rejected: those that ended with an error;
* delivered: accepted Submits whose case the Wuxi back end took (one row in its effects table) and
  whose three status events reached Shenzhen (case approved there);
* duplicated: second effects for one idempotency key, second PROCESSED entries in Wuxi's ledger, or
  a second SUBMITTED in Shenzhen's, for any accepted Submit;
* lost: accepted Submits not delivered;
* ledgers: both hash chains verify, each accepted message has one SUBMITTED and three STATUS
  entries in Shenzhen and one PROCESSED and three STATUS entries in Wuxi.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from connectors.demo.backends import DemoBackend
from connectors.demo.cases import DemoCaseAdapter, case_effects
from gateway.cases import message_ids_with_status
from ledger import Event
from ledger.verify import verify_sqlite_file
from tests.e2e.cases import submit_request
from tests.helpers import free_port
from tongban.ops.devstate import DevState, init_state
from tongban.ops.natsserver import NatsServer, Topology
from tongban.runtime.process import die_with_parent
from tongban.v1 import exchange_pb2_grpc

SZ, WX, QD = "440300", "320200", "370200"
REGIONS = {SZ: "深圳市", WX: "无锡市", QD: "青岛市"}
APPROVED = 11


@dataclass
class Report:
    submits: int
    accepted: int = 0
    rejected: int = 0
    delivered: int = 0
    duplicated: int = 0
    lost: int = 0
    retried_calls: int = 0
    backend_attempts_absorbed: int = 0
    ledgers_consistent: bool = False
    ledger_problems: list[str] = field(default_factory=list)
    chaos: list[str] = field(default_factory=list)
    load_s: float = 0.0
    settle_s: float = 0.0

    def line(self) -> str:
        return (
            f"accepted {self.accepted} / delivered {self.delivered} / duplicated {self.duplicated} / "
            f"lost {self.lost}  (rejected {self.rejected}, of {self.submits} submits)"
        )

    def print(self, out: TextIO) -> None:
        out.write("chaos: " + "; ".join(self.chaos) + "\n")
        out.write(
            f"load {self.load_s:.1f} s ({self.accepted / max(self.load_s, 1e-9):.0f} accepted/s), "
            f"settled {self.settle_s:.1f} s after the load; {self.retried_calls} client retries, "
            f"{self.backend_attempts_absorbed} repeated back-end calls absorbed by its idempotency\n"
        )
        out.write(f"ledgers consistent: {self.ledgers_consistent} {self.ledger_problems[:5]}\n")
        out.write(self.line() + "\n")
        out.flush()


class Child:
    """A ``tongban <role>`` child process that can be SIGKILLed and started again."""

    def __init__(self, role: str, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.role, self.config, self.log, self.env = role, config, log, env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                die_with_parent(
                    [sys.executable, "-m", "tongban.ops.cli", self.role, "--config", str(self.config)]
                ),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.role} exited with {self.proc.returncode}; see {self.log}")


async def _wait_serving(address: str, deadline: float, children: list[Child]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            for c in children:
                c.check()
            with contextlib.suppress(grpc.aio.AioRpcError):
                r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)  # polling interval of this condition wait (children checked too)
    raise TimeoutError(f"gateway at {address} is not serving")


async def run_chaos(root: Path, *, submits: int, concurrency: int = 24, out: TextIO = sys.stdout) -> Report:
    root = root.resolve()
    report = Report(submits)
    topology = Topology(root / "nats", list(REGIONS))
    await topology.start()
    children: list[Child] = []
    try:
        port = free_port()  # the gateway keeps it across its SIGKILL and restart
        state: DevState = init_state(
            root / "state",
            REGIONS,
            nats_urls={r: topology.url(r) for r in REGIONS},
            nats_seeds=topology.client_seeds(),
            extra={
                "gateway": {
                    "reconcile_interval_s": 2.0,
                    "resend_after_s": 20.0,
                    "ack_wait_s": 3.0,
                    "forward_retry_max_s": 1.0,
                    "max_deadline_s": 10.0,
                },
                "connector": {"ack_wait_s": 3.0, "fetch_batch": 32},
                "log": {"level": "warning"},
            },
        )
        wx_dir = state.config_path(WX).parent
        # Seed the demo back end once, before two connector processes open it.
        DemoCaseAdapter(object(), DemoBackend(wx_dir / "demo-backend.sqlite").path)  # type: ignore[arg-type]
        gateway = Child(
            "gateway",
            state.config_path(SZ),
            root / "gateway-sz.log",
            {"TONGBAN_GATEWAY__LISTEN": f"127.0.0.1:{port}"},
        )
        connectors = [
            Child("connector", state.config_path(WX), root / f"connector-wx-{i}.log") for i in (1, 2)
        ]
        children = [gateway, *connectors]
        for c in children:
            c.start()
        address = f"127.0.0.1:{port}"
        await _wait_serving(address, time.monotonic() + 60, children)

        wx_leaf, hub = topology.leaves[WX], topology.hub

        async def kill_restart(what: str, kill: Callable[[], object], start: Callable[[], object]) -> None:
            r = kill()
            if asyncio.iscoroutine(r):
                await r
            report.chaos.append(f"SIGKILL {what} at {len(receipts)} accepted")
            r = start()
            if asyncio.iscoroutine(r):
                await r

        async def restart_nats(server: NatsServer) -> None:
            await server.start()

        schedule: list[tuple[float, str, Callable[[], object], Callable[[], object]]] = [
            (0.10, "connector 1 of Wuxi", connectors[0].kill, connectors[0].start),
            (0.25, "connector 2 of Wuxi", connectors[1].kill, connectors[1].start),
            (0.40, "connector 1 of Wuxi", connectors[0].kill, connectors[0].start),
            (0.55, "gateway of Shenzhen", gateway.kill, gateway.start),
            (0.70, "Wuxi's nats-server", wx_leaf.kill, lambda: restart_nats(wx_leaf)),
            (0.85, "the hub", hub.kill, lambda: restart_nats(hub)),
        ]

        receipts: dict[str, str] = {}  # idempotency key → message id
        progress = asyncio.Event()
        errors: dict[str, str] = {}
        todo = [f"chaos-{i:06d}" for i in range(submits)]
        rng = random.Random(7)
        rng.shuffle(todo)
        budget = time.monotonic() + max(120.0, submits / 10)
        channel = grpc.aio.insecure_channel(address)
        stub = exchange_pb2_grpc.ExchangeStub(channel)

        async def client() -> None:
            while todo:
                key = todo.pop()
                while True:
                    try:
                        r = await stub.Submit(submit_request(key=key), timeout=5)
                        receipts[key] = r.message_id
                        errors.pop(key, None)
                        progress.set()
                        break
                    except grpc.aio.AioRpcError as err:
                        errors[key] = err.code().name
                        report.retried_calls += 1
                        if time.monotonic() > budget:
                            break
                        # A partner backs off (jittered) before retrying: behaviour under test, not a wait.
                        backoff_s = 0.05 + rng.random() * 0.2
                        await asyncio.sleep(backoff_s)  # the partner's back-off (behaviour under test)

        async def chaos() -> None:
            for fraction, what, kill, start in schedule:
                while len(receipts) < fraction * submits:
                    progress.clear()
                    await progress.wait()
                await kill_restart(what, kill, start)

        t0 = time.monotonic()
        chaos_task = asyncio.create_task(chaos())
        await asyncio.gather(*(client() for _ in range(concurrency)))
        report.load_s = time.monotonic() - t0
        await asyncio.wait_for(chaos_task, 60)
        await channel.close()
        report.accepted, report.rejected = len(receipts), len(errors)

        # Settle: every accepted case approved in Shenzhen's case store.
        cases_db = state.config_path(SZ).parent / "cases.sqlite"
        accepted_ids = set(receipts.values())
        t1 = time.monotonic()
        settle_deadline = t1 + max(120.0, submits / 20)
        while time.monotonic() < settle_deadline:
            for c in children:
                c.check()
            if _approved(cases_db, accepted_ids) == len(accepted_ids):
                break
            await asyncio.sleep(0.25)  # polling interval of this condition wait (children checked too)
        report.settle_s = time.monotonic() - t1

        _account(report, state, receipts, cases_db)
        for c in children:
            c.stop()
        _check_ledgers(report, state, accepted_ids)
        report.print(out)
        return report
    finally:
        for c in children:
            c.stop()
        await topology.stop()


def _approved(cases_db: Path, ids: set[str]) -> int:
    return len(ids & message_ids_with_status(cases_db, APPROVED))


def _account(report: Report, state: DevState, receipts: dict[str, str], cases_db: Path) -> None:
    effects = case_effects(state.config_path(WX).parent / "demo-backend.sqlite")
    approved = message_ids_with_status(cases_db, APPROVED)
    conn = sqlite3.connect(f"file:{cases_db}?mode=ro", uri=True, timeout=30)
    try:
        per_key = Counter(r[0] for r in conn.execute("SELECT idem_key FROM cases"))
    finally:
        conn.close()
    ids = set(receipts.values())
    report.delivered = sum(1 for m in ids if m in effects and m in approved)
    report.lost = len(ids) - report.delivered
    report.backend_attempts_absorbed = sum(n - 1 for m, n in effects.items() if m in ids)
    # One case per idempotency key, and nothing the back end took that nobody was told was accepted.
    report.duplicated = sum(n - 1 for n in per_key.values() if n > 1) + len(set(effects) - ids)


def _check_ledgers(report: Report, state: DevState, ids: set[str]) -> None:
    problems = report.ledger_problems
    counts: dict[str, Counter[tuple[str, str]]] = {}
    for region in (SZ, WX):
        path = state.ledger_path(region)
        v = verify_sqlite_file(path, region=region)
        if not v.ok:
            problems.append(f"{region} chain broken at {v.first_bad_index}: {v.reason}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            counts[region] = Counter(
                (r[0], r[1]) for r in conn.execute("SELECT message_id, event FROM entries")
            )
        finally:
            conn.close()
    sz, wx = counts[SZ], counts[WX]
    for m in ids:
        expect = {
            (SZ, Event.SUBMITTED): 1,
            (SZ, Event.STATUS): 3,
            (WX, Event.PROCESSED): 1,
            (WX, Event.STATUS): 3,
        }
        for (region, event), n in expect.items():
            got = (sz if region == SZ else wx)[(m, event.value)]
            if got != n:
                problems.append(f"{region} {m} {event.value} x{got}")
                if event in (Event.SUBMITTED, Event.PROCESSED) and got > n:
                    report.duplicated += got - n
        if sz[(m, Event.PUBLISHED.value)] < 1:
            problems.append(f"{SZ} {m} never PUBLISHED")
    report.ledgers_consistent = not problems
