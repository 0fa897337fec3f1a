"""What a request arriving at a region's connector goes through before its back end sees it, on
either path: a Query on the RPC subject (:mod:`connectors.runtime`) or a Submit from the region's
inbound stream (:mod:`connectors.cases`).

:class:`Inbound` verifies the envelope (signature against the trust registry; kind, path,
recipient, subject, freshness and clock skew), opens and authorises the request (seal, header/body
agreement, the registry's access rule again, the form against the catalogue revision the sender
validated it against, the adapter), and names a request by the safe labels of its not yet verified
header in logs, spans, metrics and the ledger.
:class:`ReplayRecord` refuses a message id this region received before, on either path.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Final, NamedTuple

import structlog
from google.protobuf.message import DecodeError
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from connectors.adapters import Adapter
from connectors.errors import Refused
from connectors.state import ConnectorState
from tongban.core import envelope, messages, subjects
from tongban.core.catalogue import Catalogue, CatalogueItem, validate_request
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import Reason
from tongban.core.message_ids import is_message_id
from tongban.core.registry import Registry
from tongban.runtime import telemetry
from tongban.runtime.config import Config
from tongban.runtime.instruments import UNSET, TimedHop
from tongban.runtime.live_catalogue import CatalogueWatcher
from tongban.runtime.metrics import Metrics, RequestRecord
from tongban.runtime.node import RegionSecrets
from tongban.v1 import envelope_pb2, exchange_pb2

SEEN_IN_MEMORY: Final = 100_000
"""Recent query message ids kept in memory in front of the state store's replay record."""


class Labels(NamedTuple):
    """(message id, service, peer) of a header not yet verified, fit for logs, spans, metrics and
    the ledger: each value only if it is a well-formed id or a code we know, else ``?`` (or empty
    when there is no header at all)."""

    message_id: str
    service_code: str
    peer_region: str

    def name(self, digest: bytes) -> str:
        """The message id, or for a request without a usable one, a name made of its digest."""
        return self.message_id or "sha256:" + digest[:8].hex()


class Opened(NamedTuple):
    """A verified request opened and authorised: its sealed request, catalogue item and back end."""

    request: exchange_pb2.ServiceRequest
    item: CatalogueItem
    adapter: Adapter


class CatalogueRevisionUnknown(Refused):
    """The request was validated against a catalogue revision this region does not hold.

    ``newer``: the revision is newer than any held (it may be adopted soon: a durable request is
    redelivered later), else an earlier one no longer held (it never comes back).
    """

    def __init__(self, message: str, *, newer: bool) -> None:
        super().__init__(message, reason=Reason.CATALOGUE_REVISION_UNKNOWN)
        self.newer = newer


class Reception(NamedTuple):
    """The span and the metrics record of one request being received."""

    span: Span
    measured: RequestRecord


