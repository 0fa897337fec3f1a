"""Every NATS wire name tongban uses: subjects, queue groups, inbox prefixes, headers, streams.

Two subject spaces that never overlap (DESIGN.md "NATS topology"): streams capture
``tb.v1.req.<region>.>`` (and events, dead letters); synchronous request/reply uses
``tb.v1.rpc.<region>.<service>``. A stream whose subjects covered an RPC subject would answer the
core request with its PubAck and the caller would get the wrong reply.

Subjects hold region codes and catalogue item codes only: never personal data.
"""

from __future__ import annotations

import re
from enum import StrEnum

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

PREFIX = "tb.v1"
_TOKEN = re.compile(r"^[0-9A-Za-z_-]{1,64}$")


class Header(StrEnum):
    """NATS message headers (never hold personal data)."""

    MSG_ID = "Nats-Msg-Id"
    TRACEPARENT = "traceparent"
    MESSAGE_ID = "Tb-Message-Id"
    FROM_REGION = "Tb-From"


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


def connector_queue(region: str) -> str:
    """Queue group shared by all connector replicas of a region."""
    return f"tb-connector-{_token(region, 'region')}"


def inbox_prefix(region: str) -> str:
    """Region-specific inbox prefix; least-privilege permissions allow replies only there."""
    return f"_INBOX_{_token(region, 'region')}"


def inbound_stream_name(region: str) -> str:
    return f"IN_{_token(region, 'region')}"


def outbound_stream_name(region: str) -> str:
    return f"OUT_{_token(region, 'region')}"


def inbound_stream(region: str, *, duplicate_window_s: float = 24 * 3600) -> StreamConfig:
    """The durable inbound request stream of ``region`` (file storage, work queue).

    ``duplicate_window`` must outlast any resend delay: dedup by ``Nats-Msg-Id`` holds only inside it.
    """
    return StreamConfig(
        name=inbound_stream_name(region),
        subjects=[request_wildcard(region)],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        duplicate_window=duplicate_window_s,
        num_replicas=1,
    )


def stream_subjects_overlap_rpc(config: StreamConfig) -> bool:
    """True if any subject of ``config`` could capture an RPC or ping subject."""
    for subject in config.subjects or []:
        tokens = subject.split(".")
        for probe in (f"{PREFIX}.rpc.x.y", f"{PREFIX}.ping.x"):
            if _matches(tokens, probe.split(".")):
                return True
    return False


def _matches(pattern: list[str], subject: list[str]) -> bool:
    for i, tok in enumerate(pattern):
        if tok == ">":
            return len(subject) > i
        if i >= len(subject) or (tok != "*" and tok != subject[i]):
            return False
    return len(pattern) == len(subject)
