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

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import CheckpointError, CheckpointReason
from ledger.note import MAX_NOTE_BYTES, NoteKey, check_key_name, open_note, sign_note, split_note

__all__ = [
    "MAX_NOTE_BYTES",
    "Checkpoint",
    "CheckpointError",
    "CheckpointReason",
    "SignedCheckpoint",
    "origin_of",
    "parse_and_verify",
    "parse_checkpoint_body",
    "read_note",
    "region_of_origin",
    "sign_checkpoint",
]

ORIGIN_PREFIX: Final = "tongban.example/ledger/"
"""Origins are ``<ORIGIN_PREFIX><region code>``: schema-less URLs, as tlog-checkpoint recommends."""

TIMESTAMP_EXTENSION: Final = "timestamp_ms"
"""Keyword of the one extension line: ``timestamp_ms <Unix milliseconds>``."""

HASH_SIZE: Final = 32
_MAX_SIZE: Final = 2**63 - 1
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_REGION = re.compile(r"[0-9]{6}")


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
        check_key_name(self.origin, "origin")
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
        raise CheckpointError("checkpoint is not UTF-8", reason=CheckpointReason.MALFORMED) from None
    if len(lines) != 5 or lines[-1] != "":
        raise CheckpointError(
            "checkpoint must be origin, size, root and one timestamp line", reason=CheckpointReason.MALFORMED
        )
    origin, size, root_b64, extension = lines[:4]
    keyword, _, ts = extension.partition(" ")
    if not _DECIMAL.fullmatch(size) or keyword != TIMESTAMP_EXTENSION or not _DECIMAL.fullmatch(ts):
        raise CheckpointError("size or timestamp line malformed", reason=CheckpointReason.MALFORMED)
    try:
        root = base64.b64decode(root_b64, validate=True)
    except binascii.Error:
        raise CheckpointError("root hash is not base64", reason=CheckpointReason.MALFORMED) from None
    if base64.b64encode(root).decode("ascii") != root_b64:
        raise CheckpointError("root hash is not canonical base64", reason=CheckpointReason.MALFORMED)
    try:
        return Checkpoint(origin=origin, size=int(size), root=root, timestamp_ms=int(ts))
    except ValueError as exc:
        raise CheckpointError(str(exc), reason=CheckpointReason.MALFORMED) from None


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
    text, _ = split_note(note)
    cp = parse_checkpoint_body(text)
    if origin is not None and cp.origin != origin:
        raise CheckpointError(
            f"checkpoint of {cp.origin!r}, not {origin!r}", reason=CheckpointReason.WRONG_ORIGIN
        )
    open_note(note, public_keys_by_name)
    return cp


def read_note(note: bytes) -> SignedCheckpoint:
    """Parse a note this process stored itself, without verifying its signature (the signer's own state, a
    witness's record of what it verified earlier).

    Raises:
        CheckpointError: MALFORMED.
    """
    text, _ = split_note(note)
    return SignedCheckpoint(parse_checkpoint_body(text), note)
