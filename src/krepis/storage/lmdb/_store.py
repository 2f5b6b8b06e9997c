"""The LMDB adapter: the default engine, one environment per storage directory.

Layout (storage format 3, see ``docs/storage-format.md``): entries keyed by their sequence
number (append order), an index per lookup (time, status, op, request id) written in the same
transaction, the Merkle tree's frontier and tile nodes, the counters. LMDB serializes writers
across threads and processes with a robust mutex in ``lock.mdb`` (and krepis with an flock on
``data.mdb``), so several processes may share one directory.

The commit path (``_commitlog.py``): LMDB commits without syncing; a commit is made durable by
its record in ``commit.log``, written before the LMDB commit and flushed by one ``fdatasync``
that runs on a helper thread while the commit is applied. Checkpoints (a background thread, a
few per second at most) flush ``data.mdb`` and record its meta pages in the log. Every process
that commits holds a read transaction no newer than the newest checkpoint (its *pin*), so LMDB
never reuses a page of the last durable snapshot: after a power cut, the first opener writes the
checkpoint's meta pages back and applies the logged commits that follow it again.
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
from ...tlog._merkle import append_leaf
from .._codec import STATUS_CODE, encode_value, rid_hash
from .._port import Storage, WriteRequest, check_checkpoint, check_drop_prefix
from . import _env
from ._commitlog import LOG, Slot, decode_payload, encode_payload
from ._env import _acquire, _release, _SharedEnv, _writer_lock
from ._layout import (
    _DROP_HDR,
    _MAX_U64,
    _NODE_KEY,
    _OP_KEY,
    _SEQ,
    _STATUS_BYTE,
    _STATUS_KEY,
    _TIME_KEY,
    _TREE_HDR,
    _TS_SEQ,
    _U64,
    COUNTER_PREFIX,
    _canonical_log,
    _closed_error,
    _forked_error,
    _position,
    _Refused,
    _wrap,
)
from ._reads import _Reads

__all__ = ["LmdbStorage"]


class LmdbStorage(_Reads, Storage):
    """The journal in an LMDB environment at a directory.

    ``durable=True``: each commit is on stable storage before it returns (its record in the
    commit log is flushed). ``durable=False`` commits to the OS page cache only — safe against a
    process crash; after a machine crash the store opens intact at an earlier commit — and
    relies on :meth:`sync`, which flushes every commit made so far.
    """

    def __init__(
        self, location: str | os.PathLike[str], *, durable: bool = True, create: bool = True
    ) -> None:
        path = os.path.abspath(os.path.expanduser(os.fspath(location)))
        self.location = path
        self._closed = False
        self._durable = durable
        self._bind(_acquire(path, create, _replay))
        self._generation = _env._generation

    def _bind(self, shared: _SharedEnv) -> None:
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
        if self._generation != _env._generation:
            raise _forked_error(self.location)
        self._shared.files.check_reader()  # lock.mdb not deleted meanwhile

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._generation == _env._generation:
            _release(self._shared)

    def sync(self) -> None:
        """Make every commit so far durable: one flush of the commit log."""
        self._check()
        try:
            self._shared.log.flush()
        except OSError as exc:
            raise StorageError(f"storage at {self.location} failed while syncing {LOG}: "
                               f"{exc.strerror or exc}", self.location) from exc

    def checkpoint(self) -> None:
        """Flush ``data.mdb`` itself and record the checkpoint, so that the store's data file
        alone holds every commit so far (for copies that leave the commit log behind)."""
        self._check()
        try:
            _env._checkpoint(self._shared, self.location, locked=False)
        except (lmdb.Error, OSError) as exc:
            raise _wrap(exc, self.location, "checkpointing") from exc

    # -- writes ----------------------------------------------------------------------------
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        if self._closed or self._generation != _env._generation:
            self._check()
        shared = self._shared
        payload = encode_payload([([c for _, c in req.entries], req.increments) for req in requests])
        with _writer_lock(shared):
            results, ticket = self._write_batch(requests, payload)
        if ticket:
            assert shared.flusher is not None
            try:
                shared.flusher.wait(ticket)
            except StorageError as exc:
                shared.failed = exc
                raise
        return results

    def _before_commit(self) -> _SharedEnv:
        """Under the writer lock, before any commit: the store is usable and this process holds
        a pin under the newest checkpoint (taking a checkpoint for it if not)."""
        self._check()
        shared = self._shared
        if shared.failed is not None:
            raise StorageError(f"storage at {self.location} refuses writes after an earlier failure "
                               f"of its commit path ({shared.failed}); close and reopen it",
                               self.location)
        if shared.flusher is None:
            shared.start_threads(self.location)
        if shared.pin is None or shared.commits >= _env._CHECKPOINT_BACKLOG or \
                self._env.info()["last_pgno"] - shared.pgno >= 4 * _env._CHECKPOINT_GROWTH:
            _env._checkpoint(shared, self.location, locked=True)
        return shared

    def _write_batch(self, requests: Sequence[WriteRequest], payload: bytes) -> tuple[list[list[int]], int]:
        """Log, apply and commit one batch; returns its results and the flush ticket to wait for
        (0 when the batch need not or cannot wait for one)."""
        try:
            shared = self._before_commit()
        except (lmdb.Error, OSError) as exc:
            raise _wrap(exc, self.location, "writing") from exc
        log = shared.log
        size = log.record_size(len(payload))
        new_ops: dict[str, int] = {}
        written = -1
        ticket = 0
        try:
            txn = self._env.begin(write=True)
            try:
                at = log.place(_position(txn.get(b"log", db=self._meta), self.location), size)
                if not log.fits(at, size, shared.tail):
                    shared.tail = log.checkpoint().tail  # another process may have advanced it
                    if not log.fits(at, size, shared.tail) and size <= log.ring:
                        _env._checkpoint(shared, self.location, locked=True)
                if log.fits(at, size, shared.tail):
                    log.write(at, log.record(txn.id(), at, payload))
                    written = at
                    if self._durable:
                        assert shared.flusher is not None
                        ticket = shared.flusher.request()  # flushes while the batch is applied
                results = self._apply(txn, requests, new_ops)
                if written >= 0:
                    txn.put(b"log", _U64.pack(at + size), db=self._meta)
                txn.commit()
            except BaseException:
                txn.abort()
                raise
        except BaseException as exc:
            if written >= 0:
                try:
                    log.erase(written)  # never applied again by a recovery
                except OSError as erase_exc:
                    shared.failed = erase_exc
            if isinstance(exc, (lmdb.Error, OSError)):
                raise _wrap(exc, self.location, "writing") from exc
            raise
        if new_ops:  # committed: the ids are now the store's
            shared.op_ids.update(new_ops)
            shared.op_names.update((i, n) for n, i in new_ops.items())
        if written < 0:  # too large for the ring: durable through a checkpoint instead
            try:
                _env._checkpoint(shared, self.location, locked=True)
            except (lmdb.Error, OSError) as exc:
                shared.failed = exc
                raise _wrap(exc, self.location, "writing") from exc
        else:
            # A big batch frees many pages (its request-id rows land all over their B-tree): it
            # counts as one commit per four entries towards the next checkpoint.
            shared.commits += 1 + sum(len(req.entries) for req in requests) // 4
            shared.last_write = time.monotonic()
            if shared.commits >= _env._CHECKPOINT_COMMITS or (at + size - shared.tail) * 2 > log.ring \
                    or self._env.info()["last_pgno"] - shared.pgno >= _env._CHECKPOINT_GROWTH:
                shared.ckpt_wake.set()
        return results, ticket

    def _apply(self, txn: Any, requests: Sequence[WriteRequest], new_ops: dict[str, int]) -> list[list[int]]:
        """Every change of one batch, inside ``txn``: entries, indexes, tree, counters."""
        stats, meta = self._stats, self._meta
        put = txn.put
        results: list[list[int]] = []
        seq, first_seq, epoch, frontier = self._read_tree(txn)
        if any(req.entries for req in requests):
            seq = self._append(txn, requests, seq, first_seq, frontier, new_ops)
            put(b"seq", _U64.pack(seq), db=meta)
            put(b"tree", _TREE_HDR.pack(first_seq, epoch) + b"".join(frontier), db=meta)
        counters: dict[bytes, int] = {}
        for req in requests:
            values = []
            for name in req.increments:
                key = COUNTER_PREFIX + name
                current = counters.get(key)
                if current is None:
                    current = self._counter(txn.get(key, db=stats), name)
                if current >= _MAX_U64:
                    raise _Refused(
                        f"counter {name.decode('utf-8', 'replace')!r} at {self.location} "
                        f"would overflow 2**64-1", self.location)
                current += 1
                counters[key] = current
                values.append(current)
            results.append(values)
        for key, count in counters.items():
            put(key, _U64.pack(count), db=stats)
        return results

    def _replay(self, slot: Slot) -> int:
        """Apply the logged commits after ``slot`` again, in order (recovery); their count."""
        shared = self._shared
        count = 0
        for txnid, _at, payload, after in shared.log.records(slot):
            try:
                requests = [WriteRequest([(_canonical_log(c), c) for c in entries], tuple(increments))
                            for entries, increments in decode_payload(payload)]
            except ValueError as exc:
                raise CorruptStorageError(f"storage at {self.location}: the {LOG} record of transaction "
                                          f"{txnid} is malformed ({exc})", self.location) from None
            new_ops: dict[str, int] = {}
            with self._env.begin(write=True) as txn:
                if txn.id() != txnid:
                    raise CorruptStorageError(
                        f"storage at {self.location}: {LOG} holds transaction {txnid} where the "
                        f"store is at transaction {txn.id() - 1}", self.location)
                try:
                    self._apply(txn, requests, new_ops)
                except _Refused:
                    txn.abort()  # refused when it was first written too: it never committed
                    break
                txn.put(b"log", _U64.pack(after), db=self._meta)
            shared.op_ids.update(new_ops)
            shared.op_names.update((i, n) for n, i in new_ops.items())
            count += 1
        return count

    def _free_now(self) -> None:
        """One more commit that changes nothing, so that the checkpoint after it pins a snapshot
        newer than the commit before: the pages that commit freed (a clear, an archived prefix)
        are reusable at once rather than after the next checkpoint."""
        with self._env.begin(write=True) as txn:
            meta = self._meta
            txn.put(b"log", txn.get(b"log", db=meta) or _U64.pack(0), db=meta)

    def _unlogged_commit(self, body: Callable[[Any], None], doing: str) -> None:
        """A rare change outside the commit log (clearing, a checkpoint note): committed under
        the writer lock and made durable by a checkpoint before the lock is released, so the
        log never holds a commit that follows one it does not hold."""
        with _writer_lock(self._shared):
            try:
                shared = self._before_commit()
                with self._env.begin(write=True) as txn:
                    self._check()
                    body(txn)
                self._free_now()
                _env._checkpoint(shared, self.location, locked=True)
            except (lmdb.Error, OSError) as exc:
                raise _wrap(exc, self.location, doing) from exc

    def _append(
        self,
        txn: Any,
        requests: Sequence[WriteRequest],
        seq: int,
        first_seq: int,
        frontier: list[bytes],
        new_ops: dict[str, int],
    ) -> int:
        """Put every entry of the batch with its index rows and tree nodes; return the next seq."""
        put = txn.put
        entries, index, tree = self._entries, self._index, self._tree
        size = seq - first_seq
        op_ids = self._shared.op_ids

        def on_node(level: int, index: int, node: bytes) -> None:
            put(_NODE_KEY.pack(level, index), node, db=tree)

        for req in requests:
            for log, canonical in req.entries:
                leaf = sha256(b"\x00" + canonical).digest()
                op = log.op_name
                op_id = op_ids.get(op)
                if op_id is None:
                    op_id = new_ops.get(op)
                    if op_id is None:
                        op_id = self._new_op(txn, op, new_ops)
                key = _SEQ.pack(seq)
                if not put(key, encode_value(log, op_id), overwrite=False, append=True, db=entries):
                    raise CorruptStorageError(
                        f"storage at {self.location}: sequence {seq} is already used; the meta "
                        "sequence is behind the entries", self.location)
                ts_seq = _TS_SEQ.pack(log.timestamp, seq)
                status = STATUS_CODE[log.status]
                rid_key = b"r" + rid_hash(log.request_id.encode("utf-8")) + _STATUS_BYTE[status]
                # Appends keep LMDB's pages full; an entry with an older timestamp goes in place.
                for ikey in (_TIME_KEY, _STATUS_KEY[status], _OP_KEY.pack(b"o", op_id, status), rid_key):
                    if not put(ikey, ts_seq, append=True, db=index):
                        put(ikey, ts_seq, db=index)
                size = append_leaf(frontier, size, leaf, on_node)
                seq += 1
        return seq

    def _new_op(self, txn: Any, name: str, new_ops: dict[str, int]) -> int:
        """The op's id, from the table (another process may have added it) or newly allocated."""
        raw_name = name.encode("utf-8")
        stored = txn.get(b"n" + raw_name, db=self._ops)
        if stored is not None:
            op_id = int(_U64.unpack(stored.ljust(8, b"\0"))[0]) if len(stored) == 4 else -1
            if op_id < 0:
                raise CorruptStorageError(f"storage at {self.location}: malformed op table entry "
                                          f"for {name!r}", self.location)
            self._shared.op_ids[name] = op_id
            self._shared.op_names[op_id] = name
            return op_id
        raw_next = txn.get(b"next_op", db=self._meta)
        if raw_next is None or len(raw_next) != 8:
            raise CorruptStorageError(f"storage at {self.location}: malformed next_op record", self.location)
        op_id = int(_U64.unpack(raw_next)[0])
        if op_id >= 2**32:
            raise _Refused(f"storage at {self.location} holds 2**32 op names; no more fit",
                               self.location)
        if txn.get(b"i" + op_id.to_bytes(4, "big"), db=self._ops) is not None:
            # ids are handed out in order: one already taken means the record went back
            raise CorruptStorageError(f"storage at {self.location}: the next_op record names op id "
                                      f"{op_id}, which is taken", self.location)
        txn.put(b"n" + raw_name, op_id.to_bytes(4, "little"), db=self._ops)
        txn.put(b"i" + op_id.to_bytes(4, "big"), raw_name, db=self._ops)
        txn.put(b"next_op", _U64.pack(op_id + 1), db=self._meta)
        new_ops[name] = op_id
        return op_id

    def clear(self, trace: Callable[[int, int, int], TransactionLog] | None = None) -> None:
        if self._closed or self._generation != _env._generation:
            self._check()
        new_ops: dict[str, int] = {}

        def body(txn: Any) -> None:
            seq, _first, epoch, _frontier = self._read_tree(txn)
            removed = int(txn.stat(self._entries)["entries"])
            counters = int(txn.stat(self._stats)["entries"])
            for db in (self._entries, self._index, self._stats, self._tree):
                txn.drop(db, delete=False)
            frontier: list[bytes] = []
            if trace is not None:
                log = trace(removed, counters, epoch + 1)
                request = WriteRequest([(log, encode_log(log))], ())
                txn.put(b"seq", _U64.pack(self._append(txn, [request], seq, seq, frontier, new_ops)),
                        db=self._meta)
            txn.put(b"tree", _TREE_HDR.pack(seq, epoch + 1) + b"".join(frontier), db=self._meta)

        self._unlogged_commit(body, "clearing")
        if new_ops:
            self._shared.op_ids.update(new_ops)
            self._shared.op_names.update((i, n) for n, i in new_ops.items())

    def add_checkpoint(self, epoch: int, size: int, origin: str, note: str) -> None:
        if self._closed or self._generation != _env._generation:
            self._check()

        def body(txn: Any) -> None:
            seq, first_seq, current, _frontier = self._read_tree(txn)
            check_checkpoint(epoch, size, origin, current, seq - first_seq, self._read_checkpoints(txn))
            txn.put(_SEQ.pack(epoch) + _SEQ.pack(size) + origin.encode("utf-8"), note.encode("utf-8"),
                    db=self._checkpoints)

        self._unlogged_commit(body, "storing a checkpoint")

    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        if self._closed or self._generation != _env._generation:
            self._check()
        removed: list[int] = []
        self._unlogged_commit(lambda txn: removed.append(self._drop_prefix_body(txn, epoch, upto_seq)),
                              "removing archived entries")
        return removed[0]

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

def _replay(shared: _SharedEnv, path: str, slot: Slot, restored: bool) -> None:
    """Recovery, with the writer lock held and no other process: apply the logged commits that
    follow the checkpoint again, then take a new checkpoint. The checkpoint's snapshot stays
    pinned meanwhile, so a power cut during recovery finds it intact again."""
    shared.pin = shared.env.begin()
    shared.pin_txnid = int(shared.pin.id())
    if shared.pin_txnid != slot.txnid:
        raise CorruptStorageError(f"storage at {path}: data.mdb is at transaction {shared.pin_txnid}, "
                                  f"its {LOG} checkpoint at {slot.txnid}", path)
    storage = LmdbStorage.__new__(LmdbStorage)
    storage.location = path
    storage._closed = False
    storage._durable = True
    storage._generation = _env._generation
    storage._bind(shared)
    if storage._replay(slot) or restored:
        _env._checkpoint(shared, path, locked=True)
