"""``krepis migrate`` from storage format 3 to 4: the commit log becomes the write path.

Format 4 keeps format 3's databases and encodings; what changes is the commit log (version 2,
``docs/storage-format.md``) and ``meta["log"]``, which now names the log that continues
``data.mdb`` and how far LMDB has applied it.

* **A store closed cleanly** (``data.mdb``'s meta pages are the newest checkpoint's, and no
  commit follows it in the old log): one synced LMDB commit sets the version and a pointer that
  names no log; then the old log is removed. The first open makes a new log. A crash between
  the two leaves a format-4 ``data.mdb`` beside a version-1 log, which the first open replaces.
* **A store whose writer died** (commits in the old log after its checkpoint): recovered the way
  format 3 recovers — the checkpoint's meta pages written back, the logged commits applied again
  in order — but on a **copy** in ``.migrate/``, never on the store's own ``data.mdb``; the copy
  is converted, verified, made durable and renamed over ``data.mdb`` in one step. A crash before
  the rename leaves the old store untouched; after it, the new one.
"""

from __future__ import annotations

import os
import shutil
from hashlib import sha256
from types import SimpleNamespace
from typing import Any, cast

import lmdb

from ..._errors import CorruptStorageError, StorageError
from .._outfiles import create_exclusive, fsync_fd, make_private_dir, remove_at
from ._apply import put_entries
from ._commitlog import decode_payload
from ._files import DATA, LOG, MIGRATE_DIR, meta_txnid
from ._layout import _MAX_U64, _TREE_HDR, _U64, COUNTER_PREFIX, FORMAT_VERSION
from ._legacy_log import LegacyLog
from ._offline import Offline
from ._state import NO_LOG, LogPointer, Shared
from ._tail import decode_entries

__all__ = ["format3_to_4"]

_DBS = (b"entries", b"index", b"ops", b"stats", b"tree", b"checkpoints", b"meta")


