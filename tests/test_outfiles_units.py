"""The primitives every file krepis creates outside a live store goes through
(``krepis.storage._outfiles``), one by one: what each refuses, what its errors say and name, and
that none of them follows a link or leaks a descriptor into a child process."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import StorageError
from krepis.storage._outfiles import (
    DIR_MODE,
    FILE_MODE,
    create_exclusive,
    fsync_dir,
    fsync_fd,
    fsync_file_at,
    make_private_dir,
    remove_at,
)


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_create_exclusive_makes_a_private_file_whatever_the_umask(tmp_path: Path, dir_fd: int) -> None:
    old = os.umask(0)
    try:
        fd = create_exclusive("new", dir_fd, str(tmp_path / "new"))
    finally:
        os.umask(old)
    try:
        assert not os.get_inheritable(fd)
        os.write(fd, b"x")
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == FILE_MODE == 0o600


def test_create_exclusive_refuses_an_existing_file_saying_so(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "there").write_bytes(b"keep")
    where = str(tmp_path / "there")
    with pytest.raises(StorageError) as info:
        create_exclusive("there", dir_fd, where)
    assert str(info.value) == (f"{where} is already there; krepis creates this file itself and never "
                               "writes through an existing name (remove it if it is not yours)")
    assert info.value.path == where
    assert (tmp_path / "there").read_bytes() == b"keep"


def test_create_exclusive_refuses_a_link_saying_so(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "target").write_bytes(b"keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link", "dangling"):
        with pytest.raises(StorageError, match=f"{name} is a symbolic link; krepis creates") as info:
            create_exclusive(name, dir_fd, str(tmp_path / name))
        assert info.value.path == str(tmp_path / name)
    assert (tmp_path / "target").read_bytes() == b"keep" and not (tmp_path / "nowhere").exists()


def test_create_exclusive_names_any_other_failure(tmp_path: Path, dir_fd: int) -> None:
    where = str(tmp_path / ("n" * 300))
    with pytest.raises(StorageError) as info:
        create_exclusive("n" * 300, dir_fd, where)
    assert str(info.value) == f"cannot create {where}: {os.strerror(errno.ENAMETOOLONG)}"
    assert info.value.path == where


def test_an_error_without_strerror_is_said_whole(tmp_path: Path, dir_fd: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> int:
        raise OSError("refused by the test")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(StorageError, match=r"^cannot create .*/x: refused by the test$"):
        create_exclusive("x", dir_fd, str(tmp_path / "x"))


def test_make_private_dir_makes_a_0700_directory_and_pins_it(tmp_path: Path, dir_fd: int) -> None:
    old = os.umask(0)
    try:
        fd = make_private_dir("d", dir_fd, str(tmp_path / "d"))
    finally:
        os.umask(old)
    try:
        assert not os.get_inheritable(fd)
        assert os.path.samestat(os.fstat(fd), (tmp_path / "d").stat())
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == DIR_MODE == 0o700


def test_make_private_dir_refuses_an_existing_name(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "d").mkdir(mode=0o755)
    (tmp_path / "keep").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "keep")
    for name in ("d", "l"):
        where = str(tmp_path / name)
        with pytest.raises(StorageError) as info:
            make_private_dir(name, dir_fd, where)
        assert str(info.value) == (f"{where} already exists; krepis creates this directory itself "
                                   "(remove it if it is not yours)")
        assert info.value.path == where
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_make_private_dir_names_any_other_failure(tmp_path: Path, dir_fd: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    where = str(tmp_path / ("n" * 300))
    with pytest.raises(StorageError) as info:
        make_private_dir("n" * 300, dir_fd, where)
    assert str(info.value) == f"cannot create {where}: {os.strerror(errno.ENAMETOOLONG)}"
    assert info.value.path == where
    real_open = os.open

    def no_open(name: str, *args: object, **kwargs: object) -> int:
        if name == "d":
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_open)
    with pytest.raises(StorageError) as info:
        make_private_dir("d", dir_fd, str(tmp_path / "d"))
    assert str(info.value) == f"cannot open {tmp_path / 'd'}: {os.strerror(errno.EMFILE)}"
    assert info.value.path == str(tmp_path / "d")


def test_make_private_dir_never_pins_a_link_swapped_in(tmp_path: Path, dir_fd: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Between its mkdir and its open, the name is replaced by a link: the open refuses it."""
    (tmp_path / "elsewhere").mkdir()
    real_mkdir = os.mkdir

    def swap(name: str, *args: object, **kwargs: object) -> None:
        real_mkdir(name, *args, **kwargs)  # type: ignore[arg-type]
        os.rmdir(tmp_path / name)
        os.symlink(tmp_path / "elsewhere", tmp_path / name)

    monkeypatch.setattr(os, "mkdir", swap)
    with pytest.raises(StorageError, match="cannot open"):
        make_private_dir("d", dir_fd, str(tmp_path / "d"))


