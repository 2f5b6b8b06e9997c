"""Archiving (``krepis.archive._writer``) step by step: what each refusal says and that it
changes nothing, what a run chooses to move, the files and manifest it writes, the read-back
before any removal, the completion of a crashed run, and which stray files it removes."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import krepis.archive._writer as writer
from archivekit import (
    FIRST1,
    LOG0_SEG,
    LOG1_SEG0,
    LOG1_SEG1,
    MANIFEST,
    Built,
    built,
    edit_manifest,
    manifest_of,
)
from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis._model import encode_log
from krepis.archive import ArchiveReader, ArchiveReport, archive_store
from krepis.storage import Storage, WriteRequest
from logtools import flip_last
from test_archive import fill_fast, realistic
from test_archive_safety import seal

__all__ = ["built"]


def run(storage: Storage, arch: Path, *, keep_last: int | None = 0, before: int | None = None,
        durable: bool = False, max_bundles: int | None = None, min_bundles: int = 1,
        on_step: Callable[[str], None] | None = None) -> ArchiveReport:
    return archive_store(storage, arch, durable=durable, before=before, keep_last=keep_last,
                         max_bundles=max_bundles, min_bundles=min_bundles, on_step=on_step)


def files(arch: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(arch.iterdir()) if p.name != ".lock"}


def store_of(tmp_path: Path, n: int, seed: int = 1,
             name: str = "s") -> tuple[SovereignJournal, list[TransactionLog]]:
    journal = SovereignJournal(tmp_path / name, flush="interval:20ms")
    fill_fast(journal, realistic(n, seed=seed))
    return journal, journal.query(order="append", newest_first=False)


def crash_after(step: str) -> Callable[[str], None]:
    def on_step(name: str) -> None:
        if name == step:
            raise KeyboardInterrupt
    return on_step


# -- the report and the files written ---------------------------------------------------------
def test_a_run_reports_what_it_moved_and_writes_the_manifest_the_format_defines(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 5 * 256 + 30)
    with journal:
        storage = journal._live()
        report = run(storage, arch, keep_last=256 + 30 + 10)  # bundles 0-2 (the 4th keeps 10 too many)

        def node(k: int) -> str:
            found = storage.tree_node(8, k)
            assert found is not None
            return found.hex()

        size = (arch / "log000000-000000000000.kseg").stat().st_size
        assert report == ArchiveReport(str(arch), 0, 3 * 256, 3, 1, size, 3 * 256, 3 * 256, False)
        assert report.to_dict()["live_first_seq"] == 3 * 256
        m = manifest_of(arch)
        assert (arch / MANIFEST).read_bytes() == seal(m)
        assert m["store"] == {"location": storage.location} and m["dictionaries"] == {} and m["version"] == 2
        seg_raw = (arch / "log000000-000000000000.kseg").read_bytes()
        offset, length = int.from_bytes(seg_raw[-20:-12], "big"), int.from_bytes(seg_raw[-12:-8], "big")
        assert m["logs"] == [{
            "epoch": 0, "first_seq": 0, "bundles": 3, "last_hash": node(2),
            "segments": [{"file": "log000000-000000000000.kseg", "first_bundle": 0, "bundles": 3,
                          "bytes": size,
                          "sha256": hashlib.sha256(seg_raw).hexdigest(), "dictionary": None,
                          "index_sha256": hashlib.sha256(seg_raw[offset:offset + length]).hexdigest(),
                          "min_ts": min(x.timestamp for x in logs[:768]),
                          "max_ts": max(x.timestamp for x in logs[:768])}]}]
        # the next run continues the same log with a segment of its own
        more = run(storage, arch, keep_last=0)
        size2 = (arch / "log000000-000000000003.kseg").stat().st_size
        assert more == ArchiveReport(str(arch), 0, 2 * 256, 2, 1, size2, 5 * 256, 5 * 256, False)
        m = manifest_of(arch)
        assert [s["first_bundle"] for s in m["logs"][0]["segments"]] == [0, 3]
        assert m["logs"][0]["bundles"] == 5 and m["logs"][0]["last_hash"] == node(4)
        assert run(storage, arch, keep_last=0) == ArchiveReport(str(arch), 0, 0, 0, 0, 0, 5 * 256, 5 * 256,
                                                                False)
        assert journal.query(archive=arch, order="append", newest_first=False) == logs


def test_a_long_run_is_split_into_segments_of_at_most_the_segment_size(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "MAX_SEGMENT_BUNDLES", 2)
    arch = tmp_path / "cold"
    steps: list[str] = []
    journal, logs = store_of(tmp_path, 5 * 256 + 3)
    with journal:
        report = run(journal._live(), arch, on_step=steps.append)
        assert (report.bundles, report.segments, report.entries, report.live_first_seq) == (5, 3, 1280, 1280)
        assert report.bytes == sum((arch / n).stat().st_size for n in files(arch) if n.endswith(".kseg"))
        m = manifest_of(arch)
        assert [(s["first_bundle"], s["bundles"]) for s in m["logs"][0]["segments"]] == [
            (0, 2), (2, 2), (4, 1)]
        assert steps == ["segment", "manifest", "dropped"] * 3
        assert journal.query(archive=arch, order="append", newest_first=False) == logs


def test_max_bundles_limits_a_run(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 5 * 256)
    with journal:
        storage = journal._live()
        assert run(storage, arch, max_bundles=2).bundles == 2
        assert run(storage, arch, max_bundles=2).bundles == 2  # counted from what is archived
        assert run(storage, arch, max_bundles=0).bundles == 0
        assert run(storage, arch, max_bundles=5).bundles == 1


def test_keep_last_keeps_at_least_that_many(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 4 * 256 + 10)
    with journal:
        storage = journal._live()
        assert run(storage, arch, keep_last=4 * 256 + 11).bundles == 0  # (more than there are)
        assert run(storage, arch, keep_last=3 * 256 + 10).bundles == 1
        assert run(storage, arch, keep_last=3 * 256 + 9).bundles == 0  # (255 short of the next bundle)
        assert run(storage, arch, keep_last=2 * 256 + 10).bundles == 1
        assert run(storage, arch, keep_last=None).bundles == 2  # every full bundle
        assert storage.live_first_seq() == 4 * 256


def test_before_moves_only_bundles_entirely_older(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 4 * 256 + 10)
    with journal:
        storage = journal._live()
        newest = [max(x.timestamp for x in logs[256 * k:256 * k + 256]) for k in range(4)]
        assert run(storage, arch, keep_last=None, before=newest[0]).bundles == 0  # (not older: the same)
        assert run(storage, arch, keep_last=None, before=newest[0] + 1).bundles == 1
        assert run(storage, arch, keep_last=None, before=newest[2] + 1).bundles == 2
        assert run(storage, arch, keep_last=None, before=10**15).bundles == 1  # every full one
        assert storage.live_first_seq() == 4 * 256


def test_a_minimum_step_is_counted_from_what_is_archived(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 6 * 256 + 10)
    with journal:
        storage = journal._live()
        newest = [max(x.timestamp for x in logs[256 * k:256 * k + 256]) for k in range(6)]
        assert run(storage, arch, keep_last=None, min_bundles=7).bundles == 0
        assert run(storage, arch, keep_last=None, max_bundles=1, min_bundles=2).bundles == 0
        assert run(storage, arch, keep_last=None, before=newest[1] + 1, min_bundles=3).bundles == 0
        assert run(storage, arch, keep_last=None, before=newest[1], min_bundles=2).bundles == 0
        assert run(storage, arch, keep_last=None, before=newest[1] + 1, min_bundles=2).bundles == 2
        # from bundle 2 on: bundles 2, 3 and 4 are older than this, 5 is not
        assert run(storage, arch, keep_last=None, before=newest[4] + 1, min_bundles=4).bundles == 0
        assert run(storage, arch, keep_last=None, before=newest[4] + 1, min_bundles=3).bundles == 3
        assert run(storage, arch, keep_last=0, min_bundles=2).bundles == 0
        assert run(storage, arch, keep_last=0, min_bundles=1).bundles == 1
        assert run(storage, arch, keep_last=0, min_bundles=0).bundles == 0


# -- refusals ---------------------------------------------------------------------------------
def test_an_archive_holding_a_newer_log_is_refused(built: Built, tmp_path: Path) -> None:
    _store, arch = built.copy(tmp_path)
    journal, _logs = store_of(tmp_path, 300, name="fresh")
    before = files(arch)
    with journal:
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"the archive at {arch} holds log 1, newer than this store's log 0: it is "
                                   "the "
                                   "archive of another store (or of this store before it was restored from a "
                                   "backup)")
        edit_manifest(arch, lambda m: m["logs"].append(
            {"epoch": 4, "first_seq": 9000, "bundles": 0, "last_hash": None, "segments": []}))
        with pytest.raises(ValidationError, match="holds log 4, newer than this store's log 0"):
            journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == 0
    assert {n: v for n, v in files(arch).items() if n != MANIFEST} == {
        n: v for n, v in before.items() if n != MANIFEST}


def test_the_archive_of_another_store_is_refused_for_a_new_log(built: Built, tmp_path: Path) -> None:
    _store, arch = built.copy(tmp_path)
    before = files(arch)
    with SovereignJournal(tmp_path / "other", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(10))
        journal.clear_all()
        journal.clear_all()  # its log 2: the archive holds no log 2
        fill_fast(journal, realistic(300, seed=4))
        location = journal._live().location
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"the archive at {arch} belongs to the store at "
                                   f"{manifest_of(arch)['store']['location']}, not {location}")
        assert journal.live_first_seq() == journal.tree_head().first_seq
    assert files(arch) == before


def test_a_new_log_of_the_same_store_goes_beside_the_earlier_ones(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)

    def here(m: dict[str, Any]) -> None:
        m["store"]["location"] = str(store)

    edit_manifest(arch, here)
    with SovereignJournal(store, flush="interval:20ms") as journal:
        journal.clear_all()
        fill_fast(journal, realistic(300, seed=4))
        first = journal.tree_head().first_seq
        assert journal.archive(arch, keep_last=0).bundles == 1
    m = manifest_of(arch)
    assert [(log["epoch"], log["first_seq"], log["bundles"]) for log in m["logs"]] == [
        (0, 0, 2), (1, FIRST1, 3), (2, first, 1)]


def test_a_log_that_began_elsewhere_is_refused(built: Built, tmp_path: Path) -> None:
    _store, arch = built.copy(tmp_path)
    with SovereignJournal(tmp_path / "other", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(20))
        journal.clear_all()
        fill_fast(journal, realistic(300, seed=4))
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"the archive at {arch} holds another log (log 1 begins at seq {FIRST1} "
                                   "there, "
                                   "at seq 20 in this store)")


def test_a_log_whose_last_archived_bundle_is_not_the_stores_is_refused(built: Built, tmp_path: Path) -> None:
    _store, arch = built.copy(tmp_path)
    before = files(arch)
    with SovereignJournal(tmp_path / "other", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(FIRST1, seed=30))
        journal.clear_all()
        fill_fast(journal, realistic(4 * 256, seed=31))  # other entries where the archive's log 1 is
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"the archive at {arch} is of another store: its bundle 2 does not match "
                                   "this "
                                   "store's Merkle tree")
        assert journal.live_first_seq() == FIRST1
    assert files(arch) == before


def test_an_archive_that_ends_before_the_store_begins_is_refused(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path, record=False)  # (the writer's own check, below the journal's)
    (tmp_path / "new").mkdir(mode=0o700)
    with SovereignJournal(store) as journal:
        with pytest.raises(ValidationError) as info:
            journal.archive(tmp_path / "new", keep_last=0)
        assert str(info.value) == (f"the store's entries before seq {FIRST1 + 768} are not in the archive at "
                                   f"{tmp_path / 'new'} (it ends at seq {FIRST1}): archive into the "
                                   "directory "
                                   "used before")
    assert os.listdir(tmp_path / "new") == [".lock"]


def test_entries_not_matching_the_tree_are_never_archived(tmp_path: Path) -> None:
    """A store whose entry was changed behind its back (the tree still says what was written)."""
    import rawlmdb
    from krepis.storage._codec import encode_value

    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * 256)
    journal.close()
    other = TransactionLog(logs[300].timestamp, logs[300].op_name, "forged", LogStatus.Completed)

    def change(txn: Any, db: Any) -> None:
        txn.put((300).to_bytes(8, "big"), encode_value(other, 0), db=db(b"entries"))

    rawlmdb.edit(tmp_path / "s", change)
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        where = journal._live().location
        assert str(info.value) == (f"storage at {where}: entries 256…511 do not match the stored Merkle "
                                   "hash; "
                                   "nothing was archived from there (run krepis verify)")
        assert info.value.path == where
        assert journal.live_first_seq() == 0  # (bundle 0 would have gone in the same segment)
        assert files(arch) == {}
        assert journal.archive(arch, keep_last=2 * 256).bundles == 1  # what is before it can go
        with pytest.raises(CorruptStorageError, match="entries 256…511 do not match"):
            journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == 256


def test_an_entry_too_long_for_a_bundle_is_named(tmp_path: Path) -> None:
    """(The journal refuses such entries; a store written through its storage port may hold one.)"""
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        logs = realistic(512)
        # (16,000 control characters: 6 bytes each in the canonical JSON)
        logs[300] = TransactionLog(logs[300].timestamp, "op", "big", LogStatus.Failed, error="\x01" * 16_000)
        assert len(encode_log(logs[300])) > 65_535
        storage = journal._live()
        storage.write_batch([WriteRequest([(x, encode_log(x))], [x.op_name.encode()]) for x in logs])
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"entries 256…511 of the store at {storage.location}: an entry's "
                                   "canonical bytes are longer than 65,535 bytes, the most a C2SP entry "
                                   "bundle holds: this bundle cannot be archived")
        assert journal.live_first_seq() == 0 and files(arch) == {}
        assert journal.archive(arch, keep_last=256).bundles == 1
        assert journal.live_first_seq() == 256


def test_entries_missing_from_the_store_are_named(tmp_path: Path) -> None:
    import rawlmdb

    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 3 * 256)
    journal.close()

    def change(txn: Any, db: Any) -> None:
        assert txn.delete((300).to_bytes(8, "big"), db=db(b"entries"))

    rawlmdb.edit(tmp_path / "s", change)
    with SovereignJournal(tmp_path / "s") as journal:
        location = journal._live().location
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == f"storage at {location}: entries 256…511 are not all there"
        assert info.value.path == location
        assert journal.live_first_seq() == 0 and files(arch) == {}


# -- the read-back before removal, and completing a crashed run ---------------------------------
def test_each_step_is_durable_before_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The segment, then the manifest, then the read-back, then the removal and (with an
    interval policy) the sync — each step's outcome in place before the next begins."""
    arch = tmp_path / "cold"
    journal = SovereignJournal(tmp_path / "s")  # (no interval syncer: every sync is the run's)
    fill_fast(journal, realistic(2 * 256))
    events: list[str] = []
    with journal:
        storage = journal._live()
        cls = type(storage)
        for name in ("drop_prefix", "sync"):
            real = getattr(cls, name)
            monkeypatch.setattr(cls, name,
                                lambda self, *a, _n=name, _r=real: (events.append(_n), _r(self, *a))[1])
        real_read = writer.read_manifest
        monkeypatch.setattr(writer, "read_manifest",
                            lambda adir: (events.append("read back"), real_read(adir))[1])
        run(storage, arch, on_step=events.append, durable=False)
        assert events == ["read back", "segment", "manifest", "read back", "drop_prefix", "sync", "dropped"]
        fill_fast(journal, realistic(256, seed=9, start=10**13))
        events.clear()
        run(storage, arch, on_step=events.append, durable=True)
        assert events == ["read back", "segment", "manifest", "read back", "drop_prefix", "dropped"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_run_that_died_after_its_manifest_is_completed(tmp_path: Path, durable: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * 256 + 5)
    with journal:
        storage = journal._live()
        run(storage, arch, keep_last=2 * 256 + 5)
        with pytest.raises(KeyboardInterrupt):
            run(storage, arch, keep_last=5, on_step=crash_after("manifest"))
        assert storage.live_first_seq() == 256
        synced: list[str] = []
        real = type(storage).sync
        monkeypatch.setattr(type(storage), "sync", lambda self: (synced.append("sync"), real(self))[1])
        steps: list[str] = []
        report = run(storage, arch, keep_last=10**6, durable=durable, on_step=steps.append)
        assert report == ArchiveReport(str(arch), 0, 0, 0, 0, 0, 3 * 256, 3 * 256, True)
        assert steps == ["completed"] and synced == ([] if durable else ["sync"])
        assert journal.query(archive=arch, order="append", newest_first=False) == logs
        assert run(storage, arch, keep_last=10**6).completed_previous is False


def test_a_crashed_run_is_completed_only_if_the_store_still_holds_what_the_archive_does(
        tmp_path: Path) -> None:
    """The store's entries changed behind its back between the crash and the next run: the
    archive's bundle (checked against the tree) is not the store's, so nothing is removed."""
    import rawlmdb
    from krepis.storage._codec import encode_value

    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * 256)
    with journal:
        run(journal._live(), arch, keep_last=2 * 256)
        with pytest.raises(KeyboardInterrupt):
            run(journal._live(), arch, keep_last=0, on_step=crash_after("manifest"))
    forged = TransactionLog(logs[600].timestamp, logs[600].op_name, "forged", LogStatus.Completed)
    rawlmdb.edit(tmp_path / "s", lambda txn, db: txn.put((600).to_bytes(8, "big"), encode_value(forged, 0),
                                                          db=db(b"entries")))
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        seg = arch / "log000000-000000000001.kseg"
        assert str(info.value) == (f"archive segment {seg}: bundle 2 does not hold the store's entries 512…: "
                                   "nothing was removed from the store")
        assert info.value.path == str(seg)
        assert journal.live_first_seq() == 256


