"""deploy/nats: the production hub and region configs parse, say what DESIGN.md says, and boot.

``nats-server -t`` only parses: it follows includes and rejects unknown fields and bad values, but it
does not validate options the way a start does, resolve or dial any host, or touch ``store_dir``. It
does load the TLS files, so ``-t`` runs on the real files with only the secrets directory they name
(``/etc/tongban/nats``) pointed at secrets generated here. The last tests boot the whole topology
(3 hub nodes, 3 regions of 3 nodes) on loopback from the same files, with hostnames, ports, store
directories and the secrets rewritten, every region joining the hub as its own NKey user over TLS,
and tongban's processes logging in to their region's nodes over TLS first as their role's NKey user.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest

from tests.helpers import free_port
from tongban.core import subjects
from tongban.core.errors import ConfigError
from tongban.ops import natsconfig
from tongban.ops.cli import nats_config
from tongban.ops.natsconfig import INSTALL_DIR, SEED_ENV
from tongban.ops.natsserver import NatsServerError, ServerSpec, check_binary, render_config
from tongban.runtime import natsroles, streams
from tongban.runtime.config import Config
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "nats"
REGIONS = ("440300", "320200", "370200")
HUBS = tuple(f"hub-{n}" for n in (1, 2, 3))
DOMAIN = ".tongban.internal"

INCLUDE = re.compile(r'^[ \t]*include[ \t]+"?([^"\s;]+)"?[ \t]*;?[ \t]*$', re.MULTILINE)
COMMENT = re.compile(r"(?:^|(?<=\s))(?:#|//).*$", re.MULTILINE)  # not the // in nats-route://


def hub_conf(name: str) -> Path:
    return DEPLOY / "hub" / f"{name}.conf"


def node_conf(region: str, n: int) -> Path:
    return DEPLOY / "regions" / region / f"node-{n}.conf"


NODE_CONFS = {f"{r}-node-{n}": node_conf(r, n) for r in REGIONS for n in (1, 2, 3)}
HUB_CONFS = {h: hub_conf(h) for h in HUBS}


DEV = DEPLOY / "dev"  # single-process templates rendered by tongban/ops/natsserver.py


def all_confs() -> list[Path]:
    """The production configs (deploy/nats/dev/ holds the single-machine templates)."""
    return sorted(p for p in DEPLOY.rglob("*.conf") if DEV not in p.parents)


def included_by(conf: Path) -> list[Path]:
    """Files ``conf`` includes; nats-server resolves them relative to the including file."""
    return [(conf.parent / m).resolve() for m in INCLUDE.findall(conf.read_text())]


def fragments() -> set[Path]:
    """Include-only files: included by another config, not meant to run on their own."""
    return {inc for conf in all_confs() for inc in included_by(conf)}


def expand(conf: Path, depth: int = 0) -> str:
    """The config as the server reads it: includes inlined (recursively), comments dropped."""
    assert depth < 10, f"include loop at {conf}"
    text = COMMENT.sub("", conf.read_text())
    return INCLUDE.sub(lambda m: expand((conf.parent / m[1]).resolve(), depth + 1), text)


def block(text: str, key: str) -> list[str]:
    """Bodies of every top-level-or-nested ``key { ... }`` block (nested blocks included)."""
    bodies = []
    for m in re.finditer(rf"(?<![\w.-]){key}\s*[:=]?\s*\{{", text):
        depth, i = 1, m.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        bodies.append(text[m.end() : i - 1])
    return bodies


def value(text: str, key: str) -> list[str]:
    return [v.strip().strip('"') for v in re.findall(rf"(?<![\w.-]){key}\s*[:=]\s*([^\s,}}]+)", text)]


def urls(text: str, scheme: str) -> set[str]:
    return set(re.findall(rf"{scheme}://[\w.-]+:\d+", text))


def hub_routes() -> set[str]:
    return {f"nats-route://{h}{DOMAIN}:6222" for h in HUBS}


def region_routes(region: str) -> set[str]:
    return {f"nats-route://{region}-node-{n}{DOMAIN}:6222" for n in (1, 2, 3)}


def hub_leaf_urls() -> set[str]:
    return {f"nats-leaf://{h}{DOMAIN}:7422" for h in HUBS}


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> natsconfig.Secrets:
    """NATS secrets for the three regions, as `tongban nats-config --dev` makes them: the hub's
    certificate also names 127.0.0.1, where the boot test runs the hub."""
    hosts = [f"{h}{DOMAIN}" for h in HUBS] + list(natsconfig.LOOPBACK)
    return natsconfig.ensure_secrets(
        tmp_path_factory.mktemp("nats-secrets"),
        REGIONS,
        hosts,
        region_hosts=lambda r: [*natsconfig.region_hosts(r), *natsconfig.LOOPBACK],
    )


def node_secrets(secrets: natsconfig.Secrets, name: str) -> Path:
    """The directory that is /etc/tongban/nats on node ``name`` (a hub node or ``<code>-node-<n>``)."""
    return secrets.hub_dir if name.startswith("hub") else secrets.region_dir(name.split("-")[0])


def node_env(secrets: natsconfig.Secrets, name: str) -> dict[str, str]:
    """The environment of node ``name``: a region node reads its NKey seed from TB_LEAF_NKEY."""
    env = dict(os.environ)
    if not name.startswith("hub"):
        env[SEED_ENV] = secrets.seed(name.split("-")[0]).decode()
    return env


def committed_keys() -> dict[str, str]:
    """Region → public NKey, from the comment lines of the committed hub/authorization.conf."""
    text = (DEPLOY / "hub" / "authorization.conf").read_text()
    return dict(re.findall(r"^# (\d{6}): (U[A-Z2-7]{55})$", text, re.MULTILINE))


def committed_client_keys(region: str) -> dict[NatsRole, str]:
    """Role → public NKey of ``region``'s client users, from its committed authorization.conf."""
    text = (DEPLOY / "regions" / region / "authorization.conf").read_text()
    return {NatsRole(r): k for r, k in re.findall(r"^# (\w+): (U[A-Z2-7]{55})$", text, re.MULTILINE)}


