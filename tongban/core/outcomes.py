"""What a ledger entry says about the outcome of an exchange: one classification for every reader
(``tongban trace``, ``tongban report``; the Grafana dashboard's success rate follows it too).

* A failure: a REJECTED, EXPIRED or DEAD_LETTERED entry, or an answer (RESPONDED, PROCESSED) whose
  detail is a problem reason.
* An answer is a success of the exchange when its detail is ``OK`` or ``NOT_FOUND``: "no such
  record" is the back end's answer, delivered, not a failure of the exchange. A durable request's
  PROCESSED detail (``case=… …``) is a success unless it names a ``reason=``.
"""

from __future__ import annotations

from typing import Final

FAILURE_EVENTS: Final = frozenset({"REJECTED", "EXPIRED", "DEAD_LETTERED"})
ANSWER_EVENTS: Final = frozenset({"RESPONDED", "PROCESSED"})
ANSWERED: Final = frozenset({"OK", "NOT_FOUND"})
"""Details (and metric ``outcome`` labels) of an answered request."""
_QUALIFIED: Final = frozenset({"REMOTE", "REPLY_INVALID", "POISON"})


def answered(detail: str) -> bool:
    """Whether an answer entry's ``detail`` is a success of the exchange."""
    return detail in ANSWERED or (detail.startswith("case=") and "reason=" not in detail)


def is_failure(event: str, detail: str) -> bool:
    """Whether the entry (``event``, ``detail``) records a failure of the exchange."""
    return event in FAILURE_EVENTS or (event in ANSWER_EVENTS and not answered(detail))


def reason(event: str, detail: str) -> str:
    """A short reason token from a failure entry's detail; the event's name when it holds none.

    ``"case=C reason=BACKEND_TIMEOUT"`` and ``"seq=1 status=0 reason=EXPIRED event=..."`` give the
    token after ``reason=``; ``"INVALID_FIELD: request.fields.x"`` gives ``INVALID_FIELD``;
    ``"REMOTE: NOT_AUTHORISED (request altered in transit)"`` gives ``REMOTE:NOT_AUTHORISED``.
    """
    detail = detail.strip()
    if "reason=" in detail:
        token = detail.split("reason=", 1)[1].split()
        return token[0] if token else event
    if not detail or detail.startswith(("case=", "seq=")):
        return event
    head, sep, tail = detail.split(" (", 1)[0].partition(":")
    head = head.strip()
    words = tail.split()
    if sep and head in _QUALIFIED and words:
        return f"{head}:{words[0]}"
    return head or event
