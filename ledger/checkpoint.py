"""Signed checkpoints of a region's ledger: C2SP tlog-checkpoint notes with Ed25519 signed-note signatures.

A checkpoint commits to the ledger's Merkle tree at one size (``ledger.merkle``, RFC 6962). Its wire form is a
C2SP signed note (https://c2sp.org/signed-note) whose text is a C2SP checkpoint body
(https://c2sp.org/tlog-checkpoint)::

    tongban.example/ledger/440300
    42
    tGpHh8Jk3H0wI4vqx1Q0yVbZ5wPpXnqkKZ8mE7Lq2hY=
    timestamp_ms 1718000000123

    — tongban.example/ledger/440300 x08go/ZJkuBS9UG/Sffcv…

* line 1, the **origin**: :func:`origin_of` the region; line 2 the **tree size** in decimal, no leading zeros;
  line 3 the **root hash**, standard base64 of the 32-byte RFC 6962 root at that size;
* line 4, an **extension line** ``timestamp_ms <Unix milliseconds>``: C2SP allows opaque, non-empty
  extension lines after the first three (it does not recommend them because log monitors cannot audit them;
  here the timestamp only tells a reader when the region signed, nothing is decided on it). This format
  requires exactly this one extension line;
* the text ends with a newline and is followed by a blank line and signature lines
  ``— <key name> <base64(key ID || Ed25519 signature over the text)>``, em dash U+2014 then a space, where
  ``key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`` (signed-note's recommended key
  ID, signature type 0x01 = Ed25519). The key name is the origin, as tlog-checkpoint recommends; a region
  rotating its signing key keeps the name, and the key ID tells its keys apart.

A log must never sign two checkpoints that are inconsistent with each other (tlog-checkpoint "Signatures"):
:class:`CheckpointSigner` keeps the last checkpoint it signed on disk and signs a new one only when its own
tree proves consistency from it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import LedgerError
from ledger.files import write_atomically
from ledger.merkle import EMPTY_ROOT, ProofError, verify_consistency
from ledger.store import LedgerStore
from ledger.tree import LedgerTree

log = structlog.get_logger("ledger.checkpoint")

ORIGIN_PREFIX: Final = "tongban.example/ledger/"
"""Origins are ``<ORIGIN_PREFIX><region code>``: schema-less URLs, as tlog-checkpoint recommends."""

TIMESTAMP_EXTENSION: Final = "timestamp_ms"
"""Keyword of the one extension line: ``timestamp_ms <Unix milliseconds>``."""

ED25519_TYPE: Final = b"\x01"
"""signed-note signature type identifier of Ed25519."""

SIGNATURE_PREFIX: Final = "— "
"""Em dash (U+2014) and a space: the start of every signature line."""

MAX_NOTE_BYTES: Final = 8192
"""A checkpoint note is a few hundred bytes; anything larger is refused before it is parsed."""

MAX_SIGNATURES: Final = 32
"""signed-note: verifiers must accept at least 16 signatures per note."""

HASH_SIZE: Final = 32
_ED25519_SIG_SIZE: Final = 64
_MAX_SIZE: Final = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_REGION = re.compile(r"[0-9]{6}")


class CheckpointReason(StrEnum):
    """Why a note was refused."""

    MALFORMED = "MALFORMED"
    """Not a well-formed signed note or checkpoint body."""
    WRONG_ORIGIN = "WRONG_ORIGIN"
    """Well formed, but the checkpoint of another log than the one expected."""
    UNKNOWN_KEY = "UNKNOWN_KEY"
    """No signature line is from a key the verifier knows (name and key ID)."""
    BAD_SIGNATURE = "BAD_SIGNATURE"
    """A signature from a known key does not verify (or has the wrong length): the whole note is refused."""


class CheckpointError(LedgerError):
    """A checkpoint note was refused; nothing of it may be used.

    Attributes:
        reason: which check failed.
    """

    def __init__(self, reason: CheckpointReason, message: str) -> None:
        super().__init__(f"checkpoint refused ({reason}): {message}")
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (CheckpointError, (self.reason, str(self)))


class CheckpointRefused(LedgerError):
    """The signer will not sign: the tree does not prove consistency with the last checkpoint it signed.

    Attributes:
        last_size: size of the last signed checkpoint.
        size: size of the tree it was asked to sign.
        reason: what is wrong, e.g. ``"tree shrank"``.
    """

    def __init__(self, *, last_size: int, size: int, reason: str) -> None:
        super().__init__(
            f"refusing to sign a checkpoint at size {size}: {reason} (last signed size {last_size})"
        )
        self.last_size = last_size
        self.size = size
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (_refused, (self.last_size, self.size, self.reason))


def _refused(last_size: int, size: int, reason: str) -> CheckpointRefused:
    return CheckpointRefused(last_size=last_size, size=size, reason=reason)


def origin_of(region: str) -> str:
    """The checkpoint origin (and signature key name) of ``region``'s ledger, e.g.
    ``tongban.example/ledger/440300``."""
    if not _REGION.fullmatch(region):
        raise ValueError("region must be a 6-digit GB/T 2260 code")
    return ORIGIN_PREFIX + region


def region_of_origin(origin: str) -> str | None:
    """The region whose ledger ``origin`` names, or None when it is not a tongban ledger origin."""
    if not origin.startswith(ORIGIN_PREFIX):
        return None
    region = origin[len(ORIGIN_PREFIX) :]
    return region if _REGION.fullmatch(region) else None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head of one log.

    Attributes:
        origin: the log's identity (:func:`origin_of`).
        size: number of leaves.
        root: the 32-byte RFC 6962 root hash of the first ``size`` leaves.
        timestamp_ms: when the log signed it, Unix milliseconds.
    """

    origin: str
    size: int
    root: bytes
    timestamp_ms: int

    def __post_init__(self) -> None:
        _check_key_name(self.origin, "origin")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size <= _MAX_SIZE:
            raise ValueError("size must be an integer in [0, 2**63)")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise ValueError(f"root must be {HASH_SIZE} bytes")
        if (
            not isinstance(self.timestamp_ms, int)
            or isinstance(self.timestamp_ms, bool)
            or not 0 <= self.timestamp_ms <= _MAX_SIZE
        ):
            raise ValueError("timestamp_ms must be an integer in [0, 2**63)")

    def body(self) -> bytes:
        """The note text: the C2SP checkpoint body plus the timestamp extension line."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\n{TIMESTAMP_EXTENSION} {self.timestamp_ms}\n".encode()

    @property
    def region(self) -> str | None:
        """The region of the origin, if it is a tongban ledger origin."""
        return region_of_origin(self.origin)


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint and the signed note it was read from or signed as (the evidence to keep)."""

    checkpoint: Checkpoint
    note: bytes


