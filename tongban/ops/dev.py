"""``tongban dev``: a complete two-region stack on this machine, for trying tongban out.

Starts the NATS topology (hub + one leaf per region), picks a free port for each region's gateway,
writes the dev trust domain (the registry names every gateway's address, so tools such as
``tongban trace`` find the regions' gateways from it), then one gateway and one connector process per
region; waits until a request can really cross (gateway health
SERVING, every region's connector reachable from every other region's leaf), prints what runs
where and a command to paste.

Then it supervises: a child that exits (gateway, connector, a nats-server) is restarted on the same
addresses after an exponential back-off, and the rest keep serving. Ctrl-C (or SIGTERM) stops
gateways first, then connectors, then NATS, each SIGTERM then SIGKILL after a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import grpc
import nats
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tongban.core import subjects
from tongban.core.catalogue import Catalogue
from tongban.ops.devstate import DEV_REGIONS, DevState, init_state
from tongban.ops.natsserver import NatsServer, NatsServerError, Topology
from tongban.runtime.config import Config
from tongban.runtime.process import die_with_parent, wait_for_signal

log = structlog.get_logger("tongban.ops.dev")

DEMO_PERSON = "320213198511200025"

DEV_MODE_BANNER = """\
################################################################################
#  DEV MODE: NOT FOR CITIZENS' DATA                                            #
#  - gRPC is plaintext and partners are not authenticated (no mutual TLS)      #
#  - the registry root key, region keys and NATS secrets sit on this disk      #
#  - the back ends are demo data                                               #
#  Production: mutual TLS ([gateway] tls_cert/tls_key/client_ca), root key     #
#  offline, deploy/nats from `tongban nats-config`; deploy/threat-model.md     #
################################################################################
"""


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port for a server started a moment later, never one this process handed
    out before.

    Below the kernel's ephemeral range where it has one: a port the kernel hands out for port 0 or
    for an outgoing connection could be taken again before the server binds it (tests also use
    this for servers that must keep their port across a restart).
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    while True:
        port = random.randrange(max(1024, low - 12000), low) if low > 2048 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@dataclass(frozen=True)
class Backoff:
    """How long the supervisor waits before restarting a child that exited."""

    initial_s: float = 0.5
    """Delay before the first restart after a stable run."""
    cap_s: float = 15.0
    """Longest delay: a child that keeps crashing is retried this often, for ever."""
    stable_s: float = 10.0
    """A child that stayed up this long starts again from ``initial_s`` when it next exits."""

    def delay(self, attempt: int) -> float:
        """The wait before restart ``attempt`` (1 = first restart after a stable run)."""
        return min(self.cap_s, self.initial_s * 2 ** max(0, attempt - 1))


DEMO_BACKEND = "demo-backend"
"""Role of a region's demo REST services process."""

POLL_S = 0.1
"""How often the supervisor looks for exited children."""

STOP_GRACE_S = 15.0
"""How long gateways, then connectors, have to stop after SIGTERM before they are killed."""


class Supervised(Protocol):
    """A child process the supervisor watches and restarts."""

    role: str
    region: str
    started: float
    """``time.monotonic()`` of its last start."""

    @property
    def log(self) -> Path:
        """Where its output goes (named in the crash logs)."""
        ...

    @property
    def pid(self) -> int | None: ...

    def returncode(self) -> int | None:
        """None while running; else Popen's code (negative: the signal that ended it)."""
        ...

    async def start(self) -> None: ...


@dataclass
class Child:
    """A gateway or connector process: ``tongban <role> --config <region>/node.toml``."""

    role: str
    region: str
    log: Path
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    async def start(self) -> None:
        self.started = time.monotonic()
        # Spawned on the event loop's thread, never through to_thread: the kernel's death signal
        # follows the thread that forked the child, and a worker thread can end before the stack.
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                die_with_parent(self.argv),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
                env=self.env,
            )

    def terminate(self) -> None:
        """SIGTERM: a graceful stop (gateways drain, connectors finish what they hold)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    async def wait_or_kill(self, deadline: float) -> None:
        """Wait for it to end until ``deadline``, then SIGKILL it."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            await asyncio.to_thread(proc.wait, max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("dev.child_killed", role=self.role, region=self.region, pid=proc.pid)
            proc.kill()
            await asyncio.to_thread(proc.wait)


