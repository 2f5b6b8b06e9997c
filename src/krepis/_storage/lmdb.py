"""The LMDB adapter: the default engine, one environment per storage directory.

Layout (see ``docs/storage-format.md``): named databases ``journal``, ``stats`` and ``meta``.
LMDB serializes writers across threads and processes with a robust mutex in ``lock.mdb``, so
several processes may share one directory; commits are copy-on-write, so a crash at any point
leaves the last committed state.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import lmdb

from .._errors import ClosedError, CorruptStorageError, JournalError, StorageError
from . import EntryFilter, Storage, WriteRequest
from ._files import StoreFiles, open_directory

__all__ = ["FORMAT_VERSION", "LmdbStorage", "encode_key"]

FORMAT_VERSION = 1
COUNTER_PREFIX = b"op_count:"
_U64 = struct.Struct("<Q")
_MAX_U64 = 2**64 - 1
_MAP_SIZE = 1 << 40 if struct.calcsize("P") == 8 else 1 << 30
_MAX_READERS = 1024
_DATA = "data.mdb"
_LOCK = "lock.mdb"
# Key layout: 19-digit timestamp, ':', 20-digit sequence, ':', request_id.
_SEQ_END = 19 + 1 + 20 + 1


_KEY = b"%019d:%020d:%b"  # timestamp, sequence, request_id


def encode_key(timestamp: int, seq: int, request_id: bytes) -> bytes:
    """The journal key of an entry: sorts by numeric time, then arrival; unique by ``seq``."""
    return _KEY % (timestamp, seq, request_id)


def _time_bound(ms: int) -> bytes:
    return b"%019d:" % ms


class _SharedEnv:
    """One LMDB environment per directory per process (LMDB forbids opening one twice)."""

    __slots__ = ("dbs", "durable", "env", "files", "key", "refs")

    def __init__(self, env: lmdb.Environment, durable: bool, dbs: tuple[Any, Any, Any], key: Any):
        self.files: StoreFiles | None = None
        self.env = env
        self.durable = durable
        self.refs = 0
        self.dbs = dbs
        self.key = key


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


def _wrap(exc: BaseException, path: str, doing: str) -> JournalError:
    if isinstance(exc, JournalError):
        return exc
    if isinstance(exc, (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError,
                        lmdb.VersionMismatchError, lmdb.BadChecksumError, lmdb.PanicError)):
        return CorruptStorageError(f"storage at {path} is corrupted or not an LMDB store "
                                   f"({doing}): {exc}", path)
    if isinstance(exc, lmdb.MapFullError):
        return StorageError(f"storage at {path} is full (LMDB map size {_MAP_SIZE} bytes) "
                            f"while {doing}", path)
    return StorageError(f"storage at {path} failed while {doing}: {exc}", path)


class LmdbStorage(Storage):
    """The journal in an LMDB environment at a directory.

    ``durable=True`` opens LMDB with full sync: each commit is on stable storage (data and meta
    page both fsynced) before it returns. ``durable=False`` commits to the OS page cache only —
    safe against a process crash, not against a machine crash — and relies on :meth:`sync`.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, durable: bool = True, create: bool = True
    ) -> None:
        path = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.location = path
        self._closed = False
        self._shared = _acquire(path, durable, create)
        self._generation = _generation
        self._env = self._shared.env
        self._journal, self._stats, self._meta = self._shared.dbs

    # -- lifecycle -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise _closed_error(self.location)
        if self._generation != _generation:
            raise _forked_error(self.location)
        if self._shared.files is not None:
            self._shared.files.check_reader()  # lock.mdb not deleted meanwhile

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._generation == _generation:
            _release(self._shared)

    def sync(self) -> None:
        self._check()
        try:
            self._env.sync(True)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "syncing") from exc

    # -- writes ----------------------------------------------------------------------------
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        if self._closed or self._generation != _generation:
            self._check()
        with _writer_lock(self._shared):
            return self._write_batch(requests)

    def _write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        self._check()
        journal, stats, meta = self._journal, self._stats, self._meta
        results: list[list[int]] = []
        try:
            with self._env.begin(write=True) as txn:
                put = txn.put
                raw = txn.get(b"seq", db=meta)
                seq = _U64.unpack(raw)[0] if raw else 0
                counters: dict[bytes, int] = {}
                for req in requests:
                    for ts, rid, value in req.entries:
                        seq += 1
                        key = _KEY % (ts, seq, rid)  # encode_key without the call
                        if not put(key, value, db=journal, overwrite=False):
                            raise CorruptStorageError(
                                f"storage at {self.location}: journal sequence {seq} is already "
                                "used; the meta sequence is behind the journal", self.location)
                    values = []
                    for name in req.increments:
                        key = COUNTER_PREFIX + name
                        current = counters.get(key)
                        if current is None:
                            stored = txn.get(key, db=stats)
                            current = _U64.unpack(stored)[0] if stored else 0
                        if current >= _MAX_U64:
                            raise StorageError(
                                f"counter {name.decode('utf-8', 'replace')!r} at {self.location} "
                                f"would overflow 2**64-1", self.location)
                        current += 1
                        counters[key] = current
                        values.append(current)
                    results.append(values)
                for key, count in counters.items():
                    put(key, _U64.pack(count), db=stats)
                put(b"seq", _U64.pack(seq), db=meta)
        except (lmdb.Error, OSError) as exc:
            raise _wrap(exc, self.location, "writing") from exc
        return results

    def clear(self) -> None:
        if self._closed or self._generation != _generation:
            self._check()
        with _writer_lock(self._shared):
            self._clear()

    def _clear(self) -> None:
        try:
            with self._env.begin(write=True) as txn:
                txn.drop(self._journal, delete=False)
                txn.drop(self._stats, delete=False)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "clearing") from exc

    # -- reads -----------------------------------------------------------------------------
    def get_count(self, name: bytes) -> int:
        self._check()
        try:
            with self._env.begin(db=self._stats) as txn:
                raw = txn.get(COUNTER_PREFIX + name)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading a counter") from exc
        return _U64.unpack(raw)[0] if raw else 0

    def get_counts(self) -> dict[str, int]:
        self._check()
        out: dict[str, int] = {}
        try:
            with self._env.begin(db=self._stats) as txn:
                cur = txn.cursor()
                if cur.set_range(COUNTER_PREFIX):
                    for key, raw in cur:
                        if not key.startswith(COUNTER_PREFIX):
                            break
                        out[key[len(COUNTER_PREFIX):].decode("utf-8")] = _U64.unpack(raw)[0]
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading counters") from exc
        except (struct.error, UnicodeDecodeError) as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed counter: {exc}",
                                      self.location) from exc
        return out

    def entry_count(self) -> int:
        self._check()
        try:
            with self._env.begin() as txn:
                return int(txn.stat(self._journal)["entries"])
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "counting entries") from exc

    def scan(
        self, flt: EntryFilter, *, newest_first: bool, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        self._check()
        lo = _time_bound(flt.since) if flt.since is not None else None
        hi = _time_bound(flt.until) if flt.until is not None else None
        rid = flt.request_id
        out: list[tuple[bytes, bytes]] = []
        if limit <= 0:
            return out
        try:
            with self._env.begin(db=self._journal) as txn:
                cur = txn.cursor()
                if newest_first:
                    # Start just below the exclusive upper bound min(hi, after).
                    top = hi if after is None else (after if hi is None else min(hi, after))
                    if top is None:
                        ok = cur.last()
                    elif cur.set_range(top):
                        ok = cur.prev()
                    else:
                        ok = cur.last()
                else:
                    if after is not None:
                        ok = cur.set_range(after)
                        if ok and cur.key() == after:
                            ok = cur.next()
                        if ok and lo is not None and cur.key() < lo:
                            ok = cur.set_range(lo)
                    elif lo is not None:
                        ok = cur.set_range(lo)
                    else:
                        ok = cur.first()
                if not ok:
                    return out
                items = cur.iterprev() if newest_first else cur.iternext()
                for key, value in items:
                    if newest_first:
                        if lo is not None and key < lo:
                            break
                    elif hi is not None and key >= hi:
                        break
                    if rid is None or key[_SEQ_END:] == rid:
                        out.append((key, value))
                        if len(out) >= limit:
                            break
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        return out


def _closed_error(path: str) -> JournalError:
    return ClosedError(f"the journal at {path} is closed")


def _forked_error(path: str) -> JournalError:
    return ClosedError(
        f"the journal at {path} was opened in a parent process; open a new one after fork()"
    )


def _acquire(path: str, durable: bool, create: bool) -> _SharedEnv:
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
                shared = _open_env(path, durable, key, files)
                _registry[key] = shared
            elif durable and not shared.durable:
                # LMDB's sync mode belongs to the environment, which one process opens once. A
                # deferred-sync handle may share a fully synced environment (it only gains), but
                # a durable handle cannot be served by a deferred one.
                raise StorageError(
                    f"storage at {path} is already open in this process under an interval flush "
                    "policy, so it cannot also be opened with 'sync' here; use the same interval "
                    "policy, or close the other journal first", path)
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
    assert shared.files is not None
    return shared.files.writer_lock()


def _release(shared: _SharedEnv) -> None:
    with _registry_lock:
        shared.refs -= 1
        if shared.refs > 0 or _registry.get(shared.key) is not shared:
            return
        del _registry[shared.key]
        shared.env.close()
        if shared.files is not None:
            shared.files.close()  # after LMDB's own descriptors are closed


def _prepare_directory(path: str, create: bool = True) -> int:
    """Create the directory (parents too, leaf mode 0700) or check the existing one: owned by
    this user (or root), writable by nobody else. Returns a descriptor pinning it."""
    return open_directory(path, create)


def _open_env(path: str, durable: bool, key: Any, files: StoreFiles) -> _SharedEnv:
    """Open LMDB on the checked files, holding the writer lock so that the lock table it sets
    up starts from the newest committed transaction."""
    lmdb_path = files.lmdb_path
    try:
        with files.writer_lock():
            files.check_data_file()
            try:
                env = lmdb.open(lmdb_path, map_size=_MAP_SIZE, max_dbs=8, max_readers=_MAX_READERS,
                                sync=durable, metasync=durable, mode=0o600, create=True, subdir=True)
            except lmdb.Error as exc:
                raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
            except OSError as exc:
                raise _os_error(exc, path) from exc
            try:
                files.verify_opened()
                env.reader_check()  # free reader slots left by crashed processes
                dbs = _open_dbs(env, path)
            except BaseException as exc:
                env.close()
                if isinstance(exc, lmdb.Error):
                    raise _wrap(_relabel(exc, lmdb_path, path), path, "opening") from exc
                raise
    except BaseException:
        files.remove_created()
        files.close()
        raise
    files.created = []
    shared = _SharedEnv(env, durable, dbs, key)
    shared.files = files
    return shared


def _relabel(exc: lmdb.Error, lmdb_path: str, path: str) -> lmdb.Error:
    """The same LMDB error, naming the store's path rather than /proc/self/fd/N."""
    if lmdb_path == path or lmdb_path not in str(exc):
        return exc
    return type(exc)(str(exc).replace(lmdb_path, path))


def _os_error(exc: OSError, path: str) -> StorageError:
    if exc.errno == errno.EROFS:
        return StorageError(f"storage at {path} is on a read-only file system", path)
    return StorageError(f"cannot open storage at {path}: {exc.strerror or exc}", path)


def _open_dbs(env: lmdb.Environment, path: str) -> tuple[Any, Any, Any]:
    """Open the named databases; initialise an empty environment in one write transaction."""
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
    if names:
        _check_layout(env, names, path)
        # Handles opened in a read-only transaction are not kept by py-lmdb; a write transaction
        # that changes nothing commits without writing or syncing.
        with env.begin(write=True) as txn:
            return tuple(env.open_db(n, txn=txn, create=False) for n in (b"journal", b"stats", b"meta"))  # type: ignore[return-value]
    with env.begin(write=True) as txn:
        # Another process may have initialised it meanwhile: create=True is idempotent.
        dbs = tuple(env.open_db(n, txn=txn, create=True) for n in (b"journal", b"stats", b"meta"))
        meta = dbs[2]
        if txn.get(b"format", db=meta) is None:
            txn.put(b"format", b"%d" % FORMAT_VERSION, db=meta)
            txn.put(b"seq", _U64.pack(0), db=meta)
    return dbs  # type: ignore[return-value]


def _check_layout(env: lmdb.Environment, names: list[bytes], path: str) -> None:
    missing = {b"journal", b"stats", b"meta"} - set(names)
    if missing:
        raise CorruptStorageError(
            f"storage at {path} is an LMDB store but not a krepis store (missing databases: "
            f"{', '.join(sorted(m.decode() for m in missing))})", path)
    with env.begin() as txn:
        meta = env.open_db(b"meta", txn=txn, create=False)
        fmt = txn.get(b"format", db=meta)
        seq = txn.get(b"seq", db=meta)
    if fmt != b"%d" % FORMAT_VERSION:
        raise CorruptStorageError(
            f"storage at {path} has format version {fmt!r}; this krepis reads version "
            f"{FORMAT_VERSION}", path)
    if seq is None or len(seq) != 8:
        raise CorruptStorageError(f"storage at {path}: malformed sequence record", path)
