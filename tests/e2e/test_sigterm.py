"""SIGTERM under load: a gateway process and a connector process each exit within ``[process]
grace_s``, with status 0, while Queries and Submits run; what was in flight gets an answer or a
defined error, nothing accepted is lost, and both ledgers verify afterwards.

Real processes (``tongban gateway`` / ``tongban connector``, as the chaos run starts them) on real
nats-servers; the load comes from this test over gRPC.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.chaos.harness import Child
from tests.conftest import SZ, WX
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.e2e.cli import tongban
from tests.e2e.requests import pension
from tests.helpers import eventually, free_port
from tongban.core import subjects
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.v1 import exchange_pb2_grpc

QUERY_SERVICE = pension().request.service_code
EXIT_MARGIN_S = 1.5
"""Beyond the grace, for the interpreter's own exit: a functional bound, not a performance one."""
DEFINED_ERRORS = {
    grpc.StatusCode.UNAVAILABLE,  # refused while stopping, no connector, gateway not listening
    grpc.StatusCode.DEADLINE_EXCEEDED,  # no answer within the caller's deadline
}
"""What a caller may see from a stopping gateway or connector: retryable, and said as such."""
SHUTDOWN_ERRORS = {grpc.StatusCode.CANCELLED}
"""Also while the gateway's gRPC server shuts down: a call that reaches it then, but no handler,
is cancelled by grpc (it never ran: no ledger entry; the ledger checks below say so)."""
OUTCOMES = {"RESPONDED", "REJECTED", "EXPIRED"}
"""The entries that close a Query's SUBMITTED in the sending region's ledger."""


@dataclass
class Load:
    """Queries and Submits from several concurrent callers until ``stop`` is set."""

    address: str
    answered: int = 0
    accepted: dict[str, str] = field(default_factory=dict)
    """Idempotency key → message id of each Submit with a receipt."""
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(rpc, status code name) → count."""
    phase: str = "load"
    undefined: list[str] = field(default_factory=list)
    """Errors outside DEFINED_ERRORS, with their details."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _queries(self, stub: exchange_pb2_grpc.ExchangeStub) -> None:
        while not self.stop.is_set():
            try:
                await stub.Query(pension(), timeout=5)
                self.answered += 1
            except grpc.aio.AioRpcError as exc:
                await self._failed("Query", exc)

    async def _submits(self, stub: exchange_pb2_grpc.ExchangeStub, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            key = f"sigterm-{worker}-{n}"
            try:
                receipt = await stub.Submit(submit_request(key=key), timeout=5)
                self.accepted[key] = receipt.message_id
                n += 1
            except grpc.aio.AioRpcError as exc:
                await self._failed("Submit", exc)  # retried with the same key, as a partner would

    async def _failed(self, rpc: str, exc: grpc.aio.AioRpcError) -> None:
        self.errors[rpc, exc.code().name] += 1
        defined = DEFINED_ERRORS | (SHUTDOWN_ERRORS if self.phase == "gateway stop" else set())
        if exc.code() not in defined:
            self.undefined.append(f"{rpc} during {self.phase}: {exc.code().name} {exc.details()}")
        # A partner backs off after an error; without it a refused connection is a busy loop.
        await asyncio.sleep(0.05)  # the partner's back-off: behaviour of the load, not a wait

    async def run(self, queries: int = 6, submits: int = 3) -> None:
        async with grpc.aio.insecure_channel(self.address) as ch:
            stub = exchange_pb2_grpc.ExchangeStub(ch)
            await asyncio.gather(
                *(self._queries(stub) for _ in range(queries)),
                *(self._submits(stub, w) for w in range(submits)),
            )


@pytest.fixture
async def processes(
    tmp_path: Path, topology: Topology, state: DevState
) -> AsyncIterator[tuple[Child, Child, str]]:
    """Shenzhen's gateway (on a port it keeps across restarts) and Wuxi's connector."""
    address = f"127.0.0.1:{free_port()}"
    gateway = Child(
        "gateway", state.config_path(SZ), tmp_path / "gateway-sz.log", {"TONGBAN_GATEWAY__LISTEN": address}
    )
    connector = Child("connector", state.config_path(WX), tmp_path / "connector-wx.log")
    try:
        connector.start()
        gateway.start()
        await _serving(address, gateway)
        await _reachable(topology, connector)
        yield gateway, connector, address
    finally:
        gateway.kill()
        connector.kill()


async def _serving(address: str, gateway: Child) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def serving() -> bool:
            gateway.check()
            try:
                r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return r.status == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, timeout=60, what="Shenzhen's gateway serving")


