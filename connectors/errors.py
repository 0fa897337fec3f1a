"""Refusals raised while a connector handles one request; each becomes a signed Problem."""

from __future__ import annotations

from grpc import StatusCode

from tongban.core.errors import TongbanError


class Refused(TongbanError):
    """The connector refuses the request for ``reason`` (mapped to ``code`` at the caller)."""

    def __init__(self, reason: str, message: str, code: StatusCode) -> None:
        super().__init__(message, reason=reason, code=code)
