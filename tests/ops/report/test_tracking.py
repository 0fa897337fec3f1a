"""Requests from entries (tongban/ops/report/tracking.py): what the report reads from an entry's
detail (its one reader, ``read_detail``), and a message's creation time from its id."""

from __future__ import annotations

import pytest

from ledger.entry import Entry, EntryDraft, Event, seal
from tongban.core.message_ids import new_message_id
from tongban.core.outcomes import ANSWER_EVENTS
from tongban.ops.report import failure_reason
from tongban.ops.report.tracking import message_created_ns, read_detail

SZ, WX, PENSION_QUERY = "440300", "320200", "SBJFJLCX0001"


def entry(event: Event, detail: str) -> Entry:
    return seal(
        EntryDraft(event, "m", WX, PENSION_QUERY, b"", "", detail, 1), index=0, region=SZ, prev_hash=bytes(32)
    )


@pytest.mark.parametrize(
    ("event", "detail", "reason"),
    [
        (Event.RESPONDED, "BACKEND_TIMEOUT", "BACKEND_TIMEOUT"),
        (Event.REJECTED, "INVALID_FIELD: request.fields.a,request.fields.b", "INVALID_FIELD"),
        (Event.REJECTED, "REMOTE: NOT_AUTHORISED (request altered in transit)", "REMOTE:NOT_AUTHORISED"),
        (Event.REJECTED, "REPLY_INVALID: SEAL", "REPLY_INVALID:SEAL"),
        (Event.DEAD_LETTERED, "case=C1 reason=BACKEND_FAILURE", "BACKEND_FAILURE"),
        (Event.EXPIRED, "seq=1 status=0 reason=EXPIRED event=x", "EXPIRED"),
        (Event.REJECTED, "case=C1", "REJECTED"),
        (Event.EXPIRED, "", "EXPIRED"),
    ],
)
def test_failure_reasons(event: Event, detail: str, reason: str) -> None:
    assert failure_reason(entry(event, detail)) == reason


@pytest.mark.parametrize(
    ("event", "detail", "opens_case", "about_case_event", "answered"),
    [
        (Event.SUBMITTED, "", False, False, False),  # a query
        (Event.SUBMITTED, "440300-20260301-7K3M9Q2XWA", True, False, False),  # a case: its number
        (Event.RECEIVED, "", False, False, False),
        (Event.RECEIVED, "case=440300-20260301-7K3M9Q2XWA", True, False, True),
        (Event.RESPONDED, "OK", False, False, True),
        (Event.RESPONDED, "NOT_FOUND", False, False, True),  # "no such record" is an answer
        (Event.RESPONDED, "BACKEND_TIMEOUT", False, False, False),
        (Event.PROCESSED, "case=C1", True, False, True),
        (Event.PROCESSED, "case=C1 reason=BACKEND_TIMEOUT", True, False, False),
        (Event.REJECTED, "EVENT: seq=2 SIGNATURE_INVALID", False, True, False),  # not a request's
    ],
)
def test_what_the_report_reads_from_a_detail(
    event: Event, detail: str, opens_case: bool, about_case_event: bool, answered: bool
) -> None:
    """The facts the report takes from a detail written before details were typed (the stored form
    of typed details: tests/core/test_details.py)."""
    said = read_detail(entry(event, detail))
    assert (said.opens_case, said.about_case_event) == (opens_case, about_case_event)
    if event in ANSWER_EVENTS:  # whether an answer was a success is asked of answers only
        assert said.answered is answered


def test_a_message_ids_creation_time_is_its_ulid_time() -> None:
    for ms in (0, 1, 1_772_000_000_123, (1 << 48) - 1):
        assert message_created_ns(new_message_id(ms)) == ms * 1_000_000
    # Not message ids: a connector's name for an envelope without one, a short or lower-case id.
    for other in ("sha256:0a1b2c3d", "01JD3", new_message_id().lower(), ""):
        assert message_created_ns(other) is None