def generated_keys(secrets: natsconfig.Secrets) -> dict[str, str]:
    """Committed public key → the generated one that stands in for it (hub link and client users)."""
    out = {committed_keys()[r]: k for r, k in secrets.public_keys().items()}
    for region in REGIONS:
        committed = committed_client_keys(region)
        out.update({committed[role]: k for role, k in secrets.client_public_keys(region).items()})
    return out


# -- generated by `tongban nats-config` ---------------------------------------------------------


def test_deploy_nats_is_what_nats_config_generates() -> None:
    """Every production file is exactly what `tongban nats-config` writes for the committed keys."""
    keys = committed_keys()
    assert list(keys) == list(REGIONS)
    clients = {r: committed_client_keys(r) for r in REGIONS}
    assert all(list(c) == list(natsroles.PROCESS_ROLES) for c in clients.values())
    generated = natsconfig.production_files(keys, clients)
    assert {DEPLOY / rel for rel in generated} == set(all_confs())
    for rel, text in generated.items():
        assert (DEPLOY / rel).read_text() == text, f"{rel} differs from `tongban nats-config`"


def test_nats_config_command_writes_configs_and_secrets_apart(tmp_path: Path) -> None:
    out, secrets_dir = tmp_path / "deploy" / "nats", tmp_path / "secrets"
    parser = argparse.ArgumentParser()
    nats_config.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["nats-config", "--regions", ",".join(REGIONS), "--out", str(out), "--secrets-dir", str(secrets_dir)]
    )
    assert args.func(args) == 0
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {p.relative_to(DEPLOY).as_posix() for p in all_confs()}
    # Nothing secret in the configs: no seed, no private key; the public keys are the secrets' own.
    text = "".join((out / f).read_text() for f in files)
    assert not re.search(r"\bS[UA][A-Z2-7]{50,}", text) and "PRIVATE KEY" not in text
    secrets = natsconfig.Secrets(secrets_dir, REGIONS)
    assert all(key in text for key in secrets.public_keys().values())
    for region in REGIONS:
        for name in ("leaf.nk", "leaf.key", "leaf-nkey.env", "server.key"):
            assert (secrets.region_dir(region) / name).stat().st_mode & 0o077 == 0
        for role in natsroles.PROCESS_ROLES:
            assert secrets.client_seed_file(region, role).stat().st_mode & 0o077 == 0
        assert all(key in text for key in secrets.client_public_keys(region).values())
        # The roles' seeds are apart from what goes to the region's NATS nodes.
        assert not list(secrets.region_dir(region).glob(f"{NatsRole.GATEWAY.value}*"))
    # A second run keeps the credentials (adding a region must not rotate the others).
    before = secrets.public_keys(), secrets.all_client_public_keys()
    assert args.func(args) == 0
    assert (secrets.public_keys(), secrets.all_client_public_keys()) == before
    bad = parser.parse_args(
        ["nats-config", "--regions", "440300", "--out", str(out), "--secrets-dir", str(out)]
    )
    with pytest.raises(ConfigError, match="outside"):
        bad.func(bad)


