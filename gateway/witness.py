"""Witnessing other regions' logs: every region checks that each other region's ledger only ever grew.

:class:`Witness` takes the checkpoints addressed to its region (published by each region's
:class:`~gateway.checkpoints.CheckpointPublisher`), verifies each against the trust registry's
signing keys of the origin region, keeps the latest one per region on disk, and for every newer one
asks the origin for a consistency proof (:mod:`gateway.ledger_wire`) and verifies it. An
inconsistent checkpoint — the proof does not verify, the size went down, or the root changed at the
same size — is an **alarm**: an error log line ``witness.alarm`` naming the region and both sizes,
the counter :attr:`Witness.alarms`, and a ``WITNESS_ALARM`` entry in the witnessing region's own
ledger.

Nothing in a checkpoint or a proof reply is used before it verifies: the note against the registry,
the proof against two verified roots (a forged proof can fail to verify, never make an inconsistent
log look consistent). A proof request that gets no usable answer is not an alarm — the held
checkpoint stays, and the next checkpoint asks again — since a network fault looks the same;
``proof_failures`` counts them.

Run one witness per region (a region's gateway replicas share the queue group, but each keeps its own
state file: a replica with a fresh file would adopt whatever checkpoint it sees first).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

import nats.errors
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.ledger_wire import ConsistencyRequest, b64, encode_request, parse_proof_reply
from gateway.subscription import STOP_S, DrainedSubscription
from ledger.checkpoint import (
    MAX_NOTE_BYTES,
    Checkpoint,
    CheckpointError,
    SignedCheckpoint,
    origin_of,
    parse_and_verify,
    read_note,
)
from ledger.entry import Event
from ledger.errors import LedgerError
from ledger.files import write_atomically
from ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from ledger.store import LedgerStore
from tongban.core import subjects
from tongban.core.details import Detail
from tongban.core.envelope import EnvelopeRejected
from tongban.core.registry import Registry
from tongban.runtime.records import draft
from tongban.runtime.shutdown import stop_task
from tongban.v1 import registry_pb2

log = structlog.get_logger("gateway.witness")

_QUEUE_PER_REGION: Final = 16
"""Checkpoints of one region waiting to be witnessed; beyond it the oldest is dropped."""


@dataclass(frozen=True, slots=True)
class Alarm:
    """An inconsistency a witness saw in another region's log."""

    region: str
    held_size: int
    held_root: bytes
    new_size: int
    new_root: bytes
    reason: str

    def detail(self) -> Detail:
        return Detail(
            outcome=self.reason,
            held_size=self.held_size,
            held_root=b64(self.held_root),
            new_size=self.new_size,
            new_root=b64(self.new_root),
        )


@dataclass(frozen=True, slots=True)
class FirstSight:
    """When a witness first trusted a region's log, and the checkpoint it trusted (trust on first
    use: there is no consistency proof from the empty log)."""

    at_ms: int
    size: int
    root: bytes


