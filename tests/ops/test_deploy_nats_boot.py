"""deploy/nats booted: the whole production topology (3 hub nodes, 3 regions of 3 nodes) on loopback
from the committed files, with hostnames, ports, store directories and the secrets rewritten, every
region joining the hub as its own NKey user over TLS, and tongban's processes logging in to their
region's nodes over TLS first as their role's NKey user.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import nats
import nats.errors
import pytest

from tests.helpers import eventually_sync, free_port
from tests.ops.natsdeploy import (
    DOMAIN,
    HUB_CONFS,
    HUBS,
    NODE_CONFS,
    expand,
    generated_keys,
    node_env,
    node_secrets,
)
from tongban.core import subjects
from tongban.ops import natsconfig
from tongban.ops.natsconfig import INSTALL_DIR
from tongban.ops.natsserver import check_binary
from tongban.runtime import natsroles, streams
from tongban.runtime.config import Config
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats

# -- booting the same files on loopback ---------------------------------------------------------


@dataclass
class Booted:
    """The topology from deploy/nats running on loopback; ``addr[(server, port)]`` maps a production
    endpoint (e.g. ``("hub-1", 7422)``) to its loopback ``host:port``."""

    addr: dict[tuple[str, int], str]
    secrets: natsconfig.Secrets

    def monitor(self, server: str, path: str) -> dict[str, object]:
        url = f"http://{self.addr[(server, 8222)]}{path}"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read().decode())  # type: ignore[no-any-return]

    def client_url(self, server: str) -> str:
        return f"nats://{self.addr[(server, 4222)]}"

    def config(self, server: str) -> Config:
        """A node config of ``server``'s region as a deployment writes it: the node's client port,
        the CA of the client-port certificates and the roles' seeds (``tongban nats-config``)."""
        region = server.split("-")[0]
        s = self.secrets
        nats_section = {
            "servers": [self.client_url(server)],
            "tls_ca": str(s.clients_dir(region) / "ca.crt"),
            "connect_timeout_s": 5.0,
            "max_reconnect_attempts": 0,
            **{f"{role.value}_nkey_seed": str(s.client_seed_file(region, role)) for role in s.roles},
        }
        return Config.from_dict({"region": {"code": region}, "nats": nats_section}, base_dir=s.root, env={})

    async def connect(self, server: str, role: NatsRole) -> nats.NATS:
        return await connect_nats(self.config(server), role=role, name=f"test-{role.value}")


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Until ``check`` holds; a node not answering yet (connection refused, no such key) is "not yet"."""
    eventually_sync(check, timeout=timeout, what=what, tolerate=(OSError, urllib.error.URLError, KeyError))


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory, secrets: natsconfig.Secrets) -> Iterator[Booted]:
    binary = check_binary()
    root = tmp_path_factory.mktemp("deploy-nats")
    addr: dict[tuple[str, int], str] = {}

    def loopback(server: str, port: int) -> str:
        if (server, port) not in addr:
            addr[(server, port)] = f"127.0.0.1:{free_port()}"
        return addr[(server, port)]

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, conf in {**HUB_CONFS, **NODE_CONFS}.items():
            text = expand(conf)
            # 0.0.0.0 is "this host"; every <name>.tongban.internal gets its own loopback ports.
            text = re.sub(r"0\.0\.0\.0:(\d+)", lambda m, n=name: loopback(n, int(m[1])), text)
            text = re.sub(rf"([\w-]+){re.escape(DOMAIN)}:(\d+)", lambda m: loopback(m[1], int(m[2])), text)
            text, subs = re.subn(r'store_dir\s*:\s*"[^"]*"', f'store_dir: "{root / name / "js"}"', text)
            assert subs == (1 if name in NODE_CONFS else 0)
            assert DOMAIN not in text and "0.0.0.0" not in text
            # Its secrets; the servers know the generated public keys instead of the committed.
            text = text.replace(str(INSTALL_DIR), str(node_secrets(secrets, name)))
            for committed, key in generated_keys(secrets).items():
                text = text.replace(committed, key)
            path = root / f"{name}.conf"
            path.write_text(text)
            with open(root / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [str(binary), "-c", str(path)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=node_env(secrets, name),
                    )
                )
        boot = Booted(addr, secrets)

        def healthy(name: str) -> bool:
            for p, n in zip(procs, (*HUB_CONFS, *NODE_CONFS), strict=True):
                assert p.poll() is None, f"{n} exited: {(root / f'{n}.log').read_text()[-2000:]}"
            # A clustered JetStream server is healthy only once it knows its meta leader.
            return boot.monitor(name, "/healthz").get("status") == "ok"

        for name in (*HUBS, *NODE_CONFS):
            wait_for(lambda n=name: healthy(n), f"{name} healthy")
        yield boot
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_boot_clusters_and_leafnodes(booted: Booted) -> None:
    for name in (*HUBS, *NODE_CONFS):
        wait_for(lambda n=name: booted.monitor(n, "/routez")["num_routes"] >= 2, f"{name} routes")
    # Every region node is a leafnode of some hub node: 9 leaf connections across the hub cluster.
    wait_for(
        lambda: sum(int(booted.monitor(h, "/leafz")["leafnodes"]) for h in HUBS) == 9,  # type: ignore[call-overload]
        "9 leafnode connections on the hub",
    )
    for hub in HUBS:
        varz = booted.monitor(hub, "/varz")
        assert varz["cluster"]["name"] == "tongban-hub"  # type: ignore[index]
        assert booted.monitor(hub, "/jsz")["disabled"] is True, f"{hub} runs JetStream"
        assert not varz["jetstream"]
        assert varz["max_payload"] == 4 * 1024 * 1024


def test_boot_region_domains(booted: Booted) -> None:
    for name in NODE_CONFS:
        region = name.split("-")[0]
        jsz = booted.monitor(name, "/jsz")
        config = jsz["config"]
        assert config["domain"] == region  # type: ignore[index]
        assert config["sync_always"] is True  # type: ignore[index]
        meta = jsz["meta_cluster"]
        assert meta["name"] == f"tongban-{region}"  # type: ignore[index]
        assert meta["cluster_size"] == 3  # type: ignore[index]
        assert str(meta["leader"]).startswith(f"{region}-node-")  # type: ignore[index]


async def test_boot_region_streams_at_replicas_3(booted: Booted) -> None:
    """tongban's four streams of Shenzhen at replicas 3 in its domain, created by Shenzhen's gateway
    user; Wuxi's users may not even ask for Shenzhen's JetStream API (and the hub would not carry
    it); a request Qingdao's gateway forwards (with Qingdao's inbox prefix, where the PubAck may come
    back) lands in Shenzhen's inbound stream, and Shenzhen's operator user sees it there. Every
    client logs in over TLS as its role's NKey user, as tongban's processes do."""
    refused: list[str] = []

    async def record(exc: Exception) -> None:
        refused.append(str(exc))

    sz = await booted.connect("440300-node-1", NatsRole.GATEWAY)
    sz_op = await booted.connect("440300-node-3", NatsRole.OPERATOR)
    wx = await connect_nats(
        booted.config("320200-node-2"), role=NatsRole.OPERATOR, name="wx", error_cb=record
    )
    qd = await booted.connect("370200-node-3", NatsRole.GATEWAY)
    try:
        js_sz = sz.jetstream(domain="440300", timeout=10)
        for config in streams.region_streams("440300", replicas=3):
            await js_sz.add_stream(config)
        with pytest.raises(nats.errors.TimeoutError):
            await wx.jetstream(domain="440300", timeout=2).stream_info("IN_440300")
        assert refused == [
            'nats: permissions violation for publish to "$js.440300.api.stream.info.in_440300"'
        ]
        ack = await qd.jetstream(timeout=10).publish(subjects.request_subject("440300", "demo"), b"x")
        assert ack.stream == subjects.inbound_stream_name("440300")
        assert ack.domain == "440300"
        for name in ("IN", "OUT", "EVT", "DLQ"):
            info = await sz_op.jetstream(domain="440300", timeout=10).stream_info(f"{name}_440300")
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.name == "tongban-440300"
            assert len(info.cluster.replicas or []) == 2
            assert info.state.messages == (1 if name == "IN" else 0)
    finally:
        for nc in (sz, sz_op, wx, qd):
            await nc.close()


async def test_boot_region_client_port_is_tls_first_and_authenticated(booted: Booted) -> None:
    """A region node's client port: a plaintext client never gets a word from it (TLS first), a TLS
    client without credentials is refused by name, an unknown NKey too; a role user logs in."""
    url = booted.client_url("440300-node-2")
    with pytest.raises((nats.errors.NoServersError, TimeoutError)):
        await nats.connect(url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0)
    tls = ssl.create_default_context(cafile=str(booted.secrets.clients_dir("440300") / "ca.crt"))
    once = {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 5}
    with pytest.raises(nats.errors.Error, match=r"^nats: 'Authorization Violation'$"):
        await nats.connect(url, tls=tls, tls_handshake_first=True, **once)  # type: ignore[arg-type]
    with pytest.raises(nats.errors.Error, match=r"^nats: 'Authorization Violation'$"):
        await nats.connect(
            url,
            tls=tls,
            tls_handshake_first=True,
            nkeys_seed_str=natsroles.new_user_seed().decode(),
            **once,  # type: ignore[arg-type]
        )
    nc = await booted.connect("440300-node-2", NatsRole.OPERATOR)
    try:
        assert nc.is_connected
    finally:
        await nc.close()
