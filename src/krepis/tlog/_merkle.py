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
    "NodeSource",
    "TreeChecker",
    "append_leaf",
    "consistency_proof",
    "frontier_levels",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "range_hash",
    "root_from_frontier",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
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

    def resume(self, size: int) -> None:
        """Start after the first ``size`` leaves (a multiple of 256, e.g. an archived prefix)
        without their data: the frontier is rebuilt from the stored tile-height hashes, which are
        counted as checked only in so far as they exist."""
        if size % (1 << TILE_HEIGHT) or size < 0:
            raise ValueError(f"a tree can resume only after whole tiles of leaves, not after {size}")

        def node(level: int, index: int) -> bytes:
            if level % TILE_HEIGHT == 0:
                found = self._stored(level, index)
                if found is None:
                    first = (index << level) + self._offset
                    raise ValueError(f"the stored Merkle hash of entries {first}…"
                                     f"{first + (1 << level) - 1} (height {level}) is missing")
                return found
            return node_hash(node(level - 1, 2 * index), node(level - 1, 2 * index + 1))

        frontier = []
        start = 0
        for level in frontier_levels(size):
            frontier.append(node(level, start >> level))
            start += 1 << level
        self.frontier, self.size = frontier, size
        self.nodes = sum(size >> level for level in range(TILE_HEIGHT, size.bit_length() + 1, TILE_HEIGHT))

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


# --- proofs (RFC 6962 §2.1.1–2.1.2, RFC 9162 §2.1.3–2.1.4) ----------------------------------------

#: ``node(level, index)``: the hash of the perfect subtree of height ``level`` covering leaves
#: ``index·2^level … (index+1)·2^level − 1`` — supplied by whoever holds the tree.
NodeSource = Callable[[int, int], bytes]


def _largest_power_of_two_below(n: int) -> int:
    return 1 << ((n - 1).bit_length() - 1)


def range_hash(node: NodeSource, start: int, end: int) -> bytes:
    """MTH of leaves ``start … end−1`` (``start`` aligned as the RFC's recursion makes it)."""
    size = end - start
    if size <= 0:
        raise ValueError(f"empty range {start}…{end}")
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        return node(level, start >> level)
    k = _largest_power_of_two_below(size)
    return node_hash(range_hash(node, start, start + k), range_hash(node, start + k, end))


def inclusion_proof(node: NodeSource, index: int, size: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves (RFC 6962 PATH)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _largest_power_of_two_below(end - start)
        if index < start + k:
            path.append(range_hash(node, start + k, end))
            end = start + k
        else:
            path.append(range_hash(node, start, start + k))
            start += k
    path.reverse()  # leaf to root
    return path


def consistency_proof(node: NodeSource, old: int, new: int) -> list[bytes]:
    """The proof that the tree of ``old`` leaves is a prefix of the tree of ``new`` leaves
    (RFC 6962 PROOF / SUBPROOF)."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _subproof(node, old, 0, new, True)


def _subproof(node: NodeSource, m: int, start: int, end: int, whole: bool) -> list[bytes]:
    if m == end - start:
        return [] if whole else [range_hash(node, start, end)]
    k = _largest_power_of_two_below(end - start)
    if m <= k:
        return [*_subproof(node, m, start, start + k, whole), range_hash(node, start + k, end)]
    return [*_subproof(node, m - k, start + k, end, False), range_hash(node, start, start + k)]


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2); raises ``ValueError`` when the
    proof has the wrong length for ``index`` and ``size``."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the inclusion proof is too short")
    return r


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree of ``size`` with ``root``."""
    try:
        return root_from_inclusion(leaf, index, size, proof) == root
    except ValueError:
        return False


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: list[bytes]) -> bool:
    """Whether ``proof`` shows the tree ``(old, old_root)`` is a prefix of ``(new, new_root)``
    (RFC 9162 §2.1.4.2)."""
    if not 0 <= old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof  # the empty tree is a prefix of every tree
    if not proof:
        return False
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node
        path.insert(0, old_root)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0
