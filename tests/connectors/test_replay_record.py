"""The connector's persistent replay record (connectors/state.py ``seen_ids``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from connectors.state import ConnectorState


async def test_an_id_is_taken_once_until_it_expires(tmp_path: Path) -> None:
    state = ConnectorState(tmp_path / "state.sqlite")
    await state.open()
    try:
        assert await state.first_sighting("A", expires_s=1000.0, now_s=100.0)
        assert not await state.first_sighting("A", expires_s=1100.0, now_s=200.0)  # a replay
        assert await state.first_sighting("A", expires_s=2100.0, now_s=1001.0)  # expired: new again
        assert not await state.first_sighting("A", expires_s=2200.0, now_s=1002.0)
    finally:
        await state.close()


async def test_two_stores_on_one_file_share_it_and_survive_a_restart(tmp_path: Path) -> None:
    """Replicas of a region share the file; a restarted connector still knows what it saw."""
    path = tmp_path / "state.sqlite"
    a, b = ConnectorState(path), ConnectorState(path)
    await a.open()
    await b.open()
    try:
        assert await a.first_sighting("B", expires_s=1000.0, now_s=100.0)
        assert not await b.first_sighting("B", expires_s=1000.0, now_s=101.0)
    finally:
        await a.close()
        await b.close()
    again = ConnectorState(path)
    await again.open()
    try:
        assert not await again.first_sighting("B", expires_s=1000.0, now_s=102.0)
    finally:
        await again.close()


async def test_expired_ids_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    state = ConnectorState(path)
    await state.open()
    try:
        for i in range(50):
            await state.first_sighting(f"old-{i}", expires_s=10.0, now_s=1.0)
        await state.first_sighting("new", expires_s=100.0, now_s=50.0)  # the next purge is due
    finally:
        await state.close()
    with sqlite3.connect(path) as conn:
        assert [r[0] for r in conn.execute("SELECT message_id FROM seen_ids")] == ["new"]


async def test_one_record_covers_both_paths(tmp_path: Path) -> None:
    """A case may come again on the case path (stream redeliveries); an id seen on one path is a
    replay on the other, in both orders."""
    state = ConnectorState(tmp_path / "state.sqlite")
    await state.open()
    try:
        assert await state.first_sighting("CASE", expires_s=1000.0, now_s=100.0, path="case")
        assert await state.first_sighting("CASE", expires_s=1000.0, now_s=150.0, path="case")  # redelivered
        assert not await state.first_sighting("CASE", expires_s=400.0, now_s=200.0, path="query")
        assert await state.first_sighting("QUERY", expires_s=400.0, now_s=100.0, path="query")
        assert not await state.first_sighting("QUERY", expires_s=1000.0, now_s=110.0, path="case")
        assert not await state.first_sighting("QUERY", expires_s=400.0, now_s=120.0, path="query")
    finally:
        await state.close()


async def test_a_store_from_before_paths_keeps_its_query_ids(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE seen (message_id TEXT PRIMARY KEY, expires_s REAL NOT NULL)")
        conn.execute("INSERT INTO seen VALUES ('OLD', 1000.0)")
    state = ConnectorState(path)
    await state.open()
    try:
        assert not await state.first_sighting("OLD", expires_s=1000.0, now_s=100.0, path="case")
    finally:
        await state.close()
