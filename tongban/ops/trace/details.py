"""What a ledger entry's free-text ``detail`` says, as ``tongban trace`` reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tongban.core import outcomes
from tongban.core.message_ids import is_case_no

_REASON: Final = re.compile(r"\breason=(\S+)")
_STATUS: Final = re.compile(r"\bstatus=(\d+)")
_CASE: Final = re.compile(r"\bcase=(\S+)")


@dataclass(frozen=True, slots=True)
class HopDetail:
    """What a hop's detail says (:func:`read_detail`)."""

    failing: bool
    """A failure of the exchange (:func:`tongban.core.outcomes.is_failure`)."""
    succeeded: bool
    """The request reached its region's back end (PROCESSED), was answered OK, or a case status
    came back.

    A Query's PROCESSED with a problem is followed by a failing RESPONDED. The handling region
    writes a STATUS entry for every event it sends, failures included (``seq=1 event=...``); the
    submitting region records a received status as STATUS (``seq=1 status=3 event=...``), a
    failure as the failure's own event."""
    reason: str
    """For a failure: its short reason token (:func:`tongban.core.outcomes.reason`)."""
    outcome: str
    """The ``reason=`` token a PROCESSED detail may carry; "" when it has none."""
    status: str
    """For a STATUS entry: the case status code (``status=<n>``), as written; "" when none."""
    case_no: str
    """The case number the entry names: a SUBMITTED's whole detail, or ``case=...``; "" when none."""


def read_detail(event: str, detail: str) -> HopDetail:
    """Everything ``tongban trace`` reads from an entry's ``detail``, in this one function: the
    detail is free text written by the gateway and the connector, and this is what to change when
    entries carry typed fields instead."""
    found = _STATUS.search(detail) if event == "STATUS" else None
    status = found.group(1) if found else ""
    if event == "RESPONDED":
        succeeded = detail == "OK"
    elif event == "PROCESSED":
        succeeded = detail == "OK" or detail.startswith("case=")
    else:
        succeeded = event == "STATUS" and status not in ("", "0")
    why = _REASON.search(detail)
    if event == "SUBMITTED" and is_case_no(detail):
        case_no = detail
    elif named := _CASE.search(detail):
        case_no = named.group(1)
    else:
        case_no = ""
    return HopDetail(
        failing=outcomes.is_failure(event, detail),
        succeeded=succeeded,
        reason=outcomes.reason(event, detail),
        outcome=why.group(1) if why else "",
        status=status,
        case_no=case_no,
    )
