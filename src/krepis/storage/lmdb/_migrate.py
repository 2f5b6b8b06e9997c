"""``krepis migrate`` for LMDB stores: formats 1, 2 and 3 to the current format (see
:mod:`krepis.storage._migrate` for the guarantees)."""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
from typing import Any

from ..._errors import CorruptStorageError, StorageError
from ..._model import decode_log, encode_log
from .._migration import MigrationResult, Progress
from .._port import WriteRequest
from ._state import NO_LOG, LogPointer

__all__ = ["migrate_lmdb"]

_U64 = struct.Struct("<Q")

_SEQ = struct.Struct(">Q")

_CHUNK = 4096

def migrate_lmdb(path: str, progress: Progress | None) -> MigrationResult:
    import lmdb

    from ._files import MIGRATE_DIR
    from ._layout import FORMAT_VERSION

    data = os.path.join(path, "data.mdb")
    if not os.path.isdir(path) or os.path.islink(path):
        raise StorageError(f"there is no krepis store at {path}", path)
    if os.path.islink(data) or not os.path.isfile(data):
        raise StorageError(f"there is no krepis store at {path} (no data.mdb)", path)
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StorageError(f"cannot open storage directory {path}: {exc.strerror}", path) from exc
    lock_fd = -1
    try:
        # Openers take this lock while they open the store: none can start meanwhile.
        from ._env import open_in_this_process
        from ._files import exclusive_lmdb_lock

        if open_in_this_process(path):
            raise StorageError(f"storage at {path} is open in this process; close it first", path)
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        lock_fd = exclusive_lmdb_lock(path)
        fmt = _lmdb_format(path)
        if fmt == FORMAT_VERSION:
            return MigrationResult(path, fmt, fmt, 0, 0)
        if fmt == 2:
            entries, counters = _format2_to_3(path, dir_fd)
            lock_fd = -1  # closing the environment dropped this process's locks on lock.mdb
            return MigrationResult(path, 2, FORMAT_VERSION, entries, counters)
        if fmt == 3:
            from ._migrate3 import format3_to_4

            entries, counters = format3_to_4(path, dir_fd)
            lock_fd = -1  # closing the environment dropped this process's locks on lock.mdb
            return MigrationResult(path, 3, FORMAT_VERSION, entries, counters)
        if fmt != 1:
            raise CorruptStorageError(f"storage at {path} has format version {fmt}; krepis "
                                      f"migrates formats 1, 2 and 3 to {FORMAT_VERSION}", path)
        work = os.path.join(path, MIGRATE_DIR)
        shutil.rmtree(work, ignore_errors=True)  # what a crashed migration left behind
        try:
            entries, counters = _build_lmdb(path, work, progress)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        os.replace(os.path.join(work, "data.mdb"), data)  # the one atomic step
        os.fsync(dir_fd)
        shutil.rmtree(work, ignore_errors=True)
        # LMDB's lock table still describes the old file; an exclusive open rebuilds it. We hold
        # the exclusive lock ourselves, so this process's open is the exclusive one.
        env = lmdb.open(path, max_dbs=16, map_size=1 << 20, subdir=True)
        env.close()
        lock_fd = -1  # closing the environment dropped this process's locks on lock.mdb
        return MigrationResult(path, 1, FORMAT_VERSION, entries, counters)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(dir_fd)

def _format2_to_3(path: str, dir_fd: int) -> tuple[int, int]:
    """Format 3 keeps format 2's databases and adds the commit log (``commit.log``), which the
    first open creates from the store as it is: set the version in one durable commit. A
    ``commit.log`` already there cannot describe this file; it goes first."""
    import lmdb

    from ._files import LOG
    from ._layout import FORMAT_VERSION

    try:
        os.unlink(LOG, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except FileNotFoundError:
        pass
    env = lmdb.open(path, max_dbs=16, map_size=1 << 40, subdir=True)  # fully synced commits
    try:
        with env.begin(write=True) as txn:
            entries = int(txn.stat(env.open_db(b"entries", txn=txn, create=False))["entries"])
            counters = int(txn.stat(env.open_db(b"stats", txn=txn, create=False))["entries"])
            env.open_db(b"checkpoints", txn=txn)  # (added late in format 2)
            meta = env.open_db(b"meta", txn=txn, create=False)
            txn.put(b"format", b"%d" % FORMAT_VERSION, db=meta)
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=meta)  # (the first open makes the log)
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be migrated: {exc}", path) from exc
    finally:
        env.close()
    return entries, counters

