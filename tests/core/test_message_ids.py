"""Message ids, case numbers and trace ids: what makes them and what reads them agree."""

from __future__ import annotations

from tongban.core.message_ids import (
    case_region,
    is_case_no,
    is_message_id,
    is_trace_id,
    new_case_no,
    new_message_id,
)


def test_new_case_numbers_are_case_numbers_of_their_region() -> None:
    for region in ("440300", "320200"):
        case_no = new_case_no(region)
        assert is_case_no(case_no), case_no
        assert case_region(case_no) == region
        assert not is_message_id(case_no)


def test_malformed_case_numbers() -> None:
    for text in (
        "",
        "440300",
        "44030-20260101-AAAAAAAAAA",
        "440300-2026010-AAAAAAAAAA",
        "440300-20260101-aaaaaaaaaa",
    ):
        assert not is_case_no(text) and case_region(text) is None
    assert not is_case_no(new_message_id())
    assert not is_case_no("440300-20260101-AAAAAAAAAA\n")


def test_trace_ids() -> None:
    assert is_trace_id("0af7651916cd43dd8448eb211c80319c")
    for text in ("0" * 32, "0AF7651916CD43DD8448EB211C80319C", "0af7651916cd43dd8448eb211c80319", ""):
        assert not is_trace_id(text)


def test_message_ids() -> None:
    assert is_message_id(new_message_id())
    assert not is_message_id(new_message_id() + "\n")
    assert not is_message_id(new_message_id().lower())