class Inbound:
    """The checks and the telemetry scope of requests arriving at one region's connector.

    ``registry`` may be replaced while running (the checks read it at each request); the live
    registry watcher updates the one it was given in place, and the catalogue watcher the live
    ``catalogue`` (set :attr:`catalogue_watch` to let a request naming a newer revision make it
    re-read its bucket).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        registry: Registry,
        secrets: RegionSecrets,
        catalogue: Catalogue,
        adapters: Mapping[str, Adapter],
        tracer: trace.Tracer,
        metrics: Metrics,
    ) -> None:
        self.cfg = cfg
        self.region = cfg.region.code
        self.registry = registry
        self.secrets = secrets
        self.catalogue = catalogue
        self.adapters = dict(adapters)
        self.tracer = tracer
        self.metrics = metrics
        self.replays = ReplayRecord(cfg)
        self.catalogue_watch: CatalogueWatcher | None = None

    def labels(self, header: envelope_pb2.Header | None) -> Labels:
        """The safe labels of a header not yet verified (see :class:`Labels`)."""
        if header is None:
            return Labels("", "", "")
        mid = header.message_id if is_message_id(header.message_id) else ""
        svc = header.service_code if header.service_code in self.catalogue else "?"
        peer = header.from_region if self.registry.region(header.from_region) is not None else "?"
        return Labels(mid, svc, peer)

    @contextlib.contextmanager
    def receive(
        self, header: envelope_pb2.Header | None, destination: str, rpc: str, transport_traceparent: str = ""
    ) -> Iterator[Reception]:
        """The scope of one received request: :meth:`receive_scope` and its metrics (``rpc``:
        ``Query`` or ``Submit``), labelled alike."""
        labels = self.labels(header)
        with (
            self.receive_scope(header, destination, transport_traceparent, labels=labels) as span,
            self.metrics.request(
                rpc, service_code=labels.service_code or UNSET, peer_region=labels.peer_region or UNSET
            ) as measured,
        ):
            yield Reception(span, measured)

    @contextlib.contextmanager
    def receive_scope(
        self,
        header: envelope_pb2.Header | None,
        destination: str,
        transport_traceparent: str = "",
        *,
        labels: Labels | None = None,
    ) -> Iterator[Span]:
        """Log context and CONSUMER span of one received request, continuing the sender's trace;
        labels only from well-formed values of the (not yet verified) header.

        The trace is the one the signed header names. A NATS ``traceparent`` header (set by a
        forwarder on the way) only refines the parent span, and only within that same trace: an
        unsigned header can never move a request into another trace. ``labels``: :meth:`labels` of
        ``header`` when the caller has them already.
        """
        signed = header.traceparent if header else ""
        trace_id = telemetry.trace_id_of(signed)
        refines = bool(trace_id) and telemetry.trace_id_of(transport_traceparent) == trace_id
        parent = telemetry.context_from_traceparent(transport_traceparent if refines else signed)
        mid, svc, peer = self.labels(header) if labels is None else labels
        with (
            structlog.contextvars.bound_contextvars(
                region=self.region, message_id=mid, service_code=svc, peer_region=peer
            ),
            self.tracer.start_as_current_span(
                "connector.receive",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    **telemetry.messaging_attributes(
                        destination, mid, peer, svc, operation="process", operation_type="process"
                    ),
                    "tongban.region": self.region,
                },
            ) as span,
        ):
            yield span

    def verify(self, subject: str, data: bytes, now: float, *, durable: bool) -> envelope.Verified:
        """Signature, kind, path, recipient, subject and time checks of a request envelope.

        A durable (Submit) request may have waited in streams for days while a region was down:
        its deadline bounds it, not the freshness window, and the processed-message record (not
        the in-memory replay cache) keeps it from being done twice.
        """
        limit = self.cfg.connector.max_envelope_bytes
        if len(data) > limit:  # before any parsing: a peer cannot make us decode or verify megabytes
            raise EnvelopeRejected(
                f"envelope of {len(data)} bytes is over the limit of {limit}",
                reason=Reason.ENVELOPE_TOO_LARGE,
            )
        with self.tracer.start_as_current_span("connector.verify"), self.metrics.hop(TimedHop.VERIFY):
            verified = envelope.verify(data, self.registry, now_s=now)
            h = verified.header
            if h.kind not in (envelope_pb2.MESSAGE_KIND_REQUEST, envelope_pb2.MESSAGE_KIND_CASE_REQUEST):
                raise EnvelopeRejected("not a request", reason=Reason.ENVELOPE_MALFORMED)
            # One kind never passes as the other: a case copied from a stream onto the RPC subject
            # would run the back end a second time, outside the case's processed record.
            wanted = envelope_pb2.MESSAGE_KIND_CASE_REQUEST if durable else envelope_pb2.MESSAGE_KIND_REQUEST
            if h.kind != wanted or bool(h.case_no) != durable:
                raise EnvelopeRejected(
                    "a case request arrives only from the inbound stream, a query only on the RPC subject",
                    reason=Reason.KIND_MISMATCH,
                )
            if h.to_region != self.region:
                raise EnvelopeRejected(
                    f"request is addressed to {h.to_region}, not {self.region}", reason=Reason.WRONG_RECIPIENT
                )
            expected = (subjects.request_subject if durable else subjects.rpc_subject)(
                self.region, h.service_code
            )
            if subject != expected:
                raise EnvelopeRejected(
                    "request arrived on a subject that does not match its header",
                    reason=Reason.SUBJECT_MISMATCH,
                )
            created = messages.seconds(h.created_at)
            window = self.cfg.connector
            if not durable and created < now - window.freshness_window_s:
                raise EnvelopeRejected("request is older than the freshness window", reason=Reason.STALE)
            if created > now + window.clock_skew_s:
                raise EnvelopeRejected(
                    "request is dated beyond the allowed clock skew", reason=Reason.FROM_THE_FUTURE
                )
            return verified

    async def catalogue_for(self, revision: int) -> Catalogue:
        """The catalogue of ``revision`` (the sender's, from the signed header): held, or found by
        re-reading the region's bucket once; 0 (a sender from before revisions) is the current one.

        Raises:
            CatalogueRevisionUnknown: neither holds it.
        """
        found = self.catalogue.at(revision)
        if found is None and self.catalogue_watch is not None:
            found = await self.catalogue_watch.find(revision)
        if found is None:
            held = self.catalogue.revisions()
            raise CatalogueRevisionUnknown(
                f"the request was validated against catalogue revision {revision}; this region holds "
                f"{', '.join(map(str, held))}",
                newer=revision > held[-1],
            )
        return found

    async def open(self, verified: envelope.Verified) -> Opened:
        """Open the seal, check header/body agreement, the registry's access rule (again: never
        trusting the sending gateway alone) and the form against the catalogue revision the sender
        validated it against; find the adapter."""
        h = verified.header
        with self.tracer.start_as_current_span("connector.open"), self.metrics.hop(TimedHop.OPEN):
            plaintext = messages.open_body(verified, self.secrets.sealing_for(h.recipient_key_id))
            try:
                request = exchange_pb2.RequestBody.FromString(plaintext).request
            except DecodeError as exc:
                raise EnvelopeRejected(
                    "sealed body does not decode", reason=Reason.ENVELOPE_MALFORMED
                ) from exc
            if request.service_code != h.service_code or request.target_region != h.to_region:
                raise Refused("sealed request does not match its header", reason=Reason.HEADER_BODY_MISMATCH)
        svc = h.service_code
        if not self.registry.provides(self.region, svc) or not self.registry.allows(
            h.from_region, h.origin_system, svc, self.region
        ):
            raise Refused(f"region {h.from_region} may not call {svc} here", reason=Reason.NOT_AUTHORISED)
        catalogue = await self.catalogue_for(h.catalogue_revision)
        item = validate_request(catalogue, request, max_field_length=self.cfg.gateway.max_field_length)
        adapter = self.adapters.get(svc)
        if adapter is None:
            raise Refused(f"no back end serves {svc} in {self.region}", reason=Reason.SERVICE_NOT_SERVED)
        return Opened(request, item, adapter)

    @contextlib.contextmanager
    def calling_backend(self, service_code: str) -> Iterator[Span]:
        """The CLIENT span and hop timer of one back-end call (the caller bounds it by the deadline)."""
        with (
            self.tracer.start_as_current_span(
                "connector.adapter", kind=SpanKind.CLIENT, attributes={"tongban.service_code": service_code}
            ) as span,
            self.metrics.hop(TimedHop.ADAPTER),
        ):
            yield span


class ReplayRecord:
    """The region's record of the request ids it received, on either path: a query carrying an id
    seen before (as a query or a case) is a replay, and so is a case whose id came as a query; the
    inbound stream's own redeliveries of a case pass (the processed record answers those).

    The state store remembers ids across restarts, replicas and paths; this process's memory of
    recent query ids answers the common replay without a write.
    """

    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self._seen: OrderedDict[str, float] = OrderedDict()

    async def first_query(self, message_id: str, now: float, state: ConnectorState | None) -> None:
        """Refuse a query id seen within the freshness window (older ones are refused as stale);
        ``state``: the region's store, None for a connector that keeps no durable state."""
        seen = self._seen
        while seen:
            oldest, expires = next(iter(seen.items()))
            if expires > now:
                break
            del seen[oldest]
        window = self._cfg.connector
        expires_s = now + window.freshness_window_s + window.clock_skew_s
        replayed = message_id in seen
        if not replayed and state is not None:
            replayed = not await state.first_sighting(message_id, expires_s=expires_s, now_s=now)
        if replayed:
            raise EnvelopeRejected("this message id was already received", reason=Reason.REPLAYED)
        seen[message_id] = expires_s
        if state is not None and len(seen) > SEEN_IN_MEMORY:
            seen.popitem(last=False)  # the store still remembers it

    async def first_case(self, header: envelope_pb2.Header, now: float, state: ConnectorState) -> None:
        """Refuse a case whose id came as a query; remember it until its deadline."""
        expires_s = max(messages.seconds(header.deadline), now) + self._cfg.connector.clock_skew_s
        if not await state.first_sighting(header.message_id, expires_s=expires_s, now_s=now, path="case"):
            raise EnvelopeRejected("this message id was already received as a query", reason=Reason.REPLAYED)
