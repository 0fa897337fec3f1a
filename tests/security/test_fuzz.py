"""Hostile bytes at the verifier and at the connector: never a crash, always a signed refusal, and
nothing in the ledger but REJECTED.

Random bytes, and valid envelopes with a byte flipped or cut short, go to ``envelope.verify`` and to
the connector's ``handle`` (everything a request meets before the back end). ``make fuzz`` runs the
same properties with many more examples (``--hypothesis-profile=fuzz``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.demo.backends import DemoBackend, demo_adapters
from connectors.runtime import Connector
from ledger import Event, SQLiteLedger
from tests.adapters import CountingAdapter
from tests.e2e.requests import pension
from tongban.core import envelope, messages, subjects
from tongban.core.envelope import EnvelopeRejected
from tongban.core.message_ids import new_message_id
from tongban.ops.devstate import init_state
from tongban.runtime.component import ComponentParts
from tongban.runtime.config import Config
from tongban.runtime.node import load_registry, load_secrets
from tongban.v1 import envelope_pb2, exchange_pb2

SZ, WX = "440300", "320200"
SUBJECT = subjects.rpc_subject(WX, "SBJFJLCX0001")


@dataclass
class Target:
    loop: asyncio.AbstractEventLoop
    connector: Connector
    ledger: SQLiteLedger
    adapters: dict[str, CountingAdapter]
    valid: bytes

    def handle(self, data: bytes) -> bytes:
        return self.loop.run_until_complete(self.connector.handle(SUBJECT, data))

    def size(self) -> int:
        return self.loop.run_until_complete(self.ledger.size())

    def events_since(self, index: int) -> list[Event]:
        return [e.event for e in self.loop.run_until_complete(self.ledger.entries(index))]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("fuzz")
    state = init_state(root, {SZ: "深圳市", WX: "无锡市"})
    wx, sz = Config.load(state.config_path(WX)), Config.load(state.config_path(SZ))
    loop = asyncio.new_event_loop()
    ledger = SQLiteLedger(wx.path(wx.ledger.path), WX)
    loop.run_until_complete(ledger.open())
    adapters = {
        c: CountingAdapter(a) for c, a in demo_adapters(DemoBackend(wx.path(wx.connector.demo_db))).items()
    }
    connector = Connector(ComponentParts.load(wx, "connector", ledger), adapters=adapters, durable=False)
    # A valid request from Shenzhen, signed and sealed as its gateway would (never sent as is).
    registry, signer = load_registry(sz), load_secrets(sz)
    kid, recipient = registry.sealing_key_for(WX)
    header = envelope_pb2.Header(
        message_id=new_message_id(),
        kind=envelope_pb2.MESSAGE_KIND_REQUEST,
        service_code="SBJFJLCX0001",
        from_region=SZ,
        to_region=WX,
        created_at=messages.timestamp(time.time()),
        deadline=messages.timestamp(time.time() + 3600),
        purpose="KSTB_CASE_HANDLING",
        content_type=messages.REQUEST_CONTENT_TYPE,
        origin_system="dev-partner",
    )
    body = exchange_pb2.RequestBody(request=pension().request).SerializeToString()
    valid = messages.build_sealed(
        header, body, recipient_key_id=kid, recipient=recipient, signer=signer.signing
    ).data
    yield Target(loop, connector, ledger, adapters, valid)
    loop.run_until_complete(ledger.close())
    loop.close()


def check_refused(target: Target, data: bytes) -> None:
    before = target.size()
    reply = target.handle(data)  # must not raise
    verified = envelope.verify(reply, target.connector.registry, now_s=time.time())
    assert verified.header.kind == envelope_pb2.MESSAGE_KIND_REJECTION
    problem = exchange_pb2.Problem.FromString(verified.body)
    assert problem.reason and problem.code != 0
    assert target.events_since(before) == [Event.REJECTED]
    assert sum(a.total for a in target.adapters.values()) == 0


FUZZ = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None
)


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused(target: Target, data: bytes) -> None:
    with pytest.raises(EnvelopeRejected):
        envelope.verify(data, target.connector.registry, now_s=time.time())
    check_refused(target, data)


@FUZZ
@given(st.data())
def test_flipped_byte_is_refused(target: Target, data: st.DataObject) -> None:
    raw = bytearray(target.valid)
    i = data.draw(st.integers(0, len(raw) - 1), label="offset")
    raw[i] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(EnvelopeRejected):
        envelope.verify(bytes(raw), target.connector.registry, now_s=time.time())
    check_refused(target, bytes(raw))


@FUZZ
@given(st.data())
def test_truncated_envelope_is_refused(target: Target, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(target.valid) - 1), label="length")
    check_refused(target, target.valid[:cut])


def test_the_unmutated_envelope_is_accepted(target: Target) -> None:
    """The control: the same envelope, untouched, passes every check and reaches the back end."""
    reply = target.handle(target.valid)
    verified = envelope.verify(reply, target.connector.registry, now_s=time.time())
    assert verified.header.kind == envelope_pb2.MESSAGE_KIND_RESPONSE
    assert sum(a.total for a in target.adapters.values()) == 1
    for a in target.adapters.values():
        a.calls.clear()
