"""Metrics (OpenTelemetry instruments, read by Prometheus) and the operator endpoint of a process.

Every gateway and connector has its own :class:`Metrics`: its own MeterProvider and its own
Prometheus registry, so several components in one process (the tests, ``tongban dev``) never share
or clash over instruments. Components take a ``Metrics`` and default to :data:`NO_METRICS`, whose
instruments do nothing.

Labels come from a fixed, low-cardinality vocabulary and never carry personal data or per-request
ids: role, region, RPC method, service code (one of the catalogue's codes, which every ``Metrics``
is given), peer region (a 6-digit region code), hop name and outcome (``OK`` or a reason code).
Anything else is replaced by ``?``/``OTHER`` before it reaches an instrument, whatever a caller
passes.

The request path is cheap: one OpenTelemetry SDK call costs about 10 µs here, so only histograms
(per hop, and per request) go through the SDK on each request. Requests in flight and requests by
outcome are plain integers on the component's event loop, read by observable instruments at each
scrape; label sets are cleaned and built once per distinct value and reused.

:class:`OperatorEndpoint` serves ``/metrics`` (Prometheus text), ``/livez`` (the process answers)
and ``/readyz`` (200 when every readiness check holds, else 503 with the checks as JSON) from a
thread of its own, so a scrape never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, runtime_checkable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import structlog
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, generate_latest

from tongban.core.errors import ConfigError, TongbanError
from tongban.runtime.config import Config

log = structlog.get_logger("tongban.runtime.metrics")


class Hop(enum.StrEnum):
    """The timed steps of a request (label ``hop`` of ``tongban.hop.duration``)."""

    VALIDATE = "validate"
    """Gateway: catalogue and registry checks."""
    SEAL_SIGN = "seal_sign"
    """Gateway: build, seal and sign the request envelope."""
    ROUND_TRIP = "round_trip"
    """Gateway: publish a Query and wait for the providing region's reply."""
    VERIFY_REPLY = "verify_reply"
    """Gateway: verify and open the reply."""
    PUBLISH = "publish"
    """Gateway: a Submit into the region's own outbound stream."""
    FORWARD = "forward"
    """Forwarder (gateway requests, connector events): into the destination region's stream."""
    VERIFY = "verify"
    """Connector: signature, recipient, subject and time checks."""
    OPEN = "open"
    """Connector: open the seal, check header and body agree."""
    ADAPTER = "adapter"
    """Connector: the back-end call."""
    REPLY = "reply"
    """Connector: seal, sign and record the answer."""


@dataclass(frozen=True)
class Instrument:
    """One instrument: its OpenTelemetry name, kind, unit and the labels it carries."""

    name: str
    kind: str
    """``counter``, ``histogram`` or ``gauge`` (as Prometheus shows it)."""
    unit: str
    labels: tuple[str, ...]
    description: str

    @property
    def prometheus(self) -> str:
        """The Prometheus family name the exporter gives it (``_total`` is added to samples of
        counters; histograms have ``_bucket``, ``_count`` and ``_sum`` series)."""
        base = self.name.replace(".", "_")
        return base + "_seconds" if self.unit == "s" else base

    def series(self) -> tuple[str, ...]:
        """Every sample name this instrument produces in the Prometheus text."""
        p = self.prometheus
        if self.kind == "counter":
            return (p + "_total",)
        if self.kind == "histogram":
            return (p + "_bucket", p + "_count", p + "_sum")
        return (p,)


