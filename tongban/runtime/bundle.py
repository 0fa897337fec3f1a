"""Evidence bundles: a self-contained, offline-checkable extract of a region's ledger.

A bundle (JSON) holds a signed checkpoint of the region's log, the entries asked for (their fields
and canonical bytes) each with an inclusion proof against the checkpoint's root, the region's public
signing keys, the root-signed trust registry that lists them, and optionally receipts the region
signed. :func:`check_bundle` verifies all of it with nothing but the bundle (and, to anchor trust,
the registry authority's public key):

1. the registry's root signature (against the pinned root key, when given);
2. that the bundle's keys are the region's signing keys in that registry;
3. the checkpoint's signature by one of those keys, and its origin;
4. every entry: fields → canonical bytes → leaf hash → inclusion proof → the checkpoint's root;
5. every receipt: the region's signature, and that it names an included entry with the same digest.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.checkpoint import CheckpointError, origin_of, parse_and_verify
from ledger.entry import Entry, Event, canonical_bytes
from ledger.errors import LedgerError
from ledger.merkle import MerkleTree, ProofError, leaf_hash, verify_inclusion
from tongban.core.envelope import EnvelopeRejected
from tongban.core.errors import Reason, RegistryError
from tongban.core.receipts import verify_receipt
from tongban.core.registry import Registry
from tongban.v1 import registry_pb2

FORMAT = "tongban-ledger-bundle/1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise LedgerError(f"bundle: {what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise LedgerError(f"bundle: {what} is not base64") from exc


def entry_json(e: Entry, proof: Sequence[bytes]) -> dict[str, Any]:
    """An entry's fields, canonical bytes and inclusion proof, as JSON values."""
    return {
        "index": e.index,
        "time_ns": e.time_ns,
        "region": e.region,
        "event": str(e.event),
        "message_id": e.message_id,
        "peer_region": e.peer_region,
        "service_code": e.service_code,
        "envelope_digest": _b64(e.envelope_digest),
        "trace_id": e.trace_id,
        "detail": e.detail,
        "entry_bytes": _b64(canonical_bytes(e)),
        "inclusion_proof": [_b64(h) for h in proof],
    }


def make_bundle(
    *,
    region: str,
    entries: Iterable[Entry],
    tree: MerkleTree,
    checkpoint_note: bytes,
    checkpoint_size: int,
    public_keys: dict[str, bytes],
    signed_registry: bytes,
    receipts: Iterable[bytes] = (),
) -> dict[str, Any]:
    """The bundle for ``entries`` proven against the checkpoint of ``checkpoint_size``.

    Args:
        public_keys: the region's signing keys, key id → raw Ed25519 public key.
    """
    return {
        "format": FORMAT,
        "region": region,
        "origin": origin_of(region),
        "checkpoint": checkpoint_note.decode("utf-8"),
        "public_keys": {kid: _b64(raw) for kid, raw in sorted(public_keys.items())},
        "registry": _b64(signed_registry),
        "entries": [entry_json(e, tree.inclusion_proof(e.index, checkpoint_size)) for e in entries],
        "receipts": [_b64(r) for r in receipts],
    }


def proven_entry(raw: Any, *, region: str, size: int, root: bytes) -> Entry:
    """The entry ``raw`` (:func:`entry_json`) after checking that it is ``region``'s, that its fields
    give its canonical bytes, and that its inclusion proof leads to ``root`` at ``size``.

    Raises:
        LedgerError: naming the entry and what failed.
    """
    try:
        e = Entry(
            index=int(raw["index"]),
            time_ns=int(raw["time_ns"]),
            region=str(raw["region"]),
            event=Event(raw["event"]),
            message_id=str(raw["message_id"]),
            peer_region=str(raw["peer_region"]),
            service_code=str(raw["service_code"]),
            envelope_digest=_unb64(raw["envelope_digest"], "envelope digest"),
            trace_id=str(raw["trace_id"]),
            detail=str(raw["detail"]),
            prev_hash=b"",
            entry_hash=b"",
        )
        entry_bytes = _unb64(raw["entry_bytes"], "entry bytes")
        proof = [_unb64(h, "proof hash") for h in raw["inclusion_proof"]]
    except (KeyError, TypeError, ValueError, AttributeError, LedgerError) as exc:
        index = raw.get("index", "?") if isinstance(raw, dict) else "?"
        raise LedgerError(f"entry {index!s}: does not parse ({exc})") from None
    if e.region != region:
        raise LedgerError(f"entry {e.index}: belongs to region {e.region}, not {region}")
    if canonical_bytes(e) != entry_bytes:
        raise LedgerError(f"entry {e.index}: its fields do not give its entry bytes")
    try:
        verify_inclusion(leaf_hash(entry_bytes), e.index, size, proof, root)
    except (ProofError, ValueError, IndexError) as exc:
        raise LedgerError(f"entry {e.index}: inclusion proof fails ({exc})") from None
    return e