class NoteKey(Protocol):
    """What signing needs of a key: ``tongban.core.keys.SigningKey`` is one."""

    @property
    def public_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


# -- signed notes -----------------------------------------------------------------------------------


def key_id(key_name: str, public_raw: bytes) -> bytes:
    """The 4-byte signed-note key ID of an Ed25519 key: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    if len(public_raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(key_name.encode() + b"\n" + ED25519_TYPE + public_raw).digest()[:4]


def sign_note(text: bytes, key: NoteKey, key_name: str) -> bytes:
    """Sign ``text`` as a C2SP signed note with one Ed25519 signature line.

    Raises:
        ValueError: ``text`` is empty, does not end in a newline, holds a blank line or a control character,
            or ``key_name`` is not a valid key name.
    """
    _check_key_name(key_name, "key name")
    _check_note_text(text)
    if not text.endswith(b"\n") or b"\n\n" in text or text.startswith(b"\n"):
        raise ValueError("note text must be non-empty lines, each ending in a newline")
    blob = key_id(key_name, key.public_raw) + key.sign(text)
    return text + b"\n" + f"{SIGNATURE_PREFIX}{key_name} {base64.b64encode(blob).decode('ascii')}\n".encode()


def open_note(
    note: bytes, public_keys_by_name: Mapping[str, Ed25519PublicKey | Iterable[Ed25519PublicKey]]
) -> bytes:
    """Verify a signed note and return its text.

    Signature lines from keys not in ``public_keys_by_name`` (by name *and* key ID) are ignored, as
    signed-note requires; a signature from a known key must verify, and at least one must.

    Raises:
        CheckpointError: MALFORMED, UNKNOWN_KEY or BAD_SIGNATURE.
    """
    text, signatures = _split_note(note)
    known = _index_keys(public_keys_by_name)
    verified = False
    for name, blob in signatures:
        public = known.get((name, blob[:4]))
        if public is None:
            continue
        if len(blob) != 4 + _ED25519_SIG_SIZE:
            raise CheckpointError(CheckpointReason.BAD_SIGNATURE, f"signature of {name} has the wrong length")
        try:
            public.verify(blob[4:], text)
        except InvalidSignature:
            raise CheckpointError(
                CheckpointReason.BAD_SIGNATURE, f"signature of {name} does not verify"
            ) from None
        verified = True
    if not verified:
        raise CheckpointError(CheckpointReason.UNKNOWN_KEY, "no signature from a known key")
    return text


def _split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    if not isinstance(note, bytes):
        raise CheckpointError(CheckpointReason.MALFORMED, "a note is bytes")
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(CheckpointReason.MALFORMED, f"note longer than {MAX_NOTE_BYTES} bytes")
    try:
        _check_note_text(note)
    except ValueError as exc:
        raise CheckpointError(CheckpointReason.MALFORMED, str(exc)) from None
    split = note.rfind(b"\n\n")
    if split < 0 or not note.endswith(b"\n"):
        raise CheckpointError(CheckpointReason.MALFORMED, "no blank line before the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block.decode("utf-8").split("\n")[:-1]
    if not lines:
        raise CheckpointError(CheckpointReason.MALFORMED, "no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(CheckpointReason.MALFORMED, f"more than {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(CheckpointReason.MALFORMED, "signature line does not start with an em dash")
        name, space, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            _check_key_name(name, "key name")
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise CheckpointError(CheckpointReason.MALFORMED, "malformed signature line") from None
        if not space or len(blob) < 5 or base64.b64encode(blob).decode("ascii") != b64:
            raise CheckpointError(CheckpointReason.MALFORMED, "malformed signature line")
        signatures.append((name, blob))
    return text, signatures


def _index_keys(
    public_keys_by_name: Mapping[str, Ed25519PublicKey | Iterable[Ed25519PublicKey]],
) -> dict[tuple[str, bytes], Ed25519PublicKey]:
    known: dict[tuple[str, bytes], Ed25519PublicKey] = {}
    for name, keys in public_keys_by_name.items():
        for public in [keys] if isinstance(keys, Ed25519PublicKey) else keys:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            known[(name, key_id(name, raw))] = public
    return known


def _check_key_name(name: str, what: str) -> None:
    # signed-note: non-empty, no Unicode spaces, no plus; and, being part of a note, no control characters.
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string")
    if any(c.isspace() or c == "+" or ord(c) < 0x20 or c == "\x7f" for c in name):
        raise ValueError(f"{what} must not contain spaces, plus signs or control characters")


def _check_note_text(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("a note must be UTF-8") from None
    if any(b < 0x20 and b != 0x0A for b in data):
        raise ValueError("a note must not contain control characters other than newline")


# -- checkpoints ------------------------------------------------------------------------------------


def sign_checkpoint(cp: Checkpoint, signing_key: NoteKey, key_name: str) -> bytes:
    """The signed note of ``cp``: its body, a blank line and one Ed25519 signature line by ``key_name``."""
    return sign_note(cp.body(), signing_key, key_name)


def parse_checkpoint_body(text: bytes) -> Checkpoint:
    """Parse a checkpoint body (the note text), strictly. Unverified: use :func:`parse_and_verify` on notes.

    Raises:
        CheckpointError: MALFORMED.
    """
    try:
        lines = text.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise CheckpointError(CheckpointReason.MALFORMED, "checkpoint is not UTF-8") from None
    if len(lines) != 5 or lines[-1] != "":
        raise CheckpointError(
            CheckpointReason.MALFORMED, "checkpoint must be origin, size, root and one timestamp line"
        )
    origin, size, root_b64, extension = lines[:4]
    keyword, _, ts = extension.partition(" ")
    if not _DECIMAL.fullmatch(size) or keyword != TIMESTAMP_EXTENSION or not _DECIMAL.fullmatch(ts):
        raise CheckpointError(CheckpointReason.MALFORMED, "size or timestamp line malformed")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except binascii.Error:
        raise CheckpointError(CheckpointReason.MALFORMED, "root hash is not base64") from None
    if base64.b64encode(root).decode("ascii") != root_b64:
        raise CheckpointError(CheckpointReason.MALFORMED, "root hash is not canonical base64")
    try:
        return Checkpoint(origin=origin, size=int(size), root=root, timestamp_ms=int(ts))
    except ValueError as exc:
        raise CheckpointError(CheckpointReason.MALFORMED, str(exc)) from None


def parse_and_verify(
    note: bytes,
    public_keys_by_name: Mapping[str, Ed25519PublicKey | Iterable[Ed25519PublicKey]],
    *,
    origin: str | None = None,
) -> Checkpoint:
    """Verify a checkpoint note and return its checkpoint.

    Checks, in order: the note and body are well formed; the origin is ``origin`` (when given); a signature
    from a known key (name and key ID) is present and every such signature verifies.

    Args:
        note: the signed note.
        public_keys_by_name: trusted keys by key name; a name may have several keys (rotation).
        origin: the log the caller expects; None accepts any origin the keys sign.

    Raises:
        CheckpointError: MALFORMED, WRONG_ORIGIN, UNKNOWN_KEY or BAD_SIGNATURE.
    """
    text, _ = _split_note(note)
    cp = parse_checkpoint_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(CheckpointReason.WRONG_ORIGIN, f"checkpoint of {cp.origin!r}, not {origin!r}")
    open_note(note, public_keys_by_name)
    return cp


def read_note(note: bytes) -> SignedCheckpoint:
    """Parse a note this process stored itself, without verifying its signature (the signer's own state, a
    witness's record of what it verified earlier).

    Raises:
        CheckpointError: MALFORMED.
    """
    text, _ = _split_note(note)
    return SignedCheckpoint(parse_checkpoint_body(text), note)


# -- the signer -------------------------------------------------------------------------------------


OnCheckpoint = Callable[[SignedCheckpoint], Awaitable[None]]


class CheckpointSigner:
    """Signs checkpoints of one region's ledger, never two inconsistent ones.

    The last signed note is kept in ``state_path`` (a small JSON file, written atomically and fsynced *before*
    the new note is returned, so no signed checkpoint can be lost by a crash). A new checkpoint is signed only
    when the signer's tree — recomputed from the ledger's entries by :class:`~ledger.tree.LedgerTree` when the
    signer opens — is at least as large as the last one and proves consistency with it; otherwise
    :class:`CheckpointRefused`. Deleting the state file lifts that protection: keep it with the ledger.

    Checkpoints come on demand (:meth:`sign_now`, :meth:`checkpoint`) and, between :meth:`start` and
    :meth:`stop`, every ``interval_s``: a new one when the ledger grew, else the last one again, handed to
    ``on_checkpoint`` (which publishes it).

    Args:
        store: the region's ledger.
        key: the key to sign with, or a callable returning the key to use now (a region's current key during a
            rotation, e.g. ``lambda: secrets.signing``).
        state_path: where the last signed checkpoint is kept.
        origin: the log's origin; :func:`origin_of` the store's region by default. Also the key name.
        interval_s: period of scheduled checkpoints.
        on_checkpoint: called with each scheduled checkpoint.
        tree: the store's tree to use (shared with, e.g., the gateway's ledger service); a new one when None.
            It must cover this store from index 0.
        clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        key: NoteKey | Callable[[], NoteKey],
        state_path: str | os.PathLike[str],
        origin: str | None = None,
        interval_s: float = 60.0,
        on_checkpoint: OnCheckpoint | None = None,
        tree: LedgerTree | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.store = store
        self.origin = origin or origin_of(store.region)
        self.state_path = Path(state_path)
        self.interval_s = interval_s
        self.tree = LedgerTree() if tree is None else tree
        self._key = key
        self._on_checkpoint = on_checkpoint
        self._clock = clock
        self._lock = asyncio.Lock()
        self._last: SignedCheckpoint | None = None
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def last(self) -> SignedCheckpoint | None:
        """The last checkpoint signed (in this run or, from the state file, before)."""
        return self._last

    async def open(self) -> None:
        """Read the state file and build the tree from the ledger; idempotent.

        Raises:
            LedgerError: the state file is unreadable or belongs to another log.
        """
        async with self._lock:
            if self._opened:
                return
            self._last = self._load()
            await self.tree.sync(self.store)
            self._opened = True

    async def start(self) -> None:
        """Open, then sign and hand over a checkpoint now and every ``interval_s``; idempotent."""
        await self.open()
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.create_task(self._run(), name=f"checkpoints-{self.origin}")

    async def stop(self, timeout: float = 2.0) -> None:
        """End the schedule within ``timeout`` seconds; idempotent. Signing and persisting a checkpoint
        happen in one synchronous step, so a cancellation never separates a signature from its record.

        The schedule ends on its stop flag; the cancel only cuts its wait short. A cancel alone can be
        lost on Python 3.11 (``asyncio.wait_for``, which ``on_checkpoint``'s NATS flush uses, drops one
        that arrives with its result), and the loop would run on. It is repeated until the task ends,
        up to ``timeout``; a task still running then is left behind, and logged.
        """
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while not task.done() and loop.time() < until:
            task.cancel()
            await asyncio.wait({task}, timeout=min(0.2, max(0.0, until - loop.time())))
        if not task.done():
            log.error("checkpoint.schedule_not_stopped", origin=self.origin)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def checkpoint(self) -> SignedCheckpoint:
        """A checkpoint of the ledger as it is now: a new one if it grew since the last, else the last.

        Raises:
            CheckpointRefused: the ledger does not prove consistency with the last signed checkpoint.
        """
        await self.open()
        async with self._lock:
            size = await self._sync()
            last = self._last
            if (
                last is not None
                and last.checkpoint.size == size
                and self.tree.tree.root(size) == last.checkpoint.root
            ):
                return last
            return await self._sign()

    async def sign_now(self) -> SignedCheckpoint:
        """Sign a fresh checkpoint of the ledger as it is now (a new timestamp even if it did not grow).

        Raises:
            CheckpointRefused: the ledger does not prove consistency with the last signed checkpoint.
        """
        await self.open()
        async with self._lock:
            await self.tree.sync(self.store)
            return await self._sign()

    async def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """The consistency proof between two sizes of this ledger (what a witness asks for).

        Raises:
            ValueError: not ``0 < old_size <= new_size <= size of the ledger``.
        """
        await self.open()
        async with self._lock:
            size = self.tree.tree.size
            if new_size > size:
                size = await self._sync()
            if not 0 < old_size <= new_size <= size:
                raise ValueError(f"cannot prove {old_size} -> {new_size} in a tree of size {size}")
            return self.tree.tree.consistency_proof(old_size, new_size)

    async def _sync(self) -> int:
        await self.tree.sync(self.store)
        return self.tree.tree.size

    async def _sign(self) -> SignedCheckpoint:
        """Sign under the lock that every signer of this log shares: the store's own (PostgreSQL:
        all replicas of the region, on any host), else the state file's (processes of one host)."""
        shared = getattr(self.store, "checkpoint_state", None)
        if shared is None:
            return self._sign_locked()
        async with shared() as (note, save):
            if note is not None:
                stored = read_note(note)
                if stored.checkpoint.origin != self.origin:
                    raise LedgerError(f"the store's last checkpoint belongs to {stored.checkpoint.origin!r}")
                self._last = stored
            signed = self._sign_with_lock_held()
            await save(signed.note)
            return signed

    def _sign_locked(self) -> SignedCheckpoint:
        # Other processes of the region (another gateway on this host, `tongban ledger export`)
        # sign with the same state file: under a file lock, the last checkpoint signed by anyone is
        # the one to be consistent with.
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.state_path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._last = self._load() or self._last
            return self._sign_with_lock_held()

    def _sign_with_lock_held(self) -> SignedCheckpoint:
        size = self.tree.tree.size
        root = self.tree.tree.root(size)
        now_ms = int(self._clock() * 1000)
        last = self._last
        if last is not None:
            self._check_consistent(last.checkpoint, size, root)
            # Never go back in time within one log, even if the clock does.
            now_ms = max(now_ms, last.checkpoint.timestamp_ms)
        cp = Checkpoint(origin=self.origin, size=size, root=root, timestamp_ms=now_ms)
        key = self._key() if callable(self._key) else self._key
        signed = SignedCheckpoint(cp, sign_checkpoint(cp, key, self.origin))
        self._save(signed)
        self._last = signed
        log.info("checkpoint.signed", origin=self.origin, size=size, root=base64.b64encode(root).decode())
        return signed

    def _check_consistent(self, last: Checkpoint, size: int, root: bytes) -> None:
        if size < last.size:
            raise CheckpointRefused(last_size=last.size, size=size, reason="the ledger shrank")
        if last.size == 0:
            if last.root != EMPTY_ROOT:
                raise CheckpointRefused(last_size=0, size=size, reason="last checkpoint has a bad empty root")
            return
        try:
            proof = [] if size == last.size else self.tree.tree.consistency_proof(last.size, size)
            verify_consistency(last.size, size, last.root, root, proof)
        except ProofError:
            raise CheckpointRefused(
                last_size=last.size, size=size, reason="the ledger is not consistent with the last checkpoint"
            ) from None

    def _load(self) -> SignedCheckpoint | None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            signed = read_note(doc["note"].encode("utf-8"))
        except (ValueError, KeyError, TypeError, AttributeError, CheckpointError) as exc:
            raise LedgerError(f"checkpoint state {self.state_path} is unreadable: {exc}") from None
        if signed.checkpoint.origin != self.origin:
            raise LedgerError(f"checkpoint state {self.state_path} belongs to {signed.checkpoint.origin!r}")
        return signed

    def _save(self, signed: SignedCheckpoint) -> None:
        write_atomically(
            self.state_path, json.dumps({"v": 1, "note": signed.note.decode("utf-8")}).encode(), mode=0o600
        )

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                signed = await self.checkpoint()
                if self._on_checkpoint is not None:
                    await self._on_checkpoint(signed)
            except CheckpointRefused as exc:
                log.error(
                    "checkpoint.refused",
                    origin=self.origin,
                    last_size=exc.last_size,
                    size=exc.size,
                    reason=exc.reason,
                )
            except asyncio.CancelledError:
                raise
            except LedgerError as exc:
                # E.g. the store now holds fewer entries than the tree: it was truncated or replaced.
                log.error(
                    "checkpoint.failed", origin=self.origin, error=type(exc).__name__, detail=str(exc)[:200]
                )
            except Exception as exc:
                log.warning(
                    "checkpoint.failed", origin=self.origin, error=type(exc).__name__, detail=str(exc)[:200]
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stopping.wait()
