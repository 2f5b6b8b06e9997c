"""Where a store may live (``krepis.storage.lmdb._paths``): the messages that name a directory's
owner, a new store directory that is private from the instant it exists, a parent another
process creates at the same moment, and the two reasons a directory cannot be written (a
read-only file system, or permissions) told apart."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import StorageError
from krepis.storage.lmdb._paths import open_directory

NOBODY = 65534

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def _unnamed_uid() -> int:
    """A user id with no entry in the password database."""
    for uid in range(54321, 65000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("every uid has a name")


@root_only
def test_a_directory_owned_by_a_user_with_no_name_is_named_by_number(tmp_path: Path) -> None:
    uid = _unnamed_uid()
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    os.chown(store, uid, -1)
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    assert str(info.value) == (
        f"storage directory {store} is owned by uid {uid}, not by this user (uid 0 (root)): its "
        "owner could replace the store's files (for instance with links to files of yours), so "
        "krepis does not open it. Run krepis as that user (e.g. sudo "
        f"-u #{uid} krepis …) or chown the directory")
    assert info.value.path == str(store)


@pytest.mark.parametrize(("mode", "who"), [(0o770, "its group"), (0o707, "other users"),
                                           (0o777, "other users")])
def test_a_directory_others_can_write_is_refused_saying_who(tmp_path: Path, mode: int, who: str) -> None:
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(mode)
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    assert str(info.value) == (
        f"storage directory {store} is writable by {who} (mode {mode:04o}): any of them could "
        f"replace the store's files, so krepis does not open it; chmod 700 {store}")
    assert info.value.path == str(store)


@root_only
def test_a_directory_owned_by_a_named_user_is_named_with_both(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    os.chown(store, NOBODY, -1)
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    name = pwd.getpwuid(NOBODY).pw_name
    assert f"is owned by uid {NOBODY} ({name}), not by this user" in str(info.value)
    assert f"sudo -u {name} krepis …" in str(info.value)


def test_a_new_store_directory_is_private_from_the_moment_it_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made with mode 0700, not made open and closed afterwards: no other user can list it even
    for an instant. Its new parents are 0755 (never group- or other-writable)."""
    modes_before_chmod: dict[str, int] = {}
    real_chmod = os.chmod

    def chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
        modes_before_chmod[os.fspath(path)] = stat.S_IMODE(os.stat(path).st_mode)
        real_chmod(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", chmod)
    store = tmp_path / "new" / "store"
    old = os.umask(0o002)
    try:
        os.close(open_directory(str(store), create=True))
    finally:
        os.umask(old)
    assert modes_before_chmod[str(store)] == 0o700
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o755


def test_a_parent_another_process_creates_meanwhile_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a missing parent finds it already made (another process won the race): the
    rest of the path is still made, and the store opens."""
    real_mkdir = os.mkdir
    contested = str(tmp_path / "a")

    def mkdir(path: Any, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        if os.fspath(path) == contested:
            real_mkdir(path, 0o755)
            raise FileExistsError(17, "File exists", contested)
        real_mkdir(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    store = tmp_path / "a" / "b" / "store"
    os.close(open_directory(str(store), create=True))
    assert store.is_dir() and stat.S_IMODE(store.stat().st_mode) == 0o700


@contextlib.contextmanager
def _as_nobody() -> Iterator[None]:
    """This process as the 'nobody' user (real and effective ids), root kept as the saved id so
    that it can come back: permission bits then apply to it."""
    os.setresgid(NOBODY, NOBODY, 0)
    os.setresuid(NOBODY, NOBODY, 0)
    try:
        yield
    finally:
        os.setresuid(0, 0, 0)
        os.setresgid(0, 0, 0)


@root_only
@pytest.mark.parametrize("owner", ["this user", "root"])
def test_a_directory_this_user_cannot_write_is_not_called_read_only(owner: str) -> None:
    """Permissions, not the file system: the message says which (in this process, so that the
    mutation tool sees the code run). A directory root owns passes the owner check."""
    base = Path(tempfile.mkdtemp(prefix="krepis-paths-"))  # outside pytest's 0700 root
    try:
        base.chmod(0o755)
        store = base / "store"
        store.mkdir(mode=0o500 if owner == "this user" else 0o755)
        if owner == "this user":
            os.chown(store, NOBODY, NOBODY)
        with _as_nobody(), pytest.raises(StorageError) as info:
            open_directory(str(store), create=False)
        assert str(info.value) == f"storage directory {store} is not readable and writable by this user"
        assert info.value.path == str(store)
    finally:
        os.chmod(base / "store", 0o700)
        (base / "store").rmdir()
        base.rmdir()


def test_parents_a_file_system_makes_writable_by_others_are_narrowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a file system that gives new directories group- and other-write whatever mode is
    asked for, the new parents are narrowed to 0755 (else the store would be refused as inside
    a directory others can change) and the store itself is 0700."""
    real_mkdir = os.mkdir

    def mkdir(path: Any, mode: int = 0o777, *args: Any, **kwargs: Any) -> None:
        real_mkdir(path, mode, *args, **kwargs)
        os.chmod(path, 0o777)

    monkeypatch.setattr(os, "mkdir", mkdir)
    store = tmp_path / "x" / "y" / "store"
    os.close(open_directory(str(store), create=True))
    monkeypatch.undo()
    assert [stat.S_IMODE(p.stat().st_mode) for p in (store.parent.parent, store.parent, store)] == [
        0o755, 0o755, 0o700]


def _store(tmp_path: Path) -> Path:
    from conftest import make_store

    return make_store(tmp_path / "store", entries=1)


def test_a_store_file_that_is_a_symbolic_link_is_refused_naming_it(tmp_path: Path) -> None:
    from krepis import SovereignJournal

    store = _store(tmp_path)
    target = tmp_path / "elsewhere.mdb"
    os.rename(store / "data.mdb", target)
    os.symlink(target, store / "data.mdb")
    with pytest.raises(StorageError) as info:
        SovereignJournal(store)
    assert str(info.value) == (
        f"storage at {store}: data.mdb is a symbolic link; krepis never follows links in a store "
        f"directory (its target is left untouched). Remove {store}/data.mdb if it is not yours")
    assert info.value.path == str(store)


@pytest.mark.parametrize("kind", ["a directory", "not a regular file"])
def test_a_store_file_that_is_not_a_file_is_named_with_what_it_is(tmp_path: Path, kind: str) -> None:
    from krepis import CorruptStorageError, SovereignJournal

    store = _store(tmp_path)
    os.unlink(store / "data.mdb")
    if kind == "a directory":
        os.mkdir(store / "data.mdb")
    else:
        os.mkfifo(store / "data.mdb")
    with pytest.raises(CorruptStorageError) as info:
        SovereignJournal(store)
    assert str(info.value) == f"storage at {store}: data.mdb is {kind}"
    assert info.value.path == str(store)


def test_a_store_file_with_another_name_is_refused_naming_the_links(tmp_path: Path) -> None:
    from krepis import SovereignJournal

    store = _store(tmp_path)
    os.link(store / "data.mdb", tmp_path / "other-name")
    with pytest.raises(StorageError) as info:
        SovereignJournal(store)
    assert str(info.value) == (
        f"storage at {store}: data.mdb has 2 hard links; a store's files must not be shared with "
        "other paths (LMDB would write through them). Copy the store instead of linking it")
    assert info.value.path == str(store)


# --- the path to the store ----------------------------------------------------------------------

def test_a_link_on_the_way_owned_by_another_user_is_refused_naming_it(tmp_path: Path) -> None:
    real = tmp_path / "real"
    os.close(open_directory(str(real / "store"), create=True))
    link = tmp_path / "link"
    os.symlink(real, link)
    os.lchown(link, NOBODY, -1)
    path = str(link / "store")
    with pytest.raises(StorageError) as info:
        open_directory(path, create=False)
    name = pwd.getpwuid(NOBODY).pw_name
    assert str(info.value) == (
        f"storage path {path} goes through {link}, a symbolic link owned by uid {NOBODY} ({name}): "
        "that user could point it at another store, so krepis does not follow it. Use the real path")
    assert info.value.path == path


def _inside_open_directory(tmp_path: Path) -> tuple[Path, Path]:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # writable by everyone, and not sticky
    store = shared / "store"
    store.mkdir(mode=0o700)
    return shared, store


def _inside_message(store: Path, where: str) -> str:
    return (f"storage directory {store} is inside {where} (owner uid 0 (root), mode 0777), which "
            "users other than you and root can change: they could replace the store directory with "
            "another, so krepis does not open it. Move the store, or make that directory yours and "
            "chmod go-w it")


@root_only
def test_a_store_inside_a_directory_others_can_change_is_refused_naming_it(tmp_path: Path) -> None:
    shared, store = _inside_open_directory(tmp_path)
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    assert str(info.value) == _inside_message(store, str(shared))
    assert info.value.path == str(store)


@root_only
def test_without_proc_the_directory_others_can_change_is_called_a_parent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where /proc is not mounted the parent's name cannot be read back from its descriptor."""
    _shared, store = _inside_open_directory(tmp_path)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists",
                        lambda p: False if str(p).startswith("/proc/self/fd/") else real_exists(p))
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    assert str(info.value) == _inside_message(store, "a parent directory")


