"""Typed configuration, loaded once at start-up from a TOML file plus environment overrides.

Environment variables override file values: ``TONGBAN_<SECTION>__<KEY>`` (e.g.
``TONGBAN_GATEWAY__LISTEN=0.0.0.0:7443``). Relative paths are resolved against the directory of the
config file, so a state directory can be moved as a whole.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

from tongban.core.errors import ConfigError


@dataclass
class RegionConfig:
    code: str = ""
    """GB/T 2260 code of the region this node serves, e.g. ``440300``."""
    name: str = ""
    """Display name, e.g. 深圳市."""


@dataclass
class NatsConfig:
    servers: list[str] = field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    """URLs of the region's own (leaf) nats-server(s)."""
    connect_timeout_s: float = 2.0
    """Deadline of one connection attempt."""
    max_reconnect_attempts: int = -1
    """Reconnect forever by default: a region outage must not need a restart."""
    drain_timeout_s: float = 5.0
    """How long a graceful stop waits for in-flight messages."""
    stream_replicas: int = 1
    """Replicas of the region's streams: 1 on a single server (dev, tests), 3 on a region's
    3-node cluster (deploy/nats/regions)."""
    gateway_nkey_seed: str = ""
    """NKey user seed file (``SU…``, mode 0600) the gateway logs in with: the region's ``gateway``
    user (``tongban nats-config`` writes it to ``clients/<code>/gateway.nk``). Only the hosts that
    run a gateway need the file."""
    connector_nkey_seed: str = ""
    """NKey user seed file of the region's ``connector`` user (connectors)."""
    operator_nkey_seed: str = ""
    """NKey user seed file of the region's ``operator`` user (``tongban dlq``, ``registry
    publish``, ``catalogue publish``, ``ledger check-receipt``)."""
    tls_ca: str = ""
    """PEM CA certificate the region's nats-servers' client-port certificates chain to. When set,
    the client speaks TLS first and verifies the server (production: the servers are on other
    hosts); empty: plaintext, for a server on loopback only."""
    tls_cert: str = ""
    """PEM client certificate (with ``tls_key``), for servers that also verify clients; optional:
    the NKey user is the client's identity."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""

    def nkey_seed(self, role: str) -> str:
        """The seed file setting of ``role`` (``gateway``, ``connector`` or ``operator``; else "")."""
        seeds = {
            "gateway": self.gateway_nkey_seed,
            "connector": self.connector_nkey_seed,
            "operator": self.operator_nkey_seed,
        }
        return seeds.get(role, "")


@dataclass
class KeysConfig:
    signing_key: str = "keys/signing.pem"
    """PEM file of the region's Ed25519 signing key."""
    sealing_key: str = "keys/sealing.pem"
    """PEM file of the region's X25519 sealing (HPKE) key."""
    activation_delay_s: float = 120.0
    """A new signing key is used only after the registry has listed it this long (time for the
    registry to reach every region); the authority publishes to all regions within it."""
    correlation_key: str = "keys/correlation.key"
    """Secret for keyed digests of identifiers (headers and logs carry only those)."""


@dataclass
class RegistryConfig:
    file: str = "registry.signed"
    """Signed trust registry document."""
    root_keys: list[str] = field(default_factory=lambda: ["root.pub"])
    """Pinned root public keys (raw Ed25519, hex or files holding hex)."""
    watch: bool = True
    """Watch the region's registry bucket (JetStream KV) and adopt newer registries while running."""
    cache: str = "registry.latest"
    """Where a node keeps the newest registry it adopted (read at start when newer than ``file``)."""
    recheck_s: float = 30.0
    """Re-read the bucket this often in case a watch died silently."""