async def _reachable(topology: Topology, connector: Child) -> None:
    nc = await topology.admin_client(SZ)
    try:

        async def answers() -> bool:
            connector.check()
            try:
                await nc.request(subjects.ping_subject(WX), b"", timeout=0.5)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return False
            return True

        await eventually(answers, timeout=60, what="Wuxi's connector reachable from Shenzhen")
    finally:
        await nc.close()


async def _sigterm(child: Child) -> tuple[float, int]:
    """SIGTERM ``child``; (seconds until it exited, its exit status)."""
    assert child.proc is not None
    began = time.monotonic()
    child.proc.send_signal(signal.SIGTERM)
    status = await asyncio.to_thread(child.proc.wait, 60)
    return time.monotonic() - began, status


def _rows(path: Path, sql: str, *params: object) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


@pytest.mark.timeout(300)
async def test_sigterm_under_load_exits_within_the_grace_and_the_ledgers_verify(
    processes: tuple[Child, Child, str], topology: Topology, state: DevState
) -> None:
    gateway, connector, address = processes
    grace = Config.load(state.config_path(SZ)).process.grace_s
    assert grace == Config.load(state.config_path(WX)).process.grace_s == 10.0  # the default
    load = Load(address)
    running = asyncio.create_task(load.run())
    try:
        await eventually(lambda: load.answered >= 20 and len(load.accepted) >= 10, timeout=60, what="load")

        # The connector, with Queries in its hands and cases in its stream.
        load.phase = "connector stop"
        took, status = await _sigterm(connector)
        print(f"connector: SIGTERM under load, exit {status} after {took:.2f} s (grace {grace} s)")
        assert status == 0, connector.log.read_text()[-3000:]
        assert took <= grace + EXIT_MARGIN_S

        load.phase = "connector restart"
        connector.start()
        await _reachable(topology, connector)
        load.phase = "load"
        answered = load.answered
        await eventually(lambda: load.answered >= answered + 20, timeout=60, what="load served again")

        # The gateway, with Queries and Submits in flight.
        load.phase = "gateway stop"
        took, status = await _sigterm(gateway)
        load.phase = "gateway stopped"
        print(f"gateway: SIGTERM under load, exit {status} after {took:.2f} s (grace {grace} s)")
        assert status == 0, gateway.log.read_text()[-3000:]
        assert took <= grace + EXIT_MARGIN_S
    finally:
        load.stop.set()
        await asyncio.wait_for(running, 30)
    print(f"load: {load.answered} answered, {len(load.accepted)} accepted, errors {dict(load.errors)}")
    assert load.undefined == []

    # Nothing accepted is lost: the restarted gateway forwards what waited in its stream.
    gateway.start()
    await _serving(address, gateway)
    wx_ledger, sz_ledger = state.ledger_path(WX), state.ledger_path(SZ)
    wanted = set(load.accepted.values())

    def processed() -> set[str]:
        rows = _rows(wx_ledger, "SELECT DISTINCT message_id FROM entries WHERE event = 'PROCESSED'")
        return {mid for (mid,) in rows} & wanted

    await eventually(
        lambda: processed() == wanted, timeout=90, what="every accepted Submit processed in Wuxi"
    )
    for child in (gateway, connector):
        took, status = await _sigterm(child)
        assert status == 0 and took <= grace + EXIT_MARGIN_S, (child.role, status, took)

    # Every Query SUBMITTED in Shenzhen has its outcome; every accepted Submit its SUBMITTED.
    by_message: dict[str, set[str]] = {}
    for mid, event in _rows(
        sz_ledger, "SELECT message_id, event FROM entries WHERE service_code = ?", QUERY_SERVICE
    ):
        by_message.setdefault(mid, set()).add(event)
    open_queries = [m for m, events in by_message.items() if "SUBMITTED" in events and not events & OUTCOMES]
    assert by_message and open_queries == []
    submitted = {
        mid
        for (mid,) in _rows(
            sz_ledger,
            "SELECT message_id FROM entries WHERE event = 'SUBMITTED' AND service_code = ?",
            CASE_SERVICE,
        )
    }
    assert wanted <= submitted
    for region in (SZ, WX):
        code, out, err = await tongban("ledger", "verify", "--config", str(state.config_path(region)))
        print(f"ledger verify {region}: {out.strip()}")
        assert code == 0, out + err
