"""Copying an archive (``krepis.archive._copy.copy_archive``) on its own, below
``krepis.backup(..., archive_to=)``: what the copy holds and reports, its progress, the source's
lock held throughout, each file fsynced before its rename and the directory after, reads and
writes in parts, and every refusal — its type, exact text and path — leaving nothing behind."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import krepis.archive._copy as copymod
from archivekit import LOG0_SEG, LOG1_SEG1, MANIFEST, Built, built, manifest_of
from krepis import CorruptStorageError, StorageError, ValidationError
from krepis.archive._copy import ArchiveCopy, copy_archive
from krepis.archive._manifest import parse_manifest
from test_archive_safety import seal

__all__ = ["built"]


@pytest.fixture
def arch(built: Built, tmp_path: Path) -> Path:
    return built.copy(tmp_path)[1]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def named(arch: Path) -> list[tuple[str, int]]:
    """The files the manifest names, in the copy's order: dictionaries, then each log's segments."""
    m = manifest_of(arch)
    return [(d["file"], d["bytes"]) for d in m["dictionaries"].values()] + [
        (s["file"], s["bytes"]) for log in m["logs"] for s in log["segments"]]


# -- what a copy holds ----------------------------------------------------------------------------
def test_a_copy_holds_every_named_file_and_a_manifest_naming_the_new_store(built: Built, arch: Path,
                                                                          tmp_path: Path) -> None:
    before = files(arch)
    got = copy_archive(str(arch), str(tmp_path / "copy"), "/backups/store")
    out = files(tmp_path / "copy")
    names = [n for n, _ in named(arch)]
    assert sorted(out) == sorted([MANIFEST, *names])  # (no lock file, no temporary file)
    assert {n: out[n] for n in names} == {n: before[n] for n in names}
    m = parse_manifest(out[MANIFEST], str(tmp_path / "copy" / MANIFEST))
    want = manifest_of(arch)
    want["store"] = {"location": "/backups/store"}
    del want["checksum"]
    assert {k: v for k, v in m.items() if k != "checksum"} == want
    assert out[MANIFEST] == seal(want)
    assert got == ArchiveCopy(str(tmp_path / "copy"), len(names) + 1,
                              sum(len(before[n]) for n in names) + len(out[MANIFEST]))
    for name in out:
        assert stat.S_IMODE((tmp_path / "copy" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o700
    assert files(arch) == before  # the source is unchanged


def test_an_empty_directory_is_copied_into_and_a_lock_file_alone_counts_as_empty(arch: Path,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir(mode=0o700)
    assert copy_archive(str(arch), str(tmp_path / "empty"), "x").files == len(named(arch)) + 1
    (tmp_path / "locked").mkdir(mode=0o700)
    (tmp_path / "locked" / ".lock").write_bytes(b"")
    copy_archive(str(arch), str(tmp_path / "locked"), "x")
    assert sorted(os.listdir(tmp_path / "locked")) == sorted([".lock", MANIFEST,
                                                              *(n for n, _ in named(arch))])


def test_progress_counts_the_bytes_of_the_named_files(arch: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    copy_archive(str(arch), str(tmp_path / "copy"), "x", lambda done, total: calls.append((done, total)))
    sizes = [size for _, size in named(arch)]
    total = sum(sizes)
    assert calls == [(sum(sizes[:i + 1]), total) for i in range(len(sizes))]
    assert calls[-1] == (total, total)


def test_the_source_stays_locked_while_it_is_copied(arch: Path, tmp_path: Path) -> None:
    """An archive run takes the same lock: it cannot change the source during a copy."""
    seen: list[bool] = []

    def try_lock(_done: int, _total: int) -> None:
        fd = os.open(arch / ".lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            seen.append(True)
        else:
            seen.append(False)
        finally:
            os.close(fd)

    copy_archive(str(arch), str(tmp_path / "copy"), "x", try_lock)
    assert seen == [True] * len(named(arch))
    fd = os.open(arch / ".lock", os.O_RDWR)  # released after
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_each_file_is_fsynced_before_its_rename_and_the_directory_after(
        arch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    dest = tmp_path / "copy"

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append("fsync dir" if target == str(dest) else f"fsync {os.path.basename(target)[:5]}")
        real_fsync(fd)

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        events.append(f"rename {dst}")
        real_rename(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    copy_archive(str(arch), str(dest), "x")
    want: list[str] = []
    for name, _ in [*named(arch), (MANIFEST, 0)]:
        want += ["fsync .tmp-", f"rename {name}", "fsync dir"]
    assert events[-len(want):] == want
    assert events[:-len(want)] in ([], ["fsync dir"])  # (making the directory)


def test_files_are_read_and_written_in_parts(arch: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads of at most ``_CHUNK`` bytes, and a write that takes only part of what it is given
    is continued: the copy is the same bytes."""
    monkeypatch.setattr(copymod, "_CHUNK", 1000)
    real_write = os.write
    sizes: list[int] = []

    def short_write(fd: int, data: Any) -> int:
        if MANIFEST not in os.readlink(f"/proc/self/fd/{fd}"):  # (the manifest: written by ArchiveDir)
            sizes.append(len(data))
        return real_write(fd, bytes(data[:333]))

    monkeypatch.setattr(os, "write", short_write)
    before = files(arch)
    copy_archive(str(arch), str(tmp_path / "copy"), "x")
    monkeypatch.undo()
    out = files(tmp_path / "copy")
    assert {n: out[n] for n, _ in named(arch)} == {n: before[n] for n, _ in named(arch)}
    assert max(sizes) == 1000 and 667 in sizes  # (a part of 1000, then what was left of it)


