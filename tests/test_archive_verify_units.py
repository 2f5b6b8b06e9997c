"""``verify_archive`` (``krepis.archive._verify``): what it counts, which file each refusal
names and what it says, and what it checks each log against (the store's tree for the current
log, the recorded hashes for earlier ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
from krepis import CorruptStorageError, SovereignJournal, ValidationError
from krepis.archive import ArchiveVerifyReport, verify_archive
from test_archive import fill_fast, realistic

__all__ = ["built"]


def test_verify_counts_every_log_segment_bundle_and_entry(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store) as journal:
        assert journal.verify_archive(arch) == ArchiveVerifyReport(str(arch), 3, 5, 5 * 256)
        assert verify_archive(arch, journal._live()) == ArchiveVerifyReport(str(arch), 3, 5, 5 * 256)
    assert verify_archive(arch, None) == ArchiveVerifyReport(str(arch), 3, 5, 5 * 256)  # no store at hand


def test_an_empty_archive_directory_verifies_as_empty(tmp_path: Path) -> None:
    (tmp_path / "cold").mkdir(mode=0o700)
    assert verify_archive(tmp_path / "cold", None) == ArchiveVerifyReport(str(tmp_path / "cold"), 0, 0, 0)
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(300))
        assert journal.verify_archive(tmp_path / "cold") == ArchiveVerifyReport(str(tmp_path / "cold"), 0, 0,
                                                                                0)


def test_an_archive_ending_before_the_store_begins_is_refused(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    live = FIRST1 + 3 * 256
    with SovereignJournal(store) as journal:
        with pytest.raises(ValidationError) as info:
            journal.verify_archive(empty)
        assert str(info.value) == (f"the store's entries before seq {live} are not in the archive at {empty} "
                                   f"(it ends at seq {FIRST1}): is it the store's archive directory?")
        # an archive holding one bundle fewer of the current log than the store removed
        edit_manifest(arch, _drop_last_segment)
        with pytest.raises(ValidationError) as info:
            journal.verify_archive(arch)
        assert str(info.value) == (f"the store's entries before seq {live} are not in the archive at {arch} "
                                   f"(it ends at seq {FIRST1 + 256}): is it the store's archive directory?")


def _drop_last_segment(m: dict[str, Any]) -> None:
    log = m["logs"][1]
    log["segments"].pop()
    log["bundles"] = 1


def test_an_archive_holding_another_log_of_the_same_epoch_is_refused(tmp_path: Path) -> None:
    """Log 1 of another store began at another seq: refused before any bundle is compared."""
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "a", flush="interval:20ms") as a:
        fill_fast(a, realistic(10))
        a.clear_all()
        fill_fast(a, realistic(600, seed=2))
        a.archive(arch, keep_last=0)
    with SovereignJournal(tmp_path / "b", flush="interval:20ms") as b:
        fill_fast(b, realistic(20))
        b.clear_all()
        fill_fast(b, realistic(600, seed=3))
        with pytest.raises(ValidationError) as info:
            b.verify_archive(arch)
        assert str(info.value) == f"the archive at {arch} holds another log 1 than the store's"


def test_a_damaged_dictionary_is_named_as_the_dictionary(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    ident = built.dictionary[len("dict-"):-len(".zdict")]
    raw = bytearray((arch / built.dictionary).read_bytes())
    raw[-1] ^= 0x01
    (arch / built.dictionary).write_bytes(bytes(raw))
    where = str(arch / built.dictionary)
    for verify in (lambda: verify_archive(arch, None), lambda: _verify_with_store(store, arch)):
        with pytest.raises(CorruptStorageError) as info:
            verify()
        assert str(info.value) == f"archive file {where} does not match its checksum (dictionary {ident})"
        assert info.value.path == where


def _verify_with_store(store: Path, arch: Path) -> ArchiveVerifyReport:
    with SovereignJournal(store) as journal:
        return journal.verify_archive(arch)


@pytest.mark.parametrize("name", [LOG0_SEG, LOG1_SEG1, "dictionary"])
def test_a_file_of_another_length_than_recorded_is_refused_by_its_checksum(built: Built, tmp_path: Path,
                                                                          name: str) -> None:
    """The manifest's ``bytes`` is checked with its ``sha256``: a file whose recorded length is
    wrong (the checksum sealed again) does not match, and the message says so."""
    store, arch = built.copy(tmp_path)
    file = built.dictionary if name == "dictionary" else name

    def change(m: dict[str, Any]) -> None:
        for meta in [*m["dictionaries"].values(), *(s for log in m["logs"] for s in log["segments"])]:
            if meta["file"] == file:
                meta["bytes"] += 1

    edit_manifest(arch, change)
    ident = built.dictionary[len("dict-"):-len(".zdict")]
    suffix = f" (dictionary {ident})" if name == "dictionary" else ""
    with pytest.raises(CorruptStorageError) as info:
        _verify_with_store(store, arch)
    assert str(info.value) == f"archive file {arch / file} does not match its checksum{suffix}"
    assert info.value.path == str(arch / file)


@pytest.mark.parametrize("name", [LOG0_SEG, LOG1_SEG0, LOG1_SEG1])
def test_a_damaged_segment_is_named(built: Built, tmp_path: Path, name: str) -> None:
    store, arch = built.copy(tmp_path)
    raw = bytearray((arch / name).read_bytes())
    raw[100] ^= 0x01
    (arch / name).write_bytes(bytes(raw))
    for verify in (lambda: verify_archive(arch, None), lambda: _verify_with_store(store, arch)):
        with pytest.raises(CorruptStorageError) as info:
            verify()
        assert str(info.value) == f"archive file {arch / name} does not match its checksum"
        assert info.value.path == str(arch / name)


def test_the_current_log_is_checked_against_the_stores_tree(built: Built, tmp_path: Path) -> None:
    """A segment of the current log replaced by a well-formed one of other entries (its checksums
    sealed into the manifest): its index agrees with it, the store's tree does not."""
    store, arch = built.copy(tmp_path)
    _same_log_other_entries(tmp_path / "o2")
    src = tmp_path / "o2" / "cold"
    seg = manifest_of(src)["logs"][0]["segments"][0]
    (arch / LOG1_SEG0).write_bytes((src / LOG1_SEG0).read_bytes())

    def change(m: dict[str, Any]) -> None:
        m["logs"][1]["segments"][0] = seg

    edit_manifest(arch, change)
    assert verify_archive(arch, None).bundles == 5  # well-formed and sealed: only the tree can tell
    with pytest.raises(CorruptStorageError) as info:
        _verify_with_store(store, arch)
    where = f"archive segment {arch / LOG1_SEG0}: bundle 0"
    assert str(info.value) == (f"{where} does not match the store's Merkle tree: the segment is damaged "
                               "(run krepis verify --archive)")
    assert info.value.path == str(arch / LOG1_SEG0)


