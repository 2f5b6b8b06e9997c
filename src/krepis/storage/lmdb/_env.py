"""One LMDB environment per store per process, and this process's side of the commit path: the
registry (fork-aware), opening and recovery, the commit log's checkpoints and the pin that
protects the last durable snapshot."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, JournalError, NeedsMigrationError, StorageError
from . import _layout
from ._commitlog import LOG, CommitLog, Flusher, Slot
from ._files import StoreFiles, meta_txnid
from ._layout import (
    _DB_NAMES,
    _DBS,
    _MAX_DBS,
    _MAX_READERS,
    _TREE_HDR,
    _U64,
    FORMAT_VERSION,
    _os_error,
    _position,
    _relabel,
    _wrap,
)
from ._paths import open_directory

#: recovery: apply the logged commits after a checkpoint (``_store._replay``)
Replay = Callable[["_SharedEnv", str, Slot, bool], None]

# A background checkpoint follows this many commits by one process, or a second with any, or a
# ring more than half full; a process that has not written for _IDLE_SECONDS drops its pin.
# Pages freed after the pin are reused only after the next checkpoint, so a writer that gets
# _CHECKPOINT_BACKLOG commits ahead of the checkpoints takes one itself (bounding the free pages
# data.mdb must hold: about 17 pages, 68 KiB, per commit of a one-entry batch).
_CHECKPOINT_COMMITS = 64

_CHECKPOINT_BACKLOG = 256

# The same in pages: data.mdb grown by this many pages since the last checkpoint (big batches
# free many pages per commit) wakes the checkpointer, and four times as many make the writer
# take a checkpoint itself.
_CHECKPOINT_GROWTH = 256

_CHECKPOINT_SECONDS = 1.0

_IDLE_SECONDS = 2.0

class _SharedEnv:
    """One LMDB environment per directory per process (LMDB forbids opening one twice), with
    this process's side of the commit path: the log, its flusher, the pin, the checkpointer."""

    __slots__ = (
        "ckpt_lock",
        "ckpt_thread",
        "ckpt_wake",
        "closing",
        "commits",
        "dbs",
        "env",
        "failed",
        "files",
        "flusher",
        "key",
        "last_ckpt",
        "last_write",
        "log",
        "op_ids",
        "op_names",
        "page_size",
        "pgno",
        "pin",
        "pin_txnid",
        "refs",
        "tail",
    )

    def __init__(self, env: lmdb.Environment, dbs: dict[bytes, Any], key: Any, files: StoreFiles,
                 log: CommitLog):
        self.files = files
        self.env = env
        self.refs = 0
        self.dbs = dbs
        self.key = key
        # The op table is append-only: a name's id never changes once committed.
        self.op_ids: dict[str, int] = {}
        self.op_names: dict[int, str] = {}
        self.log = log
        self.page_size = log.page_size
        self.tail = log.checkpoint().tail  # ring position the newest known checkpoint needs kept
        self.pin: Any = None  # a read transaction no newer than the newest checkpoint
        self.pin_txnid = -1
        self.commits = 0  # by this process since its last checkpoint
        self.pgno = int(env.info()["last_pgno"])  # data.mdb's last page at the last checkpoint
        self.last_ckpt = self.last_write = time.monotonic()
        self.failed: BaseException | None = None
        self.closing = False
        self.ckpt_lock = threading.Lock()
        self.ckpt_wake = threading.Event()
        self.flusher: Flusher | None = None
        self.ckpt_thread: threading.Thread | None = None

    def start_threads(self, path: str) -> None:
        """The flusher and checkpointer of this process (started with the first write)."""
        if self.flusher is None:
            self.flusher = Flusher(self.log, f"krepis-flush:{path}")
            self.ckpt_thread = threading.Thread(target=_checkpointer, args=(self, path),
                                                name=f"krepis-checkpoint:{path}", daemon=True)
            self.ckpt_thread.start()

_registry: dict[tuple[int, int], _SharedEnv] = {}

_registry_lock = threading.Lock()

_generation = 0

# Environments inherited through fork() must never be closed by the child: closing their file
# descriptors would drop the parent's fcntl locks. They are kept alive here instead.
_inherited: list[_SharedEnv] = []

def _after_fork_in_child() -> None:
    global _registry_lock, _generation
    _inherited.extend(_registry.values())
    _registry.clear()
    _registry_lock = threading.Lock()
    _generation += 1

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

def _capture(shared: _SharedEnv, path: str) -> tuple[Any, int, int, bytes, int]:
    """Under the writer lock: a read transaction at the newest commit (the next pin), its id,
    its commit-log position, ``data.mdb``'s meta pages as that commit left them, and how many
    of this process's commits it covers."""
    pin = shared.env.begin()
    try:
        txnid = int(pin.id())
        position = _position(pin.get(b"log", db=shared.dbs[b"meta"]), path)
        metas = shared.files.meta_pages(shared.page_size)
        if meta_txnid(metas, shared.page_size) != txnid:
            raise CorruptStorageError(
                f"storage at {path}: the meta pages of data.mdb name transaction "
                f"{meta_txnid(metas, shared.page_size)}, LMDB {txnid}", path)
    except BaseException:
        pin.abort()
        raise
    return pin, txnid, position, metas, shared.commits