# -- refusals -------------------------------------------------------------------------------------
def test_a_directory_without_a_manifest_is_no_archive(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir(mode=0o700)
    with pytest.raises(ValidationError) as info:
        copy_archive(str(tmp_path / "src"), str(tmp_path / "copy"), "x")
    assert str(info.value) == f"there is no archive at {tmp_path / 'src'} (no {MANIFEST})"
    assert not (tmp_path / "copy").exists() and os.listdir(tmp_path / "src") == [".lock"]
    with pytest.raises(ValidationError, match=f"there is no archive at {tmp_path / 'missing'}"):
        copy_archive(str(tmp_path / "missing"), str(tmp_path / "copy"), "x")
    assert not (tmp_path / "missing").exists()


def test_a_damaged_manifest_is_named(arch: Path, tmp_path: Path) -> None:
    (arch / MANIFEST).write_bytes((arch / MANIFEST).read_bytes().replace(b'"bundles":3', b'"bundles":4'))
    with pytest.raises(CorruptStorageError) as info:
        copy_archive(str(arch), str(tmp_path / "copy"), "x")
    assert info.value.path == str(arch / MANIFEST)
    assert not (tmp_path / "copy").exists()


def test_a_destination_that_is_not_empty_is_refused_and_kept(arch: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir(mode=0o700)
    (tmp_path / "full" / "mine").write_bytes(b"x")
    with pytest.raises(StorageError) as info:
        copy_archive(str(arch), str(tmp_path / "full"), "x")
    assert type(info.value) is StorageError
    assert str(info.value) == f"the archive copy's directory {tmp_path / 'full'} exists and is not empty"
    assert info.value.path == str(tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["mine"]


@pytest.mark.parametrize("victim", [LOG1_SEG1, LOG0_SEG, "dict"])
@pytest.mark.parametrize("change", ["flip", "grow", "cut"])
def test_a_file_not_matching_the_manifest_stops_the_copy_and_nothing_is_left(
        built: Built, arch: Path, tmp_path: Path, victim: str, change: str) -> None:
    name = built.dictionary if victim == "dict" else victim
    raw = bytearray((arch / name).read_bytes())
    if change == "flip":
        raw[len(raw) // 2] ^= 1
    elif change == "grow":
        raw += b"\0"
    else:
        del raw[-1]
    (arch / name).write_bytes(bytes(raw))
    with pytest.raises(CorruptStorageError) as info:
        copy_archive(str(arch), str(tmp_path / "copy"), "x")
    if change == "cut":
        assert str(info.value) == (f"archive file {arch / name} is cut off (it ends before byte "
                                   f"{len(raw) + 1})")
    else:
        assert str(info.value) == (f"archive file {arch / name} does not match the manifest's length and "
                                   "sha256: it is damaged (krepis verify --archive names what)")
    assert info.value.path == str(arch / name)
    assert not (tmp_path / "copy").exists()


def test_a_failed_copy_into_a_given_empty_directory_leaves_it_empty(arch: Path, tmp_path: Path) -> None:
    (arch / LOG1_SEG1).write_bytes((arch / LOG1_SEG1).read_bytes() + b"\0")  # the last file named
    (tmp_path / "copy").mkdir(mode=0o700)
    with pytest.raises(CorruptStorageError):
        copy_archive(str(arch), str(tmp_path / "copy"), "x")
    assert os.listdir(tmp_path / "copy") == []
    assert named(arch)[-1][0] == LOG1_SEG1


def test_a_temporary_name_taken_is_refused_by_name(arch: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is created exclusively: a name already there (it cannot be, as the
    directory was empty and the names are random — here one is planted just before) is an
    error naming it, and the copy leaves that file alone (it removes only what it created)."""
    import secrets

    first = named(arch)[0][0]
    monkeypatch.setattr(secrets, "token_hex", lambda n: "00" * (n - 1) + "aa")
    (tmp_path / "copy2").mkdir(mode=0o700)
    real_open = os.open

    def plant(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if str(path).startswith(".tmp-") and dir_fd is not None and not os.path.lexists(taken2):
            os.symlink(tmp_path / "elsewhere", taken2)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    taken2 = tmp_path / "copy2" / f".tmp-{first}.00000000000000aa"
    monkeypatch.setattr(os, "open", plant)
    with pytest.raises(StorageError) as info:
        copy_archive(str(arch), str(tmp_path / "copy2"), "x")
    monkeypatch.undo()
    assert str(info.value) == f"cannot create {taken2}: File exists"
    assert info.value.path == str(taken2)
    assert not (tmp_path / "elsewhere").exists()
    assert os.listdir(tmp_path / "copy2") == [taken2.name]  # (not ours: left)


def test_a_write_that_fails_is_named_and_the_copy_removed(arch: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    dest = tmp_path / "copy"
    second = named(arch)[1][0]

    def fsync(fd: int) -> None:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".tmp-{second}."):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError) as info:
        copy_archive(str(arch), str(dest), "x")
    assert type(info.value) is StorageError
    assert str(info.value) == f"cannot write {dest / second}: Input/output error"
    assert info.value.path == str(dest / second)
    assert not dest.exists()


def test_a_format_1_archive_is_refused(arch: Path, tmp_path: Path) -> None:
    m = manifest_of(arch)
    m["version"] = 1
    for log in m["logs"]:
        for seg in log["segments"]:
            del seg["index_sha256"]
    (arch / MANIFEST).write_bytes(seal(m, sealed=False))
    with pytest.raises(ValidationError) as info:
        copy_archive(str(arch), str(tmp_path / "copy"), "x")
    assert str(info.value) == (f"the archive at {arch} is in format 1: run krepis archive on its store once "
                               "(it upgrades the archive), then copy it")
    assert not (tmp_path / "copy").exists()

