"""A backup with its archive (``krepis backup DEST --archive-to DIR``, ``krepis.backup(...,
archive_to=)``): every file the manifest names is copied and checked, the manifest last, the
copy is recorded as the backup's archive and verified against its tree, so a restore of the
backup reads the whole history without the original archive. Refusals leave nothing behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import krepis
from archivekit import LOG0_SEG, LOG1_SEG0, LOG1_SEG1, MANIFEST, Built, built
from krepis import CorruptStorageError, SovereignJournal, StorageError
from krepis.cli import cli

__all__ = ["built"]


def _files(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
            if p.is_file()}


def _history(store: Path) -> list[dict[str, object]]:
    with SovereignJournal(store, create=False, flush="interval:20ms") as journal:
        return [e.to_dict() for e in journal.iter_logs(order="append", newest_first=False)]


def test_a_backup_with_its_archive_restores_the_whole_history(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    before = _files(arch)
    whole = _history(store)
    result = krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "bk-archive")
    assert result.archive == str(tmp_path / "bk-archive") and result.archived == 3 * 256
    copied = _files(tmp_path / "bk-archive")
    assert {n: h for n, h in copied.items() if n != MANIFEST} == {n: h for n, h in before.items()
                                                                    if n not in (MANIFEST, ".lock")}
    manifest = json.loads((tmp_path / "bk-archive" / MANIFEST).read_bytes())
    assert manifest["store"] == {"location": str(tmp_path / "bk")}
    assert oct((tmp_path / "bk-archive").stat().st_mode & 0o777) == "0o700"
    assert _files(arch) == before  # the source is untouched
    # the original store and its archive gone, the backup restored elsewhere reads everything
    shutil.rmtree(store)
    shutil.rmtree(arch)
    krepis.restore(tmp_path / "bk", tmp_path / "again")
    with SovereignJournal(tmp_path / "again", create=False) as journal:
        assert journal.get_archive_dir() == str(tmp_path / "bk-archive")
        assert journal.entry_counts().archived == 3 * 256
        assert journal.verify().entries == len(built.log1) - 3 * 256
        assert journal.verify_archive().bundles == 5  # log 0's two and log 1's three
    assert _history(tmp_path / "again") == whole


def test_the_cli_says_where_the_archive_went(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    result = CliRunner().invoke(cli, ["--storage", str(store), "backup", str(tmp_path / "bk"),
                                      "--archive-to", str(tmp_path / "cold2")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == (f"archive copied to {tmp_path / 'cold2'} and verified: the "
                                             "backup's 768 archived entries of this log are there")
    as_json = CliRunner().invoke(cli, ["--storage", str(store), "backup", str(tmp_path / "bk2"),
                                       "--archive-to", str(tmp_path / "cold3"), "--json"])
    out = json.loads(as_json.stdout)
    assert (out["archive"], out["archive_copied"], out["archived_not_copied"]) == (str(tmp_path / "cold3"),
                                                                                   True, 0)


@pytest.mark.parametrize("name", [LOG0_SEG, LOG1_SEG1, "dict"])
def test_a_damaged_file_stops_the_copy_and_nothing_is_left(built: Built, tmp_path: Path, name: str) -> None:
    store, arch = built.copy(tmp_path)
    if name == "dict":
        name = built.dictionary
    damaged = arch / name
    raw = bytearray(damaged.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    damaged.write_bytes(bytes(raw))
    with pytest.raises(CorruptStorageError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert str(info.value) == (f"archive file {damaged} does not match the manifest's length and sha256: it "
                               "is damaged (krepis verify --archive names what)")
    assert info.value.path == str(damaged)
    assert not (tmp_path / "cold2").exists()  # made by the copy: removed
    assert (tmp_path / "bk" / "data.mdb").exists()  # the store's backup was complete before


def test_a_file_cut_short_or_grown_is_refused(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    (tmp_path / "cold2").mkdir(mode=0o700)  # an empty directory given: kept, left empty
    with open(arch / LOG1_SEG0, "ab") as f:
        f.write(b"\0")
    with pytest.raises(CorruptStorageError):
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert os.listdir(tmp_path / "cold2") == []


def test_a_destination_that_is_not_empty_or_a_link_is_refused_before_anything_is_copied(
        built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(StorageError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "full")
    assert str(info.value) == f"the archive copy's directory {tmp_path / 'full'} exists and is not empty"
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(StorageError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "link")
    assert "is a symbolic link; krepis never writes through one" in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="exists and is not a directory"):
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "file")
    assert not (tmp_path / "bk").exists() and os.listdir(tmp_path / "target") == []
    assert os.listdir(tmp_path / "full") == ["x"]


def test_a_store_without_an_archive_copies_nothing(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        journal.log_transaction(krepis.TransactionLog(1, "op", "r", krepis.LogStatus.Completed))
    result = krepis.backup(tmp_path / "s", tmp_path / "bk", archive_to=tmp_path / "cold")
    assert (result.archive, result.archived, result.entries) == (None, 0, 1)
    assert not (tmp_path / "cold").exists()


def test_a_format_1_archive_is_not_copied(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    manifest = json.loads((arch / MANIFEST).read_bytes())
    manifest.pop("checksum")
    manifest["version"] = 1
    for log in manifest["logs"]:
        for seg in log["segments"]:
            seg.pop("index_sha256")
    (arch / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    with pytest.raises(krepis.ValidationError) as info:
        krepis.backup(store, tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert str(info.value) == (f"the archive at {arch} is in format 1: run krepis archive on its store once "
                               "(it upgrades the archive), then copy it")
    assert not (tmp_path / "cold2").exists()


def test_a_recorded_archive_that_holds_nothing_yet_copies_nothing(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        journal.log_transaction(krepis.TransactionLog(1, "op", "r", krepis.LogStatus.Completed))
        journal.set_archive_dir(tmp_path / "cold")  # recorded, never written
    result = krepis.backup(tmp_path / "s", tmp_path / "bk", archive_to=tmp_path / "cold2")
    assert (result.archive, result.archived) == (None, 0)
    assert not (tmp_path / "cold2").exists()
