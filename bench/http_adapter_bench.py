"""``make bench`` (HTTP adapter): Query through the declarative HTTP adapter against a local REST
back end, as a ratio to the same Query answered by an in-process adapter, in one run.

One dev stack (hub + a leaf per region, gateways and connectors as processes). Wuxi's connector
answers the pension item with a router on the applicant: one ID number goes to an in-process adapter
returning the bench record, the other to an :class:`~connectors.backends.http.HttpService` calling a
local aiohttp back end (its own process, so its CPU is not counted in the connector's) that returns
the same record wrapped as a REST service would, mapped back by JSON paths. Everything else (the
partner's gRPC call, validation, signing, sealing, both ledgers) is the same, so the ratio is the cost
of the HTTP hop itself: request building, the pooled client, the back end, reading and mapping the
answer. Rounds alternate in-process/HTTP to spread the drift of a shared machine.

    python -m bench.http_adapter_bench [--duration 3] [--concurrency 1,16,64] [--rounds 2]
    python -m bench.http_adapter_bench backend --port-file F     (the REST back end, run by the bench)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from bench.adapters import FixedAdapter
from bench.bare import SAMPLE
from bench.query_bench import Result, cpu_seconds, pension_request, rss_peak_mb, wait_port
from connectors.adapters import Adapter, AdapterRequest
from connectors.backends.http import HttpBackend
from tongban.core.catalogue import Catalogue
from tongban.core.identifiers import citizen_id_check_char
from tongban.ops.dev import DEMO_PERSON, DevStack
from tongban.runtime.config import Config
from tongban.runtime.process import wait_for_signal
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SZ, WX = "440300", "320200"
PENSION = "SBJFJLCX0001"
HTTP_PERSON = "32021319851120003" + citizen_id_check_char("32021319851120003")
"""The applicant whose requests the connector sends to the HTTP back end (DEMO_PERSON's stay in
process): two valid ID numbers of one length, so validation costs the same."""
URL_ENV = "BENCH_HTTP_BACKEND_URL"
"""How the bench tells its connector process where the back end listens."""
TARGETS = {"in-process": DEMO_PERSON, "http": HTTP_PERSON}


# -- the connector side: the adapters factory ([connector] adapters = "bench.http_adapter_bench:adapters")


class ByApplicant:
    """Routes a request by its applicant: the HTTP back end for HTTP_PERSON, in process otherwise."""

    def __init__(self, http: Adapter, local: Adapter) -> None:
        self.http = http
        self.local = local

    async def call(self, request: AdapterRequest) -> Mapping[str, Any]:
        adapter = self.http if request.applicant_id == HTTP_PERSON else self.local
        return await adapter.call(request)


def adapters(cfg: Config) -> Mapping[str, Adapter]:
    """The pension item through :class:`ByApplicant`; every other item in process."""
    backend = HttpBackend.from_table(
        "bench", {"kind": "http", "base_url": os.environ[URL_ENV], "max_concurrency": 64}, cfg
    )
    http = backend.service(
        PENSION,
        {
            "path": "/persons/{applicant.id}/pension",
            "response": {name: f"$.data.{name}" for name in SAMPLE},
        },
        Catalogue.load().items[PENSION],
    )
    out: dict[str, Adapter] = {code: FixedAdapter() for code in Catalogue.load().codes()}
    out[PENSION] = ByApplicant(http, FixedAdapter())
    return out


# -- the REST back end (its own process) -------------------------------------------------------


async def serve_backend(port_file: Path) -> None:
    """The pension record as a REST back end answers it: ``{"code": 0, "data": {...}}``."""
    body = json.dumps({"code": 0, "message": "ok", "data": SAMPLE}, ensure_ascii=False).encode()

    async def pension(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/persons/{id}/pension", pension)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port_file.write_text(str(runner.addresses[0][1]))
    await wait_for_signal()
    await runner.cleanup()


# -- the load ----------------------------------------------------------------------------------


def query_for(person: str) -> exchange_pb2.QueryRequest:
    q = pension_request()
    q.request.applicant.id_no = person
    return q


async def load(address: str, target: str, concurrency: int, duration: float, warmup: float) -> Result:
    """``concurrency`` callers asking Query for ``target``'s applicant for ``duration`` seconds."""
    request = query_for(TARGETS.get(target, DEMO_PERSON))
    lat: list[float] = []
    kinds: dict[str, int] = {}
    errors = 0
    async with grpc.aio.insecure_channel(address) as ch:
        stub = exchange_pb2_grpc.ExchangeStub(ch)
        start_at = time.perf_counter() + warmup
        end_at = start_at + duration

        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < end_at:
                kind = ""
                try:
                    answer = await stub.Query(request, timeout=10)
                    if answer.data["status"] != SAMPLE["status"]:
                        kind = "wrong answer"
                except grpc.aio.AioRpcError as exc:
                    kind = f"{exc.code().name} {(exc.details() or '')[:50]}"
                t1 = time.perf_counter()
                if t0 >= start_at and t1 <= end_at:
                    if not kind:
                        lat.append((t1 - t0) * 1000)
                    else:
                        errors += 1
                        kinds[kind] = kinds.get(kind, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(target, concurrency, len(lat), errors, duration, lat, error_kinds=kinds)


async def measured(
    address: str, target: str, c: int, args: argparse.Namespace, pids: dict[str, int]
) -> Result:
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    res = await load(address, target, c, args.duration, args.warmup)
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    answered = max(res.rps * (args.duration + args.warmup), 1.0)
    res.cpu_ms_per_req = {name: (after[name] - before[name]) * 1000 / answered for name in pids}
    return res


async def run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="tongban-bench-http-") as tmp:
        port_file = Path(tmp) / "backend.port"
        backend = subprocess.Popen(
            [sys.executable, "-m", "bench.http_adapter_bench", "backend", "--port-file", str(port_file)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stack = DevStack(
            Path(tmp) / "stack", extra_config={"connector": {"adapters": "bench.http_adapter_bench:adapters"}}
        )
        try:
            port = await wait_port(port_file, backend)
            os.environ[URL_ENV] = f"http://127.0.0.1:{port}/api"  # inherited by the connector processes
            await stack.start()
            address = f"127.0.0.1:{stack.ports[SZ]}"
            for target in TARGETS:
                for _ in range(200):
                    if (await load(address, target, 1, 0.05, 0)).ok:
                        break
                else:
                    raise RuntimeError(f"{target} never answered")
            gw = next(ch for ch in stack.children if ch.role == "gateway" and ch.region == SZ)
            cn = next(ch for ch in stack.children if ch.role == "connector" and ch.region == WX)
            pids = {"gateway": gw.proc.pid, "connector": cn.proc.pid, "back end": backend.pid}
            results: dict[tuple[str, int], list[Result]] = {}
            for c in levels:
                for rnd in range(args.rounds):
                    order = list(TARGETS) if rnd % 2 == 0 else list(reversed(TARGETS))
                    for target in order:
                        res = await measured(address, target, c, args, pids)
                        results.setdefault((target, c), []).append(res)
                        print(
                            f"  {target:10} c={c:<3} round {rnd + 1}: {res.rps:8.0f} req/s  "
                            f"p50 {res.pct(50):6.2f} ms  p99 {res.pct(99):6.2f} ms  errors {res.errors}"
                            + (f" {res.error_kinds}" if res.error_kinds else ""),
                            file=sys.stderr,
                        )
            rss = rss_peak_mb(cn.proc.pid)
        finally:
            await stack.stop()
            if backend.poll() is None:
                backend.send_signal(signal.SIGTERM)
            try:
                backend.wait(10)
            except subprocess.TimeoutExpired:
                backend.kill()
                backend.wait(5)

    rows = []
    for c in levels:
        local = max(results[("in-process", c)], key=lambda r: r.rps)
        http = max(results[("http", c)], key=lambda r: r.rps)
        rows.append(
            {
                "concurrency": c,
                "in_process_rps": round(local.rps),
                "http_rps": round(http.rps),
                "ratio": round(http.rps / local.rps, 3) if local.rps else None,
                "in_process_p50_p99_ms": [round(local.pct(50), 2), round(local.pct(99), 2)],
                "http_p50_p99_ms": [round(http.pct(50), 2), round(http.pct(99), 2)],
                "http_errors": sum(r.errors for r in results[("http", c)]),
                "in_process_cpu_ms_per_req": {
                    k: round(v, 3) for k, v in (local.cpu_ms_per_req or {}).items()
                },
                "http_cpu_ms_per_req": {k: round(v, 3) for k, v in (http.cpu_ms_per_req or {}).items()},
            }
        )
    return {"rows": rows, "connector_rss_mb": rss, "duration_s": args.duration, "rounds": args.rounds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("role", nargs="?", choices=("bench", "backend"), default="bench")
    p.add_argument("--port-file", default="", help="backend: where to write the port it listens on")
    p.add_argument("--duration", type=float, default=3.0, help="seconds measured per round")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default="", help="also write the results to this file")
    args = p.parse_args()
    if args.role == "backend":
        asyncio.run(serve_backend(Path(args.port_file)))
        return
    out = asyncio.run(run(args))
    print(
        "\nExchange.Query, Shenzhen 440300 → Wuxi 320200: the HTTP adapter (local REST back end) "
        "vs an in-process adapter (best of rounds)"
    )
    print(
        f"{'in flight':>9} | {'in-process req/s':>16} | {'HTTP req/s':>10} | {'HTTP/in-process':>15} | "
        f"{'in-process p50/p99 ms':>21} | {'HTTP p50/p99 ms':>15}"
    )
    print("-" * 102)
    for r in out["rows"]:
        lp, hp = r["in_process_p50_p99_ms"], r["http_p50_p99_ms"]
        print(
            f"{r['concurrency']:>9} | {r['in_process_rps']:>16} | {r['http_rps']:>10} | {r['ratio']:>15} | "
            f"{lp[0]:>10}/{lp[1]:<10} | {hp[0]:>6}/{hp[1]:<8}"
        )
    print("\nCPU per answered request (ms):")
    for r in out["rows"]:
        local = ", ".join(f"{k} {v}" for k, v in r["in_process_cpu_ms_per_req"].items() if k != "back end")
        http = ", ".join(f"{k} {v}" for k, v in r["http_cpu_ms_per_req"].items())
        print(f"  in flight {r['concurrency']:>3}: in-process [{local}]  HTTP [{http}]")
    print(f"\npeak RSS: connector 320200 {out['connector_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
