"""What a connector writes about a verified request, whichever path it came by: its ledger entries,
the signed receipt of its RECEIVED entry, and the sealed, signed envelopes that answer it (a
Query's response, a case's status events), addressed to the region that sent it.
"""

from __future__ import annotations

import time
from typing import Any, Final

from ledger import Entry, EntryDraft, Event
from tongban.core import envelope, messages
from tongban.core.details import Detail
from tongban.core.keys import SigningKey
from tongban.core.receipts import sign_receipt
from tongban.core.registry import Registry
from tongban.runtime import telemetry
from tongban.runtime.records import draft
from tongban.v1 import envelope_pb2

_NO_DETAIL: Final = Detail()


def entry(
    event: Event,
    h: envelope_pb2.Header,
    *,
    digest: bytes,
    trace_id: str,
    detail: Detail = _NO_DETAIL,
    time_ns: int | None = None,
) -> EntryDraft:
    """The ledger entry for ``event`` of the verified request ``h`` (its sender is the peer)."""
    return draft(
        event,
        h.message_id,
        peer=h.from_region,
        service=h.service_code,
        digest=digest,
        trace_id=trace_id,
        detail=detail,
        time_ns=time_ns,
    )


def request_trace_id(h: envelope_pb2.Header) -> str:
    """The trace a verified request belongs to: the one its signed header names, else this one."""
    return telemetry.trace_id_of(h.traceparent) or telemetry.current_trace_id()


def receipt(region: str, received: Entry, verified: envelope.Verified, signer: SigningKey) -> bytes:
    """The signed receipt of the RECEIVED entry: the request is on record here, whatever the back
    end makes of it."""
    return sign_receipt(
        region=region,
        leaf_index=received.index,
        envelope_digest=verified.digest,
        message_id=verified.header.message_id,
        key=signer,
    )


def answer_header(
    h: envelope_pb2.Header,
    *,
    region: str,
    message_id: str,
    kind: envelope_pb2.MessageKind.ValueType,
    content_type: str,
    request_digest: bytes,
    traceparent: str,
    **more: Any,
) -> envelope_pb2.Header:
    """The header of an envelope answering request ``h`` from ``region``: to its sender, in reply to
    it, carrying its subject digest, mask and purpose; ``more``: further header fields."""
    return envelope_pb2.Header(
        message_id=message_id,
        kind=kind,
        service_code=h.service_code,
        from_region=region,
        to_region=h.from_region,
        created_at=messages.timestamp(time.time()),
        traceparent=traceparent,
        subject_digest=h.subject_digest,
        subject_masked=h.subject_masked,
        purpose=h.purpose,
        content_type=content_type,
        in_reply_to=h.message_id,
        request_digest=request_digest,
        **more,
    )


def seal_to_recipient(
    header: envelope_pb2.Header, body: bytes, *, registry: Registry, signer: SigningKey
) -> messages.Built:
    """``body`` sealed to the current sealing key of ``header``'s recipient region, and signed."""
    kid, recipient = registry.sealing_key_for(header.to_region)
    return messages.build_sealed(header, body, recipient_key_id=kid, recipient=recipient, signer=signer)
