"""Least-privilege NATS between regions: one NKey user per region on the hub, TLS on every leafnode link.

Each region's nats-server joins the hub as a leafnode with credentials of its own: an NKey user seed
(the hub's config holds only the public key) and a client certificate from the NATS CA, which the hub
requires (``verify: true``). The hub binds each region's user to permissions that let the region

- publish only to *other* regions' inbound subjects: Query RPC ``tb.v1.rpc.<other>.>``, durable
  requests ``tb.v1.req.<other>.>``, case events ``tb.v1.evt.<other>.>``, ``tb.v1.ping.<other>``,
  ledger checkpoints for the other's witness ``tb.v1.ckpt.<other>.>`` and consistency-proof
  requests about the other's ledger ``tb.v1.lproof.<other>``,
  and replies into other regions' inboxes ``_INBOX_<other>.>`` (Query answers, and the JetStream
  PubAcks of its streams to another region's forwarder);
- subscribe only to its own: the same six subject spaces of its own code and ``_INBOX_<own>.>``;
- nothing under ``$JS.>``: no region reaches another region's JetStream API (``$JS.<code>.API.>``)
  through the hub, so none can create a consumer on another's ``IN_`` stream and read its requests.

The hub tells the leaf these permissions when it connects, and the leaf keeps its own subscriptions
and messages outside them local (nats-server's leafnode behaviour). ``allow_responses`` does not work
across a leafnode link: the hub sends the leaf only the publish/subscribe lists, not the response
permission, and the leaf silently drops the reply (2.15.1). Hence the explicit ``_INBOX_<other>.>``
publish permission: a region can write into another's inbox namespace, where replies land under
random tokens it cannot learn, but it can never subscribe there (and every reply tongban carries is a
signed envelope or a PubAck the forwarder checks against its own message id). The users are allowed
on leafnode connections only: the hub's client port accepts no region credentials.

Inside a region, its own nats-server's client port admits no anonymous client either: one NKey user
per process role (:class:`NatsRole`: gateway, connector, operator tools), each limited to the
subjects it publishes and subscribes to and to the JetStream API calls it makes on its region's
streams (:func:`client_permissions`): a gateway cannot read the inbound stream or dead letters, a
connector cannot send Query requests or checkpoints, no role can delete a stream. In production the
client port speaks TLS first (the nodes are on separate hosts); the single-machine topology keeps
it on loopback in plaintext, with the same users.

``tongban nats-config`` writes the production configs of deploy/nats/ (which reference the secrets by
path under :data:`INSTALL_DIR`) and, in a separate secrets directory, the seeds and TLS material; the
single-machine topology (:class:`tongban.ops.natsserver.Topology`) generates the same material for its
regions under its own root with :func:`ensure_secrets`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tongban.core import subjects
from tongban.core.errors import ConfigError
from tongban.runtime import certs, streams
from tongban.runtime.live_registry import bucket_name
from tongban.runtime.natsroles import PROCESS_ROLES, NatsRole, new_user_seed, public_key

INSTALL_DIR = PurePosixPath("/etc/tongban/nats")
"""Where a production node keeps its NATS secrets; the committed configs reference files here."""

SECRETS_DIR = Path(".tongban") / "nats-secrets"
"""Default directory ``tongban nats-config`` writes secrets to (outside deploy/, never committed)."""

JS_API_DENY = "$JS.>"
"""Every JetStream API (and its acks) is denied across the hub, in both directions."""

HUB_DOMAIN = ".tongban.internal"
HUB_NODES = ("hub-1", "hub-2", "hub-3")
NODES = (1, 2, 3)

CA_NAME = "tongban NATS CA"

SEED_ENV = "TB_LEAF_NKEY"
"""Environment variable a production region node reads its NKey seed from. nats-server resolves a
``$VAR`` its config does not define from the environment; an ``include`` cannot carry the seed instead,
because nats-server resolves even an absolute include path relative to the including file."""


# -- permissions ------------------------------------------------------------------------------------


def _inbound(region: str, sender: str | None = None) -> list[str]:
    """Subjects a region is addressed on across the hub. For one ``sender``, checkpoints only on
    the subject that names the sender: a witness takes the origin from the subject, so the hub must
    not let one region publish checkpoints under another's name."""
    return [
        subjects.rpc_wildcard(region),
        subjects.request_wildcard(region),
        subjects.event_wildcard(region),
        subjects.ping_subject(region),
        subjects.checkpoint_wildcard(region)
        if sender is None
        else subjects.checkpoint_subject(region, sender),
        subjects.ledger_proof_subject(region),
    ]


