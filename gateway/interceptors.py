"""Cross-cutting concerns of the gateway: per-RPC span, log context, caller identity, limits, error
mapping."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status
from opentelemetry.trace import StatusCode as SpanStatus

from gateway.errors import code_of, internal_status, to_status
from gateway.ratelimit import CallCounter, ConcurrencyLimits, PartnerLimiter
from tongban.core.errors import (
    PermissionDenied,
    RateLimited,
    Reason,
    TongbanError,
    Unauthenticated,
    Unavailable,
)
from tongban.runtime.certs import partner_of
from tongban.runtime.grpc_edge import refuse_undecodable, tolerant
from tongban.runtime.metrics import NO_METRICS, Metrics

log = structlog.get_logger("tongban.gateway")
_ROOT = otel_context.Context()
"""Every RPC starts a trace of its own. A partner's ``traceparent`` is caller text: adopting it would put
caller-chosen bytes (an ID number shaped as a trace id, say) into every log line, ledger entry and span of
the request, and let a partner join or force-sample our traces. It is neither adopted nor kept, not even
as a span link (a link stores the caller's ids verbatim); the answer's ``tongban-trace-id`` metadata
tells the partner which trace is ours, and it correlates from its side."""
TRACE_ID_METADATA = "tongban-trace-id"
"""Initial-metadata key of every answer: the trace id this gateway opened for the call."""
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
"""The one RPC never counted nor refused by the gateway's limits: a load balancer's probe must see
the gateway's health even when partners hold every slot (it answers from memory at once)."""
_UNBOUNDED = ConcurrencyLimits(
    per_connection=1 << 62, unary_per_partner=1 << 62, streams_per_partner=1 << 62, total=1 << 62
)


@dataclass(frozen=True)
class Caller:
    """The authenticated partner system behind an RPC."""

    region: str
    system_id: str


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("tongban_caller", default=None)


def require_caller() -> Caller:
    """The caller the interceptor established for this RPC.

    Raises:
        Unauthenticated: there is none (a handler called outside the interceptor's scope).
    """
    caller = current_caller.get()
    if caller is None:
        raise Unauthenticated("caller is not authenticated")
    return caller


class GatewayInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every tongban RPC (unary and server-streaming): identity, span, log context, limits,
    error mapping, access log.

    Calls in flight are bounded per connection, per partner system (unary calls and streams apart,
    over all its connections) and on the whole gateway (``limits``; gRPC's own server-wide
    ``maximum_concurrent_rpcs`` is not used: it would refuse health checks too). Health ``Check``
    passes untouched and uncounted; health ``Watch`` and reflection streams have no partner
    identity and count against their connection and the gateway.
    """

    def __init__(
        self,
        *,
        region: str,
        dev_mode: bool,
        dev_system_id: str,
        tracer: trace.Tracer,
        limiter: PartnerLimiter | None = None,
        dev_tokens: Sequence[str] = (),
        limits: ConcurrencyLimits | None = None,
        maintenance: Callable[[], bool] = lambda: False,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self._metrics = metrics
        self._maintenance = maintenance
        self.calls = CallCounter(limits or _UNBOUNDED)
        self._dev_tokens = [
            (token.encode(), system) for system, _, token in (t.partition(":") for t in dev_tokens)
        ]
        self._limiter = limiter or PartnerLimiter(0, 1)
        self._region = region
        self._dev_mode = dev_mode
        self._dev_system_id = dev_system_id
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or method == HEALTH_CHECK:
            return handler
        if not method.startswith("/tongban."):
            return self._counted(handler)
        service, _, rpc = method.lstrip("/").partition("/")
        metadata = dict(details.invocation_metadata or ())  # type: ignore[attr-defined]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._scope(service, rpc, metadata, context):
                    refuse_undecodable(request)
                    return await inner(request, context)
                raise AssertionError("unreachable: the scope aborts or returns")

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async with self._scope(service, rpc, metadata, context, stream=True):
                    refuse_undecodable(request)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _initial_metadata(self, span: trace.Span) -> tuple[tuple[str, str], ...]:
        """Every answer names the trace this gateway opened for it (the partner correlates its own
        records with ours by it); a dev gateway's answers also say dev mode."""
        trace_id = format(span.get_span_context().trace_id, "032x")
        return (
            ((TRACE_ID_METADATA, trace_id), ("tongban-mode", "dev"))
            if self._dev_mode
            else ((TRACE_ID_METADATA, trace_id),)
        )

    def _caller(self, context: grpc.aio.ServicerContext, metadata: dict[str, Any]) -> Caller:
        """Dev mode: the system a dev token names, or the configured system when there are no
        tokens. Otherwise the partner the verified client certificate names (the TLS handshake
        already required one from the partner CA)."""
        if self._dev_mode:
            if not self._dev_tokens:
                return Caller(region=self._region, system_id=self._dev_system_id)
            return Caller(region=self._region, system_id=self._token_system(metadata))
        certs = (context.auth_context() or {}).get("x509_pem_cert") or []
        partner = partner_of(certs[0]) if certs else None
        if partner is None:
            raise Unauthenticated(
                "the client certificate names no tongban partner (urn:tongban:partner:<region>:<system>)"
            )
        if partner.region != self._region:
            raise PermissionDenied(
                f"partners of region {partner.region} call their own region's gateway",
                reason=Reason.PARTNER_OF_ANOTHER_REGION,
            )
        structlog.contextvars.bind_contextvars(partner=partner.system_id)
        return Caller(region=partner.region, system_id=partner.system_id)

    def _enter(self, peer: str, partner: str | None, *, stream: bool) -> None:
        """Count an RPC against its client connection (``peer`` is the connection's address), its
        partner and the gateway; beyond a bound, RESOURCE_EXHAUSTED at once rather than an
        unbounded queue."""
        self.calls.enter(peer, partner, stream=stream)

    def _leave(self, peer: str, partner: str | None, *, stream: bool) -> None:
        self.calls.leave(peer, partner, stream=stream)

    def _counted(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """Health Watch and reflection: counted against their connection and the gateway (a stream
        each, whoever opens them), refused beyond the bounds like a tongban RPC."""
        for inner, make in (
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
        ):
            if inner is not None:
                return make(
                    self._held_stream(inner),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler  # no other RPC without a partner is served (health Check is exempt)

    def _held_stream(
        self, inner: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        """``inner`` (a response stream, to one request or to a request stream), held in the counts
        while it runs."""

        async def held(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._held(context):
                async for item in inner(request, context):
                    yield item

        return held

    @contextlib.asynccontextmanager
    async def _held(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        peer = context.peer()
        try:
            self._enter(peer, None, stream=True)
        except RateLimited as exc:
            log.info("rpc.refused", code=code_of(exc).name, reason=exc.wire_reason)
            status = to_status(exc, region=self._region)
            await context.abort(status.code, status.details, status.trailing_metadata)
        try:
            yield
        finally:
            self._leave(peer, None, stream=True)

    def _token_system(self, metadata: dict[str, Any]) -> str:
        scheme, _, token = str(metadata.get("authorization", "")).partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(
                "dev mode with tokens: send authorization: Bearer <token>", reason=Reason.TOKEN_MISSING
            )
        offered = token.encode()
        found = ""
        for known, system in self._dev_tokens:  # compare with every token, in constant time each
            if hmac.compare_digest(known, offered):
                found = system
        if not found:
            raise Unauthenticated("unknown dev token", reason=Reason.TOKEN_INVALID)
        structlog.contextvars.bind_contextvars(partner=found)
        return found

    @contextlib.asynccontextmanager
    async def _scope(
        self,
        service: str,
        rpc: str,
        metadata: dict[str, Any],
        context: grpc.aio.ServicerContext,
        *,
        stream: bool = False,
    ) -> AsyncIterator[None]:
        start = time.perf_counter()
        token = current_caller.set(None)
        entered = False
        with (
            structlog.contextvars.bound_contextvars(rpc=rpc, region=self._region),
            self._tracer.start_as_current_span(
                f"{service}/{rpc}",
                context=_ROOT,
                kind=SpanKind.SERVER,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": service,
                    "rpc.method": rpc,
                    "tongban.region": self._region,
                    "tongban.partner_trace_context": "traceparent" in metadata,
                },
            ) as span,
            self._metrics.request(rpc) as measured,
        ):
            try:
                await context.send_initial_metadata(self._initial_metadata(span))
                caller = self._caller(context, metadata)
                if self._maintenance():
                    raise Unavailable(
                        "this gateway is in maintenance: retry, or use another replica",
                        reason=Reason.MAINTENANCE,
                    )
                current_caller.set(caller)
                self._enter(context.peer(), caller.system_id, stream=stream)
                entered = True
                wait = self._limiter.take(caller.system_id)
                if wait > 0:
                    raise RateLimited(
                        f"{caller.system_id} is over its rate of {self._limiter.rate:g} calls/s",
                        retry_after_s=wait,
                    )
                yield
                log.info("rpc.ok", ms=round((time.perf_counter() - start) * 1000, 2))
            except TongbanError as exc:
                code = code_of(exc)
                measured.outcome = exc.wire_reason
                span.set_status(Status(SpanStatus.ERROR, exc.wire_reason))
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                log.info(
                    "rpc.refused",
                    code=code.name,
                    reason=exc.wire_reason,
                    ms=round((time.perf_counter() - start) * 1000, 2),
                )
                status = to_status(exc, region=self._region)
                await context.abort(status.code, status.details, status.trailing_metadata)
            except (grpc.aio.AbortError, asyncio.CancelledError):
                raise
            except Exception:
                measured.outcome = "INTERNAL"
                span.set_status(Status(SpanStatus.ERROR, "INTERNAL"))
                log.exception("rpc.internal_error")
                status = internal_status()
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if entered:
                    self._leave(context.peer(), caller.system_id, stream=stream)
                current_caller.reset(token)
