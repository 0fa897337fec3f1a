"""``Exchange.Query``: validate, sign and seal, send to the providing region, verify the answer.

DESIGN.md "The flow of one request", steps 1-3 and 6. Every outcome lands in the region's ledger:
SUBMITTED before the request leaves, then RESPONDED, REJECTED (bad input here, or a refusal from
the other side) or EXPIRED (no answer within the deadline). Validation, sealing and receipts are
shared with Submit (:class:`~gateway.case_desk.CaseDesk`).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from opentelemetry.trace import SpanKind

from gateway.interceptors import Caller, require_caller
from ledger import Event
from tongban.core import envelope, messages, subjects
from tongban.core.catalogue import validate_request
from tongban.core.details import OK, Detail, Source
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    PermissionDenied,
    Reason,
    RemoteProblem,
    TongbanError,
    Unavailable,
    Violation,
    reason_or,
)
from tongban.core.message_ids import new_message_id
from tongban.core.privacy import mask_subject
from tongban.core.receipts import verify_receipt
from tongban.runtime import telemetry
from tongban.runtime.component import ComponentParts
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import label_request
from tongban.runtime.records import draft
from tongban.runtime.status_codes import status_from_wire
from tongban.v1 import envelope_pb2, exchange_pb2

log = structlog.get_logger("tongban.gateway")
_SAFE_PATH = re.compile(r"^(time_to_live|request(\.[a-z_]+)*(\.fields\[(?P<name>[a-z][a-z0-9_]{0,63})\])?)$")
_SEND_FAILURES = (
    nats.errors.NoRespondersError,
    TimeoutError,  # nats.errors.TimeoutError is one
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
)
"""What a request sent on NATS can end in without an answer (besides the caller's cancel)."""
_validated_revision: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tongban_catalogue_revision", default=None
)
"""The catalogue revision this RPC's request was validated against: set by
:meth:`ExchangeCore.validate`, named in the signed header by :meth:`ExchangeCore.seal_request` (Query
and Submit validate and seal in one task; the live catalogue may move on between the two)."""


class ReceiptKeeper(Protocol):
    async def store_receipt(self, message_id: str, region: str, leaf_index: int, signed: bytes) -> None: ...


class ReplyInvalid(TongbanError):
    """The answer from the other region failed verification: it is discarded, never returned."""

    reason = Reason.REPLY_INVALID


@dataclass(frozen=True, slots=True)
class Outgoing:
    """What every ledger entry of one validated Query names."""

    message_id: str
    to: str
    """The providing region."""
    service: str
    trace_id: str


def _ledger_detail(exc: TongbanError, declared: frozenset[str]) -> Detail:
    """Reason plus offending field paths. A path is recorded only in a shape that carries no caller
    text: a form field the catalogue item declares keeps its name, any other field name (the
    caller's text, perhaps an ID number or a phone with a letter in front) is ``fields[?]``, and a
    path of any other shape is ``?``; each path once, in the order of the violations."""
    paths: dict[str, None] = {}
    for v in getattr(exc, "violations", []):
        match = _SAFE_PATH.match(v.field)
        name = match.group("name") if match else None
        if match is None:
            path = "?"
        elif name is not None and name not in declared:
            path = v.field[: v.field.index("[") + 1] + "?]"
        else:
            path = v.field
        paths[path] = None
    return Detail(outcome=exc.wire_reason, fields=tuple(paths))


