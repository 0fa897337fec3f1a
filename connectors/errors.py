"""Refusals raised while a connector handles one request; each becomes a signed Problem."""

from __future__ import annotations

from tongban.core.errors import Reason, TongbanError


class Refused(TongbanError):
    """The connector refuses the request for ``reason``; its status code comes from the one table
    (tongban/runtime/status_codes.py) when the Problem is built."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message, reason=reason)
