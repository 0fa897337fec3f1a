"""Acceptance 4 of issue 14, the back-end API: a case submitted in Shenzhen reaches Wuxi's case system
over the pull stream and over a webhook; the case system reports 补正 (with what is missing) then 办结
through the API; the Shenzhen partner sees both in WatchCase; a webhook receiver that is down gets
the delivery once it is back; only a client with a certificate of the API's CA gets in.

Real parts throughout: nats-servers (hub and leaves), both regions' gateways and connectors, the
back-end API's gRPC server, an aiohttp webhook receiver, and the `tongban` command line.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from connectors.backend_api import BackendApi, State
from connectors.runtime import Connector
from ledger import Event
from tests.conftest import SZ, WX, Pki, Stack, start_stack, stop_stack
from tests.connectors.backend_api.receiver import SECRET, Receiver
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.e2e.cli import tongban
from tests.helpers import eventually, free_port
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime import certs
from tongban.runtime.config import dump_toml
from tongban.v1 import backend_pb2, backend_pb2_grpc, exchange_pb2, exchange_pb2_grpc

SUPPLEMENT = [
    exchange_pb2.MissingItem(kind=exchange_pb2.MISSING_ITEM_KIND_MATERIAL, name="劳动合同", reason="未上传"),
    exchange_pb2.MissingItem(kind=exchange_pb2.MISSING_ITEM_KIND_FIELD, name="new_employer_name"),
]
STATUSES = [
    exchange_pb2.CASE_STATUS_RECEIVED,
    exchange_pb2.CASE_STATUS_SUPPLEMENT_REQUESTED,
    exchange_pb2.CASE_STATUS_APPROVED,
]


@pytest.fixture
async def stack(topology: Topology, state: DevState) -> AsyncIterator[Stack]:
    s = await start_stack(topology, state)
    try:
        yield s
    finally:
        await stop_stack(s)


async def with_case_system(stack: Stack, **backend_api: object) -> BackendApi:
    """Wuxi's connector again, its pension transfers (CASE_SERVICE) going to the region's case system
    through the back-end API (``[services.<code>] backend_api = true``), with ``backend_api``
    settings."""
    node = stack.nodes[WX]
    old = node.connector
    assert old is not None
    await old.stop()
    for key, value in ({"listen": "127.0.0.1:0"} | backend_api).items():
        setattr(node.cfg.backend_api, key, value)
    api = BackendApi.from_parts(old.parts)
    node.connector = Connector(
        old.parts, adapters={**node.adapters, CASE_SERVICE: api.adapter()}, backend_api=api
    )
    await node.connector.start()
    return api


class Partner:
    """Shenzhen's partner system: submits a case and watches it live."""

    def __init__(self, stub: exchange_pb2_grpc.ExchangeStub) -> None:
        self.stub = stub
        self.events: list[exchange_pb2.CaseEvent] = []
        self.case_no = ""
        self._watching: asyncio.Task[None] | None = None

    async def submit(self) -> str:
        receipt = await self.stub.Submit(submit_request(), timeout=10)
        self.case_no = receipt.case_no
        self._watching = asyncio.create_task(self._watch())
        return receipt.message_id

    async def _watch(self) -> None:
        call = self.stub.WatchCase(exchange_pb2.WatchCaseRequest(case_no=self.case_no), timeout=60)
        async for item in call:
            self.events.append(item.event)

    async def until_closed(self) -> list[exchange_pb2.CaseEvent]:
        assert self._watching is not None
        await asyncio.wait_for(self._watching, 30)  # the watch ends at 11 办结（通过）
        return self.events

    async def check_case(self) -> None:
        """What the partner sees: 1 已接件, 6 补正 with what is missing, 11 办结, in WatchCase and GetCase."""
        events = await self.until_closed()
        assert [e.status for e in events] == STATUSES and [e.sequence for e in events] == [1, 2, 3]
        assert list(events[1].missing) == SUPPLEMENT and events[1].note == "请补充劳动合同"
        assert events[1].local_code == "BZ" and events[2].local_code == "BJ"
        case = (await self.stub.GetCase(exchange_pb2.GetCaseRequest(case_no=self.case_no), timeout=5)).case
        assert case.status == exchange_pb2.CASE_STATUS_APPROVED and list(case.events) == events