# -- nats-server -t on the real files ---------------------------------------------------------


def test_standalone_configs_are_the_hub_and_region_nodes() -> None:
    standalone = {c.resolve() for c in all_confs()} - fragments()
    assert standalone == {c.resolve() for c in (*HUB_CONFS.values(), *NODE_CONFS.values())}


@pytest.mark.parametrize(
    "conf",
    [*HUB_CONFS.values(), *NODE_CONFS.values()],
    ids=lambda p: str(p.relative_to(DEPLOY)),
)
def test_nats_server_accepts(conf: Path, tmp_path: Path, secrets: natsconfig.Secrets) -> None:
    # The real tree, with /etc/tongban/nats pointed at this node's generated secrets.
    name = value(expand(conf), "server_name")[0]
    tree = tmp_path / "nats"
    shutil.copytree(DEPLOY, tree, ignore=shutil.ignore_patterns("dev", "*.md"))
    for f in tree.rglob("*.conf"):
        f.write_text(f.read_text().replace(str(INSTALL_DIR), str(node_secrets(secrets, name))))
    # Run from an unrelated directory: includes must resolve relative to the file, not the cwd.
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    out = subprocess.run(
        [str(check_binary()), "-t", "-c", str(tree / conf.relative_to(DEPLOY))],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
        env=node_env(secrets, name),
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert "is valid" in out.stderr


def test_nats_server_t_follows_includes(tmp_path: Path) -> None:
    """-t really reads the included file: a node file without its fragment is rejected."""
    lone = tmp_path / "hub-1.conf"
    lone.write_text(hub_conf("hub-1").read_text())
    out = subprocess.run(
        [str(check_binary()), "-t", "-c", str(lone)], capture_output=True, text=True, timeout=30, check=False
    )
    assert out.returncode != 0
    assert "include" in out.stderr


# -- what the configs declare -------------------------------------------------------------------


@pytest.mark.parametrize("region", REGIONS)
def test_region_nodes_declare_their_domain(region: str) -> None:
    names = set()
    for n in (1, 2, 3):
        text = expand(node_conf(region, n))
        names.update(value(text, "server_name"))
        js = block(text, "jetstream")
        assert len(js) == 1, "one jetstream block (a second one silently replaces the first)"
        # Quoted: unquoted, 440300 would be read as a number and the server refuses it.
        assert re.findall(r'\bdomain\s*[:=]\s*("?\w+"?)', js[0]) == [f'"{region}"']
        assert value(js[0], "sync_interval") == ["always"]
        assert value(js[0], "store_dir") == [f"/var/lib/tongban/nats/{region}"]
        cluster = block(text, "cluster")
        assert len(cluster) == 1
        assert value(cluster[0], "name") == [f"tongban-{region}"]
        assert urls(cluster[0], "nats-route") == region_routes(region)
        assert urls(text, "nats-leaf") == hub_leaf_urls()
        assert value(text, "max_payload") == ["4MB"]
        assert value(text, "http")
        # The hub link: the region's NKey seed from the environment, TLS with its client certificate.
        (remote_tls,) = block(block(text, "leafnodes")[0], "tls")
        assert value(block(text, "leafnodes")[0], "nkey") == [f"${SEED_ENV}"]
        assert value(remote_tls, "cert_file") == [f"{INSTALL_DIR}/leaf.crt"]
        assert value(remote_tls, "key_file") == [f"{INSTALL_DIR}/leaf.key"]
        assert value(remote_tls, "ca_file") == [f"{INSTALL_DIR}/ca.crt"]
        # The client port: TLS first with the region's server certificate, only its role users.
        outside_leafnodes = text.replace(block(text, "leafnodes")[0], "")
        (client_tls,) = block(outside_leafnodes, "tls")
        assert value(client_tls, "cert_file") == [f"{INSTALL_DIR}/server.crt"]
        assert value(client_tls, "key_file") == [f"{INSTALL_DIR}/server.key"]
        assert value(client_tls, "handshake_first") == ["true"]
        (auth,) = block(text, "authorization")
        assert value(auth, "nkey") == list(committed_client_keys(region).values())
        assert re.findall(r"allowed_connection_types:\s*\[\s*\"(\w+)\"\s*\]", auth) == ["STANDARD"] * 3
        assert not re.search(r"\b(no_auth_user|user|password|token)\s*:", auth)
    assert names == {f"{region}-node-{n}" for n in (1, 2, 3)}


def test_hub_has_no_jetstream() -> None:
    names = set()
    for conf in HUB_CONFS.values():
        text = expand(conf)
        names.update(value(text, "server_name"))
        assert not re.search(r"(?<![\w.-])jetstream\b", text), f"{conf}: the hub runs no JetStream"
        cluster = block(text, "cluster")
        assert len(cluster) == 1
        assert urls(cluster[0], "nats-route") == hub_routes()
        leaf = block(text, "leafnodes")
        assert len(leaf) == 1
        assert value(leaf[0], "listen") == ["0.0.0.0:7422"]
        # Leaves must present a certificate from the NATS CA, then log in as a region user.
        (tls,) = block(leaf[0], "tls")
        assert value(tls, "verify") == ["true"]
        assert value(tls, "ca_file") == [f"{INSTALL_DIR}/ca.crt"]
        (auth,) = block(text, "authorization")
        assert sorted(value(auth, "nkey")) == sorted(committed_keys().values())
        assert "allow_responses" not in auth  # not passed on to a leaf (tongban.ops.natsconfig)
        assert value(text, "max_payload") == ["4MB"]
        assert value(text, "http")
    assert names == set(HUBS)


def test_server_names_are_unique() -> None:
    names = [value(expand(c), "server_name") for c in (*HUB_CONFS.values(), *NODE_CONFS.values())]
    flat = [n for ns in names for n in ns]
    assert all(len(ns) == 1 for ns in names)
    assert len(set(flat)) == len(flat) == 12


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
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, KeyError) as exc:
            last = exc
        time.sleep(0.1)  # polling interval of this condition wait (a synchronous fixture), not a delay
    raise AssertionError(f"{what} not reached in {timeout}s ({last})")


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


