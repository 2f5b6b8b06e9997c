"""The archive directory and every file operation in it (``krepis.archive._files``), one by one:
what each refuses, what its errors say and which path they name, that nothing is read or
written through a link or left behind, and that no descriptor leaks."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import CorruptStorageError, InvalidTypeError, StorageError, ValidationError
from krepis.archive import _files
from krepis.archive._files import LOCK, TEMP_NAME, ArchiveDir


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def adir(tmp_path: Path) -> Iterator[ArchiveDir]:
    with ArchiveDir.open(tmp_path / "cold", create=True) as opened:
        yield opened


# -- opening the directory ------------------------------------------------------------------------
def test_a_new_archive_directory_is_private_and_pinned(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        adir = ArchiveDir.open(tmp_path / "a" / "b" / "cold", create=True)
    finally:
        os.umask(old)
    with adir:
        assert adir.path == str(tmp_path / "a" / "b" / "cold")
        assert stat.S_IMODE(os.stat(adir.path).st_mode) == 0o700
        assert os.path.samestat(os.fstat(adir.fd), os.stat(adir.path))
        assert adir.where("x") == str(tmp_path / "a" / "b" / "cold" / "x")
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(adir.fd)  # closed by the with block
    adir.close()  # again: nothing happens


def test_an_archive_directory_is_found_from_a_relative_path_or_home(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cold").mkdir(mode=0o700)
    monkeypatch.chdir(tmp_path)
    with ArchiveDir.open("cold", create=False) as adir:
        assert adir.path == str(tmp_path / "cold")
    monkeypatch.setenv("HOME", str(tmp_path))
    with ArchiveDir.open("~/cold", create=False) as adir:
        assert adir.path == str(tmp_path / "cold")
    with ArchiveDir.open(Path("cold"), create=True) as adir:
        assert adir.path == str(tmp_path / "cold")


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp"


@pytest.mark.parametrize("value,error,message", [
    (5, InvalidTypeError, "the archive directory must be a path, got int"),
    (None, InvalidTypeError, "the archive directory must be a path, got NoneType"),
    (b"/tmp/cold", InvalidTypeError, "the archive directory must be a path, got bytes"),
    (_BytesPath(), InvalidTypeError, "the archive directory must be a str path, got bytes"),
    ("", ValidationError, "the archive directory must not be empty"),
    ("/tmp/co\0ld", ValidationError,
     "archive directory: storage path '/tmp/co\\x00ld' contains a NUL character"),
])
def test_what_is_not_an_archive_path_is_refused(value: object, error: type[Exception], message: str) -> None:
    for create in (False, True):
        with pytest.raises(error) as info:
            ArchiveDir.open(value, create=create)
        assert str(info.value) == message


def test_a_file_or_a_missing_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("file", "dangling"):
        for create in (False, True):
            with pytest.raises(ValidationError) as info:
                ArchiveDir.open(tmp_path / name, create=create)
            assert str(info.value) == f"the archive directory {tmp_path / name} exists and is not a directory"
    with pytest.raises(ValidationError) as info:
        ArchiveDir.open(tmp_path / "missing", create=False)
    assert str(info.value) == f"there is no archive at {tmp_path / 'missing'}"
    assert not (tmp_path / "missing").exists() and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("mode,owner,why", [
    (0o777, 0, "is writable by other users (mode 0777)"),
    (0o720, 0, "is writable by its group (mode 0720)"),
    (0o700, 4242, "is owned by uid 4242"),
])
def test_a_directory_others_can_change_is_refused_naming_it(tmp_path: Path, mode: int, owner: int,
                                                            why: str) -> None:
    cold = tmp_path / "cold"
    cold.mkdir()
    os.chmod(cold, mode)
    os.chown(cold, owner, -1)
    before = open_fds()
    for create in (False, True):
        with pytest.raises(StorageError) as info:
            ArchiveDir.open(cold, create=create)
        assert str(info.value).startswith(f"krepis does not use {cold} as an archive directory: storage "
                                          f"directory {cold} {why}")
        assert info.value.path == str(cold)
        assert type(info.value) is StorageError
    assert open_fds() == before  # the descriptor opened for the checks is closed
    assert sorted(os.listdir(cold)) == []


def test_a_directory_inside_one_others_can_change_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "cold").mkdir(mode=0o700)
    os.chmod(shared, 0o777)
    for create in (False, True):
        with pytest.raises(StorageError) as info:
            ArchiveDir.open(shared / "cold", create=create)
        assert str(info.value).startswith(
            f"krepis does not use {shared / 'cold'} as an archive directory: "
            f"storage directory {shared / 'cold'} is inside {shared} (owner uid 0")
        assert info.value.path == str(shared / "cold")


def test_no_directory_is_made_where_others_could_replace_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    for target in (shared / "cold", shared / "a" / "b" / "cold"):
        with pytest.raises(StorageError) as info:
            ArchiveDir.open(target, create=True)
        assert str(info.value) == (
            f"krepis does not use {target} as an archive directory: {target} would be made inside {shared} "
            "(owner uid 0, mode 0777), which users other than you and root can change: they could "
            "replace it. Use another directory")
        assert info.value.path == str(target)
    assert os.listdir(shared) == []
    os.chown(shared, 4242, -1)
    os.chmod(shared, 0o755)
    with pytest.raises(StorageError, match=f"would be made inside {shared} \\(owner uid 4242, mode 0755\\)"):
        ArchiveDir.open(shared / "cold", create=True)
    assert os.listdir(shared) == []


def test_a_directory_is_made_in_a_sticky_one_but_not_under_an_untrusted_ancestor(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    with ArchiveDir.open(sticky / "cold", create=True) as adir:
        assert os.path.isdir(adir.path)
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True)
    os.chmod(shared, 0o777)
    with pytest.raises(StorageError) as info:
        ArchiveDir.open(shared / "mine" / "cold", create=True)
    target = shared / "mine" / "cold"
    assert str(info.value).startswith(
        f"krepis does not use {target} as an archive directory: storage directory {shared / 'mine'} is "
        f"inside {shared} (owner uid 0 (root), mode 0777), which users other than you and root can change")
    assert info.value.path == str(target)
    assert os.listdir(shared / "mine") == []


def test_a_parent_that_cannot_be_opened_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def failing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == str(tmp_path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError) as info:
        ArchiveDir.open(tmp_path / "cold", create=True)
    assert str(info.value) == (f"krepis does not use {tmp_path / 'cold'} as an archive directory: "
                               f"cannot open {tmp_path}: Permission denied")
    assert info.value.path == str(tmp_path / "cold")
    assert not (tmp_path / "cold").exists()


def test_an_archive_directory_that_cannot_be_opened_to_read_is_named(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cold = tmp_path / "cold"
    cold.mkdir(mode=0o700)
    real_open = os.open

    def failing(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if path == str(cold):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError) as info:
        ArchiveDir.open(cold, create=False)
    assert str(info.value) == (f"krepis does not use {cold} as an archive directory: cannot open {cold}: "
                               "Permission denied")
    assert info.value.path == str(cold)


def test_reading_needs_no_write_access(tmp_path: Path) -> None:
    cold = tmp_path / "cold"
    cold.mkdir(mode=0o500)
    with ArchiveDir.open(cold, create=False) as adir:
        assert adir.names() == []
    assert stat.S_IMODE(os.stat(cold).st_mode) == 0o500


# -- names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "a/b", "<victim>", ".", "..", "a\0b"])
def test_a_name_that_is_not_a_plain_file_name_is_a_bug_refused(adir: ArchiveDir, tmp_path: Path,
                                                                name: str) -> None:
    victim = tmp_path / "victim"  # (an absolute path: never one outside the test's own directory)
    victim.write_bytes(b"keep")
    name = str(victim) if name == "<victim>" else name
    for call in (adir.open_file, adir.lstat, adir.unlink, lambda n: adir.write_durable(n, b"x"),
                 lambda n: adir.read(n, 10)):
        with pytest.raises(ValueError) as info:
            call(name)
        assert str(info.value) == f"not a file name: {name!r:.80}"
    assert os.listdir(adir.path) == [] and victim.read_bytes() == b"keep"


def test_a_long_bad_name_is_cut_in_the_message(adir: ArchiveDir) -> None:
    with pytest.raises(ValueError) as info:
        adir.lstat("/" * 200)
    assert str(info.value) == "not a file name: " + repr("/" * 200)[:80]


def test_the_temporary_name_pattern() -> None:
    for name in (".tmp-MANIFEST.json.0123456789abcdef", ".tmp-MANIFEST.json",
                 ".tmp-log000000-000000000000.kseg", ".tmp-log1234567-0000000000001.kseg.fedcba9876543210",
                 ".tmp-dict-0123456789abcdef.zdict.0123456789abcdef"):
        assert TEMP_NAME.match(name), name
    for name in (".tmp-notes", ".tmp-MANIFEST.json.0123", ".tmp-MANIFEST.json.0123456789abcdef.x",
                 ".tmp-MANIFEST.json.0123456789ABCDEF", ".tmp-log00000-000000000000.kseg",
                 ".tmp-dict-0123.zdict", "MANIFEST.json"):
        assert not TEMP_NAME.match(name), name


# -- reading files --------------------------------------------------------------------------------
def test_a_file_is_opened_read_only_and_not_inherited(adir: ArchiveDir) -> None:
    Path(adir.where("f")).write_bytes(b"data")
    fd = adir.open_file("f")
    assert fd is not None
    try:
        assert not os.get_inheritable(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)


def test_a_missing_file_is_named_or_none(adir: ArchiveDir) -> None:
    with pytest.raises(CorruptStorageError) as info:
        adir.open_file("gone")
    assert str(info.value) == f"archive file {adir.where('gone')} is missing"
    assert info.value.path == adir.where("gone")
    assert adir.open_file("gone", missing_ok=True) is None
    assert adir.open_file("gone", True) is None
    assert adir.read("gone", 10, missing_ok=True) is None
    with pytest.raises(CorruptStorageError, match="is missing"):
        adir.read("gone", 10)


def test_a_link_is_refused_and_its_target_untouched(adir: ArchiveDir, tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    os.symlink(tmp_path / "target", adir.where("link"))
    os.symlink(tmp_path / "nowhere", adir.where("dangling"))
    for name in ("link", "dangling"):
        for call in (adir.open_file, lambda n: adir.open_file(n, missing_ok=True),
                     lambda n: adir.read(n, 100)):
            with pytest.raises(CorruptStorageError) as info:
                call(name)
            assert str(info.value) == (f"archive file {adir.where(name)} is a symbolic link; krepis never "
                                       "follows links in an archive directory (its target is left untouched)")
            assert info.value.path == adir.where(name)


def test_any_other_open_failure_is_named(adir: ArchiveDir) -> None:
    with socket.socket(socket.AF_UNIX) as sock:  # open(2) of a socket: ENXIO
        sock.bind(adir.where("sock"))
        with pytest.raises(CorruptStorageError) as info:
            adir.open_file("sock")
    assert str(info.value) == f"cannot open archive file {adir.where('sock')}: {os.strerror(errno.ENXIO)}"
    assert info.value.path == adir.where("sock")


@pytest.mark.parametrize("kind,what", [("directory", "a directory"), ("fifo", "a FIFO"),
                                       ("char", "a device"), ("block", "a device")])
def test_what_is_not_a_regular_file_is_refused_saying_what_it_is(adir: ArchiveDir, kind: str,
                                                                  what: str) -> None:
    path = adir.where("x")
    if kind == "directory":
        os.mkdir(path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, (stat.S_IFCHR if kind == "char" else stat.S_IFBLK) | 0o600, os.makedev(1, 3)
                 if kind == "char" else os.makedev(7, 200))
    before = open_fds()
    with pytest.raises(CorruptStorageError) as info:
        adir.open_file("x")
    if kind == "block" and str(info.value).startswith("cannot open"):
        pytest.skip("no such block device here")  # (opening it fails before it is looked at)
    assert str(info.value) == f"archive file {path} is {what}, not a regular file"
    assert info.value.path == path
    assert open_fds() == before


def test_a_socket_in_place_of_a_file_would_be_no_regular_file(adir: ArchiveDir,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """(A socket cannot be opened, so fstat never sees one; the wording for anything else there.)"""
    Path(adir.where("f")).write_bytes(b"x")
    real = os.fstat

    def as_socket(fd: int) -> os.stat_result:
        st = real(fd)
        return os.stat_result((stat.S_IFSOCK | 0o600, *tuple(st)[1:]))

    before = open_fds()
    monkeypatch.setattr(os, "fstat", as_socket)
    with pytest.raises(CorruptStorageError) as info:
        adir.open_file("f")
    monkeypatch.undo()
    assert str(info.value) == f"archive file {adir.where('f')} is not a regular file, not a regular file"
    assert open_fds() == before


def test_pread_reads_exactly_what_is_asked(adir: ArchiveDir) -> None:
    data = bytes(range(256)) * 100
    Path(adir.where("f")).write_bytes(data)
    fd = adir.open_file("f")
    assert fd is not None
    try:
        assert adir.pread(fd, 10, 20, "f") == data[10:30]
        assert adir.pread(fd, 0, len(data), "f") == data
        assert adir.pread(fd, len(data), 0, "f") == b""
        with pytest.raises(CorruptStorageError) as info:
            adir.pread(fd, len(data) - 5, 6, "f")
        assert str(info.value) == (f"archive file {adir.where('f')} is cut off (it ends before byte "
                                   f"{len(data) + 1})")
        assert info.value.path == adir.where("f")
    finally:
        os.close(fd)


def test_pread_reads_a_large_range_whole(adir: ArchiveDir) -> None:
    data = os.urandom(1 << 16) * (17 * 16 + 3)  # past 16 MiB: more than one read
    Path(adir.where("big")).write_bytes(data)
    fd = adir.open_file("big")
    assert fd is not None
    try:
        assert adir.pread(fd, 5, len(data) - 5, "big") == data[5:]
    finally:
        os.close(fd)


def test_pread_goes_on_after_a_short_read(adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(200))
    Path(adir.where("f")).write_bytes(data)
    fd = adir.open_file("f")
    assert fd is not None
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda f, n, at: real(f, min(n, 7), at))
    try:
        assert adir.pread(fd, 3, 150, "f") == data[3:153]
        digest, length = adir.sha256(fd, "f")
        assert (digest, length) == (hashlib.sha256(data).hexdigest(), 200)
    finally:
        os.close(fd)


def test_a_read_error_is_named(adir: ArchiveDir) -> None:
    fd = os.open(adir.path, os.O_RDONLY | os.O_DIRECTORY)  # pread of a directory: EISDIR
    try:
        for call in (lambda: adir.pread(fd, 0, 10, "f"), lambda: adir.sha256(fd, "f")):
            with pytest.raises(CorruptStorageError) as info:
                call()
            assert str(info.value) == (f"cannot read archive file {adir.where('f')}: "
                                       f"{os.strerror(errno.EISDIR)}")
            assert info.value.path == adir.where("f")
    finally:
        os.close(fd)


def test_read_returns_the_whole_file_within_its_limit(adir: ArchiveDir) -> None:
    Path(adir.where("f")).write_bytes(b"0123456789")
    Path(adir.where("empty")).write_bytes(b"")
    before = open_fds()
    assert adir.read("f", 10) == b"0123456789"
    assert adir.read("empty", 0) == b""
    with pytest.raises(CorruptStorageError) as info:
        adir.read("f", 9)
    assert str(info.value) == f"archive file {adir.where('f')} is 10 bytes; at most 9 are expected"
    assert info.value.path == adir.where("f")
    assert open_fds() == before


def test_sha256_is_of_the_whole_file_from_its_start(adir: ArchiveDir) -> None:
    data = os.urandom((1 << 20) * 2 + 17)  # more than one chunk
    Path(adir.where("f")).write_bytes(data)
    fd = adir.open_file("f")
    assert fd is not None
    try:
        os.lseek(fd, 100, os.SEEK_SET)  # (the file position does not matter)
        assert adir.sha256(fd, "f") == (hashlib.sha256(data).hexdigest(), len(data))
    finally:
        os.close(fd)
    Path(adir.where("e")).write_bytes(b"")
    fd = adir.open_file("e")
    assert fd is not None
    try:
        assert adir.sha256(fd, "e") == (hashlib.sha256(b"").hexdigest(), 0)
    finally:
        os.close(fd)


def test_names_and_lstat(adir: ArchiveDir) -> None:
    for name in ("b", "a", ".hidden", "c"):
        Path(adir.where(name)).write_bytes(name.encode())
    os.symlink(adir.where("a"), adir.where("link"))
    assert adir.names() == [".hidden", "a", "b", "c", "link"]
    st = adir.lstat("link")
    assert st is not None and stat.S_ISLNK(st.st_mode)
    assert adir.lstat("missing") is None


# -- writing files --------------------------------------------------------------------------------
def test_write_durable_writes_a_private_file_under_its_name(adir: ArchiveDir) -> None:
    old = os.umask(0)
    try:
        adir.write_durable("MANIFEST.json", b"content")
    finally:
        os.umask(old)
    path = Path(adir.where("MANIFEST.json"))
    assert path.read_bytes() == b"content" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert adir.names() == ["MANIFEST.json"]  # no temporary file left
    adir.write_durable("MANIFEST.json", b"new", replace=True)
    assert path.read_bytes() == b"new" and adir.names() == ["MANIFEST.json"]


def test_write_durable_never_replaces_a_file_it_did_not_write(adir: ArchiveDir, tmp_path: Path) -> None:
    Path(adir.where("seg")).write_bytes(b"theirs")
    (tmp_path / "victim").write_bytes(b"precious")
    os.symlink(tmp_path / "victim", adir.where("link"))
    for name in ("seg", "link"):
        with pytest.raises(StorageError) as info:
            adir.write_durable(name, b"ours")
        assert str(info.value) == (f"{adir.where(name)} exists and krepis did not write it: it is left as it "
                                   "is and nothing was archived; move it out of the archive directory")
        assert info.value.path == adir.where(name)
    assert Path(adir.where("seg")).read_bytes() == b"theirs"
    assert (tmp_path / "victim").read_bytes() == b"precious"
    assert adir.names() == ["link", "seg"]


def test_write_durable_writes_through_short_writes(adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data[:3])))
    adir.write_durable("f", b"0123456789abcdef")
    monkeypatch.undo()
    assert Path(adir.where("f")).read_bytes() == b"0123456789abcdef"


def test_write_durable_syncs_the_file_before_its_rename_and_the_directory_after(
        adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append("dir" if fd == adir.fd else f"file {os.fstat(fd).st_size}")
        real_fsync(fd)

    def rename(*args: object, **kwargs: object) -> None:
        events.append("rename")
        real_rename(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    adir.write_durable("f", b"12345")
    assert events == ["file 5", "rename", "dir"]


def test_the_temporary_file_is_fresh_and_exclusive(adir: ArchiveDir, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files.secrets, "token_hex", lambda n: "ab" * n)
    tmp = ".tmp-f.abababababababab"
    assert TEMP_NAME.match(".tmp-MANIFEST.json." + "ab" * 8)
    os.symlink(tmp_path / "nowhere", adir.where(tmp))  # a name taken (even by a link): refused, not followed
    with pytest.raises(StorageError) as info:
        adir.write_durable("f", b"x")
    assert str(info.value) == f"cannot create {adir.where(tmp)}: {os.strerror(errno.EEXIST)}"
    assert info.value.path == adir.where(tmp)
    assert adir.names() == [tmp] and not os.path.lexists(tmp_path / "nowhere")


@pytest.mark.parametrize("fails", ["write", "fsync", "rename"])
def test_a_failed_write_leaves_nothing_and_names_the_file(adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch,
                                                          fails: str) -> None:
    def enospc(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, fails, enospc)
    before = open_fds()
    with pytest.raises(StorageError) as info:
        adir.write_durable("f", b"data")
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {adir.where('f')}: {os.strerror(errno.ENOSPC)}"
    assert info.value.path == adir.where("f")
    assert adir.names() == [] and open_fds() == before


def test_an_interrupted_write_leaves_nothing(adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        adir.write_durable("f", b"data")
    monkeypatch.undo()
    assert adir.names() == []


def test_a_failed_directory_sync_is_named(adir: ArchiveDir, monkeypatch: pytest.MonkeyPatch) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(StorageError) as info:
        adir.fsync()
    assert str(info.value) == f"cannot sync the archive directory {adir.path}: {os.strerror(errno.EIO)}"
    assert info.value.path == adir.path


def test_unlink_removes_a_name_and_ignores_a_missing_one(adir: ArchiveDir, tmp_path: Path) -> None:
    Path(adir.where("f")).write_bytes(b"x")
    (tmp_path / "target").write_bytes(b"keep")
    os.symlink(tmp_path / "target", adir.where("link"))
    adir.unlink("f")
    adir.unlink("link")  # the link, never its target
    adir.unlink("f")
    assert adir.names() == [] and (tmp_path / "target").read_bytes() == b"keep"


# -- the lock -------------------------------------------------------------------------------------
def test_the_lock_is_exclusive_and_released(adir: ArchiveDir) -> None:
    before = open_fds()
    with adir.lock():
        path = adir.where(LOCK)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        other = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
    assert open_fds() == before
    other = os.open(adir.where(LOCK), os.O_RDONLY)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(other)


def test_the_lock_file_is_private_whatever_the_umask(adir: ArchiveDir) -> None:
    old = os.umask(0)
    try:
        with adir.lock():
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(adir.where(LOCK)).st_mode) == 0o600


def test_a_lock_file_that_is_a_link_is_refused(adir: ArchiveDir, tmp_path: Path) -> None:
    (tmp_path / "victim").write_bytes(b"precious")
    os.symlink(tmp_path / "victim", adir.where(LOCK))
    with pytest.raises(StorageError) as info, adir.lock():
        pass
    where = adir.where(LOCK)
    assert str(info.value) == (f"the archive's lock file {where} is a symbolic link; krepis never follows "
                               "links in an archive directory")
    assert info.value.path == where and (tmp_path / "victim").read_bytes() == b"precious"


def test_a_lock_file_that_cannot_be_opened_is_named(adir: ArchiveDir) -> None:
    os.mkdir(adir.where(LOCK))
    where = adir.where(LOCK)
    with pytest.raises(StorageError) as info, adir.lock():
        pass
    assert str(info.value) == f"the archive's lock file {where} cannot be opened: {os.strerror(errno.EISDIR)}"
    assert info.value.path == where


def test_a_lock_file_that_is_a_fifo_is_refused(adir: ArchiveDir) -> None:
    os.mkfifo(adir.where(LOCK))
    before = open_fds()
    with pytest.raises(StorageError) as info, adir.lock():
        pass
    assert str(info.value) == f"the archive's lock file {adir.where(LOCK)} is not a regular file"
    assert info.value.path == adir.where(LOCK)
    assert open_fds() == before


def test_a_file_that_cannot_be_opened_or_looked_at_is_named(adir: ArchiveDir,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader of a directory it may list but not search (mode 0600, not root): both the open and
    the look at what is there fail with EACCES — an error naming the file, never a bare OSError."""
    Path(adir.where("seg")).write_bytes(b"x")
    real_open, real_stat = os.open, os.stat

    def denied(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if path == "seg":
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "open", denied(real_open))
    monkeypatch.setattr(os, "stat", denied(real_stat))
    for call in (lambda: adir.open_file("seg"), lambda: adir.read("seg", 10)):
        with pytest.raises(CorruptStorageError) as info:
            call()
        assert str(info.value) == f"cannot open archive file {adir.where('seg')}: {os.strerror(errno.EACCES)}"
        assert info.value.path == adir.where("seg")