@dataclass
class BundleReport:
    """What :func:`check_bundle` verified; ``problems`` is empty when everything did."""

    region: str = ""
    tree_size: int = 0
    root: bytes = b""
    entries: int = 0
    receipts: list[tuple[int, str]] = field(default_factory=list)
    root_key_pinned: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_bundle(data: bytes, *, root_keys: Sequence[Ed25519PublicKey] = ()) -> BundleReport:
    """Verify a bundle offline (see the module docstring). Never raises for a bad bundle: every
    failure is a line in ``problems``, naming the entry index or receipt."""
    report = BundleReport()
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise LedgerError(f"not a {FORMAT} bundle")
        region = str(doc["region"])
        report.region = region
        signed_registry = _unb64(doc["registry"], "registry")
        keys = {str(k): _unb64(v, f"public key {k}") for k, v in dict(doc["public_keys"]).items()}
    except (ValueError, KeyError, TypeError, LedgerError) as exc:
        report.problems.append(f"bundle does not parse: {exc}")
        return report

    # 1–2. The keys are the region's, per a registry signed by the authority.
    try:
        if root_keys:
            registry = Registry.from_signed(signed_registry, root_keys)
            report.root_key_pinned = True
        else:
            registry = Registry.read_unverified(signed_registry)
    except (RegistryError, ValueError) as exc:
        report.problems.append(f"trust registry: {exc}")
        return report
    publics: dict[str, Ed25519PublicKey] = {}
    for kid, raw in keys.items():
        info = registry.keys.get(kid)
        if (
            info is None
            or info.region != region
            or info.public_raw != raw
            or info.use != registry_pb2.KEY_USE_SIGNING
        ):
            report.problems.append(f"key {kid} is not a signing key of {region} in the registry")
            continue
        if info.revoked:
            report.problems.append(f"key {kid} of {region} is revoked in the registry")
            continue
        publics[kid] = Ed25519PublicKey.from_public_bytes(raw)

    # 3. The checkpoint.
    origin = origin_of(region)
    try:
        cp = parse_and_verify(
            str(doc["checkpoint"]).encode("utf-8"), {origin: list(publics.values())}, origin=origin
        )
    except (CheckpointError, KeyError) as exc:
        report.problems.append(f"checkpoint: {exc}")
        return report
    report.tree_size, report.root = cp.size, cp.root
    entries_json, receipts_json = doc.get("entries", []), doc.get("receipts", [])
    if not isinstance(entries_json, list) or not isinstance(receipts_json, list):
        report.problems.append("bundle: entries and receipts must be lists")
        return report

    # 4. Entries.
    digests: dict[int, tuple[bytes, str, Event]] = {}
    for raw_entry in entries_json:
        try:
            e = proven_entry(raw_entry, region=region, size=cp.size, root=cp.root)
        except LedgerError as exc:
            report.problems.append(str(exc))
            continue
        digests[e.index] = (e.envelope_digest, e.message_id, e.event)
        report.entries += 1

    # 5. Receipts.
    def key_of(kid: str, r: str, _at: float) -> Ed25519PublicKey:
        if r != region or kid not in publics:
            raise EnvelopeRejected(
                f"receipt key {kid} of {r} is not in the bundle", reason=Reason.RECEIPT_INVALID
            )
        return publics[kid]

    for i, text in enumerate(receipts_json):
        try:
            receipt = verify_receipt(_unb64(text, "receipt"), key_of)
        except Exception as exc:  # EnvelopeRejected, LedgerError: reported, never raised
            report.problems.append(f"receipt {i}: {exc}")
            continue
        recorded = digests.get(receipt.leaf_index)
        if recorded is None:
            report.problems.append(
                f"receipt {i}: leaf {receipt.leaf_index} is not a verified entry of the bundle"
            )
        elif recorded != (receipt.envelope_digest, receipt.message_id, Event.RECEIVED):
            report.problems.append(
                f"receipt {i}: entry {receipt.leaf_index} is not the RECEIVED entry it names"
            )
        else:
            report.receipts.append((receipt.leaf_index, receipt.message_id))
    return report
