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
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from connectors.adapters import AdapterFailure, CaseAdapter, StatusUpdate, adapter_request, submit_via_call
from connectors.answers import entry, receipt, request_trace_id
from connectors.case_events import CaseEvents, outcome_of
from connectors.inbound import CatalogueRevisionUnknown, Inbound
from connectors.state import ConnectorState, OutEvent
from ledger import Entry, Event, LedgerStore
from tongban.core import envelope, messages, subjects
from tongban.core.delivery import policy_for
from tongban.core.details import Detail, Source
from tongban.core.errors import NotFound, Reason, TongbanError
from tongban.runtime.forwarder import Forwarder
from tongban.runtime.metrics import set_outcome
from tongban.runtime.pull_worker import PullWorker
from tongban.runtime.records import draft
from tongban.runtime.shutdown import Deadline, finish_tasks
from tongban.runtime.status_codes import problem
from tongban.runtime.streams import durable_pull, ensure_streams
from tongban.v1 import envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.connector")

_FETCH_STOP_S = 2.0
"""How long a stop waits for the fetch loop to notice its stop flag (one fetch is 0.25 s)."""


class CaseWorker:
    """Consumes ``IN_<region>`` and forwards the region's events. ``start()``/``stop()``, idempotent.

    Args:
        inbound: the region's checks of arriving requests (and the keys, registry and telemetry
            they use).
        ledger: the region's ledger.
        state: the connector state store, open.
        nc: the connector's NATS connection.
    """

    def __init__(self, inbound: Inbound, *, ledger: LedgerStore, state: ConnectorState, nc: NATS) -> None:
        self.inbound = inbound
        self.cfg = inbound.cfg
        self.region = inbound.region
        self.ledger = ledger
        self.state = state
        self.nc = nc
        self.events: CaseEvents | None = None
        self._js: JetStreamContext | None = None
        self._forwarder: Forwarder | None = None
        self._batch = max(1, self.cfg.connector.fetch_batch)
        self._fetcher = PullWorker(self._take, batch=self._batch, room=self._room, events="cases")
        self._inflight: set[asyncio.Task[None]] = set()
        self.processed = 0

    async def start(self) -> None:
        if self._fetcher.running:
            return
        c = self.cfg.connector
        js = await ensure_streams(self.nc, self.region, replicas=self.cfg.nats.stream_replicas)
        self._js = js
        self.events = CaseEvents(
            self.cfg,
            registry=self.inbound.registry,
            secrets=self.inbound.secrets,
            ledger=self.ledger,
            state=self.state,
            js=js,
        )
        sub = await durable_pull(
            js,
            subjects.inbound_stream_name(self.region),
            subjects.Durable.CONNECTOR,
            filter_subject=subjects.request_wildcard(self.region),
            ack_wait_s=c.ack_wait_s,
            max_ack_pending=self._batch * 4,
        )
        self._forwarder = Forwarder.for_config(
            self.cfg, self.nc, subjects.OutKind.EVENT, self.inbound.metrics
        )
        await self._forwarder.start()
        self._fetcher.start(sub, task_name="case-worker")

    async def stop(self, deadline: Deadline | None = None) -> None:
        """Stop fetching, let in-flight requests finish within ``[nats] drain_timeout_s`` (and the
        deadline; by default ``[process] grace_s`` from now), cancel the rest (not acked:
        redelivered after the ack wait, and the processed record makes that safe), stop forwarding."""
        if not self._fetcher.running:
            return
        deadline = deadline or Deadline(self.cfg.process.grace_s)
        # Events of requests still in flight wait in the outbound stream for the next forwarder
        # of the region (another replica, or this one restarted): stopping it now loses nothing.
        steps: list[Coroutine[Any, Any, object]] = [
            self._fetcher.stop(timeout=deadline.budget(_FETCH_STOP_S), what="case worker")
        ]
        if self._forwarder is not None:
            steps.append(self._forwarder.stop(deadline))
        await asyncio.gather(*steps)
        await finish_tasks(
            self._inflight, timeout=deadline.budget(self.cfg.nats.drain_timeout_s), what="cases in flight"
        )

    async def _room(self) -> int:
        """Wait until fewer than a batch of requests are in hand; how many more may be fetched."""
        while (free := self._batch - len(self._inflight)) <= 0:
            await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
        return free

    async def _take(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            t = asyncio.create_task(self._handle(msg))
            self._inflight.add(t)
            t.add_done_callback(self._inflight.discard)

    async def report_status(
        self, case_no: str, updates: Sequence[StatusUpdate], *, report_id: str = ""
    ) -> list[OutEvent]:
        """Later statuses of a case this region took: :meth:`CaseEvents.report_status`."""
        assert self.events is not None, "the case worker is not started"
        return await self.events.report_status(case_no, updates, report_id=report_id)

    # -- one request ------------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        now = time.time()
        header = envelope.header_or_none(msg.data)
        with self.inbound.receive(
            header,
            subjects.request_wildcard(self.region),
            "Submit",
            (msg.headers or {}).get(subjects.Header.TRACEPARENT, ""),
        ) as (_, measured):
            if _attempt(msg) > 1:
                self.inbound.metrics.redelivered(measured.service_code)
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
        assert self.events is not None
        try:
            verified = self.inbound.verify(msg.subject, msg.data, now, durable=True)
            # On the region's replay record too: a query carrying this id (or this id as a query
            # later) is a replay, whatever the path; the stream's own redeliveries pass.
            await self.inbound.replays.first_case(verified.header, now, self.state)
        except TongbanError as exc:
            await self._poison(msg, header, exc)
            return
        h = verified.header
        done = await self.state.processed(h.message_id)
        if done is not None:
            outcome, events = done
            await self.events.resend(verified, outcome, events)
            await msg.ack_sync()
            log.info("cases.redelivered_done", outcome=outcome)
            set_outcome("ALREADY_PROCESSED")
            return
        if messages.seconds(h.deadline) <= now:
            expired = problem(Reason.EXPIRED, "the request's deadline passed before it could be processed")
            await self._conclude(msg, verified, [], exchange_pb2.DELIVERY_STATE_EXPIRED, expired)
            return
        try:
            request, item, adapter = await self.inbound.open(verified)
        except TongbanError as exc:
            if isinstance(exc, CatalogueRevisionUnknown) and exc.newer:
                # Validated against a catalogue revision this region has not adopted yet: it will
                # (the authority publishes to every region), so later, not never. The request's
                # deadline bounds the wait (step 3).
                backoff = self.cfg.connector.backoff_s or [1.0]
                delay = float(backoff[min(_attempt(msg), len(backoff)) - 1])
                log.warning("cases.catalogue_revision_pending", attempt=_attempt(msg), delay_s=delay)
                set_outcome(exc.reason)
                await msg.nak(delay=delay)
                return
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
        # Every access to the back end is on record before it happens.
        [received] = await self.ledger.append(
            entry(
                Event.RECEIVED,
                h,
                digest=verified.digest,
                trace_id=request_trace_id(h),
                detail=Detail(case_no=h.case_no, attempt=attempt),
            )
        )
        areq = adapter_request(h, request)
        try:
            with self.inbound.calling_backend(h.service_code):
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
        return receipt(self.region, received, verified, self.inbound.secrets.signing)

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
        delivery: exchange_pb2.DeliveryState.ValueType,
        problem: exchange_pb2.Problem | None,
        *,
        final: bool = True,
        receipt: bytes = b"",
    ) -> None:
        """Record the outcome and its events, send them, then ack (or term for a dead letter)."""
        assert self.events is not None
        dead = delivery == exchange_pb2.DELIVERY_STATE_DEAD_LETTERED
        set_outcome("DEAD_LETTERED" if dead else problem.reason if problem is not None else "OK")
        events = await self.events.conclude(
            verified, updates, delivery, problem, final=final, receipt=receipt
        )
        if dead:
            await msg.term()
        else:
            await msg.ack_sync()
        self.processed += delivery == exchange_pb2.DELIVERY_STATE_PROCESSED
        log.info("cases.concluded", outcome=outcome_of(delivery).value, events=len(events))

    async def _dead_letter(
        self, msg: Msg, verified: envelope.Verified, reason: Reason, attempts: int, *, receipt: bytes
    ) -> None:
        h = verified.header
        await self._to_dlq(msg, h.message_id, h.service_code, reason, attempts)
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
        self.inbound.metrics.dead_lettered(service, reason)

    async def _poison(self, msg: Msg, header: envelope_pb2.Header | None, exc: TongbanError) -> None:
        """Unverifiable or undecodable: dead-lettered for the operator, never retried, no answer
        (nothing in it can be trusted to address one)."""
        labels = self.inbound.labels(header)
        digest = envelope.digest(msg.data)
        label = labels.name(digest)
        svc, peer = labels.service_code, labels.peer_region
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


def _attempt(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
