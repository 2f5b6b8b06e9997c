"""Compaction and disk use of an LMDB store.

LMDB never shrinks ``data.mdb``: pages freed (by archiving, by a clear, by the copy-on-write of
ordinary writes) are reused, not returned. After most of a store moved into its archive, the
file keeps its size. A **compacted copy** is ``data.mdb`` rebuilt from one read transaction,
database by database, in key order with LMDB's append mode, so every page is full and no free
page is copied (LMDB's own compacting copy crashes on duplicate-sorted databases in the LMDB that
py-lmdb bundles, so krepis copies itself). It holds every record byte for byte.

``compact(path)`` swaps a compacted copy in for ``data.mdb`` — offline, refusing while another
process has the store open — so that a crash at any instant (SIGKILL included) leaves either the
old store whole, with its commit log, or the new one:

1. the commit log is brought up to date in LMDB by an ordinary open and close, then the store is
   held offline (the directory lock and LMDB's exclusive lock); if another process wrote in
   between, the log is applied again under that lock;
2. the copy is built in ``.compact/`` (a directory created fresh, mode 0700), its commit-log
   pointer set to name no log, flushed, and checked: it must verify and hold the same entries,
   counters and tree as the store;
3. the copy's ``data.mdb`` is renamed over the store's (the one atomic step; the directory is
   flushed), then the old ``commit.log`` and ``commit.state`` — which describe the replaced file —
   are removed. The next open makes a new log for the compacted file.

``krepis backup`` writes a compacted copy the same way (``copy_compacted``), from one read
transaction while writers keep writing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, JournalError, StorageError
from .._migration import Progress
from .._outfiles import create_exclusive, fsync_fd, fsync_file_at, make_private_dir, remove_at
from ._commitlog import LOG, STATE, CommitLog
from ._layout import _DBS, _MAX_DBS
from ._offline import DATA, Offline
from ._state import NO_LOG, LogPointer, read_log_pointer

__all__ = ["COMPACT_DIR", "CompactResult", "DiskUse", "compact", "copy_compacted", "disk_use"]

#: where ``compact`` builds the new file (removed when done; a killed compaction leaves it, the
#: next one removes it, and opening the store ignores it)
COMPACT_DIR = ".compact"
_CHUNK = 65536  # rows per write transaction of the copy


@dataclass(frozen=True)
class CompactResult:
    """``data.mdb``'s size before and after (bytes allocated on disk), and the entries kept."""

    path: str
    before: int
    after: int
    entries: int


@dataclass(frozen=True)
class DiskUse:
    """What a store takes on disk (bytes allocated): ``data.mdb`` and how much of it is free pages
    (reusable by LMDB, returned only by ``compact``), the commit log and ``commit.state``, and
    the lock table; ``total`` is all of them."""

    path: str
    data: int
    data_apparent: int
    free: int
    log: int
    state: int
    lock: int
    entries: int

    @property
    def total(self) -> int:
        return self.data + self.log + self.state + self.lock


def _allocated(dir_fd: int, name: str) -> tuple[int, int]:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return 0, 0
    return st.st_blocks * 512, st.st_size


def copy_compacted(env: lmdb.Environment, dest_fd: int, where: str, *, name_no_log: bool,
                   progress: Progress | None = None) -> int:
    """Copy the store open in ``env`` into a new ``data.mdb`` in the directory ``dest_fd``
    (``where`` names it in messages): one read transaction of ``env``, every named database
    copied in key order with append mode, flushed. With ``name_no_log`` the copy's commit-log
    pointer names no log (it moves without one). Returns the entries copied.
    ``progress(rows, total)`` is called after each chunk of rows written (every database's rows:
    entries, index rows, tree nodes, …)."""
    fd = create_exclusive(DATA, dest_fd, os.path.join(where, DATA))
    os.close(fd)
    try:
        # no lock file (the copy is private until it is renamed into place), no sync per
        # commit (it is flushed once, at the end)
        out = lmdb.open(f"/proc/self/fd/{dest_fd}", max_dbs=_MAX_DBS, map_size=1 << 40, subdir=True,
                        lock=False, sync=False, metasync=False, create=False, mode=0o600)
    except lmdb.Error as exc:
        raise StorageError(f"cannot create the copy in {where}: {exc}", where) from exc
    entries = 0
    try:
        with env.begin() as src:
            found = []
            for name, dupsort in _DBS:
                try:
                    db = env.open_db(name, txn=src, create=False, dupsort=dupsort, dupfixed=dupsort)
                except lmdb.NotFoundError:
                    continue
                found.append((name, dupsort, db))
            rows = _Rows(sum(int(src.stat(db)["entries"]) for _, _, db in found), progress)
            for name, dupsort, db in found:
                with out.begin(write=True) as dst:
                    target = out.open_db(name, txn=dst, create=True, dupsort=dupsort, dupfixed=dupsort)
                if name == b"entries":
                    entries = int(src.stat(db)["entries"])
                _copy_db(src, db, out, target, dupsort, name, where, rows)
        if name_no_log:
            with out.begin(write=True) as dst:
                meta = out.open_db(b"meta", txn=dst, create=False)
                dst.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=meta)
        out.sync(True)
    except lmdb.Error as exc:
        raise StorageError(f"copying into {where} failed: {exc}", where) from exc
    finally:
        out.close()
    fsync_file_at(DATA, dest_fd, os.path.join(where, DATA))
    return entries


