"""Opening and closing an LMDB store in a process (``storage/lmdb/_env.py``): the fork-aware
registry of environments, the directory lock, the commit log bound at open (or made for it),
the refusals of a store's files that do not belong together, and the last close.

Real stores on disk throughout. "Another process has the store open" is played by a forked
child holding LMDB's shared lock on byte 0 of ``lock.mdb`` (what every process that opened the
environment holds); failures are injected by wrapping a stdlib call.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

import rawlmdb
from krepis import CorruptStorageError, LogStatus, NeedsMigrationError, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage, _env, _layout
from krepis.storage.lmdb._commitlog import (
    BATCH,
    CommitLog,
    encode_payload,
    read_state,
    record_size,
    seed_link,
)
from krepis.storage.lmdb._state import NO_LOG, LogPointer, read_log_pointer

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


def _log(i: int) -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed)


def _request(i: int) -> WriteRequest:
    return WriteRequest([(_log(i), encode_log(_log(i)))], [b"op"])


def _store(path: Path, entries: int = 2) -> Path:
    """A store closed cleanly after ``entries`` writes."""
    s = LmdbStorage(path)
    for i in range(entries):
        s.write_batch([_request(i)])
    s.close()
    return path


def _pointer(path: Path, open_as: LmdbStorage | None = None) -> LogPointer:
    """``data.mdb``'s commit-log pointer, read with LMDB directly (through ``open_as``'s
    environment while it is open)."""
    if open_as is not None:
        shared = open_as._shared
        with shared.env.begin() as txn:
            return read_log_pointer(txn, shared.meta, str(path))
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return read_log_pointer(txn, env.open_db(b"meta", txn=txn, create=False), str(path))
    finally:
        env.close()


def _state(path: Path) -> tuple[bytes, int, int] | None:
    fd = os.open(path / "commit.state", os.O_RDONLY)
    try:
        return read_state(fd)
    finally:
        os.close(fd)


def _fds() -> set[str]:
    gc.collect()  # (objects of earlier tests closing their descriptors meanwhile)
    return set(os.listdir("/proc/self/fd"))


def _files(path: Path) -> dict[str, bytes]:
    """Every file but ``lock.mdb`` (LMDB's reader table, which LMDB writes at each open)."""
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())
            if p.is_file() and p.name != "lock.mdb"}


def _append_as_another_process(path: Path, mine: LmdbStorage, count: int) -> int:
    """Records appended to the log by another writer (head moved past them), as a process
    that opened the store after ``mine`` would; their end."""
    log = CommitLog(str(path), os.open(path / "commit.log", os.O_RDWR),
                    os.open(path / "commit.state", os.O_RDWR))
    try:
        tail = mine._shared.tail
        end, link, seq = tail.end, tail.link, tail.next_seq
        for i in range(count):
            payload = encode_payload([([encode_log(_log(100 + i))], [b"op"])])
            size = record_size(len(payload))
            at = log.place(end, size)
            raw, crc = CommitLog.encode(BATCH, at, end, seq, link, payload)
            log.write(at, raw)
            log.write_head(at + size)
            end, link, seq = at + size, crc, seq + 1
        return end
    finally:
        log.close()


