"""Adapters connect a connector to a region's local back-end systems.

An adapter is anything with an async ``call``; the connector finds one per catalogue item code.
Adapters raise :class:`tongban.errors.NotFound` when the back end has no record and
:class:`AdapterFailure` when the back end itself failed; any other exception is a bug and is
reported as INTERNAL without details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpc import StatusCode

from tongban.errors import TongbanError


@dataclass(frozen=True)
class AdapterRequest:
    """What an adapter sees of a verified, opened request.

    Attributes:
        message_id: the exchange's message id (for the back end's own audit log).
        service_code: catalogue item code.
        requester_region: GB/T 2260 code of the region that asked.
        applicant_kind: ``"person"`` or ``"enterprise"``.
        applicant_id: the applicant's ID number or USCC (personal data: do not log).
        applicant_name: the applicant's name if given (personal data: do not log).
        fields: the validated form fields.
        declared_fields: the response fields the requester asked for; the connector removes
            anything else from the answer, so an adapter may return more.
    """

    message_id: str
    service_code: str
    requester_region: str
    applicant_kind: str
    applicant_id: str
    applicant_name: str
    fields: Mapping[str, str]
    declared_fields: tuple[str, ...] = field(default_factory=tuple)


class AdapterFailure(TongbanError):
    """The local back end failed (down, timed out, answered garbage). Transient by default."""

    code = StatusCode.UNAVAILABLE
    reason = "BACKEND_FAILURE"


class Adapter(Protocol):
    """A back-end system behind the connector."""

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        """Answer one request with a JSON-like mapping (str keys; str/int/float/bool/list/dict values)."""
        ...


Handler = Callable[[AdapterRequest], Awaitable[Mapping[str, Any]]]


class CallableAdapter:
    """Adapter around a plain async Python function: the simplest way to wire a local system."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        return await self._handler(request)
