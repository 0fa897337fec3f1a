"""What a ledger entry's typed ``detail`` says, as ``tongban trace`` reads it."""

from __future__ import annotations

from dataclasses import dataclass

from tongban.core import outcomes
from tongban.core.details import OK, Detail
from tongban.core.message_ids import is_case_no


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
    """The reason a case record names (a durable request's PROCESSED, a status event); "" when
    it names none."""
    status: str
    """For a STATUS entry: the case status code it carries, in decimal; "" when none."""
    case_no: str
    """The case number the entry names; "" when none."""
    text: str
    """The detail as operators read it (:meth:`Detail.render`)."""


def read_detail(event: str, detail: str) -> HopDetail:
    """Everything ``tongban trace`` reads from an entry's ``detail``, in this one function: the typed
    detail (:class:`tongban.core.details.Detail`), whichever release wrote the entry."""
    d = Detail.decode(detail, event=event)
    status = str(d.status) if event == "STATUS" and d.status is not None else ""
    if event == "RESPONDED":
        succeeded = d.outcome == OK
    elif event == "PROCESSED":
        succeeded = d.outcome == OK or bool(d.case_no)
    else:
        succeeded = event == "STATUS" and status not in ("", "0")
    case_no = d.case_no if event != "SUBMITTED" or is_case_no(d.case_no) else ""
    return HopDetail(
        failing=outcomes.is_failure(event, d),
        succeeded=succeeded,
        reason=outcomes.reason(event, d),
        outcome=d.outcome if d.case_no or d.seq is not None else "",
        status=status,
        case_no=case_no,
        text=d.render(event=event),
    )
