"""Building the request and response envelopes both sides exchange (shared by gateway and connector)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from tongban.core import envelope
from tongban.core.errors import Reason
from tongban.core.keys import SealingKey, SigningKey
from tongban.v1 import envelope_pb2, exchange_pb2

REQUEST_CONTENT_TYPE = "application/x-protobuf;type=tongban.v1.RequestBody"
RESPONSE_CONTENT_TYPE = "application/x-protobuf;type=tongban.v1.ResponseBody"
PROBLEM_CONTENT_TYPE = "application/x-protobuf;type=tongban.v1.Problem"
EVENT_CONTENT_TYPE = "application/x-protobuf;type=tongban.v1.CaseEventBody"

_tracer = trace.get_tracer("tongban.core.envelope")


def timestamp(at_s: float) -> Timestamp:
    ts = Timestamp()
    ts.seconds = int(at_s)
    ts.nanos = int((at_s - int(at_s)) * 1e9)
    return ts


def seconds(ts: Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


@dataclass(frozen=True)
class Built:
    """A signed envelope ready to send and its digest."""

    data: bytes
    digest: bytes
    header: envelope_pb2.Header


def build_sealed(
    header: envelope_pb2.Header,
    plaintext: bytes,
    *,
    recipient_key_id: str,
    recipient: object,
    signer: SigningKey,
) -> Built:
    """Fill the suite and recipient, seal ``plaintext`` with the header as HPKE info, sign.

    Sealing and signing are spans of their own (``envelope.seal``, ``envelope.sign``): the two hops
    a trace shows for every envelope built, on either side.
    """
    header.suite = envelope.SUITE
    header.recipient_key_id = recipient_key_id
    header_bytes = header.SerializeToString(deterministic=True)
    with _tracer.start_as_current_span("envelope.seal"):
        body = envelope.seal(plaintext, recipient, header_bytes)  # type: ignore[arg-type]
    with _tracer.start_as_current_span("envelope.sign"):
        data = envelope.sign(header_bytes, body, signer)
    return Built(data, envelope.digest(data), header)


def build_problem(header: envelope_pb2.Header, problem: exchange_pb2.Problem, *, signer: SigningKey) -> Built:
    """A signed rejection: the Problem travels in clear (it holds no personal data)."""
    header.kind = envelope_pb2.MESSAGE_KIND_REJECTION
    header.suite = envelope.SUITE
    header.content_type = PROBLEM_CONTENT_TYPE
    header_bytes = header.SerializeToString(deterministic=True)
    data = envelope.sign(header_bytes, problem.SerializeToString(), signer)
    return Built(data, envelope.digest(data), header)


def open_body(verified: envelope.Verified, key: SealingKey) -> bytes:
    """Open a sealed body after checking it was sealed to ``key``."""
    if verified.header.recipient_key_id != key.key_id:
        raise envelope.EnvelopeRejected(
            "body is sealed for a key this region does not hold", reason=Reason.SEALED_FOR_ANOTHER_KEY
        )
    return envelope.open_sealed(verified.body, key, verified.header_bytes)


def now_s() -> float:
    return time.time()
