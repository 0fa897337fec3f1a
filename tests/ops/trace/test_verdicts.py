"""Where a traced request ended up (tongban/ops/trace/verdicts.py), from timelines built by hand."""

from __future__ import annotations

import pytest

from tongban.ops.trace import RegionRead, Trace, TraceHop, Verdict, verdict

SZ, WX = "440300", "320200"
QUERY, CASE = "SBJFJLCX0001", "YLBXZYJX0001"
CASE_NO = "440300-20260301-7K3M9Q2XWA"
T0 = 1_700_000_000_000_000_000


def timeline(*steps: tuple[str, str, str, str]) -> Trace:
    """A trace of hops (region, event, peer region, detail), 10 ms apart, Shenzhen the local region."""
    hops = [
        TraceHop(T0 + n * 10**7, region, event, QUERY, detail, peer, "M", "T", n)
        for n, (region, event, peer, detail) in enumerate(steps)
    ]
    return Trace("M", "M", "", hops, [RegionRead(SZ, "a", local=True)], ["T"])


def test_verdict_in_transit_names_the_last_hop() -> None:
    hop = TraceHop(1_700_000_000_000_000_000, SZ, "PUBLISHED", CASE, "IN_320200", WX, "M", "T", 7)
    t = Trace("M", "M", "", [hop], [RegionRead(SZ, "a", local=True)], ["T"])
    v = verdict(t)
    assert v.status == "in_transit"
    assert v.text.startswith(f"in transit, last seen PUBLISHED at {SZ} 2023-11-14T22:13:20.000Z (")


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [
                (SZ, "SUBMITTED", WX, ""),
                (WX, "RECEIVED", SZ, ""),
                (WX, "PROCESSED", SZ, "OK"),
                (SZ, "RESPONDED", WX, "OK"),
            ],
            Verdict("delivered", f"delivered to {WX}: answered OK", WX),
            id="answered",
        ),
        pytest.param(
            [(SZ, "SUBMITTED", WX, ""), (SZ, "RESPONDED", WX, "BACKEND_TIMEOUT")],
            Verdict("failed", f"answered with a problem by {WX}: BACKEND_TIMEOUT", WX, "BACKEND_TIMEOUT"),
            id="answered-with-a-problem",
        ),
        pytest.param(
            [(SZ, "SUBMITTED", WX, ""), (WX, "REJECTED", SZ, "SIGNATURE_INVALID: envelope")],
            Verdict("rejected", f"rejected at {WX}: SIGNATURE_INVALID", WX, "SIGNATURE_INVALID"),
            id="rejected",
        ),
        pytest.param(
            [(SZ, "SUBMITTED", WX, CASE_NO), (WX, "DEAD_LETTERED", SZ, "case=C1 reason=BACKEND_FAILURE")],
            Verdict("dead_lettered", f"dead-lettered at {WX}: BACKEND_FAILURE", WX, "BACKEND_FAILURE"),
            id="dead-lettered",
        ),
        pytest.param(
            [
                (SZ, "SUBMITTED", WX, CASE_NO),
                (WX, "RECEIVED", SZ, f"case={CASE_NO}"),
                (WX, "PROCESSED", SZ, f"case={CASE_NO} reason=BACKEND_TIMEOUT"),
                (WX, "PROCESSED", SZ, f"case={CASE_NO}"),
                (SZ, "STATUS", WX, "seq=1 status=11 event=E1"),
            ],
            Verdict(
                "delivered",
                f"delivered to {WX}: processed, last case status APPROVED (after 1 failed hop(s); "
                f"first PROCESSED at {WX}: BACKEND_TIMEOUT)",
                WX,
            ),
            id="processed-after-a-retry",
        ),
        pytest.param(
            [(SZ, "SUBMITTED", WX, CASE_NO), (SZ, "STATUS", WX, "seq=1 status=3 event=E1")],
            Verdict(
                "delivered", f"delivered to {WX}: status events came back, last case status ACCEPTED", WX
            ),
            id="status-events-only",
        ),
    ],
)
def test_verdicts(steps: list[tuple[str, str, str, str]], expected: Verdict) -> None:
    assert verdict(timeline(*steps)) == expected