async def test_pull_stream_then_supplement_and_approval_reach_the_partner(stack: Stack) -> None:
    api = await with_case_system(stack, lease_s=60.0)
    partner = Partner(stack.stub(SZ))
    message_id = await partner.submit()

    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.port}") as channel:
        backend = backend_pb2_grpc.CaseBackendStub(channel)
        watch = backend.WatchDeliveries(backend_pb2.WatchDeliveriesRequest(service_codes=[CASE_SERVICE]))
        delivery = (await asyncio.wait_for(watch.read(), 20)).delivery  # type: ignore[union-attr]
        watch.cancel()
        assert (delivery.delivery_id, delivery.case_no, delivery.requester_region) == (
            message_id,
            partner.case_no,
            SZ,
        )
        assert delivery.applicant.id_no and delivery.fields and delivery.trace_id and delivery.attempt == 1
        ack = backend_pb2.AckDeliveryRequest(
            delivery_id=delivery.delivery_id, local_code="WX-2026-1", local_system="wx-ywtb"
        )
        assert (await backend.AckDelivery(ack, timeout=5)).first

        await eventually(lambda: len(partner.events) == 1, what="1 已接件 at the partner")
        supplement = backend_pb2.ReportStatusRequest(
            case_no=delivery.case_no,
            status=exchange_pb2.CASE_STATUS_SUPPLEMENT_REQUESTED,
            local_code="BZ",
            local_system="wx-ywtb",
            note="请补充劳动合同",
            missing=SUPPLEMENT,
            report_id="WX-BZ-000017",
        )
        first = await backend.ReportStatus(supplement, timeout=10)
        # The case system did not hear back (say) and sends the same report again: it counts once.
        again = await backend.ReportStatus(supplement, timeout=10)
        assert (again.sequence, again.event_id) == (first.sequence, first.event_id)
        done = await backend.ReportStatus(
            backend_pb2.ReportStatusRequest(
                case_no=delivery.case_no, status=exchange_pb2.CASE_STATUS_APPROVED, local_code="BJ"
            ),
            timeout=10,
        )
        assert (first.sequence, done.sequence) == (2, 3) and first.event_id != done.event_id
        await partner.check_case()

        # Closed: the case system cannot report past 办结.
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await backend.ReportStatus(
                backend_pb2.ReportStatusRequest(case_no=delivery.case_no, status=8), timeout=10
            )
        assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    [row] = await api.queue.rows()
    assert (row.state, row.local_code, row.acked_via) == (State.ACKED, "WX-2026-1", "stream")
    wx = [e.event for e in await stack.nodes[WX].ledger.by_message_id(message_id)]
    assert wx.count(Event.RECEIVED) == 1 and wx.count(Event.STATUS) == 3


async def test_webhook_down_then_back_and_statuses_from_the_command_line(
    stack: Stack, tmp_path: Path
) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    port = free_port()
    receiver = Receiver(failing=1)  # not started yet; once up, one 503 before it takes the delivery
    api = await with_case_system(
        stack,
        listen="127.0.0.1:0",
        webhook_url=receiver.url(port),
        webhook_secret_file=str(secret),
        webhook_backoff_s=[0.1, 0.2],
        webhook_timeout_s=2.0,
    )
    partner = Partner(stack.stub(SZ))
    try:
        message_id = await partner.submit()

        async def refused_while_down() -> bool:
            return any(r.push_attempts >= 2 for r in await api.queue.rows())

        await eventually(refused_while_down, timeout=20, what="posts to a receiver that is down")
        await receiver.start(port)
        await eventually(lambda: len(receiver.received) == 1, timeout=20, what="delivered once it is back")
        delivery = receiver.received[0]
        assert (delivery["deliveryId"], delivery["caseNo"]) == (message_id, partner.case_no)
        assert receiver.answers == [503, 200] and receiver.forged == 0

        # The case system's operator reports through the API with the command line.
        address = f"127.0.0.1:{api.port}"
        supplement = ["--status", "6", "--local-code", "BZ", "--note", "请补充劳动合同"]
        supplement += ["--missing", "material:劳动合同:未上传", "--missing", "field:new_employer_name"]
        rc, out, err = await tongban("case", "send-status", partner.case_no, "--api", address, *supplement)
        assert rc == 0 and out.startswith(f"case {partner.case_no}: status 6 sent as event 2 ("), err
        rc, out, err = await tongban(
            "case", "send-status", partner.case_no, "--api", address, "--status", "11", "--local-code", "BJ"
        )
        assert rc == 0 and "status 11 sent as event 3" in out, err
        await partner.check_case()

        rc, _, err = await tongban(
            "case", "send-status", partner.case_no, "--api", address, "--status", "6", "--missing", "paper"
        )
        assert rc == 2 and "KIND:NAME" in err
        config = str(stack.state.config_path(WX))
        rc, out, _ = await tongban("case", "deliveries", "--config", config, "--state", "acked")
        assert rc == 0 and message_id in out and "webhook" in out
    finally:
        await receiver.stop()


