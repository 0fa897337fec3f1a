"""The connector: serves its region's RPC subject and answers through local adapters.

For each request (DESIGN.md "The flow of one request", steps 4-5) it verifies the signature against
the trust registry, checks that it is the recipient, that the request is fresh and not past its
deadline, opens the seal, checks the registry's access rules again (never trusting the sending
gateway alone), validates the form against the catalogue, calls the adapter within the deadline,
keeps only the declared response fields, seals and signs the answer for the sender, commits
RECEIVED+PROCESSED to the ledger and only then replies. Anything refused is answered with a signed
Problem and a REJECTED ledger entry.

Replicas of one region subscribe in one queue group, so NATS spreads requests across them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import Status
from opentelemetry.trace import StatusCode as SpanStatus

from connectors.adapters import Adapter, AdapterFailure, StatusUpdate, adapter_request
from connectors.answers import answer_header, entry, receipt, request_trace_id, seal_to_recipient
from connectors.backend_api import BackendApi
from connectors.cases import CaseWorker
from connectors.declared import AdapterSet
from connectors.errors import Refused
from connectors.inbound import Inbound, Labels, Opened
from connectors.state import ConnectorState, OutEvent
from ledger import Event
from tongban.core import envelope, messages, subjects
from tongban.core.catalogue import response_projection
from tongban.core.details import OK, Detail
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import NotFound, Reason, TongbanError, Unavailable
from tongban.core.message_ids import new_message_id
from tongban.core.registry import Registry
from tongban.runtime import telemetry
from tongban.runtime.component import ComponentParts
from tongban.runtime.instruments import TimedHop
from tongban.runtime.live_catalogue import CatalogueWatcher, catalogue_watcher
from tongban.runtime.live_registry import RegistryWatcher
from tongban.runtime.metrics import set_outcome
from tongban.runtime.natsroles import NatsRole
from tongban.runtime.node import connect_nats, registry_watcher
from tongban.runtime.records import draft
from tongban.runtime.shutdown import Deadline, finish_tasks, within
from tongban.runtime.status_codes import problem, problem_of
from tongban.v1 import envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.connector")


class Connector:
    """One connector process of a region. ``async with Connector(...)`` starts and stops it.

    It answers Query on the region's RPC subject and, unless ``durable=False``, takes Submit
    requests from the region's inbound stream (:class:`connectors.cases.CaseWorker`).

    Args:
        parts: what the region's process loaded (config, registry, keys, catalogue, ledger,
            tracer, metrics).
        adapters: the back ends, by catalogue item code.
        nc: a NATS connection to use (and leave open); by default the connector makes its own.
        durable: take Submit requests too (needs the state store); False: Query only.
        backend_api: the region's back-end API (:class:`connectors.backend_api.BackendApi`, whose
            ``adapter()`` serves the items the region's case system handles); by default one of
            its own when ``[backend_api] listen`` or ``webhook_url`` is set. Durable only.
    """

    def __init__(
        self,
        parts: ComponentParts,
        *,
        adapters: Mapping[str, Adapter],
        nc: NATS | None = None,
        durable: bool = True,
        backend_api: BackendApi | None = None,
    ) -> None:
        cfg = parts.cfg
        self.parts = parts
        self.cfg = cfg
        self.region = cfg.region.code
        self.secrets = parts.secrets
        self.ledger = parts.ledger
        self.nc = nc
        self.trust: RegistryWatcher | None = None
        self.catalogue_watch: CatalogueWatcher | None = None
        self._owns_nc = nc is None
        self.tracer = parts.tracer
        self.metrics = parts.metrics
        self.inbound = Inbound(
            cfg,
            registry=parts.registry,
            secrets=parts.secrets,
            catalogue=parts.catalogue,
            adapters=adapters,
            tracer=parts.tracer,
            metrics=parts.metrics,
        )
        self._sem = asyncio.Semaphore(cfg.connector.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._subs: list[Any] = []
        self._peer_in_flight: dict[str, int] = {}
        self._started = False
        self.handled = 0
        self.durable = durable
        self.state: ConnectorState | None = None
        self.cases: CaseWorker | None = None
        self.adapters = adapters
        if backend_api is None and durable and BackendApi.configured(cfg):
            backend_api = BackendApi.from_parts(parts)
        self.backend_api = backend_api if durable else None

    @property
    def registry(self) -> Registry:
        """The trust registry requests are checked against (replaceable while running)."""
        return self.inbound.registry

    @registry.setter
    def registry(self, registry: Registry) -> None:
        self.inbound.registry = registry

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (unless given a connection) and subscribe. Idempotent."""
        if self._started:
            return
        self._started = True  # from here on, stop() undoes whatever did start
        try:
            if self.nc is None:
                self.nc = await connect_nats(
                    self.cfg, role=NatsRole.CONNECTOR, name=f"tongban-connector-{self.region}"
                )
            if self.durable:
                # The replay record is open before the first request can arrive.
                self.state = ConnectorState(self.cfg.path(self.cfg.connector.state_store))
                await self.state.open()
            if self.cfg.registry.watch and self.trust is None:
                self.trust = registry_watcher(self.cfg, self.registry, self.nc, self.secrets)
                await self.trust.start()
            if self.cfg.catalogue.watch and self.catalogue_watch is None:
                self.catalogue_watch = catalogue_watcher(self.cfg, self.inbound.catalogue, self.nc)
                await self.catalogue_watch.start()
                self.inbound.catalogue_watch = self.catalogue_watch
            queue = subjects.connector_queue(self.region)
            self._subs.append(
                await self.nc.subscribe(subjects.rpc_wildcard(self.region), queue=queue, cb=self._on_msg)
            )
            self._subs.append(
                await self.nc.subscribe(subjects.ping_subject(self.region), queue=queue, cb=self._on_ping)
            )
            await self.nc.flush(timeout=max(1, round(self.cfg.nats.connect_timeout_s)))
            if self.backend_api is not None:
                # Open before the case worker: its first request may be for the case desk.
                await self.backend_api.start(self._report_status)
            if self.state is not None:
                self.cases = CaseWorker(self.inbound, ledger=self.ledger, state=self.state, nc=self.nc)
                await self.cases.start()
        except BaseException:
            await self.stop()
            raise
        log.info("connector.started", region=self.region, subject=subjects.rpc_wildcard(self.region))

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Stop taking requests, finish the in-flight ones, close; idempotent. Bounded by
        ``deadline`` (by default ``[process] grace_s`` from now): in-flight requests get ``[nats]
        drain_timeout_s`` and at most half of what is left, then are cancelled (a Query's caller
        gets its deadline error from the gateway, a case is redelivered), and every later step
        has its share."""
        if not self._started:
            return
        self._started = False
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        for sub in self._subs:
            # drain: stop new deliveries but hand every message already received to _on_msg.
            await within(sub.drain(), timeout=deadline.budget(1.0), what="connector subscription")
        self._subs.clear()
        if self.cases is not None:
            await within(self.cases.stop(deadline), timeout=deadline.remaining(), what="case worker")
            self.cases = None
        if self.backend_api is not None:
            # After the case worker (its cases in flight may still store deliveries), before the
            # state store (a status report in flight uses it).
            await within(self.backend_api.stop(deadline), timeout=deadline.budget(8.0), what="backend API")
        await finish_tasks(
            self._tasks,
            timeout=min(self.cfg.nats.drain_timeout_s, deadline.remaining() / 2),
            what="queries in flight",
        )
        # In-flight requests are done: only now close what they use.
        if isinstance(self.adapters, AdapterSet):
            await within(self.adapters.aclose(), timeout=deadline.budget(5.0), what="back ends")
        if self.state is not None:
            await within(self.state.close(), timeout=deadline.budget(2.0), what="connector state")
            self.state = None
        if self.trust is not None:
            await self.trust.stop(timeout=deadline.budget(2.0))
            self.trust = None
        if self.catalogue_watch is not None:
            self.inbound.catalogue_watch = None
            await self.catalogue_watch.stop(timeout=deadline.budget(2.0))
            self.catalogue_watch = None
        if self._owns_nc and self.nc is not None:
            nc, self.nc = self.nc, None
            if (
                not await within(
                    nc.drain(), timeout=deadline.budget(self.cfg.nats.drain_timeout_s), what="nats drain"
                )
                and not nc.is_closed
            ):
                await within(nc.close(), timeout=deadline.budget(1.0), what="nats close")
        log.info(
            "connector.stopped", region=self.region, handled=self.handled, overran=deadline.remaining() == 0
        )

    def readiness(self) -> dict[str, bool]:
        """What must hold for this connector to take requests; all True means ready (``/readyz``)."""
        return {
            "started": self._started and bool(self._subs),
            "nats": self.nc is not None and self.nc.is_connected,
            "registry": self.secrets.signing_key_usable(),
        }

    async def _report_status(
        self, case_no: str, updates: Sequence[StatusUpdate], *, report_id: str = ""
    ) -> list[OutEvent]:
        """Later statuses from the back-end API, through the case worker while it runs."""
        if self.cases is None:
            raise Unavailable("the connector's case worker is not running")
        return await self.cases.report_status(case_no, updates, report_id=report_id)

    async def __aenter__(self) -> Connector:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_ping(self, msg: Msg) -> None:
        if msg.reply and self.registry.region(subjects.inbox_region(msg.reply) or "") is not None:
            await msg.respond(self.region.encode())

    async def _on_msg(self, msg: Msg) -> None:
        # nats-py runs a subscription's callbacks one at a time; hand each request to its own task
        # so slow back ends do not block the subscription, bounded by max_in_flight.
        await self._sem.acquire()
        task = asyncio.create_task(self._run(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply_allowed(self, msg: Msg, header: envelope_pb2.Header | None) -> bool:
        """Answers go only to a registered region's inbox — the inbox of the region the request
        claims to come from, when its header parses: a peer cannot make this connector publish into
        a third region's subjects (the hub lets every region publish to the others' inbound
        subjects). A request nobody can be answered on is not worth a back-end call either."""
        sender = subjects.inbox_region(msg.reply or "")
        if sender is None or self.registry.region(sender) is None:
            return False
        return header is None or header.from_region == sender

    async def _run(self, msg: Msg) -> None:
        try:
            header = envelope.header_or_none(msg.data)  # once: for the reply check and the labels
            if not self._reply_allowed(msg, header):
                log.warning(
                    "request.reply_subject_refused",
                    region=self.region,
                    reply_region=subjects.inbox_region(msg.reply or ""),
                )
                return
            reply = await self.handle(msg.subject, msg.data, header=header)
            await msg.respond(reply)
        except Exception as exc:
            # Only the type: an exception's text may quote request data.
            log.error("connector.unhandled", error=type(exc).__name__)
        finally:
            self._sem.release()

    async def handle(
        self, subject: str, data: bytes, *, header: envelope_pb2.Header | Literal[False] | None = False
    ) -> bytes:
        """Answer one request envelope; returns the reply envelope (response or rejection).
        ``header``: the unverified header if the caller parsed it already (for labels only)."""
        received_ns = time.time_ns()
        now = received_ns / 1e9
        if header is False:
            header = envelope.header_or_none(data)
        with self.inbound.receive(header, subjects.rpc_wildcard(self.region), "Query") as (span, measured):
            try:
                return await self._process(subject, data, now, received_ns)
            except TongbanError as exc:
                measured.outcome = exc.reason
                span.set_status(Status(SpanStatus.ERROR, exc.reason))
                return await self._refuse(data, header, exc)
            except Exception as exc:
                # A bug, or the ledger failing: still answer, with nothing of the request in the log.
                measured.outcome = "INTERNAL"
                span.set_status(Status(SpanStatus.ERROR, "INTERNAL"))
                log.error("request.internal_error", error=type(exc).__name__)
                return await self._refuse(data, header, TongbanError("internal error at the provider"))

    async def _process(self, subject: str, data: bytes, now: float, received_ns: int) -> bytes:
        verified = self.inbound.verify(subject, data, now, durable=False)
        h = verified.header
        deadline = messages.seconds(h.deadline)
        if deadline <= now:
            raise EnvelopeRejected("request deadline has passed", reason=Reason.EXPIRED)
        await self.inbound.replays.first_query(h.message_id, now, self.state)
        opened = await self.inbound.open(verified)
        peer = h.from_region
        self._take_peer_slot(peer)
        try:
            return await self._answer(verified, opened, now, received_ns)
        finally:
            self._peer_in_flight[peer] -= 1

    def _take_peer_slot(self, peer: str) -> None:
        """One region may hold at most ``max_in_flight_per_region`` of this connector's requests:
        a region flooding valid requests at a slow back end must not take every slot from the
        others. Over the bound it gets a signed refusal at once (it may retry), before its request
        reaches the back end or the ledger's RECEIVED."""
        limit = self.cfg.connector.max_in_flight_per_region
        taken = self._peer_in_flight.get(peer, 0)
        if taken >= limit:
            raise Refused(
                f"region {peer} has {taken} requests in progress here (at most {limit}): retry shortly",
                reason=Reason.PEER_BUSY,
            )
        self._peer_in_flight[peer] = taken + 1

    async def _answer(
        self, verified: envelope.Verified, opened: Opened, now: float, received_ns: int
    ) -> bytes:
        """Record RECEIVED, call the back end within the deadline, seal and sign the answer, record
        PROCESSED; the reply envelope."""
        h = verified.header
        deadline = messages.seconds(h.deadline)
        svc = h.service_code
        request, item, adapter = opened

        allowed = response_projection(item, tuple(request.governance.declared_fields))
        trace_id = request_trace_id(h)
        # Every access to the back end is on record before it happens.
        [received] = await self.ledger.append(
            entry(Event.RECEIVED, h, digest=verified.digest, trace_id=trace_id, time_ns=received_ns)
        )
        body = exchange_pb2.ResponseBody()
        outcome: str = OK
        with self.inbound.calling_backend(svc) as sp:
            try:
                # Keep a little of the deadline for sealing, the ledger and the reply.
                remaining = deadline - time.time()
                async with asyncio.timeout(max(remaining - min(0.05, remaining * 0.1), 0.001)):
                    answer = await adapter.call(adapter_request(h, request))
                body.data.update({k: v for k, v in answer.items() if k in allowed})
            except (NotFound, AdapterFailure) as exc:
                # Fixed texts: a back end's own message may quote the applicant.
                outcome = exc.reason
                text = _ADAPTER_MESSAGES.get(exc.reason, "the back end failed")
                body.problem.CopyFrom(problem_of(exc, message=text))
            except TimeoutError:
                outcome = Reason.BACKEND_TIMEOUT
                body.problem.CopyFrom(
                    problem(Reason.BACKEND_TIMEOUT, "back end did not answer within the deadline")
                )
            except Exception as exc:
                outcome = Reason.INTERNAL
                log.error("adapter.failed", error=type(exc).__name__)
                body.problem.CopyFrom(
                    problem(Reason.BACKEND_ERROR, "the back end failed; the provider logged it")
                )
            sp.set_attribute("tongban.outcome", outcome)
        set_outcome(outcome)
        body.responded_at.CopyFrom(messages.timestamp(time.time()))

        with self.tracer.start_as_current_span("connector.reply"), self.metrics.hop(TimedHop.REPLY):
            reply_header = answer_header(
                h,
                region=self.region,
                message_id=new_message_id(),
                kind=envelope_pb2.MESSAGE_KIND_RESPONSE,
                content_type=messages.RESPONSE_CONTENT_TYPE,
                request_digest=verified.digest,
                traceparent=telemetry.current_traceparent(),
                deadline=h.deadline,
                receipt=receipt(self.region, received, verified, self.secrets.signing),
            )
            built = seal_to_recipient(
                reply_header, body.SerializeToString(), registry=self.registry, signer=self.secrets.signing
            )
            await self.ledger.append(
                entry(
                    Event.PROCESSED,
                    h,
                    digest=built.digest,
                    trace_id=trace_id,
                    detail=Detail(outcome=outcome),
                )
            )
        self.handled += 1
        log.info("request.processed", outcome=outcome, ms=round((time.time() - now) * 1000, 2))
        return built.data

    async def _refuse(self, data: bytes, header: envelope_pb2.Header | None, exc: TongbanError) -> bytes:
        """Record REJECTED and answer with a signed Problem naming the reason."""
        refusal = problem_of(exc)
        req_digest = envelope.digest(data)
        # Header values are unverified here: only well-formed ids and codes we know are recorded.
        labels: Labels = self.inbound.labels(header)
        message_id = labels.name(req_digest)
        trace_id = telemetry.trace_id_of(header.traceparent) if header else ""  # validated format
        reply_header = envelope_pb2.Header(
            message_id=new_message_id(),
            service_code=labels.service_code,
            from_region=self.region,
            to_region=labels.peer_region,
            created_at=messages.timestamp(time.time()),
            traceparent=telemetry.current_traceparent(),
            in_reply_to=message_id,
            request_digest=req_digest,
        )
        built = messages.build_problem(reply_header, refusal, signer=self.secrets.signing)
        # Ledger fields come from an unverified header here: keep them to safe, bounded tokens.
        await self.ledger.append(
            draft(
                Event.REJECTED,
                message_id,
                peer=labels.peer_region,
                service=labels.service_code,
                digest=req_digest,
                trace_id=trace_id,
                detail=Detail(outcome=exc.reason),
            )
        )
        log.warning("request.rejected", reason=exc.reason)
        return built.data


_ADAPTER_MESSAGES: dict[str, str] = {
    Reason.NOT_FOUND: "the back end has no record for this applicant",
    Reason.BACKEND_FAILURE: "the back end is unavailable",
    Reason.BACKEND_TIMEOUT: "the back end did not answer within the deadline",
    Reason.BACKEND_BUSY: "the back end is busy; try again later",
    Reason.BACKEND_REFUSED: "the back end refused the request",
    Reason.BACKEND_CIRCUIT_OPEN: "the back end is failing; calls are paused until it recovers",
    Reason.SERVICE_NOT_SERVED: "this item is not answered by query here",
}
"""The partner's text per outcome (fixed: a back end's own message may quote the applicant)."""
