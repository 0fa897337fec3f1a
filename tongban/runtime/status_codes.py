"""The one table from a :class:`~tongban.core.errors.Reason` to a gRPC status code.

The gateway answers partners with it (gateway/errors.py), and every signed Problem (the connector's
refusals and back-end failures, the EXPIRED events) is built here with it, so a reason means the same
status wherever it is given.
``tests/runtime/test_status_codes.py`` checks that every reason has a code.
"""

from __future__ import annotations

from types import MappingProxyType

from grpc import StatusCode

from tongban.core.errors import InvalidRequest, Reason, TongbanError
from tongban.v1 import exchange_pb2

_S = StatusCode

STATUS = MappingProxyType(
    {
        Reason.INTERNAL: _S.INTERNAL,
        Reason.INVALID_REQUEST: _S.INVALID_ARGUMENT,
        Reason.NOT_AUTHORISED: _S.PERMISSION_DENIED,
        Reason.UNAVAILABLE: _S.UNAVAILABLE,
        Reason.RATE_LIMITED: _S.RESOURCE_EXHAUSTED,
        Reason.DEADLINE_EXCEEDED: _S.DEADLINE_EXCEEDED,
        Reason.NOT_FOUND: _S.NOT_FOUND,
        Reason.ENVELOPE_INVALID: _S.UNAUTHENTICATED,
        Reason.REGISTRY_INVALID: _S.FAILED_PRECONDITION,
        Reason.CONFIG_INVALID: _S.FAILED_PRECONDITION,
        Reason.REMOTE_PROBLEM: _S.UNKNOWN,
        # envelopes: a body that does not decode is the sender's bug; every other failed check says
        # the sender is not who the envelope claims, or not now
        Reason.ENVELOPE_MALFORMED: _S.INVALID_ARGUMENT,
        Reason.ENVELOPE_TOO_LARGE: _S.RESOURCE_EXHAUSTED,
        Reason.ENVELOPE_UNSIGNED: _S.UNAUTHENTICATED,
        Reason.UNKNOWN_KEY: _S.UNAUTHENTICATED,
        Reason.KEY_NOT_FOR_SIGNING: _S.UNAUTHENTICATED,
        Reason.KEY_REGION_MISMATCH: _S.UNAUTHENTICATED,
        Reason.KEY_REVOKED: _S.UNAUTHENTICATED,
        Reason.KEY_EXPIRED: _S.UNAUTHENTICATED,
        Reason.SIGNATURE_INVALID: _S.UNAUTHENTICATED,
        Reason.UNSUPPORTED_SUITE: _S.UNAUTHENTICATED,
        Reason.WRONG_RECIPIENT: _S.FAILED_PRECONDITION,
        Reason.SEALED_FOR_ANOTHER_KEY: _S.UNAUTHENTICATED,
        Reason.SEAL_INVALID: _S.UNAUTHENTICATED,
        Reason.STALE: _S.UNAUTHENTICATED,
        Reason.FROM_THE_FUTURE: _S.UNAUTHENTICATED,
        Reason.EXPIRED: _S.DEADLINE_EXCEEDED,
        Reason.REPLAYED: _S.ALREADY_EXISTS,
        Reason.KIND_MISMATCH: _S.FAILED_PRECONDITION,
        Reason.HEADER_BODY_MISMATCH: _S.INVALID_ARGUMENT,
        Reason.SUBJECT_MISMATCH: _S.FAILED_PRECONDITION,
        Reason.EVENT_MISMATCH: _S.UNAUTHENTICATED,
        Reason.NOT_AN_EVENT_FOR_US: _S.UNAUTHENTICATED,
        Reason.RECEIPT_INVALID: _S.UNAUTHENTICATED,
        Reason.RECEIPT_MISSING: _S.UNAUTHENTICATED,
        Reason.RECEIPT_MISMATCH: _S.UNAUTHENTICATED,
        # registry and catalogue
        Reason.REGISTRY_SIGNATURE: _S.FAILED_PRECONDITION,
        Reason.REGISTRY_ROLLBACK: _S.FAILED_PRECONDITION,
        Reason.REGION_UNKNOWN: _S.FAILED_PRECONDITION,
        Reason.REGION_EXISTS: _S.ALREADY_EXISTS,
        Reason.KEY_EXISTS: _S.FAILED_PRECONDITION,
        Reason.KEY_NOT_IN_REGISTRY: _S.FAILED_PRECONDITION,
        Reason.NO_SEALING_KEY: _S.UNAVAILABLE,
        Reason.BAD_KEY: _S.FAILED_PRECONDITION,
        Reason.DATA_NOT_SHARED: _S.PERMISSION_DENIED,
        # a partner's call
        Reason.REQUEST_MALFORMED: _S.INVALID_ARGUMENT,
        Reason.UNAUTHENTICATED: _S.UNAUTHENTICATED,
        Reason.TOKEN_MISSING: _S.UNAUTHENTICATED,
        Reason.TOKEN_INVALID: _S.UNAUTHENTICATED,
        Reason.PARTNER_OF_ANOTHER_REGION: _S.PERMISSION_DENIED,
        Reason.MAINTENANCE: _S.UNAVAILABLE,
        Reason.TOO_MANY_IN_FLIGHT: _S.RESOURCE_EXHAUSTED,
        Reason.PARTNER_TOO_MANY_STREAMS: _S.RESOURCE_EXHAUSTED,
        Reason.PARTNER_TOO_MANY_IN_FLIGHT: _S.RESOURCE_EXHAUSTED,
        Reason.GATEWAY_BUSY: _S.RESOURCE_EXHAUSTED,
        Reason.NATS_UNAVAILABLE: _S.UNAVAILABLE,
        Reason.NO_RESPONDERS: _S.UNAVAILABLE,
        Reason.SHUTTING_DOWN: _S.UNAVAILABLE,
        Reason.REPLY_INVALID: _S.DATA_LOSS,
        Reason.IDEMPOTENCY_KEY_REUSED: _S.ALREADY_EXISTS,
        Reason.CASE_NOT_FOUND: _S.NOT_FOUND,
        Reason.CASE_CLOSED: _S.FAILED_PRECONDITION,
        Reason.NO_CHECKPOINT: _S.NOT_FOUND,
        Reason.PEER_UNREACHABLE: _S.UNAVAILABLE,
        Reason.PEER_ANSWER_INVALID: _S.FAILED_PRECONDITION,
        Reason.PEER_REFUSED: _S.FAILED_PRECONDITION,
        Reason.NO_REPLY_IN_DEADLINE: _S.DEADLINE_EXCEEDED,
        Reason.CALLER_CANCELLED: _S.CANCELLED,
        Reason.NOT_DELIVERED_BEFORE_DEADLINE: _S.DEADLINE_EXCEEDED,
        # the receiving region's connector
        Reason.SERVICE_NOT_SERVED: _S.UNIMPLEMENTED,
        Reason.PEER_BUSY: _S.RESOURCE_EXHAUSTED,
        Reason.BACKEND_FAILURE: _S.UNAVAILABLE,
        Reason.BACKEND_TIMEOUT: _S.DEADLINE_EXCEEDED,
        Reason.BACKEND_ERROR: _S.INTERNAL,
        Reason.BACKEND_BUSY: _S.RESOURCE_EXHAUSTED,
        Reason.BACKEND_REFUSED: _S.FAILED_PRECONDITION,
        Reason.BACKEND_CIRCUIT_OPEN: _S.UNAVAILABLE,
        Reason.CATALOGUE_REVISION_UNKNOWN: _S.FAILED_PRECONDITION,
        Reason.DELIVERY_NOT_FOUND: _S.NOT_FOUND,
        # operator tools
        Reason.DEAD_LETTER_NOT_FOUND: _S.NOT_FOUND,
        Reason.NOT_REPLAYABLE: _S.FAILED_PRECONDITION,
    }
)


def status_of(reason: Reason) -> StatusCode:
    """The gRPC status code for ``reason``."""
    return STATUS[reason]


def status_from_wire(value: int) -> StatusCode:
    """The status code a signed Problem names; UNKNOWN for OK or a number gRPC does not define."""
    for code in StatusCode:
        if code.value[0] == value and code is not StatusCode.OK:
            return code
    return StatusCode.UNKNOWN


def problem(reason: Reason, message: str) -> exchange_pb2.Problem:
    """A Problem for ``reason`` with its status code; ``message`` is a fixed text, never caller data."""
    return exchange_pb2.Problem(reason=reason.value, message=message, code=STATUS[reason].value[0])


def problem_of(exc: TongbanError, *, message: str | None = None) -> exchange_pb2.Problem:
    """The Problem that tells a sender about ``exc``: its reason, status, message and violations."""
    out = problem(exc.reason, exc.message if message is None else message)
    if isinstance(exc, InvalidRequest):
        for v in exc.violations:
            out.field_violations.add(field=v.field, description=v.description)
    return out
