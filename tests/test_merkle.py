"""RFC 6962 / 9162 hashing and proofs: known answers from the RFC's test data, and properties
for every size up to a few thousand."""

from __future__ import annotations

import random
from hashlib import sha256

import pytest

from krepis.tlog._merkle import (
    append_leaf,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_frontier,
    verify_consistency,
    verify_inclusion,
)

from storage_conformance import mth

# The leaves of the RFC 6962 reference test data (certificate-transparency's merkle tests)
LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, audit path)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def nodes_of(data: list[bytes]):  # type: ignore[no-untyped-def]
    def node(level: int, index: int) -> bytes:
        return mth(data[index << level:(index + 1) << level])
    return node


def test_roots_match_the_reference_vectors() -> None:
    assert root_from_frontier([]) == sha256(b"").digest()
    frontier: list[bytes] = []
    size = 0
    for n, leaf in enumerate(LEAVES, start=1):
        size = append_leaf(frontier, size, leaf_hash(leaf))
        assert root_from_frontier(frontier).hex() == ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size", "path"), INCLUSION)
def test_inclusion_proofs_match_the_reference_vectors(index: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof(nodes_of(LEAVES), index, size)
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(ROOTS[size - 1])
    assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, root)
    assert not verify_inclusion(leaf_hash(LEAVES[index] + b"x"), index, size, proof, root)


@pytest.mark.parametrize(("old", "new", "path"), CONSISTENCY)
def test_consistency_proofs_match_the_reference_vectors(old: int, new: int, path: list[str]) -> None:
    proof = consistency_proof(nodes_of(LEAVES), old, new)
    assert [p.hex() for p in proof] == path
    assert verify_consistency(old, new, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1]), proof)


def test_every_proof_up_to_a_few_thousand_leaves_verifies_and_no_wrong_one_does() -> None:
    rnd = random.Random(9162)
    data = [i.to_bytes(2, "big") + rnd.randbytes(rnd.randrange(0, 40)) for i in range(3000)]
    frontier: list[bytes] = []
    roots = [root_from_frontier(frontier)]
    for leaf in data:
        append_leaf(frontier, len(roots) - 1, leaf_hash(leaf))
        roots.append(root_from_frontier(frontier))
    cache: dict[tuple[int, int], bytes] = {}

    def node(level: int, index: int) -> bytes:
        key = (level, index)
        if key not in cache:
            cache[key] = leaf_hash(data[index]) if level == 0 else \
                sha256(b"\x01" + node(level - 1, 2 * index) + node(level - 1, 2 * index + 1)).digest()
        return cache[key]

    assert roots[3000] == mth(data)
    sizes = [*range(1, 70), 127, 128, 129, 255, 256, 257, 1000, 2047, 2048, 2049, 3000]
    for n in sizes:
        for i in (range(n) if n < 70 else rnd.sample(range(n), 40)):
            proof = inclusion_proof(node, i, n)
            assert verify_inclusion(leaf_hash(data[i]), i, n, proof, roots[n])
            assert not verify_inclusion(leaf_hash(data[i]), (i + 1) % n, n, proof, roots[n]) or n == 1
            if proof:
                assert not verify_inclusion(leaf_hash(data[i]), i, n, proof[:-1], roots[n])
                bent = [*proof[:-1], bytes(32)]
                assert not verify_inclusion(leaf_hash(data[i]), i, n, bent, roots[n])
        for m in (range(n + 1) if n < 70 else rnd.sample(range(n + 1), 40)):
            proof = consistency_proof(node, m, n)
            assert verify_consistency(m, n, roots[m], roots[n], proof)
            if 0 < m < n:
                assert not verify_consistency(m, n, roots[m - 1], roots[n], proof)
                assert not verify_consistency(m, n, roots[m], roots[n - 1], proof)
                assert not verify_consistency(m, n, roots[m], roots[n], proof[:-1])


def test_proofs_refuse_impossible_positions() -> None:
    node = nodes_of(LEAVES)
    with pytest.raises(ValueError, match="not in a tree of size 8"):
        inclusion_proof(node, 8, 8)
    with pytest.raises(ValueError, match="from size 9 to size 8"):
        consistency_proof(node, 9, 8)
    assert not verify_consistency(9, 8, b"", b"", [])


def test_frontier_levels_and_the_checker_name_what_differs() -> None:
    from krepis.tlog._merkle import TreeChecker, frontier_levels, range_hash, root_from_inclusion

    assert frontier_levels(0) == [] and frontier_levels(1) == [0]
    assert frontier_levels(13) == [3, 2, 0] and frontier_levels(256) == [8]
    with pytest.raises(ValueError, match="empty range 3…3"):
        range_hash(nodes_of(LEAVES), 3, 3)
    with pytest.raises(ValueError, match="leaf 8 is not in a tree of size 8"):
        root_from_inclusion(leaf_hash(b""), 8, 8, [])
    with pytest.raises(ValueError, match="the inclusion proof is too short"):
        root_from_inclusion(leaf_hash(b""), 0, 8, [])
    with pytest.raises(ValueError, match="the inclusion proof is too long"):
        root_from_inclusion(leaf_hash(b""), 0, 2, [bytes(32)] * 2)

    data = [b"%d" % i for i in range(300)]

    def good_node(level: int, i: int) -> bytes:
        return mth(data[i << level:(i + 1) << level])

    # a stored tile hash that differs, or is missing: named by its entries, offset by the
    # log's first seq
    bad = TreeChecker(lambda level, i: bytes(32), 1000)
    with pytest.raises(ValueError, match=r"entries 1000…1255 \(height 8\) does not match"):
        for d in data:
            bad.add(d)
    missing = TreeChecker(lambda level, i: None, 1000)
    with pytest.raises(ValueError, match=r"entries 1000…1255 \(height 8\) is missing"):
        for d in data:
            missing.add(d)
    # a frontier that differs: named by the subtree it covers
    checker = TreeChecker(good_node, 1000)
    for d in data:
        checker.add(d)
    assert checker.nodes == 1
    assert checker.finish(list(checker.frontier)) == mth(data)
    for k, level in enumerate(frontier_levels(300)):  # 300 = 256 + 32 + 8 + 4
        broken = list(checker.frontier)
        broken[k] = bytes(32)
        first = 1000 + (300 >> (level + 1) << (level + 1))
        with pytest.raises(ValueError, match=rf"does not match entries {first}…{first + (1 << level) - 1}$"):
            checker.finish(broken)
    with pytest.raises(ValueError, match="the stored tree head has 3 subtrees; the 300 entries make 4"):
        checker.finish(list(checker.frontier)[:3])


def test_consistency_refuses_a_proof_with_one_hash_too_many_or_for_equal_sizes() -> None:
    root = bytes.fromhex(ROOTS[4])
    assert verify_consistency(5, 5, root, root, [])
    assert not verify_consistency(5, 5, root, root, [bytes(32)])  # equal sizes take no proof
    proof = consistency_proof(nodes_of(LEAVES), 3, 8)
    assert verify_consistency(3, 8, bytes.fromhex(ROOTS[2]), bytes.fromhex(ROOTS[7]), proof)
    assert not verify_consistency(3, 8, bytes.fromhex(ROOTS[2]), bytes.fromhex(ROOTS[7]), [*proof, bytes(32)])


def test_the_checker_counts_entries_from_zero_by_default() -> None:
    from krepis.tlog._merkle import TreeChecker

    checker = TreeChecker(lambda level, i: None)
    with pytest.raises(ValueError, match=r"entries 0…255 \(height 8\) is missing"):
        for i in range(256):
            checker.add(b"%d" % i)