@root_only
@pytest.mark.parametrize("owner", ["this user", "root"])
def test_a_link_on_the_way_owned_by_this_user_or_root_is_followed(owner: str) -> None:
    """As an ordinary user (in this process, as 'nobody'): a symbolic link this user or root
    owns cannot be pointed elsewhere by anyone else, so the path may go through it."""
    base = Path(tempfile.mkdtemp(prefix="krepis-paths-"))  # outside pytest's 0700 root
    try:
        base.chmod(0o755)
        (base / "real").mkdir(mode=0o755)
        store = base / "real" / "store"
        store.mkdir(mode=0o700)
        os.chown(store, NOBODY, NOBODY)
        link = base / "link"
        os.symlink(base / "real", link)
        if owner == "this user":
            os.lchown(link, NOBODY, NOBODY)
        with _as_nobody():
            os.close(open_directory(str(link / "store"), create=False))
    finally:
        import shutil

        shutil.rmtree(base)


# --- opening the directory ----------------------------------------------------------------------

def test_a_missing_store_is_not_made_without_create(tmp_path: Path) -> None:
    store = tmp_path / "none"
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=False)
    assert str(info.value) == f"there is no krepis store at {store}"
    assert info.value.path == str(store)
    assert not store.exists()


def test_a_store_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = tmp_path / "file" / "store"
    with pytest.raises(StorageError) as info:
        open_directory(str(store), create=True)
    assert str(info.value) == f"cannot create storage directory {store}: Not a directory"
    assert info.value.path == str(store)


def test_a_path_swapped_for_a_file_after_the_check_is_not_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory is opened as a directory only: a file put in its place between the check
    and the open is refused, naming the path (not an error from deeper in the checks)."""
    path = tmp_path / "swapped"
    path.write_bytes(b"")
    path.chmod(0o600)
    monkeypatch.setattr(os.path, "isdir", lambda p: True)  # the check saw a directory
    with pytest.raises(StorageError) as info:
        open_directory(str(path), create=False)
    assert str(info.value) == f"cannot open storage directory {path}: Not a directory"
    assert info.value.path == str(path)


def test_the_pinned_directory_is_not_inherited_by_programs_this_process_runs(tmp_path: Path) -> None:
    fd = open_directory(str(tmp_path / "store"), create=True)
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("path", "why"), [
    ("/tmp/a\ud800b", "contains characters that cannot be a file name (lone surrogates)"),
    ("/tmp/a\0b", "contains a NUL character"),
])
def test_a_path_no_file_can_have_is_refused_before_anything_is_touched(path: str, why: str) -> None:
    from krepis import ValidationError

    with pytest.raises(ValidationError) as info:
        open_directory(path, create=True)
    assert str(info.value) == f"storage path {path!r} {why}"