def _same_log_other_entries(root: Path) -> None:
    """Another store whose log 1 begins at the same seq as the built one's, other entries, its
    bundle 0 archived alone (no dictionary)."""
    with SovereignJournal(root / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(FIRST1, seed=7))
        journal.clear_all()
        fill_fast(journal, realistic(300, seed=8, start=1_770_000_000_000))
        assert journal.tree_head().first_seq == FIRST1
        assert journal.archive(root / "cold", keep_last=300 - 256).bundles == 1


def test_an_earlier_log_is_checked_against_the_hashes_the_archive_recorded(built: Built,
                                                                            tmp_path: Path) -> None:
    """Log 0 is gone from the store: its bundles are checked against their segment's checked
    index, and a store at hand changes nothing about that."""
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store) as journal:
        assert journal.tree_head().epoch == 1
        assert journal.verify_archive(arch).bundles == 5
    assert MANIFEST in {p.name for p in arch.iterdir()}


def test_verifying_a_missing_directory_is_refused_and_makes_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "cold"
    with pytest.raises(ValidationError) as info:
        verify_archive(missing, None)
    assert str(info.value) == f"there is no archive at {missing}"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal, \
            pytest.raises(ValidationError, match="there is no archive at"):
        journal.verify_archive(missing)
    assert not missing.exists()


def test_progress_is_called_after_each_bundle_with_the_entries_checked_and_the_total(built: Built,
                                                                                      tmp_path: Path) -> None:
    """``progress(entries, total)`` once per bundle, in the manifest's order (log 0's two bundles,
    then log 1's three), the total being every entry the manifest names; none without bundles."""
    store, arch = built.copy(tmp_path)
    calls: list[tuple[int, int]] = []
    report = verify_archive(arch, None, progress=lambda done, total: calls.append((done, total)))
    assert report.entries == 1280
    assert calls == [(256 * k, 1280) for k in range(1, 6)]
    calls.clear()
    with SovereignJournal(store) as journal:
        assert verify_archive(arch, journal._live(),
                              progress=lambda done, total: calls.append((done, total))).bundles == 5
    assert calls == [(256 * k, 1280) for k in range(1, 6)]
    (tmp_path / "empty").mkdir(mode=0o700)
    verify_archive(tmp_path / "empty", None, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 5
