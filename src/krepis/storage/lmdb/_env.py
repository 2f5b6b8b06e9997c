"""Opening and closing an LMDB store in this process: one environment per directory (LMDB forbids
two), kept in a fork-aware registry; the commit log bound to it (or made for it); recovery when
this process is the first to open the store; the background applier; and, at the last close,
LMDB brought fully up to date so the next open finds nothing to apply.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, JournalError, NeedsMigrationError, StorageError
from . import _layout
from ._apply import applier, apply_tail
from ._catchup import catch_up
from ._commitlog import LOG, STATE, CommitLog, read_state
from ._files import StoreFiles
from ._layout import (
    _DB_NAMES,
    _DBS,
    _MAX_DBS,
    _MAX_READERS,
    _SEQ,
    _TREE_HDR,
    _U64,
    FORMAT_VERSION,
    _os_error,
    _relabel,
    _wrap,
)
from ._paths import open_directory
from ._recovery import recover
from ._state import NO_LOG, LogPointer, Shared, read_log_pointer, read_seq

__all__ = ["acquire", "open_in_this_process", "release"]

_registry: dict[tuple[int, int], Shared] = {}
_registry_lock = threading.Lock()
_generation = 0
# Environments inherited through fork() must never be closed by the child: closing their file
# descriptors would drop the parent's fcntl locks. They are kept alive here instead.
_inherited: list[Shared] = []


def _after_fork_in_child() -> None:
    global _registry_lock, _generation
    _inherited.extend(_registry.values())
    _registry.clear()
    _registry_lock = threading.Lock()
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def generation() -> int:
    """How many times this process's ancestors forked since krepis was imported."""
    return _generation