@dataclass
class NatsChild:
    """A nats-server of the topology; restarted through :meth:`NatsServer.start`, which reuses its
    ports and store directory (leaves reconnect to the hub, clients to their leaf)."""

    role: str
    region: str
    server: NatsServer
    started: float = field(default_factory=time.monotonic)

    @property
    def log(self) -> Path:
        return self.server.workdir / f"{self.server.spec.name}.log"

    @property
    def pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc is not None else None

    def returncode(self) -> int | None:
        return self.server.proc.poll() if self.server.proc is not None else None

    async def start(self) -> None:
        self.started = time.monotonic()
        await self.server.start()


def _exit_fields(code: int) -> dict[str, object]:
    """Log fields for Popen's return code (negative: killed by that signal)."""
    if code >= 0:
        return {"exit_code": code, "signal": None}
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = str(-code)
    return {"exit_code": None, "signal": name}


@dataclass
class DevStack:
    """The running dev stack: topology, state and child processes, supervised once started."""

    root: Path
    regions: Mapping[str, str] = field(default_factory=lambda: dict(DEV_REGIONS))
    otlp_endpoint: str = ""
    log_format: str = "json"
    extra_config: dict[str, dict[str, object]] = field(default_factory=dict)
    """Config values merged into every region's node.toml (e.g. another adapter set)."""
    backoff: Backoff = field(default_factory=Backoff)
    """Restart delays of crashed children."""
    declared_demo: bool = True
    """Each region's demo back ends as declared HTTP and SQL services, the REST services in a
    process of their own (``tongban demo-backend``), unless ``extra_config`` names ``[connector]
    adapters``; False: the in-process demo adapters."""
    demo_ports: dict[str, int] = field(default_factory=dict)
    """Port of each region's demo REST services."""
    topology: Topology | None = None
    state: DevState | None = None
    children: list[Child] = field(default_factory=list)
    """Gateways and connectors."""
    nats: list[NatsChild] = field(default_factory=list)
    """The hub and the leaves."""
    ports: dict[str, int] = field(default_factory=dict)
    supervisor: asyncio.Task[None] | None = field(default=None, repr=False)
    """Restarts children that exit; runs from the end of :meth:`start` until :meth:`stop`."""

    async def start(self, timeout: float = 60.0) -> None:
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.topology = Topology(self.root / "nats", list(self.regions))
        await self.topology.start()
        self.nats = [
            NatsChild("nats-hub", "", self.topology.hub),
            *(NatsChild("nats-leaf", region, leaf) for region, leaf in self.topology.leaves.items()),
        ]
        extra = {k: dict(v) for k, v in self.extra_config.items()}
        # A caller naming its own back ends ([connector] adapters, e.g. a bench) gets no demo.
        if self.declared_demo and "adapters" not in extra.get("connector", {}):
            self.demo_ports = {region: free_port() for region in self.regions}
        if self.otlp_endpoint:
            extra.setdefault("telemetry", {})["otlp_endpoint"] = self.otlp_endpoint
        # Each connector's back-end API, plaintext as the dev stack is (`tongban case send-status`).
        extra["backend_api"] = {
            "listen": "127.0.0.1:0",
            "port_file": "backend-api.port",
            **extra.get("backend_api", {}),
        }
        # Fixed ports, known before the gateways start, so the registry can name them and a
        # restarted gateway comes back on the printed address.
        self.state = init_state(
            self.root,
            self.regions,
            nats_urls={r: self.topology.url(r) for r in self.regions},
            nats_seeds=self.topology.client_seeds(),
            log_format=self.log_format,
            extra=extra,
            gateway_ports={region: free_port() for region in self.regions},
            demo_http_ports=self.demo_ports,
        )
        for region in self.regions:
            self.state.port_file(region).unlink(missing_ok=True)
        for region in self.demo_ports:
            child = self._child(DEMO_BACKEND, region)
            self.children.append(child)
            await child.start()
        for role in ("connector", "gateway"):
            for region in self.regions:
                child = self._child(role, region)
                self.children.append(child)
                await child.start()
        deadline = time.monotonic() + timeout
        await self._wait_ready(deadline)
        self.supervisor = asyncio.create_task(self._supervise_all(), name="dev-supervisor")

    def _child(self, role: str, region: str) -> Child:
        assert self.state is not None
        config = self.state.config_path(region)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # A metrics endpoint on port 0 would move on every restart: pin it now, for every start.
        listen, _ = Config.load(config).metrics.listen(role) if role != DEMO_BACKEND else ("", None)
        host, _, port = listen.rpartition(":")
        if listen and port == "0":
            env[f"TONGBAN_METRICS__{role.upper()}_LISTEN"] = f"{host}:{free_port()}"
        return Child(
            role,
            region,
            self.root / region / f"{role}.log",
            [sys.executable, "-m", "tongban.ops.cli", role, "--config", str(config)],
            env,
        )

    async def _supervise_all(self) -> None:
        supervised: list[Supervised] = [*self.nats, *self.children]
        async with asyncio.TaskGroup() as tg:
            for child in supervised:
                tg.create_task(self._supervise(child), name=f"supervise-{child.role}-{child.region}")

    async def _supervise(self, child: Supervised) -> None:
        """Restart ``child`` whenever it exits, after a back-off that doubles while it keeps
        crashing soon after each start; never gives up (a dev stack should heal once the cause
        is fixed, e.g. a port freed or a file restored)."""
        attempt = 0
        while True:
            # Popen's exit is not awaitable; polling is cancel-safe, where a thread blocked in
            # wait() would outlive the supervisor.
            while (code := child.returncode()) is None:  # noqa: ASYNC110
                await asyncio.sleep(POLL_S)
            up_s = time.monotonic() - child.started
            attempt = 1 if up_s >= self.backoff.stable_s else attempt + 1
            delay = self.backoff.delay(attempt)
            fields: dict[str, object] = {
                "role": child.role,
                "region": child.region,
                "pid": child.pid,
                **_exit_fields(code),
                "uptime_s": round(up_s, 1),
                "attempt": attempt,
                "delay_s": delay,
                "log": str(child.log),
            }
            if delay >= self.backoff.cap_s:
                log.error("dev.child_crash_looping", **fields)
            else:
                log.warning("dev.child_exited", **fields)
            await asyncio.sleep(delay)
            try:
                await child.start()
            except (NatsServerError, OSError) as exc:
                # Counted as the next crash: a dead child is seen at once, a live one is watched.
                log.warning(
                    "dev.child_restart_failed",
                    role=child.role,
                    region=child.region,
                    attempt=attempt,
                    error=str(exc),
                )
                continue
            log.warning(
                "dev.child_restarted", role=child.role, region=child.region, pid=child.pid, attempt=attempt
            )

    def _check_children(self) -> None:
        """During start-up a child that exits is a fault to report, not to restart."""
        for c in self.children:
            code = c.returncode()
            if code is not None:
                raise RuntimeError(f"{c.role} of {c.region} exited with {code}; see {c.log}")

    async def _wait_ready(self, deadline: float) -> None:
        assert self.state is not None and self.topology is not None
        for region, port in self.demo_ports.items():
            while not await _accepts(port):
                self._check_children()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"demo back end of {region} is not listening on {port}")
                await asyncio.sleep(0.05)
        for region in self.regions:
            pf = self.state.port_file(region)
            while not pf.exists():
                self._check_children()
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"gateway of {region} did not start; see {self.root / region / 'gateway.log'}"
                    )
                await asyncio.sleep(0.05)
            self.ports[region] = int(pf.read_text())
            async with grpc.aio.insecure_channel(f"127.0.0.1:{self.ports[region]}") as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                while True:
                    self._check_children()
                    try:
                        r = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                        if r.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"gateway of {region} is not SERVING")
                    await asyncio.sleep(0.05)
        # Interest propagates hub → leaves asynchronously: prove every path with a real request.
        for src in self.regions:
            nc = await self.topology.admin_client(src)
            try:
                for dst in self.regions:
                    while True:
                        self._check_children()
                        try:
                            await nc.request(subjects.ping_subject(dst), b"", timeout=0.5)
                            break
                        except (TimeoutError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
                            if time.monotonic() > deadline:
                                raise TimeoutError(f"connector of {dst} unreachable from {src}") from None
                            await asyncio.sleep(0.05)
            finally:
                await nc.close()

    async def stop(self) -> None:
        """Stop supervising, then gateways, then connectors (SIGTERM, graceful, SIGKILL after
        :data:`STOP_GRACE_S`), then NATS. Idempotent."""
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        for role in ("gateway", "connector", DEMO_BACKEND):
            group = [c for c in self.children if c.role == role]
            for c in group:
                c.terminate()
            deadline = time.monotonic() + STOP_GRACE_S
            await asyncio.gather(*(c.wait_or_kill(deadline) for c in group))
        self.children.clear()
        self.nats.clear()
        if self.topology is not None:
            await self.topology.stop()

    def metrics_url(self, region: str, role: str) -> str:
        """The /metrics address of a process, from the port file it wrote ('-' if none yet)."""
        try:
            port = int((self.root / region / f"{role}-metrics.port").read_text())
        except (OSError, ValueError):
            return "-"
        return f"http://127.0.0.1:{port}/metrics"

    def describe(self, out: TextIO) -> None:
        assert self.topology is not None and self.state is not None
        cat = Catalogue.load()
        pension = next(
            (i for i in cat.items.values() if "参保缴费记录" in i.name), next(iter(cat.items.values()))
        )
        w = out.write
        w(DEV_MODE_BANNER)
        w("tongban dev stack is up\n\n")
        w(f"  state directory  {self.root}\n")
        w(f"  nats hub         {self.topology.hub.client_url}  (leafnodes {self.topology.hub.leaf_url})\n")
        for region, name in self.regions.items():
            w(f"  region {region} {name}\n")
            w(f"    nats leaf      {self.topology.url(region)}  (JetStream domain {region})\n")
            w(
                f"    gateway        127.0.0.1:{self.ports[region]}  "
                "(gRPC: Exchange, CatalogueService, Ledger, health, reflection)\n"
            )
            w(f"    connector      log {self.root / region / 'connector.log'}\n")
            api_port = self.root / region / "backend-api.port"
            if api_port.exists():
                w(
                    f"    back-end API   127.0.0.1:{api_port.read_text().strip()}  "
                    "(CaseBackend, for the case system)\n"
                )
            if region in self.demo_ports:
                w(
                    f"    back ends      demo REST services http://127.0.0.1:{self.demo_ports[region]} "
                    f"and demo database, declared in {self.state.config_path(region)}\n"
                )
            w(f"    metrics        {self.metrics_url(region, 'gateway')} (gateway), ")
            w(f"{self.metrics_url(region, 'connector')} (connector); /livez, /readyz beside them\n")
            w(f"    ledger         {self.state.ledger_path(region)}\n")
        codes = list(self.regions)
        src, dst = codes[0], codes[min(1, len(codes) - 1)]
        exe = Path(sys.executable).parent / "tongban"
        w(f"\nAsk {dst} for a {pension.name} record from {src}:\n\n")
        w(
            f"  {exe} query --gateway 127.0.0.1:{self.ports[src]} --to {dst} --service {pension.code} "
            f"--field id_no={DEMO_PERSON} --purpose KSTB_CASE_HANDLING "
            f"--approval-ref SZ-APPROVAL-2026-0001\n\n"
        )
        w(f"Hand {dst} a pension transfer case (store and forward, status events back):\n\n")
        w(
            f"  {exe} submit --gateway 127.0.0.1:{self.ports[src]} --to {dst} --service YLBXZYJX0001 "
            f"--field id_no=44030419900307123X --field transfer_out_region={dst} "
            f"--field transfer_in_region={src} --purpose KSTB_CASE_HANDLING "
            f"--approval-ref SZ-APPROVAL-2026-0001 --watch\n\n"
        )
        w(f"Check a ledger:  {exe} ledger verify --region {src} --state-dir {self.root}\n")
        w(
            f"Trace a request across regions (message id or case number from the answer):\n"
            f"  {exe} trace <message-id|case-no> --region {src} --state-dir {self.root}\n"
        )
        w("DEV MODE: never put real citizens' data through this stack.  Ctrl-C stops everything.\n")
        out.flush()


async def _accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def run_dev(
    root: Path, *, otlp_endpoint: str = "", log_format: str = "console", out: TextIO = sys.stdout
) -> None:
    stack = DevStack(root, otlp_endpoint=otlp_endpoint, log_format=log_format)
    # Signals are handled from the first moment: a stop during start-up must stop what started.
    waiter = asyncio.create_task(wait_for_signal())
    starter = asyncio.create_task(stack.start())
    try:
        await asyncio.wait({waiter, starter}, return_when=asyncio.FIRST_COMPLETED)
        if not starter.done():
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
            out.write("stopping before start-up finished...\n")
            return
        starter.result()
        stack.describe(out)
        assert stack.supervisor is not None
        await asyncio.wait({waiter, stack.supervisor}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            # Supervision only ends on a bug: say so, and stop what still runs.
            stack.supervisor.result()
            raise RuntimeError("the dev stack's supervisor ended")
        out.write("stopping...\n")
    finally:
        waiter.cancel()
        await stack.stop()
        out.write("stopped.\n")
        out.flush()