def test_completing_a_crashed_run_of_a_log_not_beginning_at_seq_0_checks_its_bundles(
        tmp_path: Path) -> None:
    """The bundles the completion checks are counted from the log's first seq: in a log that
    begins at seq 300 (after ``clear_all``), a store entry changed behind the archive's back in
    a bundle the crashed run archived is still found, and nothing is removed."""
    import rawlmdb
    from krepis.storage._codec import encode_value

    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 300)
    with journal:
        journal.clear_all()
        first = journal.tree_head().first_seq
        assert first == 300
        fill_fast(journal, realistic(3 * 256, seed=2))
        logs = journal.query(order="append", newest_first=False)
        run(journal._live(), arch, keep_last=2 * 256)
        with pytest.raises(KeyboardInterrupt):
            run(journal._live(), arch, keep_last=0, on_step=crash_after("manifest"))
        assert journal.live_first_seq() == first + 256
    at = first + 600
    old = next(x for x in logs if x.seq == at)
    forged = TransactionLog(old.timestamp, old.op_name, "forged", LogStatus.Completed)
    rawlmdb.edit(tmp_path / "s", lambda txn, db: txn.put(at.to_bytes(8, "big"), encode_value(forged, 0),
                                                          db=db(b"entries")))
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        seg = arch / "log000001-000000000001.kseg"
        assert str(info.value) == (f"archive segment {seg}: bundle 2 does not hold the store's entries "
                                   f"{first + 512}…: nothing was removed from the store")
        assert journal.live_first_seq() == first + 256