def open_in_this_process(path: str) -> bool:
    """Whether this process has the store at ``path`` open (or inherited it through fork)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    return key in _registry or any(old.key == key for old in _inherited)


def acquire(path: str, create: bool) -> Shared:
    dir_fd = open_directory(path, create)
    try:
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        with _registry_lock, _directory_lock(dir_fd):
            shared = _registry.get(key)
            if shared is None and any(old.key == key for old in _inherited):
                raise StorageError(
                    f"storage at {path} was open in the parent when this process was forked; LMDB "
                    "cannot open it again here. Open the journal after fork(), or use the 'spawn' or "
                    "'forkserver' start method of multiprocessing", path)
            if shared is None:
                pinned, dir_fd = dir_fd, -1
                files = StoreFiles(path, pinned, create)  # owns the descriptor from here on
                shared = _open(path, key, files)
                _registry[key] = shared
            shared.refs += 1
            return shared
    finally:
        if dir_fd >= 0:
            os.close(dir_fd)


@contextlib.contextmanager
def _directory_lock(dir_fd: int) -> Iterator[None]:
    """Serialize opening (and creating) a store across processes.

    LMDB writes a new environment's first meta pages without a lock, so two processes creating
    one store at the same instant could race; an exclusive flock on the directory prevents it.
    """
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def release(shared: Shared) -> None:
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0 or _registry.get(shared.key) is not shared:
            return
        del _registry[shared.key]
        _shut_down(shared)


def start_applier(shared: Shared) -> None:
    """The background applier of this process (started with its first write)."""
    if shared.applier is None:
        shared.applier = threading.Thread(target=applier, args=(shared,), name=f"krepis-apply:{shared.path}",
                                          daemon=True)
        shared.applier.start()


def _shut_down(shared: Shared) -> None:
    """Stop the applier, bring LMDB up to date with everything this process knows of the log (so
    the next open applies nothing), then close everything. If that fails, the log is flushed:
    what it holds is recovered by the next open."""
    shared.closing = True
    shared.wake.set()
    if shared.applier is not None:
        shared.applier.join()
    if shared.wrote and shared.failed is None:
        try:
            with shared.writer_lock():
                apply_tail(shared)
        except (JournalError, lmdb.Error, OSError):
            with contextlib.suppress(OSError):
                shared.log.flush()
    shared.env.close()
    shared.log.close()  # (an flock only: closing it drops no LMDB lock)
    shared.files.close()  # after LMDB's own descriptors are closed


def _open(path: str, key: Any, files: StoreFiles) -> Shared:
    """Open LMDB on the checked files, holding the writer lock so that the lock table it sets up
    starts from the newest committed transaction; bind the commit log; recover when this is the
    only process with the store open."""
    lmdb_path = files.lmdb_path
    opened: CommitLog | None = None
    try:
        with files.writer_lock():
            alone = files.alone()
            files.check_data_file()
            try:
                # Every LMDB commit is an application of the log (or a rare change outside it):
                # LMDB syncs each one itself, data pages first, then the meta page.
                env = lmdb.open(lmdb_path, map_size=_layout._MAP_SIZE, max_dbs=_MAX_DBS,
                                max_readers=_MAX_READERS, sync=True, metasync=True, mode=0o600,
                                create=True, subdir=True)
            except lmdb.Error as exc:
                raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
            except OSError as exc:
                raise _os_error(exc, path) from exc
            try:
                files.verify_opened()
                env.reader_check()  # free reader slots left by crashed processes
                dbs = _open_dbs(env, path)
                log = _bind_log(path, env, dbs, files, alone)
                opened = log
                with env.begin() as txn:
                    pointer = read_log_pointer(txn, dbs[b"meta"], path)
                    seq = read_seq(txn, dbs[b"meta"], path)
                    last = txn.cursor(db=dbs[b"entries"])
                    if last.last() and _SEQ.unpack(last.key())[0] >= seq:
                        # appends take their sequence numbers from here: never one that is taken
                        raise CorruptStorageError(
                            f"storage at {path}: the sequence record says {seq}, but entry "
                            f"{_SEQ.unpack(last.key())[0]} exists; the meta sequence is behind the "
                            "entries", path)
                shared = Shared(env, dbs, key, files, log, pointer, seq)
                if alone:
                    recover(shared)
                else:
                    if not log.state_belongs():
                        raise StorageError(f"storage at {path}: {STATE} is missing or not this log's while "
                                           f"other processes use the store; never delete the store's files "
                                           "(see docs/storage-format.md)", path)
                    with shared.mu:
                        catch_up(shared)
            except BaseException as exc:
                env.close()
                if isinstance(exc, lmdb.Error):
                    raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
                raise
    except BaseException:
        if opened is not None:
            opened.close()
        files.remove_created()
        files.close()
        raise
    files.created = []
    return shared


def _bind_log(path: str, env: lmdb.Environment, dbs: dict[bytes, Any], files: StoreFiles,
              alone: bool) -> CommitLog:
    """The commit log that continues this ``data.mdb``: the one whose id ``data.mdb`` names.
    A store without one (new, restored, migrated — or whose log was deleted) gets a new, empty
    log when no other process has it open; a log of another id is refused, both files untouched."""
    with env.begin() as txn:
        pointer = read_log_pointer(txn, dbs[b"meta"], path)
    _finish_rename(path, files, pointer)
    fd = files.open_log()
    if fd is None:
        if not alone:
            raise StorageError(f"storage at {path}: {LOG} is missing while other processes use the "
                               f"store; never delete {LOG} (see docs/storage-format.md)", path)
        _check_no_log_was_lost(path, files, pointer)
        return _new_log(path, env, dbs, files)
    try:
        found = files.open_log(STATE)
        try:
            log = CommitLog(path, fd, -1 if found is None else found)  # (it closes the state's fd)
        except CorruptStorageError:
            if pointer.log_id == NO_LOG and alone:  # a format-3 log left by a migration: replaced
                os.close(fd)
                fd = -1
                return _new_log(path, env, dbs, files)
            raise
        if log.log_id != pointer.log_id:
            if pointer.log_id == NO_LOG and alone:
                log.close()
                fd = -1
                return _new_log(path, env, dbs, files)
            log.close()  # (its mapping of commit.state, too: never left to the garbage collector)
            fd = -1
            raise CorruptStorageError(
                f"storage at {path}: {LOG} does not belong to this data.mdb (the log's id is "
                f"{log.log_id.hex()}, data.mdb continues log {pointer.log_id.hex()}): it was copied "
                f"from another store or another copy of this one. Nothing was written; put the right "
                f"{LOG} back, or restore the store with krepis restore", path)
        return log
    except BaseException:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise


def _check_no_log_was_lost(path: str, files: StoreFiles, pointer: LogPointer) -> None:
    """``commit.log`` is missing: a new one is made only if nothing says the old one held
    records ``data.mdb`` has not applied — ``commit.state`` still naming it and ending past
    ``data.mdb``'s pointer says exactly that (the log was deleted), and the open is refused."""
    fd = files.open_log(STATE)
    if fd is None:
        return
    try:
        said = read_state(fd)
    finally:
        os.close(fd)
    if said is None or said[0] != pointer.log_id or pointer.log_id == NO_LOG:
        return
    end = max(said[1], said[2])
    if end > pointer.position:
        raise CorruptStorageError(
            f"storage at {path}: {LOG} is missing, but {STATE} says it held records up to position "
            f"{end} that data.mdb has not applied (data.mdb is at {pointer.position}): acknowledged "
            f"writes would be lost. Nothing was written; put {LOG} back, or restore the store from a "
            "backup", path)


