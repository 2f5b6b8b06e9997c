"""More of archiving (``krepis.archive._writer``), found by its mutation run: the progress it
reports, and the checks that must hold at the moment the run holds the archive's lock."""

from __future__ import annotations

from pathlib import Path

import pytest

import krepis.archive._writer as writer
from archivekit import MANIFEST, manifest_of
from krepis import ValidationError
from krepis.archive import archive_store
from krepis.archive._files import ArchiveDir
from krepis.storage import Storage
from test_archive import fill_fast, realistic
from test_archive_writer_units import files, store_of

W = 256


def progress_of(storage: Storage, arch: Path, *, keep_last: int | None,
                before: int | None = None) -> list[tuple[int, int]]:
    calls: list[tuple[int, int]] = []
    archive_store(storage, arch, durable=False, before=before, keep_last=keep_last,
                  progress=lambda done, total: calls.append((done, total)))
    return calls


def test_progress_counts_the_entries_read_against_those_due(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``progress(done, total)`` after each bundle read and compressed, across segments; the
    total is what was due when the run began, and the last call has done == total."""
    monkeypatch.setattr(writer, "MAX_SEGMENT_BUNDLES", 2)
    journal, _logs = store_of(tmp_path, 5 * W + 3)
    with journal:
        storage = journal._live()
        assert progress_of(storage, tmp_path / "cold", keep_last=W + 3) == [
            (W, 4 * W), (2 * W, 4 * W), (3 * W, 4 * W), (4 * W, 4 * W), (4 * W, 4 * W)]
        assert progress_of(storage, tmp_path / "cold", keep_last=W + 3) == [(0, 0)]  # nothing due
        assert progress_of(storage, tmp_path / "cold", keep_last=0) == [(W, W), (W, W)]


def test_progress_of_a_run_stopped_by_a_newer_bundle_ends_at_what_was_done(tmp_path: Path) -> None:
    """With ``before``, the run stops at the first bundle that is not older: the total it began
    with is not reached, and the last call says so (done == total == what was moved)."""
    journal, logs = store_of(tmp_path, 4 * W)
    with journal:
        newest = [max(x.timestamp for x in logs[W * k:W * k + W]) for k in range(4)]
        calls = progress_of(journal._live(), tmp_path / "cold", keep_last=None, before=newest[1] + 1)
        assert calls == [(W, 4 * W), (2 * W, 4 * W), (2 * W, 2 * W)]


def test_a_foreign_file_that_appears_before_the_lock_is_taken_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory is checked again once the run holds the lock (another process may have
    put a file there between the first check and the lock): nothing is written."""
    journal, _logs = store_of(tmp_path, 2 * W)
    arch = tmp_path / "cold"
    real_lock = ArchiveDir.lock

    def lock(self: ArchiveDir) -> object:
        (arch / "theirs.txt").write_bytes(b"x")
        return real_lock(self)

    monkeypatch.setattr(ArchiveDir, "lock", lock)
    with journal:
        with pytest.raises(ValidationError) as info:
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0)
        assert str(info.value) == (f"the directory {arch} is not empty and is not a krepis archive (it "
                                   f"has no {MANIFEST}): it holds 'theirs.txt'. Archive into a new or empty "
                                   "directory; nothing was changed")
        assert files(arch) == {"theirs.txt": b"x"} and journal.live_first_seq() == 0


def test_a_segment_of_bundles_the_archive_already_holds_is_never_a_stray(tmp_path: Path) -> None:
    """A file under a segment's name whose bundles the archive holds already (in a segment of
    another extent) — its hashes the tree's — is not something a crashed run leaves (runs write
    only past the archive's end): it is left where it is."""
    arch, other = tmp_path / "cold", tmp_path / "other"
    journal, _logs = store_of(tmp_path, 3 * W + 10)
    twin, _ = store_of(tmp_path, 3 * W + 10, name="twin")  # the same entries: the same tree
    with journal, twin:
        assert archive_store(journal._live(), arch, durable=False, before=None, keep_last=10).bundles == 3
        archive_store(twin._live(), other, durable=False, before=None, keep_last=2 * W + 10)
        archive_store(twin._live(), other, durable=False, before=None, keep_last=10)
        name = "log000000-000000000001.kseg"  # bundles 1-2, which the archive's first segment holds
        raw = (other / name).read_bytes()
        (arch / name).write_bytes(raw)
        before = files(arch)
        fill_fast(journal, realistic(W, seed=3, start=10**13))
        assert archive_store(journal._live(), arch, durable=False, before=None, keep_last=10).bundles == 1
        assert (arch / name).read_bytes() == raw
        assert {n: v for n, v in files(arch).items() if n in before} == before | {
            MANIFEST: (arch / MANIFEST).read_bytes()}


