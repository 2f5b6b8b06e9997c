"""RFC 6962 / RFC 9162 Merkle tree hashing, as small pure functions.

Leaf ``i`` of the journal's tree is the ``i``-th entry in append order; its leaf data is the
entry's canonical bytes (the spec's serde JSON). ``leaf_hash = SHA-256(0x00 || data)``,
``node_hash = SHA-256(0x01 || left || right)`` (RFC 6962 §2.1).

A tree of size ``n`` is kept as its *frontier*: the roots of the perfect subtrees that make up
the tree, one for each set bit of ``n``, largest (leftmost) first. Appending a leaf merges equal
sized subtrees; the root of the whole tree folds the frontier from the right. Hashes of perfect
subtrees at heights 8, 16, 24, … — the hashes the C2SP tlog-tiles layout publishes in its tiles
above level 0 — are reported as they complete, so a store can keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256

__all__ = [
    "EMPTY_ROOT",
    "TILE_HEIGHT",
    "TreeChecker",
    "append_leaf",
    "frontier_levels",
    "leaf_hash",
    "node_hash",
    "root_from_frontier",
]

TILE_HEIGHT = 8
EMPTY_ROOT = sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return sha256(b"\x01" + left + right).digest()


def frontier_levels(size: int) -> list[int]:
    """Heights of the perfect subtrees of a tree of ``size`` leaves, largest first."""
    return [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]


def append_leaf(
    frontier: list[bytes],
    size: int,
    leaf: bytes,
    on_node: Callable[[int, int, bytes], None] | None = None,
) -> int:
    """Append ``leaf`` (a leaf hash) to the tree of ``size`` leaves whose frontier is given.

    ``frontier`` is updated in place; the new size is returned. ``on_node(level, index, hash)``
    is called for every completed perfect subtree whose height is a positive multiple of
    :data:`TILE_HEIGHT` (``index`` counts subtrees of that height from the left, from 0).
    """
    node = leaf
    level = 0
    n = size
    while n & 1:  # the rightmost subtree has the same height: merge
        node = node_hash(frontier.pop(), node)
        level += 1
        n >>= 1
        if on_node is not None and level % TILE_HEIGHT == 0:
            on_node(level, (size + 1 >> level) - 1, node)
    frontier.append(node)
    return size + 1


def root_from_frontier(frontier: list[bytes]) -> bytes:
    """The tree head: the frontier folded from the right (RFC 6962 MTH); empty tree: SHA-256("")."""
    if not frontier:
        return EMPTY_ROOT
    root = frontier[-1]
    for node in reversed(frontier[:-1]):
        root = node_hash(node, root)
    return root


class TreeChecker:
    """Recompute a stored tree leaf by leaf and compare it with what the store holds.

    Feed the leaf data of every entry in append order to :meth:`add`; ``stored_node(level,
    index)`` returns the store's hash of that tile-height subtree (or ``None``). A mismatch raises
    ``ValueError`` naming the leaf range whose hash differs; :meth:`finish` compares the frontier.
    """

    def __init__(self, stored_node: Callable[[int, int], bytes | None], offset: int = 0) -> None:
        self._stored = stored_node
        self._offset = offset  # added to leaf numbers in messages (a journal's first seq)
        self.frontier: list[bytes] = []
        self.size = 0
        self.nodes = 0

    def add(self, data: bytes) -> None:
        self.size = append_leaf(self.frontier, self.size, leaf_hash(data), self._check)

    def _check(self, level: int, index: int, node: bytes) -> None:
        stored = self._stored(level, index)
        if stored != node:
            first, last = (index << level) + self._offset, ((index + 1) << level) - 1 + self._offset
            what = "is missing" if stored is None else "does not match the entries"
            raise ValueError(f"the stored Merkle hash of entries {first}…{last} (height {level}) {what}")
        self.nodes += 1

    def finish(self, stored_frontier: list[bytes]) -> bytes:
        """Compare the recomputed frontier with the stored one; return the root."""
        if stored_frontier != self.frontier:
            for level, ours, theirs in zip(frontier_levels(self.size), self.frontier, stored_frontier,
                                           strict=False):
                if ours != theirs:
                    start = _subtree_start(self.size, level) + self._offset
                    raise ValueError(f"the stored tree head does not match entries {start}…"
                                     f"{start + (1 << level) - 1}")
            raise ValueError(f"the stored tree head has {len(stored_frontier)} subtrees; the "
                             f"{self.size} entries make {len(self.frontier)}")
        return root_from_frontier(self.frontier)


def _subtree_start(size: int, level: int) -> int:
    """First leaf of the frontier subtree of height ``level`` in a tree of ``size`` leaves."""
    return size >> (level + 1) << (level + 1)
