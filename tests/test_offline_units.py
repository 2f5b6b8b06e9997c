"""Taking a store offline (``krepis.storage.lmdb._offline.Offline``, for restore and migrate):
which locks it holds and for how long, the refusals while a process (this one or another) has
the store open, and the store entries it refuses to touch."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import CorruptStorageError, SovereignJournal, StorageError
from krepis.storage.lmdb._offline import Offline
from test_paths_units import _as_nobody

from conftest import make_store

COMMAND = "krepis migrate"


def _directory_locked(path: Path) -> bool:
    """Whether the store directory's lock (every opener takes it) is held by someone else."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


_SHARED = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
except OSError:
    print("held")
else:
    print("free")
"""


def exclusively_locked(lock: Path) -> bool:
    """Whether a process holds LMDB's exclusive lock on ``lock.mdb`` (another process asks for a
    shared one, as every opener does; record locks are per process)."""
    out = subprocess.run([sys.executable, "-c", _SHARED, str(lock)], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    return out == "held"


def test_offline_holds_both_locks_until_it_is_closed(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    with Offline(str(store), create=False, command=COMMAND) as off:
        assert off.path == str(store) and off.dir_fd >= 0
        assert _directory_locked(store)
        assert exclusively_locked(store / "lock.mdb")
    assert off.dir_fd == -1
    assert not _directory_locked(store)
    assert not exclusively_locked(store / "lock.mdb")
    off.close()  # idempotent
    with SovereignJournal(store) as journal:  # the store is untouched and opens
        assert journal.journal_count() == 3 and journal.recover_op_count("op") == 3


def test_without_a_lock_table_only_the_directory_is_locked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    os.unlink(store / "lock.mdb")
    with Offline(str(store), create=False, command=COMMAND) as off:
        assert _directory_locked(store)
        assert not (store / "lock.mdb").exists()
        off.rebuild_lock_table()  # nothing to rebuild: no lock table, no exclusive lock
        assert not (store / "lock.mdb").exists()
    assert not _directory_locked(store)


def test_rebuilding_the_lock_table_drops_the_exclusive_lock_but_keeps_openers_out(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    with Offline(str(store), create=False, command=COMMAND) as off:
        off.rebuild_lock_table()
        assert not exclusively_locked(store / "lock.mdb")
        assert _directory_locked(store)
        off.rebuild_lock_table()  # a second call does nothing
    assert not _directory_locked(store)


def test_a_missing_store_is_made_only_when_asked(tmp_path: Path) -> None:
    store = tmp_path / "new"
    with pytest.raises(StorageError, match=f"there is no krepis store at {store}$"):
        Offline(str(store), create=False, command=COMMAND)
    with Offline(str(store), create=True, command=COMMAND):
        assert store.is_dir() and (store.stat().st_mode & 0o777) == 0o700
    assert list(store.iterdir()) == []


def test_a_store_open_in_this_process_is_refused_and_nothing_stays_locked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    with SovereignJournal(store):
        with pytest.raises(StorageError) as info:
            Offline(str(store), create=False, command=COMMAND)
        assert str(info.value) == f"storage at {store} is open in this process; close it before {COMMAND}"
        assert info.value.path == str(store)
    assert not _directory_locked(store)


_HOLDER = """
import sys
from krepis import SovereignJournal
journal = SovereignJournal(sys.argv[1])
print("open", flush=True)
sys.stdin.read()
journal.close()
"""


@contextlib.contextmanager
def _held_by_another_process(store: Path) -> Iterator[None]:
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "open"
        yield
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=60)


def test_a_store_open_in_another_process_is_refused_and_nothing_stays_locked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    with _held_by_another_process(store):
        with pytest.raises(StorageError) as info:
            Offline(str(store), create=False, command=COMMAND)
        assert str(info.value) == (f"storage at {store} is open in another process; stop every process "
                                   f"using it, then run {COMMAND} again")
        assert info.value.path == str(store)
        assert not _directory_locked(store)
    with Offline(str(store), create=False, command=COMMAND):  # and once it is closed, it works
        pass


@pytest.mark.parametrize("name", ["data.mdb", "lock.mdb"])
def test_store_files_that_are_links_or_directories_are_refused(tmp_path: Path, name: str) -> None:
    store = make_store(tmp_path / "store")
    os.rename(store / name, tmp_path / name)
    os.symlink(tmp_path / name, store / name)
    with pytest.raises(StorageError, match=f"{name} is a symbolic link"):
        Offline(str(store), create=False, command=COMMAND)
    os.unlink(store / name)
    os.mkdir(store / name)
    with pytest.raises(CorruptStorageError, match=f"{name} is a directory$"):
        Offline(str(store), create=False, command=COMMAND)
    assert not _directory_locked(store)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_lock_table_that_cannot_be_opened_is_named() -> None:
    """As the store's owner without read-write access to lock.mdb (in this process, as the
    'nobody' user with root kept as the saved id)."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="krepis-offline-"))  # outside pytest's 0700 root
    try:
        base.chmod(0o755)
        store = make_store(base / "store")
        for p in (store, *store.iterdir()):
            os.chown(p, nobody, nobody)
        (store / "lock.mdb").chmod(0o400)
        with _as_nobody(), pytest.raises(StorageError) as info:
            Offline(str(store), create=False, command=COMMAND)
        assert str(info.value) == f"cannot open {store}/lock.mdb: Permission denied"
        assert info.value.path == str(store)
        assert not _directory_locked(store)
    finally:
        import shutil

        shutil.rmtree(base)


@contextlib.contextmanager
def _descriptor_0_free() -> Iterator[None]:
    """Descriptor 0 closed (as in a daemon started without stdin), restored afterwards."""
    saved = os.dup(0)
    os.close(0)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_a_directory_pinned_as_descriptor_0_is_released(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    with _descriptor_0_free():
        with Offline(str(store), create=False, command=COMMAND) as off:
            assert off.dir_fd == 0
            assert _directory_locked(store)
        assert not _directory_locked(store)


def test_a_lock_table_opened_as_descriptor_0_is_locked_rebuilt_and_released(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path / "store")
    real_open = os.open

    def open_(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "lock.mdb":
            os.close(0)  # freed just before lock.mdb is opened: it gets descriptor 0
        return real_open(path, flags, mode, dir_fd=dir_fd)

    saved = os.dup(0)
    try:
        for rebuild in (False, True):
            monkeypatch.setattr(os, "open", open_)
            with Offline(str(store), create=False, command=COMMAND) as off:
                monkeypatch.undo()
                assert os.readlink("/proc/self/fd/0") == str(store / "lock.mdb")
                assert exclusively_locked(store / "lock.mdb")
                if rebuild:
                    off.rebuild_lock_table()
                    assert not exclusively_locked(store / "lock.mdb")
            assert not exclusively_locked(store / "lock.mdb")
            assert not _directory_locked(store)
            os.dup2(saved, 0)
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_closing_again_closes_no_descriptor_it_does_not_own(tmp_path: Path) -> None:
    """After close() (or a rebuild, which closes the lock table), the numbers it held may be
    reused by anything in the process: a second close() must not close them."""
    store = make_store(tmp_path / "store")

    def standard() -> list[tuple[int, int]]:
        return [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (0, 1, 2)]

    before = standard()
    for rebuild in (False, True):
        off = Offline(str(store), create=False, command=COMMAND)
        if rebuild:
            off.rebuild_lock_table()
        off.close()
        assert standard() == before
        reused = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]  # take the freed numbers
        try:
            off.close()
            assert standard() == before
            for fd in reused:
                os.fstat(fd)  # still open
        finally:
            for fd in reused:
                os.close(fd)
