"""Catalogue revisions: loaded from the document, adopted in place, earlier ones kept (bounded)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from tongban.core.catalogue import Catalogue
from tongban.v1 import catalogue_pb2


def revision(n: int, *, drop: str = "") -> Catalogue:
    """The shipped catalogue as revision ``n`` (without item ``drop``)."""
    msg = Catalogue.load().to_proto()
    msg.revision = n
    msg.version = f"test.{n}"
    if drop:
        kept = [i for i in msg.items if i.code != drop]
        del msg.items[:]
        msg.items.extend(kept)
    return Catalogue.from_proto(msg)


def test_revision_and_issue_time_come_from_the_document(tmp_path: Path) -> None:
    msg = Catalogue.load().to_proto()
    msg.revision = 7
    msg.issued_at.FromSeconds(1_790_000_000)
    path = tmp_path / "catalogue.json"
    path.write_text(json_format.MessageToJson(msg), encoding="utf-8")
    loaded = Catalogue.load(path)
    assert (loaded.revision, loaded.issued_at_s, loaded.signed) == (7, 1_790_000_000.0, b"")
    again = loaded.to_proto()
    assert again.revision == 7 and again.issued_at.seconds == 1_790_000_000
    assert Catalogue.from_proto(again).codes() == loaded.codes()


def test_a_catalogue_without_a_revision_is_revision_0() -> None:
    msg = catalogue_pb2.Catalogue()
    json_format.Parse('{"version": "old", "items": []}', msg)
    assert Catalogue.from_proto(msg).revision == 0


def test_adopt_changes_the_live_object_and_keeps_what_it_held() -> None:
    live = revision(1)
    holder = {"catalogue": live}  # another holder of the same object
    live.adopt(revision(2, drop="WFZJLZM00001"))
    assert holder["catalogue"].revision == 2
    assert "WFZJLZM00001" not in holder["catalogue"]
    earlier = live.at(1)
    assert earlier is not None and earlier is not live
    assert earlier.revision == 1 and "WFZJLZM00001" in earlier
    assert live.at(2) is live
    assert live.revisions() == (1, 2)


def test_revision_0_means_the_current_one() -> None:
    live = revision(3)
    live.adopt(revision(4))
    assert live.at(0) is live


def test_unknown_revisions_are_not_held() -> None:
    live = revision(3)
    assert live.at(2) is None and live.at(4) is None


def test_history_is_bounded_by_keep_revisions() -> None:
    live = revision(1)
    live.keep_revisions = 3
    for n in range(2, 7):
        live.adopt(revision(n))
    assert live.revisions() == (4, 5, 6)
    assert live.at(3) is None and live.at(4) is not None


def test_remember_takes_only_older_revisions_once() -> None:
    live = revision(5)
    live.remember(revision(3))
    live.remember(revision(3))
    live.remember(revision(6))  # newer: only adopt() takes that
    live.remember(revision(0))  # 0 is "the current one", never an earlier revision
    assert live.revisions() == (3, 5)


def test_adopting_drops_held_revisions_at_or_above_the_new_one() -> None:
    live = revision(2)
    live.remember(revision(1))
    live.adopt(revision(9))
    assert live.revisions() == (1, 2, 9)
