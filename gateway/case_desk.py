"""``Exchange.Submit``, ``GetCase`` and ``WatchCase``: durable case delivery, the sending side.

A Submit is accepted once its case row (holding the sealed envelope: the outbox) and its SUBMITTED
ledger entry are committed; the gateway then publishes it to the region's own outbound stream and
returns the receipt. From there the region's forwarder carries it to the handling region's inbound
stream (store and forward: a handling region that is down gets it when it returns;
:mod:`gateway.outbox`, with the reconciler that closes the gaps a crash can leave), and the handling
region's signed status events come back on this region's event stream, where the gateways verify
them, record them in the ledger and the case table (:mod:`gateway.case_events`), and wake the
watchers (:mod:`gateway.case_watch`). ``GetCase`` and ``WatchCase`` read the case table.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator

import structlog
from grpc import StatusCode
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.case_events import CaseEvents
from gateway.case_watch import CaseWatchers
from gateway.cases import CaseRow, CaseStore, IdempotencyConflict
from gateway.exchange import ExchangeCore
from gateway.interceptors import Caller, require_caller
from gateway.outbox import Outbox
from ledger import Event
from tongban.core import subjects
from tongban.core.delivery import is_terminal, policy_for
from tongban.core.details import Detail
from tongban.core.errors import InvalidRequest, NotFound, Reason, TongbanError, Unavailable, Violation
from tongban.core.message_ids import is_case_no, new_case_no, new_message_id
from tongban.runtime import telemetry
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import label_request
from tongban.runtime.shutdown import Deadline
from tongban.runtime.streams import ensure_streams
from tongban.v1 import catalogue_pb2, exchange_pb2

log = structlog.get_logger("tongban.gateway")

_IDEM_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class IdempotencyKeyReused(TongbanError):
    """The idempotency key was already used for a different request."""

    reason = Reason.IDEMPOTENCY_KEY_REUSED


class CaseDesk:
    """The durable side of one gateway process: Submit, case reads and watches, and the parts that
    carry cases on (:class:`~gateway.outbox.Outbox`, :class:`~gateway.case_events.CaseEvents`).
    ``start()``/``stop()`` are idempotent."""

    def __init__(self, core: ExchangeCore, cases: CaseStore, nc: NATS) -> None:
        self.core = core
        self.cfg = core.cfg
        self.region = core.region
        self.ledger = core.ledger
        self.cases = cases
        self.nc = nc
        self.tracer: trace.Tracer = core.tracer
        self.watchers = CaseWatchers(core.region, nc)
        self.outbox = Outbox(core, cases, nc, self.watchers)
        self.events = CaseEvents(core, cases, self.watchers)
        self._started = False
        self._stopping = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        js = await ensure_streams(self.nc, self.region, replicas=self.cfg.nats.stream_replicas)
        self._started = True
        self._stopping.clear()
        await self.outbox.start(js)
        await self.events.start(js)
        await self.watchers.start()

    def begin_stop(self) -> None:
        """End the WatchCase streams (UNAVAILABLE, the client resumes elsewhere) and the background
        loops, so the gRPC server's grace period is not spent waiting on open watches."""
        self._stopping.set()
        self.watchers.wake_all()
        self.outbox.begin_stop()
        self.events.begin_stop()

    async def stop(self, deadline: Deadline | None = None) -> None:
        """End the watches and loops (their stop flag is set; cancelled if they overrun), stop the
        forwarder, unsubscribe; within ``deadline`` (by default ``[process] grace_s`` from now)."""
        if not self._started:
            return
        self._started = False
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        self.begin_stop()
        await asyncio.gather(self.events.stop(deadline), self.outbox.stop(deadline))
        await self.watchers.stop(deadline)

    async def reconcile(self, *, everything: bool = False) -> int:
        """One reconciler pass now (:meth:`gateway.outbox.Outbox.reconcile`); how many were (re-)sent."""
        return await self.outbox.reconcile(everything=everything)

    # -- Submit ------------------------------------------------------------------------------

    async def submit(self, request: exchange_pb2.SubmitRequest) -> exchange_pb2.SubmitResponse:
        caller = require_caller()
        req = request.request
        message_id = new_message_id()
        trace_id = telemetry.current_trace_id()
        structlog.contextvars.bind_contextvars(message_id=message_id)
        item = self.core.catalogue.get(req.service_code)

        def durable_checks() -> None:
            violations = []
            if item is not None and item.handling_mode == catalogue_pb2.HANDLING_MODE_QUERY:
                violations.append(
                    Violation("request.service_code", "a query item is not submitted as a case: use Query")
                )
            if req.idempotency_key and not _IDEM_KEY.match(req.idempotency_key):
                violations.append(
                    Violation("request.idempotency_key", "at most 128 characters of A-Z a-z 0-9 _ . : -")
                )
            if request.HasField("time_to_live"):
                ttl = request.time_to_live
                longest = self.cfg.gateway.max_submit_ttl_s
                if not (0 <= ttl.nanos < 1_000_000_000 and 1 <= ttl.seconds + ttl.nanos / 1e9 <= longest):
                    violations.append(
                        Violation("time_to_live", f"must be between 1 and {longest:.0f} seconds")
                    )
            if violations:
                raise InvalidRequest("request cannot be submitted", violations=violations)

        await self.core.validate(req, caller, message_id, trace_id, durable_checks)
        svc, to = req.service_code, req.target_region
        structlog.contextvars.bind_contextvars(service_code=svc, peer_region=to)
        label_request(svc, to)
        fingerprint = self.core.secrets.correlator.digest(
            req.SerializeToString(deterministic=True).hex(), label="submit"
        )
        idem_ref = self._idempotency_ref(req.idempotency_key)
        if idem_ref:
            existing = await self.cases.by_idempotency_key(caller.system_id, idem_ref)
            if existing is not None:
                return await self._replayed(existing, fingerprint, message_id, req, trace_id)
        await self.core.require_nats(message_id, req, trace_id)

        gw = self.cfg.gateway
        policy = policy_for(
            item,
            default_backoff_s=tuple(self.cfg.connector.backoff_s),
            default_max_attempts=self.cfg.connector.max_attempts,
            default_ttl_s=gw.submit_ttl_s,
        )
        asked = request.time_to_live.ToTimedelta().total_seconds() if request.HasField("time_to_live") else 0
        ttl = min(asked or policy.ttl_s, gw.max_submit_ttl_s)
        now = time.time()
        deadline = now + ttl
        case_no = new_case_no(self.region)
        with self.tracer.start_as_current_span(
            f"publish {subjects.outbound_wildcard(self.region)}",
            kind=SpanKind.PRODUCER,
            attributes=telemetry.messaging_attributes(
                subjects.outbound_subject(self.region, subjects.OutKind.REQUEST, to, svc, message_id),
                message_id,
                to,
                svc,
                operation="publish",
            ),
        ):
            return await self._accept(
                req, caller, message_id, idem_ref, fingerprint, trace_id, deadline, case_no, now
            )

    def _idempotency_ref(self, key: str) -> str:
        """What the case store keeps of a caller's idempotency key: a keyed digest, never the key
        (a caller may choose any value, an ID number included)."""
        return self.core.secrets.correlator.digest(key, label="idempotency-key") if key else ""

    async def _accept(
        self,
        req: exchange_pb2.ServiceRequest,
        caller: Caller,
        message_id: str,
        idem_ref: str,
        fingerprint: str,
        trace_id: str,
        deadline: float,
        case_no: str,
        now: float,
    ) -> exchange_pb2.SubmitResponse:
        """Seal, keep in the outbox, record, publish to the outbound stream (inside the PRODUCER
        span the envelope and the stream message name as their parent)."""
        svc, to = req.service_code, req.target_region
        with self.core.metrics.hop(TimedHop.SEAL_SIGN):
            built = self.core.seal_request(
                req, caller, message_id=message_id, deadline=deadline, case_no=case_no
            )
        row = CaseRow(
            case_no=case_no,
            message_id=message_id,
            caller=caller.system_id,
            idem_key=idem_ref,
            fingerprint=fingerprint,
            service=svc,
            to_region=to,
            trace_id=trace_id,
            request_digest=built.digest,
            envelope=built.data,
            out_subject=subjects.outbound_subject(self.region, subjects.OutKind.REQUEST, to, svc, message_id),
            deadline_ms=int(deadline * 1000),
            # The stream message names the PRODUCER span too: the forwarder's span hangs below it.
            traceparent=telemetry.current_traceparent(),
            accepted_ns=int(now * 1e9),
        )
        # The outbox row first: a crash before the ledger entry leaves a case the reconciler
        # completes (ledger entry, then sending); the other order could leave an entry for a
        # request that exists nowhere.
        try:
            stored, inserted = await self.cases.insert(row)
        except IdempotencyConflict:
            # Taken by a concurrent Submit since the look-up above: the same answer as there.
            existing = await self.cases.by_idempotency_key(caller.system_id, idem_ref)
            assert existing is not None
            return await self._replayed(existing, fingerprint, message_id, req, trace_id)
        if not inserted:
            return await self._replayed(stored, fingerprint, message_id, req, trace_id)
        try:
            await self.ledger.append(row.entry(Event.SUBMITTED, Detail(case_no=case_no)))
        except Exception as exc:
            # The case is accepted (its outbox row is on disk): an error now would invite a retry
            # under a new key, a second case. The reconciler completes the record and sends it.
            log.error("submit.ledger_deferred", case_no=case_no, error=type(exc).__name__)
            return row.receipt()
        await self.outbox.publish(row)
        log.info("submit.accepted", case_no=case_no)
        return row.receipt()

    async def _replayed(
        self,
        existing: CaseRow,
        fingerprint: str,
        message_id: str,
        req: exchange_pb2.ServiceRequest,
        trace_id: str,
    ) -> exchange_pb2.SubmitResponse:
        """The first receipt for a repeated key; a different request under it is refused (and recorded)."""
        if existing.fingerprint != fingerprint:
            error = IdempotencyKeyReused("this idempotency key was already used for a different request")
            await self.core.refuse(message_id, req, trace_id, error)
        structlog.contextvars.bind_contextvars(message_id=existing.message_id)
        log.info("submit.replayed", case_no=existing.case_no)
        return existing.receipt(replayed=True)

    # -- reads ---------------------------------------------------------------------------------

    async def _own_case(self, case_no: str) -> CaseRow:
        caller = require_caller()
        row = await self.cases.get(case_no) if is_case_no(case_no) else None
        if row is None or row.caller != caller.system_id:
            # Another system's case is reported as missing: no probing for case numbers.
            raise NotFound("no such case", reason=Reason.CASE_NOT_FOUND)
        return row

    async def get_case(self, case_no: str) -> exchange_pb2.Case:
        row = await self._own_case(case_no)
        events = await self.cases.events(case_no)
        return _case_message(row, events)

    async def watch_case(self, case_no: str, after: int) -> AsyncIterator[exchange_pb2.CaseEvent]:
        row = await self._own_case(case_no)
        last = after
        while True:
            wake = self.watchers.register(case_no)
            try:
                for ev in await self.cases.events(case_no, last):
                    if ev.sequence != last + 1:
                        break  # a later event arrived first: wait for the missing one
                    yield ev
                    last = ev.sequence
                row = await self.cases.get(case_no) or row
                if row.last_seq <= last and is_terminal(row.status, row.delivery):
                    if row.last_seq == 0:
                        # Failed before the handling region saw it (expired in our outbox).
                        yield _local_failure(row)
                    return
                if self._stopping.is_set():
                    raise Unavailable("the gateway is shutting down", reason=Reason.SHUTTING_DOWN)
                with contextlib.suppress(TimeoutError):
                    # Wake-ups come from this process or, through NATS, from the region's other
                    # gateways; the timeout is a safety net for a nudge lost in a reconnect.
                    async with asyncio.timeout(5.0):
                        await wake.wait()
            finally:
                self.watchers.unregister(case_no, wake)


