"""Signed checkpoints: the C2SP note format, its refusals, a signer that never signs two inconsistent ones."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import SQLiteLedger
from ledger.checkpoint import Checkpoint, origin_of, parse_and_verify, region_of_origin, sign_checkpoint
from ledger.checkpoint_signer import CheckpointSigner
from ledger.errors import CheckpointError, CheckpointReason, CheckpointRefused
from ledger.merkle import EMPTY_ROOT, root_from_leaves
from ledger.note import note_key_id, open_note, sign_note
from ledger.tree import LedgerTree
from tests.ledger.helpers import REGION, make_draft
from tongban.core.keys import SigningKey

ORIGIN = origin_of(REGION)
ROOT = hashlib.sha256(b"a root").digest()

# golang.org/x/mod/sumdb/note, note_test.go / doc.go: the reference signer and verifier keys (base64 of the
# signature type 0x01 followed by the Ed25519 seed, resp. public key) and the note it signs.
GO_NAME = "PeterNeumann"
GO_KEY_HASH = "c74f20a3"
GO_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_PUBLIC = base64.b64decode("ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")[1:]
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
GO_SIGNATURE = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = GO_TEXT + f"\n— PeterNeumann {GO_SIGNATURE}\n".encode()


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate(REGION)


def checkpoint(size: int = 42, root: bytes = ROOT, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin=origin, size=size, root=root, timestamp_ms=1_718_000_000_123)


# -- format ---------------------------------------------------------------------------------------


def test_key_hash_matches_the_go_reference_key() -> None:
    assert note_key_id(GO_NAME, GO_PUBLIC).hex() == GO_KEY_HASH


def test_note_signature_matches_the_go_reference_note_byte_for_byte() -> None:
    private = Ed25519PrivateKey.from_private_bytes(GO_SEED)
    go_key = SigningKey("go", private)
    assert go_key.public_raw == GO_PUBLIC
    assert sign_note(GO_TEXT, go_key, GO_NAME) == GO_NOTE  # Ed25519 is deterministic
    assert open_note(GO_NOTE, {GO_NAME: private.public_key()}) == GO_TEXT


def test_checkpoint_note_format(key: SigningKey) -> None:
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    text, sig = note.decode().split("\n\n")
    assert (
        text
        == f"tongban.example/ledger/440300\n42\n{base64.b64encode(ROOT).decode()}\ntimestamp_ms 1718000000123"
    )
    assert sig.startswith(f"— {ORIGIN} ") and sig.endswith("\n") and sig.count("\n") == 1
    blob = base64.b64decode(sig[len(f"— {ORIGIN} ") :])
    assert blob[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + key.public_raw).digest()[:4]
    key.private.public_key().verify(blob[4:], text.encode() + b"\n")


def test_round_trip(key: SigningKey) -> None:
    cp = checkpoint()
    assert parse_and_verify(sign_checkpoint(cp, key, ORIGIN), {ORIGIN: key.private.public_key()}) == cp
    empty = checkpoint(size=0, root=EMPTY_ROOT)
    note = sign_checkpoint(empty, key, ORIGIN)
    assert parse_and_verify(note, {ORIGIN: [key.private.public_key()]}, origin=ORIGIN) == empty


def test_origin_names_the_region() -> None:
    assert ORIGIN == "tongban.example/ledger/440300"
    assert region_of_origin(ORIGIN) == REGION
    assert region_of_origin("example.com/log") is None
    with pytest.raises(ValueError):
        origin_of("44030")


def test_unknown_signatures_are_ignored_and_a_rotated_key_verifies(key: SigningKey) -> None:
    old = SigningKey.generate(REGION)
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    other = sign_note(checkpoint().body(), SigningKey.generate("320200"), "witness.example/w1")
    cosigned = note + other.split(b"\n\n")[1]
    keys = {ORIGIN: [old.private.public_key(), key.private.public_key()]}
    assert parse_and_verify(cosigned, keys).size == 42


# -- refusals -------------------------------------------------------------------------------------


def refused(note: bytes, keys: object, reason: CheckpointReason, **kw: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        parse_and_verify(note, keys, **kw)  # type: ignore[arg-type]
    assert caught.value.reason is reason


def test_tampered_body_is_refused(key: SigningKey) -> None:
    note = sign_checkpoint(checkpoint(size=42), key, ORIGIN)
    refused(
        note.replace(b"\n42\n", b"\n43\n"), {ORIGIN: key.private.public_key()}, CheckpointReason.BAD_SIGNATURE
    )


def test_wrong_key_is_refused(key: SigningKey) -> None:
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    other = SigningKey.generate(REGION).private.public_key()
    refused(note, {ORIGIN: other}, CheckpointReason.UNKNOWN_KEY)
    refused(note, {"tongban.example/ledger/320200": key.private.public_key()}, CheckpointReason.UNKNOWN_KEY)


def test_wrong_origin_is_refused(key: SigningKey) -> None:
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    keys = {ORIGIN: key.private.public_key()}
    refused(note, keys, CheckpointReason.WRONG_ORIGIN, origin=origin_of("320200"))


def test_truncated_signature_is_refused(key: SigningKey) -> None:
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    text, sig_line = note.split(b"\n\n")
    blob = base64.b64decode(sig_line.split(b" ")[-1])
    short = text + b"\n\n" + f"— {ORIGIN} {base64.b64encode(blob[:-3]).decode()}\n".encode()
    refused(short, {ORIGIN: key.private.public_key()}, CheckpointReason.BAD_SIGNATURE)
    refused(note[:-10], {ORIGIN: key.private.public_key()}, CheckpointReason.MALFORMED)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n.replace(b"\n\n", b"\n"),  # no blank line
        lambda n: n.replace("— ".encode(), b"-- "),  # not an em dash
        lambda n: n.replace(b"\n42\n", b"\n042\n"),  # leading zero
        lambda n: n.replace(b"timestamp_ms", b"time"),  # unknown extension
        lambda n: n.replace(b"=\ntimestamp", b"\ntimestamp"),  # root not canonical base64
        lambda n: n.replace(b"timestamp_ms 1718000000123\n", b""),  # no timestamp
        lambda n: n.replace(b"\n42\n", b"\n4\t2\n"),  # control character
        lambda n: n + b"x",  # no final newline
        lambda n: n.split(b"\n\n")[0] + b"\n\n",  # no signature lines
        lambda n: n + b"\xff\n",  # not UTF-8
        lambda n: n.replace(b"\n42\n", b"\n" + b"9" * 8200 + b"\n"),  # too large
    ],
)
def test_malformed_notes_are_refused(key: SigningKey, mangle: object) -> None:
    note = sign_checkpoint(checkpoint(), key, ORIGIN)
    refused(mangle(note), {ORIGIN: key.private.public_key()}, CheckpointReason.MALFORMED)  # type: ignore[operator]


def test_checkpoint_and_note_validation(key: SigningKey) -> None:
    with pytest.raises(ValueError):
        checkpoint(root=b"short")
    with pytest.raises(ValueError):
        checkpoint(origin="has space")
    with pytest.raises(ValueError):
        sign_note(b"two\n\nparagraphs\n", key, ORIGIN)
    with pytest.raises(ValueError):
        sign_note(b"text\n", key, "name+plus")


# -- the signer -----------------------------------------------------------------------------------


async def fill(path: Path, n: int, *, start: int = 0, detail: str = "") -> SQLiteLedger:
    ledger = SQLiteLedger(path, REGION)
    await ledger.open()
    await ledger.append(*(make_draft(i, detail=detail) for i in range(start, start + n)))
    return ledger


async def test_signer_signs_the_tree_of_the_ledger(tmp_path: Path, key: SigningKey) -> None:
    ledger = await fill(tmp_path / "l.db", 5)
    try:
        signer = CheckpointSigner(ledger, key=key, state_path=tmp_path / "ckpt.json", clock=lambda: 1000.0)
        signed = await signer.sign_now()
        tree = LedgerTree()
        await tree.sync(ledger)
        leaves = [tree.leaf_hash_of(e) for e in await ledger.entries()]
        assert signed.checkpoint == Checkpoint(ORIGIN, 5, root_from_leaves(leaves), 1_000_000)
        assert (
            parse_and_verify(signed.note, {ORIGIN: key.private.public_key()}, origin=ORIGIN)
            == signed.checkpoint
        )
        assert await signer.checkpoint() is signed  # nothing new: the same checkpoint
        await ledger.append(make_draft(5))
        assert (await signer.checkpoint()).checkpoint.size == 6
    finally:
        await ledger.close()


async def test_signer_keeps_its_last_checkpoint_across_a_restart(tmp_path: Path, key: SigningKey) -> None:
    state = tmp_path / "ckpt.json"
    ledger = await fill(tmp_path / "l.db", 3)
    try:
        first = await CheckpointSigner(ledger, key=key, state_path=state).sign_now()
        assert json.loads(state.read_text())["note"] == first.note.decode()
        restarted = CheckpointSigner(ledger, key=lambda: key, state_path=state)
        await restarted.open()
        assert restarted.last == first
        await ledger.append(make_draft(3), make_draft(4))
        second = await restarted.sign_now()
        assert second.checkpoint.size == 5
        assert second.checkpoint.timestamp_ms >= first.checkpoint.timestamp_ms
    finally:
        await ledger.close()


async def test_signer_refuses_a_rewritten_ledger(tmp_path: Path, key: SigningKey) -> None:
    state = tmp_path / "ckpt.json"
    honest = await fill(tmp_path / "honest.db", 4)
    try:
        signed = await CheckpointSigner(honest, key=key, state_path=state).sign_now()
    finally:
        await honest.close()
    # Another history, longer: no consistency proof from the signed checkpoint exists.
    rewritten = await fill(tmp_path / "rewritten.db", 7, detail="rewritten")
    try:
        signer = CheckpointSigner(rewritten, key=key, state_path=state)
        with pytest.raises(CheckpointRefused) as caught:
            await signer.sign_now()
        assert (caught.value.last_size, caught.value.size) == (4, 7)
        with pytest.raises(CheckpointRefused):
            await signer.checkpoint()
        assert signer.last == signed
        assert json.loads(state.read_text())["note"] == signed.note.decode()  # nothing new persisted
    finally:
        await rewritten.close()


@pytest.mark.parametrize(("size", "reason"), [(4, "not consistent"), (2, "shrank")])
async def test_signer_refuses_same_size_fork_and_shrink(
    tmp_path: Path, key: SigningKey, size: int, reason: str
) -> None:
    state = tmp_path / "ckpt.json"
    honest = await fill(tmp_path / "honest.db", 4)
    try:
        await CheckpointSigner(honest, key=key, state_path=state).sign_now()
    finally:
        await honest.close()
    other = await fill(tmp_path / "other.db", size, detail="other")
    try:
        with pytest.raises(CheckpointRefused, match=reason):
            await CheckpointSigner(other, key=key, state_path=state).sign_now()
    finally:
        await other.close()


async def test_signer_refuses_a_state_file_of_another_log(tmp_path: Path, key: SigningKey) -> None:
    state = tmp_path / "ckpt.json"
    ledger = await fill(tmp_path / "l.db", 1)
    try:
        await CheckpointSigner(ledger, key=key, state_path=state, origin="example.com/other").sign_now()
        with pytest.raises(Exception, match="belongs to"):
            await CheckpointSigner(ledger, key=key, state_path=state).open()
    finally:
        await ledger.close()


async def test_signer_schedule_hands_over_checkpoints_and_stops(tmp_path: Path, key: SigningKey) -> None:
    import asyncio

    ledger = await fill(tmp_path / "l.db", 2)
    got: asyncio.Queue[int] = asyncio.Queue()

    async def on_checkpoint(signed: object) -> None:
        got.put_nowait(signed.checkpoint.size)  # type: ignore[attr-defined]

    try:
        async with CheckpointSigner(
            ledger, key=key, state_path=tmp_path / "c.json", interval_s=0.01, on_checkpoint=on_checkpoint
        ) as signer:
            assert await asyncio.wait_for(got.get(), 5) == 2
            await ledger.append(make_draft(2))
            while await asyncio.wait_for(got.get(), 5) != 3:
                pass
        assert signer._task is None
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("checkpoints-")] == []
    finally:
        await ledger.close()


async def test_two_signers_of_one_log_never_sign_inconsistent_checkpoints(
    tmp_path: Path, key: SigningKey
) -> None:
    """A gateway and `tongban ledger export` sign with the same state file. The gateway signed at 4
    and holds the honest 8 entries in memory; entry 6 is then edited on disk and the tool, reading
    the file from scratch, signs the edited history at 8 (consistent with 4). The gateway's next
    checkpoint must be refused: it would be inconsistent with the tool's."""
    import sqlite3

    state, path = tmp_path / "ckpt.json", tmp_path / "ledger.db"
    ledger = await fill(path, 4)
    try:
        gateway = CheckpointSigner(ledger, key=key, state_path=state)
        assert (await gateway.sign_now()).checkpoint.size == 4
        await ledger.append(*(make_draft(i) for i in range(4, 8)))
        await gateway.tree.sync(ledger)  # e.g. a proof request: the honest 8 leaves in memory
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("DROP TRIGGER entries_no_update")
            conn.execute("UPDATE entries SET detail = 'edited' WHERE idx = 6")
        finally:
            conn.close()
        edited = await CheckpointSigner(ledger, key=key, state_path=state).sign_now()
        assert edited.checkpoint.size == 8
        await ledger.append(make_draft(8))
        with pytest.raises(CheckpointRefused) as caught:
            await gateway.sign_now()
        assert (caught.value.last_size, caught.value.size) == (8, 9)
        assert json.loads(state.read_text())["note"] == edited.note.decode()  # nothing else signed
    finally:
        await ledger.close()


async def test_a_signer_follows_what_another_process_signed(tmp_path: Path, key: SigningKey) -> None:
    """Two signers over the same honest log: each new checkpoint is checked against the last one
    either of them signed (read under the state file's lock)."""
    state, path = tmp_path / "ckpt.json", tmp_path / "ledger.db"
    ledger = await fill(path, 4)
    try:
        a = CheckpointSigner(ledger, key=key, state_path=state)
        b = CheckpointSigner(ledger, key=key, state_path=state)
        await a.sign_now()
        await ledger.append(make_draft(4), make_draft(5))
        by_b = await b.sign_now()
        by_a = await a.sign_now()
        assert a.last == by_a and by_a.checkpoint.size == by_b.checkpoint.size == 6
        assert by_a.checkpoint.timestamp_ms >= by_b.checkpoint.timestamp_ms
    finally:
        await ledger.close()
