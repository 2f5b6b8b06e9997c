"""The archive's format: version 2 is written as docs/archive.md says; an archive of version 1
(tests/fixtures/archive-format1, written by the last release of it) is read, checked, completed
and, at the next write, upgraded."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest

from krepis import CorruptStorageError, SovereignJournal, TransactionLog
from krepis.archive import ArchiveReader
from test_archive import fill_fast, realistic
from test_archive_safety import MANIFEST, index_of, seal

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_archive_format1 import entries  # noqa: E402


def test_the_manifest_and_segments_are_format_2(tmp_path: Path) -> None:
    """The checksum member first (the sha256 of the rest), each segment's index checksum."""
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1400))
        journal.archive(arch, keep_last=300)
    raw = (arch / MANIFEST).read_bytes()
    data = json.loads(raw)
    assert data["version"] == 2 and raw == seal(data)
    seg = data["logs"][0]["segments"][0]
    file = (arch / seg["file"]).read_bytes()
    offset, length = index_of(file)
    assert seg["index_sha256"] == hashlib.sha256(file[offset:offset + length]).hexdigest()
    assert seg["sha256"] == hashlib.sha256(file).hexdigest() and seg["bytes"] == len(file)


@pytest.fixture
def format1(tmp_path: Path) -> tuple[Path, Path, list[TransactionLog]]:
    """The format-1 archive beside a store of the same entries (so the same tree), none removed."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    shutil.copytree(FIXTURES / "archive-format1", arch)
    arch.chmod(0o700)
    logs = entries()
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, logs)
    return store, arch, logs


def test_an_archive_of_format_1_is_read_checked_and_made_format_2(
        format1: tuple[Path, Path, list[TransactionLog]]) -> None:
    store, arch, logs = format1
    before = (arch / MANIFEST).read_bytes()
    with SovereignJournal(store) as journal:
        everything = journal.query(order="append", newest_first=False)
        # the store still holds what the archive holds (as after a crash before the removal):
        # a run asking nothing new completes it, after checking the format-1 segments
        report = journal.archive(arch, keep_last=10**6)
        assert report.completed_previous and journal.live_first_seq() == 3 * 256
        assert (arch / MANIFEST).read_bytes() == before  # nothing written: still format 1
        assert ArchiveReader(arch, 0, 0).version == 1
        assert journal.query(archive=arch, order="append", newest_first=False) == everything
        assert journal.query(archive=arch, request_id="req-00300") == [
            x for x in reversed(everything) if x.request_id == "req-00300"]
        assert journal.query(archive=arch, since=logs[300].timestamp, until=logs[310].timestamp,
                             newest_first=False) == everything[300:310]
        assert journal.verify_archive(arch).bundles == 3
        # the next write upgrades the manifest; the old segments are kept as they are
        old = {p.name: p.read_bytes() for p in arch.glob("*.kseg")}
        assert journal.archive(arch, keep_last=0).bundles == 1
        data = json.loads((arch / MANIFEST).read_bytes())
        assert data["version"] == 2 and all("index_sha256" in s for s in data["logs"][0]["segments"])
        assert {n: (arch / n).read_bytes() for n in old} == old
        assert journal.query(archive=arch, order="append", newest_first=False) == everything
        assert journal.verify_archive(arch).bundles == 4


def test_a_damaged_format_1_index_is_refused(format1: tuple[Path, Path, list[TransactionLog]]) -> None:
    """Format 1 records no index checksum: the whole file's checksum stands in for it."""
    store, arch, _logs = format1
    seg = arch / "log000000-000000000000.kseg"
    raw = bytearray(seg.read_bytes())
    offset, length = index_of(bytes(raw))
    raw[offset + length - 1] ^= 0x01
    seg.write_bytes(bytes(raw))
    with SovereignJournal(store) as journal:
        with pytest.raises(CorruptStorageError, match=f"{seg.name} does not match its checksum"):
            journal.archive(arch, keep_last=10**6)
        assert journal.live_first_seq() == 0
    with pytest.raises(CorruptStorageError, match=f"{seg.name} does not match its checksum"):
        ArchiveReader(arch, 0, 0).bundle_data(1)



