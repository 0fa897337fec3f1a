"""The demo back ends as a city's REST services: what the dev stack's declared HTTP adapters call.

A region's 人社, 医保, 公积金 and 公安 systems usually answer over HTTP with JSON wrapped in an envelope
such as ``{"code": 0, "message": "成功", "data": {...}}``; this app serves the demo stores
(:class:`~connectors.demo.backends.DemoBackend`) that way, so ``make run`` exercises the declared HTTP
adapter (URL templates, query and body mapping, JSON-path response mapping, status mapping) on a real
HTTP server in its own process. An unknown applicant is ``404``; a malformed request ``400``.

POSTs are idempotent on their ``Idempotency-Key`` header (the exchange's message id): the first answer
is kept in the demo database and given again, so a Submit redelivered after a connector crash causes
its effect (a filing, a certificate) once.

Run it with ``tongban demo-backend --config <region>/node.toml``: it listens on the address of the
config's ``[backends.demo_http] base_url`` and serves the ``[connector] demo_db`` file.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from connectors.demo.backends import DemoBackend
from tongban.core.errors import NotFound

__all__ = ["BACKEND_NAME", "demo_http_app"]

BACKEND_NAME = "demo_http"
"""The ``[backends.<name>]`` the dev configs give this service."""

_IDEMPOTENCY = """CREATE TABLE IF NOT EXISTS demo_http_idempotency (
    key TEXT PRIMARY KEY, status INTEGER NOT NULL, body TEXT NOT NULL
)"""
_MAX_BODY = 64 * 1024

Answer = Callable[[DemoBackend, Mapping[str, str], Mapping[str, Any]], dict[str, Any]]


def _ok(data: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {"code": 0, "message": "成功", "data": dict(data)}


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def _routes() -> list[tuple[str, str, Answer]]:
    """(method, path, answer(backend, path params + query, JSON body))."""
    return [
        (
            "GET",
            "/rs/v1/persons/{id_no}/contributions",
            lambda b, q, _: b.social_insurance.contribution_record(
                q["id_no"],
                q.get("insurance_type") or "110",
                period_start=q.get("period_start", ""),
                period_end=q.get("period_end", ""),
            ),
        ),
        (
            "GET",
            "/rs/v1/persons/{id_no}/transfer-check",
            lambda b, q, _: b.social_insurance.transfer_check(
                q["id_no"], transfer_out_region=q["out"], transfer_in_region=q["in"]
            ),
        ),
        (
            "GET",
            "/rs/v1/persons/{id_no}/qualification",
            lambda b, q, _: b.social_insurance.qualification(
                q["id_no"], certification_year=_int(q.get("year")) or datetime.date.today().year
            ),
        ),
        (
            "POST",
            "/yb/v1/filings",
            lambda b, _, j: b.medical_insurance.file(
                j["id_no"],
                insured_region=j["insured_region"],
                treatment_region=j["treatment_region"],
                filing_category=j["filing_category"],
                valid_from=j["valid_from"],
                valid_until=j.get("valid_until", ""),
            ),
        ),
        (
            "POST",
            "/gjj/v1/withdrawal-checks",
            lambda b, _, j: b.housing_fund.withdrawal_check(
                j["id_no"],
                reason=j["reason"],
                retired=b.social_insurance.is_pensioner(j["id_no"]),
                amount_requested=_int(j.get("amount_requested")),
            ),
        ),
        (
            "POST",
            "/ga/v1/no-criminal-record-certificates",
            lambda b, _, j: b.criminal_records.certificate(j["id_no"], certificate_use=j["certificate_use"]),
        ),
        (
            "GET",
            "/gjj/v1/units/{uscc}/opening-check",
            lambda b, q, _: b.housing_fund_unit_check(
                q["uscc"].upper(),
                unit_name=q.get("unit_name", ""),
                deposit_ratio=_int(q.get("deposit_ratio")) or 0,
                employee_count=_int(q.get("employee_count")),
            ),
        ),
    ]


class _Service:
    def __init__(self, backend: DemoBackend) -> None:
        self.backend = backend
        with sqlite3.connect(backend.path, timeout=30) as conn:
            conn.execute(_IDEMPOTENCY)

    def handler(self, answer: Answer) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            params = {**request.query, **request.match_info}
            body: Any = {}
            if request.method == "POST":
                if (request.content_length or 0) > _MAX_BODY:
                    return _json(413, {"code": 413, "message": "请求过大"})
                try:
                    body = json.loads(await request.read() or b"{}")
                except ValueError:
                    return _json(400, {"code": 400, "message": "请求不是 JSON"})
                if not isinstance(body, dict):
                    return _json(400, {"code": 400, "message": "请求须为 JSON 对象"})
            key = request.headers.get("Idempotency-Key", "")[:64] if request.method == "POST" else ""
            status, payload = await asyncio.to_thread(self._answer, answer, params, body, key)
            return _json(status, payload)

        return handle

    def _answer(
        self, answer: Answer, params: Mapping[str, str], body: Mapping[str, Any], key: str
    ) -> tuple[int, dict[str, Any]]:
        if key:
            kept = self._kept(key)
            if kept is not None:
                return kept
        try:
            status, payload = _ok(answer(self.backend, params, body))
        except NotFound:
            status, payload = 404, {"code": 404, "message": "未查到相关记录"}
        except (KeyError, ValueError, TypeError):
            status, payload = 400, {"code": 400, "message": "请求参数不完整或格式有误"}
        if key and status in (200, 404):
            with sqlite3.connect(self.backend.path, timeout=30) as conn:
                conn.execute(
                    "INSERT OR IGNORE INTO demo_http_idempotency VALUES (?, ?, ?)",
                    (key, status, json.dumps(payload, ensure_ascii=False)),
                )
            kept = self._kept(key)  # a concurrent first attempt's answer stands
            assert kept is not None
            return kept
        return status, payload

    def _kept(self, key: str) -> tuple[int, dict[str, Any]] | None:
        with sqlite3.connect(self.backend.path, timeout=30) as conn:
            row = conn.execute(
                "SELECT status, body FROM demo_http_idempotency WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else (int(row[0]), json.loads(row[1]))


def _json(status: int, payload: Mapping[str, Any]) -> web.Response:
    return web.json_response(payload, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


def demo_http_app(db: str | Path) -> web.Application:
    """The demo REST services over the demo database ``db`` (seeded if new)."""
    service = _Service(DemoBackend(db))
    app = web.Application(client_max_size=_MAX_BODY)
    for method, path, answer in _routes():
        app.router.add_route(method, path, service.handler(answer))
    return app