def test_a_manifest_replaced_before_the_read_back_removes_nothing(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 3 * 256)
    with journal:
        storage = journal._live()
        run(storage, arch, keep_last=2 * 256)
        older = (arch / MANIFEST).read_bytes()

        def put_back(name: str) -> None:
            if name == "manifest":
                (arch / MANIFEST).write_bytes(older)

        with pytest.raises(CorruptStorageError) as info:
            run(storage, arch, on_step=put_back)
        assert str(info.value) == (f"{arch / MANIFEST} does not name bundles 1…2 of log 0, which it should "
                                   "hold "
                                   "by now: nothing was removed from the store")
        assert info.value.path == str(arch / MANIFEST)
        assert storage.live_first_seq() == 256

        def forge(name: str) -> None:
            if name == "manifest":
                edit_manifest(arch, lambda m: m["logs"][0].update(last_hash="00" * 32))

        (arch / MANIFEST).write_bytes(older)
        for stray in arch.glob("log*-000000000001.kseg"):
            stray.unlink()
        with pytest.raises(CorruptStorageError) as info:
            run(storage, arch, on_step=forge)
        assert str(info.value) == (f"{arch / MANIFEST}: the last archived bundle (2) does not match the "
                                   "store's "
                                   "Merkle tree: nothing was removed from the store")
        assert info.value.path == str(arch / MANIFEST)
        assert storage.live_first_seq() == 256


