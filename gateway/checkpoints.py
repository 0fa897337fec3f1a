"""This region's side of witnessed checkpoints: sign the ledger's tree heads, publish them to every
other region, and answer what other regions ask of the ledger.

:class:`CheckpointPublisher` signs checkpoints of the region's own ledger (``ledger.checkpoint``), on a
schedule and on demand, publishes each to every other region of the trust registry on
``tb.v1.ckpt.<peer>.<own>`` (the peer's inbound space, where its :class:`~gateway.witness.Witness`
checks it), and answers on ``tb.v1.lproof.<own>`` (:mod:`gateway.ledger_wire`): consistency proofs
for witnesses, and for other regions' operators the entries about their own traffic, singly with
an inclusion proof or by message or trace (:mod:`gateway.peer_ledger` asks). ``peer_region`` must
be the region whose inbox the reply goes to, which the hub's permissions tie to that region's
credentials: no region can read another's dealings with third regions.
"""

from __future__ import annotations

import math
import os
from typing import Any, Self

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from gateway.ledger_wire import (
    ConsistencyRequest,
    EntriesRequest,
    InclusionRequest,
    entries_reply,
    error_reply,
    inclusion_reply,
    parse_request,
    proof_reply,
)
from gateway.subscription import STOP_S, DrainedSubscription
from ledger.checkpoint import SignedCheckpoint, origin_of
from ledger.checkpoint_signer import CheckpointSigner
from ledger.store import LedgerStore
from ledger.tree import LedgerTree
from tongban.core import subjects
from tongban.core.registry import Registry
from tongban.runtime.bundle import entry_json
from tongban.runtime.node import RegionSecrets

log = structlog.get_logger("gateway.checkpoints")


class CheckpointPublisher:
    """Signs this region's ledger checkpoints, publishes them to every peer region, answers proof and
    entries requests.

    Args:
        region: this region's code.
        nc: a connection to the region's nats-server with the region's inbox prefix.
        ledger: the region's ledger store (open).
        registry: the live trust registry (peers are its other regions, read at each publication).
        secrets: the region's keys; checkpoints are signed with ``secrets.signing``, the key in use now.
        state_path: the signer's state file (the last signed checkpoint); keep it with the ledger.
        interval_s: period of scheduled checkpoints.
        publish_timeout_s: deadline of the flush after publishing one checkpoint to every peer.
        tree: the ledger's tree to share (the gateway's, which its ledger service proves from); None: its own.
    """

    def __init__(
        self,
        region: str,
        nc: NATS,
        ledger: LedgerStore,
        registry: Registry,
        secrets: RegionSecrets,
        *,
        state_path: str | os.PathLike[str],
        interval_s: float = 60.0,
        publish_timeout_s: float = 5.0,
        tree: LedgerTree | None = None,
    ) -> None:
        self.region = region
        self.nc = nc
        self.registry = registry
        self.publish_timeout_s = publish_timeout_s
        self.signer = CheckpointSigner(
            ledger,
            key=lambda: secrets.signing,
            state_path=state_path,
            origin=origin_of(region),
            interval_s=interval_s,
            on_checkpoint=self.publish,
            tree=tree,
        )
        self._proofs = DrainedSubscription(f"lproof-{region}", self._answer)
        self._started = False

    async def start(self) -> None:
        """Open the signer, answer proof requests, then publish a checkpoint now and every interval;
        idempotent. A failed start releases what it took."""
        if self._started:
            return
        await self.signer.open()
        try:
            await self._proofs.start(
                self.nc, subjects.ledger_proof_subject(self.region), subjects.ledger_proof_queue(self.region)
            )
            await self.signer.start()
        except BaseException:
            await self._proofs.stop()
            raise
        self._started = True

    async def stop(self, timeout: float = STOP_S) -> None:
        """Stop the schedule and the proof responder, each within ``timeout`` (a checkpoint being
        signed is finished or abandoned: signing and saving it are one synchronous step);
        idempotent."""
        await self.signer.stop(timeout=timeout)
        await self._proofs.stop(timeout)
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def publish_now(self) -> SignedCheckpoint:
        """Sign a fresh checkpoint and publish it to every peer.

        Raises:
            CheckpointRefused: the ledger is not consistent with the last signed checkpoint.
        """
        signed = await self.signer.sign_now()
        await self.publish(signed)
        return signed

    async def publish(self, signed: SignedCheckpoint) -> None:
        """Publish a signed checkpoint to every other region of the registry."""
        peers = sorted(code for code in self.registry.regions if code != self.region)
        for peer in peers:
            await self.nc.publish(subjects.checkpoint_subject(peer, self.region), signed.note)
        await self.nc.flush(timeout=max(1, math.ceil(self.publish_timeout_s)))  # nats-py takes whole seconds
        log.info(
            "witness.checkpoint_published", region=self.region, size=signed.checkpoint.size, peers=len(peers)
        )

    async def _answer(self, msg: Msg) -> None:
        # Answer only into a registered region's inbox: the hub lets any region publish here, and an
        # arbitrary reply subject would make this responder a relay into a third region's subjects.
        reply_region = subjects.inbox_region(msg.reply or "")
        if reply_region is None or self.registry.region(reply_region) is None:
            log.warning("witness.proof_request_dropped", reason="reply subject is not a region inbox")
            return
        try:
            request = parse_request(msg.data)
            match request:
                case EntriesRequest():
                    reply, count = await self._entries(request, asker=reply_region)
                    await msg.respond(reply)
                    log.debug("witness.entries_answered", peer=reply_region, entries=count)
                case InclusionRequest(leaf, size):
                    entry = await self._inclusion(leaf, size, asker=reply_region)
                    await msg.respond(inclusion_reply(entry))
                    log.debug("witness.inclusion_answered", peer=reply_region, leaf=leaf, size=size)
                case ConsistencyRequest(old_size, new_size):
                    proof = await self.signer.consistency_proof(old_size, new_size)
                    await msg.respond(proof_reply(proof))
                    log.debug(
                        "witness.proof_answered", peer=reply_region, old_size=old_size, new_size=new_size
                    )
        except ValueError as exc:
            await msg.respond(error_reply(str(exc)))

    async def _inclusion(self, leaf_index: int, size: int, *, asker: str) -> dict[str, Any]:
        """One entry with its inclusion proof in the tree of ``size`` (what a receipt holder asks):
        only an entry about the asking region's own traffic (its ``peer_region``), so no region can
        page through this region's dealings with the others."""
        tree = self.signer.tree
        await tree.sync(self.signer.store)
        if not 0 <= leaf_index < size <= tree.size:
            raise ValueError(f"cannot prove leaf {leaf_index} in a tree of size {size} (ledger: {tree.size})")
        [entry] = await self.signer.store.entries(leaf_index, leaf_index + 1)
        if entry.peer_region != asker:
            raise ValueError(f"leaf {leaf_index} is not about region {asker}'s traffic")
        return entry_json(entry, tree.tree.inclusion_proof(leaf_index, size))

    async def _entries(self, request: EntriesRequest, *, asker: str) -> tuple[bytes, int]:
        """The answer to an entries request: the message's or trace's entries about the asking
        region's own traffic (its ``peer_region``), the first ones that fit, and how many."""
        store = self.signer.store
        found = await (
            store.by_message_id(request.message_id)
            if request.message_id
            else store.by_trace_id(request.trace_id)
        )
        return entries_reply([e for e in found if e.peer_region == asker])
