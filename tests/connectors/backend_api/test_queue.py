"""The delivery queue on a real SQLite file: idempotent store, leases, redelivery, acknowledgement,
dead letters, and nothing personal at rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.backend_api import CaseDesk, DeliveryQueue, State
from connectors.backend_api.desk import RECEIVED
from connectors.backend_api.queue import Via
from connectors.backend_api.sealed import DeliveryVault
from tests.connectors.backend_api.helpers import ID_NO, NAME, PHONE, SERVICE, case_request, region_keys
from tongban.core.envelope import EnvelopeRejected
from tongban.runtime.node import RegionSecrets


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DeliveryQueue]:
    q = DeliveryQueue(tmp_path / "backend-api.sqlite")
    await q.open()
    try:
        yield q
    finally:
        await q.close()


@pytest.fixture
def keys() -> RegionSecrets:
    return region_keys()


@pytest.fixture
def desk(queue: DeliveryQueue, keys: RegionSecrets) -> CaseDesk:
    return CaseDesk(queue, DeliveryVault(keys))


async def test_the_same_request_redelivered_stores_one_delivery(desk: CaseDesk, queue: DeliveryQueue) -> None:
    request = case_request()
    assert list(await desk.submit_case(request)) == [RECEIVED]
    assert list(await desk.submit_case(request)) == [RECEIVED]  # after a crash: the same message id
    rows = await queue.rows()
    assert [(r.delivery_id, r.case_no, r.state) for r in rows] == [
        (request.message_id, request.case_no, State.PENDING)
    ]


async def test_bodies_are_sealed_at_rest_and_dropped_once_acknowledged(
    desk: CaseDesk, queue: DeliveryQueue, keys: RegionSecrets
) -> None:
    request = case_request()
    await desk.submit_case(request)
    await queue.close()
    raw = b"".join(p.read_bytes() for p in queue.path.parent.glob("backend-api.sqlite*"))
    for secret in (ID_NO, NAME, PHONE, "无锡某公司"):
        assert secret.encode() not in raw
    await queue.open()
    taken = await queue.take("w", now_s=1e10, lease_s=60)
    assert taken is not None
    delivery = DeliveryVault(keys).open(taken)
    applicant = delivery.applicant
    assert (applicant.id_no, applicant.name, applicant.phone, delivery.attempt) == (ID_NO, NAME, PHONE, 1)
    assert delivery.fields["new_employer_name"] == "无锡某公司" and delivery.trace_id == ""
    # Sealed to this region's key, bound to its row: another region's keys do not open it.
    with pytest.raises(EnvelopeRejected):
        DeliveryVault(region_keys()).open(taken)
    assert await queue.ack(taken.delivery_id, now_s=1e10, via=Via.STREAM, local_code="WX-1")

    def sealed(conn: object) -> list[object]:
        return [r[0] for r in conn.execute("SELECT sealed FROM deliveries")]  # type: ignore[attr-defined]

    assert await queue.db.run(sealed, write=False) == [None]


async def test_a_lease_keeps_others_off_until_it_runs_out(desk: CaseDesk, queue: DeliveryQueue) -> None:
    first, second = case_request(), case_request()
    await desk.submit_case(first)
    await desk.submit_case(second)
    a = await queue.take("a", now_s=100.0, lease_s=30)
    b = await queue.take("b", now_s=100.0, lease_s=30)
    assert a is not None and b is not None
    assert (a.delivery_id, b.delivery_id) == (first.message_id, second.message_id)  # oldest first
    assert await queue.take("c", now_s=120.0, lease_s=30) is None  # both held
    assert await queue.next_due(now_s=120.0) == 130.0
    again = await queue.take("c", now_s=131.0, lease_s=30)  # a's lease ran out unacknowledged
    assert again is not None and again.delivery_id == first.message_id and again.attempts == 2


async def test_acknowledging_twice_is_harmless_and_unknown_ids_are_refused(
    desk: CaseDesk, queue: DeliveryQueue
) -> None:
    request = case_request()
    await desk.submit_case(request)
    taken = await queue.take("a", now_s=100.0, lease_s=30)
    assert taken is not None
    assert await queue.ack(
        request.message_id, now_s=101.0, via=Via.STREAM, local_code="L1", local_system="wx"
    )
    assert not await queue.ack(request.message_id, now_s=102.0, via=Via.STREAM, local_code="L2")
    [row] = await queue.rows()
    assert (row.state, row.local_code, row.local_system, row.acked_via) == (State.ACKED, "L1", "wx", "stream")
    assert await queue.take("b", now_s=200.0, lease_s=30) is None  # acknowledged: never again
    with pytest.raises(KeyError):
        await queue.ack("01J00000000000000000000000", now_s=1.0, via=Via.STREAM)


async def test_a_stream_that_ends_frees_what_it_held(desk: CaseDesk, queue: DeliveryQueue) -> None:
    await desk.submit_case(case_request())
    assert await queue.take("a", now_s=100.0, lease_s=300) is not None
    changed = queue.waiter()
    assert await queue.release("a") == 1
    assert changed.is_set()  # waiters wake at once
    assert await queue.take("b", now_s=101.0, lease_s=300) is not None


async def test_storing_wakes_waiters(desk: CaseDesk, queue: DeliveryQueue) -> None:
    changed = queue.waiter()
    waiting = asyncio.create_task(changed.wait())
    await desk.submit_case(case_request())
    await asyncio.wait_for(waiting, 5)


async def test_filters_by_service(desk: CaseDesk, queue: DeliveryQueue) -> None:
    other = case_request(service="ZFGJJTQ00001")
    await desk.submit_case(other)
    assert await queue.take("a", now_s=1e10, lease_s=30, services={SERVICE}) is None
    taken = await queue.take("a", now_s=1e10, lease_s=30, services={"ZFGJJTQ00001"})
    assert taken is not None and taken.service_code == "ZFGJJTQ00001"


async def test_webhook_retries_wait_their_turn_and_dead_letters_can_come_back(
    desk: CaseDesk, queue: DeliveryQueue
) -> None:
    request = case_request()
    await desk.submit_case(request)
    taken = await queue.take("hook", now_s=100.0, lease_s=10, push=True)
    assert taken is not None and taken.push_attempts == 1
    await queue.retry_later(request.message_id, "hook", at_s=150.0)
    assert await queue.take("hook", now_s=120.0, lease_s=10, push=True) is None  # not due yet
    assert await queue.next_due(now_s=120.0, push=True) == 150.0
    streamed = await queue.take("stream", now_s=120.0, lease_s=1)  # a stream may take it meanwhile
    assert streamed is not None and streamed.push_attempts == 1
    second = await queue.take("hook", now_s=151.0, lease_s=10, push=True)
    assert second is not None and (second.attempts, second.push_attempts) == (3, 2)
    assert await queue.kill(request.message_id, now_s=152.0)
    assert not await queue.kill(request.message_id, now_s=153.0)
    assert [r.state for r in await queue.rows(State.DEAD)] == [State.DEAD]
    assert await queue.take("stream", now_s=200.0, lease_s=1) is None  # dead: out of the flow
    assert await queue.requeue(request.message_id)
    assert not await queue.requeue(request.message_id)  # pending now, not dead
    back = await queue.take("hook", now_s=300.0, lease_s=10, push=True)
    assert back is not None and back.push_attempts == 1
    with pytest.raises(KeyError):
        await queue.requeue("01J00000000000000000000000")