def test_a_leaf_without_client_users_is_refused(tmp_path: Path, secrets: natsconfig.Secrets) -> None:
    """The single-machine renderer never makes a region's client port anonymous."""
    spec = ServerSpec(
        name="leaf-440300",
        domain="440300",
        hub_leaf_url="nats-leaf://127.0.0.1:7422",
        security=secrets.leaf_link("440300"),
    )
    with pytest.raises(NatsServerError, match="no client users"):
        render_config(spec, tmp_path / "js")


@pytest.mark.parametrize("name", ["hub.conf", "leaf.conf"])
def test_dev_templates_are_valid_once_rendered(
    name: str, tmp_path: Path, secrets: natsconfig.Secrets
) -> None:
    """As they stand they name TLS files that do not exist; rendered with generated ones they are valid."""
    as_is = subprocess.run(
        [str(check_binary()), "-t", "-c", str(DEV / name)], capture_output=True, text=True, timeout=30
    )
    assert as_is.returncode != 0 and "X509" in as_is.stderr
    if name == "hub.conf":
        spec = ServerSpec(name="hub", security=secrets.hub_link())
    else:
        spec = ServerSpec(
            name="leaf-440300",
            domain="440300",
            hub_leaf_url="nats-leaf://127.0.0.1:7422",
            security=secrets.leaf_link("440300"),
            client_users=tuple(natsconfig.region_users("440300", secrets.client_public_keys("440300"))),
        )
    conf = tmp_path / name
    conf.write_text(render_config(spec, tmp_path / "js"))
    result = subprocess.run(
        [str(check_binary()), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dev_leaf_keeps_the_production_region_settings() -> None:
    """What a region must be (its own domain, fsync on every write, a leaf of the hub) holds on one
    machine as in the 3-node clusters."""
    dev = expand(DEV / "leaf.conf")
    prod = expand(NODE_CONFS["440300-node-1"])
    for text in (dev, prod):
        (js,) = block(text, "jetstream")
        assert value(js, "sync_interval") == ["always"]
        assert value(js, "domain")
        assert re.search(r"leafnodes\s*\{\s*remotes\s*:", text), "a region is a leafnode of the hub"
        # An authenticated, encrypted hub link, on one machine too.
        (tls,) = block(block(text, "leafnodes")[0], "tls")
        assert {"cert_file", "key_file", "ca_file"} <= set(re.findall(r"(\w+)\s*:", tls))
        assert value(text, "nkey")
        # The client port: NKey users only, no anonymous client.
        (auth,) = block(text, "authorization")
        assert "users" in auth and not re.search(r"\bno_auth_user\b", text)
    assert value(dev, "max_payload") == value(prod, "max_payload") == ["4MB"]
    dev_hub, prod_hub = expand(DEV / "hub.conf"), expand(HUB_CONFS["hub-1"])
    assert not block(dev_hub, "jetstream")
    for text in (dev_hub, prod_hub):
        (tls,) = block(block(text, "leafnodes")[0], "tls")
        assert value(tls, "verify") == ["true"]
        assert block(text, "authorization")