def permissions(region: str, regions: Sequence[str]) -> dict[str, object]:
    """The hub-side permissions of ``region``'s leafnode user among ``regions``."""
    others = [r for r in regions if r != region]
    return {
        "publish": {
            "allow": [
                *(s for other in others for s in _inbound(other, sender=region)),
                *(f"{subjects.inbox_prefix(other)}.>" for other in others),
            ],
            "deny": [JS_API_DENY],
        },
        "subscribe": {
            "allow": [*_inbound(region), f"{subjects.inbox_prefix(region)}.>"],
            "deny": [JS_API_DENY],
        },
    }


def hub_users(public_keys: Mapping[str, str]) -> list[dict[str, object]]:
    """The hub's ``authorization.users``: one NKey user per region, leafnode connections only."""
    regions = list(public_keys)
    return [
        {
            "nkey": key,
            "permissions": permissions(region, regions),
            "allowed_connection_types": ["LEAFNODE"],
        }
        for region, key in public_keys.items()
    ]


# -- region-internal users: one per process role --------------------------------------------------


def _js_api(region: str, *calls: str) -> list[str]:
    """JetStream API subjects of ``calls`` in ``region``'s own domain. tongban's clients name the
    domain (``$JS.<code>.API.…``, ``tongban.runtime.streams.jetstream``), and the region's server maps that
    to ``$JS.API.…`` *before* it checks permissions (2.15.1), so both forms are granted, call by
    call: the same power, whichever order another server version checks in."""
    return [f"{api}.{call}" for call in calls for api in ("$JS.API", f"$JS.{region}.API")]


def _js_acks(stream: str, consumer: str) -> list[str]:
    """Ack subjects of one durable consumer, in both reply formats nats-server uses (without and
    with the domain and account-hash tokens)."""
    return [f"$JS.ACK.{stream}.{consumer}.>", f"$JS.ACK.*.*.{stream}.{consumer}.>"]


def _consumes(region: str, stream: str, durable: str) -> list[str]:
    """Create-or-update, bind, fetch from and ack one durable pull consumer, nothing else."""
    return [
        *_js_api(
            region,
            f"CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            f"CONSUMER.INFO.{stream}.{durable}",
            f"CONSUMER.MSG.NEXT.{stream}.{durable}",
        ),
        *_js_acks(stream, durable),
    ]


def _ensures_streams(region: str) -> list[str]:
    """``tongban.runtime.streams.ensure_streams``: every process of a region creates its streams at start,
    or updates them to the definitions of record."""
    names = [s.name for s in streams.region_streams(region)]
    return _js_api(region, *(f"STREAM.{op}.{n}" for n in names for op in ("CREATE", "UPDATE")))


def _registry_bucket(region: str) -> list[str]:
    """The region's registry bucket (``tongban.runtime.live_registry``): create it if missing, read,
    put (a node
    repairs an older document), watch (an ordered push consumer with flow control)."""
    bucket = bucket_name(region)
    stream = f"KV_{bucket}"
    return [
        f"$KV.{bucket}.>",
        *_js_api(
            region,
            f"STREAM.INFO.{stream}",
            f"STREAM.CREATE.{stream}",
            f"STREAM.MSG.GET.{stream}",
            f"DIRECT.GET.{stream}",
            f"DIRECT.GET.{stream}.>",
            f"CONSUMER.CREATE.{stream}",
            f"CONSUMER.CREATE.{stream}.>",
            f"CONSUMER.INFO.{stream}.*",
            f"CONSUMER.DELETE.{stream}.*",
        ),
        f"$JS.FC.{stream}.>",
    ]