def test_completing_a_crashed_run_checks_the_archive_against_the_tree_not_only_the_store(
        tmp_path: Path) -> None:
    """The store's entry and the archive's copy of it both changed the same way behind its back
    (the segment's index and the manifest made to match): archive and store agree, but not with
    the Merkle tree, so the crashed run is not completed and nothing is removed."""
    import rawlmdb
    from archivekit import install
    from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog
    from krepis._model import encode_log
    from krepis.archive._format import bundle_hash
    from krepis.storage._codec import encode_value
    from test_archive_reader_units import craft
    from test_archive_writer_units import crash_after

    arch = tmp_path / "cold"
    journal, logs = store_of(tmp_path, 3 * W)
    with journal:
        archive_store(journal._live(), arch, durable=False, before=None, keep_last=2 * W)
        with pytest.raises(KeyboardInterrupt):
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0,
                          on_step=crash_after("manifest"))
    forged = TransactionLog(logs[300].timestamp, logs[300].op_name, "forged", LogStatus.Completed)
    rawlmdb.edit(tmp_path / "s", lambda txn, db: txn.put((300).to_bytes(8, "big"), encode_value(forged, 0),
                                                          db=db(b"entries")))
    data = [[encode_log(x) for x in logs[W * k:W * k + W]] for k in (1, 2)]
    data[0][300 - W] = encode_log(forged)
    stamps = [[x.timestamp for x in logs[W * k:W * k + W]] for k in (1, 2)]
    times = [(min(s), max(s)) for s in stamps]
    name = "log000000-000000000001.kseg"
    install(arch, name, craft(0, 1, data, [bundle_hash(d) for d in data], times), dictionary=None)
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == (f"archive segment {arch / name}: bundle 1 does not match the store's "
                                   "Merkle tree: the segment is damaged (run krepis verify --archive)")
        assert journal.live_first_seq() == W


def test_a_directory_of_six_foreign_files_names_five_and_one_more(tmp_path: Path) -> None:
    arch = tmp_path / "work"
    arch.mkdir(mode=0o700)
    names = [f"note{i}.txt" for i in range(6)]
    for n in names:
        (arch / n).write_bytes(b"mine")
    journal, _logs = store_of(tmp_path, 300)
    with journal:
        with pytest.raises(ValidationError) as info:
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0)
    shown = ", ".join(repr(n) for n in names[:5])
    assert f"it holds {shown} and 1 more. Archive into" in str(info.value)


def test_a_run_longer_than_one_read_of_the_store_and_its_completion(tmp_path: Path) -> None:
    """The entries are read from the store 16 bundles at a time: a run of 18 bundles reads
    twice, in order, both when it writes and when a crashed run of them is completed."""
    from test_archive_writer_units import crash_after

    journal, logs = store_of(tmp_path, 18 * W + 7)
    with journal:
        storage = journal._live()
        with pytest.raises(KeyboardInterrupt):
            archive_store(storage, tmp_path / "cold", durable=False, before=None, keep_last=0,
                          on_step=crash_after("manifest"))
        assert storage.live_first_seq() == 0
        report = archive_store(storage, tmp_path / "cold", durable=False, before=None, keep_last=0)
        assert report.completed_previous and storage.live_first_seq() == 18 * W
        assert journal.query(archive=tmp_path / "cold", order="append", newest_first=False) == logs
        other = tmp_path / "other"
        journal2, logs2 = store_of(tmp_path, 18 * W + 7, seed=5, name="s2")
        with journal2:
            report = archive_store(journal2._live(), other, durable=False, before=None, keep_last=0)
            assert report.bundles == 18
            assert journal2.query(archive=other, order="append", newest_first=False) == logs2


def test_the_dictionary_is_trained_on_the_first_64_live_bundles_in_samples_of_16_entries(
        tmp_path: Path) -> None:
    """(docs/archive.md: ``"samples": 16384``.) The dictionary's bytes are zstd's training on
    the oldest 64 × 256 live entries, cut into samples of 16 entries, each a C2SP bundle."""
    import hashlib

    import zstandard

    from krepis._model import encode_log
    from krepis.archive._format import DICT_SIZE, bundle_of

    journal, logs = store_of(tmp_path, 65 * W + 30)
    with journal:
        archive_store(journal._live(), tmp_path / "cold", durable=False, before=None, keep_last=None,
                      max_bundles=1)
    (meta,) = manifest_of(tmp_path / "cold")["dictionaries"].values()
    data = [encode_log(x) for x in logs[:64 * W]]
    want = zstandard.train_dictionary(DICT_SIZE, [bundle_of(data[i:i + 16])
                                                  for i in range(0, len(data), 16)]).as_bytes()
    raw = (tmp_path / "cold" / meta["file"]).read_bytes()
    assert meta["samples"] == 64 * W and meta["bytes"] == len(raw)
    assert raw == want and meta["sha256"] == hashlib.sha256(want).hexdigest()


def test_a_format_1_manifest_naming_some_index_checksums_gets_the_rest(tmp_path: Path) -> None:
    """A format-1 manifest whose first segment already names its index checksum (one written
    by hand): every later segment still gets its own when the archive is made format 2."""
    from archivekit import build
    from krepis import SovereignJournal
    from test_archive_safety import seal

    built = build(tmp_path / "b")
    store, arch = built.copy(tmp_path)
    data = manifest_of(arch)
    want = {s["file"]: s["index_sha256"] for log in data["logs"] for s in log["segments"]}
    data["version"] = 1
    first = data["logs"][1]["segments"][0]["file"]  # (log 1's next segment follows it)
    for log in data["logs"]:
        for seg in log["segments"]:
            if seg["file"] != first:
                del seg["index_sha256"]
    (arch / MANIFEST).write_bytes(seal(data, sealed=False))
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=0).bundles == 3
    m = manifest_of(arch)
    assert m["version"] == 2
    got = {s["file"]: s["index_sha256"] for log in m["logs"] for s in log["segments"]}
    assert {n: got[n] for n in want} == want