def test_a_manifest_naming_another_log_at_the_read_back_removes_nothing(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 2 * 256)
    with journal:
        storage = journal._live()

        def other_first(name: str) -> None:
            if name == "manifest":
                edit_manifest(arch, lambda m: m["logs"][0].update(first_seq=256))

        with pytest.raises(CorruptStorageError, match="does not name bundles 0…1 of log 0"):
            run(storage, arch, on_step=other_first)
        assert storage.live_first_seq() == 0


# -- the dictionary -------------------------------------------------------------------------------
def test_a_dictionary_is_trained_once_enough_entries_are_due(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 2)
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * 256 + 7)
    with journal:
        storage = journal._live()
        steps: list[str] = []
        run(storage, arch, keep_last=None, max_bundles=1, on_step=steps.append)
        assert steps == ["dictionary", "segment", "manifest", "dropped"]
        (name,) = [n for n in files(arch) if n.startswith("dict-")]
        raw = (arch / name).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        assert name == f"dict-{digest[:16]}.zdict" and raw.startswith(b"\x37\xa4\x30\xec")
        meta = manifest_of(arch)["dictionaries"][digest[:16]]
        assert {k: meta[k] for k in ("file", "sha256", "bytes", "samples")} == {
            "file": name, "sha256": digest, "bytes": len(raw), "samples": 3 * 256 + 7}
        assert abs(meta["created"] - __import__("time").time()) < 60
        assert manifest_of(arch)["logs"][0]["segments"][0]["dictionary"] == digest[:16]
        steps.clear()
        run(storage, arch, keep_last=None, on_step=steps.append)  # the same dictionary again
        assert steps == ["segment", "manifest", "dropped"] and len(manifest_of(arch)["dictionaries"]) == 1
        assert manifest_of(arch)["logs"][0]["segments"][1]["dictionary"] == digest[:16]
        assert journal.query(archive=arch, order="append", newest_first=False) == logs


