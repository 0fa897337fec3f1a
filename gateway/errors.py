"""The one place where tongban errors become gRPC statuses with rich details.

The status code of a reason comes from the one table, tongban/runtime/status_codes.py; a signed
Problem from another region keeps the code that region gave.

``google.rpc.Status`` travels in the ``grpc-status-details-bin`` trailer: ``ErrorInfo`` (reason,
domain, metadata) always, ``BadRequest`` field violations for invalid forms, ``RetryInfo`` where a
retry may help.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tongban.core.errors import InvalidRequest, RemoteProblem, TongbanError
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


def internal_status() -> grpc.Status:
    """What a caller sees of a bug: a code and a sentence, never a traceback."""
    return rpc_status.to_status(
        status_pb2.Status(
            code=code_pb2.INTERNAL,
            message="internal error; the gateway logged it",
            details=[_pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN))],
        )
    )