class _Rows:
    """Rows copied so far, reported to a ``progress`` callback."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.done, self.total, self.progress = 0, total, progress

    def add(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, max(self.done, self.total))


def _copy_db(src: Any, db: Any, out: lmdb.Environment, target: Any, dupsort: bool, name: bytes,
             where: str, copied: _Rows) -> None:
    """Every row of ``db`` into ``target``, in order, appended, a chunk per write transaction."""
    cursor = src.cursor(db=db)
    rows = iter(cursor.iternext(keys=True, values=True))
    while True:
        chunk = [(bytes(k), bytes(v)) for _, (k, v) in zip(range(_CHUNK), rows, strict=False)]
        if not chunk:
            return
        with out.begin(write=True) as dst:
            _consumed, added = dst.cursor(db=target).putmulti(chunk, dupdata=True, append=True)
        if added != len(chunk):
            raise StorageError(f"copying {name.decode()} into {where}: {len(chunk) - added} rows out of "
                               "order", where)
        copied.add(len(chunk))


def _unapplied(path: str, dir_fd: int) -> int:
    """Records of the commit log that LMDB has not applied (the store is offline, so nothing
    moves): 0 when ``data.mdb`` alone holds every write. A ``commit.log`` that cannot be opened
    (a symbolic link is never followed) is a ``StorageError`` naming it."""
    env = lmdb.open(f"/proc/self/fd/{dir_fd}", max_dbs=_MAX_DBS, map_size=1 << 40, subdir=True,
                    readonly=True, lock=False, create=False)
    try:
        with env.begin() as txn:
            pointer = read_log_pointer(txn, env.open_db(b"meta", txn=txn, create=False), path)
    finally:
        env.close()
    if pointer.log_id == NO_LOG:
        return 0
    try:
        fd = os.open(LOG, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    except OSError as exc:  # (a link put there meanwhile is never followed)
        raise StorageError(f"cannot open {os.path.join(path, LOG)}: {exc.strerror}", path) from exc
    log = CommitLog(path, fd)
    try:
        return sum(1 for _ in log.chain(pointer.position, pointer.link))
    finally:
        log.close()


def compact(location: str | os.PathLike[str], *, progress: Progress | None = None) -> CompactResult:
    """Swap a compacted copy in for the store's ``data.mdb`` (see the module's guarantees).
    Refuses (``StorageError``) while another process has the store open. ``progress(rows,
    total)`` is called as the copy is written (its check afterwards reports nothing)."""
    from ._store import LmdbStorage

    path = os.path.abspath(os.path.expanduser(os.fspath(location)))
    LmdbStorage(path, create=False).close()  # (recovers, and applies the log: data.mdb holds all)
    with Offline(path, create=False, command="krepis compact") as off:
        dir_fd = off.dir_fd
        if _unapplied(path, dir_fd):
            raise StorageError(f"storage at {path} was written by another process while it was being "
                               "prepared for compaction; run krepis compact again", path)
        before, _apparent = _allocated(dir_fd, DATA)
        work = os.path.join(path, COMPACT_DIR)
        remove_at(COMPACT_DIR, dir_fd)  # what a killed compaction left behind
        work_fd = make_private_dir(COMPACT_DIR, dir_fd, work)
        try:
            env = lmdb.open(f"/proc/self/fd/{dir_fd}", max_dbs=_MAX_DBS, map_size=1 << 40, subdir=True,
                            readonly=True, lock=False, create=False)
            try:
                entries = copy_compacted(env, work_fd, work, name_no_log=True, progress=progress)
                expected = _summary(env, path)
            finally:
                env.close()
            _check_copy(work, work_fd, path, expected)
            os.rename(DATA, DATA, src_dir_fd=work_fd, dst_dir_fd=dir_fd)  # the one atomic step
            fsync_fd(dir_fd, path)
            for name in (LOG, LOG + ".new", STATE):  # they describe the replaced file
                remove_at(name, dir_fd)
            fsync_fd(dir_fd, path)
        finally:
            os.close(work_fd)
            remove_at(COMPACT_DIR, dir_fd)
        off.rebuild_lock_table()
        after, _apparent = _allocated(dir_fd, DATA)
    return CompactResult(path, before, after, entries)


def _summary(env: lmdb.Environment, path: str) -> tuple[int, bytes, bytes, bytes]:
    """What the copy must hold: the entry count and the records that fix the tree and counters."""
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        stats = env.open_db(b"stats", txn=txn, create=False)
        counters = b"".join(k + b"=" + v for k, v in txn.cursor(db=stats))
        return (int(txn.stat(env.open_db(b"entries", txn=txn, create=False))["entries"]),
                bytes(txn.get(b"seq", db=meta) or b""), bytes(txn.get(b"tree", db=meta) or b""), counters)


def _check_copy(work: str, work_fd: int, path: str, expected: tuple[int, bytes, bytes, bytes]) -> None:
    """The copy verifies (entries, indexes, tree) and holds what the store holds; then its
    pointer names no log again (the check's open gave it one of its own)."""
    env = verify_copy(work, path, "the compacted copy does not verify")
    try:
        if _summary(env, path) != expected:
            raise CorruptStorageError(f"storage at {path}: the compacted copy does not hold what the store "
                                      "holds; nothing was changed", path)
    finally:
        env.close()
    for name in (LOG, STATE, "lock.mdb"):
        remove_at(name, work_fd)
    fsync_file_at(DATA, work_fd, os.path.join(work, DATA))


def verify_copy(work: str, path: str, failure: str) -> lmdb.Environment:
    """Open the copy of ``path``'s store built in ``work`` and run a full ``verify()``
    (``CorruptStorageError`` saying ``failure`` when it fails; nothing of the store was changed),
    then set its commit-log pointer to name no log — the check's open gave the copy a log of its
    own, and ``data.mdb`` moves without it. Returns the copy's environment, open, for more checks."""
    from ._store import LmdbStorage

    try:
        storage = LmdbStorage(work, create=False)
        try:
            storage.verify()
        finally:
            storage.close()
    except JournalError as exc:
        raise CorruptStorageError(f"storage at {path}: {failure} ({exc}); nothing was changed", path) from exc
    env = lmdb.open(work, max_dbs=_MAX_DBS, map_size=1 << 40, subdir=True, create=False)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=env.open_db(b"meta", txn=txn, create=False))
    except BaseException:
        env.close()
        raise
    return env