@dataclass
class GatewayConfig:
    listen: str = "127.0.0.1:0"
    """gRPC listen address; port 0 picks a free port (written to ``port_file``)."""
    port_file: str = ""
    """If set, the bound port is written here once the gateway serves."""
    default_deadline_s: float = 10.0
    """Deadline applied when a caller sets none."""
    max_deadline_s: float = 60.0
    """Longer caller deadlines are capped to this."""
    max_message_bytes: int = 1 << 20
    """Largest gRPC message accepted."""
    max_field_length: int = 256
    """Default upper bound on a form field's length."""
    max_concurrent_rpcs: int = 2048
    """Bound on RPCs in flight on the whole gateway, every partner's together (streams included);
    beyond it RESOURCE_EXHAUSTED ``GATEWAY_BUSY`` with RetryInfo. gRPC health ``Check`` is never
    counted nor refused, so a busy gateway stays in its load balancer."""
    max_in_flight_per_partner: int = 200
    """Unary calls one partner system may have in flight over all its connections; beyond it
    RESOURCE_EXHAUSTED ``PARTNER_TOO_MANY_IN_FLIGHT`` with RetryInfo."""
    max_streams_per_partner: int = 256
    """WatchCase streams one partner system may hold open over all its connections; beyond it
    RESOURCE_EXHAUSTED ``PARTNER_TOO_MANY_STREAMS`` with RetryInfo (1 s). A partner following more
    cases polls GetCase for the rest."""
    dev_mode: bool = False
    """Plaintext gRPC without partner authentication. Never in production."""
    system_id: str = "dev-partner"
    """Partner system id assumed for calls in dev mode without ``dev_tokens``."""
    dev_tokens: list[str] = field(default_factory=list)
    """Dev mode only: ``"<system-id>:<token>"`` entries; when set, callers must send
    ``authorization: Bearer <token>`` and are served as that system. Refused outside dev mode."""
    maintenance_file: str = "maintenance"
    """While this file exists the gateway is in maintenance (``tongban maintenance on|off``)."""
    maintenance_poll_s: float = 1.0
    """How often the gateway looks for the maintenance file."""
    max_in_flight_per_connection: int = 100
    """In-flight RPCs one client connection may have; beyond it RESOURCE_EXHAUSTED
    ``TOO_MANY_IN_FLIGHT`` with RetryInfo (open watches count too)."""
    rate_per_partner_s: float = 1000.0
    """Calls a second each partner system may make on average (0: no limit)."""
    burst_per_partner: float = 2000.0
    """Calls a partner may make at once, above its rate, before it is limited."""
    tls_cert: str = ""
    """PEM server certificate of the gateway (with ``tls_key``); required outside dev mode."""
    tls_key: str = ""
    """PEM private key of ``tls_cert``."""
    client_ca: str = ""
    """PEM CA certificate(s) partner client certificates must chain to (mutual TLS). A partner's
    identity is the certificate's ``urn:tongban:partner:<region>:<system-id>`` URI SAN."""
    grace_s: float = 5.0
    """Graceful-stop grace period for in-flight RPCs."""
    handshake_timeout_s: float = 10.0
    """A connection that has not finished its TLS handshake by then is closed (gRPC's default is
    120 s: sockets opened and left silent would pile up)."""
    max_connection_idle_s: float = 60.0
    """A connection with no RPC for this long is closed (GOAWAY; a client reconnects at its next
    call). A plaintext (dev) socket that never speaks HTTP/2 is closed after this too."""
    max_connection_age_s: float = 1800.0
    """Any connection is asked to go away after this long (spreads partners over replicas added
    since, and re-checks their client certificates at the next handshake)."""
    max_connection_age_grace_s: float = 60.0
    """After ``max_connection_age_s``, RPCs still running get this long before the connection is
    closed; a WatchCase cut then resumes with ``after_sequence`` on a new connection."""
    keepalive_time_s: float = 60.0
    """The gateway pings a connection silent for this long, to find dead peers (and free their
    streams) without waiting for TCP."""
    keepalive_timeout_s: float = 20.0
    """A ping unanswered for this long closes the connection."""
    min_client_ping_interval_s: float = 30.0
    """Clients may ping at most this often while they send nothing; faster pings are strikes."""
    permit_keepalive_without_calls: bool = False
    """Whether client pings on a connection with no RPC are allowed (off: they are strikes, and
    idle connections stay idle until ``max_connection_idle_s`` closes them)."""
    max_ping_strikes: int = 2
    """Bad pings tolerated before the connection is closed with GOAWAY ``ENHANCE_YOUR_CALM``."""
    peer_probe_interval_s: float = 5.0
    """How often the gateway pings every registered peer region through the hub (gRPC health
    ``tongban.cross_region``, gauge ``tongban_peer_reachable``)."""
    peer_probe_timeout_s: float = 1.0
    """A peer region that has not answered a ping by then counts as unreachable."""
    case_store: str = "cases.sqlite"
    """SQLite file of the cases this region submitted (outbox, receipts, status events); shared by
    the region's gateway replicas."""
    submit_ttl_s: float = 72 * 3600.0
    """Time to live of a Submit when neither the caller nor the catalogue item sets one."""
    max_submit_ttl_s: float = 30 * 24 * 3600.0
    """Longer time-to-live requests are capped to this."""
    publish_timeout_s: float = 2.0
    """How long Submit waits for the region's own stream to acknowledge a request."""
    reconcile_interval_s: float = 30.0
    """How often the reconciler compares the case outbox and ledger with the outbound stream."""
    resend_after_s: float = 60.0
    """A request accepted this long ago and neither forwarded nor in the outbound stream is re-sent."""
    forward_retry_max_s: float = 2.0
    """Longest pause between attempts to forward to a region that is unreachable."""
    ack_wait_s: float = 10.0
    """Ack wait of the gateway's forwarding and event consumers (redelivery after a crash)."""


