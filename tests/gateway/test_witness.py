"""Witnessed checkpoints across real nats-servers: Shenzhen publishes, Wuxi checks its log only grew.

Shenzhen (SZ) runs a :class:`CheckpointPublisher` on its ledger, Wuxi (WX) a :class:`Witness`, each on its own
leaf nats-server behind the hub with the production permissions. A log that is rewritten — a new ledger file
with another history, or one entry edited in the SQLite file — and then checkpointed by a signer that lost
its record of what it signed makes Wuxi raise the alarm on the next checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from gateway.checkpoints import CheckpointPublisher
from gateway.witness import Witness
from ledger import EntryDraft, Event, SQLiteLedger
from ledger.checkpoint import Checkpoint, origin_of, sign_checkpoint
from ledger.errors import CheckpointRefused
from ledger.merkle import root_from_leaves
from ledger.tree import leaf_hash_of
from tests.conftest import QD, SZ, WX
from tests.helpers import eventually, note
from tests.ledger.helpers import raw_db
from tongban.core import subjects
from tongban.core.registry import Registry
from tongban.ops.devstate import DevState
from tongban.ops.natsserver import Topology
from tongban.runtime.config import Config
from tongban.runtime.node import RegionSecrets, load_registry, load_secrets


@dataclass
class Region:
    code: str
    nc: NATS
    ledger: SQLiteLedger
    registry: Registry
    secrets: RegionSecrets
    ledger_path: Path


def draft(n: int, *, detail: str = "") -> EntryDraft:
    return EntryDraft(
        event=Event.SUBMITTED,
        message_id=f"msg-{n:04d}",
        peer_region=WX,
        service_code="SBJFJLCX0001",
        envelope_digest=hashlib.sha256(f"envelope {n}".encode()).digest(),
        detail=detail,
    )


@contextlib.asynccontextmanager
async def region(topology: Topology, state: DevState, code: str) -> AsyncIterator[Region]:
    cfg = Config.load(state.config_path(code))
    registry = load_registry(cfg)
    path = cfg.path(cfg.ledger.path)
    ledger = SQLiteLedger(path, code)
    await ledger.open()
    nc = await topology.admin_client(code)  # witness, publisher and the test's own probes share it
    r = Region(code, nc, ledger, registry, load_secrets(cfg, registry), Path(path))
    try:
        yield r
    finally:
        await r.nc.close()
        await r.ledger.close()


async def reachable(src: NATS, subject: str, payload: bytes = b"") -> None:
    """Wait until a request from ``src`` on ``subject`` gets any answer (interest crossed the hub)."""

    async def answered() -> bool:
        try:
            await src.request(subject, payload, timeout=0.5)
            return True
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return False

    await eventually(answered, what=f"{subject} answered")


async def witness_visible_from(witness_nc: NATS, src: Region) -> None:
    """Interest travels leaf → hub in order: once a ping subscription the witness's connection made after
    its checkpoint subscription answers ``src``, the checkpoint subscription is visible to ``src`` too."""

    async def pong(msg: Any) -> None:
        await msg.respond(b"")

    sub = await witness_nc.subscribe(subjects.ping_subject(WX), cb=pong)
    await witness_nc.flush()
    try:
        await reachable(src.nc, subjects.ping_subject(WX))
    finally:
        await sub.unsubscribe()


def held_size(witness: Witness) -> int | None:
    cp = witness.latest(SZ)
    return cp.size if cp else None


async def alarms_in(ledger: SQLiteLedger) -> list[Any]:
    return [e for e in await ledger.entries() if e.event is Event.WITNESS_ALARM]


async def rewrite(how: str, sz: Region, tmp_path: Path) -> None:
    """Give Shenzhen a different history of 13 entries (it had 10)."""
    await sz.ledger.close()
    if how == "new_file":
        sz.ledger_path = tmp_path / "rewritten.sqlite"
        sz.ledger = SQLiteLedger(sz.ledger_path, SZ)
        await sz.ledger.open()
        await sz.ledger.append(*(draft(i, detail="another history") for i in range(13)))
        return
    # Someone with file access drops the append-only trigger and edits entry 3; the chain still links
    # forward to the untouched later entries, but the tree recomputed from the entries changes.
    with raw_db(sz.ledger_path) as conn:
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET detail = 'edited' WHERE idx = 3")
    sz.ledger = SQLiteLedger(sz.ledger_path, SZ)
    await sz.ledger.open()
    await sz.ledger.append(*(draft(i) for i in range(10, 13)))


@pytest.mark.parametrize("how", ["new_file", "edited_entry"])
async def test_witness_verifies_growth_and_alarms_on_a_rewritten_log(
    topology: Topology, state: DevState, tmp_path: Path, how: str
) -> None:
    async with region(topology, state, SZ) as sz, region(topology, state, WX) as wx:
        await sz.ledger.append(*(draft(i) for i in range(5)))
        witness_state = tmp_path / "wx-witnessed.json"
        witness = Witness(WX, wx.nc, wx.ledger, wx.registry, state_path=witness_state, request_timeout_s=2.0)
        publisher = CheckpointPublisher(
            SZ,
            sz.nc,
            sz.ledger,
            sz.registry,
            sz.secrets,
            state_path=tmp_path / "sz-ckpt.json",
            interval_s=3600,
        )
        rewritten: CheckpointPublisher | None = None
        try:
            # Growth: 5 → 8 → 10, each step proven consistent by a proof Shenzhen serves. The first
            # checkpoint has nothing to be proven against: trusted on first use, logged and recorded.
            with capture_logs() as first_logs:
                await witness.start()
                await publisher.start()
                await witness_visible_from(wx.nc, sz)
                await reachable(wx.nc, subjects.ledger_proof_subject(SZ), b"{}")
                await publisher.publish_now()
                await eventually(lambda: held_size(witness) == 5, what="WX holds SZ@5")
            [tofu] = [e for e in first_logs if e["event"] == "witness.trust_on_first_use"]
            assert (tofu["log_level"], tofu["region"], tofu["size"]) == ("warning", SZ, 5)
            first = witness.first_sight(SZ)
            assert first is not None and (first.size, witness.trusted_on_first_use) == (5, 1)
            assert json.loads(witness_state.read_text())["first_sight"][SZ]["size"] == 5
            for n in (8, 10):
                await sz.ledger.append(*(draft(i) for i in range(await sz.ledger.size(), n)))
                await publisher.publish_now()
                await eventually(lambda n=n: held_size(witness) == n, what=f"WX verified SZ@{n}")  # type: ignore[misc]
            assert (witness.verified, witness.alarms, witness.refused) == (2, 0, 0)
            assert await alarms_in(wx.ledger) == []
            await publisher.stop()

            await rewrite(how, sz, tmp_path)

            # The honest signer, with its record of what it signed, refuses to sign the rewritten log.
            honest = CheckpointPublisher(
                SZ, sz.nc, sz.ledger, sz.registry, sz.secrets, state_path=tmp_path / "sz-ckpt.json"
            )
            with pytest.raises(CheckpointRefused):
                await honest.publish_now()

            # A signer that lost (or dropped) that record signs it: Wuxi's next check catches it.
            rewritten = CheckpointPublisher(
                SZ,
                sz.nc,
                sz.ledger,
                sz.registry,
                sz.secrets,
                state_path=tmp_path / "fresh.json",
                interval_s=3600,
            )
            with capture_logs() as logs:
                await rewritten.start()
                await reachable(wx.nc, subjects.ledger_proof_subject(SZ), b"{}")
                await rewritten.publish_now()
                await eventually(lambda: witness.alarms == 1, what="WX raised the alarm")
                await eventually(lambda: any(e["event"] == "witness.alarm" for e in logs))
            alarm = next(e for e in logs if e["event"] == "witness.alarm")
            assert alarm["log_level"] == "error"
            assert (alarm["region"], alarm["held_size"], alarm["new_size"]) == (SZ, 10, 13)
            assert alarm["reason"] == "consistency proof does not verify"

            entries = await alarms_in(wx.ledger)
            assert len(entries) == 1
            assert entries[0].peer_region == SZ
            assert "held size 10" in note(entries[0]) and "new size 13" in note(entries[0])
            assert held_size(witness) == 10  # the inconsistent checkpoint is never adopted
            assert witness.verified == 2

            # The same conflicting checkpoint again (the schedule republishes it) is not a second alarm. The
            # witness handles one subject's messages in order: once the garbage sent after it is refused,
            # the republished checkpoint has been handled.
            assert rewritten.signer.last is not None
            await rewritten.publish(rewritten.signer.last)
            await sz.nc.publish(subjects.checkpoint_subject(WX, SZ), b"garbage")
            await eventually(lambda: witness.refused == 1, what="garbage refused")
            assert witness.alarms == 1
            assert len(await alarms_in(wx.ledger)) == 1
        finally:
            await publisher.stop()
            if rewritten is not None:
                await rewritten.stop()
            await witness.stop()

        # The witness's record survives a restart: it still holds SZ@10 and the alarm it raised.
        doc = json.loads(witness_state.read_text())
        assert set(doc["held"]) == {SZ} and doc["alarmed"][SZ]["size"] == 13
        again = Witness(WX, wx.nc, wx.ledger, wx.registry, state_path=witness_state)
        await again.start()
        try:
            assert held_size(again) == 10
            first = again.first_sight(SZ)
            assert first is not None and first.size == 5  # the record of trusting it survives too
        finally:
            await again.stop()


async def test_witness_refuses_forgeries_and_alarms_on_rollback_and_fork(
    topology: Topology, state: DevState, tmp_path: Path
) -> None:
    async with region(topology, state, SZ) as sz, region(topology, state, WX) as wx:
        await sz.ledger.append(*(draft(i) for i in range(6)))
        witness = Witness(
            WX, wx.nc, wx.ledger, wx.registry, state_path=tmp_path / "w.json", request_timeout_s=1.0
        )
        publisher = CheckpointPublisher(
            SZ, sz.nc, sz.ledger, sz.registry, sz.secrets, state_path=tmp_path / "sz.json", interval_s=3600
        )
        try:
            await witness.start()
            await publisher.start()
            await witness_visible_from(wx.nc, sz)
            await publisher.publish_now()
            await eventually(lambda: held_size(witness) == 6, what="WX holds SZ@6")
            leaves = [leaf_hash_of(e) for e in await sz.ledger.entries()]
            key, origin = sz.secrets.signing, origin_of(SZ)
            subject = subjects.checkpoint_subject(WX, SZ)

            async def send(note: bytes) -> None:
                await sz.nc.publish(subject, note)
                await sz.nc.flush()

            # Signed by Wuxi's key, or for Qingdao's log, or garbage: refused, never an alarm.
            good = Checkpoint(origin, 6, root_from_leaves(leaves), 1)
            await send(sign_checkpoint(good, wx.secrets.signing, origin))
            await send(
                sign_checkpoint(Checkpoint(origin_of("370200"), 7, good.root, 1), key, origin_of("370200"))
            )
            await send(b"not a note")
            await eventually(lambda: witness.refused == 3, what="three refusals")

            with capture_logs() as logs:
                # An older genuine checkpoint arriving late (a replay, another replica): a prefix of
                # the held one, proven so by Shenzhen: stale, not an alarm.
                await send(
                    sign_checkpoint(Checkpoint(origin, 4, root_from_leaves(leaves[:4]), 3), key, origin)
                )
                await eventually(
                    lambda: any(e["event"] == "witness.stale_checkpoint" for e in logs),
                    what="stale checkpoint",
                )
                assert witness.alarms == 0
                # Rollback: Shenzhen signs a smaller tree that is not a prefix of the one held.
                await send(
                    sign_checkpoint(Checkpoint(origin, 4, hashlib.sha256(b"y").digest(), 3), key, origin)
                )
                await eventually(lambda: witness.alarms == 1, what="rollback alarm")
                # Fork: another root at the size Wuxi holds.
                await send(
                    sign_checkpoint(Checkpoint(origin, 6, hashlib.sha256(b"x").digest(), 4), key, origin)
                )
                await eventually(lambda: witness.alarms == 2, what="fork alarm")
            found = [
                (e["held_size"], e["new_size"], e["reason"]) for e in logs if e["event"] == "witness.alarm"
            ]
            assert found == [
                (6, 4, "older checkpoint is not a prefix of the held one"),
                (6, 6, "different root at the same size"),
            ]
            entries = await alarms_in(wx.ledger)
            assert [(e.peer_region, e.message_id) for e in entries] == [
                (SZ, f"witness-{SZ}-6-4"),
                (SZ, f"witness-{SZ}-6-6"),
            ]

            # A genuine larger checkpoint whose proof nobody serves: not adopted, not an alarm.
            await publisher.stop()
            await sz.ledger.append(draft(6), draft(7))
            leaves += [leaf_hash_of(e) for e in await sz.ledger.entries(6)]
            await send(sign_checkpoint(Checkpoint(origin, 8, root_from_leaves(leaves), 2), key, origin))
            await eventually(lambda: witness.proof_failures == 1, what="proof unavailable")
            assert witness.alarms == 2
            assert held_size(witness) == 6
        finally:
            await publisher.stop()
            await witness.stop()


async def test_a_region_that_stalls_its_proofs_delays_only_its_own_witnessing(
    topology: Topology, state: DevState, tmp_path: Path
) -> None:
    """Qingdao floods Wuxi with growing checkpoints and never answers a proof request (each costs a
    1 s timeout, 16 queued): Shenzhen's checkpoints are witnessed meanwhile, by their own worker."""
    async with (
        region(topology, state, SZ) as sz,
        region(topology, state, WX) as wx,
        region(topology, state, QD) as qd,
    ):
        witness = Witness(
            WX, wx.nc, wx.ledger, wx.registry, state_path=tmp_path / "w.json", request_timeout_s=1.0
        )
        publisher = CheckpointPublisher(
            SZ, sz.nc, sz.ledger, sz.registry, sz.secrets, state_path=tmp_path / "sz.json", interval_s=3600
        )

        async def never_answer(msg: Any) -> None:
            return None

        await qd.nc.subscribe(subjects.ledger_proof_subject(QD), cb=never_answer)
        await qd.nc.flush()
        try:
            await witness.start()
            await witness_visible_from(wx.nc, sz)
            await witness_visible_from(wx.nc, qd)
            origin, key = origin_of(QD), qd.secrets.signing
            await qd.nc.publish(
                subjects.checkpoint_subject(WX, QD),
                sign_checkpoint(Checkpoint(origin, 1, hashlib.sha256(b"q1").digest(), 1), key, origin),
            )
            for size in range(2, 20):
                cp = Checkpoint(origin, size, hashlib.sha256(f"q{size}".encode()).digest(), size)
                await qd.nc.publish(subjects.checkpoint_subject(WX, QD), sign_checkpoint(cp, key, origin))
            await qd.nc.flush()
            await eventually(lambda: witness.proof_failures >= 1, what="Qingdao's proofs time out")
            await sz.ledger.append(*(draft(i) for i in range(5)))
            await publisher.start()  # publishes Shenzhen@5 now
            await eventually(lambda: held_size(witness) == 5, timeout=5, what="Shenzhen witnessed meanwhile")
            assert witness.proof_failures < 18  # Qingdao's queue is still being worked through
        finally:
            await publisher.stop()
            await witness.stop()