@pytest.fixture
def other_process() -> Iterator[Callable[[Path], None]]:
    """``hold(path)``: a forked child holds LMDB's reader lock on ``path/lock.mdb`` (so the
    store is in use by another process) until the test ends."""
    children: list[int] = []

    def hold(path: Path) -> None:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                fd = os.open(path / "lock.mdb", os.O_RDWR)
                fcntl.lockf(fd, fcntl.LOCK_SH, 1, 0, os.SEEK_SET)
                os.write(ready_w, b"1")
                while True:
                    signal.pause()
            finally:
                os._exit(0)
        os.close(ready_w)
        children.append(pid)
        try:
            assert os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)

    yield hold
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def in_child(body: Callable[[], str]) -> str:
    """fork(); run ``body`` in the child; what it returned (or the error it raised)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            report = body()
        except BaseException as exc:
            report = f"unexpected {type(exc).__name__}: {exc}"
        os.write(w, report.encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.01)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@contextlib.contextmanager
def _stdout_kept() -> Iterator[None]:
    """Descriptor 1 is the same file after the block (no error path closed it)."""
    saved = os.dup(1)
    before = os.fstat(1)
    try:
        yield
        try:
            now: os.stat_result | None = os.fstat(1)
        except OSError:
            now = None
        assert now is not None and (now.st_dev, now.st_ino) == (before.st_dev, before.st_ino), \
            "descriptor 1 was closed"
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# -- the registry --------------------------------------------------------------------------


def test_open_in_this_process_says_whether_this_process_has_the_store_open(tmp_path: Path) -> None:
    path, elsewhere = tmp_path / "s", tmp_path / "t"
    assert not _env.open_in_this_process(str(path))  # (nothing there)
    a = LmdbStorage(path)
    b = LmdbStorage(path)
    c = LmdbStorage(elsewhere)
    c.close()
    try:
        assert _env.open_in_this_process(str(path))
        assert not _env.open_in_this_process(str(elsewhere))
        a.close()
        assert _env.open_in_this_process(str(path))  # b still has it
    finally:
        b.close()
    assert not _env.open_in_this_process(str(path))


def test_storages_of_one_directory_share_one_environment_until_the_last_closes(tmp_path: Path) -> None:
    path = tmp_path / "s"
    a = LmdbStorage(path)
    b = LmdbStorage(tmp_path / "." / "s")
    shared = a._shared
    assert b._shared is shared and shared.refs == 2
    a.write_batch([_request(0)])
    a.close()
    assert shared.refs == 1 and _env._registry[shared.key] is shared
    assert b.entry_count() == 1  # the environment is still open
    b.write_batch([_request(1)])
    b.close()
    assert shared.refs == 0 and shared.key not in _env._registry
    with pytest.raises(lmdb.Error):
        shared.env.stat()  # closed
    c = LmdbStorage(path)
    try:
        assert c._shared is not shared and c._shared.refs == 1 and c.entry_count() == 2
    finally:
        c.close()


def test_releasing_an_environment_the_registry_no_longer_holds_closes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = LmdbStorage(tmp_path / "s")
    shared = s._shared
    with monkeypatch.context() as m:
        m.setattr(_env, "_registry", {})  # as in a forked child: the parent's environment is not ours
        _env.release(shared)
        assert shared.refs == 0
    shared.env.stat()  # still open: not this registry's to close
    shared.refs = 1
    s.close()
    with pytest.raises(lmdb.Error):
        shared.env.stat()


def test_after_fork_the_child_inherits_the_parents_environments_and_opens_none_of_them_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork handler itself, run here on saved registry state (it runs in a forked child,
    where the test below checks what it leads to)."""
    path = tmp_path / "s"
    s = LmdbStorage(path)
    shared = s._shared
    old_lock = threading.Lock()
    old_lock.acquire()  # another thread held it at fork(): never released in the child
    with monkeypatch.context() as m:
        m.setattr(_env, "_registry", {shared.key: shared})
        m.setattr(_env, "_inherited", [])
        m.setattr(_env, "_registry_lock", old_lock)
        m.setattr(_env, "_generation", 5)
        _env._after_fork_in_child()
        assert _env.generation() == 6
        assert _env._registry == {} and _env._inherited == [shared]
        assert _env._registry_lock is not old_lock and _env._registry_lock.acquire(blocking=False)
        _env._registry_lock.release()
        assert _env.open_in_this_process(str(path))
        assert not _env.open_in_this_process(str(tmp_path))
        with pytest.raises(StorageError) as info:
            _env.acquire(str(path), True)
        assert str(info.value) == (
            f"storage at {path} was open in the parent when this process was forked; LMDB cannot "
            "open it again here. Open the journal after fork(), or use the 'spawn' or 'forkserver' "
            "start method of multiprocessing")
        assert info.value.path == str(path)
        other = _env.acquire(str(tmp_path / "t"), True)  # another store opens
        assert other.refs == 1 and list(_env._registry.values()) == [other]
        _env.release(other)
        _env._after_fork_in_child()
        assert _env.generation() == 7 and _env._inherited == [shared]
    assert shared.env.stat()  # the parent's environment was never closed
    s.close()


