"""Error tree of the tongban core, and the one vocabulary of reasons.

Handlers raise these; they never choose a gRPC status. The gateway maps a :class:`Reason` to a status
code in one table (tongban/runtime/status_codes.py, shared with the connector's signed Problems).
Every error carries a machine-readable ``reason`` (the ``ErrorInfo.reason`` and the ``Problem.reason``
on the wire, the outcome label of a metric, the reason field of a ledger detail) and never personal data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final


class Reason(StrEnum):
    """Every reason tongban itself gives; the value is the wire string (UPPER_SNAKE, ≤ 64 characters).

    A reason another region gave (a signed Problem) is that region's vocabulary, not this one:
    :class:`RemoteProblem` carries it as checked text.
    """

    # -- the general classes ------------------------------------------------------------------------
    INTERNAL = "INTERNAL"
    INVALID_REQUEST = "INVALID_REQUEST"
    NOT_AUTHORISED = "NOT_AUTHORISED"
    UNAVAILABLE = "UNAVAILABLE"
    RATE_LIMITED = "RATE_LIMITED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    NOT_FOUND = "NOT_FOUND"
    ENVELOPE_INVALID = "ENVELOPE_INVALID"
    REGISTRY_INVALID = "REGISTRY_INVALID"
    CONFIG_INVALID = "CONFIG_INVALID"
    REMOTE_PROBLEM = "REMOTE_PROBLEM"

    # -- envelopes: the exact check that failed -----------------------------------------------------
    ENVELOPE_MALFORMED = "ENVELOPE_MALFORMED"
    ENVELOPE_TOO_LARGE = "ENVELOPE_TOO_LARGE"
    ENVELOPE_UNSIGNED = "ENVELOPE_UNSIGNED"
    UNKNOWN_KEY = "UNKNOWN_KEY"
    KEY_NOT_FOR_SIGNING = "KEY_NOT_FOR_SIGNING"
    KEY_REGION_MISMATCH = "KEY_REGION_MISMATCH"
    KEY_REVOKED = "KEY_REVOKED"
    KEY_EXPIRED = "KEY_EXPIRED"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    UNSUPPORTED_SUITE = "UNSUPPORTED_SUITE"
    WRONG_RECIPIENT = "WRONG_RECIPIENT"
    SEALED_FOR_ANOTHER_KEY = "SEALED_FOR_ANOTHER_KEY"
    SEAL_INVALID = "SEAL_INVALID"
    STALE = "STALE"
    FROM_THE_FUTURE = "FROM_THE_FUTURE"
    EXPIRED = "EXPIRED"
    REPLAYED = "REPLAYED"
    """A request message id this region has received before (on either path)."""
    KIND_MISMATCH = "KIND_MISMATCH"
    """An envelope of one kind on the path of another (a case request on the query subject, or the
    reverse)."""
    HEADER_BODY_MISMATCH = "HEADER_BODY_MISMATCH"
    """The sealed body names another service or message than the signed header."""
    SUBJECT_MISMATCH = "SUBJECT_MISMATCH"
    """A request on a NATS subject that is not the one its signed header names."""
    EVENT_MISMATCH = "EVENT_MISMATCH"
    NOT_AN_EVENT_FOR_US = "NOT_AN_EVENT_FOR_US"
    RECEIPT_INVALID = "RECEIPT_INVALID"
    RECEIPT_MISSING = "RECEIPT_MISSING"
    RECEIPT_MISMATCH = "RECEIPT_MISMATCH"

    # -- the trust registry and the catalogue -------------------------------------------------------
    REGISTRY_SIGNATURE = "REGISTRY_SIGNATURE"
    REGISTRY_ROLLBACK = "REGISTRY_ROLLBACK"
    REGION_UNKNOWN = "REGION_UNKNOWN"
    REGION_EXISTS = "REGION_EXISTS"
    KEY_EXISTS = "KEY_EXISTS"
    KEY_NOT_IN_REGISTRY = "KEY_NOT_IN_REGISTRY"
    """An operator named a key id the registry does not list (``tongban keys``)."""
    NO_SEALING_KEY = "NO_SEALING_KEY"
    """The registry lists no valid sealing key for the receiving region: nothing can be sealed to it."""
    BAD_KEY = "BAD_KEY"
    DATA_NOT_SHARED = "DATA_NOT_SHARED"

    # -- a partner's call at the gateway ------------------------------------------------------------
    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    TOKEN_MISSING = "TOKEN_MISSING"
    TOKEN_INVALID = "TOKEN_INVALID"
    PARTNER_OF_ANOTHER_REGION = "PARTNER_OF_ANOTHER_REGION"
    MAINTENANCE = "MAINTENANCE"
    TOO_MANY_IN_FLIGHT = "TOO_MANY_IN_FLIGHT"
    PARTNER_TOO_MANY_STREAMS = "PARTNER_TOO_MANY_STREAMS"
    PARTNER_TOO_MANY_IN_FLIGHT = "PARTNER_TOO_MANY_IN_FLIGHT"
    GATEWAY_BUSY = "GATEWAY_BUSY"
    NATS_UNAVAILABLE = "NATS_UNAVAILABLE"
    NO_RESPONDERS = "NO_RESPONDERS"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    REPLY_INVALID = "REPLY_INVALID"
    """The receiving region's answer failed verification: the data may be lost."""
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    CASE_NOT_FOUND = "CASE_NOT_FOUND"
    CASE_CLOSED = "CASE_CLOSED"
    NO_CHECKPOINT = "NO_CHECKPOINT"
    PEER_UNREACHABLE = "PEER_UNREACHABLE"
    PEER_ANSWER_INVALID = "PEER_ANSWER_INVALID"
    PEER_REFUSED = "PEER_REFUSED"
    NO_REPLY_IN_DEADLINE = "NO_REPLY_IN_DEADLINE"
    """A Query's deadline passed with no answer from the receiving region (a ledger outcome; the
    caller is told DEADLINE_EXCEEDED)."""
    CALLER_CANCELLED = "CALLER_CANCELLED"
    """The partner went away before the answer came (a ledger outcome)."""
    NOT_DELIVERED_BEFORE_DEADLINE = "NOT_DELIVERED_BEFORE_DEADLINE"
    """A case waited in the outbox past its deadline (a ledger outcome)."""

    # -- the receiving region's connector -----------------------------------------------------------
    SERVICE_NOT_SERVED = "SERVICE_NOT_SERVED"
    PEER_BUSY = "PEER_BUSY"
    BACKEND_FAILURE = "BACKEND_FAILURE"
    BACKEND_TIMEOUT = "BACKEND_TIMEOUT"
    BACKEND_ERROR = "BACKEND_ERROR"
    BACKEND_BUSY = "BACKEND_BUSY"
    """The back end said it is overloaded (HTTP 429 or 503) and retries did not get through."""
    BACKEND_REFUSED = "BACKEND_REFUSED"
    """The back end refused the request on its merits (HTTP 409 or 422): a business refusal."""
    BACKEND_CIRCUIT_OPEN = "BACKEND_CIRCUIT_OPEN"
    """The back end failed too often lately: calls are not attempted until its cool-down ends."""
    CATALOGUE_REVISION_UNKNOWN = "CATALOGUE_REVISION_UNKNOWN"
    """The request names a catalogue revision this region does not hold (yet)."""
    DELIVERY_NOT_FOUND = "DELIVERY_NOT_FOUND"
    """The back-end API knows no delivery with this id."""

    # -- operator tools -----------------------------------------------------------------------------
    DEAD_LETTER_NOT_FOUND = "DEAD_LETTER_NOT_FOUND"
    NOT_REPLAYABLE = "NOT_REPLAYABLE"


