"""``krepis.backup`` (``krepis.journal._backup``) at its edges: the checks of ``archive_to``
before anything is copied (empty, a link, a file, a directory holding something — each error's
exact text and ``path``, the path made absolute and ``~`` expanded), an existing empty directory
taken, how many entries are archived (with or without ``archive_to``), both progress callbacks,
and the archive of a store cleared since it was archived (nothing archived from the current log,
but the archive holds earlier logs) copied all the same."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import krepis
from archivekit import MANIFEST, Built, built
from krepis import SovereignJournal, StorageError, ValidationError

__all__ = ["built"]


def test_an_empty_archive_to_is_refused_before_anything_is_copied(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    with pytest.raises(ValidationError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to="")
    assert str(info.value) == "archive_to must not be empty"
    assert not (tmp_path / "bk").exists()


@pytest.mark.parametrize(("make", "says"), [
    ("full", "exists and is not empty"),
    ("file", "exists and is not a directory"),
    ("link", "is a symbolic link; krepis never writes through one"),
])
def test_each_refusal_names_the_absolute_path(built: Built, tmp_path: Path, make: str, says: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store, _arch = built.copy(tmp_path)
    place = tmp_path / "place"
    if make == "full":
        place.mkdir()
        (place / "x").write_text("mine")
    elif make == "file":
        place.write_text("x")
    else:
        (tmp_path / "target").mkdir()
        place.symlink_to(tmp_path / "target")
    monkeypatch.chdir(tmp_path)
    for given in ("place", str(place), "~/place"):  # relative, absolute, under the home directory
        monkeypatch.setenv("HOME", str(tmp_path))
        with pytest.raises(StorageError) as info:
            krepis.backup(store, tmp_path / "bk", archive_to=given)
        assert type(info.value) is StorageError
        assert str(info.value) == f"the archive copy's directory {place} {says}"
        assert info.value.path == str(place)
        assert not (tmp_path / "bk").exists()


def test_an_existing_empty_directory_takes_the_copy(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    (tmp_path / "empty").mkdir()
    result = krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "empty")
    assert result.archive == str(tmp_path / "empty")
    assert (tmp_path / "empty" / MANIFEST).exists()


def test_without_archive_to_the_archived_entries_are_counted_and_nothing_else_copied(
        built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    calls: list[tuple[int, int]] = []
    result = krepis.backup(store, tmp_path / "bk", progress=lambda done, total: calls.append((done, total)))
    assert (result.archive, result.archived) == (None, 3 * 256)
    assert result.entries == len(built.log1) - 3 * 256
    assert result.tree_size == len(built.log1)
    assert calls and calls[-1][0] == calls[-1][1]  # the store's copy reported its progress
    assert sorted(os.listdir(tmp_path)) == ["bk", "cold", "s"]
    with SovereignJournal(tmp_path / "bk", create=False) as journal:
        assert journal.get_archive_dir() == str(tmp_path / "cold")  # the source's, as recorded


def test_the_archive_copy_reports_its_progress(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    rows: list[tuple[int, int]] = []
    copied: list[tuple[int, int]] = []
    result = krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2",
                           progress=lambda d, t: rows.append((d, t)),
                           archive_progress=lambda d, t: copied.append((d, t)))
    assert result.archive == str(tmp_path / "cold2")
    assert rows and copied
    total = sum(p.stat().st_size for p in (tmp_path / "cold2").iterdir() if p.name != MANIFEST)
    assert copied[-1][0] == copied[-1][1] >= total


def test_an_archive_of_earlier_logs_only_is_copied(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store, create=False, flush="sync") as journal:
        journal.clear_all()  # a new log: nothing of it archived, the archive holds logs 0 and 1
        assert journal.entry_counts().archived == 0
    result = krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert result.archived == 0
    assert result.archive == str(tmp_path / "cold2")
    assert sorted(p.name for p in (tmp_path / "cold2").glob("*.kseg")) == sorted(
        p.name for p in arch.glob("*.kseg"))
    with SovereignJournal(tmp_path / "bk", create=False) as journal:
        assert journal.get_archive_dir() == str(tmp_path / "cold2")


def test_the_journals_backup_opens_ignore_the_flush_and_retention_environment(
        built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # backup opens the source and the copy as journals of its own: never with a retention
    # thread (it would archive the source while it is copied) nor a policy read from the
    # environment (a bad one would refuse the backup, an interval one defer its record)
    store, _arch = built.copy(tmp_path)
    monkeypatch.setenv("KREPIS_RETENTION", "not a policy")
    monkeypatch.setenv("KREPIS_FLUSH", "not a policy")
    result = krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert result.archive == str(tmp_path / "cold2")
    monkeypatch.delenv("KREPIS_RETENTION")
    monkeypatch.delenv("KREPIS_FLUSH")
    with SovereignJournal(tmp_path / "bk", create=False) as journal:
        assert journal.get_archive_dir() == str(tmp_path / "cold2")
        assert journal.entry_counts().archived == 3 * 256


def test_a_recorded_archive_directory_without_a_manifest_copies_nothing(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="sync") as journal:
        journal.log_transaction(krepis.TransactionLog(1, "op", "r", krepis.LogStatus.Completed))
        journal.set_archive_dir(tmp_path / "cold")
    (tmp_path / "cold").mkdir(exist_ok=True)  # the directory exists, nothing was ever archived there
    assert os.listdir(tmp_path / "cold") == []
    result = krepis.backup(tmp_path / "s", tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert (result.archive, result.archived) == (None, 0)
    assert not (tmp_path / "cold2").exists()


def test_a_source_gone_during_the_copy_is_never_made_again(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    gone = tmp_path / "gone"

    def progress(done: int, total: int) -> None:
        if not gone.exists():  # the store moved away while it was being copied
            os.rename(store, gone)

    with pytest.raises(StorageError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2", progress=progress)
    assert str(info.value).startswith(f"there is no krepis store at {store}")
    assert not store.exists()  # no new, empty store where the source was
    assert not (tmp_path / "cold2").exists()


def test_a_copy_gone_during_the_archives_copy_is_never_made_again(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    gone = tmp_path / "gone"

    def archive_progress(done: int, total: int) -> None:
        if not gone.exists():  # the backup's store moved away while its archive was copied
            os.rename(tmp_path / "bk", gone)

    with pytest.raises(StorageError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2",
                      archive_progress=archive_progress)
    assert str(info.value).startswith(f"there is no krepis store at {tmp_path / 'bk'}")
    assert not (tmp_path / "bk").exists()  # no new, empty store where the copy was