def disk_use(location: str | os.PathLike[str]) -> DiskUse:
    """What the store at ``location`` takes on disk, read from an open store (no write)."""
    from ._store import LmdbStorage

    path = os.path.abspath(os.path.expanduser(os.fspath(location)))
    storage = LmdbStorage(path, durable=False, create=False)
    try:
        shared = storage._shared
        dir_fd = shared.files.dir_fd
        data, apparent = _allocated(dir_fd, DATA)
        env = shared.env
        psize = int(env.stat()["psize"])
        with env.begin() as txn:
            used = 2 + sum(int(env.stat()[k]) for k in ("branch_pages", "leaf_pages", "overflow_pages"))
            for name, dupsort in _DBS:
                try:
                    db = env.open_db(name, txn=txn, create=False, dupsort=dupsort, dupfixed=dupsort)
                except lmdb.NotFoundError:
                    continue
                st = txn.stat(db)
                used += int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])
        last = int(env.info()["last_pgno"]) + 1
        free = max(0, last - used) * psize
        entries = storage.entry_count()
    finally:
        storage.close()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        log, _ = _allocated(fd, LOG)
        state, _ = _allocated(fd, STATE)
        lock, _ = _allocated(fd, "lock.mdb")
    finally:
        os.close(fd)
    return DiskUse(path, data, apparent, free, log, state, lock, entries)
