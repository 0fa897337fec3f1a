"""``Exchange.Submit``, ``GetCase`` and ``WatchCase``: durable case delivery, the sending side.

A Submit is accepted once its case row (holding the sealed envelope: the outbox) and its SUBMITTED
ledger entry are committed; the gateway then publishes it to the region's own outbound stream and
returns the receipt. From there the region's forwarder carries it to the handling region's inbound
stream (store and forward: a handling region that is down gets it when it returns), and the
handling region's signed status events come back on this region's event stream, where the gateways
verify them, record them in the ledger and the case table, and wake the watchers.

The reconciler closes the gaps a crash can leave: on start and periodically it re-publishes every
accepted case the outbound stream never acknowledged, and every case long accepted that is neither
forwarded nor still in the outbound stream. Re-sending is always safe: the outbound and inbound
streams drop duplicates by ``Nats-Msg-Id`` and the connector keeps its own record of what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from google.protobuf.message import DecodeError
from grpc import StatusCode
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.cases import CaseRow, CaseStore, IdempotencyConflict
from gateway.exchange import ExchangeCore
from gateway.interceptors import Caller, current_caller
from ledger import EntryDraft, Event
from tongban.core import envelope, messages, subjects
from tongban.core.delivery import is_terminal, policy_for
from tongban.core.details import Detail, Source
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import (
    InvalidRequest,
    NotFound,
    Reason,
    TongbanError,
    Unauthenticated,
    Unavailable,
    Violation,
)
from tongban.core.message_ids import is_case_no, is_message_id, new_case_no, new_message_id
from tongban.runtime import telemetry
from tongban.runtime.forwarder import Forwarder
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import label_request
from tongban.runtime.records import draft
from tongban.runtime.shutdown import Deadline, finish_tasks, within
from tongban.runtime.streams import durable_pull, ensure_streams
from tongban.v1 import catalogue_pb2, envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.gateway")

_LOOP_STOP_S = 3.0
"""How long a stop waits for the event consumer's batch in hand and a reconciler pass to end."""
_IDEM_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")

_FAILURE_EVENT = {
    exchange_pb2.DELIVERY_STATE_EXPIRED: Event.EXPIRED,
    exchange_pb2.DELIVERY_STATE_DEAD_LETTERED: Event.DEAD_LETTERED,
    exchange_pb2.DELIVERY_STATE_REJECTED: Event.REJECTED,
}

_TRANSIENT = (
    nats.errors.TimeoutError,
    TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)


class IdempotencyKeyReused(TongbanError):
    """The idempotency key was already used for a different request."""

    reason = Reason.IDEMPOTENCY_KEY_REUSED


@dataclass
class _Watchers:
    """Per-case wake-up events of the WatchCase streams this process serves."""

    by_case: dict[str, set[asyncio.Event]] = field(default_factory=dict)

    def register(self, case_no: str) -> asyncio.Event:
        ev = asyncio.Event()
        self.by_case.setdefault(case_no, set()).add(ev)
        return ev

    def unregister(self, case_no: str, ev: asyncio.Event) -> None:
        group = self.by_case.get(case_no)
        if group is not None:
            group.discard(ev)
            if not group:
                del self.by_case[case_no]

    def wake(self, case_no: str) -> None:
        for ev in self.by_case.get(case_no, ()):
            ev.set()


