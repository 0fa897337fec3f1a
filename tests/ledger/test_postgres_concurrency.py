"""Four OS processes append to one region's PostgreSQL ledger at once: the log must come out as one chain.

Each process stands for a gateway or connector replica: its own ``PostgresLedger`` (own pool, own writer
task), with several concurrent callers appending single drafts and groups of drafts. The processes open their
ledgers, report ready, and start appending together on one signal, so their batches interleave.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import sys
from pathlib import Path

import asyncpg
import pytest

from ledger import PostgresLedger, verify_entries, verify_store

from .conftest import PG_DSN
from .helpers import REGION

pytestmark = pytest.mark.postgres

PROCESSES = 4
PER_PROCESS = 500
CALLERS = 8
"""Concurrent appending tasks in each process."""
DEADLINE_S = 60.0

# The appender process: argv = dsn, schema, worker number. Drafts are named w<worker>-<n>; the detail names
# the caller and the append call ("group"), so the parent can check each call landed contiguous and in order.
APPENDER = """
import asyncio, random, sys
from ledger import EntryDraft, Event, PostgresLedger

async def main(dsn, schema, worker, total, callers):
    rng = random.Random(worker)
    sizes = []
    while sum(sizes) < total:
        sizes.append(min(rng.choice([1, 1, 1, 2, 3, 5, 8]), total - sum(sizes)))
    groups = []
    n = 0
    for g, size in enumerate(sizes):
        groups.append([
            EntryDraft(Event.SUBMITTED, f"w{worker}-{n + k:04d}", "320200", "hukou.transfer",
                       detail=f"w{worker} c{g % callers} g{g}")
            for k in range(size)
        ])
        n += size
    async with PostgresLedger(dsn, "440300", schema=schema, timeout=30) as ledger:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        async def caller(c):
            for g in range(c, len(groups), callers):
                await ledger.append(*groups[g])
        await asyncio.gather(*(caller(c) for c in range(callers)))
        print("done", ledger.commits, flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
"""


async def _start(schema: str, worker: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        APPENDER,
        PG_DSN,
        schema,
        str(worker),
        str(PER_PROCESS),
        str(CALLERS),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def _expect_line(process: asyncio.subprocess.Process, word: str) -> str:
    """The next stdout line starting with ``word``, skipping log lines; fails if the process ends first."""
    assert process.stdout is not None and process.stderr is not None
    while line := (await process.stdout.readline()).decode():
        if line.startswith(word):
            return line
    stderr = (await process.stderr.read()).decode()
    pytest.fail(f"appender process ended without saying {word!r}; stderr:\n{stderr[-3000:]}")


async def test_four_processes_append_one_consistent_log(pg_schema: tuple[asyncpg.Connection, str]) -> None:
    _, schema = pg_schema
    # The schema exists before the processes start, so none of them creates it (that race is covered too,
    # but by the DDL lock, not by this test).
    async with PostgresLedger(PG_DSN, REGION, schema=schema):
        pass
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with asyncio.timeout(DEADLINE_S):
            processes = [await _start(schema, w) for w in range(PROCESSES)]
            await asyncio.gather(*(_expect_line(p, "ready") for p in processes))
            for p in processes:
                assert p.stdin is not None
                p.stdin.write(b"go\n")
                await p.stdin.drain()
            await asyncio.gather(*(_expect_line(p, "done") for p in processes))
            codes = await asyncio.gather(*(p.wait() for p in processes))
        assert codes == [0] * PROCESSES
    finally:
        for p in processes:
            if p.returncode is None:
                p.kill()
                await p.wait()

    total = PROCESSES * PER_PROCESS
    async with PostgresLedger(PG_DSN, REGION, schema=schema) as ledger:
        entries = await ledger.entries()
        paged = await verify_store(ledger, page=300)
    assert [e.index for e in entries] == list(range(total))
    report = verify_entries(entries, region=REGION)
    assert report.ok and report.count == total
    assert paged == report

    ids = collections.Counter(e.message_id for e in entries)
    expected = {f"w{w}-{n:04d}" for w in range(PROCESSES) for n in range(PER_PROCESS)}
    assert set(ids) == expected and max(ids.values()) == 1

    groups: dict[str, list[int]] = collections.defaultdict(list)
    for e in entries:
        groups[e.detail].append(e.index)
    by_caller: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for detail, indexes in groups.items():
        # Each append call is contiguous, its drafts in argument order (message numbers ascend with index).
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), detail
        numbers = [int(entries[i].message_id.split("-")[1]) for i in indexes]
        assert numbers == sorted(numbers), detail
        worker, caller, group = detail.split()
        by_caller[f"{worker} {caller}"].append((int(group[1:]), indexes[0]))
    for caller_groups in by_caller.values():
        # One caller's appends are sequential, so they land in the order it made them.
        assert [start for _, start in sorted(caller_groups)] == sorted(start for _, start in caller_groups)

    # The processes really overlapped: the log is not four blocks, one per process.
    owners = [e.message_id.split("-")[0] for e in entries]
    switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
    assert switches > PROCESSES
