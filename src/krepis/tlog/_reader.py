"""The journal's Merkle tree read from a store: any node, any earlier root, proofs.

Perfect subtrees of height 8, 16, … are stored; leaf hashes come from the entries in tiles of
256; everything else is computed from those, so any node costs at most one tile of reads per 8
levels: a root or a proof reads O(log n) tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .._errors import CorruptStorageError, JournalError, ValidationError
from ._merkle import TILE_HEIGHT, consistency_proof, inclusion_proof, leaf_hash, node_hash, range_hash
from ._note import Checkpoint

__all__ = ["ConsistencyProof", "InclusionProof", "TreeHead", "TreeReader", "TreeSource", "TrustReport"]

_WIDTH = 1 << TILE_HEIGHT


@dataclass(frozen=True, slots=True)
class TreeHead:
    """The Merkle tree over the journal's append order since the log began (see ``clear``).

    ``size`` leaves; ``first_seq`` is the sequence number of leaf 0; ``root`` the RFC 6962 tree
    head; ``epoch`` counts clears (a clear ends a log and starts a new one).
    """

    size: int
    root: bytes
    first_seq: int
    epoch: int


class TreeSource(Protocol):
    """What a :class:`TreeReader` reads: a store's stored tree (the storage port provides it)."""

    @property
    def location(self) -> str: ...

    def tree_head(self) -> TreeHead: ...

    def tree_node(self, level: int, index: int) -> bytes | None: ...

    def leaf_hashes(self, first_seq: int, start: int, count: int) -> list[bytes]: ...

    def live_first_seq(self) -> int: ...


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``seq`` is leaf ``index`` of the tree of ``tree_size`` leaves whose head is ``root``
    (RFC 6962 audit path, leaf to root). Check it with :func:`krepis.tlog.verify_inclusion`."""

    seq: int
    index: int
    tree_size: int
    leaf_hash: bytes
    path: list[bytes]
    root: bytes


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``old_size`` leaves (head ``old_root``) is a prefix of the tree of
    ``new_size`` leaves (head ``new_root``). Check it with :func:`krepis.tlog.verify_consistency`."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: list[bytes]


@dataclass(frozen=True)
class TrustReport:
    """What :meth:`SovereignJournal.verify_extends <krepis.SovereignJournal.verify_extends>`
    proved: the journal's current log, a tree of ``tree_size`` leaves with head ``root``, extends
    the trusted ``checkpoint`` (a consistency proof from it verified), and every leaf of it was
    hashed from an entry — ``entries`` read from the store, ``archived`` from the archive."""

    checkpoint: Checkpoint
    tree_size: int
    root: bytes
    entries: int
    archived: int


class TreeReader:
    """Nodes of one store's current log, cached for the life of the reader (one proof)."""

    def __init__(self, storage: TreeSource, head: TreeHead,
                 archive: Callable[[int, int], list[bytes]] | None = None) -> None:
        self._storage = storage
        self.head = head
        #: leaf data of archived leaves (start, count), from the archive's bundles
        self._archive = archive
        self._live_leaf: int | None = None
        self._leaves: dict[int, list[bytes]] = {}
        self._nodes: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        if (index + 1) << level > self.head.size:
            raise ValidationError(f"subtree {level}/{index} is beyond the tree of size {self.head.size}")
        if level == 0:
            tile = index >> TILE_HEIGHT
            leaves = self._leaves.get(tile)
            if leaves is None:
                start = tile * _WIDTH
                count = min(_WIDTH, self.head.size - start)
                if self._live_leaf is None:
                    live = self._storage.live_first_seq() - self.head.first_seq
                    self.check_same_log()  # (where another log's entries begin says nothing of this one)
                    self._live_leaf = live
                if start < self._live_leaf:
                    if self._archive is None:
                        first = self.head.first_seq + start
                        raise ValidationError(
                            f"entries {first}…{first + count - 1} of the journal at {self._storage.location} "
                            "are archived: pass the archive directory (archive=DIR, --archive DIR)")
                    try:
                        data = self._archive(start, count)
                    except CorruptStorageError:
                        self.check_same_log()  # a clear meanwhile is not a damaged archive
                        raise
                    leaves = [leaf_hash(d) for d in data]
                    self.check_same_log()
                    self._leaves[tile] = leaves
                    return leaves[index - (tile << TILE_HEIGHT)]
                try:
                    leaves = self._storage.leaf_hashes(self.head.first_seq, start, count)
                except CorruptStorageError:
                    self.check_same_log()  # a clear meanwhile is not corruption
                    raise
                self.check_same_log()
                self._leaves[tile] = leaves
            return leaves[index - (tile << TILE_HEIGHT)]
        key = (level, index)
        found = self._nodes.get(key)
        if found is not None:
            return found
        if level % TILE_HEIGHT == 0:
            stored = self._storage.tree_node(level, index)
            self.check_same_log()
            if stored is None:
                raise CorruptStorageError(
                    f"storage at {self._storage.location}: the Merkle hash of entries "
                    f"{(index << level) + self.head.first_seq}… (height {level}) is missing",
                    self._storage.location)
            found = stored
        else:
            found = node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
        self._nodes[key] = found
        return found

    def check_same_log(self) -> None:
        """Raise :class:`JournalError` if the journal was cleared since this reader began: the
        store's nodes then belong to another log, and must not be mixed with this one's."""
        now = self._storage.tree_head()
        if (now.epoch, now.first_seq) != (self.head.epoch, self.head.first_seq):
            raise JournalError(f"the journal at {self._storage.location} was cleared while its tree "
                               "was being read (a new log began); read again")

    def root(self, size: int) -> bytes:
        """The tree head of the first ``size`` leaves (``size`` ≤ the current size)."""
        self._check_size(size, "size")
        if size == 0:
            from ._merkle import EMPTY_ROOT

            return EMPTY_ROOT
        return range_hash(self.node, 0, size)

    def inclusion(self, seq: int, tree_size: int) -> InclusionProof:
        self._check_size(tree_size, "tree_size")
        index = seq - self.head.first_seq
        if not 0 <= index < tree_size:
            raise ValidationError(
                f"entry {seq} is not in the tree of size {tree_size} (the log holds entries "
                f"{self.head.first_seq}…{self.head.first_seq + self.head.size - 1})")
        return InclusionProof(seq, index, tree_size, self.node(0, index),
                              inclusion_proof(self.node, index, tree_size), self.root(tree_size))

    def consistency(self, old_size: int, new_size: int) -> ConsistencyProof:
        self._check_size(new_size, "new_size")
        if not 0 <= old_size <= new_size:
            raise ValidationError(f"old_size must be in 0 … {new_size}, got {old_size}")
        return ConsistencyProof(old_size, new_size, self.root(old_size), self.root(new_size),
                                consistency_proof(self.node, old_size, new_size))

    def _check_size(self, size: int, what: str) -> None:
        if type(size) is not int or not 0 <= size <= self.head.size:
            raise ValidationError(f"{what} must be an int in 0 … {self.head.size} (the current tree "
                                  f"size), got {size!r}")