def _checkpoint(shared: _SharedEnv, path: str, *, locked: bool) -> None:
    """Make the newest commit the durable snapshot: flush ``data.mdb``, then record its meta
    pages in the log's older slot; the new snapshot's read transaction becomes the pin.
    ``locked``: the caller holds the writer lock (every step then happens under it)."""
    if locked:
        shared.ckpt_lock.acquire()
        captured = _capture(shared, path)
    else:
        with _writer_lock(shared):
            captured = _capture(shared, path)
        shared.ckpt_lock.acquire()
    pin, txnid, position, metas, covered = captured
    try:
        try:
            shared.env.sync(True)
            log = shared.log
            fcntl.flock(log.fd, fcntl.LOCK_EX)  # slot writers of other processes
            try:
                log.write_checkpoint(txnid, position, metas)
                shared.tail = log.checkpoint().tail
            finally:
                fcntl.flock(log.fd, fcntl.LOCK_UN)
        except BaseException:
            pin.abort()
            raise
        # A checkpoint at least as new as the pin is durable now: the pin may protect it.
        if shared.pin is None or shared.pin_txnid < txnid:
            old, shared.pin, shared.pin_txnid = shared.pin, pin, txnid
            if old is not None:
                old.abort()
        else:
            pin.abort()
        shared.commits = max(0, shared.commits - covered)  # those since the capture remain
        shared.pgno = int(shared.env.info()["last_pgno"])
        shared.last_ckpt = time.monotonic()
    finally:
        shared.ckpt_lock.release()

def _drop_pin(shared: _SharedEnv) -> None:
    """An idle process lets LMDB reuse the pages its pin holds; its next write takes a new one."""
    with _writer_lock(shared), shared.ckpt_lock:
        if shared.commits == 0 and shared.pin is not None:
            shared.pin.abort()
            shared.pin, shared.pin_txnid = None, -1

def _checkpointer(shared: _SharedEnv, path: str) -> None:
    """The background thread of one environment: checkpoints when due, drops an idle pin."""
    while True:
        woke = shared.ckpt_wake.wait(_CHECKPOINT_SECONDS / 2)
        shared.ckpt_wake.clear()
        if shared.closing:
            return
        now = time.monotonic()
        try:
            if shared.commits and (woke or now - shared.last_ckpt >= _CHECKPOINT_SECONDS):
                _checkpoint(shared, path, locked=False)
            elif shared.pin is not None and not shared.commits \
                    and now - shared.last_write >= _IDLE_SECONDS:
                _drop_pin(shared)
        except BaseException as exc:  # writes refuse from now on, naming it
            shared.failed = exc
            return

