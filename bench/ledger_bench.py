"""``make bench``: the delivery ledger — append throughput, Merkle proof times, full verification time.

Three parts, each printed as it finishes:

a. Append throughput on a :class:`~ledger.store_sqlite.SQLiteLedger` (``synchronous=FULL``, the default):
   many concurrent single-draft ``append()`` callers (group commit batches them), and ``append(*drafts)``
   with 100 drafts per call. The bare baseline in the same run inserts the same rows with plain sqlite3
   ``executemany``, one transaction per batch of the same size, into a file with the same schema and pragmas:
   the ratio is what sealing, the hash chain and the async machinery cost on top of SQLite itself.
b. :class:`~ledger.merkle.MerkleTree` at ``--entries`` leaves: build time, and the median (and p99) time of an
   inclusion proof, its verification, a consistency proof and its verification, over random indexes/sizes.
c. Full verification of a ledger file of ``--entries`` entries (written first through the store's batched
   append, and that time is printed too): the hash chain (``ledger.verify.verify_sqlite_file``) and the
   Merkle tree over every leaf hash, both recomputed from the rows alone.

    python -m bench.ledger_bench [--entries 1000000] [--quick] [--ledger-file PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from ledger import _sqlite
from ledger.entry import ZERO_HASH, Entry, EntryDraft, Event, canonical_bytes, seal
from ledger.merkle import MerkleTree, leaf_hash, verify_consistency, verify_inclusion
from ledger.store_sqlite import SQLiteLedger
from ledger.verify import verify_sqlite_file

REGION, PEER = "440300", "320200"
SERVICE = "hukou.transfer"


def draft(n: int) -> EntryDraft:
    """A realistic draft: a digest, a trace id and a short detail, all derived from ``n``."""
    return EntryDraft(
        event=Event.RECEIVED,
        message_id=f"msg-{n:010d}",
        peer_region=PEER,
        service_code=SERVICE,
        envelope_digest=hashlib.sha256(n.to_bytes(8, "big")).digest(),
        trace_id=hashlib.md5(n.to_bytes(8, "big")).hexdigest(),
        detail="ok",
        time_ns=1_760_000_000_000_000_000 + n,
    )


def drafts(start: int, count: int) -> list[EntryDraft]:
    return [draft(n) for n in range(start, start + count)]


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>10,.0f} entries/s"


def micros(samples: list[float]) -> str:
    xs = sorted(samples)
    p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
    return f"median {statistics.median(xs) * 1e6:7.1f} µs   p99 {p99 * 1e6:7.1f} µs"


# --- a. append throughput -----------------------------------------------------------------------------------


async def ledger_concurrent(path: Path, total: int, callers: int) -> tuple[float, int]:
    """``callers`` tasks each appending single drafts; returns (seconds, commits)."""
    todo = drafts(0, total)
    async with SQLiteLedger(path, REGION) as ledger:
        await ledger.append(draft(10**9))  # file created and warm before the clock starts
        ledger.commits = 0
        per = total // callers

        async def caller(k: int) -> None:
            for d in todo[k * per : (k + 1) * per]:
                await ledger.append(d)

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        seconds = time.perf_counter() - started
        return seconds, ledger.commits


async def ledger_batched(path: Path, total: int, per_call: int, callers: int) -> tuple[float, int]:
    """``callers`` tasks each appending ``per_call`` drafts per call; returns (seconds, commits)."""
    todo = drafts(0, total)
    async with SQLiteLedger(path, REGION) as ledger:
        await ledger.append(draft(10**9))
        ledger.commits = 0
        calls = [todo[i : i + per_call] for i in range(0, total, per_call)]

        async def caller(k: int) -> None:
            for batch in calls[k::callers]:
                await ledger.append(*batch)

        started = time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(callers)))
        seconds = time.perf_counter() - started
        return seconds, ledger.commits


def bare_sqlite(path: Path, total: int, batch: int) -> float:
    """The same rows through plain sqlite3: one ``executemany`` transaction per ``batch`` rows."""
    rows: list[_sqlite.Row] = []
    prev = ZERO_HASH
    for i, d in enumerate(drafts(0, total)):
        entry = seal(d, index=i, region=REGION, prev_hash=prev)
        prev = entry.entry_hash
        rows.append(_sqlite.entry_to_row(entry))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in _sqlite.DDL:
            conn.execute(statement)
        started = time.perf_counter()
        for i in range(0, total, batch):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_sqlite.INSERT_ENTRY, rows[i : i + batch])
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


async def part_append(work: Path, total: int) -> None:
    print(f"\na. append throughput, SQLiteLedger synchronous=FULL, {total:,} entries per run")
    print(f"   (files in {work})")
    callers = 512
    seconds, commits = await ledger_concurrent(work / "concurrent.db", total, callers)
    avg = max(1, round(total / max(commits, 1)))
    bare = bare_sqlite(work / "bare-concurrent.db", total, avg)
    print(
        f"   {callers} concurrent callers, 1 draft per append: {rate(total, seconds)}"
        f"   ({commits} commits, ~{avg} entries each)"
    )
    print(f"   bare sqlite3 executemany, {avg} rows per transaction:  {rate(total, bare)}")
    print(f"   ratio ledger/bare: {bare / seconds:.2f}")

    for callers in (1, 8):
        seconds, commits = await ledger_batched(work / f"batched-{callers}.db", total, 100, callers)
        avg = max(1, round(total / max(commits, 1)))
        bare = bare_sqlite(work / f"bare-batched-{callers}.db", total, avg)
        print(
            f"   {callers} caller(s), append(*100 drafts):           {rate(total, seconds)}"
            f"   ({commits} commits, ~{avg} entries each)"
        )
        print(f"   bare sqlite3 executemany, {avg} rows per transaction:  {rate(total, bare)}")
        print(f"   ratio ledger/bare: {bare / seconds:.2f}")


# --- b. Merkle tree -----------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def part_merkle(n: int, samples: int) -> None:
    print(f"\nb. MerkleTree, {n:,} leaves")
    rng = random.Random(1)
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]
    tree = MerkleTree()
    build = timed(lambda: tree.extend(leaves))
    print(f"   build (extend):       {build:7.2f} s   ({n / build:,.0f} leaves/s)")
    one_by_one = min(n, 100_000)
    small = MerkleTree()
    appended = timed(lambda: [small.append(h) for h in leaves[:one_by_one]])
    print(f"   append() one by one:  {appended / one_by_one * 1e6:7.2f} µs per leaf")
    root = tree.root()
    print(f"   root():               {timed(tree.root) * 1e6:7.1f} µs")

    prove: list[float] = []
    check: list[float] = []
    for _ in range(samples):
        index = rng.randrange(n)
        started = time.perf_counter()
        proof = tree.inclusion_proof(index)
        prove.append(time.perf_counter() - started)
        started = time.perf_counter()
        verify_inclusion(leaves[index], index, n, proof, root)
        check.append(time.perf_counter() - started)
    print(f"   inclusion_proof:      {micros(prove)}   ({samples} random leaves; target < 1 ms)")
    print(f"   verify_inclusion:     {micros(check)}")

    historic: list[float] = []
    for _ in range(samples):
        size = rng.randrange(1, n + 1)
        index = rng.randrange(size)
        started = time.perf_counter()
        tree.inclusion_proof(index, size)
        historic.append(time.perf_counter() - started)
    print(f"   inclusion_proof at a random earlier size: {micros(historic)}")

    prove, check = [], []
    for _ in range(samples):
        old = rng.randrange(1, n)
        old_root = tree.root(old)
        started = time.perf_counter()
        proof = tree.consistency_proof(old)
        prove.append(time.perf_counter() - started)
        started = time.perf_counter()
        verify_consistency(old, n, old_root, root, proof)
        check.append(time.perf_counter() - started)
    print(f"   consistency_proof:    {micros(prove)}")
    print(f"   verify_consistency:   {micros(check)}")


# --- c. full verification -----------------------------------------------------------------------------------


async def fill(path: Path, n: int) -> None:
    """Write entries up to ``n`` through the store's batched append, 1,000 drafts per call, 4 callers."""
    async with SQLiteLedger(path, REGION, max_batch=4096) as ledger:
        have = await ledger.size()
        per_call, callers = 1000, 4
        calls = [(s, min(per_call, n - s)) for s in range(have, n, per_call)]

        async def caller(k: int) -> None:
            for start, count in calls[k::callers]:
                await ledger.append(*drafts(start, count))

        # Log order follows the order of the calls, not of the drafts' numbers: fine for a benchmark.
        await asyncio.gather(*(caller(k) for k in range(callers)))


