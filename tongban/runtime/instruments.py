"""What a tongban process measures: its instruments, the timed hops of a request, and the label
vocabulary every label value is cleaned to.

This is the contract with dashboards and alerts (deploy/otel/, kept in step by
tests/ops/test_deploy_otel.py); :mod:`tongban.runtime.metrics` records against it.

Labels come from a fixed, low-cardinality vocabulary and never carry personal data or per-request
ids: role, region, RPC method, service code (one of the catalogue's codes), peer region (a 6-digit
region code), hop name and outcome (``OK`` or a reason code). Anything else is replaced by
``?``/``OTHER`` (:func:`clean_rpc`, :func:`clean_peer`, :func:`clean_reason`) before it reaches an
instrument, whatever a caller passes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from tongban.core.errors import is_reason_code


class TimedHop(enum.StrEnum):
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

SECONDS_BUCKETS: Final = (
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
"""Bucket boundaries of the duration histograms, in seconds."""

_REGION: Final = re.compile(r"^[0-9]{6}$")
_RPC: Final = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,47}$")
UNSET: Final = "-"
"""Label value of what is not known for a request (e.g. the service of one refused before it was
validated, or of an RPC that has none)."""


# fullmatch: ``$`` alone would also let a trailing newline through.
def clean_rpc(value: str) -> str:
    """An RPC method name as label ``rpc``: the name, or ``OTHER``."""
    return value if _RPC.fullmatch(value) else "OTHER"


def clean_peer(value: str) -> str:
    """A region code as label ``peer_region``: the code, ``-`` (not known) or ``?``."""
    return value if value in (UNSET, "?") or _REGION.fullmatch(value) else "?"


def clean_reason(value: str) -> str:
    """An outcome or reason as label ``outcome``/``reason``: a reason code, or ``OTHER``."""
    return value if is_reason_code(value) else "OTHER"
