"""The tree reader (``krepis.tlog._reader.TreeReader``) over a real store: every root, proof and
node it gives agrees with a tree computed in memory from the entries' bytes, at every size
around the tile boundaries; what it refuses, with the exact text; archived leaves read from
the archive (and refused without it); a clear while a tree is read is a ``JournalError``,
never another log's hashes; a missing stored hash is a ``CorruptStorageError`` naming the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import (
    CorruptStorageError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis._model import encode_log
from krepis.storage import Storage, open_storage
from krepis.tlog import EMPTY_ROOT, verify_consistency, verify_inclusion
from krepis.tlog._merkle import append_leaf, leaf_hash, node_hash, root_from_frontier
from krepis.tlog._reader import TreeHead, TreeReader


def _fill(journal: SovereignJournal, n: int, tag: str = "r") -> None:
    for i in range(n):
        journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", f"{tag}{i}", LogStatus.Completed))


class Expected:
    """The tree of a journal's current log, computed in memory from its entries' bytes."""

    def __init__(self, journal: SovereignJournal) -> None:
        head = journal.tree_head()
        logs = journal.query(order="append", newest_first=False, limit=10**6)
        self.first_seq = head.first_seq
        self.leaves = [leaf_hash(encode_log(log)) for log in logs if log.seq >= head.first_seq]
        assert len(self.leaves) == head.size

    def root(self, size: int) -> bytes:
        frontier: list[bytes] = []
        done = 0
        for h in self.leaves[:size]:
            done = append_leaf(frontier, done, h)
        return root_from_frontier(frontier)

    def node(self, level: int, index: int) -> bytes:
        if level == 0:
            return self.leaves[index]
        return node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "store") as j:
        yield j


@pytest.fixture
def storage(journal: SovereignJournal) -> Iterator[Storage]:
    s = open_storage(journal.path)
    yield s
    s.close()


SIZES = [0, 1, 2, 3, 255, 256, 257, 300, 511, 512, 513, 600]


def test_roots_nodes_and_proofs_agree_with_the_tree_of_the_entries(journal: SovereignJournal) -> None:
    _fill(journal, 600)
    want = Expected(journal)
    reader, _ = journal.tile_sources()
    for size in SIZES:
        assert reader.root(size) == want.root(size), size
    assert reader.root(0) == EMPTY_ROOT
    for level, index in ((0, 0), (0, 599), (1, 299), (8, 0), (8, 1), (9, 0), (3, 74)):
        assert reader.node(level, index) == want.node(level, index)
    for seq in (0, 1, 255, 256, 599):
        for tree_size in (seq + 1, 257, 600):
            if seq >= tree_size:
                continue
            proof = reader.inclusion(seq, tree_size)
            assert (proof.seq, proof.index, proof.tree_size) == (seq, seq, tree_size)
            assert proof.leaf_hash == want.leaves[seq] and proof.root == want.root(tree_size)
            assert verify_inclusion(proof.leaf_hash, seq, tree_size, proof.path, want.root(tree_size))
    for old in SIZES:
        for new in (old, 300, 600):
            if old > new:
                continue
            c = reader.consistency(old, new)
            assert (c.old_size, c.new_size) == (old, new)
            assert (c.old_root, c.new_root) == (want.root(old), want.root(new))
            assert verify_consistency(old, new, want.root(old), want.root(new), c.path), (old, new)


def test_a_log_begun_by_a_clear_counts_its_leaves_from_its_first_seq(journal: SovereignJournal) -> None:
    _fill(journal, 10, "old")
    journal.clear_all()
    _fill(journal, 299, "new")
    head = journal.tree_head()
    assert head.first_seq == 10 and head.size == 300 and head.epoch == 1  # (the clear's trace is leaf 0)
    want = Expected(journal)
    reader, _ = journal.tile_sources()
    for size in (1, 256, 257, 300):
        assert reader.root(size) == want.root(size)
    proof = reader.inclusion(10 + 270, 300)
    assert (proof.seq, proof.index) == (280, 270) and proof.leaf_hash == want.leaves[270]
    assert verify_inclusion(proof.leaf_hash, 270, 300, proof.path, want.root(300))
    for seq in (9, 310, 10**6):
        with pytest.raises(ValidationError) as info:
            reader.inclusion(seq, 300)
        assert str(info.value) == f"entry {seq} is not in the tree of size 300 (the log holds entries 10…309)"
    with pytest.raises(ValidationError) as info:
        reader.inclusion(100, 50)
    assert str(info.value) == "entry 100 is not in the tree of size 50 (the log holds entries 10…309)"
    assert reader.inclusion(10, 1).path == [] and reader.inclusion(59, 50).index == 49
    with pytest.raises(ValidationError) as info:
        reader.node(0, 300)
    assert str(info.value) == "subtree 0/300 is beyond the tree of size 300"


def test_sizes_out_of_range_or_not_ints_are_refused_naming_them(journal: SovereignJournal) -> None:
    _fill(journal, 5)
    reader, _ = journal.tile_sources()
    for bad in (-1, 6, True, 1.0, "1", None):
        for call, what in ((reader.root, "size"), (lambda s: reader.inclusion(0, s), "tree_size"),
                           (lambda s: reader.consistency(0, s), "new_size")):
            with pytest.raises(ValidationError) as info:
                call(bad)  # type: ignore[operator]
            assert str(info.value) == (f"{what} must be an int in 0 … 5 (the current tree size), got {bad!r}")
    assert reader.root(5) == Expected(journal).root(5)
    for old in (-1, 4):
        with pytest.raises(ValidationError) as info:
            reader.consistency(old, 3)
        assert str(info.value) == f"old_size must be in 0 … 3, got {old}"
    assert reader.consistency(3, 3).path == [] and reader.consistency(0, 3).path == []


def test_a_node_beyond_the_tree_is_refused(journal: SovereignJournal) -> None:
    _fill(journal, 300)
    reader, _ = journal.tile_sources()
    assert reader.node(8, 0) and reader.node(0, 299) and reader.node(2, 74)
    for level, index in ((0, 300), (8, 1), (2, 75), (9, 0), (1, 150)):
        with pytest.raises(ValidationError) as info:
            reader.node(level, index)
        assert str(info.value) == f"subtree {level}/{index} is beyond the tree of size 300"


def test_a_stored_hash_that_is_missing_is_corruption_naming_the_store(journal: SovereignJournal,
                                                                       storage: Storage) -> None:
    """A head that claims more than the store holds (here: made by hand): the hash the store
    does not have is named, with the store's path."""
    _fill(journal, 300)
    head = storage.tree_head()
    reader = TreeReader(storage, TreeHead(1024, head.root, head.first_seq, head.epoch))
    assert reader.node(8, 0) == Expected(journal).node(8, 0)
    with pytest.raises(CorruptStorageError) as info:
        reader.node(8, 2)
    assert str(info.value) == (f"storage at {storage.location}: the Merkle hash of entries 512… (height 8) "
                               "is missing")
    assert info.value.path == storage.location
    with pytest.raises(CorruptStorageError) as info:
        reader.node(9, 1)  # made of two stored hashes, the first one missing
    assert "the Merkle hash of entries 512… (height 8) is missing" in str(info.value)


