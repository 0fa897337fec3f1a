"""The ledger's Merkle tree (RFC 6962 §2.1, RFC 9162 §2.1): tree hashes, proofs, and their verification.

Three separate units, as a verifier in another process needs only the last:

* hashing: :func:`leaf_hash` (SHA-256 of ``0x00 || data``), :func:`node_hash` (SHA-256 of
  ``0x01 || left || right``), :data:`EMPTY_ROOT` and :func:`root_from_leaves`;
* building: :class:`MerkleTree`, an in-memory tree over leaf hashes that produces roots, inclusion proofs
  and consistency proofs for its current size and for any earlier size;
* verifying: :func:`verify_inclusion` and :func:`verify_consistency`, which need only hashes and sizes and
  raise :class:`ProofError` for anything but a proof that verifies exactly.

The leaves of the ledger's tree are ``leaf_hash(canonical_bytes(entry))`` (see ``ledger.entry`` and
``ledger.tree``).

How :class:`MerkleTree` stays fast at millions of leaves: it keeps, level by level, the hash of every
*complete* subtree (``2**level`` leaves starting at a multiple of ``2**level``). Those hashes never change as
the log grows, so they serve every tree size at once. The hash of any aligned range of leaves, and so the
root of any size, is at most one stored hash per set bit of its length folded together from the right: a
proof is O(log n) lookups plus O(log n) hashing for the ragged right edge, never a pass over the leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

from ledger.errors import LedgerError

HASH_SIZE: Final = 32
"""Bytes in every hash of the tree (SHA-256)."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""The root of the tree of no leaves: SHA-256 of the empty string (RFC 6962 §2.1)."""


class ProofError(LedgerError):
    """A Merkle proof does not verify, or is malformed (wrong number of hashes, a hash of the wrong size,
    an index or size out of range).

    Only its message differs between causes; a caller holding one knows the claim is not proven.
    """


