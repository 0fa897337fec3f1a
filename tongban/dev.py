"""``tongban dev``: a complete two-region stack on this machine, for trying tongban out.

Starts the NATS topology (hub + one leaf per region), picks a free port for each region's gateway,
writes the dev trust domain (the registry names every gateway's address, so tools such as
``tongban trace`` find the regions' gateways from it), then one gateway and one connector process per
region; waits until a request can really cross (gateway health
SERVING, every region's connector reachable from every other region's leaf), prints what runs
where and a command to paste. Ctrl-C stops gateways first, then connectors, then NATS.
"""

from __future__ import annotations

import asyncio
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
from typing import TextIO

import grpc
import nats
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tongban import subjects
from tongban.catalogue import Catalogue
from tongban.devstate import DEV_REGIONS, DevState, init_state
from tongban.natsserver import Topology
from tongban.process import die_with_parent, wait_for_signal

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


@dataclass
class Child:
    role: str
    region: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class DevStack:
    """The running dev stack: topology, state and child processes."""

    root: Path
    regions: Mapping[str, str] = field(default_factory=lambda: dict(DEV_REGIONS))
    otlp_endpoint: str = ""
    log_format: str = "json"
    extra_config: dict[str, dict[str, object]] = field(default_factory=dict)
    """Config values merged into every region's node.toml (e.g. another adapter set)."""
    topology: Topology | None = None
    state: DevState | None = None
    children: list[Child] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    async def start(self, timeout: float = 60.0) -> None:
        self.root = self.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.topology = Topology(self.root / "nats", list(self.regions))
        await self.topology.start()
        extra = {k: dict(v) for k, v in self.extra_config.items()}
        if self.otlp_endpoint:
            extra.setdefault("telemetry", {})["otlp_endpoint"] = self.otlp_endpoint
        # Fixed ports, known before the gateways start, so the registry can name them.
        self.state = init_state(
            self.root,
            self.regions,
            nats_urls={r: self.topology.url(r) for r in self.regions},
            nats_seeds=self.topology.client_seeds(),
            log_format=self.log_format,
            extra=extra,
            gateway_ports={region: free_port() for region in self.regions},
        )
        for region in self.regions:
            self.state.port_file(region).unlink(missing_ok=True)
        for role in ("connector", "gateway"):
            for region in self.regions:
                self._spawn(role, region)
        deadline = time.monotonic() + timeout
        await self._wait_ready(deadline)

    def _spawn(self, role: str, region: str) -> None:
        assert self.state is not None
        logp = self.root / region / f"{role}.log"
        with open(logp, "ab") as logf:
            proc = subprocess.Popen(
                die_with_parent(
                    [
                        sys.executable,
                        "-m",
                        "tongban.cli",
                        role,
                        "--config",
                        str(self.state.config_path(region)),
                    ]
                ),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.children.append(Child(role, region, proc, logp))

    def _check_children(self) -> None:
        for c in self.children:
            if c.proc.poll() is not None:
                raise RuntimeError(f"{c.role} of {c.region} exited with {c.proc.returncode}; see {c.log}")

    async def _wait_ready(self, deadline: float) -> None:
        assert self.state is not None and self.topology is not None
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
        """Gateways, then connectors (SIGTERM, graceful), then NATS. Idempotent."""
        for role in ("gateway", "connector"):
            group = [c for c in self.children if c.role == role and c.proc.poll() is None]
            for c in group:
                c.proc.send_signal(signal.SIGTERM)
            for c in group:
                try:
                    await asyncio.to_thread(c.proc.wait, 15)
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    await asyncio.to_thread(c.proc.wait)
        self.children.clear()
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
            w(f"    gateway        127.0.0.1:{self.ports[region]}  (gRPC: Exchange, health, reflection)\n")
            w(f"    connector      demo back ends, log {self.root / region / 'connector.log'}\n")
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
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.5)
            for c in stack.children:
                if c.proc.poll() is not None:
                    out.write(f"{c.role} of {c.region} exited ({c.proc.returncode}); stopping. See {c.log}\n")
                    waiter.cancel()
                    break
        out.write("stopping...\n")
    finally:
        await stack.stop()
        out.write("stopped.\n")
        out.flush()
