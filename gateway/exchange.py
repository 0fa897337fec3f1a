"""``Exchange.Query``: validate, sign and seal, send to the providing region, verify the answer.

DESIGN.md "The flow of one request", steps 1-3 and 6. Every outcome lands in the region's ledger:
SUBMITTED before the request leaves, then RESPONDED, REJECTED (bad input here, or a refusal from
the other side) or EXPIRED (no answer within the deadline).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import grpc
import nats.errors
import structlog
from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.interceptors import Caller, current_caller
from ledger import Event, LedgerStore
from tongban.core import envelope, messages, subjects
from tongban.core.catalogue import Catalogue, validate_request
from tongban.core.details import OK, Detail, Source
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import (
    DeadlineExceeded,
    InvalidRequest,
    PermissionDenied,
    Reason,
    RemoteProblem,
    TongbanError,
    Unauthenticated,
    Unavailable,
    Violation,
)
from tongban.core.message_ids import new_message_id
from tongban.core.privacy import mask_subject
from tongban.core.receipts import verify_receipt
from tongban.core.registry import Registry
from tongban.runtime import telemetry
from tongban.runtime.config import Config
from tongban.runtime.instruments import TimedHop
from tongban.runtime.metrics import NO_METRICS, Metrics, label_request
from tongban.runtime.node import RegionSecrets
from tongban.runtime.records import draft
from tongban.runtime.status_codes import status_from_wire
from tongban.v1 import envelope_pb2, exchange_pb2, exchange_pb2_grpc

if TYPE_CHECKING:
    from gateway.submit import CaseDesk

log = structlog.get_logger("tongban.gateway")
_REASON = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_SAFE_PATH = re.compile(r"^(time_to_live|request(\.[a-z_]+)*(\.fields\[[a-z][a-z0-9_]{0,63}\])?)$")


class ReceiptKeeper(Protocol):
    async def store_receipt(self, message_id: str, region: str, leaf_index: int, signed: bytes) -> None: ...


class ReplyInvalid(TongbanError):
    """The answer from the other region failed verification: it is discarded, never returned."""

    reason = Reason.REPLY_INVALID


def _ledger_detail(exc: TongbanError) -> Detail:
    """Reason plus offending field paths; a path that could carry caller text is replaced by '?'."""
    paths = [v.field if _SAFE_PATH.match(v.field) else "?" for v in getattr(exc, "violations", [])]
    return Detail(outcome=exc.wire_reason, fields=tuple(paths))


class ExchangeCore:
    """The gateway's request logic, independent of gRPC plumbing."""

    def __init__(
        self,
        cfg: Config,
        *,
        registry: Registry,
        secrets: RegionSecrets,
        catalogue: Catalogue,
        ledger: LedgerStore,
        nc: NATS,
        tracer: trace.Tracer,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.region = cfg.region.code
        self.registry = registry
        self.secrets = secrets
        self.catalogue = catalogue
        self.ledger = ledger
        self.nc = nc
        self.tracer = tracer
        self.receipts: ReceiptKeeper | None = None
        """Where verified receipts are kept (the gateway's case store, once open)."""

    def _check(self, req: exchange_pb2.ServiceRequest, caller: Caller) -> None:
        """Catalogue validation plus the registry's view of region, service and caller."""
        violations: list[Violation] = []
        try:
            validate_request(self.catalogue, req, max_field_length=self.cfg.gateway.max_field_length)
        except InvalidRequest as exc:
            violations.extend(exc.violations)
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
            raise InvalidRequest("request does not match the catalogue", violations)
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

    async def record_rejected(
        self, message_id: str, req: exchange_pb2.ServiceRequest, trace_id: str, exc: TongbanError
    ) -> None:
        """One REJECTED entry for a request refused here. Region and service are caller text: they
        are recorded only when the registry names the region and the catalogue the service (a
        well-formed value is not enough: an ID number is well-formed), else '?'."""
        to = req.target_region if self.registry.region(req.target_region) is not None else "?"
        svc = req.service_code if req.service_code in self.catalogue else "?"
        await self._record(Event.REJECTED, message_id, to, svc, trace_id, _ledger_detail(exc))

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
                await self.record_rejected(message_id, req, trace_id, exc)
                raise

    def seal_request(
        self,
        req: exchange_pb2.ServiceRequest,
        caller: Caller,
        *,
        message_id: str,
        deadline: float,
        case_no: str = "",
    ) -> messages.Built:
        """The signed request envelope, its body sealed to the target region's current key."""
        to = req.target_region
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
        caller = current_caller.get()
        if caller is None:
            raise Unauthenticated("caller is not authenticated")
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
        if not self.nc.is_connected:
            # nats-py would buffer the request while reconnecting and the caller would only see
            # its deadline pass; say at once that the region's bus is down.
            await self._record(
                Event.REJECTED, message_id, to, svc, trace_id, Detail(outcome=Reason.NATS_UNAVAILABLE)
            )
            raise Unavailable("this region's NATS connection is down", reason=Reason.NATS_UNAVAILABLE)

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
            await self._record(Event.SUBMITTED, message_id, to, svc, trace_id, Detail(), digest=built.digest)
            try:
                with self.metrics.hop(TimedHop.ROUND_TRIP):
                    reply = await self._request(subject, built.data, message_id, deadline, to, svc, trace_id)
            except TongbanError:
                raise
            except Exception as exc:
                await self._record_internal(message_id, to, svc, trace_id, exc)
                raise
        try:
            with (
                self.tracer.start_as_current_span("gateway.verify_reply"),
                self.metrics.hop(TimedHop.VERIFY_REPLY),
            ):
                verified, problem, receipt = await self._verify_reply(reply, built, to, svc, trace_id)
            with self.tracer.start_as_current_span("gateway.respond"):
                return await self._respond(verified, problem, receipt, built, to, svc, trace_id)
        except TongbanError:
            raise
        except Exception as exc:
            await self._record_internal(message_id, to, svc, trace_id, exc)
            raise

    async def _record(
        self,
        event: Event,
        message_id: str,
        to: str,
        svc: str,
        trace_id: str,
        detail: Detail,
        *,
        digest: bytes = b"",
    ) -> None:
        """One entry of this Query's record (every outcome of a Query is recorded, then answered)."""
        await self.ledger.append(
            draft(event, message_id, peer=to, service=svc, digest=digest, trace_id=trace_id, detail=detail)
        )

    async def _record_internal(
        self, message_id: str, to: str, svc: str, trace_id: str, exc: Exception
    ) -> None:
        """After SUBMITTED every outcome gets an entry, bugs included (best effort: the ledger
        itself may be what failed)."""
        log.error("query.internal_error", error=type(exc).__name__)
        try:
            await asyncio.shield(
                self._record(Event.REJECTED, message_id, to, svc, trace_id, Detail(outcome=Reason.INTERNAL))
            )
        except Exception as again:
            log.error("ledger.append_failed", error=type(again).__name__)

    async def _request(
        self, subject: str, data: bytes, message_id: str, deadline: float, to: str, svc: str, trace_id: str
    ) -> bytes:
        remaining = deadline - time.time()
        headers: dict[str, str] = {
            subjects.Header.MESSAGE_ID: message_id,
            subjects.Header.FROM_REGION: self.region,
            subjects.Header.TRACEPARENT: telemetry.current_traceparent(),
        }
        try:
            if remaining <= 0:
                raise TimeoutError
            msg = await self.nc.request(subject, data, timeout=remaining, headers=headers)
            return msg.data
        except nats.errors.NoRespondersError as exc:
            await self._record(
                Event.REJECTED, message_id, to, svc, trace_id, Detail(outcome=Reason.NO_RESPONDERS)
            )
            raise Unavailable(
                f"region {to} has no connector serving {svc} right now", reason=Reason.NO_RESPONDERS
            ) from exc
        except (TimeoutError, nats.errors.TimeoutError) as exc:
            await self._record(
                Event.EXPIRED, message_id, to, svc, trace_id, Detail(outcome=Reason.NO_REPLY_IN_DEADLINE)
            )
            raise DeadlineExceeded(f"no answer from region {to} within the deadline") from exc
        except asyncio.CancelledError:
            # The caller went away (cancelled, or its deadline fired first): the record must still say so.
            await asyncio.shield(
                self._record(
                    Event.EXPIRED, message_id, to, svc, trace_id, Detail(outcome=Reason.CALLER_CANCELLED)
                )
            )
            raise
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError,
            nats.errors.OutboundBufferLimitError,
        ) as exc:
            await self._record(
                Event.REJECTED, message_id, to, svc, trace_id, Detail(outcome=Reason.NATS_UNAVAILABLE)
            )
            raise Unavailable("the region's NATS connection is down", reason=Reason.NATS_UNAVAILABLE) from exc

    async def _verify_reply(
        self, data: bytes, sent: messages.Built, to: str, svc: str, trace_id: str
    ) -> tuple[envelope.Verified, exchange_pb2.Problem | None, envelope_pb2.Receipt | None]:
        """Signature, addressing and receipt of the answer (a response or a signed refusal); an
        answer that fails is recorded, then raised."""
        message_id = sent.header.message_id
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
            await self._record(
                Event.REJECTED,
                message_id,
                to,
                svc,
                trace_id,
                Detail(outcome=exc.reason, source=Source.REPLY_INVALID),
                digest=envelope.digest(data),
            )
            log.error("reply.invalid", reason=exc.reason)
            raise ReplyInvalid(f"the answer from {to} failed verification ({exc.reason})") from exc
        return verified, problem, receipt

    async def _respond(
        self,
        verified: envelope.Verified,
        problem: exchange_pb2.Problem | None,
        receipt: envelope_pb2.Receipt | None,
        sent: messages.Built,
        to: str,
        svc: str,
        trace_id: str,
    ) -> exchange_pb2.QueryResponse:
        """Record the verified answer and turn it into the caller's response (or error)."""
        message_id, h = sent.header.message_id, verified.header
        if problem is not None:
            # A signed refusal from the region we asked, for our message id. If it names another
            # request digest, what arrived there was not what we sent: the request was altered on
            # the way. A refusal can only make us fail, so it is reported, with that fact.
            altered = h.request_digest != sent.digest
            reason = problem.reason if _REASON.match(problem.reason) else "?"
            await self._record(
                Event.REJECTED,
                message_id,
                to,
                svc,
                trace_id,
                Detail(outcome=reason, source=Source.REMOTE, altered=altered),
                digest=verified.digest,
            )
            err = _remote(problem, to)
            if altered:
                err.message += " (the request was altered in transit)"
            raise err
        try:
            body = exchange_pb2.ResponseBody.FromString(
                messages.open_body(verified, self.secrets.sealing_for(verified.header.recipient_key_id))
            )
        except (EnvelopeRejected, DecodeError) as exc:
            await self._record(
                Event.REJECTED,
                message_id,
                to,
                svc,
                trace_id,
                Detail(outcome="SEAL", source=Source.REPLY_INVALID),
                digest=verified.digest,
            )
            raise ReplyInvalid(f"the answer from {to} does not open") from exc
        if self.receipts is not None and receipt is not None:
            await self.receipts.store_receipt(message_id, to, receipt.leaf_index, h.receipt)
        if body.WhichOneof("outcome") == "problem":
            reason = body.problem.reason if _REASON.match(body.problem.reason) else "?"
            await self._record(
                Event.RESPONDED, message_id, to, svc, trace_id, Detail(outcome=reason), digest=verified.digest
            )
            raise _remote(body.problem, to)
        await self._record(
            Event.RESPONDED, message_id, to, svc, trace_id, Detail(outcome=OK), digest=verified.digest
        )
        return exchange_pb2.QueryResponse(
            message_id=message_id,
            service_code=svc,
            responder_region=to,
            data=body.data,
            responded_at=body.responded_at,
            request_digest=sent.digest,
            receipt=h.receipt,
            response_digest=verified.digest,
            responder_key_id=verified.signer_key_id,
            trace_id=trace_id,
        )