@dataclass
class ConnectorConfig:
    freshness_window_s: float = 300.0
    """Requests created longer ago than this are refused as stale."""
    clock_skew_s: float = 30.0
    """Requests created further in the future than this are refused."""
    max_in_flight: int = 256
    """Requests processed concurrently by one connector process."""
    max_in_flight_per_region: int = 192
    """Of those, Query requests one sending region may have in progress at once; beyond it the
    region gets a signed RESOURCE_EXHAUSTED ``PEER_BUSY`` refusal, so one region flooding a slow back
    end leaves room for the others."""
    max_envelope_bytes: int = 2 << 20
    """Larger request envelopes are refused unread (the gateway's own limit is 1 MiB a message)."""
    adapters: str = ""
    """``module:function`` returning {code: Adapter}, or ``demo`` (the shipped demo back ends, dev mode
    only); empty: only what ``[services]`` declares (or, in dev mode with nothing declared, the demo)."""
    demo_db: str = "demo-backend.sqlite"
    """SQLite file of the demo back ends."""
    state_store: str = "connector-state.sqlite"
    """SQLite file of processed durable requests and case sequences; shared by the region's
    connector replicas."""
    max_attempts: int = 5
    """Delivery attempts of a durable request before it is dead-lettered (unless the catalogue
    item sets its own)."""
    backoff_s: list[float] = field(default_factory=lambda: [1.0, 5.0, 30.0])
    """Delays between attempts (the last repeats) unless the catalogue item sets its own."""
    ack_wait_s: float = 30.0
    """Redelivery delay of a durable request whose connector died; long back-end calls extend it."""
    fetch_batch: int = 64
    """Durable requests fetched at once by one connector process."""


@dataclass
class CatalogueConfig:
    file: str = ""
    """The deployment's catalogue: protobuf JSON of ``tongban.v1.Catalogue`` or a ``SignedCatalogue``
    (``.signed``); empty: the catalogue shipped in the package."""
    watch: bool = True
    """Adopt signed catalogues the registry authority publishes to the region's KV bucket."""
    cache: str = "catalogue.latest"
    """Where the newest adopted signed catalogue is kept across restarts."""
    keep_revisions: int = 8
    """Catalogue revisions kept to validate requests a sender checked against an earlier one."""


@dataclass
class BackendApiConfig:
    listen: str = ""
    """host:port of the connector's back-end API (CaseBackend) for the region's own case system;
    empty: not served."""
    port_file: str = ""
    """Written with the bound port once listening (for ``listen = "127.0.0.1:0"``)."""
    tls_cert: str = ""
    tls_key: str = ""
    client_ca: str = ""
    """Mutual TLS, as the gateway: required outside dev mode."""
    allowed_clients: list[str] = field(default_factory=list)
    """Client certificate common names allowed to call (empty: any certificate ``client_ca`` signed)."""
    lease_s: float = 60.0
    """A streamed delivery not acknowledged within this is streamed again."""
    store: str = "backend-api.sqlite"
    """SQLite file of the deliveries waiting for the back end: ids, states and times, each body
    sealed to the region's own sealing key. The region's connector replicas share it, like
    ``[connector] state_store``."""
    webhook_url: str = ""
    """POST each delivered case here as well (empty: pull only)."""
    webhook_secret_file: str = ""
    """HMAC-SHA256 key for the webhook's signature header."""
    webhook_ca: str = ""
    """CA file for the webhook receiver's TLS certificate (empty: the system's)."""
    webhook_timeout_s: float = 5.0
    webhook_max_attempts: int = 10
    """Attempts before a delivery the webhook never took is dead-lettered."""
    webhook_backoff_s: list[float] = field(default_factory=lambda: [1.0, 5.0, 30.0, 120.0])
    """Delays between webhook attempts (the last one repeats), jittered."""