def client_permissions(region: str, role: NatsRole) -> dict[str, object]:
    """What ``role`` may do on ``region``'s own nats-server (``{}``: the admin, everything).

    Cross-region reach stays the hub's business (:func:`permissions`): subjects of other regions are
    granted here by wildcard, and the hub narrows them to what the region may send. Replies to a
    request a role answers go out through ``allow_responses`` (once per request received, within the
    default 2 minutes): no role may publish into another inbox at will.
    """
    p = subjects.PREFIX
    inbox = f"{subjects.client_inbox_prefix(region, role.value)}.>"
    out, evt = subjects.outbound_stream_name(region), subjects.event_stream_name(region)
    inbound, dlq = subjects.inbound_stream_name(region), subjects.dlq_stream_name(region)
    if role is NatsRole.ADMIN:
        return {}
    if role is NatsRole.GATEWAY:
        publish = [
            f"{p}.rpc.*.>",  # Query
            f"{p}.ping.*",
            subjects.outbound_filter(region, subjects.OutKind.REQUEST),  # Submit, into OUT_
            f"{p}.req.*.>",  # the forwarder of requests
            f"{p}.ckpt.*.{region}",  # checkpoints for other regions' witnesses, under its own name
            f"{p}.lproof.*",  # proofs and entries asked of other regions
            subjects.case_notify_subject(region),
            *_ensures_streams(region),
            *_consumes(region, out, subjects.Durable.FORWARD_REQUESTS),
            *_consumes(region, evt, subjects.Durable.GATEWAY_EVENTS),
            *_js_api(region, f"STREAM.MSG.GET.{out}"),  # the reconciler looks a message up
            *_registry_bucket(region),
        ]
        subscribe = [
            inbox,
            subjects.checkpoint_wildcard(region),
            subjects.ledger_proof_subject(region),
            subjects.case_notify_subject(region),
        ]
    elif role is NatsRole.CONNECTOR:
        publish = [
            subjects.outbound_filter(region, subjects.OutKind.EVENT),  # status events, into OUT_
            f"{p}.evt.*.>",  # the forwarder of events
            subjects.dlq_wildcard(region),
            *_ensures_streams(region),
            *_consumes(region, inbound, subjects.Durable.CONNECTOR),
            *_consumes(region, out, subjects.Durable.FORWARD_EVENTS),
            *_registry_bucket(region),
        ]
        subscribe = [inbox, subjects.rpc_wildcard(region), subjects.ping_subject(region)]
    else:
        publish = [
            subjects.request_wildcard(region),  # dlq replay: back into IN_
            subjects.outbound_filter(region, subjects.OutKind.EVENT),  # case report
            f"{p}.lproof.*",  # ledger check-receipt
            *_ensures_streams(region),
            *_registry_bucket(region),
            *_js_api(
                region,
                "INFO",
                "STREAM.NAMES",
                "STREAM.LIST",
                "STREAM.INFO.*",
                "CONSUMER.NAMES.*",
                "CONSUMER.LIST.*",
                "CONSUMER.INFO.*.*",
                f"STREAM.MSG.GET.{dlq}",
                f"STREAM.MSG.DELETE.{dlq}",
                f"STREAM.PURGE.{dlq}",
            ),
        ]
        subscribe = [inbox]
    perms: dict[str, object] = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    if role in (NatsRole.GATEWAY, NatsRole.CONNECTOR):
        # Query answers and pings (connector), proofs and entries for other regions (gateway).
        perms["allow_responses"] = True
    return perms


def region_users(region: str, public_keys: Mapping[NatsRole, str]) -> list[dict[str, object]]:
    """The ``authorization.users`` of ``region``'s client port: one NKey user per role, client
    connections only (not leafnode, websocket or MQTT)."""
    users: list[dict[str, object]] = []
    for role, key in public_keys.items():
        user: dict[str, object] = {"nkey": key}
        perms = client_permissions(region, role)
        if perms:
            user["permissions"] = perms
        user["allowed_connection_types"] = ["STANDARD"]
        users.append(user)
    return users


def conf_value(value: object, indent: int = 0) -> str:
    """``value`` (str, bool, int, list, dict) in nats-server's config syntax, strings quoted."""
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        inner = "".join(f"{pad}  {k}: {conf_value(v, indent + 1)}\n" for k, v in value.items())
        return "{\n" + inner + pad + "}"
    if isinstance(value, list):
        if all(isinstance(v, str) for v in value) and sum(len(v) + 4 for v in value) < 80:
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        return "[\n" + "".join(f"{pad}  {conf_value(v, indent + 1)}\n" for v in value) + pad + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