class ExchangeCore:
    """The gateway's request logic, independent of gRPC plumbing.

    Args:
        parts: what the gateway was built from (configuration, registry, keys, catalogue, ledger,
            tracer, metrics).
        nc: the gateway's NATS connection (the region's inbox prefix).
    """

    def __init__(self, parts: ComponentParts, nc: NATS) -> None:
        self.cfg = parts.cfg
        self.metrics = parts.metrics
        self.region = parts.cfg.region.code
        self.registry = parts.registry
        self.secrets = parts.secrets
        self.catalogue = parts.catalogue
        self.ledger = parts.ledger
        self.nc = nc
        self.tracer = parts.tracer
        self.receipts: ReceiptKeeper | None = None
        """Where verified receipts are kept (the gateway's case store, once open)."""

    def _check(self, req: exchange_pb2.ServiceRequest, caller: Caller) -> None:
        """Catalogue validation plus the registry's view of region, service and caller."""
        violations: list[Violation] = []
        catalogue = self.catalogue  # live: adopting a newer revision is one synchronous step
        try:
            validate_request(catalogue, req, max_field_length=self.cfg.gateway.max_field_length)
        except InvalidRequest as exc:
            violations.extend(exc.violations)
        _validated_revision.set(catalogue.revision)
        bad_fields = {v.field for v in violations}
        if "request.target_region" not in bad_fields and self.registry.region(req.target_region) is None:
            violations.append(Violation("request.target_region", "region is not in the trust registry"))
        elif (
            "request.target_region" not in bad_fields
            and "request.service_code" not in bad_fields
            and not self.registry.provides(req.target_region, req.service_code)
        ):
            violations.append(
                Violation("request.service_code", "the target region does not provide this service")
            )
        if violations:
            raise InvalidRequest("request does not match the catalogue", violations=violations)
        if not self.registry.allows(caller.region, caller.system_id, req.service_code, req.target_region):
            raise PermissionDenied(
                f"the registry does not allow {caller.system_id} of {caller.region} to call "
                f"{req.service_code} in {req.target_region}"
            )

    def check_receipt(
        self, h: envelope_pb2.Header, *, sender: str, message_id: str, digest: bytes
    ) -> envelope_pb2.Receipt:
        """The signed receipt in ``h``: by ``sender``'s registry key, for our message and digest.

        Raises:
            EnvelopeRejected: RECEIPT_MISSING, RECEIPT_INVALID or RECEIPT_MISMATCH.
        """
        if not h.receipt:
            raise EnvelopeRejected("the answer carries no ledger receipt", reason=Reason.RECEIPT_MISSING)
        receipt = verify_receipt(
            h.receipt,
            lambda kid, region, _at: self.registry.signing_public_key(kid, region=region, at_s=time.time()),
        )
        if receipt.region != sender or receipt.message_id != message_id or receipt.envelope_digest != digest:
            raise EnvelopeRejected(
                "the receipt names another region, message or digest", reason=Reason.RECEIPT_MISMATCH
            )
        return receipt

    async def refuse(
        self, message_id: str, req: exchange_pb2.ServiceRequest, trace_id: str, error: TongbanError
    ) -> NoReturn:
        """Refuse a request here: one REJECTED entry, then ``error`` raised. Region and service are
        caller text: they are recorded only when the registry names the region and the catalogue the
        service (a well-formed value is not enough: an ID number is well-formed), else '?'."""
        to = req.target_region if self.registry.region(req.target_region) is not None else "?"
        item = self.catalogue.get(req.service_code)
        svc = req.service_code if item is not None else "?"
        declared = frozenset(f.name for f in item.fields) if item is not None else frozenset()
        await self._fail(
            Outgoing(message_id, to, svc, trace_id), Event.REJECTED, _ledger_detail(error, declared), error
        )

    async def validate(
        self,
        req: exchange_pb2.ServiceRequest,
        caller: Caller,
        message_id: str,
        trace_id: str,
        extra: Callable[[], None] | None = None,
    ) -> None:
        """Catalogue and registry checks (plus ``extra``); a refusal is recorded, then raised."""
        with self.tracer.start_as_current_span("gateway.validate"), self.metrics.hop(TimedHop.VALIDATE):
            try:
                self._check(req, caller)
                if extra is not None:
                    extra()
            except TongbanError as exc:
                await self.refuse(message_id, req, trace_id, exc)

    async def require_nats(self, message_id: str, req: exchange_pb2.ServiceRequest, trace_id: str) -> None:
        """Refuse at once, on record, while this region's NATS connection is down: nats-py would
        buffer the request while reconnecting and the caller would only see its deadline pass."""
        if not self.nc.is_connected:
            error = Unavailable("this region's NATS connection is down", reason=Reason.NATS_UNAVAILABLE)
            await self.refuse(message_id, req, trace_id, error)

    def seal_request(
        self,
        req: exchange_pb2.ServiceRequest,
        caller: Caller,
        *,
        message_id: str,
        deadline: float,
        case_no: str = "",
    ) -> messages.Built:
        """The signed request envelope, its body sealed to the target region's current key; its
        header names the catalogue revision the request was validated against (the current one if
        this task validated nothing)."""
        to = req.target_region
        revision = _validated_revision.get()
        kid, recipient = self.registry.sealing_key_for(to)
        id_no = req.applicant.id_no
        header = envelope_pb2.Header(
            message_id=message_id,
            # The kind names the path (a case travels the streams, a query the RPC subject); the
            # receiver binds it to where the envelope arrived.
            kind=envelope_pb2.MESSAGE_KIND_CASE_REQUEST if case_no else envelope_pb2.MESSAGE_KIND_REQUEST,
            service_code=req.service_code,
            from_region=self.region,
            to_region=to,
            created_at=messages.timestamp(time.time()),
            deadline=messages.timestamp(deadline),
            traceparent=telemetry.current_traceparent(),
            subject_digest=self.secrets.correlator.digest(id_no),
            subject_masked=mask_subject(req.applicant.kind, id_no),
            purpose=req.governance.purpose_code,
            content_type=messages.REQUEST_CONTENT_TYPE,
            origin_system=caller.system_id,
            case_no=case_no,
            catalogue_revision=self.catalogue.revision if revision is None else revision,
        )
        return messages.build_sealed(
            header,
            exchange_pb2.RequestBody(request=req).SerializeToString(),
            recipient_key_id=kid,
            recipient=recipient,
            signer=self.secrets.signing,
        )

    async def query(
        self, req: exchange_pb2.ServiceRequest, *, timeout_s: float
    ) -> exchange_pb2.QueryResponse:
        caller = require_caller()
        # The header carries the instant this gateway stops waiting (a little before the caller's
        # deadline, to leave time for recording the outcome), so the provider answers before it.
        deadline = time.time() + timeout_s - min(0.05, timeout_s * 0.05)
        message_id = new_message_id()
        trace_id = telemetry.current_trace_id()
        svc, to = req.service_code, req.target_region
        # Service and region go into the log context only once validated (they are caller text).
        structlog.contextvars.bind_contextvars(message_id=message_id)
        await self.validate(req, caller, message_id, trace_id)
        structlog.contextvars.bind_contextvars(service_code=svc, peer_region=to)
        label_request(svc, to)
        await self.require_nats(message_id, req, trace_id)
        out = Outgoing(message_id, to, svc, trace_id)

        subject = subjects.rpc_subject(to, svc)
        # The PRODUCER span is the one the envelope names as its parent (the traceparent is taken
        # while the header is built inside it), so the provider's CONSUMER span hangs below it.
        with self.tracer.start_as_current_span(
            f"send {subjects.rpc_wildcard(to)}",
            kind=SpanKind.PRODUCER,
            attributes=telemetry.messaging_attributes(subject, message_id, to, svc),
        ):
            with self.metrics.hop(TimedHop.SEAL_SIGN):
                built = self.seal_request(req, caller, message_id=message_id, deadline=deadline)
            await self._record(out, Event.SUBMITTED, Detail(), digest=built.digest)
            try:
                with self.metrics.hop(TimedHop.ROUND_TRIP):
                    reply = await self._request(out, subject, built.data, deadline)
            except TongbanError:
                raise
            except Exception as exc:
                await self._record_internal(out, exc)
                raise
        try:
            with (
                self.tracer.start_as_current_span("gateway.verify_reply"),
                self.metrics.hop(TimedHop.VERIFY_REPLY),
            ):
                verified, problem, receipt = await self._verify_reply(out, reply, built)
            with self.tracer.start_as_current_span("gateway.respond"):
                return await self._respond(out, verified, problem, receipt, built)
        except TongbanError:
            raise
        except Exception as exc:
            await self._record_internal(out, exc)
            raise

    async def _record(self, out: Outgoing, event: Event, detail: Detail, *, digest: bytes = b"") -> None:
        """One entry of this Query's record (every outcome of a Query is recorded, then answered)."""
        await self.ledger.append(
            draft(
                event,
                out.message_id,
                peer=out.to,
                service=out.service,
                digest=digest,
                trace_id=out.trace_id,
                detail=detail,
            )
        )

    async def _fail(
        self, out: Outgoing, event: Event, detail: Detail, error: TongbanError, *, digest: bytes = b""
    ) -> NoReturn:
        """Record an outcome that fails the call, then raise ``error`` to the caller."""
        await self._record(out, event, detail, digest=digest)
        raise error

    async def _record_internal(self, out: Outgoing, exc: Exception) -> None:
        """After SUBMITTED every outcome gets an entry, bugs included (best effort: the ledger
        itself may be what failed)."""
        log.error("query.internal_error", error=type(exc).__name__)
        try:
            await asyncio.shield(self._record(out, Event.REJECTED, Detail(outcome=Reason.INTERNAL)))
        except Exception as again:
            log.error("ledger.append_failed", error=type(again).__name__)

    async def _request(self, out: Outgoing, subject: str, data: bytes, deadline: float) -> bytes:
        remaining = deadline - time.time()
        headers: dict[str, str] = {
            subjects.Header.MESSAGE_ID: out.message_id,
            subjects.Header.FROM_REGION: self.region,
            subjects.Header.TRACEPARENT: telemetry.current_traceparent(),
        }
        try:
            if remaining <= 0:
                raise TimeoutError
            msg = await self.nc.request(subject, data, timeout=remaining, headers=headers)
            return msg.data
        except asyncio.CancelledError:
            # The caller went away (cancelled, or its deadline fired first): the record must still say so.
            await asyncio.shield(self._record(out, Event.EXPIRED, Detail(outcome=Reason.CALLER_CANCELLED)))
            raise
        except _SEND_FAILURES as exc:
            await self._fail(out, *_unanswered(exc, out))

    async def _verify_reply(
        self, out: Outgoing, data: bytes, sent: messages.Built
    ) -> tuple[envelope.Verified, exchange_pb2.Problem | None, envelope_pb2.Receipt | None]:
        """Signature, addressing and receipt of the answer (a response or a signed refusal); an
        answer that fails is recorded, then raised."""
        to, message_id = out.to, out.message_id
        problem: exchange_pb2.Problem | None = None
        receipt: envelope_pb2.Receipt | None = None
        try:
            verified = envelope.verify(data, self.registry, now_s=time.time())
            h = verified.header
            if h.from_region != to or h.to_region != self.region or h.in_reply_to != message_id:
                raise ReplyInvalid("answer is not addressed as a reply to this request")
            if h.kind == envelope_pb2.MESSAGE_KIND_REJECTION:
                try:
                    problem = exchange_pb2.Problem.FromString(verified.body)
                except DecodeError as exc:
                    raise ReplyInvalid("refusal does not decode") from exc
            elif h.kind != envelope_pb2.MESSAGE_KIND_RESPONSE:
                raise ReplyInvalid("answer is neither a response nor a refusal")
            elif h.request_digest != sent.digest:
                raise ReplyInvalid("answer names another request digest")
            elif h.receipt:
                receipt = self.check_receipt(h, sender=to, message_id=message_id, digest=sent.digest)
            else:
                # A connector of an older release (a rolling upgrade): served, without a receipt.
                log.warning("reply.receipt_missing", peer_region=to)
        except (EnvelopeRejected, ReplyInvalid) as exc:
            log.error("reply.invalid", reason=exc.reason)
            await self._fail(
                out,
                Event.REJECTED,
                Detail(outcome=exc.reason, source=Source.REPLY_INVALID),
                ReplyInvalid(f"the answer from {to} failed verification ({exc.reason})"),
                digest=envelope.digest(data),
            )
        return verified, problem, receipt

    async def _respond(
        self,
        out: Outgoing,
        verified: envelope.Verified,
        problem: exchange_pb2.Problem | None,
        receipt: envelope_pb2.Receipt | None,
        sent: messages.Built,
    ) -> exchange_pb2.QueryResponse:
        """Record the verified answer and turn it into the caller's response (or error)."""
        to, h = out.to, verified.header
        if problem is not None:
            # A signed refusal from the region we asked, for our message id. If it names another
            # request digest, what arrived there was not what we sent: the request was altered on
            # the way. A refusal can only make us fail, so it is reported, with that fact.
            altered = h.request_digest != sent.digest
            err = _remote(problem, to)
            if altered:
                err.message += " (the request was altered in transit)"
            detail = Detail(outcome=reason_or(problem.reason, "?"), source=Source.REMOTE, altered=altered)
            await self._fail(out, Event.REJECTED, detail, err, digest=verified.digest)
        try:
            body = exchange_pb2.ResponseBody.FromString(
                messages.open_body(verified, self.secrets.sealing_for(verified.header.recipient_key_id))
            )
        except (EnvelopeRejected, DecodeError):
            await self._fail(
                out,
                Event.REJECTED,
                Detail(outcome="SEAL", source=Source.REPLY_INVALID),
                ReplyInvalid(f"the answer from {to} does not open"),
                digest=verified.digest,
            )
        if self.receipts is not None and receipt is not None:
            await self.receipts.store_receipt(out.message_id, to, receipt.leaf_index, h.receipt)
        if body.WhichOneof("outcome") == "problem":
            detail = Detail(outcome=reason_or(body.problem.reason, "?"))
            await self._fail(out, Event.RESPONDED, detail, _remote(body.problem, to), digest=verified.digest)
        await self._record(out, Event.RESPONDED, Detail(outcome=OK), digest=verified.digest)
        return exchange_pb2.QueryResponse(
            message_id=out.message_id,
            service_code=out.service,
            responder_region=to,
            data=body.data,
            responded_at=body.responded_at,
            request_digest=sent.digest,
            receipt=h.receipt,
            response_digest=verified.digest,
            responder_key_id=verified.signer_key_id,
            trace_id=out.trace_id,
        )


