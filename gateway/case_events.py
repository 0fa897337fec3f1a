"""Status events from handling regions: ``EVT_<region>`` into the ledger, the case table and the
watchers.

The gateways of a region share one durable pull consumer on the region's event stream. Each event
envelope is verified (the handling region's key, addressed to this region, in reply to the case's
request, consecutive sequence numbers), recorded once per event id (STATUS, or the failure it
reports), applied to the case (highest sequence wins; duplicates ignored), and then acked. An
envelope that cannot be verified or decoded is poison: REJECTED on record and terminated, never
retried; a failure to apply a good one is nakked and comes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

import structlog
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from gateway.case_watch import CaseWatchers
from gateway.cases import CaseStore
from gateway.exchange import ExchangeCore
from ledger import Event
from tongban.core import envelope, messages, subjects
from tongban.core.details import Detail, Source
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import Reason, TongbanError, reason_or
from tongban.core.message_ids import is_case_no, is_message_id
from tongban.runtime.pull_worker import PullWorker
from tongban.runtime.records import draft
from tongban.runtime.shutdown import Deadline
from tongban.runtime.streams import durable_pull
from tongban.v1 import envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.gateway")

_BATCH: Final = 256
"""Events one fetch asks for."""
_STOP_S: Final = 3.0
"""How long a stop waits for the batch in hand."""
_FAILURE_EVENT = {
    exchange_pb2.DELIVERY_STATE_EXPIRED: Event.EXPIRED,
    exchange_pb2.DELIVERY_STATE_DEAD_LETTERED: Event.DEAD_LETTERED,
    exchange_pb2.DELIVERY_STATE_REJECTED: Event.REJECTED,
}
"""The ledger event of a delivery that failed in the handling region (any other event: STATUS)."""


class CaseEvents:
    """The event consumer of one gateway. ``start()``/``stop()``, idempotent.

    Args:
        core: the gateway's request logic (registry, keys, ledger, receipt checks).
        cases: the region's case store.
        watchers: woken when a case changes.
    """

    def __init__(self, core: ExchangeCore, cases: CaseStore, watchers: CaseWatchers) -> None:
        self.core = core
        self.region = core.region
        self.ledger = core.ledger
        self.cases = cases
        self.watchers = watchers
        self._worker = PullWorker(self._on_batch, batch=_BATCH, events="events", on_end=self._ended)

    async def start(self, js: JetStreamContext) -> None:
        """Bind the region's gateway events consumer in ``js`` and work it."""
        if self._worker.running:
            return
        sub = await durable_pull(
            js,
            subjects.event_stream_name(self.region),
            subjects.Durable.GATEWAY_EVENTS,
            filter_subject=subjects.event_wildcard(self.region),
            ack_wait_s=self.core.cfg.gateway.ack_wait_s,
            max_ack_pending=1024,
        )
        self._worker.start(sub, task_name="case-events")

    def begin_stop(self) -> None:
        """Take no more batches; the one in hand is finished."""
        self._worker.begin_stop()

    async def stop(self, deadline: Deadline) -> None:
        """Finish the batch in hand (acked or nakked) within its share of ``deadline``, then stop:
        what is not acked is redelivered after the ack wait."""
        await self._worker.stop(timeout=deadline.budget(_STOP_S), what="case events")

    def _ended(self, error: BaseException | None) -> None:
        # The batch handler catches its errors: a consumer that ends anyway, outside a stop, is a
        # bug the operator must see.
        log.error("casedesk.loop_ended", loop="case-events", error=type(error).__name__ if error else None)

    async def _on_batch(self, msgs: list[Msg]) -> None:
        # Concurrently: their ledger appends and case updates share group commits.
        for result in await asyncio.gather(*(self._on_event(m) for m in msgs), return_exceptions=True):
            if isinstance(result, Exception):  # e.g. the term/nak of a message failed: redelivered
                log.warning("event.handling_failed", error=type(result).__name__)

    async def _on_event(self, msg: Msg) -> None:
        try:
            evs, h, digest = self._open(msg.data)
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
            await self._apply(evs, h, digest)
            await msg.ack()
        except Exception as exc:
            log.warning("event.apply_failed", error=type(exc).__name__)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)

    def _open(self, data: bytes) -> tuple[list[exchange_pb2.CaseEvent], envelope_pb2.Header, bytes]:
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

    async def _apply(
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
            detail = Detail(
                seq=ev.sequence,
                status=ev.status,
                outcome=reason_or(ev.problem.reason, ""),
                event_id=h.message_id,
            )
            drafts.append(row.entry(event, detail, digest=digest))
        if drafts:
            await self.ledger.append(*drafts)
        if await self.cases.apply_events(events):
            log.info(
                "case.events", case_no=case_no, last_sequence=events[-1].sequence, status=events[-1].status
            )
        await self.watchers.changed(case_no)