def leaf_hash(data: bytes) -> bytes:
    """The leaf hash of ``data``: SHA-256(``0x00`` || data).

    Args:
        data: the leaf's bytes; for the ledger, ``canonical_bytes(entry)``.

    Returns:
        The 32-byte leaf hash.
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(``0x01`` || left || right).

    Args:
        left: the left child's 32-byte hash.
        right: the right child's 32-byte hash.

    Returns:
        The 32-byte node hash.
    """
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaves(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash MTH(D[n]) of RFC 6962 §2.1, from the leaves' hashes.

    Args:
        leaf_hashes: the 32-byte leaf hashes, in log order.

    Returns:
        The root; :data:`EMPTY_ROOT` for no leaves.

    Raises:
        ValueError: a leaf hash is not 32 bytes.
    """
    return MerkleTree(leaf_hashes).root()


class MerkleTree:
    """An append-only Merkle tree over leaf hashes, answering for its current size and every earlier one.

    Memory is about two hashes per leaf, in one flat ``bytearray`` per level rather than one object per hash
    (64 MB for a million leaves instead of several times that).

    Args:
        leaf_hashes: initial leaf hashes, in order.

    Raises:
        ValueError: a leaf hash is not 32 bytes.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        # _levels[k] holds, concatenated, the hashes of the complete subtrees of 2**k leaves, left to right:
        # entry j covers leaves [j * 2**k, (j + 1) * 2**k). Level 0 is the leaf hashes themselves.
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    def __repr__(self) -> str:
        return f"MerkleTree(size={self._size})"

    @property
    def size(self) -> int:
        """Number of leaves."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add one leaf hash at the end.

        Raises:
            ValueError: ``leaf_hash`` is not 32 bytes.
        """
        _check_hash("leaf hash", leaf_hash, ValueError)
        levels = self._levels
        levels[0] += leaf_hash
        self._size += 1
        # Each trailing one bit of the new size completes one more subtree, on the level above.
        index, level, node = self._size - 1, 0, bytes(leaf_hash)
        while index & 1:
            left = levels[level][(index - 1) * HASH_SIZE : index * HASH_SIZE]
            node = hashlib.sha256(_NODE_PREFIX + left + node).digest()
            index >>= 1
            level += 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += node

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Add leaf hashes at the end, in order; all or none are added.

        Faster than repeated :meth:`append`: each level's new complete subtrees are hashed in one pass.

        Raises:
            ValueError: a leaf hash is not 32 bytes.
        """
        added = bytearray()
        for position, h in enumerate(leaf_hashes):
            if not isinstance(h, bytes | bytearray) or len(h) != HASH_SIZE:
                _check_hash(f"leaf hash {self._size + position}", h, ValueError)
            added += h
        if not added:
            return
        levels = self._levels
        levels[0] += added
        self._size += len(added) // HASH_SIZE
        level = 0
        while (self._size >> (level + 1)) > 0:
            below = levels[level]
            if level + 1 == len(levels):
                levels.append(bytearray())
            above = levels[level + 1]
            have, want = len(above) // HASH_SIZE, self._size >> (level + 1)
            if have == want:
                break
            start, stop = 2 * have * HASH_SIZE, 2 * want * HASH_SIZE
            view = memoryview(below)[start:stop]
            sha256 = hashlib.sha256
            above += b"".join(
                sha256(_NODE_PREFIX + view[i : i + 2 * HASH_SIZE]).digest()
                for i in range(0, stop - start, 2 * HASH_SIZE)
            )
            view.release()
            level += 1

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``.

        Raises:
            IndexError: ``index`` is negative or not below :attr:`size`.
        """
        if not 0 <= index < self._size:
            raise IndexError(f"leaf index {index} out of range for a tree of {self._size} leaves")
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree of the first ``size`` leaves (RFC 6962 MTH).

        Args:
            size: an earlier tree size, or None for the current one.

        Returns:
            The 32-byte root; :data:`EMPTY_ROOT` for size 0.

        Raises:
            ValueError: ``size`` is negative or larger than :attr:`size`.
        """
        size = self._check_size("size", size)
        return EMPTY_ROOT if size == 0 else self._range_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The inclusion proof of leaf ``index`` in the tree of ``size`` leaves: PATH of RFC 9162 §2.1.3.1.

        Hashes run from the leaf's sibling up to the root's child.

        Args:
            index: the leaf's position.
            size: the tree size the proof is for, at least ``index + 1``; None for the current size.

        Returns:
            The audit path; empty for the single leaf of a tree of size 1.

        Raises:
            ValueError: ``size`` is negative or larger than :attr:`size`.
            IndexError: ``index`` is negative or not below ``size``.
        """
        size = self._check_size("size", size)
        if not 0 <= index < size:
            raise IndexError(f"leaf index {index} out of range for a tree of {size} leaves")
        # Walk from the root down to the leaf, taking at each split the hash of the other side.
        siblings: list[bytes] = []
        start, n, m = 0, size, index
        while n > 1:
            k = _split(n)
            if m < k:
                siblings.append(self._range_hash(start + k, n - k))
                n = k
            else:
                siblings.append(self._range_hash(start, k))
                start, n, m = start + k, n - k, m - k
        siblings.reverse()
        return siblings

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of that of ``new_size`` leaves.

        PROOF(m, D[n]) = SUBPROOF(m, D[n], true) of RFC 9162 §2.1.4.1; empty when ``old_size`` is 0 or equals
        ``new_size``.

        Args:
            old_size: the earlier tree size.
            new_size: the later tree size; None for the current size.

        Returns:
            The consistency proof.

        Raises:
            ValueError: a size is negative, ``new_size`` is larger than :attr:`size`, or ``old_size`` is
                larger than ``new_size``.
        """
        new_size = self._check_size("new_size", new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old_size {old_size} must be between 0 and new_size {new_size}")
        if old_size == 0 or old_size == new_size:
            return []
        # SUBPROOF unrolled: descend while m < n, recording the hash of the side the old tree does not need.
        siblings: list[bytes] = []
        start, n, m, whole = 0, new_size, old_size, True
        while m != n:
            k = _split(n)
            if m <= k:
                siblings.append(self._range_hash(start + k, n - k))
                n = k
            else:
                siblings.append(self._range_hash(start, k))
                start, n, m, whole = start + k, n - k, m - k, False
        siblings.reverse()
        if whole:
            # The old tree is a complete subtree at the left edge: the verifier already has its hash.
            return siblings
        return [self._range_hash(start, m), *siblings]

    def _check_size(self, name: str, size: int | None) -> int:
        if size is None:
            return self._size
        if not 0 <= size <= self._size:
            raise ValueError(f"{name} {size} out of range for a tree of {self._size} leaves")
        return size

    def _node(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _range_hash(self, start: int, n: int) -> bytes:
        """MTH of leaves [start, start + n), for ``n >= 1`` and ``start`` a multiple of a power of two >= n.

        Under that alignment (which every range of the RFC's recursion has) the range splits, by the set bits
        of ``n`` from the highest, into complete subtrees that are all stored; MTH folds them from the right.
        """
        pieces: list[bytes] = []
        for level in range(n.bit_length() - 1, -1, -1):
            if n >> level & 1:
                pieces.append(self._node(level, start >> level))
                start += 1 << level
        result = pieces.pop()
        while pieces:
            result = hashlib.sha256(_NODE_PREFIX + pieces.pop() + result).digest()
        return result


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf`` is leaf ``index`` of the tree of ``size`` leaves whose root is ``root``.

    The algorithm of RFC 9162 §2.1.3.2, after checking that the proof has exactly the number of hashes a tree
    of that shape needs.

    Args:
        leaf: the leaf's 32-byte hash (``leaf_hash(data)``, not the data).
        index: the leaf's position.
        size: the tree size.
        proof: the audit path, from :meth:`MerkleTree.inclusion_proof`.
        root: the tree's 32-byte root, e.g. from a checkpoint.

    Raises:
        ProofError: the proof does not verify, or ``index``/``size``/a hash is malformed.
    """
    _check_hash("leaf hash", leaf, ProofError)
    _check_hash("root", root, ProofError)
    if index < 0 or size < 0:
        raise ProofError(f"inclusion proof: leaf index {index} and tree size {size} must not be negative")
    if index >= size:
        raise ProofError(f"inclusion proof: leaf index {index} is not in a tree of {size} leaves")
    expected = _inclusion_length(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for leaf {index} of tree size {size} has {len(proof)} hashes, "
            f"expected {expected}"
        )
    for position, h in enumerate(proof):
        _check_hash(f"inclusion proof hash {position}", h, ProofError)
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:  # unreachable after the length check; kept as the RFC's own guard
            raise ProofError(f"inclusion proof for leaf {index} of tree size {size} is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of tree size {size} is too short")
    if r != root:
        raise ProofError(
            f"inclusion proof for leaf {index} of tree size {size} does not verify: "
            f"it leads to root {r.hex()}, not {bytes(root).hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` leaves with ``old_root`` is a prefix of the one with ``new_root``.

    The algorithm of RFC 9162 §2.1.4.2, after checking that the proof has exactly the number of hashes the
    two sizes need. Edge cases: equal sizes need an empty proof and equal roots (for size 0, the empty
    tree's :data:`EMPTY_ROOT`). A proof from size 0 to a larger tree is refused: RFC 9162 defines
    consistency proofs only for ``0 < old_size``, and "consistent with the empty tree" holds for every
    root, so accepting it would vouch for a root nothing checked (transparency-dev/merkle refuses it as
    meaningless too). A witness's first non-empty checkpoint of a log is trust on first use, and says so.

    Args:
        old_size: the earlier tree size.
        new_size: the later tree size.
        old_root: the 32-byte root of the earlier tree.
        new_root: the 32-byte root of the later tree.
        proof: the consistency proof, from :meth:`MerkleTree.consistency_proof`.

    Raises:
        ProofError: the proof does not verify (the log was rewritten, or the proof is wrong), or a size or
            hash is malformed.
    """
    _check_hash("old root", old_root, ProofError)
    _check_hash("new root", new_root, ProofError)
    what = f"consistency proof from tree size {old_size} to {new_size}"
    if old_size < 0 or new_size < 0:
        raise ProofError(f"{what}: sizes must not be negative")
    if old_size > new_size:
        raise ProofError(f"{what}: the old size is larger than the new one")
    expected = _consistency_length(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(f"{what} has {len(proof)} hashes, expected {expected}")
    for position, h in enumerate(proof):
        _check_hash(f"consistency proof hash {position}", h, ProofError)
    if old_size == new_size:
        if old_root != new_root:
            raise ProofError(f"{what}: the same size has two different roots")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError(f"{what}: the root of an empty tree must be SHA-256 of nothing")
        return
    if old_size == 0:
        raise ProofError(f"{what}: a consistency proof from the empty tree proves nothing (RFC 9162: 0 < m)")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        # The old tree is a complete subtree at the left edge; the proof leaves out the hash already known.
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:  # unreachable after the length check; kept as the RFC's own guard
            raise ProofError(f"{what} is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError(f"{what} is too short")
    if fr != old_root:
        raise ProofError(
            f"{what} does not verify: it leads to old root {fr.hex()}, not {bytes(old_root).hex()}"
        )
    if sr != new_root:
        raise ProofError(
            f"{what} does not verify: it leads to new root {sr.hex()}, not {bytes(new_root).hex()}"
        )


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (for ``n >= 2``): where RFC 6962 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _inclusion_length(index: int, size: int) -> int:
    """Hashes in the audit path of leaf ``index`` in a tree of ``size`` leaves (``0 <= index < size``)."""
    # The path has one hash per level where the leaf's subtree and the last leaf's subtree differ, plus one
    # per complete left neighbour above that point.
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def _consistency_length(old_size: int, new_size: int) -> int:
    """Hashes in PROOF(old_size, D[new_size]) (``0 <= old_size <= new_size``), by SUBPROOF's recursion."""
    if old_size == 0 or old_size == new_size:
        return 0
    m, n, whole, length = old_size, new_size, True, 0
    while m != n:
        k = _split(n)
        if m <= k:
            n = k
        else:
            m, n, whole = m - k, n - k, False
        length += 1
    return length if whole else length + 1


def _check_hash(what: str, value: object, error: type[Exception]) -> None:
    if not isinstance(value, bytes | bytearray):
        raise error(f"{what} must be bytes, not {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise error(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