def _remote(problem: exchange_pb2.Problem, region: str) -> RemoteProblem:
    return RemoteProblem(
        message=f"region {region} refused: {problem.message}",
        # Another region's text: only a well-formed reason code goes on, to the partner and the logs.
        remote_reason=problem.reason if _REASON.match(problem.reason) else Reason.REMOTE_PROBLEM.value,
        status=status_from_wire(problem.code).value[0],
        violations=[Violation(v.field, v.description) for v in problem.field_violations],
    )


class ExchangeService(exchange_pb2_grpc.ExchangeServicer):
    """gRPC binding of :class:`ExchangeCore` and the case desk (deadline handling only; errors map
    in the interceptor)."""

    def __init__(self, core: ExchangeCore, desk: CaseDesk) -> None:
        self.core = core
        self.desk = desk

    async def Submit(
        self, request: exchange_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.SubmitResponse:
        return await self.desk.submit(request)

    async def GetCase(
        self, request: exchange_pb2.GetCaseRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.GetCaseResponse:
        return exchange_pb2.GetCaseResponse(case=await self.desk.get_case(request.case_no))

    async def WatchCase(  # type: ignore[override]
        self, request: exchange_pb2.WatchCaseRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[exchange_pb2.WatchCaseResponse]:
        async for event in self.desk.watch_case(request.case_no, request.after_sequence):
            yield exchange_pb2.WatchCaseResponse(event=event)

    async def Query(
        self, request: exchange_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.QueryResponse:
        gw = self.core.cfg.gateway
        remaining = context.time_remaining()
        timeout = gw.default_deadline_s if remaining is None else min(remaining, gw.max_deadline_s)
        return await self.core.query(request.request, timeout_s=timeout)