class Witness:
    """Verifies other regions' checkpoints and raises an alarm when a log did not only grow.

    Args:
        region: this (witnessing) region's code.
        nc: a connection to the region's nats-server with the region's inbox prefix.
        ledger: this region's ledger store (open), where alarms are recorded.
        registry: the live trust registry (the origin regions' signing keys, read per checkpoint).
        state_path: where the latest verified checkpoint of every region is kept (JSON, written atomically).
        request_timeout_s: deadline of each consistency-proof request.
        clock: seconds since the epoch (key validity is checked at receipt).

    Attributes:
        alarms: alarms raised (each distinct inconsistent checkpoint counts once).
        verified: consistency proofs verified.
        refused: checkpoints refused (malformed, wrong origin, unknown key, bad signature).
        proof_failures: proof requests that got no usable answer (timeout, no responder, error, malformed).
        trusted_on_first_use: logs first adopted without a proof (their first non-empty checkpoint).
    """

    def __init__(
        self,
        region: str,
        nc: NATS,
        ledger: LedgerStore,
        registry: Registry,
        *,
        state_path: str | os.PathLike[str],
        request_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.region = region
        self.nc = nc
        self.ledger = ledger
        self.registry = registry
        self.state_path = Path(state_path)
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self.alarms = 0
        self.verified = 0
        self.refused = 0
        self.proof_failures = 0
        self._held: dict[str, SignedCheckpoint] = {}
        self._alarmed: dict[str, tuple[int, bytes]] = {}
        self._first_sight: dict[str, FirstSight] = {}
        self.trusted_on_first_use = 0
        self._sub = DrainedSubscription(f"witness-{region}", self._receive)
        self._queues: dict[str, asyncio.Queue[bytes]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._loaded = False
        self._stopping = False

    def latest(self, region: str) -> Checkpoint | None:
        """The latest verified checkpoint of ``region``, or None."""
        held = self._held.get(region)
        return held.checkpoint if held else None

    def first_sight(self, region: str) -> FirstSight | None:
        """When and what this witness trusted on first use of ``region``'s log, or None."""
        return self._first_sight.get(region)

    async def start(self) -> None:
        """Load the state file and subscribe to checkpoints addressed to this region; idempotent.

        Raises:
            LedgerError: the state file is unreadable.
        """
        if not self._loaded:
            self._load()
            self._loaded = True
        self._stopping = False
        await self._sub.stop()
        await self._sub.start(
            self.nc, subjects.checkpoint_wildcard(self.region), subjects.witness_queue(self.region)
        )

    async def stop(self, timeout: float = STOP_S) -> None:
        """Unsubscribe and stop the per-region workers, within ``timeout``; idempotent. A checkpoint
        not yet witnessed is dropped: its region publishes a newer one on its schedule."""
        self._stopping = True
        await self._sub.stop(timeout)
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(stop_task(t, timeout=timeout, what=t.get_name()) for t in workers))
        self._queues.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _receive(self, msg: Msg) -> None:
        if self._stopping:
            return  # no new worker once stop() has collected them
        origin_region = msg.subject.rsplit(".", 1)[-1]
        if origin_region == self.region or self.registry.region(origin_region) is None:
            log.warning("witness.checkpoint_dropped", origin_region=origin_region[:16], reason="not a peer")
            return
        # One queue and one worker per origin region: a region that floods checkpoints, or never
        # answers proof requests, delays only its own witnessing. A full queue drops its oldest
        # note (a later one is checked against the held checkpoint all the same).
        queue = self._queues.setdefault(origin_region, asyncio.Queue(maxsize=_QUEUE_PER_REGION))
        if queue.full():
            queue.get_nowait()
            log.warning("witness.checkpoint_dropped", origin_region=origin_region, reason="queue full")
        queue.put_nowait(msg.data)
        worker = self._workers.get(origin_region)
        if worker is None or worker.done():
            self._workers[origin_region] = asyncio.create_task(
                self._work(origin_region, queue), name=f"witness-{self.region}-{origin_region}"
            )

    async def _work(self, origin_region: str, queue: asyncio.Queue[bytes]) -> None:
        while not queue.empty() and not self._stopping:
            note = queue.get_nowait()
            try:
                await self.witness(origin_region, note)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("witness.handler_failed", region=origin_region, error=type(exc).__name__)

    async def witness(self, origin_region: str, note: bytes) -> None:
        """Check one checkpoint note of ``origin_region`` (what a NATS message delivers)."""
        if len(note) > MAX_NOTE_BYTES:
            self._refuse(origin_region, "note too large")
            return
        keys = self._signing_keys(origin_region)
        if not keys:
            self._refuse(origin_region, "no valid signing key in the registry")
            return
        origin = origin_of(origin_region)
        try:
            cp = parse_and_verify(note, {origin: keys}, origin=origin)
        except CheckpointError as exc:
            self._refuse(origin_region, str(exc.reason))
            return
        signed = SignedCheckpoint(cp, note)
        held = self._held.get(origin_region)
        if cp.size == 0 and cp.root != EMPTY_ROOT:
            await self._alarm(held, signed, origin_region, "signed an empty tree with a non-empty root")
            return
        if held is None or (held.checkpoint.size == 0 and cp.size > 0):
            # Nothing earlier (or only the empty tree) to prove this one against: RFC 9162 has no
            # consistency proof from size 0. Adopting it is trust on first use, and is said so.
            self._trust_first(origin_region, signed)
            return
        old = held.checkpoint
        if cp.size < old.size:
            # An older checkpoint arriving late (another replica, a replay by anyone holding it) is
            # a prefix of the one held: only a failing proof from it to the held one is an alarm.
            if cp.size == 0:
                return  # the empty tree is a prefix of every tree (its root was checked above)
            why = "older checkpoint is not a prefix of the held one"
            if await self._proven(origin_region, cp, old, held, signed, alarm=why):
                log.debug("witness.stale_checkpoint", region=origin_region, size=cp.size, held_size=old.size)
        elif cp.size == old.size:
            if cp.root != old.root:
                await self._alarm(held, signed, origin_region, "different root at the same size")
        elif await self._proven(
            origin_region, old, cp, held, signed, alarm="consistency proof does not verify"
        ):
            self.verified += 1
            self._adopt(origin_region, signed)

    async def _proven(
        self,
        region: str,
        smaller: Checkpoint,
        larger: Checkpoint,
        held: SignedCheckpoint,
        new: SignedCheckpoint,
        *,
        alarm: str,
    ) -> bool:
        """Whether ``region`` proves ``smaller`` a prefix of ``larger``. A proof that does not verify
        raises the alarm (``alarm`` says why); no usable proof is no verdict (the next checkpoint
        asks again)."""
        proof = await self._request_proof(region, smaller.size, larger.size)
        if proof is None:
            return False
        try:
            verify_consistency(smaller.size, larger.size, smaller.root, larger.root, proof)
        except ProofError:
            await self._alarm(held, new, region, alarm)
            return False
        return True

    def _signing_keys(self, region: str) -> list[Ed25519PublicKey]:
        now = self._clock()
        keys = []
        for info in self.registry.keys_of(region, registry_pb2.KEY_USE_SIGNING):
            try:
                keys.append(self.registry.signing_public_key(info.key_id, region=region, at_s=now))
            except EnvelopeRejected:
                continue
        return keys

    async def _request_proof(self, region: str, old_size: int, new_size: int) -> list[bytes] | None:
        request = encode_request(ConsistencyRequest(old_size, new_size))
        try:
            reply = await self.nc.request(
                subjects.ledger_proof_subject(region), request, timeout=self.request_timeout_s
            )
            proof = parse_proof_reply(reply.data)
        except (nats.errors.Error, TimeoutError, ValueError) as exc:
            self.proof_failures += 1
            log.warning(
                "witness.proof_unavailable",
                region=region,
                old_size=old_size,
                new_size=new_size,
                error=type(exc).__name__,
                detail=str(exc)[:200],
            )
            return None
        return proof

    def _refuse(self, region: str, reason: str) -> None:
        self.refused += 1
        log.warning("witness.checkpoint_refused", region=region, reason=reason)

    def _trust_first(self, region: str, signed: SignedCheckpoint) -> None:
        """Adopt the first non-empty checkpoint of ``region``'s log without a proof, on record: the
        state file keeps when, at which size and root (what every later checkpoint is proven against),
        and the log line is a warning an operator can alarm on if it appears after the first days."""
        cp = signed.checkpoint
        self._first_sight[region] = FirstSight(int(self._clock() * 1000), cp.size, cp.root)
        self.trusted_on_first_use += 1
        log.warning("witness.trust_on_first_use", region=region, size=cp.size, root=b64(cp.root))
        self._adopt(region, signed, first=True)

    def _adopt(self, region: str, signed: SignedCheckpoint, *, first: bool = False) -> None:
        self._held[region] = signed
        self._save()
        log.info(
            "witness.checkpoint_adopted" if first else "witness.checkpoint_verified",
            region=region,
            size=signed.checkpoint.size,
        )

    async def _alarm(
        self, held: SignedCheckpoint | None, new: SignedCheckpoint, region: str, reason: str
    ) -> None:
        cp = new.checkpoint
        if self._alarmed.get(region) == (cp.size, cp.root):
            return  # the same conflicting checkpoint published again: already recorded
        old = held.checkpoint if held else cp
        alarm = Alarm(region, old.size, old.root, cp.size, cp.root, reason)
        self._alarmed[region] = (cp.size, cp.root)
        self._save()
        log.error(
            "witness.alarm",
            region=region,
            held_size=alarm.held_size,
            new_size=alarm.new_size,
            reason=reason,
            held_root=b64(alarm.held_root),
            new_root=b64(alarm.new_root),
        )
        try:
            await self.ledger.append(
                draft(
                    Event.WITNESS_ALARM,
                    f"witness-{region}-{alarm.held_size}-{alarm.new_size}",
                    peer=region,
                    service="",
                    detail=alarm.detail(),
                )
            )
        except LedgerError as exc:
            log.error("witness.alarm_not_recorded", region=region, error=type(exc).__name__)
        # Counted last, so whoever sees the counter move also finds the ledger entry.
        self.alarms += 1

    def _load(self) -> None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            doc = json.loads(raw)
            held = {r: read_note(n.encode("utf-8")) for r, n in doc["held"].items()}
            alarmed = {r: (int(a["size"]), base64.b64decode(a["root"])) for r, a in doc["alarmed"].items()}
            first_sight = {
                r: FirstSight(int(f["at_ms"]), int(f["size"]), base64.b64decode(f["root"]))
                for r, f in doc.get("first_sight", {}).items()
            }
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error, CheckpointError) as exc:
            raise LedgerError(f"witness state {self.state_path} is unreadable: {exc}") from None
        for r, signed in held.items():
            if signed.checkpoint.origin != origin_of(r):
                raise LedgerError(
                    f"witness state {self.state_path} holds a checkpoint of another log for {r}"
                )
        self._held, self._alarmed, self._first_sight = held, alarmed, first_sight

    def _save(self) -> None:
        doc = {
            "v": 1,
            "region": self.region,
            "held": {r: s.note.decode("utf-8") for r, s in sorted(self._held.items())},
            "alarmed": {r: {"size": n, "root": b64(root)} for r, (n, root) in sorted(self._alarmed.items())},
            "first_sight": {
                r: {"at_ms": f.at_ms, "size": f.size, "root": b64(f.root)}
                for r, f in sorted(self._first_sight.items())
            },
        }
        write_atomically(self.state_path, json.dumps(doc, indent=1).encode(), mode=0o600)