class CaseDesk:
    """The durable side of one gateway process: Submit, case reads and watches, the event consumer,
    the request forwarder and the reconciler. ``start()``/``stop()`` are idempotent."""

    def __init__(self, core: ExchangeCore, cases: CaseStore, nc: NATS) -> None:
        self.core = core
        self.cfg = core.cfg
        self.region = core.region
        self.ledger = core.ledger
        self.cases = cases
        self.nc = nc
        self.tracer: trace.Tracer = core.tracer
        self.watchers = _Watchers()
        self._js: JetStreamContext | None = None
        self._forwarder: Forwarder | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._notify_sub: object | None = None
        self._stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.resent = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._js is not None:
            return
        gw = self.cfg.gateway
        js = await ensure_streams(self.nc, self.region, replicas=self.cfg.nats.stream_replicas)
        self._js = js
        self._stopping.clear()
        self._forwarder = Forwarder(
            self.nc,
            self.region,
            subjects.OutKind.REQUEST,
            on_forwarded=self._on_forwarded,
            on_expired=self._on_expired_in_outbox,
            ack_wait_s=gw.ack_wait_s,
            retry_max_s=gw.forward_retry_max_s,
            publish_timeout_s=gw.publish_timeout_s,
            metrics=self.core.metrics,
        )
        await self._forwarder.start()
        stream = subjects.event_stream_name(self.region)
        events = await durable_pull(
            js,
            stream,
            subjects.Durable.GATEWAY_EVENTS,
            filter_subject=subjects.event_wildcard(self.region),
            ack_wait_s=gw.ack_wait_s,
            max_ack_pending=1024,
        )

        async def nudge(msg: Msg) -> None:
            self.watchers.wake(msg.data.decode(errors="replace"))

        self._notify_sub = await self.nc.subscribe(subjects.case_notify_subject(self.region), cb=nudge)
        self._tasks = [
            asyncio.create_task(self._consume_events(events), name="case-events"),
            asyncio.create_task(self._reconcile_loop(), name="reconciler"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._loop_done)

    def begin_stop(self) -> None:
        """End the WatchCase streams (UNAVAILABLE, the client resumes elsewhere) and the background
        loops, so the gRPC server's grace period is not spent waiting on open watches."""
        self._stopping.set()
        for ev_set in self.watchers.by_case.values():
            for ev in ev_set:
                ev.set()

    async def stop(self, deadline: Deadline | None = None) -> None:
        """End the watches and loops (their stop flag is set; cancelled if they overrun), stop the
        forwarder, unsubscribe; within ``deadline`` (by default ``[process] grace_s`` from now)."""
        if self._js is None:
            return
        self._js = None
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        self.begin_stop()
        steps: list[Coroutine[Any, Any, object]] = [
            finish_tasks(
                (*self._tasks, *self._background), timeout=deadline.budget(_LOOP_STOP_S), what="case desk"
            )
        ]
        if self._forwarder is not None:
            steps.append(self._forwarder.stop(deadline))
        await asyncio.gather(*steps)
        self._tasks.clear()
        if self._notify_sub is not None:
            sub, self._notify_sub = self._notify_sub, None
            await within(
                sub.unsubscribe(),  # type: ignore[attr-defined]
                timeout=deadline.budget(1.0),
                what="case notifications",
            )

    # -- Submit ------------------------------------------------------------------------------

    def _caller(self) -> Caller:
        caller = current_caller.get()
        if caller is None:
            raise Unauthenticated("caller is not authenticated")
        return caller

    async def submit(self, request: exchange_pb2.SubmitRequest) -> exchange_pb2.SubmitResponse:
        caller = self._caller()
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
                raise InvalidRequest("request cannot be submitted", violations)

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
        if not self.nc.is_connected:
            exc = Unavailable("this region's NATS connection is down", reason=Reason.NATS_UNAVAILABLE)
            await self.core.record_rejected(message_id, req, trace_id, exc)
            raise exc

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
            await self.ledger.append(
                draft(
                    Event.SUBMITTED,
                    message_id,
                    peer=to,
                    service=svc,
                    digest=built.digest,
                    trace_id=trace_id,
                    detail=Detail(case_no=case_no),
                )
            )
        except Exception as exc:
            # The case is accepted (its outbox row is on disk): an error now would invite a retry
            # under a new key, a second case. The reconciler completes the record and sends it.
            log.error("submit.ledger_deferred", case_no=case_no, error=type(exc).__name__)
            return row.receipt()
        await self._publish(row)
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
            exc = IdempotencyKeyReused("this idempotency key was already used for a different request")
            await self.core.record_rejected(message_id, req, trace_id, exc)
            raise exc
        structlog.contextvars.bind_contextvars(message_id=existing.message_id)
        log.info("submit.replayed", case_no=existing.case_no)
        return existing.receipt(replayed=True)

    async def _publish(self, row: CaseRow, *, msg_id: str | None = None) -> bool:
        """Put the request into the outbound stream; False if the stream did not acknowledge it
        (the case stays in the outbox for the reconciler)."""
        assert self._js is not None or self._stopping.is_set()
        if self._js is None:
            return False
        headers: dict[str, str] = {
            subjects.Header.MSG_ID: msg_id or row.message_id,
            subjects.Header.MESSAGE_ID: row.message_id,
            subjects.Header.DEADLINE_MS: str(row.deadline_ms),
        }
        if row.traceparent:
            headers[subjects.Header.TRACEPARENT] = row.traceparent
        try:
            with self.core.metrics.hop(TimedHop.PUBLISH):
                await self._js.publish(
                    row.out_subject, row.envelope, timeout=self.cfg.gateway.publish_timeout_s, headers=headers
                )
        except (*_TRANSIENT, nats.js.errors.APIError) as exc:
            log.warning("submit.outbox_pending", message_id=row.message_id, error=type(exc).__name__)
            return False
        # Off the caller's path: the flag only spares the reconciler a look into the stream, and a
        # lost flag makes it publish again under the same Nats-Msg-Id, which the stream drops.
        task = asyncio.create_task(self.cases.mark_published(row.message_id))
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return True

    def _background_done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("casedesk.background_failed", error=type(task.exception()).__name__)

    def _loop_done(self, task: asyncio.Task[None]) -> None:
        """The event consumer and the reconciler catch their errors; one that ends anyway, outside a
        stop, is a bug the operator must see."""
        if not self._stopping.is_set():
            error = None if task.cancelled() else task.exception()
            log.error(
                "casedesk.loop_ended", loop=task.get_name(), error=type(error).__name__ if error else None
            )

    # -- forwarder callbacks ------------------------------------------------------------------

    async def _on_forwarded(self, message_id: str, to: str, msg: Msg) -> None:
        row = await self.cases.by_message_id(message_id)
        if row is None:
            return
        # The record, not the case's state, decides: the handling region's events may already
        # have moved the case on by the time this acknowledgement is handled.
        if not any(e.event == Event.PUBLISHED for e in await self.ledger.by_message_id(message_id)):
            await self.ledger.append(
                _case_entry(Event.PUBLISHED, row, Detail(stream=subjects.inbound_stream_name(to)))
            )
        if await self.cases.set_delivery(message_id, exchange_pb2.DELIVERY_STATE_FORWARDED) is not None:
            await self._changed(row.case_no)

    async def _on_expired_in_outbox(self, message_id: str, to: str, msg: Msg) -> None:
        await self._expire(message_id)

    async def _expire(self, message_id: str) -> None:
        row = await self.cases.by_message_id(message_id)
        if row is None or row.delivery >= exchange_pb2.DELIVERY_STATE_FORWARDED:
            return
        await self.ledger.append(
            _case_entry(Event.EXPIRED, row, Detail(outcome=Reason.NOT_DELIVERED_BEFORE_DEADLINE), digest=b"")
        )
        await self.cases.set_delivery(message_id, exchange_pb2.DELIVERY_STATE_EXPIRED)
        await self._changed(row.case_no)

    async def _changed(self, case_no: str) -> None:
        self.watchers.wake(case_no)
        with contextlib.suppress(Exception):
            await self.nc.publish(subjects.case_notify_subject(self.region), case_no.encode())

    # -- status events from handling regions -----------------------------------------------------

    async def _consume_events(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(256, timeout=0.25)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    log.warning("events.fetch_failed", error=type(exc).__name__)
                    await asyncio.sleep(0.2)
                    continue
                # Concurrently: their ledger appends and case updates share group commits.
                for result in await asyncio.gather(
                    *(self._on_event(m) for m in msgs), return_exceptions=True
                ):
                    if isinstance(result, Exception):  # e.g. the term/nak of a message failed: redelivered
                        log.warning("event.handling_failed", error=type(result).__name__)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        try:
            evs, h, digest = self._open_event(msg.data)
        except (EnvelopeRejected, TongbanError) as exc:
            # Unverifiable or undecodable: poison, never retried.
            mid = (msg.headers or {}).get(subjects.Header.MESSAGE_ID, "")
            label = mid if is_message_id(mid) else "sha256:" + envelope.digest(msg.data)[:8].hex()
            with contextlib.suppress(Exception):
                await self.ledger.append(
                    draft(
                        Event.REJECTED,
                        label,
                        peer="?",
                        service="?",
                        digest=envelope.digest(msg.data),
                        detail=Detail(outcome=exc.reason, source=Source.EVENT),
                    )
                )
            log.warning("event.rejected", reason=exc.reason)
            await msg.term()
            return
        try:
            await self._apply_event(evs, h, digest)
            await msg.ack()
        except Exception as exc:
            log.warning("event.apply_failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    def _open_event(self, data: bytes) -> tuple[list[exchange_pb2.CaseEvent], envelope_pb2.Header, bytes]:
        verified = envelope.verify(data, self.core.registry, now_s=time.time())
        h = verified.header
        if h.kind != envelope_pb2.MESSAGE_KIND_EVENT or h.to_region != self.region:
            raise EnvelopeRejected(
                "not a case event addressed to this region", reason=Reason.NOT_AN_EVENT_FOR_US
            )
        try:
            body = exchange_pb2.CaseEventBody.FromString(
                messages.open_body(verified, self.core.secrets.sealing_for(verified.header.recipient_key_id))
            )
        except DecodeError as exc:
            raise EnvelopeRejected("event body does not decode", reason=Reason.ENVELOPE_MALFORMED) from exc
        events = list(body.events)
        first = events[0].sequence if events else 0
        if (
            not events
            or not is_case_no(h.case_no)
            or first < 1
            or any(ev.case_no != h.case_no or ev.sequence != first + i for i, ev in enumerate(events))
        ):
            raise EnvelopeRejected("events do not match their header", reason=Reason.EVENT_MISMATCH)
        for ev in events:
            ev.event_id = h.message_id
        return events, h, verified.digest

    async def _apply_event(
        self, events: list[exchange_pb2.CaseEvent], h: envelope_pb2.Header, digest: bytes
    ) -> None:
        case_no = h.case_no
        row = await self.cases.get(case_no)
        if row is None or row.message_id != h.in_reply_to or row.to_region != h.from_region:
            log.warning("event.unknown_case")
            return
        if h.receipt:  # the first event of a case carries the handling region's ledger receipt
            try:
                receipt = self.core.check_receipt(
                    h, sender=row.to_region, message_id=row.message_id, digest=row.request_digest
                )
            except EnvelopeRejected as exc:
                log.warning("event.receipt_invalid", reason=exc.reason)
            else:
                await self.cases.store_receipt(row.message_id, row.to_region, receipt.leaf_index, h.receipt)
        recorded = set()
        for e in await self.ledger.by_message_id(row.message_id):
            d = Detail.decode(e.detail, event=e.event)
            recorded.add((d.seq, d.event_id))
        drafts = []
        for ev in events:
            if (ev.sequence, h.message_id) in recorded:
                continue
            event = _FAILURE_EVENT.get(ev.delivery_state, Event.STATUS)  # type: ignore[call-overload]
            reason = ev.problem.reason if _REASON.match(ev.problem.reason) else ""
            detail = Detail(seq=ev.sequence, status=ev.status, outcome=reason, event_id=h.message_id)
            drafts.append(_case_entry(event, row, detail, digest=digest))
        if drafts:
            await self.ledger.append(*drafts)
        if await self.cases.apply_events(events):
            log.info(
                "case.events", case_no=case_no, last_sequence=events[-1].sequence, status=events[-1].status
            )
        await self._changed(case_no)

    # -- reads ---------------------------------------------------------------------------------

    async def _own_case(self, case_no: str) -> CaseRow:
        caller = self._caller()
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

    # -- reconciler ------------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        first = True
        while not self._stopping.is_set():
            try:
                await self.reconcile(everything=first)
                first = False
            except Exception as exc:
                log.warning("reconciler.failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.gateway.reconcile_interval_s):
                    await self._stopping.wait()

    async def reconcile(self, *, everything: bool = False) -> int:
        """One pass over the cases still only accepted; returns how many were (re-)sent.

        ``everything`` includes cases accepted a moment ago (at start-up: a crash may have left
        them); a periodic pass leaves the youngest to the Submit that is still writing them.
        """
        gw = self.cfg.gateway
        now = time.time()
        before_ns = int((now if everything else now - 2 * gw.publish_timeout_s) * 1e9)
        sent = 0
        cursor: tuple[int, str] = (0, "")
        while not self._stopping.is_set():
            page = await self.cases.in_transit(accepted_before_ns=before_ns, after=cursor)
            if not page:
                break
            cursor = (page[-1].accepted_ns, page[-1].message_id)
            for listed in page:
                if self._stopping.is_set():
                    break
                sent += await self._reconcile_one(listed.message_id, now)
        if sent:
            log.info("reconciler.sent", count=sent)
        return sent

    async def _reconcile_one(self, message_id: str, now: float) -> int:
        gw = self.cfg.gateway
        # Fresh: the forwarder may have moved it on since the page was read.
        row = await self.cases.by_message_id(message_id)
        if row is None or row.delivery > exchange_pb2.DELIVERY_STATE_ACCEPTED:
            return 0
        age = now - row.accepted_ns / 1e9
        entries = await self.ledger.by_message_id(row.message_id)
        if not any(e.event == Event.SUBMITTED for e in entries):
            if age < gw.max_deadline_s:
                return 0  # a Submit (here or on another replica) may still be writing its record
            # Accepted into the outbox, then a crash before the ledger: complete the record first.
            await self.ledger.append(_case_entry(Event.SUBMITTED, row, Detail(case_no=row.case_no)))
        if now * 1000 > row.deadline_ms and not await self._in_outbound(row):
            await self._expire(row.message_id)
            return 0
        if not row.published:
            return 1 if await self._publish(row) else 0
        if age < gw.resend_after_s or await self._in_outbound(row):
            return 0
        # The ledger says accepted, the stream no longer has it, nothing says it arrived.
        n = await self.cases.count_resend(row.message_id)
        if not await self._publish(row, msg_id=f"{row.message_id}.r{n}"):
            return 0
        self.resent += 1
        await self.ledger.append(_case_entry(Event.RESENT, row, Detail(resend=n)))
        return 1

    async def _in_outbound(self, row: CaseRow) -> bool:
        if self._js is None:
            return True
        try:
            await self._js.get_last_msg(subjects.outbound_stream_name(self.region), row.out_subject)
            return True
        except nats.js.errors.NotFoundError:
            return False
        except Exception:
            return True  # cannot tell: do not re-send on a guess


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


def _case_entry(event: Event, row: CaseRow, detail: Detail, *, digest: bytes | None = None) -> EntryDraft:
    """The entry for ``event`` of the case in ``row`` (its request's digest unless ``digest``)."""
    return draft(
        event,
        row.message_id,
        peer=row.to_region,
        service=row.service,
        digest=row.request_digest if digest is None else digest,
        trace_id=row.trace_id,
        detail=detail,
    )