def _completed(store: Path, arch: Path) -> None:
    """The format-1 run the fixture stands for completed: the archived entries leave the store,
    the manifest stays format 1."""
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=10**6).completed_previous
    assert json.loads((arch / MANIFEST).read_bytes())["version"] == 1


def test_an_index_checksum_in_a_format_1_manifest_is_computed_again_when_made_format_2(
        format1: tuple[Path, Path, list[TransactionLog]]) -> None:
    """Format 1 has no index checksum: one found in a format-1 manifest (written by hand) is not
    carried into format 2 — the segment is checked against its whole-file sha256 and its index
    checksum computed from the file, as docs/archive.md says of every old segment."""
    store, arch, _logs = format1
    _completed(store, arch)
    data = json.loads((arch / MANIFEST).read_bytes())
    seg = data["logs"][0]["segments"][0]
    seg["index_sha256"] = "0" * 64
    (arch / MANIFEST).write_text(json.dumps(data))
    file = (arch / seg["file"]).read_bytes()
    offset, length = index_of(file)
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=0).bundles == 1
        made = json.loads((arch / MANIFEST).read_bytes())
        assert made["version"] == 2
        assert made["logs"][0]["segments"][0]["index_sha256"] == \
            hashlib.sha256(file[offset:offset + length]).hexdigest()
        assert [x.seq for x in journal.query(archive=arch, order="append", newest_first=False)] == \
            list(range(journal.next_seq()))
        assert journal.verify_archive(arch).bundles == 4


def test_a_format_1_segment_is_checked_against_its_sha256_even_with_an_index_checksum(
        format1: tuple[Path, Path, list[TransactionLog]]) -> None:
    """An old segment that does not match its whole-file sha256 stops the run that would make the
    archive format 2, naming the file, even when the manifest names an index checksum that
    matches: nothing written, nothing removed from the store."""
    store, arch, _logs = format1
    _completed(store, arch)
    data = json.loads((arch / MANIFEST).read_bytes())
    seg = data["logs"][0]["segments"][0]
    file = (arch / seg["file"]).read_bytes()
    offset, length = index_of(file)
    seg["index_sha256"] = hashlib.sha256(file[offset:offset + length]).hexdigest()
    seg["sha256"] = "f" * 64
    (arch / MANIFEST).write_text(json.dumps(data))
    before = {p.name: p.read_bytes() for p in arch.iterdir()}
    with SovereignJournal(store) as journal:
        live = journal.live_first_seq()
        with pytest.raises(CorruptStorageError) as info:
            journal.archive(arch, keep_last=0)
        assert str(info.value) == f"archive file {arch / seg['file']} does not match its checksum"
        assert info.value.path == str(arch / seg["file"])
        assert journal.live_first_seq() == live
    assert {p.name: p.read_bytes() for p in arch.iterdir()} == before


def test_a_format_1_archive_grown_by_several_segments_in_one_run(
        format1: tuple[Path, Path, list[TransactionLog]], monkeypatch: pytest.MonkeyPatch) -> None:
    """The run that makes the archive format 2 may write several segments (here one bundle each):
    it converts the old ones once and every segment, old or new, ends with its index checksum."""
    import krepis.archive._writer as writer

    store, arch, _logs = format1
    _completed(store, arch)
    monkeypatch.setattr(writer, "MAX_SEGMENT_BUNDLES", 1)
    with SovereignJournal(store) as journal:
        fill_fast(journal, realistic(3 * 256, start=1_800_000_000_000))
        everything = journal.query(order="append", newest_first=False)
        report = journal.archive(arch, keep_last=0)
        assert (report.bundles, report.segments) == (4, 4)
        data = json.loads((arch / MANIFEST).read_bytes())
        assert data["version"] == 2 and len(data["logs"][0]["segments"]) == 6
        assert sorted(data) == ["checksum", "dictionaries", "format", "logs", "store", "version"]
        for seg in data["logs"][0]["segments"]:
            file = (arch / seg["file"]).read_bytes()
            offset, length = index_of(file)
            assert seg["index_sha256"] == hashlib.sha256(file[offset:offset + length]).hexdigest()
        assert journal.query(archive=arch, order="append", newest_first=False) == everything
        assert journal.verify_archive(arch).bundles == 7
