"""Operating a region's dead-letter stream: list what is there, replay a message once fixed.

A connector dead-letters a durable request after the service's maximum number of attempts (the
back end kept failing) and poison at once (it does not verify or decode). The dead letter keeps the
envelope exactly as received plus headers naming the reason, the attempts and the inbound subject.
Replay publishes the envelope again to the region's inbound stream, under a new ``Nats-Msg-Id``
(the original id is still inside the inbound stream's duplicate window), and removes the dead
letter: the connector then processes it once, as any request.
"""

from __future__ import annotations

from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client as NATS

from tongban.core import subjects
from tongban.core.errors import NotFound, Reason, TongbanError
from tongban.runtime.streams import jetstream


@dataclass(frozen=True)
class DeadLetter:
    """One message in ``DLQ_<region>``; ``seq`` is its id for replay."""

    seq: int
    message_id: str
    service_code: str
    reason: str
    attempts: int
    dead_lettered_at: str
    original_subject: str
    size: int


def _dead_letter(msg: nats.js.api.RawStreamMsg) -> DeadLetter:
    h = msg.headers or {}
    subject = msg.subject or ""
    try:
        attempts = int(h.get(subjects.Header.ATTEMPTS, "0"))
    except ValueError:
        attempts = 0
    return DeadLetter(
        seq=int(msg.seq or 0),
        message_id=h.get(subjects.Header.MESSAGE_ID, ""),
        service_code=subject.rsplit(".", 1)[-1],
        reason=h.get(subjects.Header.REASON, ""),
        attempts=attempts,
        dead_lettered_at=msg.time.isoformat() if msg.time else "",
        original_subject=h.get(subjects.Header.ORIGINAL_SUBJECT, ""),
        size=len(msg.data or b""),
    )


async def list_dead_letters(nc: NATS, region: str, *, limit: int = 1000) -> list[DeadLetter]:
    """Dead letters of ``region`` in stream order (at most ``limit``)."""
    js = jetstream(nc, region)
    stream = subjects.dlq_stream_name(region)
    out: list[DeadLetter] = []
    seq = 1
    while len(out) < limit:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=subjects.dlq_wildcard(region), next=True)
        except nats.js.errors.NotFoundError:
            break
        out.append(_dead_letter(msg))
        seq = int(msg.seq or seq) + 1
    return out


async def replay(nc: NATS, region: str, seq: int, *, timeout: float = 5.0) -> DeadLetter:
    """Send dead letter ``seq`` back to the inbound stream and remove it from the DLQ.

    Raises:
        NotFound: no dead letter has that id.
        TongbanError: the dead letter has no inbound subject to go back to.
    """
    js = jetstream(nc, region, timeout=timeout)
    stream = subjects.dlq_stream_name(region)
    try:
        msg = await js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError as exc:
        raise NotFound(f"no dead letter {seq} in {stream}", reason=Reason.DEAD_LETTER_NOT_FOUND) from exc
    dead = _dead_letter(msg)
    if not dead.original_subject.startswith(subjects.request_wildcard(region)[:-1]):
        raise TongbanError(
            f"dead letter {seq} has no inbound subject of {region}", reason=Reason.NOT_REPLAYABLE
        )
    headers: dict[str, str] = {
        subjects.Header.MSG_ID: f"{dead.message_id}.replay.{seq}",
        subjects.Header.MESSAGE_ID: dead.message_id,
    }
    await js.publish(dead.original_subject, msg.data or b"", timeout=timeout, headers=headers)
    await js.delete_msg(stream, seq)
    return dead