_COMMON = ("role", "region")
INSTRUMENTS: Final = (
    Instrument(
        "tongban.requests",
        "counter",
        "{request}",
        (*_COMMON, "rpc", "service_code", "peer_region", "outcome"),
        "Gateway: RPCs handled, once each when they end. Connector: Query requests handled, once "
        "each; for Submit, deliveries of durable requests handled: a request tried N times counts N "
        "(each failed attempt that is retried with its back-end reason, e.g. BACKEND_FAILURE; the "
        "last with the request's outcome, e.g. OK or DEAD_LETTERED; a redelivery of one already "
        "done as ALREADY_PROCESSED). By RPC, service, peer region and outcome (OK or a reason code)",
    ),
    Instrument(
        "tongban.request.duration",
        "histogram",
        "s",
        (*_COMMON, "rpc", "service_code", "peer_region"),
        "Time to handle one request (gateway: the whole RPC; connector: receipt to answer)",
    ),
    Instrument(
        "tongban.hop.duration", "histogram", "s", (*_COMMON, "hop"), "Time spent in one hop of a request"
    ),
    Instrument("tongban.in_flight", "gauge", "{request}", (*_COMMON, "rpc"), "Requests being handled now"),
    Instrument(
        "tongban.redeliveries",
        "counter",
        "{delivery}",
        (*_COMMON, "service_code"),
        "Durable requests delivered again by JetStream (a crash, a nak or an ack wait that ran out)",
    ),
    Instrument(
        "tongban.dead_letters",
        "counter",
        "{message}",
        (*_COMMON, "service_code", "reason"),
        "Messages put into the region's dead-letter stream",
    ),
    Instrument("tongban.ledger.entries", "gauge", "{entry}", _COMMON, "Entries in the region's ledger"),
    Instrument(
        "tongban.registry.version", "gauge", "1", _COMMON, "Version of the trust registry this process holds"
    ),
    Instrument("tongban.nats.connected", "gauge", "1", _COMMON, "1 while the NATS connection is up, else 0"),
    Instrument(
        "tongban.peer.reachable",
        "gauge",
        "1",
        (*_COMMON, "peer_region"),
        "Gateway: 1 while the peer region answered the last ping through the hub, else 0 (every "
        "peer 0: the hub link is down; Query fails, Submit stores and forwards)",
    ),
)
BY_NAME: Final = {i.name: i for i in INSTRUMENTS}

_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_REGION = re.compile(r"^[0-9]{6}$")
_RPC = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,47}$")
_ATTR_CACHE_MAX = 10_000
UNSET = "-"
"""Label value of what is not known for a request (e.g. the service of one refused before it was
validated, or of an RPC that has none)."""

_current: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "tongban_metrics_request", default=None
)


def label_request(service_code: str, peer_region: str) -> None:
    """Name the (validated) service and peer region of the request being handled in this context."""
    rec = _current.get()
    if rec is not None:
        rec.service_code = service_code
        rec.peer_region = peer_region


def set_outcome(outcome: str) -> None:
    """The outcome (``OK`` or a reason code) of the request being handled in this context."""
    rec = _current.get()
    if rec is not None:
        rec.outcome = outcome


class RequestRecord:
    """One request being measured: in flight from ``__enter__`` to ``__exit__``, then counted with
    its outcome and timed. Handlers fill in labels through :func:`label_request` and
    :func:`set_outcome`; an exception leaving the scope sets the outcome unless one was set."""

    __slots__ = ("_metrics", "_rpc_label", "_t0", "_token", "outcome", "peer_region", "rpc", "service_code")

    def __init__(self, metrics: Metrics, rpc: str, service_code: str, peer_region: str) -> None:
        self._metrics = metrics
        self.rpc = rpc
        self._rpc_label = metrics._rpc_label(rpc) if metrics.enabled else UNSET
        self.service_code = service_code
        self.peer_region = peer_region
        self.outcome = "OK"
        self._t0 = 0.0
        self._token: contextvars.Token[RequestRecord | None] | None = None

    def __enter__(self) -> RequestRecord:
        self._t0 = time.perf_counter()
        self._token = _current.set(self)
        in_flight = self._metrics._in_flight
        in_flight[self._rpc_label] = in_flight.get(self._rpc_label, 0) + 1
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            # A streaming RPC may end in another context than it began in: nothing to undo then.
            with contextlib.suppress(ValueError):
                _current.reset(self._token)
        if exc is not None and self.outcome == "OK":
            if isinstance(exc, TongbanError):
                self.outcome = exc.wire_reason
            elif isinstance(exc, asyncio.CancelledError):
                self.outcome = "CANCELLED"
            elif type(exc).__name__ == "AbortError":  # grpc.aio: the handler aborted the RPC itself
                self.outcome = "ABORTED"
            else:
                self.outcome = "INTERNAL"
        self._metrics._finish(self, time.perf_counter() - self._t0)