def authorization_conf(public_keys: Mapping[str, str]) -> str:
    """The hub's ``authorization`` block (public keys and permissions only: nothing secret)."""
    lines = [
        "# Generated by `tongban nats-config`: one NKey user per region (public keys only; each region",
        "# keeps its seed). A region publishes to other regions' inbound subjects and subscribes only to",
        "# its own and to _INBOX_<code>.>; every $JS.> API is denied across the hub.",
    ]
    for region, key in public_keys.items():
        lines.append(f"# {region}: {key}")
    body = conf_value({"users": hub_users(public_keys)})
    return "\n".join(lines) + "\n" + f"authorization {body}\n"


# -- secrets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Secrets:
    """The NATS secrets of a set of regions in one directory.

    Layout (each node kind's directory is what goes to :data:`INSTALL_DIR` on that kind of node):
    ``ca.key``/``ca.crt`` the CA (keep ``ca.key`` offline); ``hub/`` the hub's ``hub.key``,
    ``hub.crt`` and ``ca.crt``; ``<code>/`` a region's ``leaf.key``, ``leaf.crt``, ``ca.crt``, its
    NKey seed ``leaf.nk`` and ``leaf-nkey.env`` (the seed as the environment variable
    :data:`SEED_ENV`, for systemd's ``EnvironmentFile=``), and, for its client port's TLS,
    ``server.key``/``server.crt``. ``clients/<code>/`` is not for the NATS nodes: one NKey seed per
    process role (``gateway.nk``, ``connector.nk``, ``operator.nk``) and ``ca.crt``, each seed to
    the hosts that run that role only.
    """

    root: Path
    regions: tuple[str, ...]
    roles: tuple[NatsRole, ...] = PROCESS_ROLES
    """The client roles each region has a seed for (the single-machine topology adds the admin)."""

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def hub_dir(self) -> Path:
        return self.root / "hub"

    def region_dir(self, region: str) -> Path:
        return self.root / region

    def seed_file(self, region: str) -> Path:
        return self.region_dir(region) / "leaf.nk"

    def seed(self, region: str) -> bytes:
        return self.seed_file(region).read_bytes().strip()

    def public_keys(self) -> dict[str, str]:
        return {r: public_key(self.seed(r)) for r in self.regions}

    def clients_dir(self, region: str) -> Path:
        return self.root / "clients" / region

    def client_seed_file(self, region: str, role: NatsRole) -> Path:
        """The NKey seed ``role`` connects to ``region``'s nats-server with."""
        return self.clients_dir(region) / f"{role.value}.nk"

    def client_public_keys(self, region: str) -> dict[NatsRole, str]:
        return {
            role: public_key(self.client_seed_file(region, role).read_bytes().strip()) for role in self.roles
        }

    def all_client_public_keys(self) -> dict[str, dict[NatsRole, str]]:
        """Region → role → public key."""
        return {r: self.client_public_keys(r) for r in self.regions}

    def hub_link(self) -> LinkSecurity:
        """The hub's TLS files and region users."""
        d = self.hub_dir
        users = tuple(hub_users(self.public_keys()))
        return LinkSecurity(d / "ca.crt", d / "hub.crt", d / "hub.key", users=users)

    def leaf_link(self, region: str) -> LinkSecurity:
        """``region``'s leafnode client certificate and NKey seed."""
        d = self.region_dir(region)
        seed = self.seed(region).decode()
        return LinkSecurity(d / "ca.crt", d / "leaf.crt", d / "leaf.key", nkey_seed=seed)


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def issue_leaf(ca: certs.Issued, region: str) -> certs.Issued:
    """A region leafnode's client certificate (its identity on the link: ``<code>.leaf.tongban``)."""
    name = f"{region}.leaf.tongban"
    # certs' issuing helper: the same CA handling and key type as the gateway certificates.
    return certs._issue(ca, name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH)


@dataclass(frozen=True)
class LinkSecurity:
    """What one server of the single-machine topology needs for its side of a hub link."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    nkey_seed: str = ""
    """A leaf: its region's NKey user seed."""
    users: tuple[dict[str, object], ...] = ()
    """The hub: :func:`hub_users` of every region."""


