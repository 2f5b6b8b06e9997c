"""The files of an LMDB store (storage/lmdb/_files.py) pinned on their own: ``StoreFiles`` on a real
directory — which names it tolerates, what it creates and with which mode, every refusal's exact
text and ``.path``, the checks of ``data.mdb``'s length against its meta pages (files laid out
byte by byte as LMDB writes them), the detached-file checks and the writer lock. Failures and
races are injected by wrapping ``os.open``, as tests/test_outfiles_units.py does."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import CorruptStorageError, StorageError
from krepis.storage.lmdb._files import _META, _PAGE_HEADER, StoreFiles, meta_txnid
from krepis.storage.lmdb._paths import open_directory

_NO_PAGE = 2**64 - 1


def _meta(psize: int, last_pg: int, txnid: int, *, magic: int = 0xBEEFC0DE, version: int = 1,
          root: int = _NO_PAGE) -> bytes:
    """One LMDB meta page (header, MDB_meta, the free database's root), ``psize`` bytes long."""
    raw = bytearray(bytes(_PAGE_HEADER) + _META.pack(magic, version, psize, last_pg, txnid))
    raw[_PAGE_HEADER + 64:_PAGE_HEADER + 72] = root.to_bytes(8, "little")
    return bytes(raw) + bytes(max(0, psize - len(raw)))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    path.mkdir(mode=0o700)
    return path


def _files_of(path: Path, create: bool = True) -> StoreFiles:
    return StoreFiles(str(path), open_directory(str(path), create), create)


@pytest.fixture
def opened(store: Path) -> Iterator[StoreFiles]:
    files = _files_of(store)
    yield files
    files.close()


def _with_data(store: Path, raw: bytes) -> StoreFiles:
    (store / "data.mdb").write_bytes(raw)
    os.chmod(store / "data.mdb", 0o600)
    return _files_of(store, create=False)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- meta_txnid ----------------------------------------------------------------------------------

def test_meta_txnid_is_the_newer_of_the_two_meta_pages_that_are_lmdbs() -> None:
    assert meta_txnid(_meta(4096, 3, 7) + _meta(4096, 3, 9), 4096) == 9
    assert meta_txnid(_meta(4096, 3, 9) + _meta(4096, 3, 7), 4096) == 9
    assert meta_txnid(_meta(4096, 3, 5, magic=1) + _meta(4096, 3, 4), 4096) == 4
    assert meta_txnid(_meta(4096, 3, 4) + _meta(4096, 3, 5, version=2), 4096) == 4
    assert meta_txnid(_meta(4096, 3, 0) + _meta(4096, 3, 5, magic=1, version=2), 4096) == 0
    assert meta_txnid(_meta(4096, 3, 5, magic=1) + _meta(4096, 3, 6, version=0), 4096) == -1
    assert meta_txnid(b"", 4096) == -1
    whole = _meta(4096, 3, 5) + _meta(4096, 3, 6)
    assert meta_txnid(whole[:4096 + _PAGE_HEADER + _META.size], 4096) == 6  # just long enough
    assert meta_txnid(whole[:4096 + _PAGE_HEADER + _META.size - 1], 4096) == 5
    assert meta_txnid(whole[:_PAGE_HEADER + _META.size - 1], 4096) == -1


# -- the entries of the directory ----------------------------------------------------------------

def test_a_new_store_creates_both_files_private_whatever_the_umask(store: Path) -> None:
    old = os.umask(0o377)
    try:
        files = _files_of(store)
    finally:
        os.umask(old)
    try:
        assert files.created == ["data.mdb", "lock.mdb"]
        for name in ("data.mdb", "lock.mdb"):
            assert os.stat(store / name).st_mode & 0o777 == 0o600
        assert files.lmdb_path == f"/proc/self/fd/{files.dir_fd}"
        files.check_data_file()  # empty, but made by this open
        files.remove_created()
        assert os.listdir(store) == [] and files.created == []
    finally:
        files.close()
    assert (files.dir_fd, files.data_fd, files.lock_fd) == (-1, -1, -1)
    files.close()  # (idempotent)


def test_only_the_missing_file_is_created_and_only_it_removed(store: Path) -> None:
    (store / "lock.mdb").write_bytes(b"")
    os.chmod(store / "lock.mdb", 0o600)
    files = _files_of(store)
    try:
        assert files.created == ["data.mdb"]
        files.remove_created()
        assert os.listdir(store) == ["lock.mdb"]
    finally:
        files.close()


def test_without_create_an_empty_directory_is_no_store(store: Path) -> None:
    with pytest.raises(StorageError) as info:
        _files_of(store, create=False)
    assert str(info.value) == f"there is no krepis store at {store}"
    assert info.value.path == str(store)
    assert os.listdir(store) == []


@pytest.mark.parametrize("count", [1, 3, 4])
def test_a_directory_holding_other_files_is_not_made_a_store(store: Path, count: int) -> None:
    for i in range(count):
        (store / f"f{i}").write_text("mine")
    fds = _open_fds()
    with pytest.raises(StorageError) as info:
        _files_of(store)
    shown = ", ".join(f"f{i}" for i in range(min(count, 3))) + (", …" if count > 3 else "")
    assert str(info.value) == (f"storage directory {store} is not a krepis store and is not empty ({shown}); "
                               "choose an empty or new directory")
    assert info.value.path == str(store)
    assert sorted(os.listdir(store)) == [f"f{i}" for i in range(count)]
    assert _open_fds() == fds  # the pinned directory closed too


@pytest.mark.parametrize("name", ["lock.mdb", "commit.log", "commit.log.new", "commit.state", ".migrate"])
def test_the_names_of_a_store_beside_a_missing_data_mdb_are_tolerated(store: Path, name: str) -> None:
    if name == ".migrate":
        (store / name).mkdir()
    else:
        (store / name).write_bytes(b"")
        os.chmod(store / name, 0o600)
    files = _files_of(store)
    try:
        assert "data.mdb" in files.created
    finally:
        files.close()


def test_a_file_that_appears_before_the_create_is_checked_like_any_other(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.open

    def racing(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if name == "data.mdb" and flags & os.O_CREAT:
            os.symlink("/nonexistent-target", store / "data.mdb")
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", racing)
    with pytest.raises(StorageError, match=r"data\.mdb is a symbolic link"):
        _files_of(store)
    monkeypatch.undo()
    os.unlink(store / "data.mdb")

    def plain(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if name == "data.mdb" and flags & os.O_CREAT:
            fd = real(str(store / "data.mdb"), os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", plain)
    files = _files_of(store)
    try:
        assert files.created == ["lock.mdb"]  # not made by this open: never removed by it
    finally:
        files.close()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_file_that_cannot_be_created_is_named(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                code: int) -> None:
    real = os.open

    def failing(name: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if name == "lock.mdb" and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code))
        return real(name, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError) as info:
        _files_of(store)
    if code == errno.EROFS:
        assert str(info.value) == f"storage at {store} is on a read-only file system"
    else:
        assert str(info.value) == f"cannot create {store}/lock.mdb: {os.strerror(code)}"
    assert info.value.path == str(store)


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb"])
def test_a_file_that_cannot_be_opened_is_named(store: Path, monkeypatch: pytest.MonkeyPatch,
                                               name: str) -> None:
    real = os.open

    def failing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == name and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError) as info:
        _files_of(store)
    assert str(info.value) == f"cannot open {store}/{name}: Permission denied"
    assert info.value.path == str(store)


def test_a_file_swapped_for_a_link_between_the_check_and_the_open_is_refused(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _files_of(store)
    files.close()
    real = os.open

    def swapping(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "lock.mdb" and not flags & os.O_CREAT:
            fd = real(path, flags, *args, **kwargs)
            os.close(fd)
            os.link(store / "lock.mdb", store / "second")  # the inode now has two links
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping)
    with pytest.raises(StorageError, match=r"lock\.mdb has 2 hard links"):
        _files_of(store, create=False)



@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb"])
def test_a_file_swapped_for_a_symlink_between_the_check_and_the_open_is_not_followed(
        store: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The open of ``data.mdb`` or ``lock.mdb`` itself refuses a symbolic link (``O_NOFOLLOW``): a
    link put there after the entry was checked, to a private regular file of one link that would
    pass every check of the opened descriptor, is never opened."""
    files = _files_of(store)
    files.close()
    target = store.parent / "elsewhere.mdb"
    target.write_bytes(b"")
    target.chmod(0o600)
    real = os.open

    def swapping(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == name and not flags & os.O_CREAT and not (store / name).is_symlink():
            os.unlink(store / name)
            os.symlink(target, store / name)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping)
    with pytest.raises(StorageError) as info:
        _files_of(store, create=False)
    assert str(info.value) == f"cannot open {store}/{name}: {os.strerror(errno.ELOOP)}"
    assert info.value.path == str(store)

# -- data.mdb's length against its meta pages ----------------------------------------------------

def test_an_empty_data_mdb_this_open_did_not_create_is_refused(store: Path) -> None:
    files = _with_data(store, b"")
    try:
        with pytest.raises(CorruptStorageError) as info:
            files.check_data_file()
    finally:
        files.close()
    full = store / "data.mdb"
    assert str(info.value) == (f"storage at {store}: {full} is empty (0 bytes); krepis does not "
                               "re-initialise "
                               "it, since it may be a store that lost its data. If you know it never held "
                               f"any, delete {full}")
    assert info.value.path == str(store)


@pytest.mark.parametrize("size", [1, _PAGE_HEADER + _META.size - 1])
def test_a_data_mdb_shorter_than_a_meta_page_is_refused(store: Path, size: int) -> None:
    files = _with_data(store, _meta(4096, 1, 1)[:size])
    try:
        with pytest.raises(CorruptStorageError) as info:
            files.check_data_file()
    finally:
        files.close()
    assert str(info.value) == (f"storage at {store}: {store}/data.mdb is truncated ({size} bytes, "
                               "shorter than "
                               "one LMDB meta page)")
    assert info.value.path == str(store)


def _refusal(store: Path, raw: bytes) -> str | None:
    files = _with_data(store, raw)
    try:
        files.check_data_file()
    except CorruptStorageError as exc:
        assert exc.path == str(store)
        return str(exc)
    finally:
        files.close()
    return None


def _needs(store: Path, txnid: int, need: int, size: int) -> str:
    return (f"storage at {store}: {store}/data.mdb is truncated: its meta page (transaction {txnid}) needs "
            f"{need} bytes, the file has {size}. Restore it from a backup; krepis will not map it")


def test_a_data_mdb_shorter_than_its_newest_meta_page_says_is_refused(store: Path) -> None:
    two = _meta(4096, 5, 3) + _meta(4096, 7, 4)
    assert _refusal(store, two) == _needs(store, 4, 8 * 4096, 8192)  # the second is newer
    two = _meta(4096, 5, 4) + _meta(4096, 7, 3)
    assert _refusal(store, two) == _needs(store, 4, 6 * 4096, 8192)  # the first is
    two = _meta(4096, 5, 4) + _meta(4096, 7, 4)
    assert _refusal(store, two) == _needs(store, 4, 6 * 4096, 8192)  # (a tie: the first)
    two = _meta(4096, 5, 4) + _meta(4096, 7, 9, magic=1)
    assert _refusal(store, two) == _needs(store, 4, 6 * 4096, 8192)  # not a meta page
    two = _meta(4096, 5, 4) + _meta(4096, 7, 9, version=2)
    assert _refusal(store, two) == _needs(store, 4, 6 * 4096, 8192)
    two = _meta(4096, 5, 4) + _meta(4096, 7, 9)[:_PAGE_HEADER + _META.size - 1]
    assert _refusal(store, two) == _needs(store, 4, 6 * 4096, 4096 + _PAGE_HEADER + _META.size - 1)
    two = _meta(4096, 5, 4) + _meta(4096, 7, 9)[:_PAGE_HEADER + _META.size]
    assert _refusal(store, two) == _needs(store, 9, 8 * 4096, 4096 + _PAGE_HEADER + _META.size)


def test_a_data_mdb_is_at_least_its_two_meta_pages(store: Path) -> None:
    assert _refusal(store, _meta(4096, 0, 1)) == _needs(store, 1, 8192, 4096)
    assert _refusal(store, _meta(4096, 1, 1) + _meta(4096, 1, 0)) is None
    assert _refusal(store, _meta(4096, 1, 1) + _meta(4096, 1, 0)[:-1]) == _needs(store, 1, 8192, 8191)
    assert _refusal(store, _meta(4096, 2, 1) + _meta(4096, 1, 0) + bytes(4096)) is None
    assert _refusal(store, _meta(512, 3, 1) + _meta(512, 0, 0)) == _needs(store, 1, 2048, 1024)


@pytest.mark.parametrize("meta", [dict(magic=0xBEEFC0DF), dict(version=2), dict(psize=256),
                                  dict(psize=3072)])
def test_a_file_that_is_not_lmdbs_is_left_to_lmdb(store: Path, meta: dict[str, int]) -> None:
    fields = dict(meta)  # (the parameter is shared by every run of the test: never changed)
    psize = fields.pop("psize", 4096)
    raw = _meta(psize, 99, 1, **fields)
    assert _refusal(store, raw[:max(psize, _PAGE_HEADER + _META.size)]) is None


def test_a_real_store_cut_short_is_refused_and_one_whose_tail_is_free_is_not(tmp_path: Path) -> None:
    """LMDB leaves pages it allocated and freed in one transaction unwritten: a file shorter than
    its last page number claims is whole when every page past its end is on the free list."""
    from krepis import LogStatus, SovereignJournal, TransactionLog
    from rawlmdb import needed_size

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for i in range(300):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, error="e" * 300),
                           increment="op")
    data = store / "data.mdb"
    raw = data.read_bytes()
    need = needed_size(data)
    files = _files_of(store, create=False)
    try:
        files.check_data_file()
        os.truncate(data, need)
        files.check_data_file()
        os.truncate(data, need - 4096)
        with pytest.raises(CorruptStorageError, match=r"data\.mdb is truncated: its meta page"):
            files.check_data_file()
    finally:
        files.close()
        data.write_bytes(raw)


# -- files deleted or replaced while open --------------------------------------------------------

def _detached(store: Path, name: str) -> str:
    if name == "data.mdb":
        return (f"storage at {store}: data.mdb was deleted or replaced while the store was open; krepis "
                "stopped using it so that no write is silently lost. Close the journal and check the store")
    return (f"storage at {store}: lock.mdb was deleted or replaced while the store was open, so another "
            "process may be using a different lock table; this journal stopped reading and writing to "
            "protect the store. Close and reopen it, and never delete lock.mdb while krepis runs (see "
            "docs/storage-format.md)")


@pytest.mark.parametrize("gone", [("data.mdb",), ("lock.mdb",), ("data.mdb", "lock.mdb")])
def test_a_deleted_file_is_named_by_the_checks(store: Path, opened: StoreFiles,
                                               gone: tuple[str, ...]) -> None:
    opened.check_attached()
    opened.check_reader()
    for name in gone:
        os.unlink(store / name)
    with pytest.raises(StorageError) as info:
        opened.check_attached()
    assert str(info.value) == _detached(store, gone[0])
    assert info.value.path == str(store)
    if "lock.mdb" in gone:  # a read needs the lock table; it names data.mdb when both are gone
        with pytest.raises(StorageError) as info:
            opened.check_reader()
        assert str(info.value) == _detached(store, gone[0])
    else:
        opened.check_reader()  # a deleted data.mdb still reads consistently
    with pytest.raises(StorageError, match="was deleted or replaced"):
        with opened.writer_lock():
            pass
    # the failed entry let go of both locks
    assert opened._thread_lock.acquire(blocking=False)
    opened._thread_lock.release()
    assert opened._writer == 0


def test_the_writer_lock_is_an_flock_on_data_mdb_held_until_the_block_ends(store: Path,
                                                                          opened: StoreFiles) -> None:
    other = os.open(store / "data.mdb", os.O_RDONLY)
    try:
        with opened.writer_lock():
            assert opened._writer == threading.get_ident()
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(store / "lock.mdb")
            opened.check_reader()  # inside this thread's write: checked there, not here
            failed: list[BaseException] = []

            def read() -> None:
                try:
                    opened.check_reader()
                except StorageError as exc:
                    failed.append(exc)

            thread = threading.Thread(target=read)
            thread.start()
            thread.join()
            assert len(failed) == 1  # another thread is checked
        assert opened._writer == 0
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)
    finally:
        os.close(other)


def test_the_writer_lock_serializes_threads(opened: StoreFiles) -> None:
    inside = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def first() -> None:
        with opened.writer_lock():
            inside.set()
            release.wait(30)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(30)
    assert not opened._thread_lock.acquire(blocking=False)
    release.set()
    with opened.writer_lock():
        order.append("second in")
    thread.join()
    assert order == ["first out", "second in"]


def test_a_writer_lock_whose_flock_fails_releases_the_thread_lock(opened: StoreFiles,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(fd: int, op: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fcntl, "flock", failing)
    with pytest.raises(OSError, match="Input/output error"):
        with opened.writer_lock():
            pass
    monkeypatch.undo()
    assert opened._thread_lock.acquire(blocking=False)
    opened._thread_lock.release()


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb"])
def test_a_file_replaced_while_lmdb_opened_the_store_is_named(store: Path, opened: StoreFiles,
                                                              name: str) -> None:
    opened.verify_opened()
    os.unlink(store / name)
    with pytest.raises(StorageError) as info:
        opened.verify_opened()
    text = (f"storage at {store}: {name} was replaced while the store was being opened; nothing was written. "
            "Check who else writes this directory")
    assert str(info.value) == text and info.value.path == str(store)
    (store / name).write_bytes(b"")  # another inode under the name
    with pytest.raises(StorageError) as info:
        opened.verify_opened()
    assert str(info.value) == text


# -- commit.log and commit.state -----------------------------------------------------------------

def test_the_log_files_are_opened_read_write_and_checked(store: Path, opened: StoreFiles) -> None:
    assert opened.open_log() is None
    assert opened.open_log("commit.state") is None
    (store / "commit.state").write_bytes(b"state")
    fd = opened.open_log("commit.state")
    assert fd is not None
    try:
        os.pwrite(fd, b"S", 0)
    finally:
        os.close(fd)
    assert (store / "commit.state").read_bytes() == b"State"
    os.symlink("/nonexistent-target", store / "commit.log")
    with pytest.raises(StorageError, match=r"commit\.log is a symbolic link"):
        opened.open_log()


def test_a_log_replaced_while_being_opened_is_refused_and_not_kept_open(
        store: Path, opened: StoreFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    (store / "commit.log").write_bytes(b"log")
    real = os.open

    def swapping(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "commit.log":
            (store / "other").write_bytes(b"other")
            os.rename(store / "other", store / "commit.log")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swapping)
    fds = _open_fds()
    with pytest.raises(StorageError) as info:
        opened.open_log()
    assert str(info.value) == f"storage at {store}: commit.log was replaced while being opened"
    assert info.value.path == str(store)
    assert _open_fds() == fds

    def failing(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(StorageError) as info:
        opened.open_log()
    assert str(info.value) == f"cannot open {store}/commit.log: Permission denied"
    assert info.value.path == str(store)


# -- is anyone else here -------------------------------------------------------------------------

def test_alone_until_another_process_has_the_environment_open(store: Path, opened: StoreFiles) -> None:
    assert opened.alone()
    assert opened.alone()  # (the probe keeps no lock)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import lmdb, sys, time; e = lmdb.open(sys.argv[1], max_dbs=16); "
                               "print('open', flush=True); time.sleep(60)", str(store)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        assert not opened.alone()
    finally:
        holder.kill()
        holder.wait()
    assert opened.alone()
    os.unlink(store / "lock.mdb")
    with pytest.raises(StorageError) as info:
        opened.alone()
    assert str(info.value) == f"cannot open {store}/lock.mdb: No such file or directory"
    assert info.value.path == str(store)



def test_alone_asks_only_lmdbs_lock_on_byte_0(store: Path, opened: StoreFiles) -> None:
    """Only byte 0 of ``lock.mdb`` tells that another process has the environment open; LMDB
    also locks the byte at each reader process's pid, and a lock on another byte (here byte 1,
    a reader of pid 1) alone does not make this process "not alone"."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.lockf(fd, fcntl.LOCK_SH, 1, 1, os.SEEK_SET); "
                               "print('locked', flush=True); time.sleep(60)", str(store / "lock.mdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        assert opened.alone()
    finally:
        holder.kill()
        holder.wait()


# -- the free list past the end of data.mdb (_tail_is_free), on pages laid out as LMDB does -------
def _node(lo: int, hi: int, nflags: int, key: bytes, data: bytes) -> bytes:
    return lo.to_bytes(2, "little") + hi.to_bytes(2, "little") + nflags.to_bytes(2, "little") + \
        len(key).to_bytes(2, "little") + key + data


def _page(psize: int, flags: int, bodies: list[bytes], pointers: list[int]) -> bytes:
    """A page: ``bodies`` laid out from its end, ``pointers`` (indices into ``bodies``) after the
    header; the header's flags and ``lower`` at offset 10."""
    page = bytearray(psize)
    offsets, end = [], psize
    for body in bodies:
        end -= len(body)
        page[end:end + len(body)] = body
        offsets.append(end)
    lower = _PAGE_HEADER + 2 * len(pointers)
    page[10:14] = flags.to_bytes(2, "little") + lower.to_bytes(2, "little")
    for i, which in enumerate(pointers):
        page[_PAGE_HEADER + 2 * i:_PAGE_HEADER + 2 * i + 2] = offsets[which].to_bytes(2, "little")
    return bytes(page)


def _leaf(psize: int, pgnos: list[int], *, copies: int = 1) -> bytes:
    """A free-list leaf page: one node listing ``pgnos`` (pointed to ``copies`` times)."""
    data = len(pgnos).to_bytes(8, "little") + b"".join(p.to_bytes(8, "little") for p in pgnos)
    return _page(psize, 0x02, [_node(len(data) & 0xFFFF, len(data) >> 16, 0, bytes(8), data)], [0] * copies)


def _branch(psize: int, children: list[int]) -> bytes:
    bodies = [_node(c & 0xFFFF, (c >> 16) & 0xFFFF, c >> 32, b"", b"") for c in children]
    return _page(psize, 0x01, bodies, list(range(len(children))))


def _free(tmp_path: Path, psize: int, pages: dict[int, bytes], count: int, last_pg: int,
          root: int = 2, raw: bytes | None = None) -> bool:
    """``_tail_is_free`` on a file of ``count`` pages (``pages`` by number, the rest zeros)."""
    from krepis.storage.lmdb._files import _tail_is_free

    path = tmp_path / f"data{len(list(tmp_path.iterdir()))}.mdb"
    with open(path, "wb") as f:
        f.truncate(count * psize)
        for pgno, page in pages.items():
            f.seek(pgno * psize)
            f.write(page)
    fd = os.open(path, os.O_RDONLY)
    try:
        return _tail_is_free(fd, psize, root.to_bytes(8, "little") if raw is None else raw,
                             count * psize, last_pg)
    finally:
        os.close(fd)


def test_the_tail_is_free_only_when_the_free_list_holds_every_page_past_the_end(tmp_path: Path) -> None:
    ps = 4096  # pages 0, 1: meta; 2: the free list's root; the file ends after page 3
    assert _free(tmp_path, ps, {2: _leaf(ps, [4, 5])}, 4, 5)
    assert _free(tmp_path, ps, {2: _leaf(ps, [5, 4, 3])}, 4, 5)
    assert not _free(tmp_path, ps, {2: _leaf(ps, [4])}, 4, 5)  # the last two pages count too
    assert not _free(tmp_path, ps, {2: _leaf(ps, [5])}, 4, 5)
    assert not _free(tmp_path, ps, {2: _leaf(ps, [4, 5])}, 4, 5, raw=bytes(7))  # root unreadable
    assert not _free(tmp_path, ps, {2: _leaf(ps, [4, 5])}, 4, 5, root=2**64 - 1)  # no free list
    assert not _free(tmp_path, ps, {2: _leaf(ps, [4, 5])}, 4, 5, root=4)  # root past the end
    assert _free(tmp_path, ps, {2: _branch(ps, [3]), 3: _leaf(ps, [4, 5])}, 4, 5)


def test_a_free_list_leaf_with_more_than_32767_bytes_of_node_pointers_is_read(tmp_path: Path) -> None:
    """``lower`` is unsigned: a 64 KiB page's node pointers may reach past 32 KiB."""
    ps = 65536
    assert _free(tmp_path, ps, {2: _leaf(ps, [4], copies=16384)}, 4, 4)


def test_more_than_a_mebipage_past_the_end_is_never_free(tmp_path: Path) -> None:
    """At most 2**20 missing pages are looked for on the free list (here on overflow pages)."""
    ps = 4096
    for n, free in ((1 << 20, True), ((1 << 20) + 1, False)):
        first = 3 + (8 * (n + 1) + _PAGE_HEADER) // ps + 1  # the pages after the overflow run
        data = n.to_bytes(8, "little") + b"".join(p.to_bytes(8, "little") for p in range(first, first + n))
        leaf = _page(ps, 0x02, [_node(len(data) & 0xFFFF, len(data) >> 16, 0x01, bytes(8),
                                      (3).to_bytes(8, "little"))], [0])
        overflow = bytes(_PAGE_HEADER) + data
        assert _free(tmp_path, ps, {2: leaf, 3: overflow}, first, first + n - 1) is free


def test_a_free_list_that_points_back_at_itself_ends(tmp_path: Path) -> None:
    """A cycle in a damaged free list: the walk gives up after 2**20 pages."""
    ps = 4096
    assert not _free(tmp_path, ps, {2: _branch(ps, [2])}, 4, 4)


@pytest.mark.parametrize("extra, free", [(0, True), (1, False)])
def test_the_walk_reads_at_most_a_mebipage_of_the_free_list(tmp_path: Path, extra: int, free: bool) -> None:
    """The walk reads at most 2**20 pages: the leaf that lists the missing page is found when it is
    the 2**20th page read, not when it would be the one after (pages may be listed many times)."""
    ps = 4096
    child = [_node(c, 0, 0, b"", b"") for c in (5, 3, 4)]  # to the leaf that matters, X, Y
    m, j = 524, 50 + extra  # the root, j times Y, m times X (each 2000 times Y), then the leaf:
    assert 1 + j + m * 2001 + 1 == (1 << 20) + extra
    pages = {2: _page(ps, 0x01, child, [0] + [1] * m + [2] * j),
             3: _page(ps, 0x01, [_node(4, 0, 0, b"", b"")], [0] * 2000),
             4: _leaf(ps, []), 5: _leaf(ps, [6])}
    assert _free(tmp_path, ps, pages, 6, 6) is free


def test_the_missing_pages_may_be_listed_across_nodes_and_pages(tmp_path: Path) -> None:
    """Every node of a leaf is read (its pointers in order after the header), and a leaf that
    does not list them all leaves the rest to the next page of the walk, never to bytes past its
    last pointer."""
    ps = 4096

    def listing(pgnos: list[int]) -> bytes:
        data = len(pgnos).to_bytes(8, "little") + b"".join(p.to_bytes(8, "little") for p in pgnos)
        return _node(len(data), 0, 0, bytes(8), data)

    two_nodes = _page(ps, 0x02, [listing([4]), listing([6]), listing([5])], [0, 1, 2])
    assert _free(tmp_path, ps, {2: two_nodes}, 4, 6)
    assert _free(tmp_path, ps, {2: _branch(ps, [3, 5]), 3: _leaf(ps, [6]), 5: _leaf(ps, [7])}, 6, 7)
    assert not _free(tmp_path, ps, {2: _branch(ps, [3, 5]), 3: _leaf(ps, [4]), 5: _leaf(ps, [7])}, 6, 7)


def _free_at(tmp_path: Path, psize: int, pages: dict[int, bytes], size: int, last_pg: int) -> bool:
    """``_tail_is_free`` on a (sparse) file of ``size`` bytes, ``pages`` written by number."""
    from krepis.storage.lmdb._files import _tail_is_free

    path = tmp_path / f"sparse{len(list(tmp_path.iterdir()))}.mdb"
    with open(path, "wb") as f:
        f.truncate(size)
        for pgno, page in pages.items():
            f.seek(pgno * psize)
            f.write(page[:max(0, size - pgno * psize)])
    fd = os.open(path, os.O_RDONLY)
    try:
        return _tail_is_free(fd, psize, (2).to_bytes(8, "little"), size, last_pg)
    finally:
        os.close(fd)


def _listing(pgnos: list[int], *, count: int | None = None) -> bytes:
    return (len(pgnos) if count is None else count).to_bytes(8, "little") + \
        b"".join(p.to_bytes(8, "little") for p in pgnos)


def test_the_free_list_is_read_as_lmdb_lays_it_out_at_its_limits(tmp_path: Path) -> None:
    """Page numbers of 16 bits and more in a branch node, a node of 32 KiB or more on an overflow
    page: every field read unsigned and whole."""
    ps = 4096
    far = 65537  # a child page number with a high half (a sparse file of 256 MiB)
    assert _free_at(tmp_path, ps, {2: _branch(ps, [far]), far: _leaf(ps, [far + 1])}, (far + 1) * ps, far + 1)
    first = 12  # a page list of 32,776 bytes (4,096 pages) on the overflow pages 3–11
    data = _listing(list(range(first, first + 4096)))
    assert len(data) & 0x8000
    leaf = _page(ps, 0x02, [_node(len(data) & 0xFFFF, len(data) >> 16, 0x01, bytes(8),
                                  (3).to_bytes(8, "little"))], [0])
    assert _free_at(tmp_path, ps, {2: leaf, 3: bytes(_PAGE_HEADER) + data}, first * ps, first + 4095)


def test_a_damaged_free_list_never_counts_as_free(tmp_path: Path) -> None:
    """A page that is neither a branch nor a leaf, an overflow page number past the end (the
    largest one too, and the partial page at the end), a node whose data runs past its page, a
    count larger than its node: each means the file was truncated."""
    ps = 4096
    lists = _node(16, 0, 0, bytes(8), _listing([4]))
    assert not _free(tmp_path, ps, {2: _page(ps, 0x04, [lists], [0])}, 4, 4)  # an overflow page's flag

    def overflow(ovpg: int, dsize: int = 16) -> bytes:
        return _page(ps, 0x02, [_node(dsize, 0, 0x01, bytes(8), ovpg.to_bytes(8, "little"))], [0])

    assert not _free(tmp_path, ps, {2: overflow(2**64 - 1)}, 4, 4)
    tail = bytes(_PAGE_HEADER) + _listing([4, 5])  # page 4, present in part only
    assert not _free_at(tmp_path, ps, {2: overflow(4, 24), 4: tail + bytes(ps - len(tail))}, 4 * ps + 64, 5)
    page = bytearray(_page(ps, 0x02, [_node(100, 0, 0, bytes(8), _listing([4]))], [0]))  # 16 bytes
    assert not _free(tmp_path, ps, {2: bytes(page)}, 4, 4)
    assert not _free(tmp_path, ps, {2: _page(ps, 0x02, [_node(16, 0, 0, bytes(8), _listing([4], count=2))],
                                             [0])}, 4, 4)


def test_a_child_page_number_past_32_bits_is_past_the_end(tmp_path: Path) -> None:
    """A branch node's page number is 48 bits (its flags field is the high part): a damaged one
    whose low bits name a real page is still past the end."""
    ps = 4096
    assert _free(tmp_path, ps, {2: _branch(ps, [3]), 3: _leaf(ps, [4])}, 4, 4)
    assert not _free(tmp_path, ps, {2: _branch(ps, [(1 << 32) + 3]), 3: _leaf(ps, [4])}, 4, 4)


@pytest.mark.parametrize("newest", [0, 1])
def test_the_free_list_is_read_from_the_newest_meta_page(store: Path, newest: int) -> None:
    """The free database's root is taken from the newest meta page (offset 64 of its MDB_meta):
    the tail past the end is free by that page's free list, not the other's."""
    ps = 4096
    metas = [_meta(ps, 1, 1, root=3), _meta(ps, 1, 1, root=3)]  # the older: its root lists nothing
    metas[newest] = _meta(ps, 5, 2, root=2)
    body = _leaf(ps, [4, 5]) + _leaf(ps, [])
    assert _refusal(store, metas[0] + metas[1] + body) is None
    assert _refusal(store, metas[0] + metas[1] + _leaf(ps, [4]) + _leaf(ps, [])) == _needs(store, 2, 6 * ps,
                                                                                           4 * ps)


def test_node_offsets_are_unsigned_in_pages_larger_than_64_kib(tmp_path: Path) -> None:
    """A meta page may claim pages of 128 KiB: a node's offset past 32 KiB is read unsigned."""
    ps = 1 << 17
    data = _listing([4])
    page = bytearray(ps)
    page[10:14] = (0x02).to_bytes(2, "little") + (_PAGE_HEADER + 2).to_bytes(2, "little")
    page[_PAGE_HEADER:_PAGE_HEADER + 2] = (40000).to_bytes(2, "little")
    node = _node(len(data), 0, 0, bytes(8), data)
    page[40000:40000 + len(node)] = node
    assert _free(tmp_path, ps, {2: bytes(page)}, 4, 4)


def test_a_node_cut_by_the_end_of_its_page_is_damage(tmp_path: Path) -> None:
    ps = 4096
    page = bytearray(_leaf(ps, [4]))
    page[_PAGE_HEADER:_PAGE_HEADER + 2] = (ps - 4).to_bytes(2, "little")  # its header past the page
    assert not _free(tmp_path, ps, {2: bytes(page)}, 4, 4)


def test_the_files_are_private_from_their_creation(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created with mode 0600, not made private afterwards: a reader that opened a new file in
    between would keep its descriptor (the fchmod after the open only undoes a umask)."""
    seen: list[int] = []
    real_fchmod = os.fchmod

    def fchmod(fd: int, mode: int) -> None:
        seen.append(os.fstat(fd).st_mode & 0o777)
        real_fchmod(fd, mode)

    monkeypatch.setattr(os, "fchmod", fchmod)
    old = os.umask(0)
    try:
        files = _files_of(store)
    finally:
        os.umask(old)
    files.close()
    assert seen == [0o600, 0o600]


def test_close_closes_a_descriptor_numbered_0(store: Path) -> None:
    """In a process started with its standard input closed, the pinned directory may be
    descriptor 0: closing the files closes it too."""
    saved = os.dup(0)
    os.close(0)
    try:
        files = _files_of(store)
        assert 0 in (files.dir_fd, files.data_fd, files.lock_fd)
        files.close()
        with pytest.raises(OSError):
            os.fstat(0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)