def test_the_dictionary_samples_the_oldest_live_entries(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 2)
    monkeypatch.setattr(writer, "WIDTH", 256)
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 5 * 256)
    with journal:
        storage = journal._live()
        monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 100)  # too few for one: none
        run(storage, arch, keep_last=None, max_bundles=1)
        assert manifest_of(arch)["dictionaries"] == {}
        monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 4)  # 4 × 256 live entries from seq 256: enough
        run(storage, arch, keep_last=None, max_bundles=1)
        (meta,) = manifest_of(arch)["dictionaries"].values()
        assert meta["samples"] == 4 * 256
        used = [s["dictionary"] for s in manifest_of(arch)["logs"][0]["segments"]]
        assert used == [None, meta["file"][5:21]]


def test_no_dictionary_when_training_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zstandard

    monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 2)
    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * 256)
    with journal:
        def fail(*args: object) -> None:
            raise zstandard.ZstdError("cannot train dict: Src size is incorrect")

        monkeypatch.setattr(zstandard, "train_dictionary", fail)
        run(journal._live(), arch, max_bundles=1)
        assert manifest_of(arch)["dictionaries"] == {} and not list(arch.glob("dict-*"))
        monkeypatch.undo()
        monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 2)
        assert run(journal._live(), arch).bundles == 2
        assert len(manifest_of(arch)["dictionaries"]) == 1
        assert journal.query(archive=arch, order="append", newest_first=False) == logs


