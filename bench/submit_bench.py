"""``make bench`` (second part): Submit throughput next to the bare JetStream publish rate, one run.

Three numbers per concurrency level, all measured on the same NATS topology in the same run:

* bare: JetStream publishes with acks into a file stream with ``sync_interval: always`` on the
  Shenzhen leaf (what one durable hand-off costs here, without tongban);
* accepted/s: ``Exchange.Submit`` receipts (validate, sign, seal, outbox + ledger commit, publish to
  the outbound stream, reply);
* delivered/s: the same Submits until every case is approved in Shenzhen's case store, i.e. through
  forwarder → Wuxi's inbound stream → connector → back end → signed events → forwarder → Shenzhen's
  event consumer. End to end, counted from the first Submit.

Ratios are against bare. Rounds alternate bare/full to spread the drift of a shared machine.

    python -m bench.submit_bench [--duration 4] [--concurrency 1,16,64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc
from nats.js.api import StorageType, StreamConfig

from bench.query_bench import cpu_seconds
from gateway.cases import message_ids_with_status
from tongban.ops.dev import DevStack
from tongban.ops.natsserver import Topology
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SZ, WX = "440300", "320200"
APPROVED = 11

ERROR_KINDS: dict[str, int] = {}
"""Failed Submits of the whole run by status and message (printed at the end)."""


def submit_request(key: str = "") -> exchange_pb2.SubmitRequest:
    """企业职工基本养老保险关系转移接续 from Shenzhen to Wuxi (the bench back end answers any applicant)."""
    req = exchange_pb2.ServiceRequest(service_code="YLBXZYJX0001", target_region=WX, idempotency_key=key)
    req.applicant.kind = exchange_pb2.APPLICANT_KIND_PERSON
    req.applicant.id_no = "44030419900307123X"
    req.fields.update({"transfer_out_region": WX, "transfer_in_region": SZ})
    req.governance.purpose_code = "KSTB_CASE_HANDLING"
    req.governance.legal_basis = exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY
    req.governance.approval_reference = "SZ-APPROVAL-2026-0001"
    return exchange_pb2.SubmitRequest(request=req)


async def bare_publish(topology: Topology, concurrency: int, duration: float, size: int) -> float:
    """JetStream publishes/s (each awaited for its ack) into a file stream on Shenzhen's leaf (as the
    topology's admin: the baseline's own stream is no tongban role's)."""
    nc = await topology.admin_client(SZ)
    try:
        js = nc.jetstream(domain=SZ)
        name = f"BENCH_{concurrency}"
        await js.add_stream(
            StreamConfig(name=name, subjects=[f"bench.{concurrency}.>"], storage=StorageType.FILE)
        )
        payload = b"x" * size
        done = 0
        end = time.perf_counter() + duration

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < end:
                i += 1
                await js.publish(
                    f"bench.{concurrency}.{w}", payload, headers={"Nats-Msg-Id": f"{w}-{i}-{time.time_ns()}"}
                )
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t0
        await js.delete_stream(name)
        return done / elapsed
    finally:
        await nc.close()


def approved(cases_db: Path, ids: set[str]) -> int:
    return len(ids & message_ids_with_status(cases_db, APPROVED))


