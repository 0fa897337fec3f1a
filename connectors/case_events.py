"""The signed status events of the cases a region takes, from their outcome to the outbound stream.

An event envelope carries every status a case reached in one step (one signature, one seal and one
message for the lot), sealed to the submitting region, numbered after the case's earlier events. It
is committed to the connector's state store first (with the request's outcome, in one
transaction), then recorded in the ledger (the outcome and one STATUS entry per status, each once),
then published to the region's outbound stream, whose forwarder carries it to the sender.

:class:`CaseEvents` serves the case worker (:mod:`connectors.cases`) and ``tongban case report``,
a tool beside the running connectors, alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import structlog
from nats.js.client import JetStreamContext

from connectors.adapters import StatusUpdate
from connectors.answers import answer_header, entry, seal_to_recipient
from connectors.state import CaseClosed, CaseRef, ConnectorState, OutEvent
from ledger import Entry, EntryDraft, Event, LedgerStore
from tongban.core import envelope, messages, subjects
from tongban.core.details import Detail
from tongban.core.errors import InvalidRequest, NotFound, Reason, TongbanError, Violation
from tongban.core.message_ids import new_message_id
from tongban.core.registry import Registry
from tongban.runtime import telemetry
from tongban.runtime.config import Config
from tongban.runtime.node import RegionSecrets
from tongban.v1 import envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.connector")

_OUTCOME_EVENT = {
    exchange_pb2.DELIVERY_STATE_PROCESSED: Event.PROCESSED,
    exchange_pb2.DELIVERY_STATE_EXPIRED: Event.EXPIRED,
    exchange_pb2.DELIVERY_STATE_REJECTED: Event.REJECTED,
    exchange_pb2.DELIVERY_STATE_DEAD_LETTERED: Event.DEAD_LETTERED,
}


_MISSING_KIND: dict[str, exchange_pb2.MissingItemKind.ValueType] = {
    "material": exchange_pb2.MISSING_ITEM_KIND_MATERIAL,
    "field": exchange_pb2.MISSING_ITEM_KIND_FIELD,
}


def outcome_of(delivery: exchange_pb2.DeliveryState.ValueType) -> Event:
    """The ledger event that records a request's delivery outcome."""
    return _OUTCOME_EVENT[delivery]