class _Unmeasured(RequestRecord):
    """The record of a component without metrics: shared, and nothing happens on entry or exit."""

    __slots__ = ()

    def __enter__(self) -> RequestRecord:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _NoTimer:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_TIMER = _NoTimer()


class _HopTimer:
    __slots__ = ("_attrs", "_hist", "_t0")

    def __init__(self, hist: Any, attrs: Mapping[str, str]) -> None:
        self._hist = hist
        self._attrs = attrs
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._hist.record(time.perf_counter() - self._t0, self._attrs)


class _Series:
    """One label set of ``tongban.requests`` (cleaned once) with its count, and the label set of
    the same request's ``tongban.request.duration`` (the same without ``outcome``)."""

    __slots__ = ("count", "count_attrs", "duration_attrs")

    def __init__(self, count_attrs: dict[str, str], duration_attrs: dict[str, str]) -> None:
        self.count = 0
        self.count_attrs = count_attrs
        self.duration_attrs = duration_attrs


class Metrics:
    """The instruments of one component (a gateway or a connector) of one region.

    Requests are counted and kept in flight as plain integers, updated from the component's event
    loop and read at each scrape (from the endpoint's thread: reads of ints and dict copies, atomic
    under the GIL); histograms are recorded through the SDK.

    Args:
        role: ``gateway`` or ``connector`` (label ``role``).
        region: the component's region code (label ``region``).
        services: the catalogue's service codes: the only values label ``service_code`` takes
            besides ``-`` (not known) and ``?`` (anything else). Required: a service code a caller
            passes is never trusted to be one.
        enabled: False gives instruments that record nothing (see :data:`NO_METRICS`).
    """

    def __init__(self, role: str, region: str, *, services: Iterable[str], enabled: bool = True) -> None:
        self.role = role
        self.region = region
        self.enabled = enabled
        self._services = frozenset(services)
        self.registry: CollectorRegistry | None = None
        self.provider: MeterProvider | None = None
        self._reader: Any = None
        meter: Meter
        if enabled:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            self.registry = CollectorRegistry()
            # Scope labels off: series carry only the labels listed in INSTRUMENTS.
            self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
            self.provider = MeterProvider(
                metric_readers=[self._reader],
                resource=Resource.create({"service.name": f"tongban-{role}", "tongban.region": region}),
            )
            meter = self.provider.get_meter("tongban")
        else:
            meter = NoOpMeterProvider().get_meter("tongban")
        self._base: dict[str, str] = {"role": role, "region": region}
        self._nats: Callable[[], bool] | None = None
        self._registry_version: Callable[[], int] | None = None
        self._ledger_entries: Callable[[], int | None] | None = None
        self._peers: Callable[[], Mapping[str, bool]] | None = None
        # Plain counts, read by the observable instruments below at each scrape.
        self._in_flight: dict[str, int] = {}
        """Requests in flight by (cleaned) RPC label."""
        self._series: dict[tuple[str, str, str, str], _Series] = {}
        """(rpc, service, peer, outcome) as callers pass them → their series (bounded cache)."""
        self._counted: dict[tuple[str, str, str, str], _Series] = {}
        """The same, by cleaned label values: what ``tongban.requests`` reports."""
        self._rpc_labels: dict[str, str] = {}
        self._rpc_attrs: dict[str, dict[str, str]] = {}

        def histogram(spec: Instrument) -> Any:
            return meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
            )

        def counter(spec: Instrument) -> Any:
            return meter.create_counter(spec.name, unit=spec.unit, description=spec.description)

        self._request_duration = histogram(BY_NAME["tongban.request.duration"])
        self._hop_duration = histogram(BY_NAME["tongban.hop.duration"])
        # Rare (a redelivery, a dead letter): through the SDK.
        self._redeliveries = counter(BY_NAME["tongban.redeliveries"])
        self._dead_letters = counter(BY_NAME["tongban.dead_letters"])
        spec = BY_NAME["tongban.requests"]
        meter.create_observable_counter(
            spec.name, callbacks=[self._observe_requests], unit=spec.unit, description=spec.description
        )
        for name, read in (
            ("tongban.in_flight", self._observe_in_flight),
            ("tongban.ledger.entries", self._observe_ledger),
            ("tongban.registry.version", self._observe_registry),
            ("tongban.nats.connected", self._observe_nats),
            ("tongban.peer.reachable", self._observe_peers),
        ):
            spec = BY_NAME[name]
            meter.create_observable_gauge(
                spec.name, callbacks=[read], unit=spec.unit, description=spec.description
            )
        # Label sets are cleaned and built once per distinct value, then reused by every recording.
        self._hop_attrs = {hop: {**self._base, "hop": hop.value} for hop in Hop}
        self._attr_cache: dict[tuple[str, ...], dict[str, str]] = {}
        self._unmeasured = _Unmeasured(self, UNSET, UNSET, UNSET)

    @classmethod
    def disabled(cls) -> Metrics:
        """Instruments that record nothing, for components run without metrics."""
        return cls("none", "", services=(), enabled=False)

    # -- recording ----------------------------------------------------------------------------

    def request(self, rpc: str, *, service_code: str = UNSET, peer_region: str = UNSET) -> RequestRecord:
        """``with metrics.request("Query"):`` measures one request (in flight, count, duration)."""
        if not self.enabled:
            return self._unmeasured
        return RequestRecord(self, rpc, service_code, peer_region)

    def hop(self, hop: Hop) -> _HopTimer | _NoTimer:
        """``with metrics.hop(Hop.VALIDATE):`` times one hop (a fresh timer: hops overlap across
        concurrent requests)."""
        if not self.enabled:
            return _NO_TIMER
        return _HopTimer(self._hop_duration, self._hop_attrs[hop])

    def redelivered(self, service_code: str) -> None:
        """A durable request arrived again (JetStream delivery count above 1)."""
        self._redeliveries.add(1, self._attrs(("sd", service_code)))

    def dead_lettered(self, service_code: str, reason: str) -> None:
        """A message went to the dead-letter stream."""
        self._dead_letters.add(1, self._attrs(("dl", service_code, reason)))

    def _finish(self, rec: RequestRecord, seconds: float) -> None:
        self._in_flight[rec._rpc_label] -= 1
        key = (rec.rpc, rec.service_code, rec.peer_region, rec.outcome)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(key)
        series.count += 1
        self._request_duration.record(seconds, series.duration_attrs)

    def _new_series(self, key: tuple[str, str, str, str]) -> _Series:
        rpc, svc, peer, outcome = key
        clean = (self._rpc_label(rpc), self._service(svc), _peer(peer), _reason(outcome))
        series = self._counted.get(clean)
        if series is None:
            if len(self._counted) >= _ATTR_CACHE_MAX:
                # A flood of distinct label values: one series for all the rest, not a new one each.
                clean = (clean[0], "?", "?", "OTHER")
                series = self._counted.get(clean)
            if series is None:
                labels = dict(zip(("rpc", "service_code", "peer_region"), clean[:3], strict=True))
                series = _Series(
                    {**self._base, **labels, "outcome": clean[3]},
                    self._attrs(("rd", *clean[:3])),
                )
                self._counted[clean] = series
        if len(self._series) < _ATTR_CACHE_MAX:
            self._series[key] = series
        return series

    def _rpc_label(self, rpc: str) -> str:
        label = self._rpc_labels.get(rpc)
        if label is None:
            label = _rpc(rpc)
            if len(self._rpc_labels) < _ATTR_CACHE_MAX:
                self._rpc_labels[rpc] = label
            else:
                label = "OTHER"
            if label not in self._rpc_attrs:
                self._rpc_attrs[label] = {**self._base, "rpc": label}
        return label

    def _attrs(self, key: tuple[str, ...]) -> dict[str, str]:
        """The label set of ``key`` (its first item names the shape), cleaned once and cached."""
        found = self._attr_cache.get(key)
        if found is not None:
            return found
        match key:
            case ("rd", rpc, svc, peer):
                # Called with cleaned values only (from _new_series).
                attrs = {**self._base, "rpc": rpc, "service_code": svc, "peer_region": peer}
            case ("pr", peer):
                attrs = {**self._base, "peer_region": _peer(peer)}
            case ("sd", svc):
                attrs = {**self._base, "service_code": self._service(svc)}
            case ("dl", svc, reason):
                attrs = {**self._base, "service_code": self._service(svc), "reason": _reason(reason)}
            case _:
                raise AssertionError(key)
        if len(self._attr_cache) < _ATTR_CACHE_MAX:
            self._attr_cache[key] = attrs
        return attrs

    def _service(self, code: str) -> str:
        if code in (UNSET, "?"):
            return code
        return code if code in self._services else "?"

    # -- observed state -------------------------------------------------------------------------

    def observe(
        self,
        *,
        nats_connected: Callable[[], bool] | None = None,
        registry_version: Callable[[], int] | None = None,
        ledger_entries: Callable[[], int | None] | None = None,
        peers_reachable: Callable[[], Mapping[str, bool]] | None = None,
    ) -> None:
        """Where the gauges read their values at each scrape (called from the endpoint's thread:
        plain attribute reads only, never I/O)."""
        if not self.enabled:
            return
        if nats_connected is not None:
            self._nats = nats_connected
        if registry_version is not None:
            self._registry_version = registry_version
        if ledger_entries is not None:
            self._ledger_entries = ledger_entries
        if peers_reachable is not None:
            self._peers = peers_reachable

    def _observe_requests(self, _: CallbackOptions) -> Iterable[Observation]:
        # dict.copy() is one step under the GIL: the event loop may add a series meanwhile.
        return [Observation(s.count, s.count_attrs) for s in self._counted.copy().values()]

    def _observe_in_flight(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, self._rpc_attrs[rpc]) for rpc, n in self._in_flight.copy().items()]

    def _observe_nats(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._nats is None:
            return []
        return [Observation(1 if self._nats() else 0, self._base)]

    def _observe_peers(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._peers is None:
            return []
        # Peer codes come from the root-signed registry; cleaned anyway, like every label.
        return [Observation(1 if ok else 0, self._attrs(("pr", peer))) for peer, ok in self._peers().items()]

    def _observe_registry(self, _: CallbackOptions) -> Iterable[Observation]:
        if self._registry_version is None:
            return []
        return [Observation(self._registry_version(), self._base)]

    def _observe_ledger(self, _: CallbackOptions) -> Iterable[Observation]:
        size = self._ledger_entries() if self._ledger_entries is not None else None
        return [] if size is None else [Observation(size, self._base)]

    # -- output -----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every instrument (empty when disabled)."""
        return generate_latest(self.registry) if self.registry is not None else b""

    def shutdown(self) -> None:
        """Release the provider (idempotent)."""
        provider, self.provider = self.provider, None
        if provider is not None:
            provider.shutdown()


NO_METRICS: Final = Metrics.disabled()
"""The default of components run without metrics: every instrument is a no-op."""


# fullmatch: ``$`` alone would also let a trailing newline through.
def _rpc(value: str) -> str:
    return value if _RPC.fullmatch(value) else "OTHER"


def _peer(value: str) -> str:
    return value if value in (UNSET, "?") or _REGION.fullmatch(value) else "?"


def _reason(value: str) -> str:
    return value if _REASON.fullmatch(value) else "OTHER"


# -- ledger size, sampled off the request path -------------------------------------------------------


class LedgerSampler:
    """Reads the ledger's size every ``interval_s`` on the event loop and keeps it for the scrape
    thread (reading the store from there would block on its reader thread or need the loop).

    ``ok`` is whether the last read succeeded: the ledger is open and answering.
    """

    def __init__(self, ledger: Any, *, interval_s: float = 5.0) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.size: int | None = None
        self.ok = False
        self._task: asyncio.Task[None] | None = None

    async def sample(self) -> None:
        try:
            self.size = await self.ledger.size()
            self.ok = True
        except Exception as exc:
            if self.ok:
                log.warning("metrics.ledger_unreadable", error=type(exc).__name__)
            self.ok = False

    async def start(self) -> None:
        if self._task is None:
            await self.sample()
            self._task = asyncio.create_task(self._loop(), name="ledger-sampler")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)  # a periodic sample: there is no event to wait on
            await self.sample()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.ok = False


# -- the operator endpoint ----------------------------------------------------------------------------

Readiness = Callable[[], Mapping[str, bool]]
NOT_REQUIRED = "not_required"
"""Key of ``/readyz``'s JSON holding checks shown but not required for readiness (e.g. a gateway's
``cross_region``: Submit still works while the hub is down)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) → (host, port).

    Raises:
        ConfigError: not of that form.
    """
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics listen address {listen!r} is not host:port")
    return host, int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class OperatorEndpoint:
    """HTTP ``/metrics``, ``/livez`` and ``/readyz`` of one component, on a thread of its own.

    ``async with OperatorEndpoint(...)`` starts and stops it; ``start()``/``stop()`` are
    idempotent. ``readiness`` is called from the endpoint's thread and must only read state.

    Args:
        listen: ``host:port``; port 0 picks a free port (see :attr:`port`, and ``port_file``).
        metrics: the component's metrics (``/metrics`` is empty when they are disabled).
        readiness: named checks, all True when the component can take requests.
        port_file: if set, the bound port is written there once serving.
        informational: named checks shown under ``not_required`` in ``/readyz``, which they do
            not fail.
    """

    def __init__(
        self,
        listen: str,
        metrics: Metrics,
        *,
        readiness: Readiness = dict,
        port_file: Path | None = None,
        informational: Readiness = dict,
    ) -> None:
        self.listen = listen
        self.informational = informational
        self.host, self._want_port = parse_listen(listen)
        self.metrics = metrics
        self.readiness = readiness
        self.port_file = port_file
        self.port = 0
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._metrics_app = make_wsgi_app(metrics.registry) if metrics.registry is not None else None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            if self._metrics_app is None:
                start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
                return [b""]
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/livez":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        if path == "/readyz":
            try:
                checks = {k: bool(v) for k, v in self.readiness().items()}
            except Exception as exc:  # a check that fails to answer is a check that fails
                log.warning("metrics.readiness_failed", error=type(exc).__name__)
                checks = {"readiness": False}
            ready = all(checks.values())
            body: dict[str, object] = dict(checks)
            try:
                shown = {k: bool(v) for k, v in self.informational().items()}
            except Exception as exc:  # not required: say it could not be told, stay ready
                log.warning("metrics.informational_failed", error=type(exc).__name__)
                shown = {"informational": False}
            if shown:
                body[NOT_REQUIRED] = shown
            start_response(
                "200 OK" if ready else "503 Service Unavailable", [("Content-Type", "application/json")]
            )
            return [json.dumps(body, sort_keys=True).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: /metrics, /livez, /readyz\n"]

    async def start(self) -> None:
        if self._server is not None:
            return

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        try:
            server = make_server(
                self.host, self._want_port, self._app, server_class=Server, handler_class=_QuietHandler
            )
        except OSError as exc:  # the port is taken, the address is not this host's, …
            raise ConfigError(
                f"cannot listen on {self.listen} for the metrics endpoint: {exc.strerror or exc}"
            ) from None
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="operator-endpoint", daemon=True
        )
        self._thread.start()
        if self.port_file is not None:
            self.port_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(self.port_file) + ".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.port_file)
        log.info("metrics.serving", host=self.host, port=self.port, role=self.metrics.role)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        await asyncio.to_thread(server.shutdown)  # waits for the serving loop's next poll
        server.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
            self._thread = None

    async def __aenter__(self) -> OperatorEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def component_metrics(cfg: Config, role: str, *, services: Iterable[str]) -> Metrics:
    """The metrics of a ``role`` process: real ones when its endpoint is configured, else
    :data:`NO_METRICS`. ``services``: the catalogue's codes (the only service labels)."""
    listen, _ = cfg.metrics.listen(role)
    return Metrics(role, cfg.region.code, services=services) if listen else NO_METRICS


def component_endpoint(
    cfg: Config, role: str, metrics: Metrics, readiness: Readiness, informational: Readiness = dict
) -> OperatorEndpoint | None:
    """The operator endpoint of a ``role`` process, or None when ``[metrics]`` configures none."""
    listen, port_file = cfg.metrics.listen(role)
    if not listen:
        return None
    return OperatorEndpoint(
        listen,
        metrics,
        readiness=readiness,
        port_file=cfg.path(port_file) if port_file else None,
        informational=informational,
    )


class ComponentMonitor:
    """The operator side of one gateway or connector: its gauges' sources, the ledger sampler and
    the endpoint. ``start()`` after the ledger is open (the endpoint answers ``/livez`` and a 503
    ``/readyz`` while the component itself is still starting); ``stop()`` after the component.

    Args:
        readiness: the component's own checks. When they hold no ``ledger`` check, the sampler's
            (its last read of the ledger succeeded) is added; a component that probes its ledger
            itself (the gateway, for gRPC health) keeps its own, so ``/readyz`` and gRPC health
            agree and the ledger has one probe per component.
        nats_connected: read at each scrape (the component's connection may come and go).
        informational: checks ``/readyz`` shows without requiring them (see :data:`NOT_REQUIRED`).
    """

    def __init__(
        self,
        cfg: Config,
        role: str,
        metrics: Metrics,
        *,
        ledger: Any,
        registry: Any,
        nats_connected: Callable[[], bool],
        readiness: Readiness,
        informational: Readiness = dict,
    ) -> None:
        self.metrics = metrics
        self.sampler = LedgerSampler(ledger, interval_s=cfg.metrics.ledger_sample_s)
        self._readiness = readiness
        metrics.observe(
            nats_connected=nats_connected,
            registry_version=lambda: int(registry.version),
            ledger_entries=lambda: self.sampler.size,
        )
        self.endpoint = component_endpoint(cfg, role, metrics, self.ready, informational)

    def ready(self) -> Mapping[str, bool]:
        """The component's readiness checks, with the sampler's ``ledger`` check unless it has its own."""
        checks = dict(self._readiness())
        if "ledger" not in checks:
            checks["ledger"] = self.sampler.ok
        return checks

    @property
    def port(self) -> int:
        """The endpoint's bound port (0 when there is none)."""
        return self.endpoint.port if self.endpoint is not None else 0

    async def start(self) -> None:
        if self.endpoint is None:
            return
        await self.sampler.start()
        await self.endpoint.start()

    async def stop(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.stop()
        await self.sampler.stop()
        self.metrics.shutdown()

    async def __aenter__(self) -> ComponentMonitor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Monitored(Protocol):
    """What :func:`monitor_component` reads of a gateway or connector."""

    @property
    def nc(self) -> Any: ...

    def readiness(self) -> Mapping[str, bool]: ...


@runtime_checkable
class Informative(Protocol):
    """A component with checks to show beside its readiness, not required for it (the gateway)."""

    def informational(self) -> Mapping[str, bool]: ...


def monitor_component(
    cfg: Config, role: str, metrics: Metrics, component: Monitored, *, ledger: Any, registry: Any
) -> ComponentMonitor:
    """The :class:`ComponentMonitor` of a gateway or connector: its NATS state and readiness as it
    reports them, its ledger and the live registry it follows."""
    return ComponentMonitor(
        cfg,
        role,
        metrics,
        ledger=ledger,
        registry=registry,
        nats_connected=lambda: component.nc is not None and bool(component.nc.is_connected),
        readiness=component.readiness,
        informational=component.informational if isinstance(component, Informative) else dict,
    )
