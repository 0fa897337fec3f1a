"""The connector's durable side: Submit requests from the region's inbound stream, status events back.

Replicas of a region share one durable pull consumer on ``IN_<region>``, so they split the work and a
killed replica's unacknowledged requests go to the others after the ack wait. For each request:

1. verify (signature, recipient, subject, clock skew). An envelope that does not verify or decode is
   *poison*: dead-lettered with its reason, recorded REJECTED, terminated at once, never retried;
2. already processed (a redelivery)? re-send its stored events, ack: no second back-end call;
3. past its deadline? never processed: EXPIRED in the ledger and a signed EXPIRED event to the sender;
4. open, authorise, validate; a refusal becomes a signed REJECTED event (the sender is verified);
5. RECEIVED in the ledger, then the back end (``CaseAdapter.submit_case``, idempotent on the message
   id). A failure is retried after the service's back-off (``nak(delay)``) until its maximum number of
   attempts, then the request is dead-lettered (DLQ stream, DEAD_LETTERED entry, event to the sender);
6. the outcome and the signed status events are committed to the connector's state store, then
   PROCESSED and STATUS entries to the ledger, then the events go to the outbound stream (the
   region's forwarder carries them to the sender), and only then is the request acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from opentelemetry.trace import SpanKind

from connectors.adapters import AdapterFailure, CaseAdapter, StatusUpdate, adapter_request, submit_via_call
from connectors.state import CaseClosed, CaseRef, ConnectorState, OutEvent
from ledger import Entry, EntryDraft, Event
from tongban.core import envelope, messages, subjects
from tongban.core.delivery import policy_for
from tongban.core.details import Detail, Source
from tongban.core.envelope import EnvelopeRejected, Reason
from tongban.core.errors import InvalidRequest, NotFound, TongbanError, Violation
from tongban.core.message_ids import new_message_id
from tongban.core.receipts import sign_receipt
from tongban.runtime import telemetry
from tongban.runtime.forwarder import Forwarder
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import set_outcome
from tongban.runtime.records import draft
from tongban.runtime.shutdown import Deadline, finish_task, finish_tasks
from tongban.runtime.status_codes import problem
from tongban.runtime.streams import durable_pull, ensure_streams
from tongban.v1 import envelope_pb2, exchange_pb2

if TYPE_CHECKING:
    from connectors.runtime import Connector

log = structlog.get_logger("tongban.connector")

_FETCH_STOP_S = 2.0
"""How long a stop waits for the fetch loop to notice its stop flag (one fetch is 0.25 s)."""

_OUTCOME_EVENT = {
    exchange_pb2.DELIVERY_STATE_PROCESSED: Event.PROCESSED,
    exchange_pb2.DELIVERY_STATE_EXPIRED: Event.EXPIRED,
    exchange_pb2.DELIVERY_STATE_REJECTED: Event.REJECTED,
    exchange_pb2.DELIVERY_STATE_DEAD_LETTERED: Event.DEAD_LETTERED,
}


class CaseWorker:
    """Consumes ``IN_<region>`` and forwards the region's events. ``start()``/``stop()``, idempotent."""

    def __init__(self, connector: Connector, state: ConnectorState, nc: NATS) -> None:
        self.connector = connector
        self.cfg = connector.cfg
        self.region = connector.region
        self.ledger = connector.ledger
        self.state = state
        self.nc = nc
        self.tracer = connector.tracer
        self._js: JetStreamContext | None = None
        self._forwarder: Forwarder | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(max(1, self.cfg.connector.fetch_batch))
        self._stopping = False
        self.processed = 0
        self.dead_lettered = 0

    async def start(self) -> None:
        if self._task is not None:
            return
        c = self.cfg.connector
        js = await ensure_streams(self.nc, self.region, replicas=self.cfg.nats.stream_replicas)
        self._js = js
        stream = subjects.inbound_stream_name(self.region)
        sub = await durable_pull(
            js,
            stream,
            subjects.Durable.CONNECTOR,
            filter_subject=subjects.request_wildcard(self.region),
            ack_wait_s=c.ack_wait_s,
            max_ack_pending=max(1, c.fetch_batch) * 4,
        )
        self._forwarder = Forwarder(
            self.nc,
            self.region,
            subjects.OutKind.EVENT,
            ack_wait_s=self.cfg.gateway.ack_wait_s,
            retry_max_s=self.cfg.gateway.forward_retry_max_s,
            publish_timeout_s=self.cfg.gateway.publish_timeout_s,
            metrics=self.connector.metrics,
        )
        await self._forwarder.start()
        self._stopping = False
        self._task = asyncio.create_task(self._loop(sub), name="case-worker")

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Stop fetching, let in-flight requests finish within ``[nats] drain_timeout_s`` (and the
        deadline; by default ``[process] grace_s`` from now), cancel the rest (not acked:
        redelivered after the ack wait, and the processed record makes that safe), stop forwarding."""
        task, self._task = self._task, None
        if task is None:
            return
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        self._stopping = True
        # Events of requests still in flight wait in the outbound stream for the next forwarder
        # of the region (another replica, or this one restarted): stopping it now loses nothing.
        steps: list[Coroutine[Any, Any, object]] = [
            finish_task(task, timeout=deadline.budget(_FETCH_STOP_S), what="case worker")
        ]
        if self._forwarder is not None:
            steps.append(self._forwarder.stop(deadline))
        await asyncio.gather(*steps)
        await finish_tasks(
            self._inflight, timeout=deadline.budget(self.cfg.nats.drain_timeout_s), what="cases in flight"
        )

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        batch = max(1, self.cfg.connector.fetch_batch)
        try:
            while not self._stopping:
                free = batch - len(self._inflight)
                if free <= 0:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await sub.fetch(free, timeout=0.25)
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                except Exception as exc:
                    log.warning("cases.fetch_failed", error=type(exc).__name__)
                    await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    t = asyncio.create_task(self._handle(msg))
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- one request ------------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        now = time.time()
        header = envelope.header_or_none(msg.data)
        labels = self.connector._labels(header)
        with (
            self.connector.receive_scope(
                header,
                subjects.request_wildcard(self.region),
                (msg.headers or {}).get(subjects.Header.TRACEPARENT, ""),
                labels=labels,
            ),
            self.connector.measure(labels, "Submit") as measured,
        ):
            if _attempt(msg) > 1:
                self.connector.metrics.redelivered(measured.service_code)
            # Until the ack (or nak, or term): a slow back end, state store or ledger must not let
            # the ack wait run out, or the request would be redelivered to a replica while in hand.
            heartbeat = asyncio.create_task(self._keep_alive(msg))
            try:
                await self._process(msg, header, now)
            except Exception as exc:
                # A bug or the ledger/state failing: not acked, so it is redelivered after a pause.
                log.error("cases.internal_error", error=type(exc).__name__)
                measured.outcome = "INTERNAL"
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
            finally:
                heartbeat.cancel()

    async def _process(self, msg: Msg, header: envelope_pb2.Header | None, now: float) -> None:
        try:
            verified = self.connector.verify_request(msg.subject, msg.data, now, durable=True)
        except TongbanError as exc:
            await self._poison(msg, header, exc)
            return
        h = verified.header
        # On the region's replay record too: a query carrying this id (or this id as a query later)
        # is a replay, whatever the path; the stream's own redeliveries pass.
        expires_s = max(messages.seconds(h.deadline), now) + self.cfg.connector.clock_skew_s
        if not await self.state.first_sighting(h.message_id, expires_s=expires_s, now_s=now, path="case"):
            replayed = EnvelopeRejected(
                "this message id was already received as a query", reason=Reason.REPLAYED
            )
            await self._poison(msg, header, replayed)
            return
        done = await self.state.processed(h.message_id)
        if done is not None:
            outcome, events = done
            await self._ensure_ledger(verified, outcome, events)
            await self._send(events)
            await msg.ack_sync()
            log.info("cases.redelivered_done", outcome=outcome)
            set_outcome("ALREADY_PROCESSED")
            return
        if messages.seconds(h.deadline) <= now:
            expired = problem(Reason.EXPIRED, "the request's deadline passed before it could be processed")
            await self._conclude(msg, verified, [], exchange_pb2.DELIVERY_STATE_EXPIRED, expired)
            return
        try:
            request, item, adapter = self.connector.open_request(verified)
        except TongbanError as exc:
            refusal = problem(exc.reason, exc.message)
            await self._conclude(msg, verified, [], exchange_pb2.DELIVERY_STATE_REJECTED, refusal)
            return
        c = self.cfg.connector
        policy = policy_for(
            item,
            default_backoff_s=tuple(float(b) for b in c.backoff_s),
            default_max_attempts=c.max_attempts,
            default_ttl_s=self.cfg.gateway.submit_ttl_s,
        )
        attempt = _attempt(msg)
        trace_id = telemetry.trace_id_of(h.traceparent) or telemetry.current_trace_id()
        # Every access to the back end is on record before it happens.
        [received] = await self.ledger.append(
            draft(
                Event.RECEIVED,
                h.message_id,
                peer=h.from_region,
                service=h.service_code,
                digest=verified.digest,
                trace_id=trace_id,
                detail=Detail(case_no=h.case_no, attempt=attempt),
            )
        )
        areq = adapter_request(h, request)
        try:
            with (
                self.tracer.start_as_current_span(
                    "connector.adapter",
                    kind=SpanKind.CLIENT,
                    attributes={"tongban.service_code": h.service_code},
                ),
                self.connector.metrics.hop(TimedHop.ADAPTER),
            ):
                remaining = messages.seconds(h.deadline) - time.time()
                async with asyncio.timeout(max(remaining, 0.001)):
                    if isinstance(adapter, CaseAdapter):
                        updates = list(await adapter.submit_case(areq))
                    else:
                        updates = await submit_via_call(adapter, areq)
        except (AdapterFailure, NotFound, TimeoutError, Exception) as exc:
            reason = (
                exc.reason
                if isinstance(exc, TongbanError)
                else (Reason.BACKEND_TIMEOUT if isinstance(exc, TimeoutError) else Reason.BACKEND_ERROR)
            )
            if attempt >= policy.max_attempts:
                await self._dead_letter(
                    msg, verified, reason, attempt, receipt=self._receipt(received, verified)
                )
                return
            delay = policy.delay_after(attempt)
            log.warning("cases.retry", reason=reason, attempt=attempt, delay_s=delay)
            set_outcome(reason)
            await msg.nak(delay=delay)
            return
        await self._conclude(
            msg,
            verified,
            updates,
            exchange_pb2.DELIVERY_STATE_PROCESSED,
            None,
            receipt=self._receipt(received, verified),
        )

    def _receipt(self, received: Entry, verified: envelope.Verified) -> bytes:
        """The signed receipt of the RECEIVED entry: the request is on record here, whatever the
        back end made of it."""
        return sign_receipt(
            region=self.region,
            leaf_index=received.index,
            envelope_digest=verified.digest,
            message_id=verified.header.message_id,
            key=self.connector.secrets.signing,
        )

    async def attach(self) -> None:
        """Ready to report statuses without consuming (a tool beside the running connectors)."""
        if self._js is None:
            self._js = await ensure_streams(self.nc, self.region, replicas=self.cfg.nats.stream_replicas)

    async def report_status(self, case_no: str, updates: Sequence[StatusUpdate]) -> list[OutEvent]:
        """Later statuses of a case this region took (补正 requested, received, 办结 …), signed and
        sent to the submitting region like the first ones, numbered after them.

        Raises:
            InvalidRequest: no update, or a status that is not a BLZT code (1-15).
            NotFound: this region never took the case.
            TongbanError: FAILED_PRECONDITION ``CASE_CLOSED``, the case's last status is terminal.
        """
        bad = [u.status for u in updates if not 1 <= u.status <= 15]
        if not updates or bad:
            raise InvalidRequest(
                "status updates must be BLZT codes 1-15", [Violation("status", "a BLZT code, 1 to 15")]
            )
        traceparent = telemetry.current_traceparent()
        header: list[envelope_pb2.Header] = []

        def build(ref: CaseRef) -> list[OutEvent]:
            h = envelope_pb2.Header.FromString(ref.request_header)
            header.append(h)
            return [
                self._build_event(
                    h,
                    ref.request_digest,
                    ref.next_seq,
                    updates,
                    exchange_pb2.DELIVERY_STATE_PROCESSED,
                    None,
                    traceparent or h.traceparent,
                )
            ]

        try:
            events = await self.state.record_report(case_no, build, updates[-1].status)
        except KeyError as exc:
            raise NotFound("this region has no such case", reason=Reason.CASE_NOT_FOUND) from exc
        except CaseClosed as exc:
            raise TongbanError(
                "the case is closed: its last status is terminal", reason=Reason.CASE_CLOSED
            ) from exc
        await self.ledger.append(*(_status_entry(header[0], e, seq) for e in events for seq in e.sequences))
        await self._send(events)
        log.info("cases.status_reported", case_no=case_no, events=len(events))
        return events

    async def _keep_alive(self, msg: Msg) -> None:
        """Tell the server a slow back end is still working, so the request is not redelivered."""
        every = max(self.cfg.connector.ack_wait_s / 3, 0.1)
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(every)
                await msg.in_progress()

    # -- outcomes -----------------------------------------------------------------------------------

    async def _conclude(
        self,
        msg: Msg,
        verified: envelope.Verified,
        updates: Sequence[StatusUpdate],
        delivery: int,
        problem: exchange_pb2.Problem | None,
        *,
        final: bool = True,
        receipt: bytes = b"",
    ) -> list[OutEvent]:
        """Record the outcome and its events, send them, then ack (or term for a dead letter).
        ``receipt`` (the signed receipt of the RECEIVED entry) rides on the first event."""
        h = verified.header
        outcome = _OUTCOME_EVENT[delivery].value  # type: ignore[index]
        dead = delivery == exchange_pb2.DELIVERY_STATE_DEAD_LETTERED
        set_outcome("DEAD_LETTERED" if dead else problem.reason if problem is not None else "OK")
        if not updates:
            updates = [StatusUpdate(0)]  # a delivery outcome without a case status (expired, refused, ...)

        # Taken here: ``build`` runs on the state store's thread, outside this span's context.
        traceparent = telemetry.current_traceparent() or h.traceparent

        def build(first: int) -> list[OutEvent]:
            return [
                self._build_event(
                    h, verified.digest, first, updates, delivery, problem, traceparent, receipt=receipt
                )
            ]

        events, _ = await self.state.record(
            message_id=h.message_id,
            case_no=h.case_no,
            from_region=h.from_region,
            service=h.service_code,
            outcome=outcome,
            build=build,
            final=final,
            request_header=verified.header_bytes,
            request_digest=verified.digest,
            last_status=updates[-1].status,
        )
        await self._ensure_ledger(verified, outcome, events, problem)
        await self._send(events)
        if delivery == exchange_pb2.DELIVERY_STATE_DEAD_LETTERED:
            await msg.term()
        else:
            await msg.ack_sync()
        self.processed += delivery == exchange_pb2.DELIVERY_STATE_PROCESSED
        log.info("cases.concluded", outcome=outcome, events=len(events))
        return events

    def _build_event(
        self,
        h: envelope_pb2.Header,
        request_digest: bytes,
        first: int,
        updates: Sequence[StatusUpdate],
        delivery: int,
        problem: exchange_pb2.Problem | None,
        traceparent: str,
        *,
        receipt: bytes = b"",
    ) -> OutEvent:
        """One signed, sealed envelope carrying the statuses reached in one step, numbered from
        ``first``: one signature, one seal and one message for the lot."""
        event_id = new_message_id()
        body = exchange_pb2.CaseEventBody()
        now = messages.timestamp(time.time())
        for i, update in enumerate(updates):
            ev = body.events.add(
                case_no=h.case_no,
                sequence=first + i,
                status=update.status,  # type: ignore[arg-type]
                local_code=update.local_code,
                local_system=update.local_system,
                note=update.note,
                delivery_state=delivery,  # type: ignore[arg-type]
                event_id=event_id,
            )
            ev.occurred_at.CopyFrom(now)
            if problem is not None:
                ev.problem.CopyFrom(problem)
        kid, recipient = self.connector.registry.sealing_key_for(h.from_region)
        header = envelope_pb2.Header(
            message_id=event_id,
            kind=envelope_pb2.MESSAGE_KIND_EVENT,
            service_code=h.service_code,
            from_region=self.region,
            to_region=h.from_region,
            created_at=messages.timestamp(time.time()),
            traceparent=traceparent,
            subject_digest=h.subject_digest,
            subject_masked=h.subject_masked,
            purpose=h.purpose,
            content_type=messages.EVENT_CONTENT_TYPE,
            in_reply_to=h.message_id,
            request_digest=request_digest,
            case_no=h.case_no,
            receipt=receipt,
        )
        built = messages.build_sealed(
            header,
            body.SerializeToString(),
            recipient_key_id=kid,
            recipient=recipient,
            signer=self.connector.secrets.signing,
        )
        subject = subjects.outbound_subject(
            self.region, subjects.OutKind.EVENT, h.from_region, h.service_code, event_id
        )
        return OutEvent(event_id, first, first + len(updates) - 1, subject, built.data)

    async def _ensure_ledger(
        self,
        verified: envelope.Verified,
        outcome: str,
        events: Sequence[OutEvent],
        problem: exchange_pb2.Problem | None = None,
    ) -> None:
        """The outcome and one STATUS entry per event, once: a redelivery after a crash that came
        between the state commit and the ledger completes the record instead of repeating it."""
        h = verified.header
        existing = await self.ledger.by_message_id(h.message_id)
        have = {_status_key(e) for e in existing if e.event == Event.STATUS}
        trace_id = telemetry.trace_id_of(h.traceparent)
        drafts = []
        if not any(e.event == outcome for e in existing) or (outcome == Event.DEAD_LETTERED):
            reason = problem.reason if problem is not None else ""
            drafts.append(
                draft(
                    Event(outcome),
                    h.message_id,
                    peer=h.from_region,
                    service=h.service_code,
                    digest=verified.digest,
                    trace_id=trace_id,
                    detail=Detail(case_no=h.case_no, outcome=reason),
                )
            )
        drafts.extend(
            _status_entry(h, e, seq) for e in events for seq in e.sequences if (seq, e.event_id) not in have
        )
        if drafts:
            await self.ledger.append(*drafts)

    async def _send(self, events: Sequence[OutEvent]) -> None:
        """Into the region's outbound stream (deduplicated by event id); the forwarder does the rest."""
        js = self._js
        assert js is not None
        await asyncio.gather(
            *(
                js.publish(
                    e.subject,
                    e.data,
                    timeout=self.cfg.gateway.publish_timeout_s,
                    headers={subjects.Header.MSG_ID: e.event_id, subjects.Header.MESSAGE_ID: e.event_id},
                )
                for e in events
            )
        )

    async def _dead_letter(
        self, msg: Msg, verified: envelope.Verified, reason: Reason, attempts: int, *, receipt: bytes = b""
    ) -> None:
        h = verified.header
        await self._to_dlq(msg, h.message_id, h.service_code, reason, attempts)
        self.dead_lettered += 1
        dead = problem(
            reason, f"the back end failed {attempts} times; the request waits in the dead-letter queue"
        )
        await self._conclude(
            msg,
            verified,
            [],
            exchange_pb2.DELIVERY_STATE_DEAD_LETTERED,
            dead,
            final=False,
            receipt=receipt,
        )

    async def _to_dlq(self, msg: Msg, message_id: str, service: str, reason: str, attempts: int) -> None:
        assert self._js is not None
        await self._js.publish(
            subjects.dlq_subject(self.region, service),
            msg.data,
            timeout=self.cfg.gateway.publish_timeout_s,
            headers={
                subjects.Header.MSG_ID: f"{message_id}.dlq.{msg.metadata.sequence.stream}",
                subjects.Header.MESSAGE_ID: message_id,
                subjects.Header.REASON: reason,
                subjects.Header.ATTEMPTS: str(attempts),
                subjects.Header.ORIGINAL_SUBJECT: msg.subject,
            },
        )
        log.warning("cases.dead_lettered", reason=reason, attempts=attempts)
        self.connector.metrics.dead_lettered(service, reason)

    async def _poison(self, msg: Msg, header: envelope_pb2.Header | None, exc: TongbanError) -> None:
        """Unverifiable or undecodable: dead-lettered for the operator, never retried, no answer
        (nothing in it can be trusted to address one)."""
        mid, svc, peer = self.connector._labels(header)
        digest = envelope.digest(msg.data)
        label = mid or "sha256:" + digest[:8].hex()
        await self._to_dlq(msg, label, svc if svc not in ("", "?") else "UNKNOWN", exc.reason, _attempt(msg))
        await self.ledger.append(
            draft(
                Event.REJECTED,
                label,
                peer=peer or "?",
                service=svc or "?",
                digest=digest,
                detail=Detail(outcome=exc.reason, source=Source.POISON),
            )
        )
        await msg.term()
        set_outcome(exc.reason)
        log.warning("cases.poison", reason=exc.reason)


def _status_entry(h: envelope_pb2.Header, e: OutEvent, seq: int) -> EntryDraft:
    """The STATUS ledger entry of one status of an emitted event envelope (its sequence and event
    id make it findable, so it is written once)."""
    return draft(
        Event.STATUS,
        h.message_id,
        peer=h.from_region,
        service=h.service_code,
        digest=envelope.digest(e.data),
        trace_id=telemetry.trace_id_of(h.traceparent),
        detail=Detail(seq=seq, event_id=e.event_id),
    )


def _status_key(entry: Entry) -> tuple[int, str]:
    """(sequence, event id) of a STATUS entry."""
    detail = Detail.decode(entry.detail, event=entry.event)
    return detail.seq or 0, detail.event_id


def _attempt(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
