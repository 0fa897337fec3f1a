"""The HTTP adapter against a real HTTP back end: requests built from the config, answers mapped to
the declared fields, each HTTP status and each kind of hostile answer turned into the right reason,
retries for idempotent calls only, and the deadline kept."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from connectors.adapters import AdapterFailure
from connectors.backends.http import HttpBackend, HttpService
from tests.connectors.backends.conftest import MakeBackend
from tests.connectors.backends.http_backend import (
    APPLICANT_ID,
    PENSION,
    TRANSFER,
    BackendApp,
    adapter_request,
    hold,
    json_reply,
    raw_reply,
    sequence,
    status_reply,
)
from tests.helpers import eventually
from tongban.core.catalogue import Catalogue
from tongban.core.errors import NotFound, Reason

RECORD = {
    "code": 0,
    "data": {
        "region": "320200",
        "type": "110",
        "state": "正常参保",
        "months": 220,
        "records": [{"month": "2026-09", "base": 8000}, {"month": "2026-10", "base": 8000}],
        "internal_note": "not declared",
    },
}
PENSION_SERVICE: dict[str, Any] = {
    "path": "/persons/{applicant.id}/pension",
    "query": {"type": "{fields.insurance_type}", "from": "{fields.period_start}"},
    "response": {
        "insured_region": "$.data.region",
        "insurance_type": "$.data.type",
        "status": "$.data.state",
        "total_months": "$.data.months",
        "records": "$.data.records",
    },
}
ID_IN_BODY = "440304199001011234"
"""The error pages of the test back end quote this ID number: no error may repeat it."""


def pension(backend: HttpBackend, catalogue: Catalogue, **service: Any) -> HttpService:
    return backend.service(PENSION, {**PENSION_SERVICE, **service}, catalogue.items[PENSION])


async def failure(service: HttpService, **fields: str) -> AdapterFailure:
    with pytest.raises(AdapterFailure) as caught:
        await service.call(adapter_request(service.code, **fields))
    assert ID_IN_BODY not in caught.value.message and APPLICANT_ID not in caught.value.message
    return caught.value


async def test_an_answer_is_mapped_to_the_declared_fields(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = json_reply(RECORD)
    service = pension(backends(app.base_url), catalogue)

    answer = await service.call(adapter_request(PENSION, insurance_type="110"))

    assert answer == {
        "insured_region": "320200",
        "insurance_type": "110",
        "status": "正常参保",
        "total_months": 220,
        "records": RECORD["data"]["records"],
    }
    [seen] = app.seen
    # The empty optional field (period_start) sends no parameter.
    assert (seen.method, seen.raw_path) == ("GET", f"/api/persons/{APPLICANT_ID}/pension?type=110")
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert "Idempotency-Key" not in seen.headers and seen.body == b""


async def test_calls_share_pooled_connections(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    service = pension(backends(app.base_url), catalogue)

    for _ in range(20):
        await service.call(adapter_request(PENSION))

    assert len({seen.peer_port for seen in app.seen}) == 1


async def test_without_a_response_table_the_top_level_object_is_the_answer(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = json_reply({"status": "正常参保", "other": 1})
    backend = backends(app.base_url)
    service = backend.service(PENSION, {"path": "/persons/{applicant.id}"}, catalogue.items[PENSION])

    assert await service.call(adapter_request(PENSION)) == {"status": "正常参保", "other": 1}

    app.reply = json_reply([{"status": "正常参保"}])
    assert "not an object" in (await failure(service)).message


async def test_404_is_not_found(app: BackendApp, backends: MakeBackend, catalogue: Catalogue) -> None:
    app.reply = status_reply(404)
    service = pension(backends(app.base_url), catalogue)

    with pytest.raises(NotFound) as caught:
        await service.call(adapter_request(PENSION))

    assert caught.value.reason is Reason.NOT_FOUND
    assert ID_IN_BODY not in caught.value.message
    assert app.calls == 1


@pytest.mark.parametrize(
    ("status", "reason", "calls"),
    [
        (500, Reason.BACKEND_FAILURE, 3),  # retried: a GET is idempotent
        (502, Reason.BACKEND_FAILURE, 3),
        (409, Reason.BACKEND_REFUSED, 1),  # a business refusal: asking again changes nothing
        (422, Reason.BACKEND_REFUSED, 1),
        (401, Reason.BACKEND_FAILURE, 1),
        (400, Reason.BACKEND_FAILURE, 1),
        (302, Reason.BACKEND_FAILURE, 1),  # redirects are not followed
    ],
)
async def test_each_status_has_its_reason(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue, status: int, reason: Reason, calls: int
) -> None:
    app.reply = status_reply(status, Location="http://elsewhere.example/")
    service = pension(backends(app.base_url, retries=2), catalogue)

    error = await failure(service)

    assert error.reason is reason
    assert f"HTTP {status}" in error.message and "back end shebao" in error.message
    assert app.calls == calls


async def test_a_get_is_retried_until_it_succeeds(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = sequence(status_reply(500), status_reply(503), json_reply(RECORD))
    service = pension(backends(app.base_url, retries=2), catalogue)

    answer = await service.call(adapter_request(PENSION))

    assert answer["status"] == "正常参保"
    assert app.calls == 3


async def test_a_post_is_sent_once_with_its_idempotency_key(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(503)
    backend = backends(app.base_url, retries=3)
    service = backend.service(
        TRANSFER,
        {
            "method": "POST",
            "path": "/transfers",
            "body": {
                "out": "fields.transfer_out_region",
                "in": "fields.transfer_in_region",
                "applicant": {"id": "applicant.id", "name": "applicant.name"},
            },
        },
        catalogue.items[TRANSFER],
    )
    request = adapter_request(TRANSFER, transfer_out_region="320200", transfer_in_region="440300")

    with pytest.raises(AdapterFailure) as caught:
        await service.call(request)

    assert caught.value.reason is Reason.BACKEND_BUSY
    [seen] = app.seen  # exactly one call: a POST is not retried
    assert seen.headers["Idempotency-Key"] == request.message_id
    assert seen.headers["Content-Type"] == "application/json"
    assert seen.json() == {
        "out": "320200",
        "in": "440300",
        "applicant": {"id": APPLICANT_ID, "name": "张三"},
    }


async def test_a_busy_back_end_is_retried_then_busy(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(429)
    service = pension(backends(app.base_url, retries=2), catalogue)

    error = await failure(service)

    assert error.reason is Reason.BACKEND_BUSY
    assert "3 attempts" in error.message
    assert app.calls == 3


async def test_a_long_retry_after_ends_the_retries_at_once(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = status_reply(503, **{"Retry-After": "3600"})
    service = pension(backends(app.base_url, retries=2), catalogue)

    assert (await failure(service)).reason is Reason.BACKEND_BUSY
    assert app.calls == 1


async def test_a_slow_back_end_ends_at_the_deadline(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = hold(json_reply(RECORD))  # the back end answers only when the test ends
    service = pension(backends(app.base_url, retries=2, read_timeout_s=30), catalogue)
    request = adapter_request(PENSION, deadline_s=0.5)

    with pytest.raises(AdapterFailure) as caught:
        await service.call(request)

    assert caught.value.reason is Reason.BACKEND_TIMEOUT
    # The adapter ended its call inside the deadline (a second's slack for a loaded machine): it
    # did not wait for the back end, which holds its answer until the test ends.
    assert time.time() < request.deadline + 1.0
    assert app.calls == 1  # no retry once the deadline is spent
    assert not app.released.is_set()


async def test_a_read_timeout_inside_the_deadline_is_retried(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = hold(json_reply(RECORD))
    service = pension(backends(app.base_url, retries=1, read_timeout_s=0.2), catalogue)

    error = await failure(service)

    assert error.reason is Reason.BACKEND_TIMEOUT
    assert app.calls == 2


async def test_a_request_past_its_deadline_is_not_sent(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    service = pension(backends(app.base_url), catalogue)

    with pytest.raises(AdapterFailure) as caught:
        await service.call(adapter_request(PENSION, deadline_s=-1))

    assert caught.value.reason is Reason.BACKEND_TIMEOUT
    assert app.calls == 0


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (f"<html>error for {ID_IN_BODY}</html>".encode(), "not JSON"),
        (b'{"status": NaN}', "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nested past the parser's recursion limit
        (b"", "not JSON"),
        (b'{"total_months": ' + b"9" * 400 + b"}", "number out of range"),
        (b'{"total_months": 1e400}', "number out of range"),
    ],
)
async def test_a_body_that_is_not_json_is_a_clear_failure(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue, body: bytes, what: str
) -> None:
    app.reply = raw_reply(body)
    service = pension(backends(app.base_url, retries=2, max_response_bytes=1 << 20), catalogue)

    error = await failure(service)

    assert error.reason is Reason.BACKEND_FAILURE
    assert what in error.message and "HTTP 200" in error.message
    assert app.calls == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_oversized_answer_is_refused(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue, chunked: bool
) -> None:
    app.reply = raw_reply(json.dumps({"status": "x" * (4 << 20)}).encode(), chunked=chunked)
    service = pension(backends(app.base_url, max_response_bytes=64 * 1024), catalogue)

    error = await failure(service)

    assert error.reason is Reason.BACKEND_FAILURE
    assert "more than 65536 bytes" in error.message


async def test_a_compressed_answer_is_refused(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = raw_reply(gzip.compress(json.dumps(RECORD).encode()), **{"Content-Encoding": "gzip"})
    service = pension(backends(app.base_url), catalogue)

    assert "compressed" in (await failure(service)).message


@pytest.mark.parametrize(
    "value", ["../../admin", "a/b", "x?admin=1", "x#frag", "%2e%2e", "a%2Fb", " 张三 ", "..%2F", ".x"]
)
async def test_a_value_stays_inside_its_path_segment(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue, value: str
) -> None:
    service = backends(app.base_url).service(
        TRANSFER,
        {"path": "/regions/{fields.transfer_out_region}/persons/{applicant.id}"},
        catalogue.items[TRANSFER],
    )

    await service.call(adapter_request(TRANSFER, transfer_out_region=value, transfer_in_region="440300"))

    [seen] = app.seen
    assert seen.segments[:3] == ["", "api", "regions"]
    assert unquote(seen.segments[3]) == value  # one segment, decoded back to the value itself
    assert seen.segments[4:] == ["persons", APPLICANT_ID]
    assert seen.query == ""


@pytest.mark.parametrize("value", ["", ".", ".."])
async def test_a_value_that_would_change_the_path_is_refused(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue, value: str
) -> None:
    service = backends(app.base_url).service(
        TRANSFER, {"path": "/regions/{fields.transfer_out_region}"}, catalogue.items[TRANSFER]
    )

    error = await failure(service, transfer_out_region=value)

    assert error.reason is Reason.INVALID_REQUEST
    assert app.calls == 0


async def test_a_value_stays_inside_its_query_parameter(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    service = backends(app.base_url).service(
        TRANSFER,
        {"path": "/employers", "query": {"name": "{fields.new_employer_name}", "kind": "unit"}},
        catalogue.items[TRANSFER],
    )

    await service.call(adapter_request(TRANSFER, new_employer_name="a&admin=1#x +y%"))

    [seen] = app.seen
    assert parse_qs(seen.query) == {"name": ["a&admin=1#x +y%"], "kind": ["unit"]}


async def test_a_header_value_cannot_add_a_header(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    service = backends(app.base_url).service(
        TRANSFER,
        {
            "path": "/employers",
            "headers": {"X-Employer": "{fields.new_employer_name}", "X-Channel": "tongban"},
        },
        catalogue.items[TRANSFER],
    )

    await service.call(adapter_request(TRANSFER, new_employer_name="ACME Ltd."))
    for bad in ("x\r\nX-Admin: 1", "x\nX-Admin: 1", "无锡某公司"):
        error = await failure(service, new_employer_name=bad)
        assert error.reason is Reason.INVALID_REQUEST

    [seen] = app.seen
    assert (seen.headers["X-Employer"], seen.headers["X-Channel"]) == ("ACME Ltd.", "tongban")
    assert "X-Admin" not in seen.headers


async def test_a_back_end_that_is_down_is_a_failure(backends: MakeBackend, catalogue: Catalogue) -> None:
    async with BackendApp() as gone:
        base_url = gone.base_url
    # Nothing listens there any more.
    service = pension(backends(base_url, retries=1), catalogue)

    error = await failure(service)

    assert error.reason is Reason.BACKEND_FAILURE
    assert "could not connect" in error.message


async def test_calls_wait_for_a_slot_within_their_deadline(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    app.reply = hold(json_reply(RECORD))
    service = pension(backends(app.base_url, max_concurrency=1, retries=0), catalogue)
    first = adapter_request(PENSION, deadline_s=1.0)

    # The first call holds the only slot until its deadline; the second waits for it and runs out.
    results = await asyncio.gather(
        service.call(first), service.call(adapter_request(PENSION, deadline_s=0.5)), return_exceptions=True
    )

    reasons = sorted(r.reason for r in results if isinstance(r, AdapterFailure))
    assert reasons == [Reason.BACKEND_BUSY, Reason.BACKEND_TIMEOUT]
    assert app.calls == 1


async def test_every_slot_has_a_connection(
    app: BackendApp, backends: MakeBackend, catalogue: Catalogue
) -> None:
    """20 slots over three clients of 7 connections: 20 calls at once all reach the back end (none
    waits in a full client while another has room)."""
    app.reply = hold(json_reply(RECORD))
    service = pension(backends(app.base_url, max_concurrency=20), catalogue)

    calls = [asyncio.create_task(service.call(adapter_request(PENSION))) for _ in range(20)]
    await eventually(lambda: app.calls == 20, what="20 calls at the back end at once")
    app.released.set()
    answers = await asyncio.gather(*calls)

    assert all(a["status"] == "正常参保" for a in answers)
