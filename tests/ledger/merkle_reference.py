"""RFC 9162 §2.1 written as literally as Python allows (MTH, PATH and SUBPROOF as recursive functions
over lists): slow and obviously right; ``ledger.merkle`` must agree with it on every tree
(tests/ledger/test_merkle.py). ``python -m tests.ledger.merkle_reference`` writes
``tests/vectors/merkle/reference_tree_proofs.json``: every proof of the RFC 6962 test tree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "merkle"
PUBLISHED = json.loads((VECTORS / "reference_tree.json").read_text())
COMPUTED_FILE = VECTORS / "reference_tree_proofs.json"
LEAF_INPUTS = [bytes.fromhex(x) for x in PUBLISHED["leaf_inputs"]]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_below(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf inputs ``d``."""
    if len(d) == 0:
        return sha256(b"")
    if len(d) == 1:
        return sha256(b"\x00" + d[0])
    k = largest_power_below(len(d))
    return sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = largest_power_below(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = largest_power_below(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]); empty for m == 0 (every tree extends the empty one)."""
    return [] if m == 0 else ref_subproof(m, d, True)


def computed_vectors() -> dict[str, Any]:
    """Every inclusion and consistency proof of the reference tree, by the reference implementation."""
    d = LEAF_INPUTS
    return {
        "description": (
            "Every inclusion proof (0 <= index < size <= 8) and consistency proof (0 <= old_size <= new_size"
            " <= 8) of the RFC 6962 test tree of reference_tree.json, computed by the reference"
            " implementation in tests/ledger/merkle_reference.py (RFC 9162 2.1 MTH/PATH/SUBPROOF, recursive)."
        ),
        "generated_by": "python -m tests.ledger.merkle_reference",
        "leaf_inputs": [x.hex() for x in d],
        "inclusion": [
            {"index": i, "size": n, "proof": [h.hex() for h in ref_path(i, d[:n])]}
            for n in range(1, len(d) + 1)
            for i in range(n)
        ],
        "consistency": [
            {"old_size": m, "new_size": n, "proof": [h.hex() for h in ref_proof(m, d[:n])]}
            for n in range(len(d) + 1)
            for m in range(n + 1)
        ],
    }


if __name__ == "__main__":
    COMPUTED_FILE.write_text(json.dumps(computed_vectors(), indent=2) + "\n")