async def full_submit(
    address: str, cases_db: Path, concurrency: int, duration: float, tag: str
) -> tuple[float, float, int]:
    """(accepted/s, delivered/s, errors); ``full_submit.cases`` is set to the number delivered."""
    ids: set[str] = set()
    errors = 0
    async with grpc.aio.insecure_channel(address) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        end = time.perf_counter() + duration
        counter = 0

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < end:
                counter += 1
                try:
                    r = await stub.Submit(submit_request(key=f"{tag}-{counter}"), timeout=10)
                    ids.add(r.message_id)
                except grpc.aio.AioRpcError as exc:
                    errors += 1
                    kind = f"{exc.code().name} {(exc.details() or '')[:50]}"
                    ERROR_KINDS[kind] = ERROR_KINDS.get(kind, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        accepted_s = time.perf_counter() - t0
    deadline = time.perf_counter() + 120
    while approved(cases_db, ids) < len(ids):
        if time.perf_counter() > deadline:
            raise RuntimeError("cases not delivered within 120 s")
        await asyncio.sleep(0.05)
    delivered_s = time.perf_counter() - t0
    full_submit.cases = len(ids)  # type: ignore[attr-defined]
    return len(ids) / accepted_s, len(ids) / delivered_s, errors


async def run(args: argparse.Namespace) -> dict[str, object]:
    levels = [int(x) for x in args.concurrency.split(",")]
    rows = []
    cpu_rows: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="tongban-submit-bench-") as tmp:
        stack = DevStack(
            Path(tmp) / "stack",
            extra_config={"connector": {"adapters": "bench.adapters:fixed"}, "log": {"level": "warning"}},
        )
        try:
            await stack.start()
            assert stack.topology is not None and stack.state is not None
            address = f"127.0.0.1:{stack.ports[SZ]}"
            cases_db = stack.state.config_path(SZ).parent / "cases.sqlite"
            size = len(submit_request().SerializeToString()) + 600  # about the sealed, signed envelope
            await full_submit(address, cases_db, 4, 0.5, "warmup")
            pids = {
                "gateway 440300": next(
                    c for c in stack.children if c.role == "gateway" and c.region == SZ
                ).proc.pid,
                "connector 320200": next(
                    c for c in stack.children if c.role == "connector" and c.region == WX
                ).proc.pid,
                "bench client": os.getpid(),
            }
            nats_pids = [s.proc.pid for s in (stack.topology.hub, *stack.topology.leaves.values()) if s.proc]
            for c in levels:
                bare: list[float] = []
                full: list[tuple[float, float, int]] = []
                for rnd in range(args.rounds):
                    order = ("bare", "full") if rnd % 2 == 0 else ("full", "bare")
                    for target in order:
                        if target == "bare":
                            bare.append(await bare_publish(stack.topology, c, args.duration, size))
                            print(
                                f"  bare c={c:<3} round {rnd + 1}: {bare[-1]:8.0f} publishes/s",
                                file=sys.stderr,
                            )
                        else:
                            before = {k: cpu_seconds(p) for k, p in pids.items()}
                            before_nats = sum(cpu_seconds(p) for p in nats_pids)
                            full.append(await full_submit(address, cases_db, c, args.duration, f"c{c}r{rnd}"))
                            n = max(full_submit.cases, 1)  # type: ignore[attr-defined]
                            cpu = {k: (cpu_seconds(p) - before[k]) * 1000 / n for k, p in pids.items()}
                            cpu["nats-servers"] = (
                                (sum(cpu_seconds(p) for p in nats_pids) - before_nats) * 1000 / n
                            )
                            cpu_rows.setdefault(c, cpu)
                            a, d, e = full[-1]
                            print(
                                f"  full c={c:<3} round {rnd + 1}: {a:8.0f} accepted/s "
                                f"{d:8.0f} delivered/s  errors {e}",
                                file=sys.stderr,
                            )
                b = max(bare)
                a = max(x[0] for x in full)
                d = max(x[1] for x in full)
                rows.append(
                    {
                        "concurrency": c,
                        "bare_publish_s": round(b),
                        "accepted_s": round(a),
                        "delivered_s": round(d),
                        "accepted_ratio": round(a / b, 3),
                        "delivered_ratio": round(d / b, 3),
                        "errors": sum(x[2] for x in full),
                    }
                )
        finally:
            await stack.stop()
    return {"rows": rows, "duration_s": args.duration, "rounds": args.rounds, "cpu_ms_per_case": cpu_rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds of Submits per round")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()
    out = asyncio.run(run(args))
    print("\nExchange.Submit, Shenzhen 440300 → Wuxi 320200, store and forward (best of rounds)")
    print(
        f"{'in flight':>9} | {'bare JS pub/s':>13} | {'accepted/s':>10} | {'delivered/s':>11} | "
        f"{'accepted/bare':>13} | {'delivered/bare':>14}"
    )
    print("-" * 86)
    for r in out["rows"]:  # type: ignore[attr-defined]
        print(
            f"{r['concurrency']:>9} | {r['bare_publish_s']:>13} | {r['accepted_s']:>10} | "
            f"{r['delivered_s']:>11} | {r['accepted_ratio']:>13} | {r['delivered_ratio']:>14}"
        )
    print("\nCPU per delivered case (ms; first round), where the time goes:")
    for c, cpu in out["cpu_ms_per_case"].items():  # type: ignore[attr-defined]
        print(f"  in flight {c:>3}: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    if ERROR_KINDS:
        print(f"\nfailed Submits: {ERROR_KINDS}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