def _local_failure(row: CaseRow) -> exchange_pb2.CaseEvent:
    ev = exchange_pb2.CaseEvent(case_no=row.case_no, sequence=0, delivery_state=row.delivery)  # type: ignore[arg-type]
    ev.occurred_at.FromNanoseconds(row.updated_ns)
    if row.delivery == exchange_pb2.DELIVERY_STATE_EXPIRED:
        ev.problem.CopyFrom(
            exchange_pb2.Problem(
                reason="EXPIRED",
                message="the request was not delivered before its deadline and will not be processed",
                code=StatusCode.DEADLINE_EXCEEDED.value[0],
            )
        )
    return ev


def _case_message(row: CaseRow, events: list[exchange_pb2.CaseEvent]) -> exchange_pb2.Case:
    case = exchange_pb2.Case(
        case_no=row.case_no,
        message_id=row.message_id,
        service_code=row.service,
        handling_region=row.to_region,
        status=row.status,  # type: ignore[arg-type]
        local_code=row.local_code,
        local_system=row.local_system,
        delivery_state=row.delivery,  # type: ignore[arg-type]
        last_sequence=row.last_seq,
        trace_id=row.trace_id,
    )
    case.accepted_at.FromNanoseconds(row.accepted_ns)
    case.updated_at.FromNanoseconds(row.updated_ns)
    case.events.extend(events)
    return case
