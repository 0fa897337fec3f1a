"""The Merkle tree of a ledger store: its leaves are the entries' canonical bytes, in index order.

A :class:`LedgerTree` lives in memory next to a store and catches up with it on :meth:`LedgerTree.sync`.
Several processes of one region append to the same store, so the tree never assumes it saw every append:
it reads whatever the store has beyond its own size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from ledger.entry import EntryFields, canonical_bytes
from ledger.errors import LedgerError
from ledger.merkle import MerkleTree, leaf_hash
from ledger.store import LedgerStore

SYNC_CHUNK: Final = 10_000
"""Entries read per query while catching up: bounds memory, and keeps each read short."""


_INLINE_HASHES: Final = 256
"""Up to this many new entries are hashed on the event loop (a thread hop would cost more)."""


def _leaf_hashes(entries: Sequence[EntryFields]) -> list[bytes]:
    return [leaf_hash_of(entry) for entry in entries]


def leaf_hash_of(entry: EntryFields) -> bytes:
    """The Merkle leaf hash of a ledger entry: ``leaf_hash(canonical_bytes(entry))``."""
    return leaf_hash(canonical_bytes(entry))


class LedgerTree:
    """A :class:`~ledger.merkle.MerkleTree` over a ledger store's entries.

    Args:
        tree: the tree to extend, e.g. one rebuilt earlier; a new empty tree when None.
        chunk: entries read per query by :meth:`sync`.

    Raises:
        ValueError: ``chunk`` is below 1.
    """

    leaf_hash_of = staticmethod(leaf_hash_of)

    def __init__(self, tree: MerkleTree | None = None, *, chunk: int = SYNC_CHUNK) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        self._tree = MerkleTree() if tree is None else tree
        self._chunk = chunk
        # Two concurrent syncs would both read from the same size and append the same leaves twice.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"LedgerTree(size={self._tree.size})"

    @property
    def tree(self) -> MerkleTree:
        """The tree itself, for roots and proofs; extend it only through :meth:`sync`."""
        return self._tree

    @property
    def size(self) -> int:
        """Number of entries in the tree."""
        return self._tree.size

    async def sync(self, store: LedgerStore) -> int:
        """Append the leaf hashes of the store's entries that the tree does not have yet.

        Reads entries from the tree's size up to the store's size at the time of the call, in chunks.

        Args:
            store: the open store whose entries the tree covers.

        Returns:
            The tree's new size.

        Raises:
            LedgerError: the store holds fewer entries than the tree (it was truncated or replaced), or
                returned entries out of order.
        """
        async with self._lock:
            target = await store.size()
            if target < self._tree.size:
                raise LedgerError(
                    f"ledger store has {target} entries but its tree already has {self._tree.size}: "
                    "the store was truncated or replaced"
                )
            while self._tree.size < target:
                start = self._tree.size
                entries = await store.entries(start, min(start + self._chunk, target))
                if not entries:
                    raise LedgerError(f"ledger store returned no entries from index {start} (size {target})")
                for offset, entry in enumerate(entries):
                    if entry.index != start + offset:
                        raise LedgerError(
                            f"ledger store returned entry {entry.index} where {start + offset} was expected"
                        )
                if len(entries) > _INLINE_HASHES:
                    # Encoding and hashing thousands of entries takes a while: off the event loop.
                    # The tree itself is extended here, on the loop, where its readers are.
                    hashes = await asyncio.to_thread(_leaf_hashes, entries)
                else:
                    hashes = _leaf_hashes(entries)
                self._tree.extend(hashes)
            return self._tree.size