def ensure_secrets(
    root: Path,
    regions: Sequence[str],
    hub_hosts: Sequence[str],
    *,
    roles: Sequence[NatsRole] = PROCESS_ROLES,
    region_hosts: Callable[[str], Sequence[str]] | None = None,
) -> Secrets:
    """The CA, the hub's server certificate for ``hub_hosts``, and per region an NKey seed and a
    client certificate for its hub link and an NKey seed per client role in ``roles``, under
    ``root``; with ``region_hosts`` also a server certificate for each region's client port, valid
    for ``region_hosts(<code>)``. What exists is kept (a restart keeps its credentials); what is
    missing is made. Private keys and seeds are written mode 0600.
    """
    for r in regions:
        subjects.inbox_prefix(r)  # a valid subject token
    clients = [root / "clients", *(root / "clients" / r for r in regions)]
    for d in (root, root / "hub", *(root / r for r in regions), *clients):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    secrets = Secrets(root, tuple(regions), tuple(roles))
    if (root / "ca.key").exists():
        ca = certs.load(root, "ca")
    else:
        ca = certs.create_ca(CA_NAME)
        certs.write(ca, root, "ca")
    ca_pem = ca.cert_pem
    if not (secrets.hub_dir / "hub.crt").exists():
        certs.write(certs.issue_server(ca, list(hub_hosts), days=3650), secrets.hub_dir, "hub")
    (secrets.hub_dir / "ca.crt").write_bytes(ca_pem)
    for r in regions:
        d = secrets.region_dir(r)
        if not (d / "leaf.crt").exists():
            certs.write(issue_leaf(ca, r), d, "leaf")
        (d / "ca.crt").write_bytes(ca_pem)
        if not secrets.seed_file(r).exists():
            _write_secret(secrets.seed_file(r), new_user_seed() + b"\n")
        seed = secrets.seed(r)
        public_key(seed)  # refuse a damaged seed file now, not at the server's start
        _write_secret(d / "leaf-nkey.env", f"{SEED_ENV}={seed.decode()}\n".encode())
        if region_hosts is not None and not (d / "server.crt").exists():
            certs.write(certs.issue_server(ca, list(region_hosts(r)), days=3650), d, "server")
        (secrets.clients_dir(r) / "ca.crt").write_bytes(ca_pem)
        for role in roles:
            path = secrets.client_seed_file(r, role)
            if not path.exists():
                _write_secret(path, new_user_seed() + b"\n")
        secrets.client_public_keys(r)  # every seed readable and valid now
    return secrets


# -- production configs -----------------------------------------------------------------------------


def _hub_host(name: str) -> str:
    return f"{name}{HUB_DOMAIN}"


def _route_list(hosts: Sequence[str], scheme: str, port: int) -> str:
    return "\n".join(f"    {scheme}://{h}:{port}" for h in hosts)


def _hub_common() -> str:
    hosts = [_hub_host(h) for h in HUB_NODES]
    return f"""# Generated by `tongban nats-config`. Shared by hub-1.conf .. hub-3.conf (include-only:
# the node file sets server_name). The hub only routes: no JetStream here. Each region's
# JetStream lives in the region's own domain (see ../README.md), so losing the hub never takes a
# region's streams down.

listen: 0.0.0.0:4222
http: 0.0.0.0:8222
max_payload: 4MB

cluster {{
  name: "tongban-hub"
  listen: 0.0.0.0:6222
  # Every node lists all three; a server recognises and skips the route to itself.
  routes: [
{_route_list(hosts, "nats-route", 6222)}
  ]
}}

# One NKey user per region with its permissions (public keys only).
include ./authorization.conf

# Region clusters connect here as leafnodes (regions/common.conf lists these three URLs), over
# TLS with a client certificate from the NATS CA, then authenticate as their region's NKey user.
leafnodes {{
  listen: 0.0.0.0:7422
  tls {{
    cert_file: "{INSTALL_DIR}/hub.crt"
    key_file: "{INSTALL_DIR}/hub.key"
    ca_file: "{INSTALL_DIR}/ca.crt"
    verify: true
    timeout: 5
  }}
}}
"""


