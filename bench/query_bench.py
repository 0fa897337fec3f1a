"""``make bench``: Query throughput and latency, full path vs the bare pipeline, in one run.

The machine is shared and noisy, so absolute numbers drift; what this prints that means something
is the ratio of the full tongban path to a bare baseline measured in the same run on the same NATS
topology (hub + a leaf per region): gRPC → NATS request across the hub → responder → reply with no
validation, signing, sealing, ledger or tracing. Rounds alternate bare/full to spread the drift.

    python -m bench.query_bench [--duration 4] [--concurrency 1,16,64] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tongban.core.catalogue import Catalogue
from tongban.ops.dev import DEMO_PERSON, DevStack
from tongban.runtime.natsroles import NatsRole
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SZ, WX = "440300", "320200"


@dataclass
class Result:
    target: str
    concurrency: int
    ok: int
    errors: int
    seconds: float
    latencies_ms: list[float]
    cpu_ms_per_req: dict[str, float] | None = None
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def pension_request() -> exchange_pb2.QueryRequest:
    cat = Catalogue.load()
    item = next(i for i in cat.items.values() if "参保缴费记录" in i.name)
    req = exchange_pb2.ServiceRequest(service_code=item.code, target_region=WX)
    req.applicant.kind = exchange_pb2.APPLICANT_KIND_PERSON
    req.applicant.id_no = DEMO_PERSON
    req.governance.purpose_code = "KSTB_CASE_HANDLING"
    req.governance.legal_basis = exchange_pb2.LEGAL_BASIS_STATUTORY_DUTY
    req.governance.approval_reference = "SZ-APPROVAL-2026-0001"
    return exchange_pb2.QueryRequest(request=req)


async def load(address: str, target: str, concurrency: int, duration: float, warmup: float) -> Result:
    request = pension_request()
    async with grpc.aio.insecure_channel(address) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        lat: list[float] = []
        errors = 0
        kinds: dict[str, int] = {}
        start_at = time.perf_counter() + warmup
        end_at = start_at + duration

        async def worker() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                if t0 >= end_at:
                    return
                try:
                    await stub.Query(request, timeout=10)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    kind = f"{exc.code().name} {(exc.details() or '')[:50]}"
                t1 = time.perf_counter()
                if t0 >= start_at and t1 <= end_at:
                    if ok:
                        lat.append((t1 - t0) * 1000)
                    else:
                        errors += 1
                        kinds[kind] = kinds.get(kind, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Result(target, concurrency, len(lat), errors, duration, lat, error_kinds=kinds)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measured(
    address: str, target: str, c: int, args: argparse.Namespace, pids: dict[str, int]
) -> Result:
    """One load run, with the CPU each named process spent per answered request."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    res = await load(address, target, c, args.duration, args.warmup)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    # CPU covers warm-up too; spread it over everything answered in that time (rate x total time).
    answered = max(res.rps * (args.duration + args.warmup), 1.0)
    res.cpu_ms_per_req = {name: (after[name] - before[name]) * 1000 / answered for name in pids}
    return res


