"""The ledger's Merkle tree: published vectors, an independent reference implementation, and every bad proof.

The reference implementation below is RFC 9162 §2.1 written as literally as Python allows (MTH, PATH and
SUBPROOF as recursive functions over lists); it is slow and obviously right, and ``ledger.merkle`` must agree
with it on every tree it is given. ``tests/vectors/merkle/reference_tree.json`` holds the values published by
transparency-dev/merkle for the RFC 6962 test tree; ``reference_tree_proofs.json`` holds every proof of that
tree as the reference implementation computes it
(regenerate with ``python -m tests.ledger.merkle_reference``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import LedgerError, SQLiteLedger
from ledger.entry import canonical_bytes
from ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)
from ledger.tree import LedgerTree, leaf_hash_of

from .helpers import REGION, make_draft
from .merkle_reference import (
    COMPUTED_FILE,
    LEAF_INPUTS,
    PUBLISHED,
    computed_vectors,
    ref_mth,
    ref_path,
    ref_proof,
    sha256,
)

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# Loaded leniently so that ``python -m tests.ledger.merkle_reference`` can write the file when it is
# missing; the test below then fails until it exists and matches.
COMPUTED: dict[str, Any] = (
    json.loads(COMPUTED_FILE.read_text()) if COMPUTED_FILE.exists() else {"inclusion": [], "consistency": []}
)


def _hashes(hexes: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


def _tree(inputs: Sequence[bytes]) -> MerkleTree:
    return MerkleTree(leaf_hash(x) for x in inputs)


# --- the published vectors ----------------------------------------------------------------------------------


def test_hashing_primitives() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"") == bytes.fromhex(PUBLISHED["leaf_hashes"][0])
    assert node_hash(b"a" * 32, b"b" * 32) == sha256(b"\x01" + b"a" * 32 + b"b" * 32)


def test_leaf_hashes_match_published() -> None:
    assert [leaf_hash(x).hex() for x in LEAF_INPUTS] == PUBLISHED["leaf_hashes"]


@pytest.mark.parametrize("vector", PUBLISHED["roots"], ids=lambda v: f"size{v['size']}")
def test_roots_match_published(vector: dict[str, Any]) -> None:
    size, root = vector["size"], bytes.fromhex(vector["root"])
    assert root_from_leaves([leaf_hash(x) for x in LEAF_INPUTS[:size]]) == root
    assert _tree(LEAF_INPUTS[:size]).root() == root
    assert _tree(LEAF_INPUTS).root(size) == root  # a historical size of the full tree
    assert ref_mth(LEAF_INPUTS[:size]) == root


@pytest.mark.parametrize("vector", PUBLISHED["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_inclusion_matches_published(vector: dict[str, Any]) -> None:
    index, size, proof = vector["index"], vector["size"], _hashes(vector["proof"])
    assert _tree(LEAF_INPUTS).inclusion_proof(index, size) == proof
    assert ref_path(index, LEAF_INPUTS[:size]) == proof
    verify_inclusion(leaf_hash(LEAF_INPUTS[index]), index, size, proof, ref_mth(LEAF_INPUTS[:size]))


@pytest.mark.parametrize("vector", PUBLISHED["inclusion_invalid"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_published_invalid_inclusion_refused(vector: dict[str, Any]) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(
            leaf_hash(b""), vector["index"], vector["size"], _hashes(vector["proof"]), EMPTY_ROOT
        )


@pytest.mark.parametrize(
    "vector", PUBLISHED["consistency"], ids=lambda v: f"{v['old_size']}to{v['new_size']}"
)
def test_consistency_matches_published(vector: dict[str, Any]) -> None:
    m, n, proof = vector["old_size"], vector["new_size"], _hashes(vector["proof"])
    assert _tree(LEAF_INPUTS).consistency_proof(m, n) == proof
    assert ref_proof(m, LEAF_INPUTS[:n]) == proof
    verify_consistency(m, n, ref_mth(LEAF_INPUTS[:m]), ref_mth(LEAF_INPUTS[:n]), proof)


def test_computed_vectors_file_is_what_the_reference_computes() -> None:
    assert computed_vectors() == json.loads(COMPUTED_FILE.read_text())


@pytest.mark.parametrize("vector", COMPUTED["inclusion"], ids=lambda v: f"{v['index']}of{v['size']}")
def test_inclusion_matches_reference_vectors(vector: dict[str, Any]) -> None:
    index, size, proof = vector["index"], vector["size"], _hashes(vector["proof"])
    tree = _tree(LEAF_INPUTS)
    assert tree.inclusion_proof(index, size) == proof
    verify_inclusion(tree.leaf(index), index, size, proof, tree.root(size))


@pytest.mark.parametrize("vector", COMPUTED["consistency"], ids=lambda v: f"{v['old_size']}to{v['new_size']}")
def test_consistency_matches_reference_vectors(vector: dict[str, Any]) -> None:
    m, n, proof = vector["old_size"], vector["new_size"], _hashes(vector["proof"])
    tree = _tree(LEAF_INPUTS)
    assert tree.consistency_proof(m, n) == proof
    if m == 0 and n > 0:
        # The reference computes PROOF(0, n) as empty, but RFC 9162 defines none: nothing to verify.
        with pytest.raises(ProofError, match="from the empty tree proves nothing"):
            verify_consistency(m, n, tree.root(m), tree.root(n), proof)
        return
    verify_consistency(m, n, tree.root(m), tree.root(n), proof)


# --- every wrong proof is refused ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InclusionProbe:
    leaf: bytes
    index: int
    size: int
    proof: list[bytes]
    root: bytes


@dataclass(frozen=True)
class ConsistencyProbe:
    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: list[bytes]


def _flip(h: bytes, bit: int = 3) -> bytes:
    return bytes([h[0] ^ (1 << bit)]) + h[1:]


def _inclusion_mutations(p: InclusionProbe) -> Iterator[tuple[str, InclusionProbe]]:
    def w(**kw: Any) -> InclusionProbe:
        return InclusionProbe(**{**p.__dict__, **kw})

    proof = p.proof
    yield "index - 1", w(index=p.index - 1)
    yield "index + 1", w(index=p.index + 1)
    yield "index ^ 2", w(index=p.index ^ 2)
    yield "index = size", w(index=p.size)
    # Not size + 1 or size - 1: where the audit path has the same shape in both trees (leaf 0 of 3 and of 4),
    # the proof is the same computation and cannot tell them apart. A proof binds the size through its
    # shape only; the signed checkpoint binds size and root together.
    yield "size * 2", w(size=p.size * 2)
    yield "size // 2", w(size=p.size // 2)
    yield "size 0", w(size=0)
    yield "wrong leaf", w(leaf=leaf_hash(b"wrong leaf"))
    yield "leaf data not hash", w(leaf=b"WrongLeaf")
    yield "leaf 31 bytes", w(leaf=p.leaf[:31])
    yield "leaf 33 bytes", w(leaf=p.leaf + b"\x00")
    yield "empty root", w(root=EMPTY_ROOT)
    yield "random root", w(root=SOME_HASH)
    yield "flipped root", w(root=_flip(p.root))
    yield "root 31 bytes", w(root=p.root[:31])
    yield "trailing garbage", w(proof=[*proof, b""])
    yield "trailing root", w(proof=[*proof, p.root])
    yield "preceding garbage", w(proof=[b"", *proof])
    yield "preceding root", w(proof=[p.root, *proof])
    for i in range(len(proof)):
        yield f"flipped bit in proof[{i}]", w(proof=[*proof[:i], _flip(proof[i]), *proof[i + 1 :]])
        yield f"proof[{i}] truncated to 31 bytes", w(proof=[*proof[:i], proof[i][:31], *proof[i + 1 :]])
        yield f"proof[{i}] as hex text", w(proof=[*proof[:i], proof[i].hex(), *proof[i + 1 :]])  # type: ignore[list-item]
        yield f"removed proof[{i}]", w(proof=[*proof[:i], *proof[i + 1 :]])
    if proof:
        yield "inserted hash", w(proof=[proof[0], SOME_HASH, *proof[1:]])
        yield "duplicated last", w(proof=[*proof, proof[-1]])
    if len(proof) > 1:
        yield "reversed", w(proof=proof[::-1])
        yield "swapped first two", w(proof=[proof[1], proof[0], *proof[2:]])


def _consistency_mutations(p: ConsistencyProbe) -> Iterator[tuple[str, ConsistencyProbe]]:
    def w(**kw: Any) -> ConsistencyProbe:
        return ConsistencyProbe(**{**p.__dict__, **kw})

    proof = p.proof
    yield "old_size - 1", w(old_size=p.old_size - 1)
    yield "old_size + 1", w(old_size=p.old_size + 1)
    yield "old_size ^ 2", w(old_size=p.old_size ^ 2)
    # Not new_size +/- 1, for the reason given for inclusion proofs above (4 -> 5 and 4 -> 6 have the same
    # shape).
    yield "new_size * 2", w(new_size=p.new_size * 2)
    yield "new_size // 2", w(new_size=p.new_size // 2)
    yield "sizes swapped", w(old_size=p.new_size, new_size=p.old_size)
    yield "wrong old root", w(old_root=SOME_HASH)
    yield "wrong new root", w(new_root=SOME_HASH)
    yield "flipped old root", w(old_root=_flip(p.old_root, 4))
    yield "flipped new root", w(new_root=_flip(p.new_root, 4))
    yield "old root not a hash", w(old_root=b"WrongRoot")
    yield "new root 33 bytes", w(new_root=p.new_root + b"\x00")
    yield "roots swapped", w(old_root=p.new_root, new_root=p.old_root)
    yield "empty proof", w(proof=[])
    yield "trailing garbage", w(proof=[*proof, b""])
    yield "trailing old root", w(proof=[*proof, p.old_root])
    yield "trailing new root", w(proof=[*proof, p.new_root])
    yield "preceding garbage", w(proof=[b"", *proof])
    yield "preceding old root", w(proof=[p.old_root, *proof])
    yield "preceding new root", w(proof=[p.new_root, *proof])
    if proof:
        yield "preceding proof[0]", w(proof=[proof[0], *proof])
        yield "truncated", w(proof=proof[:-1])
        yield "first removed", w(proof=proof[1:])
    for i in range(len(proof)):
        yield f"flipped bit in proof[{i}]", w(proof=[*proof[:i], _flip(proof[i], 4), *proof[i + 1 :]])
        yield f"proof[{i}] truncated to 31 bytes", w(proof=[*proof[:i], proof[i][:31], *proof[i + 1 :]])
    if len(proof) > 1:
        yield "reversed", w(proof=proof[::-1])
        yield "swapped first two", w(proof=[proof[1], proof[0], *proof[2:]])


def _inclusion_is_true(p: InclusionProbe, leaves: Sequence[bytes]) -> bool:
    """Oracle: does the probe state a true fact about the tree of ``leaves`` (by the reference)?"""
    if not 0 <= p.index < p.size <= len(leaves):
        return False
    return (
        p.leaf == sha256(b"\x00" + leaves[p.index])
        and p.root == ref_mth(leaves[: p.size])
        and p.proof == ref_path(p.index, leaves[: p.size])
    )


def _consistency_is_true(p: ConsistencyProbe, leaves: Sequence[bytes]) -> bool:
    if not 0 <= p.old_size <= p.new_size:
        return False
    if p.old_size == 0 and p.new_size > 0:
        # Every tree extends the empty one: nothing about the new tree is claimed, or can be refused.
        return p.old_root == EMPTY_ROOT and p.proof == []
    if p.new_size > len(leaves):
        return False
    return (
        p.old_root == ref_mth(leaves[: p.old_size])
        and p.new_root == ref_mth(leaves[: p.new_size])
        and p.proof == ref_proof(p.old_size, leaves[: p.new_size])
    )


def _inclusion_cases() -> Iterator[Any]:
    tree = _tree(LEAF_INPUTS)
    for v in COMPUTED["inclusion"]:
        index, size = v["index"], v["size"]
        good = InclusionProbe(tree.leaf(index), index, size, _hashes(v["proof"]), tree.root(size))
        for name, probe in _inclusion_mutations(good):
            if not _inclusion_is_true(probe, LEAF_INPUTS):
                yield pytest.param(probe, id=f"{index}of{size}: {name}")


def _consistency_cases() -> Iterator[Any]:
    tree = _tree(LEAF_INPUTS)
    for v in COMPUTED["consistency"]:
        m, n = v["old_size"], v["new_size"]
        good = ConsistencyProbe(m, n, tree.root(m), tree.root(n), _hashes(v["proof"]))
        for name, probe in _consistency_mutations(good):
            if not _consistency_is_true(probe, LEAF_INPUTS):
                yield pytest.param(probe, id=f"{m}to{n}: {name}")


@pytest.mark.parametrize("probe", list(_inclusion_cases()))
def test_wrong_inclusion_proof_refused(probe: InclusionProbe) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(probe.leaf, probe.index, probe.size, probe.proof, probe.root)


@pytest.mark.parametrize("probe", list(_consistency_cases()))
def test_wrong_consistency_proof_refused(probe: ConsistencyProbe) -> None:
    with pytest.raises(ProofError):
        verify_consistency(probe.old_size, probe.new_size, probe.old_root, probe.new_root, probe.proof)


@pytest.mark.parametrize(
    ("index", "size", "message"),
    [
        (0, 0, "not in a tree of 0 leaves"),
        (1, 1, "not in a tree of 1 leaves"),
        (8, 8, "not in a tree of 8 leaves"),
        (-1, 8, "must not be negative"),
    ],
)
def test_inclusion_index_outside_tree_refused(index: int, size: int, message: str) -> None:
    with pytest.raises(ProofError, match=message):
        verify_inclusion(leaf_hash(b""), index, size, [], EMPTY_ROOT)


def test_inclusion_errors_say_what_is_wrong() -> None:
    tree = _tree(LEAF_INPUTS)
    leaf, proof, root = tree.leaf(5), tree.inclusion_proof(5), tree.root()
    with pytest.raises(ProofError, match="has 2 hashes, expected 3"):
        verify_inclusion(leaf, 5, 8, proof[:2], root)
    with pytest.raises(ProofError, match="has 4 hashes, expected 3"):
        verify_inclusion(leaf, 5, 8, [*proof, root], root)
    with pytest.raises(ProofError, match="inclusion proof hash 1 must be 32 bytes, got 31"):
        verify_inclusion(leaf, 5, 8, [proof[0], proof[1][:31], proof[2]], root)
    with pytest.raises(ProofError, match="leaf hash must be 32 bytes"):
        verify_inclusion(b"", 5, 8, proof, root)
    with pytest.raises(ProofError, match="root must be bytes, not str"):
        verify_inclusion(leaf, 5, 8, proof, root.hex())  # type: ignore[arg-type]
    with pytest.raises(ProofError, match="does not verify"):
        verify_inclusion(tree.leaf(4), 5, 8, proof, root)


def test_single_leaf_tree_inclusion() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)  # the root of a one-leaf tree is its leaf hash
    with pytest.raises(ProofError):
        verify_inclusion(h, 0, 1, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        verify_inclusion(h, 0, 1, [h], h)


def test_consistency_edge_cases() -> None:
    r1, r2 = leaf_hash(b"one"), leaf_hash(b"two")
    # Sizes that are always consistent, with the right roots and an empty proof.
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(1, 1, r1, r1, [])
    verify_consistency(5, 5, r2, r2, [])
    refused = [
        ((0, 0, r1, r2, []), "two different roots"),
        ((0, 0, r1, r1, []), "root of an empty tree"),
        ((0, 0, EMPTY_ROOT, r1, []), "two different roots"),
        # RFC 9162 defines consistency only from a non-empty tree: from size 0 any new root would pass.
        ((0, 5, EMPTY_ROOT, r2, []), "from the empty tree proves nothing"),
        ((0, 1, EMPTY_ROOT, r1, []), "from the empty tree proves nothing"),
        ((0, 1, r1, r2, []), "from the empty tree proves nothing"),
        ((0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]), "has 1 hashes, expected 0"),
        ((1, 1, r1, r2, []), "two different roots"),
        ((1, 1, r1, r1, [r1]), "has 1 hashes, expected 0"),
        ((1, 0, r1, r2, []), "old size is larger"),
        ((2, 1, r1, r2, []), "old size is larger"),
        ((1, 2, r1, r2, []), "has 0 hashes, expected 1"),
        ((-1, 2, r1, r2, []), "must not be negative"),
        ((1, 2, r1[:31], r2, [r2]), "old root must be 32 bytes"),
        ((1, 2, r1, b"", [r2]), "new root must be 32 bytes"),
        ((1, 2, r1, r2, [r2[:16]]), "consistency proof hash 0 must be 32 bytes"),
        ((1, 2, r1, r2, [r2]), "does not verify"),
    ]
    for args, message in refused:
        with pytest.raises(ProofError, match=message):
            verify_consistency(*args)


def test_proof_error_is_a_ledger_error() -> None:
    assert issubclass(ProofError, LedgerError)


# --- cross-check against the reference implementation on random trees ---------------------------------------


def _random_leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(0, 40)) for _ in range(n)]


def test_every_proof_of_small_trees_matches_reference() -> None:
    leaves = _random_leaves(40, seed=1)
    tree = _tree(leaves)
    for n in range(len(leaves) + 1):
        prefix = leaves[:n]
        root = ref_mth(prefix)
        assert tree.root(n) == root
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, prefix)
            verify_inclusion(tree.leaf(i), i, n, proof, root)
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            assert proof == ref_proof(m, prefix)
            if m or not n:  # from the empty tree to a larger one there is nothing to verify (see above)
                verify_consistency(m, n, tree.root(m), root, proof)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), n=st.integers(min_value=1, max_value=300), seed=st.integers(0, 2**32))
def test_random_trees_match_reference(data: st.DataObject, n: int, seed: int) -> None:
    leaves = _random_leaves(n, seed)
    tree = _tree(leaves)
    size = data.draw(st.integers(min_value=1, max_value=n), label="size")
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    old = data.draw(st.integers(min_value=1, max_value=size), label="old_size")
    prefix = leaves[:size]
    root = ref_mth(prefix)
    assert tree.root(size) == root
    assert root_from_leaves([leaf_hash(x) for x in prefix]) == root

    path = tree.inclusion_proof(index, size)
    assert path == ref_path(index, prefix)
    verify_inclusion(tree.leaf(index), index, size, path, root)
    wrong_index = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda i: i != index))
    if size > 1:
        with pytest.raises(ProofError):
            verify_inclusion(tree.leaf(index), wrong_index, size, path, root)

    proof = tree.consistency_proof(old, size)
    assert proof == ref_proof(old, prefix)
    verify_consistency(old, size, tree.root(old), root, proof)
    if proof:
        flip_at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="flip_at")
        bad = [*proof[:flip_at], _flip(proof[flip_at]), *proof[flip_at + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(old, size, tree.root(old), root, bad)


# --- MerkleTree itself --------------------------------------------------------------------------------------


def test_historical_sizes_answer_like_a_tree_of_that_size() -> None:
    leaves = [leaf_hash(x) for x in _random_leaves(300, seed=7)]
    big = MerkleTree(leaves)
    rng = random.Random(3)
    for size in [*range(1, 20), 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256, 257, 299]:
        small = MerkleTree(leaves[:size])
        assert big.root(size) == small.root()
        for index in {0, size - 1, rng.randrange(size)}:
            assert big.inclusion_proof(index, size) == small.inclusion_proof(index)
        for old in {0, 1, size // 2, size - 1, size}:
            assert big.consistency_proof(old, size) == small.consistency_proof(old)
    # And proofs between two historical sizes verify against the roots of those sizes.
    verify_consistency(100, 200, big.root(100), big.root(200), big.consistency_proof(100, 200))


def test_append_extend_and_constructor_agree() -> None:
    leaves = [leaf_hash(x) for x in _random_leaves(130, seed=9)]
    one_by_one = MerkleTree()
    chunked = MerkleTree()
    for h in leaves:
        one_by_one.append(h)
    for start in range(0, len(leaves), 17):
        chunked.extend(iter(leaves[start : start + 17]))  # a generator-like iterable
        assert chunked.root() == root_from_leaves(leaves[: chunked.size])
    built = MerkleTree(leaves)
    assert one_by_one.size == chunked.size == built.size == 130
    assert one_by_one.root() == chunked.root() == built.root() == ref_mth(_random_leaves(130, seed=9))
    assert [one_by_one.leaf(i) for i in range(130)] == leaves


def test_bad_leaf_hashes_refused_whole() -> None:
    tree = MerkleTree([leaf_hash(b"a")])
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    with pytest.raises(ValueError, match="leaf hash 2 must be 32 bytes"):
        tree.extend([leaf_hash(b"b"), b"x" * 33])
    with pytest.raises(ValueError, match="must be bytes"):
        tree.append("0" * 32)  # type: ignore[arg-type]
    assert tree.size == 1  # nothing of a refused extend was added
    with pytest.raises(ValueError):
        root_from_leaves([b""])


def test_out_of_range_requests() -> None:
    tree = _tree(LEAF_INPUTS)
    assert MerkleTree().root() == EMPTY_ROOT == root_from_leaves([])
    assert tree.root(0) == EMPTY_ROOT
    with pytest.raises(IndexError):
        tree.leaf(8)
    with pytest.raises(IndexError):
        tree.leaf(-1)
    with pytest.raises(ValueError, match="size 9 out of range"):
        tree.root(9)
    with pytest.raises(ValueError):
        tree.root(-1)
    with pytest.raises(IndexError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(IndexError):
        tree.inclusion_proof(0, 0)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 9)
    with pytest.raises(ValueError, match="old_size 6 must be between 0 and new_size 5"):
        tree.consistency_proof(6, 5)
    with pytest.raises(ValueError):
        tree.consistency_proof(1, 9)
    assert tree.consistency_proof(0) == tree.consistency_proof(8) == []


def test_large_tree_proofs_touch_few_nodes() -> None:
    # 2**16 + 3 leaves: a ragged right edge; proofs must stay O(log n) and verify.
    rng = random.Random(11)
    leaves = [rng.randbytes(32) for _ in range(2**16 + 3)]
    tree = MerkleTree(leaves)
    root = tree.root()
    for index in (0, 1, 2**15, 2**16 - 1, 2**16, 2**16 + 2):
        proof = tree.inclusion_proof(index)
        assert len(proof) <= 17
        verify_inclusion(leaves[index], index, tree.size, proof, root)
    for old in (1, 3, 2**15 + 1, 2**16, 2**16 + 2):
        verify_consistency(old, tree.size, tree.root(old), root, tree.consistency_proof(old))


# --- LedgerTree over a real SQLite ledger -------------------------------------------------------------------


async def test_ledger_tree_syncs_with_a_sqlite_ledger(ledger_path: Path) -> None:
    async with SQLiteLedger(ledger_path, REGION) as ledger:
        tree = LedgerTree(chunk=7)
        assert await tree.sync(ledger) == 0
        first = await ledger.append(*(make_draft(i) for i in range(25)))
        assert await tree.sync(ledger) == 25
        assert tree.tree.root() == ref_mth([canonical_bytes(e) for e in first])
        assert tree.tree.leaf(3) == leaf_hash_of(first[3]) == LedgerTree.leaf_hash_of(first[3])

        # Another process appending to the same file: the tree catches up from its own size.
        async with SQLiteLedger(ledger_path, REGION) as other:
            more = await other.append(*(make_draft(i) for i in range(25, 40)))
        assert await tree.sync(ledger) == 40
        everything = [canonical_bytes(e) for e in [*first, *more]]
        assert tree.tree.root() == ref_mth(everything)
        assert tree.tree.root(25) == ref_mth(everything[:25])
        proof = tree.tree.consistency_proof(25)
        verify_consistency(25, 40, tree.tree.root(25), tree.tree.root(), proof)

        # Concurrent syncs add each entry once.
        await ledger.append(*(make_draft(i) for i in range(40, 60)))
        sizes = await asyncio.gather(tree.sync(ledger), tree.sync(ledger), tree.sync(ledger))
        assert sizes == [60, 60, 60]
        entries = await ledger.entries()
        assert tree.tree.root() == root_from_leaves([leaf_hash_of(e) for e in entries])


async def test_ledger_tree_refuses_a_shorter_store(tmp_path: Path) -> None:
    async with SQLiteLedger(tmp_path / "long.db", REGION) as long:
        await long.append(*(make_draft(i) for i in range(5)))
        tree = LedgerTree()
        await tree.sync(long)
    async with SQLiteLedger(tmp_path / "short.db", REGION) as short:
        await short.append(make_draft(0))
        with pytest.raises(LedgerError, match="truncated or replaced"):
            await tree.sync(short)
    with pytest.raises(ValueError):
        LedgerTree(chunk=0)