def test_a_parent_replaced_by_a_file_before_it_is_opened_is_refused(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The nearest existing parent, a directory when looked at, is a file when opened (a race):
    it is opened as a directory only, so the refusal names it."""
    (tmp_path / "f").write_bytes(b"x")
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: p == str(tmp_path / "f") or real_isdir(p))
    with pytest.raises(StorageError) as info:
        ArchiveDir.open(tmp_path / "f" / "cold", create=True)
    monkeypatch.undo()
    assert str(info.value) == (f"krepis does not use {tmp_path / 'f' / 'cold'} as an archive directory: "
                               f"cannot open {tmp_path / 'f'}: {os.strerror(errno.ENOTDIR)}")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_an_archive_directory_replaced_by_a_file_before_it_is_opened_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive directory, a directory when looked at, is a file when opened to read (a race):
    it is opened as a directory only, so the refusal names it and nothing is read from the file."""
    cold = tmp_path / "cold"
    cold.write_bytes(b"x")
    cold.chmod(0o600)
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda p: p == str(cold) or real_isdir(p))
    with pytest.raises(StorageError) as info:
        ArchiveDir.open(cold, create=False)
    monkeypatch.undo()
    assert str(info.value) == (f"krepis does not use {cold} as an archive directory: cannot open {cold}: "
                               f"{os.strerror(errno.ENOTDIR)}")
    assert info.value.path == str(cold)
    assert cold.read_bytes() == b"x"
