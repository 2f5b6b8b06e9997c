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
