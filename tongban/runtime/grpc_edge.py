"""What every tongban gRPC server does at its edge: tongban errors become ``google.rpc.Status``
answers with rich details, and a request that does not decode becomes a defined refusal.

Two servers use it: the gateway's (partners, gateway/interceptors.py) and the connector's back-end
API (the region's own case system, connectors/backend_api/). The status code of a reason comes from
the one table, tongban/runtime/status_codes.py; a signed Problem from another region keeps the code
that region gave.

``google.rpc.Status`` travels in the ``grpc-status-details-bin`` trailer: ``ErrorInfo`` (reason,
domain, metadata) always, ``BadRequest`` field violations for invalid requests, ``RetryInfo`` where
a retry may help.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tongban.core.errors import InvalidRequest, Reason, RemoteProblem, TongbanError
from tongban.runtime.status_codes import status_from_wire, status_of

DOMAIN = "tongban.gov.cn"

_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a


def code_of(exc: TongbanError) -> grpc.StatusCode:
    """The gRPC status code ``exc`` is answered with."""
    return status_from_wire(exc.status) if isinstance(exc, RemoteProblem) else status_of(exc.reason)


def to_status(exc: TongbanError, *, region: str = "") -> grpc.Status:
    """Build the gRPC status (code, message, details) for ``exc``."""
    code = code_of(exc)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=exc.wire_reason, domain=DOMAIN, metadata={"region": region} if region else {}
            )
        )
    ]
    violations = exc.violations if isinstance(exc, InvalidRequest | RemoteProblem) else []
    if violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
        )
    if code in _RETRYABLE:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(max(1, round(getattr(exc, "retry_after_s", 1.0) * 1000)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=exc.message, details=details)
    return rpc_status.to_status(status)


def internal_status(component: str = "gateway") -> grpc.Status:
    """What a caller sees of a bug: a code and a sentence, never a traceback."""
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message=f"internal error; the {component} logged it",
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))],
        )
    )


@dataclass(frozen=True)
class Undecodable:
    """A request message that did not decode: the RPC is refused inside the server's scope
    (authenticated, limited, logged) rather than by gRPC's own ``UNKNOWN`` with a traceback."""

    type_name: str


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize``, returning :class:`Undecodable` instead of raising on bytes that do not decode."""
    if deserialize is None:
        return None
    owner = getattr(deserialize, "__self__", None)
    type_name = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

    def tolerant_deserialize(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, RuntimeError, ValueError):
            return Undecodable(type_name)

    return tolerant_deserialize


def refuse_undecodable(request: Any) -> None:
    """Raise INVALID_ARGUMENT ``REQUEST_MALFORMED`` for a request :func:`tolerant` could not decode."""
    if isinstance(request, Undecodable):
        raise InvalidRequest(
            f"the request does not decode as {request.type_name}", reason=Reason.REQUEST_MALFORMED
        )
