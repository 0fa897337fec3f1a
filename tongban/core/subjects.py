"""Every NATS wire name tongban uses: subjects, queue groups, inbox prefixes, headers, streams.

Two subject spaces that never overlap (deploy/nats/README.md, "Streams tongban creates in each
region"): streams capture ``tb.v1.req.<region>.>`` (and events, dead letters); synchronous
request/reply uses
``tb.v1.rpc.<region>.<service>``. A stream whose subjects covered an RPC subject would answer the
core request with its PubAck and the caller would get the wrong reply.

Subjects hold region codes and catalogue item codes only: never personal data.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

PREFIX = "tb.v1"
_TOKEN = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class Header(StrEnum):
    """NATS message headers (never hold personal data)."""

    MSG_ID = "Nats-Msg-Id"
    TRACEPARENT = "traceparent"
    MESSAGE_ID = "Tb-Message-Id"
    FROM_REGION = "Tb-From"
    DEADLINE_MS = "Tb-Deadline-Ms"
    """Deadline of a durable message, Unix milliseconds: relays drop it once passed."""
    REASON = "Tb-Reason"
    """Why a message was dead-lettered (a reason code, never request data)."""
    ATTEMPTS = "Tb-Attempts"
    ORIGINAL_SUBJECT = "Tb-Original-Subject"


def _token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{what} is not a valid subject token")
    return value


def rpc_subject(region: str, service_code: str) -> str:
    """Subject a region's connectors answer Query requests on."""
    return f"{PREFIX}.rpc.{_token(region, 'region')}.{_token(service_code, 'service code')}"


def rpc_wildcard(region: str) -> str:
    """Every RPC subject of ``region``."""
    return f"{PREFIX}.rpc.{_token(region, 'region')}.>"


def ping_subject(region: str) -> str:
    """Liveness probe a region's connectors answer (used to wait for interest to propagate)."""
    return f"{PREFIX}.ping.{_token(region, 'region')}"


def request_subject(region: str, service_code: str) -> str:
    """Stream subject of durable (Submit) requests for ``region``."""
    return f"{PREFIX}.req.{_token(region, 'region')}.{_token(service_code, 'service code')}"


def request_wildcard(region: str) -> str:
    return f"{PREFIX}.req.{_token(region, 'region')}.>"


def event_subject(region: str, service_code: str) -> str:
    """Stream subject of case status events addressed to ``region`` (the submitting region)."""
    return f"{PREFIX}.evt.{_token(region, 'region')}.{_token(service_code, 'service code')}"


def event_wildcard(region: str) -> str:
    return f"{PREFIX}.evt.{_token(region, 'region')}.>"


def dlq_subject(region: str, service_code: str) -> str:
    """Dead-letter subject of ``region``'s connector."""
    return f"{PREFIX}.dlq.{_token(region, 'region')}.{_token(service_code, 'service code')}"


def dlq_wildcard(region: str) -> str:
    return f"{PREFIX}.dlq.{_token(region, 'region')}.>"


class OutKind(StrEnum):
    """What an outbound (store-and-forward) message is; its destination subject space."""

    REQUEST = "req"
    EVENT = "evt"


def outbound_subject(region: str, kind: OutKind, to_region: str, service_code: str, message_id: str) -> str:
    """Subject of a message waiting in ``region``'s outbound stream for delivery to ``to_region``.

    The message id is the last token so the reconciler can look a message up by subject.
    """
    return (
        f"{PREFIX}.out.{_token(region, 'region')}.{kind.value}.{_token(to_region, 'region')}."
        f"{_token(service_code, 'service code')}.{_token(message_id, 'message id')}"
    )


def outbound_filter(region: str, kind: OutKind) -> str:
    return f"{PREFIX}.out.{_token(region, 'region')}.{kind.value}.>"


def outbound_wildcard(region: str) -> str:
    return f"{PREFIX}.out.{_token(region, 'region')}.>"


class Destination(NamedTuple):
    """Where an outbound message goes, read from its outbound subject."""

    kind: OutKind
    subject: str
    """The destination region's stream subject."""
    region: str
    service_code: str
    message_id: str


