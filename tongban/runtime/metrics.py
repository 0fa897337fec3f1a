"""Metrics of one component: OpenTelemetry instruments, read by Prometheus.

Every gateway and connector has its own :class:`Metrics`: its own MeterProvider and its own
Prometheus registry, so several components in one process (the tests, ``tongban dev``) never share
or clash over instruments. Components take a ``Metrics`` and default to :data:`NO_METRICS`, whose
instruments do nothing. What is measured, and the vocabulary every label is cleaned to, is
:mod:`tongban.runtime.instruments`; the HTTP side is :mod:`tongban.runtime.operator_endpoint`.

The request path is cheap: one OpenTelemetry SDK call costs about 10 µs here, so only histograms
(per hop, and per request) go through the SDK on each request. Requests in flight and requests by
outcome are plain integers on the component's event loop, read by observable instruments at each
scrape; label sets are cleaned and built once per distinct value and reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from tongban.core.errors import TongbanError
from tongban.runtime.instruments import (
    BY_NAME,
    SECONDS_BUCKETS,
    UNSET,
    Instrument,
    TimedHop,
    clean_peer,
    clean_reason,
    clean_rpc,
)

_ATTR_CACHE_MAX: Final = 10_000
"""Distinct label values cleaned and kept per cache; beyond it, values are cleaned on every use
(and new series fold into one)."""

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
                explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
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
        self._hop_attrs = {hop: {**self._base, "hop": hop.value} for hop in TimedHop}
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

    def hop(self, hop: TimedHop) -> _HopTimer | _NoTimer:
        """``with metrics.hop(TimedHop.VALIDATE):`` times one hop (a fresh timer: hops overlap across
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
        clean = (self._rpc_label(rpc), self._service(svc), clean_peer(peer), clean_reason(outcome))
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
            label = clean_rpc(rpc)
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
                attrs = {**self._base, "peer_region": clean_peer(peer)}
            case ("sd", svc):
                attrs = {**self._base, "service_code": self._service(svc)}
            case ("dl", svc, reason):
                attrs = {**self._base, "service_code": self._service(svc), "reason": clean_reason(reason)}
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