def _hub_node(name: str) -> str:
    return f"""# Hub node {name[-1]} of 3 (host {_hub_host(name)}).
server_name: "{name}"
include ./common.conf
"""


def _regions_common() -> str:
    hosts = [_hub_host(h) for h in HUB_NODES]
    urls = "\n".join(f"        nats-leaf://{h}:7422" for h in hosts)
    return f"""# Generated by `tongban nats-config`. Shared by every region node (include-only; included from
# regions/<code>/region.conf). Ports are the same on every host; each node runs on its own host.
# {INSTALL_DIR}/ on a node of region <code> holds that region's secrets only (ca.crt, leaf.crt,
# leaf.key, leaf-nkey.env, server.crt, server.key): the same paths name a different region's
# credentials on each node.

listen: 0.0.0.0:4222
http: 0.0.0.0:8222
max_payload: 4MB

# The client port (4222) crosses hosts: the region's gateways, connectors and operator tools reach
# it over the region's network. TLS first (handshake_first): the server speaks only TLS, so no one
# in between can strip it and relay a client's NKey challenge; every client then logs in as its
# role's NKey user (regions/<code>/authorization.conf).
tls {{
  cert_file: "{INSTALL_DIR}/server.crt"
  key_file: "{INSTALL_DIR}/server.key"
  ca_file: "{INSTALL_DIR}/ca.crt"
  handshake_first: true
  timeout: 5
}}

# Each region node dials the hub cluster as a leafnode; any one reachable hub node is enough,
# and the hub gossips the others. The region keeps serving JetStream when none is reachable.
leafnodes {{
  remotes: [
    {{
      urls: [
{urls}
      ]
      # The region's NKey user seed, from the environment (nats-server reads a $VAR the config
      # does not define from there): systemd EnvironmentFile={INSTALL_DIR}/leaf-nkey.env (0600).
      nkey: ${SEED_ENV}
      tls {{
        cert_file: "{INSTALL_DIR}/leaf.crt"
        key_file: "{INSTALL_DIR}/leaf.key"
        ca_file: "{INSTALL_DIR}/ca.crt"
        timeout: 5
      }}
    }}
  ]
}}
"""


def _region_conf(region: str) -> str:
    hosts = region_hosts(region)
    return f"""# Generated by `tongban nats-config`. Shared by the three nodes of region {region}
# (include-only: the node file sets server_name). One JetStream domain per region: this region's
# own clients reach its streams with domain "{region}" (API prefix $JS.{region}.API); the hub
# denies it to other regions.

jetstream {{
  domain: "{region}"
  store_dir: "/var/lib/tongban/nats/{region}"
  # fsync every write before the PubAck (DESIGN.md "Durability settings").
  sync_interval: always
}}

cluster {{
  name: "tongban-{region}"
  listen: 0.0.0.0:6222
  routes: [
{_route_list(hosts, "nats-route", 6222)}
  ]
}}

# The region's client users: one NKey user per process role (public keys only).
include ./authorization.conf

include ../common.conf
"""


def region_hosts(region: str) -> list[str]:
    """Hostnames of ``region``'s three nodes (its client port's certificate names them)."""
    return [f"{region}-node-{n}{HUB_DOMAIN}" for n in NODES]


def region_authorization_conf(region: str, public_keys: Mapping[NatsRole, str]) -> str:
    """``region``'s client-port ``authorization`` block (public keys and permissions only)."""
    lines = [
        f"# Generated by `tongban nats-config`: the users of region {region}'s client port, one NKey",
        "# user per process role (public keys only; each role's hosts keep its seed), each with only the",
        "# subjects and JetStream API calls that role makes (tongban/ops/natsconfig.py client_permissions).",
        "# No anonymous client: a connection without one of these keys is refused.",
    ]
    for role, key in public_keys.items():
        lines.append(f"# {role.value}: {key}")
    body = conf_value({"users": region_users(region, public_keys)})
    return "\n".join(lines) + "\n" + f"authorization {body}\n"


def _region_node(region: str, n: int) -> str:
    return f"""# Region {region}, node {n} of 3 (host {region}-node-{n}{HUB_DOMAIN}).
server_name: "{region}-node-{n}"
include ./region.conf
"""