def test_a_forked_child_refuses_the_parents_store_and_opens_others(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = LmdbStorage(path)
    s.write_batch([_request(0)])
    parent_generation = _env.generation()

    def child() -> str:
        out = [f"generation {_env.generation() - parent_generation}",
               f"open here {_env.open_in_this_process(str(path))}"]
        try:
            LmdbStorage(path)
        except StorageError as exc:
            out.append(f"refused {'was open in the parent' in str(exc)} {exc.path == str(path)}")
        t = LmdbStorage(tmp_path / "t")
        t.write_batch([_request(1)])
        out.append(f"other store {t.entry_count()}")
        t.close()
        return "\n".join(out)

    try:
        assert in_child(child).splitlines() == ["generation 1", "open here True", "refused True True",
                                               "other store 1"]
        s.write_batch([_request(1)])  # the parent's store is untouched by the child
        assert s.entry_count() == 2
    finally:
        s.close()


# -- the directory lock and descriptors ------------------------------------------------------


def test_opening_holds_an_exclusive_lock_on_the_directory_and_releases_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    path.mkdir()
    seen: list[tuple[str, int, bool, bool]] = []
    real = fcntl.flock

    def flock(fd: int, op: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        seen.append((target, op, bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                     bool(flags & os.O_DIRECTORY)))
        real(fd, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    s = LmdbStorage(path)
    monkeypatch.undo()
    try:
        on_dir = [x for x in seen if x[0] == str(path)]
        assert on_dir == [(str(path), fcntl.LOCK_EX, True, True)]
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: another opener may go on
        finally:
            os.close(fd)
    finally:
        s.close()


def test_opening_and_closing_leaves_no_descriptor_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _store(path)
    before = _fds()
    a = LmdbStorage(path)
    b = LmdbStorage(path)  # shares a's environment: its directory descriptor is closed
    b.close()
    a.close()
    assert not _fds() - before


def test_a_second_open_closes_its_directory_descriptor_even_numbered_zero(tmp_path: Path) -> None:
    path = tmp_path / "s"
    a = LmdbStorage(path)
    saved = os.dup(0)
    try:
        os.close(0)
        b = LmdbStorage(path)  # its directory descriptor is 0
        zero_open = True
        try:
            os.fstat(0)
        except OSError:
            zero_open = False
        b.close()
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        a.close()
    assert not zero_open


# -- the background applier and the last close -----------------------------------------------


def test_the_applier_starts_with_the_first_write_once(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = LmdbStorage(path)
    shared = s._shared
    assert shared.applier is None
    s.write_batch([_request(0)])
    applier = shared.applier
    assert applier is not None and applier.is_alive()
    assert applier.daemon and applier.name == f"krepis-apply:{path}"
    _env.start_applier(shared)
    s.write_batch([_request(1)])
    assert shared.applier is applier
    s.close()
    assert not applier.is_alive()


def _no_background_applier(s: LmdbStorage) -> None:
    """Keep LMDB behind the log until the close (no applier thread is started)."""
    done = threading.Thread(target=lambda: None)
    done.start()
    s._shared.applier = done


def test_the_last_close_brings_lmdb_up_to_date_with_the_log(tmp_path: Path) -> None:
    path = tmp_path / "s"
    s = LmdbStorage(path)
    _no_background_applier(s)
    for i in range(3):
        s.write_batch([_request(i)])
    end = s._shared.tail.end
    assert _pointer(path, s).position < end  # LMDB is behind
    s.close()
    assert _pointer(path).position == end
    said = _state(path)
    assert said is not None and said[1] == end


def test_a_process_that_only_read_writes_nothing_at_close(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    before = _pointer(path)
    s = LmdbStorage(path)
    end = _append_as_another_process(path, s, 2)
    assert s.entry_count() == 4  # the other process's records, caught up with
    s.close()
    after = _pointer(path)
    assert (after.position, after.link) == (before.position, before.link) and before.position < end


def test_after_a_write_path_failure_the_close_leaves_lmdb_to_recovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    s = LmdbStorage(path)
    _no_background_applier(s)
    s.write_batch([_request(0)])
    before = _pointer(path, s).position

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(os, "fdatasync", fail)
        with pytest.raises(StorageError, match=r"flushing commit\.log failed"):
            s.write_batch([_request(1)])
    assert s._shared.failed is not None
    s.close()
    assert _pointer(path).position == before  # nothing applied after the failure
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2  # (the record is in the log: recovered)
    finally:
        s.close()


@pytest.mark.parametrize("flush_fails", [False, True])
def test_a_close_that_cannot_update_lmdb_flushes_the_log_instead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flush_fails: bool) -> None:
    path = tmp_path / "s"
    s = LmdbStorage(path, durable=False)
    _no_background_applier(s)
    for i in range(3):
        s.write_batch([_request(i)])
    before = _pointer(path, s).position
    data_fd, log_fd = s._shared.files.data_fd, s._shared.log.fd
    flushed: list[int] = []
    real_flock = fcntl.flock

    def flock(fd: int, op: int) -> None:
        if fd == data_fd and op == fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")
        real_flock(fd, op)

    def fdatasync(fd: int) -> None:
        flushed.append(fd)
        if flush_fails:
            raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as m:
        m.setattr(fcntl, "flock", flock)
        m.setattr(os, "fdatasync", fdatasync)
        s.close()  # never raises: what the log holds is recovered by the next open
    assert flushed == [log_fd]
    assert _pointer(path).position == before
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 3
    finally:
        s.close()


# -- opening: LMDB's settings, the sequence record, other processes ---------------------------


def test_lmdb_is_opened_synced_with_the_documented_map_and_reader_table(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "s")
    try:
        env = s._shared.env
        flags = env.flags()
        assert flags["sync"] and flags["metasync"] and flags["subdir"] and not flags["readonly"]
        assert env.info()["map_size"] == _layout._MAP_SIZE
        assert env.max_readers() == _layout._MAX_READERS
    finally:
        s.close()


def test_a_sequence_record_behind_the_entries_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "s", 3)  # entries 0, 1, 2; seq 3
    rawlmdb.edit(path, lambda txn, db: txn.put(b"seq", _layout._U64.pack(2), db=db(b"meta")))
    fds = _fds()
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert not _fds() - fds  # the commit log made for it is closed again
    assert str(info.value) == (f"storage at {path}: the sequence record says 2, but entry 2 exists; the "
                               "meta sequence is behind the entries")
    assert info.value.path == str(path)
    assert not _env.open_in_this_process(str(path))
    rawlmdb.edit(path, lambda txn, db: txn.put(b"seq", _layout._U64.pack(3), db=db(b"meta")))
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 3
    finally:
        s.close()


def test_a_commit_state_not_the_logs_is_refused_while_another_process_uses_the_store(
        tmp_path: Path, other_process: Callable[[Path], None]) -> None:
    path = _store(tmp_path / "s")
    other = _store(tmp_path / "other")
    (path / "commit.state").write_bytes((other / "commit.state").read_bytes())
    other_process(path)
    with pytest.raises(StorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (
        f"storage at {path}: commit.state is missing or not this log's while other processes use the "
        "store; never delete the store's files (see docs/storage-format.md)")
    assert info.value.path == str(path)


def test_a_store_another_process_uses_is_caught_up_with_not_recovered(
        tmp_path: Path, other_process: Callable[[Path], None]) -> None:
    path = _store(tmp_path / "s")
    s = LmdbStorage(path)
    end = _append_as_another_process(path, s, 2)
    s.close()  # (read nothing, wrote nothing: LMDB is still behind the log)
    other_process(path)
    s = LmdbStorage(path)
    try:
        assert s._shared.tail.end == end and s.entry_count() == 4
        assert _pointer(path, s).position < end  # nothing was applied: that is recovery's, when alone
    finally:
        s.close()


def test_a_commit_log_missing_while_another_process_uses_the_store_is_refused(
        tmp_path: Path, other_process: Callable[[Path], None]) -> None:
    path = _store(tmp_path / "s")
    (path / "commit.log").unlink()
    other_process(path)
    before = _files(path)
    with pytest.raises(StorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (f"storage at {path}: commit.log is missing while other processes use the "
                               "store; never delete commit.log (see docs/storage-format.md)")
    assert info.value.path == str(path)
    assert _files(path) == before


def test_a_failed_open_of_a_new_store_removes_what_it_created(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    real = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        if src == "commit.log.new":
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst, **kw)

    before = _fds()
    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        with pytest.raises(StorageError) as info:
            LmdbStorage(path)
    assert str(info.value) == f"storage at {path}: cannot create commit.log: Input/output error"
    assert info.value.path == str(path)
    assert not (path / "data.mdb").exists() and not (path / "lock.mdb").exists()
    assert not _fds() - before and not _env.open_in_this_process(str(path))
    s = LmdbStorage(path)
    try:
        s.write_batch([_request(0)])
    finally:
        s.close()


# -- the commit log bound to data.mdb ----------------------------------------------------------


def test_a_new_store_gets_a_new_random_log_named_by_data_mdb(tmp_path: Path) -> None:
    ids = []
    for name in ("a", "b"):
        path = tmp_path / name
        s = LmdbStorage(path)
        log_id = s._shared.log.log_id
        s.close()
        assert len(log_id) == 16 and log_id != NO_LOG
        pointer = _pointer(path)
        assert (pointer.log_id, pointer.position, pointer.link) == (log_id, 0, seed_link(log_id))
        assert _state(path) == (log_id, 0, 0)
        assert not (path / "commit.log.new").exists()
        ids.append(log_id)
    assert ids[0] != ids[1]


def test_the_log_of_another_store_is_refused_both_files_untouched(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    other = _store(tmp_path / "other")
    (path / "commit.log").write_bytes((other / "commit.log").read_bytes())
    mine, theirs = _pointer(path).log_id, _pointer(other).log_id
    before = _files(path)
    fds = _fds()
    with _stdout_kept(), pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (
        f"storage at {path}: commit.log does not belong to this data.mdb (the log's id is {theirs.hex()}, "
        f"data.mdb continues log {mine.hex()}): it was copied from another store or another copy of this "
        "one. Nothing was written; put the right commit.log back, or restore the store with krepis restore")
    assert info.value.path == str(path)
    assert _files(path) == before
    assert not _fds() - fds  # (the log's mapping of commit.state closed, not left to the collector)


def test_a_damaged_log_of_a_store_that_names_one_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    (path / "commit.log").write_bytes(b"x" * 8192)
    fds = _fds()
    with pytest.raises(CorruptStorageError, match=r"commit\.log is not a krepis commit log"):
        LmdbStorage(path)
    assert not _fds() - fds


def _name_no_log(path: Path) -> None:
    """``data.mdb`` made to name no commit log, as a restore or a migration leaves it."""
    env = lmdb.open(str(path), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=env.open_db(b"meta", txn=txn, create=False))
    finally:
        env.close()


@pytest.mark.parametrize("log", ["another store's", "damaged"])
def test_a_data_mdb_naming_no_log_replaces_the_log_beside_it_when_alone(tmp_path: Path, log: str) -> None:
    path = _store(tmp_path / "s")
    other = _store(tmp_path / "other")
    _name_no_log(path)
    if log == "damaged":
        (path / "commit.log").write_bytes(b"x" * 8192)  # (a format-3 log a migration left)
    else:
        (path / "commit.log").write_bytes((other / "commit.log").read_bytes())
    fds = _fds()
    s = LmdbStorage(path)
    try:
        new = s._shared.log.log_id
        assert new not in (NO_LOG, _pointer(other).log_id) and s.entry_count() == 2
    finally:
        s.close()
    assert _pointer(path).log_id == new and not _fds() - fds


def test_a_data_mdb_naming_no_log_refuses_another_log_while_another_process_uses_the_store(
        tmp_path: Path, other_process: Callable[[Path], None]) -> None:
    path = _store(tmp_path / "s")
    other = _store(tmp_path / "other")
    _name_no_log(path)
    (path / "commit.log").write_bytes((other / "commit.log").read_bytes())
    other_process(path)
    with pytest.raises(CorruptStorageError, match=r"commit\.log does not belong to this data\.mdb"):
        LmdbStorage(path)


def test_a_deleted_log_of_a_store_closed_cleanly_is_replaced(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    old = _pointer(path).log_id
    (path / "commit.log").unlink()
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2 and s._shared.log.log_id != old
    finally:
        s.close()


@pytest.mark.parametrize("state", ["missing", "garbage", "another log's"])
def test_a_deleted_log_is_replaced_when_commit_state_says_nothing_of_it(tmp_path: Path, state: str) -> None:
    path = _store(tmp_path / "s")
    s = LmdbStorage(path)
    _append_as_another_process(path, s, 2)  # records data.mdb never gets
    s.close()
    (path / "commit.log").unlink()
    if state == "missing":
        (path / "commit.state").unlink()
    elif state == "garbage":
        (path / "commit.state").write_bytes(b"x" * 4096)
    else:  # (a log that went further than this store's: its head past data.mdb's pointer)
        other = _store(tmp_path / "other", 6)
        (path / "commit.state").write_bytes((other / "commit.state").read_bytes())
        said = _state(path)
        assert said is not None and said[1] > _pointer(path).position
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2
    finally:
        s.close()


def test_a_deleted_log_holding_records_data_mdb_lacks_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    s = LmdbStorage(path)
    end = _append_as_another_process(path, s, 2)
    s.close()
    position = _pointer(path).position
    (path / "commit.log").unlink()
    before = _files(path)
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (
        f"storage at {path}: commit.log is missing, but commit.state says it held records up to position "
        f"{end} that data.mdb has not applied (data.mdb is at {position}): acknowledged writes would be "
        "lost. Nothing was written; put commit.log back, or restore the store from a backup")
    assert info.value.path == str(path)
    assert _files(path) == before


def _write_state(path: Path, log_id: bytes, head: int, durable: int) -> None:
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.close(CommitLog.create_state(dfd, log_id, head, durable, path=str(path)))
    finally:
        os.close(dfd)


def test_a_deleted_log_durable_past_data_mdb_is_refused_whatever_the_head_says(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    pointer = _pointer(path)
    (path / "commit.log").unlink()
    _write_state(path, pointer.log_id, pointer.position, pointer.position + 64)
    with pytest.raises(CorruptStorageError, match=rf"up to position {pointer.position + 64} that data.mdb "):
        LmdbStorage(path)
    _write_state(path, pointer.log_id, pointer.position + 64, 0)
    with pytest.raises(CorruptStorageError, match=rf"up to position {pointer.position + 64} that data.mdb "):
        LmdbStorage(path)
    _write_state(path, pointer.log_id, pointer.position, pointer.position)  # nothing past data.mdb
    LmdbStorage(path).close()


def test_a_state_naming_no_log_beside_a_data_mdb_naming_none_says_nothing(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    _name_no_log(path)
    (path / "commit.log").unlink()
    _write_state(path, NO_LOG, 4096, 4096)
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2 and s._shared.log.log_id != NO_LOG
    finally:
        s.close()


# -- a new log renamed into place after a crash -------------------------------------------------


def test_a_new_log_named_by_data_mdb_is_renamed_into_place(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    log_id = _pointer(path).log_id
    (path / "commit.log").rename(path / "commit.log.new")
    s = LmdbStorage(path)
    try:
        assert s._shared.log.log_id == log_id and s.entry_count() == 2
    finally:
        s.close()
    assert (path / "commit.log").exists() and not (path / "commit.log.new").exists()


@pytest.mark.parametrize("new", ["another store's", "garbage", "a directory", "a fifo", "a symlink"])
def test_a_commit_log_new_data_mdb_does_not_name_is_left_alone(tmp_path: Path, new: str) -> None:
    path = _store(tmp_path / "s")
    log_id = _pointer(path).log_id
    aside = tmp_path / "aside"
    target = path / "commit.log.new"
    if new == "another store's":
        target.write_bytes((_store(tmp_path / "other") / "commit.log").read_bytes())
    elif new == "garbage":
        target.write_bytes(b"x" * 8192)
    elif new == "a directory":
        target.mkdir()
    elif new == "a fifo":
        os.mkfifo(target)
    else:
        (path / "commit.log").rename(aside)  # the right log, but only through a link
        target.symlink_to(aside)
    kept = aside.read_bytes() if new == "a symlink" else b""
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2
        assert (s._shared.log.log_id == log_id) == (new != "a symlink")
    finally:
        s.close()
    assert (path / "commit.log").is_file()
    if new == "a symlink":  # never followed: a new log was made beside it, the link's target untouched
        assert not os.path.lexists(target) and aside.read_bytes() == kept
    else:
        assert os.path.lexists(target)


def test_a_commit_log_new_naming_no_log_is_never_renamed_into_place(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    _name_no_log(path)
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        CommitLog.create(dfd, str(path), NO_LOG, 0, rename=False)
    finally:
        os.close(dfd)
    (path / "commit.log").unlink()
    s = LmdbStorage(path)
    try:
        assert s._shared.log.log_id != NO_LOG
    finally:
        s.close()


# -- making a new log fails ----------------------------------------------------------------------


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), OSError("no room")])
def test_a_log_that_cannot_be_created_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               error: OSError) -> None:
    path = _store(tmp_path / "s")
    (path / "commit.log").unlink()
    real = os.open

    def open_(name: Any, flags: int, *args: Any, **kw: Any) -> int:
        if name == "commit.log.new" and flags & os.O_CREAT:
            raise error
        return real(name, flags, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(os, "open", open_)
        with pytest.raises(StorageError) as info:
            LmdbStorage(path)
    said = "No space left on device" if error.strerror else "no room"
    assert str(info.value) == f"storage at {path}: cannot create commit.log: {said}"
    assert info.value.path == str(path)


def test_a_log_that_vanishes_while_it_is_made_is_named(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = _store(tmp_path / "s")
    (path / "commit.log").unlink()

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        pass  # (as if another hand removed it right after)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        with pytest.raises(StorageError) as info:
            LmdbStorage(path)
    assert str(info.value) == f"storage at {path}: commit.log vanished while it was created"
    assert info.value.path == str(path)


def test_a_failed_fsync_of_the_new_log_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _store(tmp_path / "s")
    (path / "commit.log").unlink()
    real = os.fsync
    renamed: list[bool] = []
    real_rename = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        real_rename(src, dst, **kw)
        renamed.append(True)

    def fsync(fd: int) -> None:
        if renamed:
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    with monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        m.setattr(os, "fsync", fsync)
        with pytest.raises(StorageError) as info:
            LmdbStorage(path)
    assert str(info.value) == f"storage at {path}: cannot create commit.log: Input/output error"


# -- the named databases and the format ---------------------------------------------------------


def test_a_new_store_holds_its_databases_and_first_meta_records(tmp_path: Path) -> None:
    path = tmp_path / "s"
    LmdbStorage(path).close()
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            names = sorted(k for k, _ in txn.cursor())
            meta = env.open_db(b"meta", txn=txn, create=False)
            records = dict(txn.cursor(db=meta))
            flags = {}
            for name in names:  # (opened without flags: LMDB reports those each database was made with)
                found = env.open_db(name, txn=txn, create=False).flags(txn)  # type: ignore[call-arg]
                flags[name] = (found["dupsort"], found["dupfixed"])
    finally:
        env.close()
    assert names == sorted(_layout._DB_NAMES)
    assert flags == {name: (dup, dup) for name, dup in _layout._DBS}  # index: sorted duplicates, fixed size
    assert records[b"format"] == b"%d" % _layout.FORMAT_VERSION
    assert records[b"seq"] == bytes(8) and records[b"next_op"] == bytes(8)
    assert records[b"tree"] == bytes(16)


def test_a_store_without_the_checkpoints_database_gets_it(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    rawlmdb.edit(path, lambda txn, db: txn.drop(db(b"checkpoints"), delete=True))
    s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2 and s.checkpoints() == []
    finally:
        s.close()


def test_an_lmdb_store_without_meta_is_not_a_krepis_store(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=env.open_db(b"things", txn=txn))
    env.close()
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == f"storage at {path} is an LMDB store but not a krepis store (no meta database)"
    assert info.value.path == str(path)


@pytest.mark.parametrize(("fmt", "by"), [(b"1", "krepis 0.1"), (b"2", "a krepis without the commit log"),
                                         (b"3", "a krepis whose commit log was not yet the write path")])
def test_an_older_format_asks_for_a_migration(tmp_path: Path, fmt: bytes, by: str) -> None:
    path = _store(tmp_path / "s")
    rawlmdb.edit(path, lambda txn, db: txn.put(b"format", fmt, db=db(b"meta")))
    with pytest.raises(NeedsMigrationError) as info:
        LmdbStorage(path)
    assert str(info.value) == (
        f"storage at {path} is in format {fmt.decode()} (written by {by}); this krepis reads format "
        f"{_layout.FORMAT_VERSION}. Convert it once with: krepis migrate --storage {path}")
    assert info.value.path == str(path)


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    rawlmdb.edit(path, lambda txn, db: txn.put(b"format", b"9", db=db(b"meta")))
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (f"storage at {path} has format version b'9'; this krepis reads version "
                               f"{_layout.FORMAT_VERSION}")
    assert info.value.path == str(path)


def test_missing_databases_are_named(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")

    def drop(txn: Any, db: Any) -> None:
        for name in (b"tree", b"ops", b"checkpoints"):
            txn.drop(db(name), delete=True)

    rawlmdb.edit(path, drop)
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (f"storage at {path} is an LMDB store but not a krepis store (missing "
                               "databases: ops, tree)")
    assert info.value.path == str(path)


@pytest.mark.parametrize("log", ["another store's", "damaged"])
def test_a_failure_making_the_replacing_log_closes_only_the_old_logs_descriptor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: str) -> None:
    path = _store(tmp_path / "s")
    other = _store(tmp_path / "other")
    _name_no_log(path)
    if log == "damaged":
        (path / "commit.log").write_bytes(b"x" * 8192)
    else:
        (path / "commit.log").write_bytes((other / "commit.log").read_bytes())
    real = os.rename

    def rename(src: Any, dst: Any, **kw: Any) -> None:
        if src == "commit.log.new":
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst, **kw)

    fds = _fds()
    with _stdout_kept(), monkeypatch.context() as m:
        m.setattr(os, "rename", rename)
        with pytest.raises(StorageError, match=r"cannot create commit\.log: Input/output error"):
            LmdbStorage(path)
    assert not _fds() - fds


def test_a_data_file_lmdb_cannot_open_is_named_by_the_stores_path(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.mkdir()
    (path / "data.mdb").write_bytes(b"\x01" * 20000)
    with pytest.raises(CorruptStorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (f"storage at {path} is corrupted or not an LMDB store (opening): {path}: "
                               "MDB_INVALID: File is not an LMDB file")
    assert info.value.path == str(path) and sorted(os.listdir(path)) == ["data.mdb"]


def test_an_lmdb_error_after_the_environment_opened_is_named(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")

    def flat_index(txn: Any, db: Any) -> None:
        txn.drop(db(b"index"), delete=True)

    rawlmdb.edit(path, flat_index)
    env = lmdb.open(str(path), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"index", b"a plain record, not a database")
    env.close()
    with pytest.raises(StorageError) as info:
        LmdbStorage(path)
    assert str(info.value) == (f"storage at {path} failed while opening: mdb_dbi_open: MDB_INCOMPATIBLE: "
                               "Operation and DB incompatible, or DB flags changed")
    assert info.value.path == str(path) and not _env.open_in_this_process(str(path))


@pytest.mark.parametrize(("error", "said"), [
    (OSError(errno.EROFS, "Read-only file system"), "storage at {path} is on a read-only file system"),
    (OSError(errno.EACCES, "Permission denied"), "cannot open storage at {path}: Permission denied"),
])
def test_an_os_error_opening_lmdb_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           error: OSError, said: str) -> None:
    path = tmp_path / "s"

    def refuse(*args: Any, **kw: Any) -> None:
        raise error

    fds = _fds()
    with monkeypatch.context() as m:
        m.setattr(lmdb, "open", refuse)
        with pytest.raises(StorageError) as info:
            LmdbStorage(path)
    assert str(info.value) == said.format(path=path) and info.value.path == str(path)
    assert os.listdir(path) == [] and not _fds() - fds


def test_a_missing_commit_state_is_made_again_when_alone(tmp_path: Path) -> None:
    path = _store(tmp_path / "s")
    log_id = _pointer(path).log_id
    (path / "commit.state").unlink()
    with _stdout_kept():  # (no descriptor taken for the missing state)
        s = LmdbStorage(path)
    try:
        assert s.entry_count() == 2 and s._shared.log.log_id == log_id
        s.write_batch([_request(2)])
    finally:
        s.close()
    said = _state(path)
    assert said is not None and said[0] == log_id
