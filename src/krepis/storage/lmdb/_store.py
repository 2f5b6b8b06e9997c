"""The LMDB adapter: the default engine, one environment per storage directory.

Layout (storage format 4, see ``docs/storage-format.md``): entries keyed by their sequence
number (append order), an index per lookup (time, status, op, request id), the Merkle tree's
frontier and tile nodes, the counters — and beside them the commit log, which is the write path.

**A write** appends one record to ``commit.log`` — the request's entries in canonical bytes and
its counter increments — under the log's append lock (a thread lock, then an ``flock`` shared by
every process), and, under the ``sync`` policy, returns once a flush that started after the
record was written has completed (one ``fdatasync`` serves every caller waiting). Counter values
come from memory. Nothing else is on the caller's path.

**LMDB follows behind** (``_apply``): a background thread applies the records in batches, one
synced LMDB transaction for many records, and the log's space is reused once they are durable
there. **Reads** (``_views``) combine an LMDB snapshot with the records it has not applied yet.
**Changes outside the log** (a clear, archived entries removed, a checkpoint note stored, a batch
too large for the ring) apply the whole log first, commit in LMDB, then leave a *barrier* record
so that every other process knows its view of the tail is stale.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, StorageError
from ..._model import TransactionLog, encode_log
from .._codec import rid_hash
from .._port import Storage, WriteRequest, check_checkpoint, check_drop_prefix, check_setting, decode_setting
from . import _env
from ._apply import APPLY_ENTRIES, apply_tail, put_entries
from ._catchup import catch_up
from ._commitlog import BARRIER, BATCH, LOG, CommitLog, encode_payload, record_size
from ._env import acquire, release, start_applier
from ._layout import (
    _DROP_HDR,
    _MAX_U64,
    _OP_KEY,
    _SEQ,
    _STATUS_BYTE,
    _STATUS_KEY,
    _TIME_KEY,
    _TREE_HDR,
    _TS_SEQ,
    _U64,
    COUNTER_PREFIX,
    _closed_error,
    _forked_error,
    _wrap,
)
from ._state import LogPointer, Shared, read_log_pointer
from ._tail import TailRecord
from ._views import _Views

__all__ = ["LmdbStorage"]


class LmdbStorage(_Views, Storage):
    """The journal in an LMDB environment at a directory.

    ``durable=True``: each write is on stable storage before it returns (its record in the
    commit log is flushed). ``durable=False`` writes to the OS page cache only — safe against a
    process crash; after a machine crash the store opens intact at an earlier write — and
    relies on :meth:`sync`, which flushes every write made so far.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, durable: bool = True, create: bool = True
    ) -> None:
        path = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.location = path
        self._closed = False
        self._durable = durable
        self._bind(acquire(path, create))
        self._generation = _env.generation()

    def _bind(self, shared: Shared) -> None:
        self._shared = shared
        self._env = shared.env
        dbs = shared.dbs
        self._entries = dbs[b"entries"]
        self._index = dbs[b"index"]
        self._ops = dbs[b"ops"]
        self._stats = dbs[b"stats"]
        self._tree = dbs[b"tree"]
        self._checkpoints = dbs[b"checkpoints"]
        self._meta = dbs[b"meta"]

    # -- lifecycle -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise _closed_error(self.location)
        if self._generation != _env.generation():
            raise _forked_error(self.location)
        self._shared.files.check_reader()  # lock.mdb not deleted meanwhile

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._generation == _env.generation():
            release(self._shared)

    def sync(self) -> None:
        """Make every write so far durable: one flush of the commit log."""
        self._check()
        self._flush_through(self._shared.tail.end)

    def checkpoint(self) -> None:
        """Bring LMDB up to date with the commit log (synced), so that ``data.mdb`` alone holds
        every write so far (for copies that leave the commit log behind)."""
        self._check()
        self._apply_now()

    # -- writes ----------------------------------------------------------------------------
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        if self._closed or self._generation != _env.generation():
            self._check()
        shared = self._shared
        payload = encode_payload([([c for _, c in req.entries], req.increments) for req in requests])
        size = record_size(len(payload))
        if size * 2 > shared.log.ring:
            return self._write_through(requests)
        if shared.apply_error is not None:  # LMDB could not follow (a full disk): not before it can
            self._apply_now("writing")
        while True:
            try:
                done = self._append(requests, payload, size)
            except (lmdb.Error, OSError) as exc:  # nothing was acknowledged: the record is not in the log
                raise _wrap(exc, self.location, "writing") from exc
            if done is not None:
                break
            self._apply_now("writing")  # the ring is full of records LMDB has not applied yet
        results, end = done
        if shared.tail.entries >= APPLY_ENTRIES:
            shared.wake.set()
        if self._durable:
            self._flush_through(end)
        return results

    def _append(self, requests: Sequence[WriteRequest], payload: bytes,
                size: int) -> tuple[list[list[int]], int] | None:
        """Append one record; its counter values and end, or ``None`` when the ring has no room
        for it until LMDB applies what is there."""
        shared = self._shared
        log = shared.log
        with shared.appending():
            shared.refuse_if_failed()
            shared.files.check_attached()  # never a write acknowledged into a deleted store
            log.check_attached()
            catch_up(shared, appending=True)
            tail = shared.tail
            at = log.place(tail.end, size)
            if at + size > shared.floor + log.ring:
                return None
            self._check_new_ops(requests)
            values: dict[bytes, int] = {}
            results: list[list[int]] = []
            for req in requests:
                counted = []
                for name in req.increments:
                    value = values.get(name)
                    if value is None:
                        value = self._counter_now(name)
                    if value >= _MAX_U64:
                        raise StorageError(f"counter {name.decode('utf-8', 'replace')!r} at {self.location} "
                                           "would overflow 2**64-1", self.location)
                    values[name] = value = value + 1
                    counted.append(value)
                results.append(counted)
            raw, crc = CommitLog.encode(BATCH, at, shared.durable, tail.next_seq, tail.link, payload)
            if not shared.wrote:
                self._first_write()
            log.write(at, raw)
            log.write_head(at + size)
            entries = [e for req in requests for e in req.entries]
            increments = [n for req in requests for n in req.increments]
            if not tail.records:
                shared.first_unapplied = time.monotonic()
            tail.add(TailRecord(at, at + size, crc, BATCH, tail.next_seq, entries, increments))
            tail.counters.update(values)
            return results, at + size

    def _check_new_ops(self, requests: Sequence[WriteRequest]) -> None:
        """Op names the store has not interned yet get their ids when LMDB applies the record:
        refuse now, before anything is written, what would make that fail (a damaged op table or
        ``next_op`` record, 2**32 names). The caller holds ``mu``."""
        shared = self._shared
        tail = shared.tail
        for req in requests:
            for log, _canonical in req.entries:
                name = log.op_name
                if name in shared.op_ids or name in tail.new_ops:
                    continue
                with self._env.begin() as txn:
                    stored = txn.get(b"n" + name.encode("utf-8"), db=self._ops)
                    if stored is not None:
                        if len(stored) != 4:
                            raise CorruptStorageError(f"storage at {self.location}: malformed op table entry "
                                                      f"for {name!r}", self.location)
                        op_id = int.from_bytes(stored, "little")
                        shared.op_ids[name] = op_id
                        shared.op_names[op_id] = name
                        continue
                    raw_next = txn.get(b"next_op", db=self._meta)
                    if raw_next is None or len(raw_next) != 8:
                        raise CorruptStorageError(f"storage at {self.location}: malformed next_op record",
                                                  self.location)
                    op_id = _U64.unpack(raw_next)[0] + sum(1 for n in tail.new_ops if n not in shared.op_ids)
                    if op_id >= 2**32:
                        raise StorageError(f"storage at {self.location} holds 2**32 op names; no more fit",
                                           self.location)
                    if txn.get(b"i" + op_id.to_bytes(4, "big"), db=self._ops) is not None:
                        raise CorruptStorageError(f"storage at {self.location}: the next_op record names "
                                                  f"op id {op_id}, which is taken", self.location)
                tail.new_ops.add(name)

    def _first_write(self) -> None:
        """Before this process's first record: the marker no longer says the log was closed
        clean, and the applier runs."""
        shared = self._shared
        shared.log.write_marker(shared.durable)
        shared.wrote = True
        start_applier(shared)

    def _flush_through(self, end: int) -> None:
        """Return once the log is durable up to ``end``: this thread flushes, or waits for a
        flush that started after ``end`` was written (group commit)."""
        shared = self._shared
        cv = shared.flush_cv
        with cv:
            while True:
                if shared.durable >= end:
                    return
                if isinstance(shared.failed, StorageError) and "flushing" in str(shared.failed):
                    raise shared.failed
                if not shared.flushing:
                    break
                cv.wait()
            shared.flushing = True
            target = shared.tail.end  # every record up to here was written before this flush
        try:
            shared.log.flush()
        except OSError as exc:
            error = StorageError(f"storage at {self.location}: flushing {LOG} failed "
                                 f"({exc.strerror or exc}); the last writes may not be durable, and "
                                 "this journal refuses further writes", self.location)
            with cv:
                shared.flushing = False
                shared.failed = error
                cv.notify_all()
            raise error from exc
        with cv:
            shared.flushing = False
            if target > shared.durable:
                shared.durable = target
                try:
                    shared.log.write_marker(target)
                except OSError:
                    pass  # the marker only helps a later recovery tell damage from a torn tail
            cv.notify_all()

    # -- changes outside the log -------------------------------------------------------------
    def _outside_log(self, body: Callable[[Any], Any], doing: str) -> Any:
        """A change LMDB makes itself. With every writer of every process held off (the writer
        lock, then the log's append lock): apply the whole log; announce the change as *pending*
        in ``commit.state``; commit ``body`` in LMDB (synced) with the log's pointer moved past a
        barrier record; only then write the barrier, move the head and clear the announcement.

        So whatever instant the process dies at, the store stays whole: before the commit the
        change never happened (the next writer finds LMDB's pointer where the log ends and clears
        the announcement); after it, LMDB's pointer says so (the next writer, or reader, starts
        again from there). And a barrier in the log always follows a committed change: recovery
        finding one after LMDB's pointer knows ``data.mdb`` is older than the log."""
        if self._closed or self._generation != _env.generation():
            self._check()
        shared = self._shared
        log = shared.log
        try:
            with shared.writer_lock(), shared.appending():
                shared.refuse_if_failed()
                log.check_attached()
                catch_up(shared, appending=True)
                apply_tail(shared, locked=True, doing=doing)
                tail = shared.tail
                size = record_size(0)
                at = log.place(tail.end, size)
                log.write_pending(at + size)
                try:
                    with self._env.begin(write=True) as txn:
                        self._check()
                        result = body(txn)
                        seq = self._read_tree(txn)[0]
                        pointer = read_log_pointer(txn, self._meta, self.location)
                        if pointer.position != tail.end:
                            raise CorruptStorageError(f"storage at {self.location}: LMDB applied the log up "
                                                      f"to {pointer.position}, not {tail.end}", self.location)
                        raw, crc = CommitLog.encode(BARRIER, at, shared.durable, seq, tail.link, b"")
                        after = LogPointer(pointer.log_id, at + size, crc)
                        txn.put(b"log", after.pack(), db=self._meta)
                except BaseException:
                    log.write_pending(0)  # (not committed: nothing happened)
                    raise
                log.write(at, raw)
                log.write_head(at + size)
                log.write_pending(0)
                tail.reset(after.position, after.link, seq)
                shared.floor = after.position
                shared.first_unapplied = 0.0
                return result
        except BaseException as exc:
            if isinstance(exc, (lmdb.Error, OSError)):
                raise _wrap(exc, self.location, doing) from exc
            raise

    def _write_through(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        """A batch too large for the ring: written into LMDB directly, outside the log."""
        shared = self._shared

        def body(txn: Any) -> list[list[int]]:
            seq, first_seq, epoch, frontier = self._read_tree(txn)
            new_ops: dict[str, int] = {}
            entries = [e for req in requests for e in req.entries]
            leaves = [sha256(b"\x00" + canonical).digest() for _log, canonical in entries]
            seq, _size = put_entries(shared, txn, entries, leaves, seq, seq - first_seq, frontier, new_ops)
            txn.put(b"seq", _U64.pack(seq), db=self._meta)
            txn.put(b"tree", _TREE_HDR.pack(first_seq, epoch) + b"".join(frontier), db=self._meta)
            values: dict[bytes, int] = {}
            results = []
            for req in requests:
                counted = []
                for name in req.increments:
                    value = values.get(name)
                    if value is None:
                        value = self._counter(txn.get(COUNTER_PREFIX + name, db=self._stats), name)
                    if value >= _MAX_U64:
                        raise StorageError(f"counter {name.decode('utf-8', 'replace')!r} at {self.location} "
                                           "would overflow 2**64-1", self.location)
                    values[name] = value = value + 1
                    counted.append(value)
                results.append(counted)
            for name, value in values.items():
                txn.put(COUNTER_PREFIX + name, _U64.pack(value), db=self._stats)
            pending_ops.update(new_ops)
            return results

        pending_ops: dict[str, int] = {}
        results: list[list[int]] = self._outside_log(body, "writing")
        shared.op_ids.update(pending_ops)
        shared.op_names.update((i, n) for n, i in pending_ops.items())
        return results

    def clear(self, trace: Callable[[int, int, int], TransactionLog] | None = None) -> None:
        shared = self._shared
        pending_ops: dict[str, int] = {}

        def body(txn: Any) -> None:
            seq, _first, epoch, _frontier = self._read_tree(txn)
            removed = int(txn.stat(self._entries)["entries"])
            counters = int(txn.stat(self._stats)["entries"])
            for db in (self._entries, self._index, self._stats, self._tree):
                txn.drop(db, delete=False)
            frontier: list[bytes] = []
            if trace is not None:
                log = trace(removed, counters, epoch + 1)
                canonical = encode_log(log)
                seq_after, _size = put_entries(shared, txn, [(log, canonical)],
                                               [sha256(b"\x00" + canonical).digest()], seq, 0, frontier,
                                               pending_ops)
                txn.put(b"seq", _U64.pack(seq_after), db=self._meta)
            txn.put(b"tree", _TREE_HDR.pack(seq, epoch + 1) + b"".join(frontier), db=self._meta)

        self._outside_log(body, "clearing")
        shared.op_ids.update(pending_ops)
        shared.op_names.update((i, n) for n, i in pending_ops.items())

    def add_checkpoint(self, epoch: int, size: int, origin: str, note: str) -> None:
        def body(txn: Any) -> None:
            seq, first_seq, current, _frontier = self._read_tree(txn)
            check_checkpoint(epoch, size, origin, current, seq - first_seq, self._read_checkpoints(txn))
            txn.put(_SEQ.pack(epoch) + _SEQ.pack(size) + origin.encode("utf-8"), note.encode("utf-8"),
                    db=self._checkpoints)

        self._outside_log(body, "storing a checkpoint")

    # -- settings: a meta record each, written outside the log ---------------------------------
    def get_setting(self, name: str) -> str | None:
        check_setting(name)
        self._check()
        try:
            with self._env.begin() as txn:
                raw = txn.get(name.encode("ascii"), db=self._meta)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading a setting") from exc
        return None if raw is None else decode_setting(raw, name, self.location,
                                                       f"storage at {self.location}")

    def set_setting(self, name: str, value: str | None) -> None:
        raw = check_setting(name, value)
        key = name.encode("ascii")

        def body(txn: Any) -> None:
            if raw is None:
                txn.delete(key, db=self._meta)
            else:
                txn.put(key, raw, db=self._meta)

        self._outside_log(body, "storing a setting")

    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        removed: int = self._outside_log(lambda txn: self._drop_prefix_body(txn, epoch, upto_seq),
                                         "removing archived entries")
        return removed

    def _drop_prefix_body(self, txn: Any, epoch: int, upto_seq: int) -> int:
        """Inside a write transaction: remove the entries ``live … upto_seq − 1`` and their index
        rows, record ``live``; return how many were removed (raising leaves the transaction to
        be aborted)."""
        removed = 0
        seq, first_seq, current, _frontier = self._read_tree(txn)
        check_drop_prefix(self.location, epoch, upto_seq, current, seq)
        live = self._live_first(txn, first_seq, epoch)
        if upto_seq <= live:
            return 0
        entries, index = self._entries, self._index
        delete = txn.delete
        hdr, ts_seq_pack, op_key = _DROP_HDR.unpack_from, _TS_SEQ.pack, _OP_KEY.pack
        cur = txn.cursor(db=entries)
        positioned = cur.set_range(_SEQ.pack(live))
        while positioned:
            key = cur.key()
            if not key:
                break
            at = _SEQ.unpack(key)[0]
            if at >= upto_seq:
                break
            # only what the index keys need: status, timestamp, op id, request id
            raw = cur.value()
            try:
                flags, timestamp, op_id = hdr(raw)
                status = flags & 3
                if flags & 4:
                    h = raw[13:29].hex()
                    if len(h) != 32:
                        raise ValueError("truncated request id")
                    rid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()
                else:
                    rid = raw[14:15 + raw[13]]
                if not status:
                    raise ValueError(f"bad header (flags {flags:#x})")
            except (ValueError, IndexError, struct.error) as exc:
                raise CorruptStorageError(f"storage at {self.location}: entry {at} is not a valid "
                                          f"TransactionLog ({exc})", self.location) from None
            ts_seq = ts_seq_pack(timestamp, at)
            for ikey in (_TIME_KEY, _STATUS_KEY[status], op_key(b"o", op_id, status),
                         b"r" + rid_hash(rid) + _STATUS_BYTE[status]):
                delete(ikey, ts_seq, db=index)
            removed += 1
            positioned = cur.delete()  # (and moves to the next entry)
        if removed != upto_seq - live:
            raise CorruptStorageError(f"storage at {self.location}: entries {live}…{upto_seq - 1} "
                                      f"are not all there ({removed} found)", self.location)
        txn.put(b"live", _TREE_HDR.pack(epoch, upto_seq), db=self._meta)
        return removed