@dataclass
class LedgerConfig:
    backend: str = "sqlite"
    """``sqlite`` (the file ``path``) or ``postgres`` (``dsn``): several gateway and connector
    replicas of a region may append to one PostgreSQL ledger."""
    dsn: str = ""
    """PostgreSQL connection string, e.g. ``postgresql://tongban@db:5432/tongban`` (backend postgres)."""
    pg_schema: str = "tongban_ledger"
    """PostgreSQL schema holding the region's ledger tables."""
    path: str = "ledger.sqlite"
    """SQLite ledger file of this region."""
    synchronous: str = "FULL"
    """SQLite synchronous mode; FULL survives power loss, NORMAL only process crashes."""
    checkpoint_state: str = "checkpoint.json"
    """The last checkpoint this region signed (keep it with the ledger: it is what stops the region
    from ever signing two inconsistent checkpoints)."""
    checkpoint_interval_s: float = 60.0
    """How often the gateway signs and publishes a checkpoint of the ledger to the peer regions."""
    witness_state: str = "witnessed.json"
    """The latest checkpoint this region verified of each peer region."""
    witness: bool = True
    """Witness the peer regions' checkpoints (turn off on all but one gateway replica per state file)."""


@dataclass
class LogConfig:
    format: str = "json"
    """``json`` (one JSON object per line) or ``console`` (human-friendly, dev)."""
    level: str = "info"


@dataclass
class TelemetryConfig:
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for traces; empty exports nothing. ``https://collector:4317`` uses TLS;
    ``host:port`` or ``http://…`` is plaintext (a collector on the same host, or dev)."""
    otlp_ca: str = ""
    """PEM file of the CA that signed the collector's certificate (TLS endpoints; default: the
    system's roots)."""
    service_name: str = ""
    """OpenTelemetry service.name; defaults to tongban-<role>."""


@dataclass
class MetricsConfig:
    """The operator endpoint of each process: ``/metrics`` (Prometheus), ``/livez``, ``/readyz``.

    A region's gateway and connector read the same config file, so each role has its own address.
    """

    gateway_listen: str = ""
    """``host:port`` of the gateway's endpoint, e.g. ``0.0.0.0:9464``; empty: no endpoint, no
    metrics; port 0 picks a free port (written to ``gateway_port_file``)."""
    gateway_port_file: str = ""
    """If set, the gateway's bound endpoint port is written here."""
    connector_listen: str = ""
    """``host:port`` of the connector's endpoint, e.g. ``0.0.0.0:9465``; empty: off."""
    connector_port_file: str = ""
    """If set, the connector's bound endpoint port is written here."""
    ledger_sample_s: float = 1.0
    """How often the ledger's size is read for ``tongban_ledger_entries`` (and readiness)."""

    def listen(self, role: str) -> tuple[str, str]:
        """(listen address, port file) of ``role`` (``gateway`` or ``connector``)."""
        if role == "gateway":
            return self.gateway_listen, self.gateway_port_file
        return self.connector_listen, self.connector_port_file


@dataclass
class ProcessConfig:
    grace_s: float = 10.0
    """From SIGTERM (or Ctrl-C) to exit of a gateway or connector process: in-flight work finishes
    or fails cleanly within it, every stop step shares it, and a process still stopping a second
    after it exits anyway (code 70, logged). Keep it below the orchestrator's kill timeout
    (Kubernetes ``terminationGracePeriodSeconds``, 30 s by default)."""