def _finish_rename(path: str, files: StoreFiles, pointer: LogPointer) -> None:
    """A new log is written as ``commit.log.new``, then ``data.mdb`` names it, then it is renamed
    into place: after a crash between the last two steps, the rename is finished here."""
    new = LOG + ".new"
    try:
        fd = os.open(new, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=files.dir_fd)
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        try:
            pending = CommitLog(path, fd)
        except (CorruptStorageError, OSError):
            return
        if pending.log_id != pointer.log_id or pointer.log_id == NO_LOG:
            return
    finally:
        os.close(fd)
    os.rename(new, LOG, src_dir_fd=files.dir_fd, dst_dir_fd=files.dir_fd)
    os.fsync(files.dir_fd)


def _new_log(path: str, env: lmdb.Environment, dbs: dict[bytes, Any], files: StoreFiles) -> CommitLog:
    """A new, empty commit log for this ``data.mdb``: written aside and made durable, named by
    ``data.mdb`` (one synced LMDB commit), then renamed into place."""
    log_id = secrets.token_bytes(16)
    pointer = LogPointer.fresh(log_id)
    try:
        CommitLog.create(files.dir_fd, path, log_id, pointer.position, rename=False)
    except OSError as exc:
        raise StorageError(f"storage at {path}: cannot create {LOG}: {exc.strerror or exc}", path) from exc
    with env.begin(write=True) as txn:
        txn.put(b"log", pointer.pack(), db=dbs[b"meta"])
    try:
        os.rename(LOG + ".new", LOG, src_dir_fd=files.dir_fd, dst_dir_fd=files.dir_fd)
        os.fsync(files.dir_fd)
    except OSError as exc:
        raise StorageError(f"storage at {path}: cannot create {LOG}: {exc.strerror or exc}", path) from exc
    fd = files.open_log()
    if fd is None:
        raise StorageError(f"storage at {path}: {LOG} vanished while it was created", path)
    log = CommitLog(path, fd)
    log.reset_state(files.dir_fd, pointer.position)
    return log


def _open_dbs(env: lmdb.Environment, path: str) -> dict[bytes, Any]:
    """Open the named databases; initialise an empty environment in one write transaction."""
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
    if names:
        _check_layout(env, names, path)
        # Handles opened in a read-only transaction are not kept by py-lmdb; a write transaction
        # that changes nothing commits without writing or syncing.
        with env.begin(write=True) as txn:
            # (checkpoints came later in format 2: a store without that database gets it here)
            return {n: env.open_db(n, txn=txn, create=n == b"checkpoints", dupsort=d, dupfixed=d)
                    for n, d in _DBS}
    with env.begin(write=True) as txn:
        # Another process may have initialised it meanwhile: create=True is idempotent.
        dbs = {n: env.open_db(n, txn=txn, create=True, dupsort=d, dupfixed=d) for n, d in _DBS}
        meta = dbs[b"meta"]
        if txn.get(b"format", db=meta) is None:
            txn.put(b"format", b"%d" % FORMAT_VERSION, db=meta)
            txn.put(b"seq", _U64.pack(0), db=meta)
            txn.put(b"tree", _TREE_HDR.pack(0, 0), db=meta)
            txn.put(b"next_op", _U64.pack(0), db=meta)
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=meta)
    return dbs


_WRITTEN_BY = {b"1": "krepis 0.1", b"2": "a krepis without the commit log",
               b"3": "a krepis whose commit log was not yet the write path"}


def _check_layout(env: lmdb.Environment, names: list[bytes], path: str) -> None:
    if b"meta" not in names:
        raise CorruptStorageError(
            f"storage at {path} is an LMDB store but not a krepis store (no meta database)", path)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        fmt = txn.get(b"format", db=meta)
    if fmt in _WRITTEN_BY:
        raise NeedsMigrationError(
            f"storage at {path} is in format {fmt.decode()} (written by {_WRITTEN_BY[fmt]}); this "
            f"krepis reads format {FORMAT_VERSION}. Convert it once with: krepis migrate --storage "
            f"{path}", path)
    if fmt != b"%d" % FORMAT_VERSION:
        raise CorruptStorageError(
            f"storage at {path} has format version {fmt!r}; this krepis reads version "
            f"{FORMAT_VERSION}", path)
    missing = _DB_NAMES - set(names) - {b"checkpoints"}
    if missing:
        raise CorruptStorageError(
            f"storage at {path} is an LMDB store but not a krepis store (missing databases: "
            f"{', '.join(sorted(m.decode() for m in missing))})", path)
