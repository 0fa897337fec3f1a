"""What ``tongban trace`` reads from an entry's free-text detail (tongban/ops/trace/details.py, its
one reader), pinned for the day entries carry typed fields instead (only read_detail changes then)."""

from __future__ import annotations

import pytest

from tongban.ops.trace import read_detail

CASE_NO = "440300-20260301-7K3M9Q2XWA"


@pytest.mark.parametrize(
    ("event", "detail", "failing", "succeeded", "outcome", "status", "case_no"),
    [
        ("SUBMITTED", "", False, False, "", "", ""),
        ("SUBMITTED", CASE_NO, False, False, "", "", CASE_NO),
        ("PUBLISHED", "IN_320200", False, False, "", "", ""),
        ("RECEIVED", f"case={CASE_NO}", False, False, "", "", CASE_NO),
        ("RESPONDED", "OK", False, True, "", "", ""),
        ("RESPONDED", "NOT_FOUND", False, False, "", "", ""),  # answered, yet not "answered OK"
        ("RESPONDED", "BACKEND_TIMEOUT", True, False, "", "", ""),
        ("PROCESSED", "OK", False, True, "", "", ""),
        ("PROCESSED", "case=C1", False, True, "", "", "C1"),
        ("PROCESSED", "case=C1 reason=BACKEND_FAILURE", True, True, "BACKEND_FAILURE", "", "C1"),
        ("STATUS", "seq=1 status=3 event=E1", False, True, "", "3", ""),
        ("STATUS", "seq=2 status=0 reason=EXPIRED event=E2", False, False, "EXPIRED", "0", ""),
        ("STATUS", "seq=1 event=E1", False, False, "", "", ""),  # the handling region's own record
        ("REJECTED", "SIGNATURE_INVALID: envelope", True, False, "", "", ""),
        ("DEAD_LETTERED", "case=C1 reason=BACKEND_FAILURE", True, False, "BACKEND_FAILURE", "", "C1"),
    ],
)
def test_what_trace_reads_from_a_detail(
    event: str, detail: str, failing: bool, succeeded: bool, outcome: str, status: str, case_no: str
) -> None:
    said = read_detail(event, detail)
    assert (said.failing, said.succeeded, said.outcome, said.status, said.case_no) == (
        failing,
        succeeded,
        outcome,
        status,
        case_no,
    )


@pytest.mark.parametrize(
    ("event", "detail", "reason"),
    [
        ("RESPONDED", "BACKEND_TIMEOUT", "BACKEND_TIMEOUT"),
        ("REJECTED", "REMOTE: NOT_AUTHORISED (request altered in transit)", "REMOTE:NOT_AUTHORISED"),
        ("DEAD_LETTERED", "case=C1 reason=BACKEND_FAILURE", "BACKEND_FAILURE"),
        ("EXPIRED", "", "EXPIRED"),
    ],
)
def test_a_failing_hops_reason(event: str, detail: str, reason: str) -> None:
    assert read_detail(event, detail).reason == reason
