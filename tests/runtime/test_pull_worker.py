"""tongban/runtime/pull_worker.py against a real nats-server: batches reach the owner, the owner's
window bounds each fetch, start and stop are idempotent, and a stop waits for the batch in hand."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from tests.conftest import SZ
from tests.helpers import eventually
from tongban.core import subjects
from tongban.ops.natsserver import Topology
from tongban.runtime.pull_worker import PullWorker
from tongban.runtime.streams import durable_pull, ensure_streams

SERVICE = "SBJFJLCX0001"
DURABLE = "test-pull-worker"


async def _dead_letters(topology: Topology, count: int) -> tuple[NATS, JetStreamContext]:
    """``count`` messages in SZ's dead-letter stream (limits retention: any durable can read it)."""
    nc = await topology.admin_client(SZ)
    js = await ensure_streams(nc, SZ)
    for i in range(count):
        await js.publish(subjects.dlq_subject(SZ, SERVICE), str(i).encode())
    return nc, js


async def _bind(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    return await durable_pull(
        js,
        subjects.dlq_stream_name(SZ),
        DURABLE,
        filter_subject=subjects.dlq_wildcard(SZ),
        ack_wait_s=30.0,
        max_ack_pending=64,
    )


async def test_batches_reach_the_owner_within_the_batch_size(topology: Topology) -> None:
    nc, js = await _dead_letters(topology, 7)
    got: list[bytes] = []
    sizes: list[int] = []

    async def handle(msgs: list[Msg]) -> None:
        sizes.append(len(msgs))
        for m in msgs:
            got.append(m.data)
            await m.ack()

    worker = PullWorker(handle, batch=3, events="test")
    sub = await _bind(js)
    worker.start(sub, task_name="test-pull-worker")
    worker.start(sub, task_name="test-pull-worker")  # idempotent: still one loop
    await eventually(lambda: len(got) == 7)
    assert sorted(got) == [str(i).encode() for i in range(7)]
    assert max(sizes) <= 3
    assert await worker.stop(timeout=2.0, what="test")
    assert not worker.running
    assert await worker.stop(timeout=2.0, what="test")  # idempotent
    await nc.close()


async def test_the_owners_window_sizes_each_fetch_and_a_stop_waits_for_the_batch(topology: Topology) -> None:
    nc, js = await _dead_letters(topology, 4)
    in_hand = asyncio.Event()
    release = asyncio.Event()
    asked: list[int] = []
    acked: list[bytes] = []

    async def room() -> int:
        asked.append(1)
        return 1

    async def handle(msgs: list[Msg]) -> None:
        assert len(msgs) == 1
        in_hand.set()
        await release.wait()
        for m in msgs:
            await m.ack()
            acked.append(m.data)

    worker = PullWorker(handle, batch=10, room=room, events="test")
    worker.start(await _bind(js), task_name="test-pull-worker")
    await asyncio.wait_for(in_hand.wait(), 5.0)
    stopping = asyncio.create_task(worker.stop(timeout=5.0, what="test"))
    await asyncio.sleep(0)  # the stop runs up to its wait on the loop: the flag is set
    assert not stopping.done()  # the batch in hand is still being worked on
    release.set()
    assert await stopping
    assert len(acked) == 1  # the stop flag ended the loop after that batch
    assert asked
    await nc.close()


async def test_begin_stop_ends_the_loop_without_waiting_and_is_not_reported(topology: Topology) -> None:
    nc, js = await _dead_letters(topology, 3)
    got: list[bytes] = []
    ended: list[BaseException | None] = []

    async def handle(msgs: list[Msg]) -> None:
        for m in msgs:
            got.append(m.data)
            await m.ack()

    worker = PullWorker(handle, batch=10, events="test", on_end=ended.append)
    worker.begin_stop()  # not running: nothing to stop, and no flag left behind for the start
    worker.start(await _bind(js), task_name="test-pull-worker")
    await eventually(lambda: len(got) == 3)
    worker.begin_stop()  # returns at once: the loop sees the flag within one fetch wait
    await eventually(lambda: not any(t.get_name() == "test-pull-worker" for t in asyncio.all_tasks()))
    assert worker.running  # until stop() collects it
    assert await worker.stop(timeout=2.0, what="test")
    assert not worker.running and ended == []
    await nc.close()


async def test_a_loop_that_ends_unasked_is_reported_to_its_owner(topology: Topology) -> None:
    nc, js = await _dead_letters(topology, 1)
    ended: list[BaseException | None] = []

    async def handle(msgs: list[Msg]) -> None:
        raise RuntimeError("a bug in the owner")

    worker = PullWorker(handle, batch=10, events="test", on_end=ended.append)
    worker.start(await _bind(js), task_name="test-pull-worker")
    await eventually(lambda: bool(ended))
    [error] = ended
    assert isinstance(error, RuntimeError)
    assert await worker.stop(timeout=2.0, what="test")
    assert len(ended) == 1  # the stop itself is not reported
    await nc.close()