class CaseEvents:
    """Builds, records and sends the status events of one region's cases.

    Args:
        registry: the trust registry (the submitting region's sealing key).
        secrets: the region's keys (events are signed with its signing key).
        ledger: the region's ledger.
        state: the connector state store (sequences, processed requests, events).
        js: JetStream of the region's own nats-server, with the region's streams in place
            (:func:`~tongban.runtime.streams.ensure_streams`).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        registry: Registry,
        secrets: RegionSecrets,
        ledger: LedgerStore,
        state: ConnectorState,
        js: JetStreamContext,
    ) -> None:
        self.cfg = cfg
        self.region = cfg.region.code
        self.registry = registry
        self.secrets = secrets
        self.ledger = ledger
        self.state = state
        self.js = js

    async def conclude(
        self,
        verified: envelope.Verified,
        updates: Sequence[StatusUpdate],
        delivery: exchange_pb2.DeliveryState.ValueType,
        problem: exchange_pb2.Problem | None,
        *,
        final: bool,
        receipt: bytes,
    ) -> list[OutEvent]:
        """Record a request's outcome and the event carrying it (``updates``: the statuses the back
        end reported, none for an outcome without a case status), then send the event. ``final``:
        the request is processed (no later delivery of it calls the back end); ``receipt`` (the
        signed receipt of the RECEIVED entry) rides on the event."""
        h = verified.header
        outcome = outcome_of(delivery).value
        if not updates:
            updates = [StatusUpdate(0)]  # a delivery outcome without a case status (expired, refused, ...)

        # Taken here: ``build`` runs on the state store's thread, outside this span's context.
        traceparent = telemetry.current_traceparent() or h.traceparent

        def build(first: int) -> list[OutEvent]:
            return [
                self._build(
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
        await self.resend(verified, outcome, events, problem)
        return events

    async def resend(
        self,
        verified: envelope.Verified,
        outcome: str,
        events: Sequence[OutEvent],
        problem: exchange_pb2.Problem | None = None,
    ) -> None:
        """Complete the ledger's record of ``events`` and send them (again: the streams drop what
        they already hold)."""
        await self._ensure_ledger(verified, outcome, events, problem)
        await self._send(events)

    async def report_status(
        self, case_no: str, updates: Sequence[StatusUpdate], *, report_id: str = ""
    ) -> list[OutEvent]:
        """Later statuses of a case this region took (补正 requested with what is missing,
        received, 办结 …), signed and sent to the submitting region like the first ones, numbered
        after them. A ``report_id`` seen before for the case repeats that report (its events are
        recorded and sent again where they were not, idempotently) instead of making a new one.

        Raises:
            InvalidRequest: no update, a status that is not a BLZT code (1-15), or missing items
                with a status other than 6.
            NotFound: this region never took the case.
            TongbanError: FAILED_PRECONDITION ``CASE_CLOSED``, the case's last status is terminal.
        """
        bad = [u.status for u in updates if not 1 <= u.status <= 15]
        if not updates or bad:
            raise InvalidRequest(
                "status updates must be BLZT codes 1-15",
                violations=[Violation("status", "a BLZT code, 1 to 15")],
            )
        if any(u.missing and u.status != exchange_pb2.CASE_STATUS_SUPPLEMENT_REQUESTED for u in updates):
            raise InvalidRequest(
                "missing items go with status 6 补正（开始） only",
                violations=[Violation("missing", "only with status 6")],
            )
        traceparent = telemetry.current_traceparent()
        header: list[envelope_pb2.Header] = []

        def on_case(ref: CaseRef) -> None:
            header.append(envelope_pb2.Header.FromString(ref.request_header))

        def build(ref: CaseRef) -> list[OutEvent]:
            h = header[0]
            return [
                self._build(
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
            events = await self.state.record_report(
                case_no, build, updates[-1].status, report_id=report_id, on_case=on_case
            )
        except KeyError as exc:
            raise NotFound("this region has no such case", reason=Reason.CASE_NOT_FOUND) from exc
        except CaseClosed as exc:
            raise TongbanError(
                "the case is closed: its last status is terminal", reason=Reason.CASE_CLOSED
            ) from exc
        h = header[0]
        have: set[tuple[int, str]] = set()
        if report_id:
            # A repeated report may have been recorded here already (or not: the first one may have
            # ended between the state and the ledger): each STATUS entry once.
            have = {
                _status_key(e)
                for e in await self.ledger.by_message_id(h.message_id)
                if e.event == Event.STATUS
            }
        drafts = [
            _status_entry(h, e, seq) for e in events for seq in e.sequences if (seq, e.event_id) not in have
        ]
        if drafts:
            await self.ledger.append(*drafts)
        await self._send(events)
        log.info("cases.status_reported", case_no=case_no, events=len(events))
        return events

    def _build(
        self,
        h: envelope_pb2.Header,
        request_digest: bytes,
        first: int,
        updates: Sequence[StatusUpdate],
        delivery: exchange_pb2.DeliveryState.ValueType,
        problem: exchange_pb2.Problem | None,
        traceparent: str,
        *,
        receipt: bytes = b"",
    ) -> OutEvent:
        """One signed, sealed envelope carrying the statuses reached in one step, numbered from
        ``first``."""
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
                delivery_state=delivery,
                event_id=event_id,
            )
            ev.missing.extend(
                exchange_pb2.MissingItem(kind=_MISSING_KIND[m.kind], name=m.name, reason=m.reason)
                for m in update.missing
            )
            ev.occurred_at.CopyFrom(now)
            if problem is not None:
                ev.problem.CopyFrom(problem)
        header = answer_header(
            h,
            region=self.region,
            message_id=event_id,
            kind=envelope_pb2.MESSAGE_KIND_EVENT,
            content_type=messages.EVENT_CONTENT_TYPE,
            request_digest=request_digest,
            traceparent=traceparent,
            case_no=h.case_no,
            receipt=receipt,
        )
        built = seal_to_recipient(
            header, body.SerializeToString(), registry=self.registry, signer=self.secrets.signing
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
        problem: exchange_pb2.Problem | None,
    ) -> None:
        """The outcome and one STATUS entry per event, once: a redelivery after a crash that came
        between the state commit and the ledger completes the record instead of repeating it."""
        h = verified.header
        existing = await self.ledger.by_message_id(h.message_id)
        have = {_status_key(e) for e in existing if e.event == Event.STATUS}
        drafts = []
        if not any(e.event == outcome for e in existing) or (outcome == Event.DEAD_LETTERED):
            reason = problem.reason if problem is not None else ""
            drafts.append(
                entry(
                    Event(outcome),
                    h,
                    digest=verified.digest,
                    trace_id=telemetry.trace_id_of(h.traceparent),
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
        await asyncio.gather(
            *(
                self.js.publish(
                    e.subject,
                    e.data,
                    timeout=self.cfg.gateway.publish_timeout_s,
                    headers={subjects.Header.MSG_ID: e.event_id, subjects.Header.MESSAGE_ID: e.event_id},
                )
                for e in events
            )
        )


def _status_entry(h: envelope_pb2.Header, e: OutEvent, seq: int) -> EntryDraft:
    """The STATUS ledger entry of one status of an emitted event envelope (its sequence and event
    id make it findable, so it is written once)."""
    return entry(
        Event.STATUS,
        h,
        digest=envelope.digest(e.data),
        trace_id=telemetry.trace_id_of(h.traceparent),
        detail=Detail(seq=seq, event_id=e.event_id),
    )


def _status_key(e: Entry) -> tuple[int, str]:
    """(sequence, event id) of a STATUS entry."""
    detail = Detail.decode(e.detail, event=e.event)
    return detail.seq or 0, detail.event_id