def open_in_this_process(path: str) -> bool:
    """Whether this process has the store at ``path`` open (or inherited it through fork)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    return key in _registry or any(old.key == key for old in _inherited)

def _acquire(path: str, create: bool, replay: Replay) -> _SharedEnv:
    dir_fd = _prepare_directory(path, create)
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
                shared = _open_env(path, key, files, replay)
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

def _writer_lock(shared: _SharedEnv) -> contextlib.AbstractContextManager[None]:
    """The store-wide writer lock of ``_files`` (an flock on data.mdb that outlives lock.mdb)."""
    return shared.files.writer_lock()

def _release(shared: _SharedEnv) -> None:
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0 or _registry.get(shared.key) is not shared:
            return
        del _registry[shared.key]
        _shut_down(shared)

def _shut_down(shared: _SharedEnv) -> None:
    """Stop the threads, leave a checkpoint behind when this process wrote since its last one
    (so the next open replays nothing), then close everything."""
    shared.closing = True
    shared.ckpt_wake.set()
    if shared.ckpt_thread is not None:
        shared.ckpt_thread.join()
    if shared.commits and shared.failed is None:
        with contextlib.suppress(JournalError, lmdb.Error, OSError):
            _checkpoint(shared, shared.files.path, locked=False)
    if shared.flusher is not None:
        shared.flusher.stop()
    if shared.pin is not None:
        shared.pin.abort()
        shared.pin = None
    shared.env.close()
    with contextlib.suppress(OSError):
        os.close(shared.log.fd)  # an flock only: closing it drops no LMDB lock
    shared.files.close()  # after LMDB's own descriptors are closed

def _prepare_directory(path: str, create: bool = True) -> int:
    """Create the directory (parents too, leaf mode 0700) or check the existing one: owned by
    this user (or root), writable by nobody else. Returns a descriptor pinning it."""
    return open_directory(path, create)

def _open_env(path: str, key: Any, files: StoreFiles, replay: Replay) -> _SharedEnv:
    """Open LMDB on the checked files, holding the writer lock so that the lock table it sets
    up starts from the newest committed transaction; recover from the commit log first when
    this is the only process with the store open."""
    lmdb_path = files.lmdb_path
    log: CommitLog | None = None
    try:
        with files.writer_lock():
            alone = files.alone()
            log, slot, restored = _recover_meta(path, files, alone)
            files.check_data_file()
            try:
                env = lmdb.open(lmdb_path, map_size=_layout._MAP_SIZE, max_dbs=_MAX_DBS,
                                max_readers=_MAX_READERS, sync=False, metasync=False, mode=0o600,
                                create=True, subdir=True)
            except lmdb.Error as exc:
                raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
            except OSError as exc:
                raise _os_error(exc, path) from exc
            try:
                files.verify_opened()
                env.reader_check()  # free reader slots left by crashed processes
                dbs = _open_dbs(env, path)
                if log is None:
                    log = _new_log(path, env, dbs, files)
                elif log.page_size != env.stat()["psize"]:
                    raise CorruptStorageError(f"storage at {path}: {LOG} was written for pages of "
                                              f"{log.page_size} bytes, data.mdb has {env.stat()['psize']}",
                                              path)
                shared = _SharedEnv(env, dbs, key, files, log)
                if slot is not None:
                    replay(shared, path, slot, restored)
            except BaseException as exc:
                env.close()
                if isinstance(exc, lmdb.Error):
                    raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
                raise
    except BaseException:
        if log is not None:
            with contextlib.suppress(OSError):
                os.close(log.fd)
        files.remove_created()
        files.close()
        raise
    files.created = []
    return shared

def _recover_meta(path: str, files: StoreFiles, alone: bool) -> tuple[CommitLog | None, Slot | None, bool]:
    """Before LMDB maps the file: the commit log (``None`` if there is none: a new one is made),
    the checkpoint to replay from (only when no other process has the store open) and whether
    its meta pages had to be written back."""
    fd = files.open_log()
    if fd is None:
        if not alone:
            raise StorageError(f"storage at {path}: {LOG} is missing while other processes use the "
                               f"store; never delete {LOG} (see docs/storage-format.md)", path)
        return None, None, False
    try:
        log = CommitLog(path, fd)
        if not alone:
            return log, None, False
        slot = log.checkpoint()
        current = files.meta_pages(log.page_size)
        restored = current != slot.metas
        if restored:
            files.check_data_file(slot.metas)  # an empty or truncated file is refused, unwritten
            # The file only moves forward from a checkpoint (its meta pages were flushed before
            # the slot was written): an older file is not this log's, e.g. a copy put in place.
            at = meta_txnid(current, log.page_size)
            if at < slot.txnid:
                raise CorruptStorageError(
                    f"storage at {path}: data.mdb is at transaction {at}, older than the checkpoint "
                    f"of its {LOG} (transaction {slot.txnid}): the file was replaced by an older "
                    f"copy. Restore copies with krepis restore (or remove {LOG} if this file is "
                    "known to be complete)", path)
            files.restore_meta_pages(slot.metas)
        return log, slot, restored
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise

def _new_log(path: str, env: lmdb.Environment, dbs: dict[bytes, Any], files: StoreFiles) -> CommitLog:
    """A commit log for a store that has none (new, migrated or restored): its data file is
    flushed first, and the log starts with that snapshot as its checkpoint."""
    env.sync(True)
    page_size = int(env.stat()["psize"])
    with env.begin() as txn:
        txnid = int(txn.id())
        position = _position(txn.get(b"log", db=dbs[b"meta"]), path)
        metas = files.meta_pages(page_size)
    try:
        CommitLog.create(files.dir_fd, path, page_size, Slot(txnid, position, metas))
    except OSError as exc:
        raise StorageError(f"storage at {path}: cannot create {LOG}: {exc.strerror or exc}", path) from exc
    fd = files.open_log()
    assert fd is not None
    return CommitLog(path, fd)

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
    return dbs

def _check_layout(env: lmdb.Environment, names: list[bytes], path: str) -> None:
    if b"meta" not in names:
        raise CorruptStorageError(
            f"storage at {path} is an LMDB store but not a krepis store (no meta database)", path)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        fmt = txn.get(b"format", db=meta)
    if fmt in (b"1", b"2"):
        raise NeedsMigrationError(
            f"storage at {path} is in format {fmt.decode()} (written by "
            f"{'krepis 0.1' if fmt == b'1' else 'a krepis without the commit log'}); this krepis "
            f"reads format {FORMAT_VERSION}. "
            f"Convert it once with: krepis migrate --storage {path}", path)
    if fmt != b"%d" % FORMAT_VERSION:
        raise CorruptStorageError(
            f"storage at {path} has format version {fmt!r}; this krepis reads version "
            f"{FORMAT_VERSION}", path)
    missing = _DB_NAMES - set(names) - {b"checkpoints"}
    if missing:
        raise CorruptStorageError(
            f"storage at {path} is an LMDB store but not a krepis store (missing databases: "
            f"{', '.join(sorted(m.decode() for m in missing))})", path)