def test_no_dictionary_from_entries_too_long_for_a_sample(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """(An entry too long for a bundle among the sampled ones: frames without a dictionary.)"""
    monkeypatch.setattr(writer, "DICT_MIN_BUNDLES", 2)
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        logs = realistic(3 * 256)
        logs[600] = TransactionLog(logs[600].timestamp, "op", "big", LogStatus.Failed, error="\x01" * 16_000)
        journal._live().write_batch([WriteRequest([(x, encode_log(x))], [x.op_name.encode()]) for x in logs])
        assert run(journal._live(), arch, max_bundles=2).bundles == 2
        assert manifest_of(arch)["dictionaries"] == {} and not list(arch.glob("dict-*"))


def test_the_newest_dictionary_is_used_and_checked(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    old = built.dictionary[5:21]
    newer = "f" * 16
    (arch / f"dict-{newer}.zdict").write_bytes((arch / built.dictionary).read_bytes())

    def add(m: dict[str, Any]) -> None:
        meta = m["dictionaries"][old]
        m["dictionaries"][newer] = {**meta, "file": f"dict-{newer}.zdict",
                                    "sha256": newer + meta["sha256"][16:],
                                    "created": meta["created"] + 1}

    edit_manifest(arch, add)
    with SovereignJournal(store) as journal:
        with pytest.raises(CorruptStorageError) as info:  # its sha256 was made up
            journal.archive(arch, keep_last=0)
        where = str(arch / f"dict-{newer}.zdict")
        assert str(info.value) == f"archive file {where} does not match its checksum"
        assert info.value.path == where
        edit_manifest(arch, lambda m: m["dictionaries"][newer].update(created=0))  # now the older one
        assert journal.archive(arch, keep_last=0).bundles == 3
        assert manifest_of(arch)["logs"][1]["segments"][-1]["dictionary"] == old


# -- strays and foreign directories ---------------------------------------------------------------
def test_a_directory_holding_other_files_is_refused_naming_five_of_them(tmp_path: Path) -> None:
    arch = tmp_path / "work"
    arch.mkdir(mode=0o700)
    names = [f"note{i}.txt" for i in range(7)]
    for n in names:
        (arch / n).write_bytes(b"mine")
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(300))
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        shown = ", ".join(repr(n) for n in names[:5])
        assert str(info.value) == (f"the directory {arch} is not empty and is not a krepis archive (it has "
                                   "no "
                                   f"{MANIFEST}): it holds {shown} and 2 more. Archive into a new or empty "
                                   "directory; nothing was changed")
        for n in names[5:]:
            (arch / n).unlink()
        with pytest.raises(ValidationError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value).endswith(f"it holds {shown}. Archive into a new or empty directory; nothing "
                                        "was "
                                        "changed")
        (arch / names[0]).unlink()
        with pytest.raises(ValidationError, match=f"it holds {', '.join(repr(n) for n in names[1:5])}\\. "
                                                  "Archive"):
            journal.archive(arch, keep_last=0)
    assert sorted(os.listdir(arch)) == names[1:5]


def _crashed_before_its_manifest(tmp_path: Path) -> tuple[SovereignJournal, Path]:
    """A store whose first run died after writing its dictionary and segment (no manifest)."""
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 3 * 256)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "DICT_MIN_BUNDLES", 2)
        with pytest.raises(KeyboardInterrupt):
            run(journal._live(), arch, keep_last=256, on_step=crash_after("segment"))
    return journal, arch


