"""The bare baseline pipeline: gRPC → NATS request across the hub → responder → reply.

Same proto, same topology, same payload sizes as the full path, but no validation, no signing, no
sealing, no ledger, no tracing. ``make bench`` reports the full path as a ratio of this.

    python -m bench.bare gateway --nats URL --nkey-seed F --port-file F --to REGION
    python -m bench.bare responder --nats URL --nkey-seed F --region REGION

Both log in with the given NKey seed (the dev topology's admin: the baseline is no tongban role, and
no region's nats-server admits an anonymous client).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import grpc
import nats
from google.protobuf.struct_pb2 import Struct

from tongban.core import subjects
from tongban.runtime.process import wait_for_signal
from tongban.v1 import exchange_pb2, exchange_pb2_grpc

SAMPLE = {
    "insured_region": "320200",
    "insurance_type": "企业职工基本养老保险",
    "status": "正常参保",
    "first_month": "2008-07",
    "last_month": "2026-10",
    "total_months": 220,
    "records": [{"month": f"2026-{m:02d}", "base": 8000, "amount": 1280} for m in range(1, 11)],
}


def bare_subject(region: str) -> str:
    """Under the region's inbox space: the hub's per-region permissions let another region publish
    there and the region subscribe, and the region's connector does not listen there."""
    return f"{subjects.inbox_prefix(region)}.bench.bare"


class BareExchange(exchange_pb2_grpc.ExchangeServicer):
    def __init__(self, nc: nats.NATS, to: str) -> None:
        self.nc = nc
        self.subject = bare_subject(to)

    async def Query(
        self, request: exchange_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> exchange_pb2.QueryResponse:
        msg = await self.nc.request(
            self.subject, request.SerializeToString(), timeout=context.time_remaining() or 10
        )
        resp = exchange_pb2.QueryResponse(message_id="bare", service_code=request.request.service_code)
        resp.data.ParseFromString(msg.data)
        return resp


async def gateway(url: str, seed: str, port_file: Path, to: str, region: str) -> None:
    nc = await nats.connect(url, nkeys_seed=seed, inbox_prefix=subjects.inbox_prefix(region).encode())
    server = grpc.aio.server()
    exchange_pb2_grpc.add_ExchangeServicer_to_server(BareExchange(nc, to), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await wait_for_signal()
    await server.stop(1)
    await nc.drain()


async def responder(url: str, seed: str, region: str) -> None:
    nc = await nats.connect(url, nkeys_seed=seed, inbox_prefix=subjects.inbox_prefix(region).encode())
    payload = Struct()
    payload.update(SAMPLE)
    data = payload.SerializeToString()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(data)

    await nc.subscribe(bare_subject(region), queue="bare", cb=on_msg)
    await nc.flush()
    await wait_for_signal()
    await nc.drain()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=("gateway", "responder"))
    p.add_argument("--nats", required=True)
    p.add_argument("--nkey-seed", required=True, help="NKey seed file to log in with")
    p.add_argument("--port-file", default="")
    p.add_argument("--to", default="320200")
    p.add_argument("--region", default="320200", help="the region this process runs in")
    a = p.parse_args()
    if a.role == "gateway":
        asyncio.run(gateway(a.nats, a.nkey_seed, Path(a.port_file), a.to, a.region))
    else:
        asyncio.run(responder(a.nats, a.nkey_seed, a.region))


if __name__ == "__main__":
    main()