def stored_size(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT max(idx) FROM entries").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def rows(path: Path) -> Iterator[Entry]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        cursor = conn.execute(f"{_sqlite.SELECT_ENTRIES} ORDER BY idx")
        while chunk := cursor.fetchmany(10_000):
            yield from (_sqlite.entry_from_row(row) for row in chunk)
    finally:
        conn.close()


def tree_of_file(path: Path) -> MerkleTree:
    tree = MerkleTree()
    batch: list[bytes] = []
    for entry in rows(path):
        batch.append(leaf_hash(canonical_bytes(entry)))
        if len(batch) == 10_000:
            tree.extend(batch)
            batch = []
    tree.extend(batch)
    return tree


def part_verify(path: Path, n: int) -> None:
    print(f"\nc. full verification of {n:,} entries ({path})")
    have = stored_size(path)
    if have < n:
        started = time.perf_counter()
        asyncio.run(fill(path, n))
        seconds = time.perf_counter() - started
        print(f"   generated {n - have:,} entries via append(*1000 drafts): {seconds:.1f} s")
        print(f"   ({rate(n - have, seconds)})")
    else:
        print(f"   reusing {have:,} entries already in the file")
    started = time.perf_counter()
    report = verify_sqlite_file(path, REGION)
    chain = time.perf_counter() - started
    if not report.ok:
        raise SystemExit(f"the chain does not verify: {report}")
    started = time.perf_counter()
    tree = tree_of_file(path)
    merkle = time.perf_counter() - started
    print(f"   hash chain (verify_sqlite_file):  {chain:6.1f} s  ({rate(report.count, chain)})")
    print(f"   Merkle tree over all leaves:      {merkle:6.1f} s  ({rate(tree.size, merkle)})")
    print(f"   root of size {tree.size:,}: {tree.root().hex()}")
    print(f"   chain + tree, from scratch:       {chain + merkle:6.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--entries", type=int, default=1_000_000, help="tree size and ledger size of parts b and c"
    )
    p.add_argument("--append-entries", type=int, default=50_000, help="entries per append-throughput run")
    p.add_argument("--samples", type=int, default=2_000, help="random proofs timed in part b")
    p.add_argument("--quick", action="store_true", help="a small run: 20,000 entries, 5,000 per append run")
    p.add_argument("--ledger-file", type=Path, help="keep (and reuse) the ledger file of part c here")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: append,merkle,verify")
    args = p.parse_args()
    # The store logs every open and close; only warnings belong in a benchmark report.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.quick:
        args.entries, args.append_entries, args.samples = 20_000, 5_000, 500
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(f"ledger bench: {args.entries:,} entries (pid {os.getpid()})")
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as tmp:
        work = Path(tmp)
        if "append" not in skip:
            asyncio.run(part_append(work, args.append_entries))
        if "merkle" not in skip:
            part_merkle(args.entries, args.samples)
        if "verify" not in skip:
            part_verify(args.ledger_file or work / "verify.db", args.entries)


if __name__ == "__main__":
    main()