def test_what_a_crashed_first_run_left_is_taken_up(tmp_path: Path) -> None:
    journal, arch = _crashed_before_its_manifest(tmp_path)
    with journal:
        left = sorted(files(arch))
        assert left[0].startswith("dict-") and left[1:] == ["log000000-000000000000.kseg"]
        (arch / ".tmp-MANIFEST.json.0123456789abcdef").write_bytes(b"{")
        (arch / ".tmp-log000000-000000000000.kseg").write_bytes(b"x")
        report = journal.archive(arch, keep_last=0)
        assert report.bundles == 3 and not report.completed_previous
        assert sorted(files(arch)) == ["MANIFEST.json", "log000000-000000000000.kseg"]


@pytest.mark.parametrize("name,data", [
    ("log000000-000000000000.kseg", None),       # a segment of another store's log 0
    ("log000001-000000000000.kseg", b"copy"),    # of another log than the store's
    ("log00000-000000000000.kseg", b"copy"),     # not the name the format derives
    ("log000000-00000000000.kseg", b"copy"),
    ("log000000-0000000000000.kseg", b"copy"),   # (13 digits: the format's name has 12)
    ("dict-0123456789abcdef.zdict", b"\x37\xa4\x30\xec words"),  # not named by its checksum
    ("dict-0123456789ABCDEF.zdict", b"dict"),
    (".tmp-notes", b"x"), ("notes.txt", b"y"), ("MANIFEST.json.bak", b"{}"),
])
def test_what_is_not_provably_a_crashed_runs_file_is_never_removed(tmp_path: Path, name: str,
                                                                   data: bytes | None) -> None:
    journal, arch = _crashed_before_its_manifest(tmp_path)
    with journal:
        seg = (arch / "log000000-000000000000.kseg").read_bytes()
        if data is None:  # another store's segment of the same name
            with SovereignJournal(tmp_path / "o", flush="interval:20ms") as other:
                fill_fast(other, realistic(3 * 256, seed=44))
                run(other._live(), tmp_path / "ocold")
            data = (tmp_path / "ocold" / name).read_bytes()
            (arch / name).unlink()
        elif name.startswith("log"):
            data = seg
        (arch / name).write_bytes(data)
        with pytest.raises(ValidationError, match=f"it holds {name!r}"):
            journal.archive(arch, keep_last=0)
        assert (arch / name).read_bytes() == data


def test_a_segment_past_the_archive_is_a_stray_only_if_it_matches_the_tree(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 4 * 256)
    with journal:
        storage = journal._live()
        run(storage, arch, keep_last=3 * 256)
        with pytest.raises(KeyboardInterrupt):
            run(storage, arch, keep_last=2 * 256, on_step=crash_after("segment"))
        stray = arch / "log000000-000000000001.kseg"
        assert stray.exists()
        ours = stray.read_bytes()
        # a copy of it under the name of bundle 0 (which the archive holds): not a stray
        os.rename(arch / "log000000-000000000000.kseg", tmp_path / "seg0")
        (arch / "log000000-000000000000.kseg").write_bytes((tmp_path / "seg0").read_bytes())
        before = files(arch)
        run(storage, arch, keep_last=2 * 256)  # removes the stray, writes bundle 1 again
        assert (arch / "log000000-000000000000.kseg").read_bytes() == before["log000000-000000000000.kseg"]
        assert stray.read_bytes() == ours  # (written again: the same bytes)
        assert storage.live_first_seq() == 2 * 256


def test_files_a_crashed_run_left_are_removed_and_the_removal_synced(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 4 * 256)
    with journal:
        storage = journal._live()
        run(storage, arch, keep_last=3 * 256)
        (arch / ".tmp-MANIFEST.json.0123456789abcdef").write_bytes(b"{")
        synced: list[str] = []
        from krepis.archive._files import ArchiveDir

        real = ArchiveDir.fsync
        monkeypatch.setattr(ArchiveDir, "fsync", lambda self: (synced.append("dir"), real(self))[1])
        run(storage, arch, keep_last=4 * 256)  # nothing due: only the stray goes
        assert synced == ["dir"] and not (arch / ".tmp-MANIFEST.json.0123456789abcdef").exists()
        synced.clear()
        run(storage, arch, keep_last=4 * 256)  # nothing to remove: no sync
        assert synced == []