def test_fsync_fd_names_the_file_when_the_flush_fails(tmp_path: Path) -> None:
    read, write = os.pipe()  # a pipe cannot be flushed: EINVAL
    try:
        with pytest.raises(StorageError) as info:
            fsync_fd(read, str(tmp_path / "f"))
    finally:
        os.close(read)
        os.close(write)
    assert str(info.value) == (f"cannot make {tmp_path / 'f'} durable (fsync failed: "
                               f"{os.strerror(errno.EINVAL)})")
    assert info.value.path == str(tmp_path / "f")


def test_fsync_file_at_flushes_a_file_and_never_a_link(tmp_path: Path, dir_fd: int) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fsync_file_at("f", dir_fd, str(tmp_path / "f"))
    (tmp_path / "l").symlink_to(tmp_path / "f")
    with pytest.raises(OSError) as info:
        fsync_file_at("l", dir_fd, str(tmp_path / "l"))
    assert info.value.errno == errno.ELOOP


def test_fsync_dir_flushes_directories_only(tmp_path: Path) -> None:
    fsync_dir(str(tmp_path))
    (tmp_path / "f").write_bytes(b"x")
    for path, code in ((tmp_path / "f", errno.ENOTDIR), (tmp_path / "missing", errno.ENOENT)):
        with pytest.raises(StorageError) as info:
            fsync_dir(str(path))
        assert str(info.value) == f"cannot open {path} to make it durable: {os.strerror(code)}"
        assert info.value.path == str(path)


def test_remove_at_removes_files_links_and_trees_never_a_links_target(tmp_path: Path, dir_fd: int) -> None:
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_bytes(b"x")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_bytes(b"x")
    (tree / "link").symlink_to(keep)
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(keep)
    for name in ("tree", "file", "link", "missing"):
        remove_at(name, dir_fd)
    assert sorted(os.listdir(tmp_path)) == ["keep"]
    assert (keep / "precious").read_bytes() == b"x"


def test_remove_at_never_walks_into_a_link_swapped_for_a_directory(tmp_path: Path, dir_fd: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The name was a directory when looked at and is a link to the operator's directory when
    opened: the walk refuses it and removes nothing there."""
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious").write_bytes(b"x")
    (tmp_path / "victim").symlink_to(keep)
    real_stat = os.stat
    a_dir = real_stat(keep)

    def looks_like_a_dir(name: str, *args: object, **kwargs: object) -> os.stat_result:
        if name == "victim":
            return a_dir
        return real_stat(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", looks_like_a_dir)
    with pytest.raises(OSError) as info:
        remove_at("victim", dir_fd)
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert (keep / "precious").read_bytes() == b"x"


def test_a_name_that_vanished_before_it_could_be_looked_at_is_said_to_be_there(
        tmp_path: Path, dir_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "there").write_bytes(b"keep")

    def gone(*_args: object, **_kwargs: object) -> os.stat_result:
        raise FileNotFoundError(errno.ENOENT, "gone")

    monkeypatch.setattr(os, "stat", gone)
    with pytest.raises(StorageError, match="there is already there;"):
        create_exclusive("there", dir_fd, str(tmp_path / "there"))


def test_make_private_dir_never_pins_a_file_swapped_in(tmp_path: Path, dir_fd: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Between its mkdir and its open, the directory is replaced by a file of someone else's:
    the open refuses it (and the file's mode is not changed)."""
    real_mkdir = os.mkdir

    def swap(name: str, *args: object, **kwargs: object) -> None:
        real_mkdir(name, *args, **kwargs)  # type: ignore[arg-type]
        os.rmdir(tmp_path / name)
        (tmp_path / name).write_bytes(b"x")
        (tmp_path / name).chmod(0o644)

    monkeypatch.setattr(os, "mkdir", swap)
    with pytest.raises(StorageError, match=f"cannot open {tmp_path / 'd'}: {os.strerror(errno.ENOTDIR)}"):
        make_private_dir("d", dir_fd, str(tmp_path / "d"))
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o644
