"""Adapters connect a connector to a region's local back-end systems.

An adapter is anything with an async ``call``; the connector finds one per catalogue item code.
Adapters raise :class:`tongban.core.errors.NotFound` when the back end has no record and
:class:`AdapterFailure` when the back end itself failed; any other exception is a bug and is
reported as INTERNAL without details.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from tongban.core import messages
from tongban.core.errors import NotFound, Reason, TongbanError
from tongban.v1 import envelope_pb2, exchange_pb2


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
        case_no: the case number of a Submit; with ``message_id`` it is the back end's
            idempotency key (a redelivered request after a crash carries the same one).
    """

    message_id: str
    service_code: str
    requester_region: str
    applicant_kind: str
    applicant_id: str
    applicant_name: str
    fields: Mapping[str, str]
    declared_fields: tuple[str, ...] = field(default_factory=tuple)
    case_no: str = ""
    """Case number of a Submit (empty for Query)."""
    deadline: float = 0.0
    """The request's deadline (epoch seconds; 0: none): a back-end call must end before it."""
    origin_system: str = ""
    """The partner system that sent the request in the requesting region."""
    purpose: str = ""
    """The request's purpose code (e.g. KSTB_CASE_HANDLING)."""
    applicant_phone: str = ""
    """The applicant's mobile phone if given (personal data: do not log)."""


class AdapterFailure(TongbanError):
    """The local back end failed (down, timed out, answered garbage). Transient by default."""

    reason = Reason.BACKEND_FAILURE


class Adapter(Protocol):
    """A back-end system behind the connector."""

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        """Answer one request with a JSON-like mapping (str keys; str/int/float/bool/list/dict values)."""
        ...


_KIND_NAMES = {
    exchange_pb2.APPLICANT_KIND_PERSON: "person",
    exchange_pb2.APPLICANT_KIND_ENTERPRISE: "enterprise",
}


def adapter_request(header: envelope_pb2.Header, request: exchange_pb2.ServiceRequest) -> AdapterRequest:
    """What the adapter sees of a verified, opened request (header) and its sealed body (request)."""
    return AdapterRequest(
        message_id=header.message_id,
        service_code=header.service_code,
        requester_region=header.from_region,
        applicant_kind=_KIND_NAMES.get(request.applicant.kind, "unknown"),
        applicant_id=request.applicant.id_no,
        applicant_name=request.applicant.name,
        fields=dict(request.fields),
        declared_fields=tuple(request.governance.declared_fields),
        case_no=header.case_no,
        deadline=messages.seconds(header.deadline) if header.HasField("deadline") else 0.0,
        origin_system=header.origin_system,
        purpose=header.purpose,
        applicant_phone=request.applicant.phone,
    )


MissingKind = Literal["material", "field"]
"""What a 补正 request asks for: a material (申请材料) the handling region names, or a form field."""


@dataclass(frozen=True)
class MissingItem:
    """One thing a 补正 (status 6) asks the applicant to supply."""

    kind: MissingKind
    name: str
    """The material's name or the form field's name."""
    reason: str = ""
    """Why it is needed, or what is wrong with what was given."""


@dataclass(frozen=True)
class StatusUpdate:
    """One case status the back end reports (BLZT code plus its own code and system)."""

    status: int
    local_code: str = ""
    local_system: str = ""
    note: str = ""
    missing: tuple[MissingItem, ...] = ()
    """With status 6 补正（开始）: what the applicant must supply (sealed on its way back)."""


@runtime_checkable
class CaseAdapter(Protocol):
    """A back end that takes cases (Submit). It must be idempotent on ``request.message_id``: after
    a connector crash between the back-end call and its own record, the same request comes again."""

    async def submit_case(self, request: AdapterRequest) -> Sequence[StatusUpdate]:
        """Take the case; return the statuses it reached so far, in order (e.g. 1 已接件, 3 已受理)."""
        ...


Handler = Callable[[AdapterRequest], Awaitable[Mapping[str, Any]]]


class CallableAdapter:
    """Adapter around a plain async Python function: the simplest way to wire a local system."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        return await self._handler(request)


async def submit_via_call(
    adapter: Adapter, request: AdapterRequest, *, local_system: str = ""
) -> list[StatusUpdate]:
    """A Submit to a back end that only answers data checks (秒批, instant approval by data check):
    a record found is 1 已接件 → 3 已受理 → 11 办结（通过）; no record, or the back end's business
    refusal (BACKEND_REFUSED), is 1 已接件 → 5 不予受理. Other back-end failures propagate (and are
    retried by the connector)."""
    try:
        await adapter.call(request)
    except NotFound:
        return [
            StatusUpdate(1, "SJ", local_system, "已接件"),
            StatusUpdate(5, "BYSL", local_system, "不予受理：未查到相关记录"),
        ]
    except AdapterFailure as exc:
        if exc.reason != Reason.BACKEND_REFUSED:
            raise
        # A business refusal (HTTP 409/422) is an answer, not a failure to retry.
        return [
            StatusUpdate(1, "SJ", local_system, "已接件"),
            StatusUpdate(5, "BYSL", local_system, "不予受理：业务系统不予办理"),
        ]
    return [
        StatusUpdate(1, "SJ", local_system, "已接件"),
        StatusUpdate(3, "SL", local_system, "已受理"),
        StatusUpdate(11, "BJ", local_system, "办结（通过）"),
    ]