def test_a_stray_that_is_not_a_regular_file_is_left(tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    journal, _logs = store_of(tmp_path, 2 * 256)
    with journal:
        storage = journal._live()
        run(storage, arch, keep_last=256)
        os.mkdir(arch / ".tmp-MANIFEST.json.0123456789abcdef")
        os.symlink(tmp_path / "nowhere", arch / ".tmp-log000000-000000000001.kseg")
        run(storage, arch, keep_last=0)
        assert (arch / ".tmp-MANIFEST.json.0123456789abcdef").is_dir()
        assert (arch / ".tmp-log000000-000000000001.kseg").is_symlink()
    empty = tmp_path / "e"
    empty.mkdir(mode=0o700)
    os.mkdir(empty / ".tmp-MANIFEST.json")
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(ValidationError, match=r"it holds '\.tmp-MANIFEST\.json'"):
            journal.archive(empty, keep_last=0)


def test_a_damaged_stray_segment_is_left_and_refused(tmp_path: Path) -> None:
    journal, arch = _crashed_before_its_manifest(tmp_path)
    with journal:
        seg = arch / "log000000-000000000000.kseg"
        raw = bytearray(seg.read_bytes())
        raw[-1] ^= 1  # its trailer
        seg.write_bytes(bytes(raw))
        with pytest.raises(ValidationError, match=f"it holds {seg.name!r}"):
            journal.archive(arch, keep_last=0)
        assert seg.read_bytes() == bytes(raw)


def test_a_format_1_archive_is_made_format_2_before_more_is_written(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    data = manifest_of(arch)
    data["version"] = 1
    del data["checksum"]
    want = {s["file"]: s["index_sha256"] for log in data["logs"] for s in log["segments"]}
    for log in data["logs"]:
        for seg in log["segments"]:
            del seg["index_sha256"]
    (arch / MANIFEST).write_bytes(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=10**6).bundles == 0  # nothing written: still format 1
        assert manifest_of(arch)["version"] == 1
        assert journal.archive(arch, keep_last=0).bundles == 3
    m = manifest_of(arch)
    assert m["version"] == 2
    assert {s["file"]: s["index_sha256"] for log in m["logs"] for s in log["segments"]
            if s["file"] in want} == want
    assert [s["file"] for s in m["logs"][0]["segments"]] == [LOG0_SEG]
    assert [s["file"] for s in m["logs"][1]["segments"]][:2] == [LOG1_SEG0, LOG1_SEG1]


def test_a_format_1_segment_not_matching_its_checksum_stops_its_conversion(built: Built,
                                                                           tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    data = manifest_of(arch)
    data["version"] = 1
    for log in data["logs"]:
        for seg in log["segments"]:
            del seg["index_sha256"]
    data["logs"][0]["segments"][0]["sha256"] = "00" * 32
    (arch / MANIFEST).write_bytes(seal(data, sealed=False))
    before = files(arch)
    with SovereignJournal(store) as journal:
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == f"archive file {arch / LOG0_SEG} does not match its checksum"
        assert journal.live_first_seq() == FIRST1 + 768
    assert {n: v for n, v in files(arch).items() if not n.startswith("log000001-000000000003")} == before


def test_a_run_with_nothing_due_reads_no_dictionary(built: Built, tmp_path: Path) -> None:
    """The dictionary is read (and checked) only by a run that writes a segment: with nothing
    due — the archive already holding every whole bundle, or the store keeping more — a damaged
    dictionary file is not touched and the run reports nothing moved; the next run that writes
    refuses it, naming the file."""
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=0).bundles == 3  # every whole bundle archived
        dictionary = arch / built.dictionary
        dictionary.write_bytes(flip_last(dictionary.read_bytes()))
        before = files(arch)
        assert journal.archive(arch, keep_last=0).bundles == 0  # (bundle == target)
        assert journal.archive(arch, keep_last=10**6).bundles == 0  # (target below it)
        assert files(arch) == before
        fill_fast(journal, realistic(256, seed=3, start=2 * 10**12))
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == f"archive file {dictionary} does not match its checksum"


def test_a_run_on_a_format_2_archive_does_not_read_its_old_segments_again(built: Built,
                                                                         tmp_path: Path) -> None:
    """Only a format-1 archive has its old segments read when more is written (to give each its
    index checksum): in format 2 a run reads the manifest, the dictionary and what it writes,
    never every old segment — their whole-file checksums are verify's to check."""
    store, arch = built.copy(tmp_path)
    edit_manifest(arch, lambda m: m["logs"][0]["segments"][0].update(sha256="0" * 64))
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=0).bundles == 3
    assert manifest_of(arch)["logs"][0]["segments"][0]["sha256"] == "0" * 64


def test_reading_the_archive_with_the_reader(built: Built, tmp_path: Path) -> None:
    """(The reader sees what a run wrote: its own checks of the files pass.)"""
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store) as journal:
        journal.archive(arch, keep_last=0)
        storage = journal._live()
        r = ArchiveReader(arch, 1, FIRST1, lambda k: storage.tree_node(8, k))
        assert r.bundles == 6 and r.leaf_data(0, 6 * 256) == [encode_log(x) for x in built.log1[:6 * 256]]