def test_the_missing_hash_is_named_by_its_entries_seq_numbers(journal: SovereignJournal) -> None:
    _fill(journal, 7, "old")
    journal.clear_all()
    _fill(journal, 299)
    storage = open_storage(journal.path)
    try:
        head = storage.tree_head()
        assert head.first_seq == 7
        reader = TreeReader(storage, TreeHead(768, head.root, head.first_seq, head.epoch))
        with pytest.raises(CorruptStorageError) as info:
            reader.node(8, 2)
        assert str(info.value) == (f"storage at {storage.location}: the Merkle hash of entries 519… "
                                   "(height 8) is missing")
    finally:
        storage.close()


def test_a_clear_while_the_tree_is_read_is_an_error_never_another_log(journal: SovereignJournal) -> None:
    _fill(journal, 600, "old")
    reader, _ = journal.tile_sources()
    journal.clear_all()
    _fill(journal, 700, "new")
    message = (f"the journal at {journal.path} was cleared while its tree was being read (a new log "
               "began); read again")
    for level, index in ((0, 0), (0, 300), (8, 0), (8, 1), (9, 0)):
        with pytest.raises(JournalError) as info:
            reader.node(level, index)
        assert str(info.value) == message
    with pytest.raises(JournalError):
        reader.root(600)


def test_a_reader_keeps_what_it_read_for_its_life(journal: SovereignJournal) -> None:
    """Nodes are cached for the life of the reader (one proof): what it read before a clear it
    still answers — the old log's — and only what it must read again is refused."""
    _fill(journal, 600, "old")
    want = Expected(journal)
    reader, _ = journal.tile_sources()
    assert reader.root(600) == want.root(600) and reader.node(0, 5) == want.leaves[5]
    journal.clear_all()
    _fill(journal, 700, "new")
    assert reader.root(600) == want.root(600)  # (read: the stored hash of 0…511, the leaves 512…599)
    assert reader.node(0, 5) == want.leaves[5] and reader.node(0, 520) == want.leaves[520]
    assert reader.node(9, 0) == want.node(9, 0)
    with pytest.raises(JournalError, match="was cleared while its tree was being read"):
        reader.node(0, 300)  # a tile not read before


