"""The demo REST services (what ``make run``'s declared HTTP adapters call), on a real HTTP server."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from connectors.demo.http_service import demo_http_app

PERSON = "320213198511200025"  # a Wuxi resident of the demo records


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    db = tmp_path / "demo-backend.sqlite"
    runner = web.AppRunner(demo_http_app(db))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield client, db
    finally:
        await runner.cleanup()


async def test_a_record_comes_wrapped_as_a_city_api_answers(demo: tuple[httpx.AsyncClient, Path]) -> None:
    client, _ = demo
    r = await client.get(f"/rs/v1/persons/{PERSON}/contributions", params={"insurance_type": "110"})
    assert r.status_code == 200
    body = r.json()
    assert body["code"] == 0 and body["data"]["insurance_type"] == "110" and body["data"]["total_months"] > 0


async def test_an_unknown_person_is_404_and_a_malformed_request_400(
    demo: tuple[httpx.AsyncClient, Path],
) -> None:
    client, _ = demo
    r = await client.get("/rs/v1/persons/110101199003070000/qualification")
    assert r.status_code == 404 and r.json()["code"] == 404
    r = await client.post("/ga/v1/no-criminal-record-certificates", content=b"[1, 2]")
    assert r.status_code == 400
    r = await client.post("/ga/v1/no-criminal-record-certificates", json={"id_no": PERSON})
    assert r.status_code == 400  # certificate_use missing


async def test_a_post_repeated_with_its_idempotency_key_has_one_effect(
    demo: tuple[httpx.AsyncClient, Path],
) -> None:
    client, db = demo
    body = {"id_no": PERSON, "certificate_use": "就业"}
    first = await client.post(
        "/ga/v1/no-criminal-record-certificates", json=body, headers={"Idempotency-Key": "01JKEY-A"}
    )
    again = await client.post(
        "/ga/v1/no-criminal-record-certificates", json=body, headers={"Idempotency-Key": "01JKEY-A"}
    )
    other = await client.post(
        "/ga/v1/no-criminal-record-certificates", json=body, headers={"Idempotency-Key": "01JKEY-B"}
    )
    assert first.status_code == again.status_code == other.status_code == 200
    number = first.json()["data"]["certificate_number"]
    assert number and again.json()["data"]["certificate_number"] == number
    assert other.json()["data"]["certificate_number"] != number
    with sqlite3.connect(db) as conn:
        issued = conn.execute("SELECT count(*) FROM ps_certificate WHERE id_no = ?", (PERSON,)).fetchone()[0]
    assert issued == 2