async def test_only_clients_with_a_certificate_of_the_api_ca_get_in(
    stack: Stack, pki: Pki, tmp_path: Path
) -> None:
    certs.write(certs.issue_server(pki.ca, ["127.0.0.1"]), pki.dir, "backend-api")
    certs.write(certs.issue_named_client(pki.ca, "wx-ywtb"), pki.dir, "case-system")
    api = await with_case_system(
        stack,
        tls_cert=str(pki.dir / "backend-api.crt"),
        tls_key=str(pki.dir / "backend-api.key"),
        client_ca=str(pki.dir / "ca.crt"),
        allowed_clients=["wx-ywtb"],
    )
    partner = Partner(stack.stub(SZ))
    await partner.submit()
    address = f"127.0.0.1:{api.port}"
    request = backend_pb2.ReportStatusRequest(case_no=partner.case_no, status=8)

    # Without a client certificate (or with plaintext) there is no connection at all.
    server_ca = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_pem)
    for channel in (grpc.aio.secure_channel(address, server_ca), grpc.aio.insecure_channel(address)):
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await backend_pb2_grpc.CaseBackendStub(channel).ReportStatus(request, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    rc, _, err = await tongban("case", "send-status", partner.case_no, "--api", address, "--status", "8")
    assert rc == 1 and "UNAVAILABLE" in err

    # The operator's tool finds the API in the node's config (its port file) and needs a certificate.
    config = wuxi_config(stack, api, tmp_path)
    rc, _, err = await tongban("case", "send-status", partner.case_no, "--config", config, "--status", "8")
    assert rc == 1 and "requires mutual TLS" in err
    await eventually(lambda: len(partner.events) == 1, what="1 已接件 at the partner")
    tls = ["--ca", str(pki.dir / "ca.crt"), "--cert", str(pki.dir / "case-system.crt")]
    tls += ["--key", str(pki.dir / "case-system.key")]
    rc, out, err = await tongban(
        "case", "send-status", partner.case_no, "--config", config, "--status", "8", *tls
    )
    assert rc == 0 and "status 8 sent as event 2" in out, err
    await eventually(lambda: len(partner.events) == 2, what="8 部门开始办理 at the partner")


def wuxi_config(stack: Stack, api: BackendApi, tmp_path: Path) -> str:
    """Wuxi's node config as its connector runs now: with its ``[backend_api]`` and a port file."""
    node_toml = stack.state.config_path(WX)
    data = tomllib.loads(node_toml.read_text())
    settings = stack.nodes[WX].cfg.backend_api
    port_file = tmp_path / "backend-api.port"
    port_file.write_text(str(api.port))
    data["backend_api"] = {
        "listen": "127.0.0.1:0",
        "port_file": str(port_file),
        "tls_cert": settings.tls_cert,
        "tls_key": settings.tls_key,
        "client_ca": settings.client_ca,
    }
    path = node_toml.with_name("node-with-api.toml")  # beside it: its relative paths still hold
    path.write_text(dump_toml(data))
    return str(path)