def _lmdb_format(path: str) -> int:
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
            except lmdb.NotFoundError:
                raise CorruptStorageError(f"storage at {path} is not a krepis store", path) from None
            fmt = txn.get(b"format", db=meta)
    finally:
        env.close()
    try:
        return int(bytes(fmt or b""))
    except ValueError:
        raise CorruptStorageError(f"storage at {path} has format version {fmt!r}", path) from None

def _build_lmdb(path: str, work: str, progress: Progress | None) -> tuple[int, int]:
    """Write the new store into ``work`` from the format-1 store at ``path``; durable."""
    import lmdb

    from ._store import LmdbStorage

    old = lmdb.open(path, readonly=True, lock=False, max_dbs=16, subdir=True)
    new = LmdbStorage(work, durable=False)
    try:
        with old.begin() as src:
            journal = old.open_db(b"journal", txn=src, create=False)
            stats = old.open_db(b"stats", txn=src, create=False)
            total = int(src.stat(journal)["entries"])
            # Format 1 keys sort by time; append order is their sequence field. Sort by it
            # through a scratch database (LMDB sorts on disk, so memory stays flat).
            env = new._env
            order = env.open_db(b"migrate-order")
            with env.begin(write=True) as txn:
                cur = txn.cursor(db=order)
                for key in src.cursor(db=journal).iternext(keys=True, values=False):
                    try:
                        seq = int(key[20:40])
                    except ValueError:
                        raise CorruptStorageError(
                            f"storage at {path}: malformed format-1 key {key[:60]!r}", path) from None
                    if not cur.put(_SEQ.pack(seq), key, overwrite=False):
                        raise CorruptStorageError(
                            f"storage at {path}: format-1 sequence {seq} is used twice", path)
            done = 0
            with env.begin() as order_txn:
                batch: list[tuple[Any, bytes]] = []
                for key in order_txn.cursor(db=order).iternext(keys=False, values=True):
                    raw = src.get(key, db=journal)
                    try:
                        log = decode_log(bytes(raw or b""))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise CorruptStorageError(
                            f"storage at {path}: format-1 entry {bytes(key)[:60]!r} is not a valid "
                            f"TransactionLog ({exc})", path) from None
                    batch.append((log, encode_log(log)))
                    if len(batch) >= _CHUNK:
                        new.write_batch([WriteRequest(batch, ())])
                        done += len(batch)
                        batch = []
                        if progress:
                            progress(done, total)
                if batch:
                    new.write_batch([WriteRequest(batch, ())])
                    done += len(batch)
            with env.begin(write=True) as txn:
                txn.drop(order, delete=True)
                n_counters = 0
                new_stats = new._stats
                for key, value in src.cursor(db=stats):
                    if len(value) != 8:
                        raise CorruptStorageError(
                            f"storage at {path}: counter {bytes(key)!r} holds {len(value)} bytes, not 8",
                            path)
                    txn.put(bytes(key), bytes(value), db=new_stats)
                    n_counters += 1
            if done != total or new.entry_count() != total:
                raise StorageError(f"migration of {path} copied {done} of {total} entries", path)
            if progress:
                progress(done, total)
        new.checkpoint()  # data.mdb alone holds it all: it moves without its commit log
        return total, n_counters
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be read for migration: {exc}", path) from exc
    finally:
        new.close()
        old.close()