def destination_of(out_subject: str) -> Destination:
    """Kind, destination subject, region, service and message id of an outbound subject.

    Raises:
        ValueError: not an outbound subject.
    """
    parts = out_subject.split(".")
    if len(parts) != 8 or f"{parts[0]}.{parts[1]}" != PREFIX or parts[2] != "out":
        raise ValueError("not an outbound subject")
    kind = OutKind(parts[4])
    to, svc, mid = parts[5], parts[6], parts[7]
    dest = request_subject(to, svc) if kind is OutKind.REQUEST else event_subject(to, svc)
    return Destination(kind, dest, to, svc, mid)


def case_notify_subject(region: str) -> str:
    """Core-NATS nudge between a region's gateways when a case changed (payload: case number)."""
    return f"{PREFIX}.casechg.{_token(region, 'region')}"


def checkpoint_subject(to_region: str, origin_region: str) -> str:
    """Where ``origin_region`` publishes its signed ledger checkpoints for the witness of ``to_region``
    (in the receiving region's inbound space). Payload: a signed note (``ledger.checkpoint``)."""
    return f"{PREFIX}.ckpt.{_token(to_region, 'region')}.{_token(origin_region, 'region')}"


def checkpoint_wildcard(region: str) -> str:
    """Every checkpoint addressed to ``region``'s witness."""
    return f"{PREFIX}.ckpt.{_token(region, 'region')}.>"


def ledger_proof_subject(region: str) -> str:
    """Request/reply subject on which ``region`` answers questions about its own ledger from other
    regions: consistency proofs, one entry with its inclusion proof, and the entries of a message
    or trace about the asking region's traffic (``gateway.checkpoints``; wire format
    ``gateway.ledger_wire``)."""
    return f"{PREFIX}.lproof.{_token(region, 'region')}"


def witness_queue(region: str) -> str:
    """Queue group of a region's witness: one replica handles each checkpoint."""
    return f"tb-witness-{_token(region, 'region')}"


def ledger_proof_queue(region: str) -> str:
    """Queue group of a region's consistency-proof responders: one replica answers each request."""
    return f"tb-lproof-{_token(region, 'region')}"


def connector_queue(region: str) -> str:
    """Queue group shared by all connector replicas of a region."""
    return f"tb-connector-{_token(region, 'region')}"


def inbox_prefix(region: str) -> str:
    """Region-specific inbox prefix; least-privilege permissions allow replies only there."""
    return f"_INBOX_{_token(region, 'region')}"


def client_inbox_prefix(region: str, role: str) -> str:
    """Inbox prefix of one process role of ``region`` (``_INBOX_<region>.<role>``): inside the
    region's inbox space, which the hub routes to it, but apart from the other roles' replies."""
    return f"{inbox_prefix(region)}.{_token(role, 'role')}"


def inbox_region(reply: str) -> str | None:
    """The region whose inbox ``reply`` is in (``_INBOX_<region>.<token>…``), else None."""
    head, dot, rest = reply.partition(".")
    if not dot or not rest or not head.startswith("_INBOX_"):
        return None
    region = head[len("_INBOX_") :]
    return region if region.isdigit() and len(region) == 6 else None


def inbound_stream_name(region: str) -> str:
    return f"IN_{_token(region, 'region')}"


def outbound_stream_name(region: str) -> str:
    return f"OUT_{_token(region, 'region')}"


def event_stream_name(region: str) -> str:
    return f"EVT_{_token(region, 'region')}"


def dlq_stream_name(region: str) -> str:
    return f"DLQ_{_token(region, 'region')}"


class Durable(StrEnum):
    """Durable consumer names; every replica of a role shares one, so they split the work."""

    CONNECTOR = "connector"
    """IN_<region>: the connectors."""
    GATEWAY_EVENTS = "gateway-events"
    """EVT_<region>: the gateways."""
    FORWARD_REQUESTS = "forward-req"
    """OUT_<region>, requests: the gateways' forwarders."""
    FORWARD_EVENTS = "forward-evt"
    """OUT_<region>, events: the connectors' forwarders."""
