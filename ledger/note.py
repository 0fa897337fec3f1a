"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 signatures: the text, a blank line,
and signature lines ``— <key name> <base64(key ID || signature)>``, where
``key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]`` (signature type 0x01 =
Ed25519). ``ledger.checkpoint`` puts checkpoint bodies in them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.errors import CheckpointError, CheckpointReason

ED25519_TYPE: Final = b"\x01"
"""signed-note signature type identifier of Ed25519."""

SIGNATURE_PREFIX: Final = "— "
"""Em dash (U+2014) and a space: the start of every signature line."""

MAX_NOTE_BYTES: Final = 8192
"""A checkpoint note is a few hundred bytes; anything larger is refused before it is parsed."""

MAX_SIGNATURES: Final = 32
"""signed-note: verifiers must accept at least 16 signatures per note."""

_ED25519_SIG_SIZE: Final = 64


class NoteKey(Protocol):
    """What signing needs of a key: ``tongban.core.keys.SigningKey`` is one."""

    @property
    def public_raw(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def note_key_id(key_name: str, public_raw: bytes) -> bytes:
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
    check_key_name(key_name, "key name")
    _check_note_text(text)
    if not text.endswith(b"\n") or b"\n\n" in text or text.startswith(b"\n"):
        raise ValueError("note text must be non-empty lines, each ending in a newline")
    blob = note_key_id(key_name, key.public_raw) + key.sign(text)
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
    text, signatures = split_note(note)
    known = _index_keys(public_keys_by_name)
    verified = False
    for name, blob in signatures:
        public = known.get((name, blob[:4]))
        if public is None:
            continue
        if len(blob) != 4 + _ED25519_SIG_SIZE:
            raise CheckpointError(
                f"signature of {name} has the wrong length", reason=CheckpointReason.BAD_SIGNATURE
            )
        try:
            public.verify(blob[4:], text)
        except InvalidSignature:
            raise CheckpointError(
                f"signature of {name} does not verify", reason=CheckpointReason.BAD_SIGNATURE
            ) from None
        verified = True
    if not verified:
        raise CheckpointError("no signature from a known key", reason=CheckpointReason.UNKNOWN_KEY)
    return text


def split_note(note: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    if not isinstance(note, bytes):
        raise CheckpointError("a note is bytes", reason=CheckpointReason.MALFORMED)
    if len(note) > MAX_NOTE_BYTES:
        raise CheckpointError(f"note longer than {MAX_NOTE_BYTES} bytes", reason=CheckpointReason.MALFORMED)
    try:
        _check_note_text(note)
    except ValueError as exc:
        raise CheckpointError(str(exc), reason=CheckpointReason.MALFORMED) from None
    split = note.rfind(b"\n\n")
    if split < 0 or not note.endswith(b"\n"):
        raise CheckpointError("no blank line before the signatures", reason=CheckpointReason.MALFORMED)
    text, sig_block = note[: split + 1], note[split + 2 :]
    lines = sig_block.decode("utf-8").split("\n")[:-1]
    if not lines:
        raise CheckpointError("no signature lines", reason=CheckpointReason.MALFORMED)
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"more than {MAX_SIGNATURES} signatures", reason=CheckpointReason.MALFORMED)
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(
                "signature line does not start with an em dash", reason=CheckpointReason.MALFORMED
            )
        name, space, b64 = line[len(SIGNATURE_PREFIX) :].partition(" ")
        try:
            check_key_name(name, "key name")
            blob = base64.b64decode(b64, validate=True)
        except (ValueError, binascii.Error):
            raise CheckpointError("malformed signature line", reason=CheckpointReason.MALFORMED) from None
        if not space or len(blob) < 5 or base64.b64encode(blob).decode("ascii") != b64:
            raise CheckpointError("malformed signature line", reason=CheckpointReason.MALFORMED)
        signatures.append((name, blob))
    return text, signatures


def _index_keys(
    public_keys_by_name: Mapping[str, Ed25519PublicKey | Iterable[Ed25519PublicKey]],
) -> dict[tuple[str, bytes], Ed25519PublicKey]:
    known: dict[tuple[str, bytes], Ed25519PublicKey] = {}
    for name, keys in public_keys_by_name.items():
        for public in [keys] if isinstance(keys, Ed25519PublicKey) else keys:
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            known[(name, note_key_id(name, raw))] = public
    return known


def check_key_name(name: str, what: str) -> None:
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