def format3_to_4(path: str, off: Offline) -> tuple[int, int]:
    """Convert the format-3 store at ``path``, held offline by ``off`` (the directory lock and
    LMDB's exclusive lock, the directory pinned); returns (entries, counters)."""
    dir_fd = off.dir_fd
    try:
        log_fd = os.open(LOG, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        log_fd = -1
    except OSError as exc:
        raise StorageError(f"cannot open {os.path.join(path, LOG)}: {exc.strerror}", path) from exc
    try:
        if log_fd < 0:
            return _in_place(path, dir_fd)
        log = LegacyLog(path, log_fd)
        slot = log.checkpoint()
        metas = _meta_pages(dir_fd, log.page_size)
        pending = list(log.records(slot))
        if metas == slot.metas and not pending:
            return _in_place(path, dir_fd)
        return _via_copy(path, off, log, slot, metas, pending)
    finally:
        if log_fd >= 0:
            os.close(log_fd)


def _meta_pages(dir_fd: int, page_size: int) -> bytes:
    fd = os.open(DATA, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.pread(fd, 2 * page_size, 0)
    finally:
        os.close(fd)


def _convert(env: lmdb.Environment, path: str) -> tuple[int, int]:
    """Inside one synced commit: the format, and a commit-log pointer that names no log yet."""
    try:
        with env.begin(write=True) as txn:
            entries = int(txn.stat(env.open_db(b"entries", txn=txn, create=False))["entries"])
            counters = int(txn.stat(env.open_db(b"stats", txn=txn, create=False))["entries"])
            meta = env.open_db(b"meta", txn=txn, create=False)
            txn.put(b"format", b"%d" % FORMAT_VERSION, db=meta)
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=meta)
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be migrated: {exc}", path) from exc
    return entries, counters


def _in_place(path: str, dir_fd: int) -> tuple[int, int]:
    # fully synced commits, through the pinned directory
    env = lmdb.open(f"/proc/self/fd/{dir_fd}", max_dbs=16, map_size=1 << 40, subdir=True, create=False)
    try:
        done = _convert(env, path)
    finally:
        env.close()  # (drops this process's locks on lock.mdb: the directory lock remains)
    remove_at(LOG, dir_fd)
    fsync_fd(dir_fd, path)
    return done


def _via_copy(path: str, off: Offline, log: LegacyLog, slot: Any, metas: bytes,
              pending: list[tuple[int, int, bytes, int]]) -> tuple[int, int]:
    dir_fd = off.dir_fd
    at = meta_txnid(metas, log.page_size)
    if metas != slot.metas and at < slot.txnid:
        raise CorruptStorageError(
            f"storage at {path}: data.mdb is at transaction {at}, older than the checkpoint of its "
            f"{LOG} (transaction {slot.txnid}): they do not belong together. Nothing was changed", path)
    work = os.path.join(path, MIGRATE_DIR)
    remove_at(MIGRATE_DIR, dir_fd)  # what a killed migration left behind (a link: not followed)
    work_fd = make_private_dir(MIGRATE_DIR, dir_fd, work)
    try:
        copy = os.path.join(work, DATA)
        src_fd = os.open(DATA, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with open(src_fd, "rb") as src, open(create_exclusive(DATA, work_fd, copy), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            fsync_fd(dst.fileno(), copy)
        if metas != slot.metas:  # the checkpoint's snapshot, as format 3's recovery does it
            fd = os.open(DATA, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=work_fd)
            try:
                os.pwrite(fd, slot.metas, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        env = lmdb.open(f"/proc/self/fd/{work_fd}", max_dbs=16, map_size=1 << 40, subdir=True)
        try:
            _replay(env, path, slot, pending)
            entries, counters = _convert(env, path)
        finally:
            env.close()
        _verify(work, path)
        os.rename(DATA, DATA, src_dir_fd=work_fd, dst_dir_fd=dir_fd)  # the one atomic step
        fsync_fd(dir_fd, path)
        remove_at(LOG, dir_fd)  # (a crash before this: a leftover the first open replaces)
        fsync_fd(dir_fd, path)
    finally:
        os.close(work_fd)
        remove_at(MIGRATE_DIR, dir_fd)
    off.rebuild_lock_table()  # LMDB's lock table still describes the old file
    return entries, counters


def _replay(env: lmdb.Environment, path: str, slot: Any, pending: list[tuple[int, int, bytes, int]]) -> None:
    """Format 3's recovery on the copy: each logged commit applied again as the very LMDB
    transaction it was; one the store refused when it was first written (a counter at its
    limit) never committed, and ends the replay."""
    with env.begin(write=True) as txn:
        dbs = {name: env.open_db(name, txn=txn, create=name == b"checkpoints") for name in _DBS}
    with env.begin() as txn:
        if txn.id() != slot.txnid:
            raise CorruptStorageError(f"storage at {path}: data.mdb is at transaction {txn.id()}, its "
                                      f"{LOG} checkpoint at {slot.txnid}", path)
    shim = cast(Shared, SimpleNamespace(path=path, dbs=dbs, meta=dbs[b"meta"], op_ids={}, op_names={}))
    for txnid, position, payload, _after in pending:
        try:
            requests = [(decode_entries(entries), names) for entries, names in decode_payload(payload)]
        except ValueError as exc:
            raise CorruptStorageError(f"storage at {path}: the {LOG} record of transaction {txnid} (at "
                                      f"{position}) is malformed ({exc})", path) from None
        txn = env.begin(write=True)
        try:
            if txn.id() != txnid:
                raise CorruptStorageError(f"storage at {path}: {LOG} holds transaction {txnid} where the "
                                          f"store is at transaction {txn.id() - 1}", path)
            if not _apply(shim, txn, requests):
                txn.abort()
                break
            txn.commit()
        except BaseException:
            txn.abort()
            raise


def _apply(shim: Shared, txn: Any, requests: list[tuple[list[tuple[Any, bytes]], list[bytes]]]) -> bool:
    """One format-3 commit; ``False`` when a counter would pass 2**64-1 (it never committed).
    A sequence or tree record that is missing or of the wrong size, or a frontier that does not
    match the tree's size, is a :class:`CorruptStorageError` naming the store."""
    meta, stats = shim.meta, shim.dbs[b"stats"]
    raw_seq, raw_tree = txn.get(b"seq", db=meta), txn.get(b"tree", db=meta)
    if raw_seq is None or raw_tree is None or len(raw_seq) != 8 or len(raw_tree) < 16:
        raise CorruptStorageError(f"storage at {shim.path}: malformed sequence or tree record", shim.path)
    seq = _U64.unpack(raw_seq)[0]
    first_seq, epoch = _TREE_HDR.unpack_from(raw_tree)
    frontier = [raw_tree[i:i + 32] for i in range(16, len(raw_tree), 32)]
    size = seq - first_seq  # (the frontier: one hash per bit set in the tree's size, as _state.read_tree)
    if size < 0 or (len(raw_tree) - 16) % 32 or len(frontier) != bin(size).count("1"):
        raise CorruptStorageError(
            f"storage at {shim.path}: the Merkle tree record ({len(frontier)} subtrees) does not match the "
            f"sequence ({size} entries since seq {first_seq})", shim.path)
    values: dict[bytes, int] = {}
    for _entries, names in requests:
        for name in names:
            raw = txn.get(COUNTER_PREFIX + name, db=stats) if name not in values else None
            value = values.get(name, 0 if raw is None else _U64.unpack(raw)[0])
            if value >= _MAX_U64:
                return False
            values[name] = value + 1
    entries = [e for batch, _names in requests for e in batch]
    if entries:
        leaves = [sha256(b"\x00" + canonical).digest() for _log, canonical in entries]
        seq, _size = put_entries(shim, txn, entries, leaves, seq, seq - first_seq, frontier, {})
        txn.put(b"seq", _U64.pack(seq), db=meta)
        txn.put(b"tree", _TREE_HDR.pack(first_seq, epoch) + b"".join(frontier), db=meta)
    for name, value in values.items():
        txn.put(COUNTER_PREFIX + name, _U64.pack(value), db=stats)
    return True


def _verify(work: str, path: str) -> None:
    """The converted copy must pass a full verification before it replaces anything."""
    from ._compact import verify_copy

    verify_copy(work, path, "the store recovered from its format-3 commit log does not verify").close()