@dataclass
class Config:
    region: RegionConfig = field(default_factory=RegionConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)
    keys: KeysConfig = field(default_factory=KeysConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    catalogue: CatalogueConfig = field(default_factory=CatalogueConfig)
    backend_api: BackendApiConfig = field(default_factory=BackendApiConfig)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``[backends.<name>]``: the region's back-end systems (HTTP services, databases); read by
    :mod:`connectors.declared`."""
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``[services.<item code>]``: which back end answers each catalogue item, and how."""
    base_dir: Path = field(default_factory=Path.cwd)
    """Directory relative paths are resolved against (the config file's directory)."""

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @classmethod
    def load(cls, path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
        """Load ``path`` and apply ``TONGBAN_*`` overrides from ``env`` (default: os.environ)."""
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=p.resolve().parent, env=os.environ if env is None else env)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, base_dir: Path, env: dict[str, str] | os._Environ[str]
    ) -> Config:
        cfg = cls(base_dir=base_dir)
        hints = get_type_hints(cls)
        for name, section in data.items():
            if name in _TABLES_OF_TABLES:
                setattr(cfg, name, _tables_of_tables(name, section))
                continue
            if name not in hints or not is_dataclass(getattr(cfg, name)):
                raise ConfigError(f"unknown config section [{name}]")
            if not isinstance(section, dict):
                raise ConfigError(f"[{name}] must be a table")
            _apply(getattr(cfg, name), section, name)
        for key, value in env.items():
            if not key.startswith("TONGBAN_") or "__" not in key:
                continue
            sec, _, attr = key[len("TONGBAN_") :].lower().partition("__")
            target = getattr(cfg, sec, None)
            if target is None or not is_dataclass(target):
                raise ConfigError(f"{key}: unknown config section {sec}")
            _apply(target, {attr: _from_env(target, attr, value, key)}, sec)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.region.code and not (len(self.region.code) == 6 and self.region.code.isdigit()):
            raise ConfigError("[region] code must be a 6-digit GB/T 2260 code")
        for listen in (self.metrics.gateway_listen, self.metrics.connector_listen):
            host, sep, port = listen.rpartition(":")
            if listen and not (sep and host and port.isdigit() and int(port) <= 65535):
                raise ConfigError(f"[metrics] listen address {listen!r} is not host:port")
        if self.metrics.ledger_sample_s <= 0:
            raise ConfigError("[metrics] ledger_sample_s must be > 0")
        if self.log.format not in ("json", "console"):
            raise ConfigError("[log] format must be json or console")
        if self.ledger.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError("[ledger] synchronous must be FULL, NORMAL or EXTRA")
        tls = (self.gateway.tls_cert, self.gateway.tls_key, self.gateway.client_ca)
        if any(tls) and not all(tls):
            raise ConfigError("[gateway] tls_cert, tls_key and client_ca go together")
        if self.gateway.dev_tokens and not self.gateway.dev_mode:
            raise ConfigError("[gateway] dev_tokens are for dev mode only: partners use mutual TLS")
        for entry in self.gateway.dev_tokens:
            system, sep, token = entry.partition(":")
            if not sep or not system or len(token) < 16:
                raise ConfigError('[gateway] dev_tokens entries are "<system-id>:<token of 16+ characters>"')
        if self.catalogue.keep_revisions < 1:
            raise ConfigError("[catalogue] keep_revisions must be >= 1")
        api = self.backend_api
        api_tls = (api.tls_cert, api.tls_key, api.client_ca)
        if any(api_tls) and not all(api_tls):
            raise ConfigError("[backend_api] tls_cert, tls_key and client_ca go together")
        if api.listen and not all(api_tls) and not self.gateway.dev_mode:
            raise ConfigError("[backend_api] needs tls_cert, tls_key and client_ca outside dev mode")
        if api.lease_s <= 0 or api.webhook_timeout_s <= 0 or api.webhook_max_attempts < 1:
            raise ConfigError(
                "[backend_api] lease_s and webhook_timeout_s must be > 0, webhook_max_attempts >= 1"
            )
        if not api.webhook_backoff_s or any(b <= 0 for b in api.webhook_backoff_s):
            raise ConfigError("[backend_api] webhook_backoff_s must be positive delays")
        if api.webhook_url and not api.webhook_secret_file:
            raise ConfigError("[backend_api] webhook_url needs webhook_secret_file (deliveries are signed)")
        if self.connector.max_in_flight_per_region < 1:
            raise ConfigError("[connector] max_in_flight_per_region must be >= 1")
        gw = self.gateway
        limits = (
            gw.max_in_flight_per_connection,
            gw.max_in_flight_per_partner,
            gw.max_streams_per_partner,
            gw.max_concurrent_rpcs,
        )
        if min(limits) < 1:
            raise ConfigError(
                "[gateway] max_in_flight_per_connection, max_in_flight_per_partner, "
                "max_streams_per_partner and max_concurrent_rpcs must be >= 1"
            )
        timers = (
            gw.handshake_timeout_s,
            gw.max_connection_idle_s,
            gw.max_connection_age_s,
            gw.keepalive_time_s,
            gw.keepalive_timeout_s,
            gw.min_client_ping_interval_s,
            gw.peer_probe_interval_s,
            gw.peer_probe_timeout_s,
        )
        if min(timers) <= 0 or gw.max_connection_age_grace_s < 0 or gw.max_ping_strikes < 0:
            raise ConfigError(
                "[gateway] connection timers must be > 0 (max_connection_age_grace_s and "
                "max_ping_strikes >= 0)"
            )
        if self.keys.activation_delay_s < 0:
            raise ConfigError("[keys] activation_delay_s must be >= 0")
        if self.ledger.backend not in ("sqlite", "postgres"):
            raise ConfigError("[ledger] backend must be sqlite or postgres")
        if self.ledger.backend == "postgres" and not self.ledger.dsn:
            raise ConfigError("[ledger] backend postgres needs a dsn")
        if self.ledger.checkpoint_interval_s <= 0:
            raise ConfigError("[ledger] checkpoint_interval_s must be > 0")
        if self.process.grace_s <= 0:
            raise ConfigError("[process] grace_s must be > 0")
        if self.registry.recheck_s <= 0:
            raise ConfigError("[registry] recheck_s must be > 0")
        if self.nats.stream_replicas not in (1, 3, 5):
            raise ConfigError("[nats] stream_replicas must be 1, 3 or 5")
        if bool(self.nats.tls_cert) != bool(self.nats.tls_key):
            raise ConfigError("[nats] tls_cert and tls_key go together")
        if self.nats.tls_cert and not self.nats.tls_ca:
            raise ConfigError("[nats] tls_cert needs tls_ca: a client certificate is only sent over TLS")
        if self.connector.max_attempts < 1 or any(b <= 0 for b in self.connector.backoff_s):
            raise ConfigError("[connector] max_attempts must be >= 1 and backoff_s delays positive")
        if min(self.gateway.submit_ttl_s, self.gateway.publish_timeout_s, self.connector.ack_wait_s) <= 0:
            raise ConfigError(
                "[gateway] submit_ttl_s, publish_timeout_s and [connector] ack_wait_s must be > 0"
            )
        if (
            self.gateway.default_deadline_s <= 0
            or self.gateway.max_deadline_s < self.gateway.default_deadline_s
        ):
            raise ConfigError("[gateway] deadlines must satisfy 0 < default_deadline_s <= max_deadline_s")