_REASON_CODE: Final = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def is_reason_code(text: str) -> bool:
    """Whether ``text`` has the shape of a reason code (UPPER_SNAKE, at most 64 characters): what a
    reason from elsewhere (another region's Problem, a dead letter's header) must be before it goes
    into a log, a metric label or a ledger detail."""
    return _REASON_CODE.fullmatch(text) is not None


def reason_or(text: str, otherwise: str) -> str:
    """``text`` when it is a reason code (:func:`is_reason_code`), else ``otherwise``."""
    return text if is_reason_code(text) else otherwise


@dataclass(frozen=True)
class Violation:
    """One bad field of a request: the field path and what is wrong with it (never its value)."""

    field: str
    description: str


class TongbanError(Exception):
    """Root of all tongban errors.

    Attributes:
        message: one sentence for the caller; never personal data.
        reason: what went wrong, from :class:`Reason`; each subclass has a default.
    """

    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    @property
    def wire_reason(self) -> str:
        """The reason as it goes on the wire, into a metric label or a ledger detail."""
        return self.reason.value


class InvalidRequest(TongbanError):
    """The request breaks the catalogue or the contract; carries field violations."""

    reason = Reason.INVALID_REQUEST

    def __init__(
        self, message: str, *, violations: list[Violation] | None = None, reason: Reason | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations: list[Violation] = list(violations or [])


class PermissionDenied(TongbanError):
    """The registry does not allow this caller, service or region."""

    reason = Reason.NOT_AUTHORISED


class Unauthenticated(TongbanError):
    """The caller did not prove who it is (no or a bad client certificate or token)."""

    reason = Reason.UNAUTHENTICATED


class Unavailable(TongbanError):
    """The receiving region, its connector, or a local dependency cannot be reached."""

    reason = Reason.UNAVAILABLE


class RateLimited(TongbanError):
    """A partner called more often than its rate allows; ``retry_after_s`` says when to try again."""

    reason = Reason.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: float, reason: Reason | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TongbanError):
    """The caller's deadline passed before the answer arrived."""

    reason = Reason.DEADLINE_EXCEEDED


class NotFound(TongbanError):
    """The providing back end has no record for the request."""

    reason = Reason.NOT_FOUND


class EnvelopeError(TongbanError):
    """An envelope failed to decode, verify or open. ``reason`` names the exact check."""

    reason = Reason.ENVELOPE_INVALID


class RegistryError(TongbanError):
    """The trust registry document is missing, unsigned, badly signed or older than ours."""

    reason = Reason.REGISTRY_INVALID


class ConfigError(TongbanError):
    """The configuration file or environment is wrong."""

    reason = Reason.CONFIG_INVALID


@dataclass(kw_only=True)
class RemoteProblem(TongbanError):
    """The receiving region refused or failed the request and said so in a signed Problem.

    Attributes:
        message: the Problem's message, as checked by the receiver of it.
        remote_reason: the other region's reason (checked to be UPPER_SNAKE; its vocabulary may be
            newer than ours).
        status: the numeric gRPC status code the other region chose, checked to be a known code.
        violations: the Problem's field violations.
    """

    message: str
    remote_reason: str = Reason.REMOTE_PROBLEM.value
    status: int = 2
    violations: list[Violation] = field(default_factory=list)
    reason: Reason = Reason.REMOTE_PROBLEM

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    @property
    def wire_reason(self) -> str:
        return self.remote_reason
