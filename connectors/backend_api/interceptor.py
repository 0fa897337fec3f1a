"""What every call of the back-end API goes through: the caller's certificate, the bounds on calls in
flight, the log context, the mapping of errors to statuses, the access log.

The case system authenticates with a client certificate of ``[backend_api] client_ca`` (mutual TLS:
without one the TLS handshake fails); with ``allowed_clients`` set, the certificate's common name
must be one of them. In dev mode the API listens in plaintext and any caller is the case system.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any, Final

import grpc
import structlog

from tongban.core.errors import PermissionDenied, RateLimited, Reason, TongbanError, Unauthenticated
from tongban.runtime.grpc_edge import code_of, internal_status, refuse_undecodable, to_status, tolerant

log = structlog.get_logger("tongban.connector.backend_api")

SERVICE: Final = "tongban.v1.CaseBackend"
MAX_STREAMS: Final = 32
"""WatchDeliveries streams open at once (a case system needs a few: one per worker)."""
MAX_UNARY: Final = 256
"""AckDelivery and ReportStatus calls in flight at once."""
_RETRY_S: Final = 1.0


class BackendApiInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the CaseBackend RPCs (unary and server-streaming); other services (health,
    reflection) pass untouched.

    Args:
        region: the connector's region (in error details and logs).
        mutual_tls: the server requires client certificates (outside dev mode).
        allowed_clients: certificate common names allowed to call (empty: any the CA signed).
    """

    def __init__(self, *, region: str, mutual_tls: bool, allowed_clients: Collection[str] = ()) -> None:
        self._region = region
        self._mutual_tls = mutual_tls
        self._allowed = frozenset(allowed_clients)
        self.streams = 0
        self.unary = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method  # type: ignore[attr-defined]
        if handler is None or not method.startswith(f"/{SERVICE}/"):
            return handler
        rpc = method.rpartition("/")[2]
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                async with self._scope(rpc, context, stream=False):
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
                async with self._scope(rpc, context, stream=True):
                    refuse_undecodable(request)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _client(self, context: grpc.aio.ServicerContext) -> str:
        """The calling system's certificate common name ("" in dev mode)."""
        if not self._mutual_tls:
            return ""
        auth = context.auth_context() or {}
        names = auth.get("x509_common_name") or []
        if not names:
            raise Unauthenticated("no client certificate")
        name = names[0].decode(errors="replace")
        if self._allowed and name not in self._allowed:
            raise PermissionDenied(
                "this client certificate is not among [backend_api] allowed_clients",
                reason=Reason.NOT_AUTHORISED,
            )
        return name

    def _enter(self, *, stream: bool) -> None:
        if stream and self.streams >= MAX_STREAMS:
            raise RateLimited(
                f"{self.streams} WatchDeliveries streams are open (at most {MAX_STREAMS})",
                retry_after_s=_RETRY_S,
                reason=Reason.TOO_MANY_IN_FLIGHT,
            )
        if not stream and self.unary >= MAX_UNARY:
            raise RateLimited(
                f"{self.unary} calls are in flight (at most {MAX_UNARY})",
                retry_after_s=_RETRY_S,
                reason=Reason.TOO_MANY_IN_FLIGHT,
            )
        if stream:
            self.streams += 1
        else:
            self.unary += 1

    def _leave(self, *, stream: bool) -> None:
        if stream:
            self.streams -= 1
        else:
            self.unary -= 1

    @contextlib.asynccontextmanager
    async def _scope(
        self, rpc: str, context: grpc.aio.ServicerContext, *, stream: bool
    ) -> AsyncIterator[None]:
        start = time.perf_counter()
        entered = False
        with structlog.contextvars.bound_contextvars(rpc=rpc, region=self._region, api="backend"):
            try:
                client = self._client(context)
                if client:
                    # A name the CA signed: still only the configured shape of text goes to the log.
                    structlog.contextvars.bind_contextvars(client=client if client in self._allowed else "?")
                self._enter(stream=stream)
                entered = True
                yield
                log.info("rpc.ok", ms=round((time.perf_counter() - start) * 1000, 2))
            except TongbanError as exc:
                log.info("rpc.refused", code=code_of(exc).name, reason=exc.wire_reason)
                status = to_status(exc, region=self._region)
                await context.abort(status.code, status.details, status.trailing_metadata)
            except grpc.aio.AbortError:
                raise
            except Exception:
                log.exception("rpc.internal_error")
                status = internal_status("connector")
                await context.abort(status.code, status.details, status.trailing_metadata)
            finally:
                if entered:
                    self._leave(stream=stream)