def test_the_log_is_checked_by_its_epoch_and_its_first_seq(journal: SovereignJournal,
                                                           storage: Storage) -> None:
    _fill(journal, 300)
    head = storage.tree_head()
    message = (f"the journal at {storage.location} was cleared while its tree was being read (a new log "
               "began); read again")
    for other in (TreeHead(head.size, head.root, head.first_seq, head.epoch + 1),
                  TreeHead(head.size, head.root, head.first_seq + 1, head.epoch)):
        reader = TreeReader(storage, other)
        with pytest.raises(JournalError) as info:
            reader.check_same_log()
        assert str(info.value) == message
        with pytest.raises(JournalError):
            reader.node(8, 0)
    TreeReader(storage, head).check_same_log()


def test_archived_leaves_come_from_the_archive_and_are_refused_without_it(journal: SovereignJournal,
                                                                          tmp_path: Path) -> None:
    _fill(journal, 7, "old")
    journal.clear_all()
    _fill(journal, 599)
    want = Expected(journal)
    arch = tmp_path / "archive"
    journal.archive(arch, keep_last=0)  # two whole bundles: leaves 0…511 (seq 7…518)
    moved = tmp_path / "moved"
    arch.rename(moved)  # the store records the archive's old place: archived leaves cannot be read
    plain, _ = journal.tile_sources()
    for index in (0, 255, 256, 511):  # (the error names every archived entry)
        with pytest.raises(StorageError) as info:
            plain.node(0, index)
        assert str(info.value) == (f"entries 7…518 of the journal at {journal.path} are in "
                                   f"its archive at {arch}, which cannot be read: there is no archive at "
                                   f"{arch}; if the archive moved, record its new place: krepis archive "
                                   "--set-dir DIR (journal.set_archive_dir(DIR)); --live-only "
                                   "(live_only=True) reads the live store alone")
    assert plain.node(0, 512) == want.leaves[512] and plain.node(0, 599) == want.leaves[599]
    assert plain.node(8, 1) == want.node(8, 1)  # a stored hash: no leaf needed
    assert plain.root(512) == want.root(512) and plain.root(600) == want.root(600)
    with_archive, _ = journal.tile_sources(moved)
    for index in (0, 1, 255, 256, 300, 511, 512, 599):
        assert with_archive.node(0, index) == want.leaves[index]
    for size in (1, 255, 257, 511, 513, 600):
        assert with_archive.root(size) == want.root(size)
    proof = with_archive.inclusion(7 + 300, 301)
    assert verify_inclusion(proof.leaf_hash, 300, 301, proof.path, want.root(301))


def test_archived_leaves_read_after_a_clear_are_an_error(journal: SovereignJournal, tmp_path: Path) -> None:
    _fill(journal, 600)
    arch = tmp_path / "archive"
    journal.archive(arch, keep_last=0)
    reader, _ = journal.tile_sources(arch)
    journal.clear_all()
    with pytest.raises(JournalError, match="was cleared while its tree was being read"):
        reader.node(0, 3)
    # the same after a read that found where the live entries begin (before the clear)
    _fill(journal, 600)
    want = Expected(journal)
    journal.archive(arch, keep_last=0)
    reader, _ = journal.tile_sources(arch)
    assert reader.node(0, 599) == want.leaves[599]
    journal.clear_all()
    with pytest.raises(JournalError, match="was cleared while its tree was being read"):
        reader.node(0, 3)


def test_archived_leaves_without_an_archive_are_refused_naming_their_entries(journal: SovereignJournal,
                                                                             tmp_path: Path) -> None:
    """A reader given no archive (as a backup's check reads a store): the archived tile a leaf is
    in is named by the seq numbers of its first and last entries, from the log's first seq."""
    _fill(journal, 7, "old")
    journal.clear_all()
    _fill(journal, 599)
    journal.archive(tmp_path / "archive", keep_last=0)  # leaves 0…511 (seq 7…518)
    want = Expected(journal)
    storage = open_storage(journal.path)
    try:
        reader = TreeReader(storage, storage.tree_head())
        for index, (first, last) in ((0, (7, 262)), (255, (7, 262)), (256, (263, 518)), (511, (263, 518))):
            with pytest.raises(ValidationError) as info:
                reader.node(0, index)
            assert str(info.value) == (f"entries {first}…{last} of the journal at {storage.location} are "
                                       "archived: pass the archive directory (archive=DIR, --archive DIR)")
        assert reader.node(0, 512) == want.leaves[512]
    finally:
        storage.close()
