"""The managed catalogue on running stacks (docs/catalogue.md):

- on real processes (``tongban dev``'s gateways and connectors): revisions published with ``tongban
  catalogue publish`` are adopted by every gateway and connector without a restart; a request
  validated against revision 1 in Shenzhen is validated against revision 1 in Wuxi, which holds 2;
  a request naming a revision Wuxi does not hold yet is refused (Query) or waits until Wuxi adopts it
  (Submit); an item new in a revision becomes callable end to end and listed by ListServices;
- in process, with envelopes crafted as Shenzhen: revision 0 (a sender from before revisions) is
  validated against the current revision, an earlier revision no longer held is refused.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from tests.conftest import SZ, WX, Stack
from tests.e2e.cases import CASE_SERVICE, submit_request
from tests.e2e.catalogue_backends import NEW_ITEM
from tests.e2e.cli import tongban
from tests.e2e.grpc_errors import details_of
from tests.e2e.requests import build, cases, pension
from tests.e2e.tamper import send, send_ok
from tests.helpers import eventually
from tongban.core import messages
from tongban.core.catalogue import Catalogue
from tongban.core.catalogue_signing import sign_catalogue
from tongban.core.message_ids import new_message_id
from tongban.ops.dev import DevStack
from tongban.runtime import live_catalogue, live_registry
from tongban.runtime.config import Config
from tongban.runtime.node import load_registry, load_secrets
from tongban.v1 import catalogue_pb2, catalogue_pb2_grpc, envelope_pb2, exchange_pb2, exchange_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
Edit = Callable[[catalogue_pb2.Catalogue], None]


def catalogue_doc(revision: int, *edits: Edit) -> catalogue_pb2.Catalogue:
    msg = Catalogue.load().to_proto()
    msg.revision, msg.version = revision, f"e2e.{revision}"
    for edit in edits:
        edit(msg)
    return msg


def employer_required(msg: catalogue_pb2.Catalogue) -> None:
    """v2: 企业职工基本养老保险关系转移接续 now needs new_employer_name (v1: optional)."""
    item = next(i for i in msg.items if i.code == CASE_SERVICE)
    next(f for f in item.fields if f.name == "new_employer_name").required = True


def new_item(msg: catalogue_pb2.Catalogue) -> None:
    """v2: an item that did not exist before."""
    item = catalogue_pb2.CatalogueItem()
    item.CopyFrom(next(i for i in msg.items if i.code == "SBJFJLCX0001"))
    item.code, item.name, item.category = NEW_ITEM, "灵活就业人员参保缴费查询", "社保"
    msg.items.append(item)


def described(msg: catalogue_pb2.Catalogue) -> None:
    """v3: one more change (a description), so Shenzhen can be ahead of Wuxi."""
    msg.items[0].description = "查询参保缴费记录。"


# -- on real processes -------------------------------------------------------------------------------


@pytest.fixture
async def dev_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[DevStack]:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    stack = DevStack(
        tmp_path / "dev",
        extra_config={
            # Wuxi's back ends know the new item before it is published; redeliveries come quickly.
            "connector": {"adapters": "tests.e2e.catalogue_backends:adapters", "backoff_s": [0.5]},
        },
    )
    try:
        await stack.start(timeout=90)
        yield stack
    finally:
        await stack.stop()


def log_events(stack: DevStack, region: str, role: str, event: str) -> list[dict[str, Any]]:
    path = stack.root / region / f"{role}.log"
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if f'"{event}"' in line:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("event") == event:
                out.append(entry)
    return out


async def adopted(stack: DevStack, regions: tuple[str, ...], revision: int, what: str = "catalogue") -> None:
    """Wait until the gateway and the connector of every region in ``regions`` logged adopting
    ``revision`` of the catalogue (or ``version`` of the registry)."""

    def done() -> bool:
        return all(
            any(e.get("version") == revision for e in log_events(stack, r, role, f"{what}.updated"))
            for r in regions
            for role in ("gateway", "connector")
        )

    await eventually(done, timeout=30, what=f"{what} {revision} adopted in {regions}")


async def publish(stack: DevStack, tmp_path: Path, msg: catalogue_pb2.Catalogue, *regions: str) -> None:
    """``tongban catalogue publish`` of ``msg`` to ``regions``, as the registry authority runs it."""
    source = tmp_path / f"catalogue-{msg.revision}.json"
    source.write_text(json_format.MessageToJson(msg, ensure_ascii=False), encoding="utf-8")
    flags = [arg for r in regions for arg in ("--region", r)]
    rc, out, err = await tongban(
        "catalogue", "publish", str(source), "--root-key", str(stack.root / "root.key"),
        "--state-dir", str(stack.root), *flags,
    )  # fmt: skip
    assert rc == 0, err
    assert all(live_catalogue.bucket_name(r) in out for r in regions)


async def provide_new_item(stack: DevStack) -> int:
    """A registry in which every region provides the new item, published to every region."""
    key = serialization.load_pem_private_key((stack.root / "root.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    path = stack.root / "registry.signed"
    data = live_registry.edit_signed(
        path.read_bytes(), key, lambda doc: [r.provided_services.append(NEW_ITEM) for r in doc.regions]
    )
    path.write_bytes(data)
    for region in (SZ, WX):
        rc, _, err = await tongban(
            "registry", "publish", "--file", str(path), "--region", region, "--state-dir", str(stack.root)
        )
        assert rc == 0, err
    return int(live_registry.read_signed(data).version)


def query(item: str = "SBJFJLCX0001") -> exchange_pb2.QueryRequest:
    q = pension()
    q.request.service_code = item
    return q


async def listed(address: str) -> catalogue_pb2.ListServicesResponse:
    async with grpc.aio.insecure_channel(address) as ch:
        answer: catalogue_pb2.ListServicesResponse = await catalogue_pb2_grpc.CatalogueServiceStub(
            ch
        ).ListServices(catalogue_pb2.ListServicesRequest(page_size=200), timeout=10)
        return answer


async def case_state(stub: exchange_pb2_grpc.ExchangeStub, case_no: str) -> int:
    answer = await stub.GetCase(exchange_pb2.GetCaseRequest(case_no=case_no), timeout=10)
    return int(answer.case.delivery_state)


async def test_revisions_are_adopted_live_and_requests_validated_against_their_own(
    dev_stack: DevStack, tmp_path: Path
) -> None:
    stack = dev_stack
    pids = {(c.role, c.region): c.pid for c in stack.children}
    shipped = Catalogue.load().revision
    r1, r2, r3 = shipped + 1, shipped + 2, shipped + 3
    await adopted(stack, (SZ, WX), await provide_new_item(stack), what="registry")

    # v1 everywhere.
    await publish(stack, tmp_path, catalogue_doc(r1), SZ, WX)
    await adopted(stack, (SZ, WX), r1)

    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports[SZ]}") as channel:
        sz = exchange_pb2_grpc.ExchangeStub(channel)

        # v2 in Wuxi only: new_employer_name required there, and the new item.
        await publish(stack, tmp_path, catalogue_doc(r2, employer_required, new_item), WX)
        await adopted(stack, (WX,), r2)
        wx_list = await listed(f"127.0.0.1:{stack.ports[WX]}")
        assert wx_list.catalogue_revision == r2 and NEW_ITEM in {i.code for i in wx_list.items}
        assert NEW_ITEM not in {i.code for i in (await listed(f"127.0.0.1:{stack.ports[SZ]}")).items}

        # A v1 sender, a v2 receiver: validated against v1 on both sides, so accepted.
        without_employer = submit_request()
        assert "new_employer_name" not in without_employer.request.fields
        receipt = await sz.Submit(without_employer, timeout=10)
        await eventually(
            lambda: _is(sz, receipt.case_no, exchange_pb2.DELIVERY_STATE_PROCESSED),
            timeout=30,
            what="the v1 case processed by the v2 receiver",
        )
        # The new item is not in Shenzhen's v1: refused at Shenzhen's gateway.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sz.Query(query(NEW_ITEM), timeout=10)
        d = details_of(caught.value)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT and "request.service_code" in d.violations

        # Shenzhen ahead (v3), Wuxi at v2.
        await publish(stack, tmp_path, catalogue_doc(r3, employer_required, new_item, described), SZ)
        await adopted(stack, (SZ,), r3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sz.Query(query(NEW_ITEM), timeout=10)
        d = details_of(caught.value)
        assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CATALOGUE_REVISION_UNKNOWN")
        assert log_events(stack, WX, "connector", "catalogue.reread"), "Wuxi re-read its bucket first"
        with_employer = submit_request(key="e2e-catalogue-v3")
        with_employer.request.fields["new_employer_name"] = "深圳市南山区某科技有限公司"
        waiting = await sz.Submit(with_employer, timeout=10)
        await eventually(
            lambda: bool(log_events(stack, WX, "connector", "cases.catalogue_revision_pending")),
            timeout=30,
            what="Wuxi holds the v3 case back",
        )
        assert await case_state(sz, waiting.case_no) != exchange_pb2.DELIVERY_STATE_PROCESSED

        # Wuxi adopts v3: the held-back case goes through, the new item answers end to end.
        await publish(stack, tmp_path, catalogue_doc(r3, employer_required, new_item, described), WX)
        await adopted(stack, (WX,), r3)
        await eventually(
            lambda: _is(sz, waiting.case_no, exchange_pb2.DELIVERY_STATE_PROCESSED),
            timeout=30,
            what="the held-back case processed once Wuxi adopted v3",
        )
        answer = await sz.Query(query(NEW_ITEM), timeout=10)
        assert answer.responder_region == WX and answer.service_code == NEW_ITEM
        for region in (SZ, WX):
            page = await listed(f"127.0.0.1:{stack.ports[region]}")
            assert page.catalogue_revision == r3 and NEW_ITEM in {i.code for i in page.items}

    # Nothing restarted: every gateway and connector is the process that started.
    assert {(c.role, c.region): c.pid for c in stack.children} == pids


async def _is(stub: exchange_pb2_grpc.ExchangeStub, case_no: str, state: int) -> bool:
    return await case_state(stub, case_no) == state


# -- in process, with crafted envelopes -----------------------------------------------------------------


def crafted(stack: Stack, request: exchange_pb2.ServiceRequest, revision: int) -> bytes:
    """A Query envelope from Shenzhen (its real keys) naming catalogue ``revision``."""
    cfg = Config.load(stack.state.config_path(SZ))
    registry = load_registry(cfg)
    secrets = load_secrets(cfg, registry)
    kid, recipient = registry.sealing_key_for(WX)
    now = time.time()
    header = envelope_pb2.Header(
        message_id=new_message_id(),
        kind=envelope_pb2.MESSAGE_KIND_REQUEST,
        service_code=request.service_code,
        from_region=SZ,
        to_region=WX,
        created_at=messages.timestamp(now),
        deadline=messages.timestamp(now + 10),
        purpose="KSTB_CASE_HANDLING",
        content_type=messages.REQUEST_CONTENT_TYPE,
        origin_system="dev-partner",
        catalogue_revision=revision,
    )
    built = messages.build_sealed(
        header,
        exchange_pb2.RequestBody(request=request).SerializeToString(),
        recipient_key_id=kid,
        recipient=recipient,
        signer=secrets.signing,
    )
    return built.data


def purpose_required(msg: catalogue_pb2.Catalogue) -> None:
    """A new required field on the contribution-record query (the pension vector lacks it)."""
    item = next(i for i in msg.items if i.code == "SBJFJLCX0001")
    item.fields.add(name="query_purpose", type=catalogue_pb2.FIELD_TYPE_STRING, required=True, max_length=32)


async def test_revision_0_and_unheld_revisions_at_the_receiver(stack: Stack) -> None:
    key = serialization.load_pem_private_key((stack.state.root / "root.key").read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    base = Catalogue.load().revision + 10
    for revision, edits in ((base, ()), (base + 1, (purpose_required,))):
        data = sign_catalogue(catalogue_doc(revision, *edits), key)
        nc = await stack.nats(WX)
        try:
            await live_catalogue.publish(nc, WX, data)
        finally:
            await nc.close()
    connector = stack.nodes[WX].connector
    assert connector is not None
    await eventually(lambda: connector.inbound.catalogue.revision == base + 1, what="Wuxi runs v2")
    request = pension().request

    # Validated against v1 by the sender: v1's rules hold (query_purpose is not required there).
    await send_ok(stack, crafted(stack, request, base))
    # A sender from before revisions (0): Wuxi's current revision decides, and it wants query_purpose.
    problem = await send(stack, crafted(stack, request, 0))
    assert problem.reason == "INVALID_REQUEST"
    assert [v.field for v in problem.field_violations] == ["request.fields[query_purpose]"]
    # An earlier revision Wuxi never held (nor its bucket): refused, for good.
    problem = await send(stack, crafted(stack, request, base - 1))
    assert problem.reason == "CATALOGUE_REVISION_UNKNOWN"
    # A later one: Wuxi re-reads its bucket, which does not have it either.
    problem = await send(stack, crafted(stack, request, base + 7))
    assert problem.reason == "CATALOGUE_REVISION_UNKNOWN"
    assert problem.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # The gateway path names the revision it validated against: Shenzhen's answers as before.
    assert (await stack.stub(SZ).Query(_with_purpose(), timeout=10)).responder_region == WX


def _with_purpose() -> exchange_pb2.QueryRequest:
    q = build(next(c for c in cases() if c["service_code"] == "SBJFJLCX0001"))
    q.request.fields["query_purpose"] = "就业登记"
    return q
