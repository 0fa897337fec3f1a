"""Typed ledger details: the stored form, and ledgers written before details were typed.

``tests/vectors/ledgers/*.sqlite`` were written by tongban at commit bc0455c (its own end-to-end
tests: dead letters, a report's mix of queries and cases, refusals, a reply that fails verification,
poison, an expiry); ``readings.json`` holds what that release's readers made of every entry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import EntryDraft, Event, open_ledger
from ledger.verify import verify_sqlite_file
from tongban.core import outcomes
from tongban.core.details import Detail, Source

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "ledgers"
READINGS = json.loads((VECTORS / "readings.json").read_text(encoding="utf-8"))["ledgers"]


@pytest.mark.parametrize("name", sorted(READINGS))
def test_a_ledger_written_before_typed_details_verifies_and_reads_the_same(name: str, tmp_path: Path) -> None:
    expected = READINGS[name]
    path = tmp_path / name
    shutil.copyfile(VECTORS / name, path)  # the reader may add its WAL files beside it
    report = verify_sqlite_file(path)
    assert report.ok and report.count == expected["size"]
    assert report.head_hash.hex() == expected["head_hash"]
    for want in expected["entries"]:
        event, text = want["event"], want["detail"]
        detail = Detail.decode(text, event=event)
        assert outcomes.is_failure(event, detail) is want["is_failure"], text
        if want["is_failure"]:  # a reason is read from failures only
            assert outcomes.reason(event, detail) == want["reason"], text
        if event in outcomes.ANSWER_EVENTS:
            assert outcomes.answered(detail) is want["answered"], text
        assert detail.case_no == want["case_no"], text
        assert detail.status == want["status"], text
        assert detail.render(event=event) == text  # operators see what they always saw
        assert Detail.decode(detail.encode(), event=event) == detail


async def test_the_ledger_store_reads_an_old_file_and_appends_typed_details(tmp_path: Path) -> None:
    path = tmp_path / "report-440300.sqlite"
    shutil.copyfile(VECTORS / path.name, path)
    store = await open_ledger(path, "440300")
    try:
        old = READINGS[path.name]["size"]
        detail = Detail(outcome="OK")
        [entry] = await store.append(
            EntryDraft(Event.RESPONDED, "01M8Y11MJG000CFTR7EV3SCWCQ", "320200", "X", detail=detail.encode())
        )
        assert entry.index == old
        assert Detail.decode(entry.detail, event=entry.event) == detail
    finally:
        await store.close()
    assert verify_sqlite_file(path).ok


def test_the_stored_form_is_canonical_json_without_empty_fields() -> None:
    assert Detail().encode() == ""
    assert Detail(outcome="OK").encode() == '{"outcome":"OK"}'
    assert Detail(seq=0, status=0, event_id="E").encode() == '{"event_id":"E","seq":0,"status":0}'
    d = Detail(outcome="SIGNATURE_INVALID", source=Source.REMOTE, altered=True)
    assert d.encode() == '{"altered":true,"outcome":"SIGNATURE_INVALID","source":"REMOTE"}'
    assert d.render() == "REMOTE: SIGNATURE_INVALID (request altered in transit)"
    assert Detail(outcome="INVALID_REQUEST", fields=("a.b", "?")).render() == "INVALID_REQUEST: a.b,?"


def test_a_stored_detail_of_the_wrong_shape_is_read_as_text_not_trusted() -> None:
    assert Detail.decode('{"seq":"1","altered":"yes","fields":"x"}') == Detail(seq=None, fields=())
    assert Detail.decode("{not json") == Detail(outcome="{not json")
    assert Detail.decode("[1]") == Detail(outcome="[1]")


_codes = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)
_ids = st.from_regex(r"[0-9A-Z-]{1,30}", fullmatch=True)
_n = st.none() | st.integers(min_value=0, max_value=2**31)


@given(
    st.builds(
        Detail,
        outcome=st.just("") | _codes,
        source=st.just("") | st.sampled_from(list(Source)),
        altered=st.booleans(),
        fields=st.lists(st.from_regex(r"[a-z_.]{1,20}", fullmatch=True), max_size=3).map(tuple),
        case_no=st.just("") | _ids,
        attempt=_n,
        seq=_n,
        status=_n,
        event_id=st.just("") | _ids,
        resend=_n,
    )
)
def test_every_detail_survives_its_stored_form(detail: Detail) -> None:
    assert Detail.decode(detail.encode()) == detail