_TABLES_OF_TABLES = ("backends", "services")
"""Sections holding one table per name (``[backends.shebao]``); their settings are checked by the
connector that reads them."""


def _tables_of_tables(name: str, section: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(section, dict) or not all(isinstance(t, dict) for t in section.values()):
        raise ConfigError(f"[{name}] holds one table per name, e.g. [{name}.<name>]")
    return {str(k): dict(v) for k, v in section.items()}


def _apply(target: Any, values: dict[str, Any], section: str) -> None:
    known = {f.name: f for f in fields(target)}
    hints = get_type_hints(type(target))
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r} in [{section}]")
        expected = hints[key]
        origin = getattr(expected, "__origin__", expected)
        ok = isinstance(value, origin) or (
            origin is float and isinstance(value, int) and not isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(f"[{section}] {key} must be {getattr(origin, '__name__', origin)}")
        setattr(target, key, float(value) if origin is float else value)


def _from_env(target: Any, attr: str, raw: str, key: str) -> Any:
    hints = get_type_hints(type(target))
    if attr not in hints:
        raise ConfigError(f"{key}: unknown setting {attr}")
    t = hints[attr]
    origin = getattr(t, "__origin__", t)
    try:
        if origin is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if origin is int:
            return int(raw)
        if origin is float:
            return float(raw)
        if origin is list:
            return [s.strip() for s in raw.split(",") if s.strip()]
    except ValueError as exc:
        raise ConfigError(f"{key}: not a valid {origin.__name__}") from exc
    return raw


def dump_toml(cfg: dict[str, dict[str, Any]]) -> str:
    """Render a two-level dict as TOML (enough for the configs tongban writes itself): a section
    named ``a.b`` is the table ``[a.b]``, a dict value an inline table."""
    out: list[str] = []
    for section, values in cfg.items():
        out.append(f"[{section}]")
        for k, v in values.items():
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_value(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'
