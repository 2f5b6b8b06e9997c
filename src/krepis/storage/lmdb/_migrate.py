"""``krepis migrate`` for LMDB stores: formats 1, 2 and 3 to the current format (see
:mod:`krepis.storage._migration` for the guarantees; format 3: :mod:`._migrate3`).

The store directory gets the checks of an open (owner, modes, the path to it) and is worked on
through its pinned descriptor; the new store of a format-1 migration is built through the storage
port (``LmdbStorage.write_batch``), so it is written by whatever the current format is, in
``.migrate/`` — a directory this migration creates (mode 0700; whatever was under that name
before is removed, a link without following it) — then checked, flushed, and swapped in with one
rename.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from hashlib import sha256
from typing import Any

from ..._errors import CorruptStorageError, StorageError
from ..._model import TransactionLog, encode_log
from ...tlog._merkle import append_leaf, root_from_frontier
from .._migration import MigrationResult, Progress, counter_name, format1_entry
from .._outfiles import create_exclusive, fsync_fd, fsync_file_at, make_private_dir, remove_at
from .._port import WriteRequest
from ._offline import DATA, LOG, Offline
from ._state import NO_LOG, LogPointer

__all__ = ["migrate_lmdb"]

_U64 = struct.Struct("<Q")

_SEQ = struct.Struct(">Q")

_CHUNK = 4096

_ORDER = "order.mdb"  # the scratch environment sorting format-1 keys by sequence (in .migrate/)

_COUNTER_PREFIX = b"op_count:"  # format 1's counter keys (and formats 2 and 3's)


def migrate_lmdb(path: str, progress: Progress | None) -> MigrationResult:
    from ._files import MIGRATE_DIR
    from ._layout import FORMAT_VERSION

    with Offline(path, create=False, command="krepis migrate") as off:
        dir_fd = off.dir_fd
        if not os.path.lexists(os.path.join(f"/proc/self/fd/{dir_fd}", DATA)):
            raise StorageError(f"there is no krepis store at {path} (no data.mdb)", path)
        fmt = _lmdb_format(path, dir_fd)
        if fmt == FORMAT_VERSION:
            return MigrationResult(path, fmt, fmt, 0, 0)
        if fmt == 2:
            entries, counters = _format2_to_3(path, dir_fd)
            return MigrationResult(path, 2, FORMAT_VERSION, entries, counters)
        if fmt == 3:
            from ._migrate3 import format3_to_4

            entries, counters = format3_to_4(path, off)
            return MigrationResult(path, 3, FORMAT_VERSION, entries, counters)
        if fmt != 1:
            raise CorruptStorageError(f"storage at {path} has format version {fmt}; krepis "
                                      f"migrates formats 1, 2 and 3 to {FORMAT_VERSION}", path)
        work = os.path.join(path, MIGRATE_DIR)
        remove_at(MIGRATE_DIR, dir_fd)  # what a killed migration left behind
        work_fd = make_private_dir(MIGRATE_DIR, dir_fd, work)
        try:
            entries, counters = _build_lmdb(path, dir_fd, work, work_fd, progress)
            # Only now, with the new store complete, checked and durable: the old commit log (if
            # any) cannot describe the new file, then the one atomic step.
            remove_at(LOG, dir_fd)
            fsync_fd(dir_fd, path)
            os.rename(DATA, DATA, src_dir_fd=work_fd, dst_dir_fd=dir_fd)
            fsync_fd(dir_fd, path)
        except BaseException:
            os.close(work_fd)
            remove_at(MIGRATE_DIR, dir_fd)
            raise
        os.close(work_fd)
        remove_at(MIGRATE_DIR, dir_fd)
        fsync_fd(dir_fd, path)
        off.rebuild_lock_table()
        return MigrationResult(path, 1, FORMAT_VERSION, entries, counters)


def _format2_to_3(path: str, dir_fd: int) -> tuple[int, int]:
    """The current format keeps format 2's databases and adds the commit log (``commit.log``),
    which the first open creates from the store as it is: set the version and a pointer naming no
    log in one durable commit. A ``commit.log`` already there cannot describe this file; it goes
    first."""
    import lmdb

    from ._layout import FORMAT_VERSION

    remove_at(LOG, dir_fd)
    fsync_fd(dir_fd, path)
    # fully synced commits, through the pinned directory
    env = lmdb.open(f"/proc/self/fd/{dir_fd}", max_dbs=16, map_size=1 << 40, subdir=True, create=False)
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
        env.close()  # (drops this process's locks on lock.mdb: the directory lock remains)
    return entries, counters


def _lmdb_format(path: str, dir_fd: int) -> int:
    import lmdb

    try:
        env = lmdb.open(f"/proc/self/fd/{dir_fd}", readonly=True, lock=False, max_dbs=16, subdir=True)
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be read: {exc}", path) from exc
    try:
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
            except lmdb.NotFoundError:
                raise CorruptStorageError(f"storage at {path} is not a krepis store", path) from None
            fmt = txn.get(b"format", db=meta)
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be read: {exc}", path) from exc
    finally:
        env.close()
    try:
        return int(bytes(fmt or b""))
    except ValueError:
        raise CorruptStorageError(f"storage at {path} has format version {fmt!r}", path) from None


def _format1_key(path: str, key: bytes) -> tuple[int, int, bytes]:
    """``{timestamp:019}:{sequence:020}:{request id}`` → (sequence, timestamp, request id)."""
    if len(key) < 41 or key[19:20] != b":" or key[40:41] != b":" or not key[:19].isdigit() \
            or not key[20:40].isdigit():
        raise CorruptStorageError(f"storage at {path}: malformed format-1 key {key[:60]!r} (not "
                                  "timestamp:sequence:request id); nothing was changed", path)
    seq = int(key[20:40])
    if seq >= 2**64:
        raise CorruptStorageError(f"storage at {path}: format-1 key {key[:60]!r} holds sequence number "
                                  f"{seq}, past 2**64-1; nothing was changed", path)
    return seq, int(key[:19]), key[41:]


def _bad_entry(path: str, seq: int, what: str) -> CorruptStorageError:
    return CorruptStorageError(f"storage at {path}: format-1 entry {seq} (its sequence number) is not a "
                               f"valid TransactionLog: {what}; nothing was changed", path)


def _entries(path: str, src: Any, journal: Any, order_env: Any) -> Iterator[tuple[TransactionLog, bytes]]:
    """Every format-1 entry in append (sequence) order, checked, with its canonical bytes.

    Format 1 keys sort by time; append order is their sequence field. They are sorted by it
    through a scratch environment (LMDB sorts on disk, so memory stays flat)."""
    with order_env.begin(write=True) as txn:
        cur = txn.cursor()
        for key in src.cursor(db=journal).iternext(keys=True, values=False):
            seq, _ts, _rid = _format1_key(path, bytes(key))
            if not cur.put(_SEQ.pack(seq), key, overwrite=False):
                raise CorruptStorageError(f"storage at {path}: format-1 sequence {seq} is used twice; "
                                          "nothing was changed", path)
    with order_env.begin() as txn:
        for key in txn.cursor().iternext(keys=False, values=True):
            seq, ts, rid = _format1_key(path, bytes(key))
            raw = src.get(key, db=journal)
            try:
                log = format1_entry(bytes(raw or b""))
            except ValueError as exc:
                raise _bad_entry(path, seq, str(exc)) from None
            if log.timestamp != ts or log.request_id.encode("utf-8") != rid:
                raise _bad_entry(path, seq, f"its key says timestamp {ts} and request id {rid[:60]!r}, "
                                            f"its value {log.timestamp} and {log.request_id[:60]!r}")
            yield log, encode_log(log)


def _counters(path: str, src: Any, stats: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in src.cursor(db=stats):
        key = bytes(key)
        if not key.startswith(_COUNTER_PREFIX):
            raise CorruptStorageError(f"storage at {path}: format-1 counter key {key[:60]!r} does not "
                                      "start with op_count:; nothing was changed", path)
        try:
            name = counter_name(key[len(_COUNTER_PREFIX):])
        except ValueError as exc:
            raise CorruptStorageError(f"storage at {path}: format-1 counter {key[:60]!r}: {exc}; nothing "
                                      "was changed", path) from None
        if len(value) != 8:
            raise CorruptStorageError(f"storage at {path}: format-1 counter {name!r} holds {len(value)} "
                                      "bytes, not 8; nothing was changed", path)
        out[name] = int(_U64.unpack(value)[0])
    return out


def _build_lmdb(path: str, dir_fd: int, work: str, work_fd: int,
                progress: Progress | None) -> tuple[int, int]:
    """Write the new store into ``work`` from the format-1 store at ``path``, check it against
    what was read (``verify()``, the tree's root, the counters), and make it durable."""
    import lmdb

    from ._store import LmdbStorage

    old = new = order_env = None
    try:
        old = lmdb.open(f"/proc/self/fd/{dir_fd}", readonly=True, lock=False, max_dbs=16, subdir=True)
        new = LmdbStorage(work, durable=False)
        order_path = os.path.join(work, _ORDER)
        os.close(create_exclusive(_ORDER, work_fd, order_path))  # never through a link
        order_env = lmdb.open(f"/proc/self/fd/{work_fd}/{_ORDER}", subdir=False, lock=False,
                              sync=False, metasync=False, map_size=1 << 40, create=False)
        with old.begin() as src:
            try:
                journal = old.open_db(b"journal", txn=src, create=False)
                stats = old.open_db(b"stats", txn=src, create=False)
            except lmdb.NotFoundError:
                raise CorruptStorageError(f"storage at {path} says format 1 but lacks its journal or "
                                          "stats database", path) from None
            total = int(src.stat(journal)["entries"])
            counters = _counters(path, src, stats)
            done = 0
            frontier: list[bytes] = []
            batch: list[tuple[TransactionLog, bytes]] = []
            for pair in _entries(path, src, journal, order_env):
                batch.append(pair)
                done = append_leaf(frontier, done, sha256(b"\x00" + pair[1]).digest())
                if len(batch) >= _CHUNK:
                    new.write_batch([WriteRequest(batch, ())])
                    batch = []
                    if progress:
                        progress(done, total)
            if batch:
                new.write_batch([WriteRequest(batch, ())])
        _put_counters(new, counters)
        order_env.close()
        order_env = None
        remove_at(_ORDER, work_fd)
        new.checkpoint()  # data.mdb alone holds it all: it moves without its commit log
        report = new.verify()
        root = root_from_frontier(frontier)
        if (done, report.entries, report.tree_size) != (total, total, total) or report.root != root:
            raise StorageError(f"migration of {path} went wrong: {done} of {total} entries read, the new "
                               f"store holds {report.entries} and a tree of {report.tree_size}; nothing "
                               "was changed", path)
        if new.get_counts() != counters:
            raise StorageError(f"migration of {path} went wrong: the new store's counters differ from "
                               "the old ones; nothing was changed", path)
        if progress:
            progress(done, total)
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be read for migration: {exc}", path) from exc
    finally:
        if order_env is not None:
            order_env.close()
        if new is not None:
            new.close()
        if old is not None:
            old.close()
    fsync_file_at(DATA, work_fd, os.path.join(work, DATA))  # (the checkpoint flushed it; this says so)
    fsync_fd(work_fd, work)
    return total, len(counters)


def _put_counters(new: Any, counters: dict[str, int]) -> None:
    """The counters, with their values, in one commit of the new store. The port only increments
    by one; this writes the stats database the way every format since 1 lays it out
    (``op_count:{name}`` → LE8), and the caller checks the result through the port
    (``get_counts``) and makes it durable with a checkpoint."""
    from ._layout import COUNTER_PREFIX

    with new._env.begin(write=True) as txn:
        for name, value in counters.items():
            txn.put(COUNTER_PREFIX + name.encode("utf-8"), _U64.pack(value), db=new._stats)
