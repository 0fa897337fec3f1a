"""What the deploy/nats tests share: where the committed files are, how to read their blocks and
includes, the NATS secrets generated for a test run, and the committed keys they stand in for."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tongban.ops import natsconfig
from tongban.ops.natsconfig import SEED_ENV
from tongban.runtime.natsroles import NatsRole

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
