"""What a ledger entry says about the outcome of an exchange: one classification for every reader
(``tongban trace``, ``tongban report``; the Grafana dashboard's success rate follows it too).

* A failure: a REJECTED, EXPIRED or DEAD_LETTERED entry, or an answer (RESPONDED, PROCESSED) whose
  detail names a problem reason.
* An answer is a success of the exchange when its outcome is ``OK`` or ``NOT_FOUND``: "no such
  record" is the back end's answer, delivered, not a failure of the exchange. A durable request's
  PROCESSED entry (it names its case) is a success unless it names a reason.

Readers pass the entry's :class:`~tongban.core.details.Detail` (``Detail.decode(entry.detail,
event=entry.event)``), never its text.
"""

from __future__ import annotations

from typing import Final

from tongban.core.details import ANSWERED, Detail, Source

FAILURE_EVENTS: Final = frozenset({"REJECTED", "EXPIRED", "DEAD_LETTERED"})
ANSWER_EVENTS: Final = frozenset({"RESPONDED", "PROCESSED"})
_QUALIFIED: Final = frozenset({Source.REMOTE, Source.REPLY_INVALID, Source.POISON})
"""Sources whose name is part of the reason a reader shows (``REMOTE:NOT_AUTHORISED``)."""

__all__ = ["ANSWERED", "ANSWER_EVENTS", "FAILURE_EVENTS", "answered", "is_failure", "reason"]


def answered(detail: Detail) -> bool:
    """Whether an answer entry's detail is a success of the exchange."""
    return detail.outcome in ANSWERED or (bool(detail.case_no) and not detail.outcome)


def is_failure(event: str, detail: Detail) -> bool:
    """Whether the entry (``event``, ``detail``) records a failure of the exchange."""
    return event in FAILURE_EVENTS or (event in ANSWER_EVENTS and not answered(detail))


def reason(event: str, detail: Detail) -> str:
    """A short reason token of a failure entry; the event's name when it names none.

    ``BACKEND_TIMEOUT`` for a case that names it, ``INVALID_FIELD`` for a refusal with field paths,
    ``REMOTE:NOT_AUTHORISED`` for the other region's signed refusal.
    """
    if not detail.outcome:
        return event
    if detail.source in _QUALIFIED:
        return f"{detail.source}:{detail.outcome}"
    return detail.source or detail.outcome
