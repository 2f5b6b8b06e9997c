"""The journal as a verifiable log: roots of any earlier size, inclusion and consistency proofs
read from a real store (LMDB and PostgreSQL), checked with the public verifier functions."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from krepis import AsyncSovereignJournal, LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis.tlog import leaf_hash, verify_consistency, verify_inclusion
from krepis.tlog._note import generate_signer

from storage_conformance import mth


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("pg_url"))


def _fill(journal: SovereignJournal, n: int, start: int = 0) -> list[bytes]:
    data = []
    for i in range(start, start + n):
        log = TransactionLog(1000 - i % 17, f"op{i % 5}", f"r{i}", LogStatus.Completed, duration_us=i)
        journal.log_transaction(log)
        data.append(log.to_json().encode())
    return data


def test_roots_and_proofs_of_every_kind_verify(location: str) -> None:
    rnd = random.Random(5)
    with SovereignJournal(location, flush="interval:50ms") as journal:
        data = _fill(journal, 600)
        n = journal.tree_head().size
        assert n == 600
        roots = {m: mth(data[:m]) for m in (0, 1, 2, 3, 255, 256, 257, 300, 511, 512, 513, 599, 600)}
        for m, root in roots.items():
            assert journal.tree_root(m) == root
        assert journal.tree_root() == journal.tree_head().root == roots[600]
        for seq in [0, 1, 255, 256, 511, 512, 599, *rnd.sample(range(600), 10)]:
            for size in {600, seq + 1, 513}:
                if seq >= size:
                    continue
                proof = journal.inclusion_proof(seq, tree_size=size)
                assert proof.leaf_hash == leaf_hash(data[seq])
                assert proof.root == mth(data[:size])
                assert verify_inclusion(leaf_hash(data[seq]), proof.index, size, proof.path, proof.root)
                assert not verify_inclusion(leaf_hash(data[seq] + b" "), proof.index, size, proof.path,
                                            proof.root)
        for old in [0, 1, 7, 255, 256, 257, 512, 599, 600]:
            proof = journal.consistency_proof(old)
            assert (proof.old_root, proof.new_root) == (mth(data[:old]), roots[600])
            assert verify_consistency(old, 600, proof.old_root, proof.new_root, proof.path)
        with pytest.raises(ValidationError, match="entry 600 is not in the tree of size 600"):
            journal.inclusion_proof(600)
        with pytest.raises(ValidationError, match="tree_size must be an int in 0 … 600"):
            journal.inclusion_proof(3, tree_size=601)
        with pytest.raises(ValidationError, match="old_size must be in 0 … 600, got 601"):
            journal.consistency_proof(601)


def test_a_checkpoint_before_more_writes_stays_provable(location: str) -> None:
    """A verifier who saw an old tree head can check the new one extends it."""
    with SovereignJournal(location) as journal:
        _fill(journal, 40)
        old = journal.tree_head()
        more = _fill(journal, 300, start=40)
        proof = journal.consistency_proof(old.size)
        assert proof.old_root == old.root
        assert verify_consistency(old.size, 340, old.root, journal.tree_head().root, proof.path)
        last = journal.inclusion_proof(339)
        assert verify_inclusion(leaf_hash(more[-1]), 339, 340, last.path, journal.tree_head().root)


def test_after_a_clear_the_new_log_starts_at_the_next_seq(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        _fill(journal, 10)
        journal.clear_all()  # the new log begins with the trace of the clear, seq 10
        data = _fill(journal, 3, start=10)
        head = journal.tree_head()
        assert (head.size, head.first_seq, head.epoch) == (4, 10, 1)
        assert journal.entry(10).op_name == "journal_cleared"
        proof = journal.inclusion_proof(12)
        assert proof.index == 2
        assert verify_inclusion(leaf_hash(data[1]), 2, 4, proof.path, head.root)
        with pytest.raises(ValidationError, match=r"entry 5 is not in the tree .* entries 10…13"):
            journal.inclusion_proof(5)


def test_the_async_journal_offers_the_same(tmp_path: Path) -> None:
    asyncio.run(_async_checks(tmp_path))


async def _async_checks(tmp_path: Path) -> None:
    async with AsyncSovereignJournal(tmp_path / "s") as journal:
        await journal.log_transaction(TransactionLog(1, "a", "r", LogStatus.Started))
        await journal.log_transaction(TransactionLog(2, "a", "r", LogStatus.Completed))
        head = await journal.tree_head()
        proof = await journal.inclusion_proof(1)
        assert verify_inclusion(proof.leaf_hash, 1, 2, proof.path, head.root)
        assert (await journal.consistency_proof(1)).new_root == head.root
        assert (await journal.verify()).entries == 2
        assert (await journal.entry(0)).status is LogStatus.Started
        note = await journal.sign_checkpoint(generate_signer("example.com/async"))
        assert note.startswith("example.com/async\n2\n") and (await journal.checkpoints()) == [(0, note)]
        assert [e.seq for e in await journal.query(order="append", newest_first=False)] == [0, 1]


def test_tiles_exported_in_process_check_after_a_clear_and_grow_incrementally(tmp_path: Path) -> None:
    """Bundles are read at the right entries (the log begins at seq 7 here, not 0), the export is
    checked from its files alone, and a second export adds to the first."""
    from krepis import InvalidTypeError
    from krepis.tlog._tiles import check_tiles

    signer = generate_signer("example.com/tiles")
    out = tmp_path / "tiles"
    with SovereignJournal(tmp_path / "s") as journal:
        _fill(journal, 6)
        journal.clear_all()  # the new log: the clear's trace (seq 6) and what follows
        _fill(journal, 300, start=6)
        assert journal.latest_checkpoint() is None
        with pytest.raises(ValidationError, match=r"no checkpoint of its current log yet: sign one \(krepis "
                                                  r"checkpoint --key FILE, or pass a signer\)"):
            journal.export_tiles(out)
        with pytest.raises(InvalidTypeError, match="signer must be a Signer or its text, got int"):
            journal.sign_checkpoint(5)  # type: ignore[arg-type]
        first = journal.export_tiles(out, str(signer))  # the key's text works as well
        assert journal.latest_checkpoint() == journal.checkpoints()[-1][1]
        assert journal.latest_checkpoint().startswith("example.com/tiles\n301\n")  # type: ignore[union-attr]
        check = check_tiles(str(out), [signer.verifier()])
        assert check.entries == 301 and check.checkpoint.size == 301
        assert first >= 4  # checkpoint, two entry bundles, hash tiles
        bundle = (out / "tile" / "entries" / "000").read_bytes()
        assert bundle[2:2 + len(journal.entry(6).to_json())] == journal.entry(6).to_json().encode()
        _fill(journal, 300, start=306)
        journal.export_tiles(out, signer)
        assert check_tiles(str(out), [signer.verifier()]).entries == 601
        assert journal.latest_checkpoint().startswith("example.com/tiles\n601\n")  # type: ignore[union-attr]
        assert journal.export_tiles(out) >= 1  # again at the same size, from the kept checkpoint
        marker = out / ".krepis-log"
        assert "size 601\n" in marker.read_text()
        good = marker.read_text()
        marker.write_text("not a marker\n")
        with pytest.raises(ValidationError, match="holds the tiles of another log"):
            journal.export_tiles(out)
        marker.write_text(good)
        journal.clear_all()
        journal.sign_checkpoint(generate_signer("example.com/other"))
        assert journal.latest_checkpoint().startswith("example.com/other\n1\n")  # type: ignore[union-attr]
        with pytest.raises(ValidationError, match=r"holds the tiles of another log, or of another history "
                                                  r"of this one \(see .*\.krepis-log\); export into a new"):
            journal.export_tiles(out)
