"""`tongban submit --watch`, `tongban case get` and `tongban case watch` against a running stack."""

from __future__ import annotations

import json

from tests.conftest import SZ, Stack
from tests.e2e.cli import tongban


async def test_submit_watch_get_from_the_command_line(stack: Stack) -> None:
    gateway = stack.nodes[SZ].address
    rc, out, err = await tongban(
        "submit",
        "--gateway", gateway,
        "--to", "320200",
        "--service", "YLBXZYJX0001",
        "--field", "id_no=44030419900307123X",
        "--field", "transfer_out_region=320200",
        "--field", "transfer_in_region=440300",
        "--purpose", "KSTB_CASE_HANDLING", "--approval-ref", "SZ-APPROVAL-2026-0001",
        "--idempotency-key", "cli-1",
        "--watch", "--watch-timeout", "30",
    )  # fmt: skip
    assert rc == 0, err
    receipt_text, _, events_text = out.partition("}\n")
    receipt = json.loads(receipt_text + "}")
    assert receipt["case_no"].startswith(f"{SZ}-") and receipt["replayed"] is False
    lines = events_text.strip().splitlines()
    assert [line.split()[3] for line in lines] == ["RECEIVED", "ACCEPTED", "APPROVED"]
    assert "44030419900307123X" not in out + err

    rc, out, err = await tongban("case", "get", receipt["case_no"], "--gateway", gateway)
    assert rc == 0, err
    case = json.loads(out)
    assert case["status"] == "CASE_STATUS_APPROVED" and case["lastSequence"] == 3
    assert case["messageId"] == receipt["message_id"]

    rc, out, err = await tongban("case", "watch", receipt["case_no"], "--gateway", gateway, "--after", "3")
    assert (rc, out) == (0, "")

    rc, out, err = await tongban("case", "get", f"{SZ}-20260101-0000000000", "--gateway", gateway)
    assert rc == 1 and "NOT_FOUND" in err and "CASE_NOT_FOUND" in err


async def test_submit_refused_prints_the_field_violation(stack: Stack) -> None:
    rc, out, err = await tongban(
        "submit",
        "--gateway", stack.nodes[SZ].address,
        "--to", "320200",
        "--service", "YLBXZYJX0001",
        "--field", "id_no=440304199003071231",
        "--field", "transfer_out_region=320200",
        "--field", "transfer_in_region=440300",
        "--purpose", "KSTB_CASE_HANDLING", "--approval-ref", "SZ-APPROVAL-2026-0001",
    )  # fmt: skip
    assert rc == 1 and out == ""
    assert "INVALID_ARGUMENT" in err and "field request.applicant.id_no" in err