def production_files(
    public_keys: Mapping[str, str], client_keys: Mapping[str, Mapping[NatsRole, str]]
) -> dict[str, str]:
    """deploy/nats/'s generated files (relative path → text) for the regions of ``public_keys``
    (their hub-link users), each with the client users ``client_keys[<code>]``."""
    files = {"hub/common.conf": _hub_common(), "hub/authorization.conf": authorization_conf(public_keys)}
    for h in HUB_NODES:
        files[f"hub/{h}.conf"] = _hub_node(h)
    files["regions/common.conf"] = _regions_common()
    for r in public_keys:
        files[f"regions/{r}/region.conf"] = _region_conf(r)
        files[f"regions/{r}/authorization.conf"] = region_authorization_conf(r, client_keys[r])
        for n in NODES:
            files[f"regions/{r}/node-{n}.conf"] = _region_node(r, n)
    return files


LOOPBACK = ("127.0.0.1", "localhost")


def generate(out: Path, regions: Sequence[str], secrets_dir: Path, *, dev: bool = False) -> Secrets:
    """Write (or refresh) the production configs under ``out`` and the secrets under ``secrets_dir``.

    Existing secrets are kept (run it again to add a region); ``dev`` also names the loopback
    addresses in the hub's and the regions' client-port certificates, to boot the configs on one
    machine with hostnames rewritten (tests/ops/test_deploy_nats.py does). Certificates are made once:
    delete ``hub/`` (or ``<code>/server.*``) to reissue them.

    Raises:
        ConfigError: ``secrets_dir`` is inside ``out`` (secrets must not land in the committed tree),
            or a region code is not a 6-digit code.
    """
    for r in regions:
        if not (len(r) == 6 and r.isdigit()):
            raise ConfigError(f"region {r!r} is not a 6-digit GB/T 2260 code")
    if len(set(regions)) != len(regions):
        raise ConfigError("regions repeat")
    out_abs, secrets_abs = out.resolve(), secrets_dir.resolve()
    if secrets_abs == out_abs or out_abs in secrets_abs.parents:
        raise ConfigError(f"the secrets directory {secrets_dir} must be outside {out}")
    loopback = list(LOOPBACK) if dev else []
    hub_hosts = [_hub_host(h) for h in HUB_NODES] + loopback
    secrets = ensure_secrets(
        secrets_dir, regions, hub_hosts, region_hosts=lambda r: [*region_hosts(r), *loopback]
    )
    files = production_files(secrets.public_keys(), secrets.all_client_public_keys())
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return secrets


# -- command line -----------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """``tongban nats-config``: register the subcommand on ``subparsers``."""
    p = subparsers.add_parser(
        "nats-config",
        help="generate deploy/nats/ (hub and region configs) and the per-region NATS credentials and TLS",
    )
    p.add_argument("--regions", required=True, help="comma-separated region codes, e.g. 440300,320200,370200")
    p.add_argument("--out", default="deploy/nats", help="where the configs go (default deploy/nats)")
    p.add_argument(
        "--secrets-dir",
        default=str(SECRETS_DIR),
        help=f"where seeds, keys and certificates go, never committed (default {SECRETS_DIR}); "
        f"copy hub/ or <code>/ to {INSTALL_DIR} on each node",
    )
    p.add_argument(
        "--dev",
        action="store_true",
        help="also name 127.0.0.1 and localhost in the hub certificate (boot the configs on one machine)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``tongban nats-config``."""
    regions = [r.strip() for r in args.regions.split(",") if r.strip()]
    secrets = generate(Path(args.out), regions, Path(args.secrets_dir), dev=args.dev)
    print(f"configs written to {args.out}; secrets in {secrets.root}")
    print(f"  hub nodes:          copy {secrets.hub_dir}/ to {INSTALL_DIR}/")
    for r in regions:
        print(f"  region {r} nodes: copy {secrets.region_dir(r)}/ to {INSTALL_DIR}/")
        for role in secrets.roles:
            print(
                f"  region {r} {role.value} hosts: {secrets.client_seed_file(r, role)} and "
                f"{secrets.clients_dir(r) / 'ca.crt'} ([nats] {role.value}_nkey_seed, tls_ca)"
            )
    print(f"  keep {secrets.root / 'ca.key'} offline: it issues every link certificate")
    return 0
