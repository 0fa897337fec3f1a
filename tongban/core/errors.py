"""Error tree of the tongban core.

Handlers raise these; the gRPC edge (gateway/errors.py) maps them to ``google.rpc.Status`` in one
place. Every error carries a machine-readable ``reason`` (the ``ErrorInfo.reason`` and the
``Problem.reason`` on the wire) and never personal data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from grpc import StatusCode


@dataclass(frozen=True)
class Violation:
    """One bad field of a request: the field path and what is wrong with it (never its value)."""

    field: str
    description: str


class TongbanError(Exception):
    """Root of all tongban errors.

    Attributes:
        reason: UPPER_SNAKE machine-readable reason.
        code: the gRPC status this error maps to at the edge.
    """

    code: StatusCode = StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, code: StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        if code is not None:
            self.code = code


class InvalidRequest(TongbanError):
    """The request breaks the catalogue or the contract; carries field violations."""

    code = StatusCode.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(self, message: str, violations: list[Violation] | None = None, *, reason: str | None = None):
        super().__init__(message, reason=reason)
        self.violations: list[Violation] = list(violations or [])


class PermissionDenied(TongbanError):
    """The registry does not allow this caller, service or region."""

    code = StatusCode.PERMISSION_DENIED
    reason = "NOT_AUTHORISED"


class Unavailable(TongbanError):
    """The receiving region, its connector, or a local dependency cannot be reached."""

    code = StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class RateLimited(TongbanError):
    """A partner called more often than its rate allows; ``retry_after_s`` says when to try again."""

    code = StatusCode.RESOURCE_EXHAUSTED
    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TongbanError):
    """The caller's deadline passed before the answer arrived."""

    code = StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class NotFound(TongbanError):
    """The providing back end has no record for the request."""

    code = StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class EnvelopeError(TongbanError):
    """An envelope failed to decode, verify or open. ``reason`` names the exact check."""

    code = StatusCode.UNAUTHENTICATED
    reason = "ENVELOPE_INVALID"


class RegistryError(TongbanError):
    """The trust registry document is missing, unsigned, badly signed or older than ours."""

    code = StatusCode.FAILED_PRECONDITION
    reason = "REGISTRY_INVALID"


class ConfigError(TongbanError):
    """The configuration file or environment is wrong."""

    code = StatusCode.FAILED_PRECONDITION
    reason = "CONFIG_INVALID"


@dataclass
class RemoteProblem(TongbanError):
    """The receiving region refused or failed the request and said so in a signed Problem."""

    message: str
    reason: str = "REMOTE_PROBLEM"
    code: StatusCode = StatusCode.UNKNOWN
    violations: list[Violation] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)