def _unanswered(exc: Exception, out: Outgoing) -> tuple[Event, Detail, TongbanError]:
    """How a request that got no answer (one of :data:`_SEND_FAILURES`) is recorded, and what its
    caller is told."""
    if isinstance(exc, nats.errors.NoRespondersError):
        return (
            Event.REJECTED,
            Detail(outcome=Reason.NO_RESPONDERS),
            Unavailable(
                f"region {out.to} has no connector serving {out.service} right now",
                reason=Reason.NO_RESPONDERS,
            ),
        )
    if isinstance(exc, TimeoutError):
        return (
            Event.EXPIRED,
            Detail(outcome=Reason.NO_REPLY_IN_DEADLINE),
            DeadlineExceeded(f"no answer from region {out.to} within the deadline"),
        )
    return (
        Event.REJECTED,
        Detail(outcome=Reason.NATS_UNAVAILABLE),
        Unavailable("the region's NATS connection is down", reason=Reason.NATS_UNAVAILABLE),
    )


def _remote(problem: exchange_pb2.Problem, region: str) -> RemoteProblem:
    return RemoteProblem(
        message=f"region {region} refused: {problem.message}",
        # Another region's text: only a well-formed reason code goes on, to the partner and the logs.
        remote_reason=reason_or(problem.reason, Reason.REMOTE_PROBLEM.value),
        status=status_from_wire(problem.code).value[0],
        violations=[Violation(v.field, v.description) for v in problem.field_violations],
    )
