"""The tree checker's resume and the tile-height hashes reported while appending, on trees
computed independently by the RFC's recursive definition (``mth``)."""

from __future__ import annotations

from hashlib import sha256

import pytest

from krepis.tlog._merkle import (
    TILE_HEIGHT,
    TreeChecker,
    append_leaf,
    leaf_hash,
    node_hash,
    root_from_frontier,
)

from storage_conformance import mth

DATA = [b"entry %d" % i for i in range(2000)]


def stored(level: int, index: int) -> bytes | None:
    """The correct hash of every tile-height subtree of DATA."""
    return mth(DATA[index << level:(index + 1) << level])


def test_the_hashes_are_the_rfc_prefixes() -> None:
    assert leaf_hash(b"ab") == sha256(b"\x00ab").digest()
    assert node_hash(b"l", b"r") == sha256(b"\x01lr").digest()
    assert root_from_frontier([]) == sha256(b"").digest()


def test_append_reports_each_completed_tile_height_subtree_once_with_its_index() -> None:
    calls: list[tuple[int, int, bytes]] = []
    frontier: list[bytes] = []
    size = 0
    data = [b"%d" % i for i in range(1 << 16)]
    for d in data:
        size = append_leaf(frontier, size, leaf_hash(d), lambda *call: calls.append(call))
    assert size == 1 << 16 and len(frontier) == 1
    expected = [(8, i) for i in range(256)]
    expected.insert(256, (16, 0))
    assert [(level, index) for level, index, _ in calls] == expected
    for level, index, node in calls[:3] + calls[-2:]:
        assert node == mth(data[index << level:(index + 1) << level])
    assert calls[-1][2] == frontier[0] == mth(data)


def test_resume_rebuilds_the_frontier_from_the_stored_tile_hashes() -> None:
    for size in (0, 256, 512, 768, 1024, 1792):  # 1792: subtrees of 1024, 512 and 256
        checker = TreeChecker(stored, 1000)
        checker.resume(size)
        assert checker.size == size
        assert root_from_frontier(checker.frontier) == mth(DATA[:size])
        assert checker.nodes == size >> TILE_HEIGHT  # each tile-height hash counted once
        for d in DATA[size:]:
            checker.add(d)
        assert checker.finish(list(checker.frontier)) == mth(DATA)
        assert checker.nodes == len(DATA) >> TILE_HEIGHT


def test_resume_counts_the_hashes_of_every_tile_level() -> None:
    # 65,536 + 256 leaves: 257 hashes at height 8 and 1 at height 16
    big = [b"%d" % i for i in range((1 << 16) + 256)]
    def tile_node(level: int, index: int) -> bytes:
        assert level in (8, 16)
        return mth(big[index << level:(index + 1) << level])

    checker = TreeChecker(tile_node)
    checker.resume(len(big))
    assert checker.nodes == 258
    assert root_from_frontier(checker.frontier) == mth(big)


@pytest.mark.parametrize("size", [100, 255, 257, -256, -1])
def test_resume_refuses_a_size_that_is_not_whole_tiles(size: int) -> None:
    checker = TreeChecker(stored)
    with pytest.raises(ValueError) as caught:
        checker.resume(size)
    assert str(caught.value) == f"a tree can resume only after whole tiles of leaves, not after {size}"
    assert checker.size == 0 and checker.frontier == []


def test_resume_names_the_missing_stored_hash_by_its_entries() -> None:
    def holed(level: int, index: int) -> bytes | None:
        return None if (level, index) == (8, 2) else stored(level, index)

    checker = TreeChecker(holed, 1000)
    with pytest.raises(ValueError) as caught:
        checker.resume(768)
    assert str(caught.value) == "the stored Merkle hash of entries 1512…1767 (height 8) is missing"
    assert checker.size == 0 and checker.frontier == []
    checker = TreeChecker(holed)
    with pytest.raises(ValueError) as caught:
        checker.resume(1024)  # the hash of entries 0…1023 is built from the four tile hashes
    assert str(caught.value) == "the stored Merkle hash of entries 512…767 (height 8) is missing"


def test_a_stored_hash_that_differs_is_named_with_both_ends_of_its_range() -> None:
    def wrong_second(level: int, index: int) -> bytes | None:
        found = stored(level, index)
        assert found is not None
        return sha256(found).digest() if index == 1 else found

    checker = TreeChecker(wrong_second, 7)
    for d in DATA[:256]:
        checker.add(d)
    assert checker.nodes == 1
    with pytest.raises(ValueError) as caught:
        for d in DATA[256:]:
            checker.add(d)
    assert str(caught.value) == ("the stored Merkle hash of entries 263…518 (height 8) "
                                 "does not match the entries")
    assert checker.nodes == 1


def test_an_inclusion_proof_of_the_wrong_length_is_refused_by_its_exact_text() -> None:
    from krepis.tlog._merkle import root_from_inclusion

    for proof, said in (([], "the inclusion proof is too short"),
                        ([bytes(32)] * 2, "the inclusion proof is too long")):
        with pytest.raises(ValueError) as caught:
            root_from_inclusion(leaf_hash(b""), 0, 2, proof)
        assert str(caught.value) == said
