"""What the region's case system may send the back-end API: known codes and statuses, bounded
lengths, no characters that change how text displays.

The case system is the region's own, but it is a separate system on the network: what it sends is
checked before it goes anywhere (into a signed event for another region, the queue, a log). Every
refusal is an :class:`~tongban.core.errors.InvalidRequest` naming each bad field and what is wrong
with it, never the value (:func:`tongban.core.text.unsafe_character`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from connectors.adapters import MissingItem, MissingKind, StatusUpdate
from tongban.core.catalogue import Catalogue
from tongban.core.errors import InvalidRequest, Violation
from tongban.core.message_ids import is_case_no, is_message_id
from tongban.core.text import unsafe_character
from tongban.v1 import backend_pb2, exchange_pb2

MAX_SERVICE_CODES: Final = 64
"""Service codes one WatchDeliveries may name."""
MAX_LEASE_S: Final = 3600
"""The longest lease a watcher may ask for."""
MAX_LOCAL_CODE: Final = 64
"""Characters of the case system's own status code, case number or system name."""
MAX_NOTE: Final = 1000
_REPORT_ID: Final = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
"""A ReportStatus report_id: the case system's own record id."""
"""Characters of a status note."""
MAX_MISSING: Final = 50
"""Missing items in one 补正."""
MAX_MISSING_NAME: Final = 100
MAX_MISSING_REASON: Final = 500

_KINDS: Final[dict[int, MissingKind]] = {
    exchange_pb2.MISSING_ITEM_KIND_MATERIAL: "material",
    exchange_pb2.MISSING_ITEM_KIND_FIELD: "field",
}
_STATUSES: Final = frozenset(exchange_pb2.CaseStatus.values()) - {exchange_pb2.CASE_STATUS_UNSPECIFIED}


def _text(
    out: list[Violation],
    field: str,
    value: str,
    *,
    limit: int,
    identity: bool = False,
    required: bool = False,
) -> None:
    if required and not value:
        out.append(Violation(field, "Required."))
    elif len(value) > limit:
        out.append(Violation(field, f"At most {limit} characters."))
    elif (bad := unsafe_character(value, identity=identity)) is not None:
        out.append(Violation(field, bad))


def _refuse(what: str, violations: list[Violation]) -> None:
    if violations:
        raise InvalidRequest(f"{what}: {len(violations)} field(s) refused", violations=violations)


def watch_filter(request: backend_pb2.WatchDeliveriesRequest, catalogue: Catalogue) -> frozenset[str]:
    """The service codes a watcher asked for (empty: all), each a catalogue item.

    Raises:
        InvalidRequest: too many codes, or one the catalogue does not know.
    """
    out: list[Violation] = []
    codes = list(request.service_codes)
    if len(codes) > MAX_SERVICE_CODES:
        out.append(Violation("service_codes", f"At most {MAX_SERVICE_CODES} codes."))
    else:
        out += [
            Violation(f"service_codes[{i}]", "Not a catalogue item.")
            for i, code in enumerate(codes)
            if catalogue.get(code) is None
        ]
    if request.lease_seconds > MAX_LEASE_S:
        out.append(Violation("lease_seconds", f"At most {MAX_LEASE_S}."))
    _refuse("WatchDeliveries", out)
    return frozenset(codes)


def ack(request: backend_pb2.AckDeliveryRequest) -> None:
    """Raises InvalidRequest for a malformed delivery id, or a local code or system out of bounds."""
    out: list[Violation] = []
    if not is_message_id(request.delivery_id):
        out.append(Violation("delivery_id", "Not a delivery id (the id a Delivery carries)."))
    _text(out, "local_code", request.local_code, limit=MAX_LOCAL_CODE, identity=True)
    _text(out, "local_system", request.local_system, limit=MAX_LOCAL_CODE, identity=True)
    _refuse("AckDelivery", out)


def status_update(request: backend_pb2.ReportStatusRequest) -> StatusUpdate:
    """The checked status update of a ReportStatus.

    Raises:
        InvalidRequest: a malformed case number, a status that is not a CaseStatus (or is
            UNSPECIFIED), missing items with another status than 6 补正（开始）, an unknown item
            kind, or a text out of bounds or with a refused character.
    """
    out: list[Violation] = []
    if not is_case_no(request.case_no):
        out.append(Violation("case_no", "Not a case number (<region>-<yyyymmdd>-<10 characters>)."))
    if request.status not in _STATUSES:
        out.append(Violation("status", "A CaseStatus (BLZT code 1 to 15)."))
    _text(out, "local_code", request.local_code, limit=MAX_LOCAL_CODE, identity=True)
    _text(out, "local_system", request.local_system, limit=MAX_LOCAL_CODE, identity=True)
    _text(out, "note", request.note, limit=MAX_NOTE)
    missing = _missing(out, request.missing)
    if missing and request.status != exchange_pb2.CASE_STATUS_SUPPLEMENT_REQUESTED:
        out.append(Violation("missing", "Only with status 6 (补正（开始）)."))
    if request.report_id and not _REPORT_ID.fullmatch(request.report_id):
        out.append(Violation("report_id", "At most 64 letters, digits and -_.:"))
    _refuse("ReportStatus", out)
    return StatusUpdate(
        int(request.status), request.local_code, request.local_system, request.note, missing=missing
    )


def _missing(out: list[Violation], items: Sequence[exchange_pb2.MissingItem]) -> tuple[MissingItem, ...]:
    if len(items) > MAX_MISSING:
        out.append(Violation("missing", f"At most {MAX_MISSING} items."))
        return ()
    checked = []
    for i, item in enumerate(items):
        kind = _KINDS.get(item.kind)
        if kind is None:
            out.append(Violation(f"missing[{i}].kind", "MATERIAL or FIELD."))
        _text(out, f"missing[{i}].name", item.name, limit=MAX_MISSING_NAME, identity=True, required=True)
        _text(out, f"missing[{i}].reason", item.reason, limit=MAX_MISSING_REASON)
        if kind is not None:
            checked.append(MissingItem(kind, item.name, item.reason))
    return tuple(checked)