def rss_peak_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def wait_port(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("bare gateway did not start")
        await asyncio.sleep(0.05)
    return int(path.read_text())


async def run(args: argparse.Namespace) -> dict[str, object]:
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="tongban-bench-") as tmp:
        extra = {} if args.demo_backends else {"connector": {"adapters": "bench.adapters:fixed"}}
        stack = DevStack(Path(tmp) / "stack", extra_config=extra)
        bare: list[subprocess.Popen[bytes]] = []
        try:
            await stack.start()
            assert stack.topology is not None
            port_file = Path(tmp) / "bare.port"
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            py = [sys.executable, "-m", "bench.bare"]
            bare.append(
                subprocess.Popen(
                    [
                        *py,
                        "responder",
                        "--nats",
                        stack.topology.url(WX),
                        "--nkey-seed",
                        str(stack.topology.client_seed(WX, NatsRole.ADMIN)),
                        "--region",
                        WX,
                    ],
                    env=env,
                )
            )
            bare.append(
                subprocess.Popen(
                    [
                        *py,
                        "gateway",
                        "--nats",
                        stack.topology.url(SZ),
                        "--nkey-seed",
                        str(stack.topology.client_seed(SZ, NatsRole.ADMIN)),
                        "--port-file",
                        str(port_file),
                        "--to",
                        WX,
                        "--region",
                        SZ,
                    ],
                    env=env,
                )
            )
            bare_addr = f"127.0.0.1:{await wait_port(port_file, bare[1])}"
            full_addr = f"127.0.0.1:{stack.ports[SZ]}"
            # Both paths answer before measuring (the bare responder's interest must reach the hub).
            for addr in (bare_addr, full_addr):
                for _ in range(200):
                    r = await load(addr, "probe", 1, 0.05, 0)
                    if r.ok:
                        break
                else:
                    raise RuntimeError(f"{addr} never answered")
            gw = next(ch for ch in stack.children if ch.role == "gateway" and ch.region == SZ)
            cn = next(ch for ch in stack.children if ch.role == "connector" and ch.region == WX)
            pids = {
                "bare": {"gateway": bare[1].pid, "responder": bare[0].pid, "bench client": os.getpid()},
                "full": {"gateway": gw.proc.pid, "connector": cn.proc.pid, "bench client": os.getpid()},
            }
            results: dict[tuple[str, int], list[Result]] = {}
            for c in levels:
                for rnd in range(args.rounds):
                    order = ("bare", "full") if rnd % 2 == 0 else ("full", "bare")
                    for target in order:
                        addr = bare_addr if target == "bare" else full_addr
                        res = await measured(addr, target, c, args, pids[target])
                        results.setdefault((target, c), []).append(res)
                        print(
                            f"  {target:4} c={c:<3} round {rnd + 1}: {res.rps:8.0f} req/s  "
                            f"p50 {res.pct(50):6.2f} ms  p99 {res.pct(99):6.2f} ms  errors {res.errors}"
                            + (f" {res.error_kinds}" if res.error_kinds else ""),
                            file=sys.stderr,
                        )
            rss = {
                "gateway_440300_mb": rss_peak_mb(gw.proc.pid),
                "connector_320200_mb": rss_peak_mb(cn.proc.pid),
                "bare_gateway_mb": rss_peak_mb(bare[1].pid),
            }
        finally:
            for p in bare:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in bare:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            await stack.stop()

    rows = []
    for c in levels:
        b = max(results[("bare", c)], key=lambda r: r.rps)
        f = max(results[("full", c)], key=lambda r: r.rps)
        rows.append(
            {
                "concurrency": c,
                "bare_rps": round(b.rps),
                "full_rps": round(f.rps),
                "ratio": round(f.rps / b.rps, 3) if b.rps else None,
                "bare_p50_ms": round(b.pct(50), 2),
                "bare_p99_ms": round(b.pct(99), 2),
                "full_p50_ms": round(f.pct(50), 2),
                "full_p99_ms": round(f.pct(99), 2),
                "full_errors": sum(r.errors for r in results[("full", c)]),
                "rounds_full_rps": [round(r.rps) for r in results[("full", c)]],
                "rounds_bare_rps": [round(r.rps) for r in results[("bare", c)]],
                "bare_cpu_ms_per_req": {k: round(v, 3) for k, v in (b.cpu_ms_per_req or {}).items()},
                "full_cpu_ms_per_req": {k: round(v, 3) for k, v in (f.cpu_ms_per_req or {}).items()},
            }
        )
    return {
        "rows": rows,
        "rss": rss,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "median_ratio": statistics.median(r["ratio"] or 0 for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per round")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default="", help="also write the results to this file")
    p.add_argument(
        "--demo-backends",
        action="store_true",
        help="answer from the SQLite demo back ends instead of a fixed in-memory record (the default, "
        "which returns the same record as the bare responder so the ratio measures tongban itself)",
    )
    args = p.parse_args()
    out = asyncio.run(run(args))
    print("\nExchange.Query, Shenzhen 440300 → Wuxi 320200 through hub + leaves (best of rounds)")
    print(
        f"{'in flight':>9} | {'bare req/s':>10} | {'full req/s':>10} | {'full/bare':>9} | "
        f"{'bare p50/p99 ms':>15} | {'full p50/p99 ms':>15}"
    )
    print("-" * 84)
    for r in out["rows"]:  # type: ignore[attr-defined]
        print(
            f"{r['concurrency']:>9} | {r['bare_rps']:>10} | {r['full_rps']:>10} | {r['ratio']:>9} | "
            f"{r['bare_p50_ms']:>6}/{r['bare_p99_ms']:<8} | {r['full_p50_ms']:>6}/{r['full_p99_ms']:<8}"
        )
    print("\nCPU per answered request (ms), where the time goes:")
    for r in out["rows"]:  # type: ignore[attr-defined]
        bare_cpu = ", ".join(f"{k} {v}" for k, v in r["bare_cpu_ms_per_req"].items())
        full_cpu = ", ".join(f"{k} {v}" for k, v in r["full_cpu_ms_per_req"].items())
        print(f"  in flight {r['concurrency']:>3}: bare [{bare_cpu}]  full [{full_cpu}]")
    rss: dict[str, float] = out["rss"]  # type: ignore[assignment]
    print(
        f"\npeak RSS: gateway {rss['gateway_440300_mb']:.0f} MB, "
        f"connector {rss['connector_320200_mb']:.0f} MB, bare gateway {rss['bare_gateway_mb']:.0f} MB"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
