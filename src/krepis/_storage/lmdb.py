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

import contextlib
import errno
import fcntl
import heapq
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from hashlib import sha256
from typing import Any

import lmdb

from .._errors import (
    ClosedError,
    CorruptStorageError,
    JournalError,
    NeedsMigrationError,
    StorageError,
)
from .._model import LogStatus, TransactionLog, decode_log, encode_log
from ..tlog._merkle import append_leaf, root_from_frontier
from . import (
    LogAudit,
    Query,
    Storage,
    TreeHead,
    VerifyReport,
    WriteRequest,
    check_checkpoint,
    check_drop_prefix,
)
from ._codec import STATUS_CODE, decode_value, encode_value, rid_hash
from ._commitlog import LOG, CommitLog, Flusher, Slot, decode_payload, encode_payload
from ._files import StoreFiles, meta_txnid, open_directory

__all__ = ["FORMAT_VERSION", "LmdbStorage"]

FORMAT_VERSION = 3
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
COUNTER_PREFIX = b"op_count:"
_U64 = struct.Struct("<Q")
_SEQ = struct.Struct(">Q")
_TS_SEQ = struct.Struct(">QQ")
_OP_KEY = struct.Struct(">cIB")
_TREE_HDR = struct.Struct("<QQ")  # first_seq, epoch; then the frontier hashes
_NODE_KEY = struct.Struct(">BQ")
_MAX_U64 = 2**64 - 1
_MAP_SIZE = 1 << 40 if struct.calcsize("P") == 8 else 1 << 30
_MAX_READERS = 1024
_MAX_DBS = 16
_DATA = "data.mdb"
_LOCK = "lock.mdb"
# index keys: "t" (every entry), "s" + status, "o" + BE4(op id) + status, "r" + H8(rid) + status
_TIME_KEY = b"t"
_ALL_STATUSES = (LogStatus.Started, LogStatus.Completed, LogStatus.Failed)
_STATUS_BYTE = {code: bytes((code,)) for code in (1, 2, 3)}
_STATUS_KEY = {code: b"s" + bytes((code,)) for code in (1, 2, 3)}
# (name, dupsort) of every named database of format 2
_DBS = (
    (b"entries", False), (b"index", True), (b"ops", False), (b"stats", False), (b"tree", False),
    (b"checkpoints", False), (b"meta", False),
)
_DB_NAMES = {name for name, _ in _DBS}


class _Refused(StorageError):
    """A write the store refuses whatever the moment (a counter at 2**64-1, the op table full):
    applying its logged batch again in recovery refuses it again, so it never committed."""


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
        self._bind(_acquire(path, create))
        self._generation = _generation

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
        if self._generation != _generation:
            raise _forked_error(self.location)
        self._shared.files.check_reader()  # lock.mdb not deleted meanwhile

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._generation == _generation:
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
            _checkpoint(self._shared, self.location, locked=False)
        except (lmdb.Error, OSError) as exc:
            raise _wrap(exc, self.location, "checkpointing") from exc

    # -- writes ----------------------------------------------------------------------------
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        if self._closed or self._generation != _generation:
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
        if shared.pin is None or shared.commits >= _CHECKPOINT_BACKLOG or \
                self._env.info()["last_pgno"] - shared.pgno >= 4 * _CHECKPOINT_GROWTH:
            _checkpoint(shared, self.location, locked=True)
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
                        _checkpoint(shared, self.location, locked=True)
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
                _checkpoint(shared, self.location, locked=True)
            except (lmdb.Error, OSError) as exc:
                shared.failed = exc
                raise _wrap(exc, self.location, "writing") from exc
        else:
            # A big batch frees many pages (its request-id rows land all over their B-tree): it
            # counts as one commit per four entries towards the next checkpoint.
            shared.commits += 1 + sum(len(req.entries) for req in requests) // 4
            shared.last_write = time.monotonic()
            if shared.commits >= _CHECKPOINT_COMMITS or (at + size - shared.tail) * 2 > log.ring \
                    or self._env.info()["last_pgno"] - shared.pgno >= _CHECKPOINT_GROWTH:
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
                _checkpoint(shared, self.location, locked=True)
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

    def _read_tree(self, txn: Any) -> tuple[int, int, int, list[bytes]]:
        """(next seq, first seq of the log, epoch, frontier), checked against each other."""
        raw_seq = txn.get(b"seq", db=self._meta)
        raw_tree = txn.get(b"tree", db=self._meta)
        if raw_seq is None or len(raw_seq) != 8 or raw_tree is None or len(raw_tree) < 16 \
                or (len(raw_tree) - 16) % 32:
            raise CorruptStorageError(f"storage at {self.location}: malformed sequence or tree record",
                                      self.location)
        seq = _U64.unpack(raw_seq)[0]
        first_seq, epoch = _TREE_HDR.unpack_from(raw_tree)
        size = seq - first_seq
        frontier = [raw_tree[i:i + 32] for i in range(16, len(raw_tree), 32)]
        if size < 0 or len(frontier) != size.bit_count():
            raise CorruptStorageError(
                f"storage at {self.location}: the Merkle tree record ({len(frontier)} subtrees) does "
                f"not match the sequence ({size} entries since seq {first_seq})", self.location)
        return seq, first_seq, epoch, frontier

    def _counter(self, raw: bytes | None, name: bytes) -> int:
        if raw is None:
            return 0
        if len(raw) != 8:
            raise CorruptStorageError(
                f"storage at {self.location}: counter {name.decode('utf-8', 'replace')!r} holds "
                f"{len(raw)} bytes, not 8", self.location)
        return int(_U64.unpack(raw)[0])

    def clear(self, trace: Callable[[int, int, int], TransactionLog] | None = None) -> None:
        if self._closed or self._generation != _generation:
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

    # -- reads -----------------------------------------------------------------------------
    def get_count(self, name: bytes) -> int:
        self._check()
        try:
            with self._env.begin(db=self._stats) as txn:
                raw = txn.get(COUNTER_PREFIX + name)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading a counter") from exc
        return self._counter(raw, name)

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
                        name = key[len(COUNTER_PREFIX):]
                        out[name.decode("utf-8")] = self._counter(raw, name)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading counters") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed counter name: {exc}",
                                      self.location) from exc
        return out

    def entry_count(self) -> int:
        self._check()
        try:
            with self._env.begin() as txn:
                return int(txn.stat(self._entries)["entries"])
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "counting entries") from exc

    def next_seq(self) -> int:
        self._check()
        try:
            with self._env.begin() as txn:
                return self._read_tree(txn)[0]
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the sequence") from exc

    def tree_head(self) -> TreeHead:
        self._check()
        try:
            with self._env.begin() as txn:
                seq, first_seq, epoch, frontier = self._read_tree(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the tree") from exc
        return TreeHead(seq - first_seq, root_from_frontier(frontier), first_seq, epoch)

    def op_names(self) -> list[str]:
        self._check()
        try:
            with self._env.begin(db=self._ops) as txn:
                cur = txn.cursor()
                names = []
                if cur.set_range(b"n"):
                    for key in cur.iternext(keys=True, values=False):
                        if not key.startswith(b"n"):
                            break
                        names.append(key[1:].decode("utf-8"))
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading op names") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed op table: {exc}",
                                      self.location) from exc
        return sorted(names)

    def get_entry(self, seq: int) -> TransactionLog | None:
        self._check()
        if not 0 <= seq <= _MAX_U64:
            return None
        try:
            with self._env.begin() as txn:
                raw = txn.get(_SEQ.pack(seq), db=self._entries)
                return None if raw is None else self._decode(txn, seq, raw)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc

    def _decode(self, txn: Any, seq: int, raw: bytes) -> TransactionLog:
        names = self._shared.op_names
        try:
            try:
                return decode_value(raw, seq, names)
            except KeyError:
                self._load_op_names(txn)
                return decode_value(raw, seq, names)
        except (ValueError, KeyError, struct.error) as exc:
            raise CorruptStorageError(
                f"storage at {self.location}: entry {seq} is not a valid TransactionLog "
                f"({type(exc).__name__}: {exc})", self.location) from None

    def _load_op_names(self, txn: Any) -> None:
        cur = txn.cursor(db=self._ops)
        if not cur.set_range(b"i"):
            return
        for key, name in cur:
            if not key.startswith(b"i"):
                break
            if len(key) == 5:
                op_id = int.from_bytes(key[1:], "big")
                text = name.decode("utf-8", "strict")
                self._shared.op_names[op_id] = text

    def add_checkpoint(self, epoch: int, size: int, origin: str, note: str) -> None:
        if self._closed or self._generation != _generation:
            self._check()

        def body(txn: Any) -> None:
            seq, first_seq, current, _frontier = self._read_tree(txn)
            check_checkpoint(epoch, size, origin, current, seq - first_seq, self._read_checkpoints(txn))
            txn.put(_SEQ.pack(epoch) + _SEQ.pack(size) + origin.encode("utf-8"), note.encode("utf-8"),
                    db=self._checkpoints)

        self._unlogged_commit(body, "storing a checkpoint")

    def checkpoints(self) -> list[tuple[int, int, str, str]]:
        self._check()
        try:
            with self._env.begin() as txn:
                return self._read_checkpoints(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading checkpoints") from exc

    def _read_checkpoints(self, txn: Any) -> list[tuple[int, int, str, str]]:
        out = []
        try:
            for key, note in txn.cursor(db=self._checkpoints):
                out.append((_SEQ.unpack(key[:8])[0], _SEQ.unpack(key[8:16])[0], key[16:].decode("utf-8"),
                            bytes(note).decode("utf-8")))
        except (struct.error, UnicodeDecodeError) as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed checkpoint record ({exc})",
                                      self.location) from None
        return out

    def tree_node(self, level: int, index: int) -> bytes | None:
        self._check()
        try:
            with self._env.begin() as txn:
                raw = txn.get(_NODE_KEY.pack(level, index), db=self._tree)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the tree") from exc
        return None if raw is None else bytes(raw)

    def leaf_hashes(self, first_seq: int, start: int, count: int) -> list[bytes]:
        self._check()
        out: list[bytes] = []
        if count <= 0:
            return out
        try:
            with self._env.begin() as txn:
                cur = txn.cursor(db=self._entries)
                seq = first_seq + start
                if not cur.set_key(_SEQ.pack(seq)):
                    raise CorruptStorageError(f"storage at {self.location}: entry {seq} is missing",
                                              self.location)
                for key, raw in cur:
                    at = _SEQ.unpack(key)[0]
                    if at != seq:
                        raise CorruptStorageError(f"storage at {self.location}: entry {seq} is missing",
                                                  self.location)
                    out.append(sha256(b"\x00" + encode_log(self._decode(txn, at, raw))).digest())
                    seq += 1
                    if len(out) == count:
                        break
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        if len(out) != count:
            raise CorruptStorageError(f"storage at {self.location}: entry {first_seq + start + len(out)} "
                                      "is missing", self.location)
        return out

    def verify(self) -> VerifyReport:
        self._check()
        try:
            with self._env.begin() as txn:
                return self._verify(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "verifying") from exc

    def _verify(self, txn: Any) -> VerifyReport:
        where = f"storage at {self.location}"
        seq, first_seq, epoch, frontier = self._read_tree(txn)
        tree, index = self._tree, self._index
        live = self._live_first(txn, first_seq, epoch)
        audit = LogAudit(where, self.location, first_seq,
                         lambda level, i: txn.get(_NODE_KEY.pack(level, i), db=tree), live)
        idx = txn.cursor(db=index)
        for key, raw in txn.cursor(db=self._entries):
            at = _SEQ.unpack(key)[0]
            log = self._decode(txn, at, raw)
            audit.add(at, encode_log(log))
            ts_seq = _TS_SEQ.pack(log.timestamp, at)
            status = STATUS_CODE[log.status]
            op_id = self._shared.op_ids.get(log.op_name)
            if op_id is None:
                raw_id = txn.get(b"n" + log.op_name.encode("utf-8"), db=self._ops)
                op_id = int.from_bytes(raw_id or b"\xff\xff\xff\xff\xff", "little")
            rid_key = b"r" + rid_hash(log.request_id.encode("utf-8")) + _STATUS_BYTE[status]
            for name, ikey in (("time", _TIME_KEY), ("status", _STATUS_KEY[status]),
                               ("op", _OP_KEY.pack(b"o", op_id & 0xFFFFFFFF, status)),
                               ("request id", rid_key)):
                if not idx.set_key_dup(ikey, ts_seq):
                    raise CorruptStorageError(f"{where}: entry {at} has no row in the {name} index",
                                              self.location)
        report = audit.finish(seq, frontier, int(txn.stat(tree)["entries"]))
        n = seq - live
        rows = {b"t": 0, b"s": 0, b"o": 0, b"r": 0}
        keys = idx.iternext_nodup(keys=True, values=False) if idx.first() else iter(())
        for key in keys:
            kind = key[:1]
            if kind not in rows:
                raise CorruptStorageError(f"{where}: unknown index key {key[:20]!r}", self.location)
            rows[kind] += idx.count()  # (positioned on the key's first duplicate)
        names = {b"t": "time", b"s": "status", b"o": "op", b"r": "request id"}
        for kind, count in rows.items():
            if count != n:
                raise CorruptStorageError(f"{where}: the {names[kind]} index holds {count} rows for "
                                          f"{n} entries", self.location)
        return report

    def scan(self, query: Query, *, after: TransactionLog | None, limit: int) -> list[TransactionLog]:
        self._check()
        if limit <= 0:
            return []
        try:
            with self._env.begin() as txn:
                if query.order == "append":
                    return self._scan_append(txn, query, after, limit)
                return self._scan_time(txn, query, after, limit)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed op table: {exc}",
                                      self.location) from exc

    def _scan_append(
        self, txn: Any, query: Query, after: TransactionLog | None, limit: int
    ) -> list[TransactionLog]:
        cur = txn.cursor(db=self._entries)
        out: list[TransactionLog] = []
        if query.newest_first:
            if after is None or after.seq is None or after.seq > _MAX_U64:
                ok = cur.last()
            elif cur.set_range(_SEQ.pack(after.seq)):
                ok = cur.prev()
            else:
                ok = cur.last()
            items = cur.iterprev() if ok else iter(())
        else:
            start = 0 if after is None or after.seq is None else after.seq + 1
            ok = start <= _MAX_U64 and cur.set_range(_SEQ.pack(start))
            items = cur.iternext() if ok else iter(())
        for key, raw in items:
            log = self._decode(txn, _SEQ.unpack(key)[0], raw)
            if query.matches(log):
                out.append(log)
                if len(out) >= limit:
                    break
        return out

    def _scan_time(
        self, txn: Any, query: Query, after: TransactionLog | None, limit: int
    ) -> list[TransactionLog]:
        desc = query.newest_first
        lo = None if query.since is None else _TS_SEQ.pack(query.since, 0)
        hi = None if query.until is None else _TS_SEQ.pack(query.until, 0)
        if after is not None and after.seq is not None:
            cursor_pos = _TS_SEQ.pack(after.timestamp, after.seq)
            if desc:  # resume strictly below the cursor
                hi = cursor_pos if hi is None else min(hi, cursor_pos)
            else:
                lo = _next16(cursor_pos) if lo is None else max(lo, _next16(cursor_pos))
        statuses = query.statuses if query.statuses is not None else _ALL_STATUSES
        streams: list[Iterator[bytes]] = []
        check_rid = query.request_id is not None
        check_op = False
        if query.request_id is not None:
            prefix = b"r" + rid_hash(query.request_id.encode("utf-8"))
            for status in statuses:
                streams.append(_dup_stream(txn.cursor(db=self._index),
                                           prefix + _STATUS_BYTE[STATUS_CODE[status]], lo, hi, desc))
            check_op = query.op_names is not None
        elif query.op_names is not None:
            op_ids = self._shared.op_ids
            for name in query.op_names:
                op_id = op_ids.get(name)
                if op_id is None:
                    raw = txn.get(b"n" + name.encode("utf-8"), db=self._ops)
                    if raw is None or len(raw) != 4:
                        continue  # never journaled: nothing matches
                    op_id = int.from_bytes(raw, "little")
                for status in statuses:
                    streams.append(_dup_stream(txn.cursor(db=self._index),
                                               _OP_KEY.pack(b"o", op_id, STATUS_CODE[status]), lo, hi, desc))
        elif query.statuses is not None:
            for status in statuses:
                streams.append(_dup_stream(txn.cursor(db=self._index),
                                           _STATUS_KEY[STATUS_CODE[status]], lo, hi, desc))
        else:
            streams.append(_dup_stream(txn.cursor(db=self._index), _TIME_KEY, lo, hi, desc))
        merged: Iterator[bytes]
        if len(streams) == 1:
            merged = streams[0]
        else:
            merged = heapq.merge(*streams, reverse=desc)
        out: list[TransactionLog] = []
        get, entries = txn.get, self._entries
        for ts_seq in merged:
            key = ts_seq[8:]
            raw = get(key, db=entries)
            seq = _SEQ.unpack(key)[0]
            if raw is None:
                raise CorruptStorageError(
                    f"storage at {self.location}: an index names entry {seq}, which is missing",
                    self.location)
            log = self._decode(txn, seq, raw)
            if (check_rid and log.request_id != query.request_id) or \
                    (check_op and log.op_name not in query.op_names):  # type: ignore[operator]
                continue
            out.append(log)
            if len(out) >= limit:
                break
        return out

    # -- archive: the live store's prefix moves out ------------------------------------------
    def live_first_seq(self) -> int:
        self._check()
        try:
            with self._env.begin() as txn:
                _seq, first_seq, epoch, _frontier = self._read_tree(txn)
                return self._live_first(txn, first_seq, epoch)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the tree") from exc

    def _live_first(self, txn: Any, first_seq: int, epoch: int) -> int:
        """``meta["live"]`` (``LE8(epoch) ‖ LE8(seq)``) when it is of the current log, else the
        log's first seq: a clear starts a new log whose prefix was never archived."""
        raw = txn.get(b"live", db=self._meta)
        if raw is None:
            return first_seq
        if len(raw) != 16:
            raise CorruptStorageError(f"storage at {self.location}: malformed live record", self.location)
        live_epoch, live = _TREE_HDR.unpack(raw)
        return int(live) if live_epoch == epoch and live > first_seq else first_seq

    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        if self._closed or self._generation != _generation:
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


_DROP_HDR = struct.Struct("<BQI")  # an entry's flags, timestamp and op id (see ``_codec``)


def _position(raw: bytes | None, path: str) -> int:
    """The commit log's next ring position, as the store records it (0 before the first)."""
    if raw is None:
        return 0
    if len(raw) != 8:
        raise CorruptStorageError(f"storage at {path}: malformed commit-log position record", path)
    return int(_U64.unpack(raw)[0])


def _canonical_log(raw: bytes) -> TransactionLog:
    """An entry from its canonical bytes, which it must reproduce exactly."""
    try:
        log = decode_log(raw)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"an entry does not decode: {exc}") from None
    if encode_log(log) != raw:
        raise ValueError("an entry is not in canonical form")
    return log


# -- checkpoints and pins -------------------------------------------------------------------------

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


def _next16(key: bytes) -> bytes:
    """The smallest 16-byte key greater than ``key``."""
    value = int.from_bytes(key, "big") + 1
    return value.to_bytes(16, "big") if value < 1 << 128 else b"\xff" * 16


def _dup_stream(
    cur: Any, key: bytes, lo: bytes | None, hi: bytes | None, desc: bool
) -> Iterator[bytes]:
    """The (timestamp, seq) values of one index key within ``[lo, hi)``, in order."""
    if desc:
        if hi is not None and cur.set_range_dup(key, hi):
            if not cur.prev_dup():
                return
        else:
            if not cur.set_key(key):
                return
            cur.last_dup()
        for value in cur.iterprev_dup(keys=False):
            if lo is not None and value < lo:
                return
            yield value
    else:
        if lo is not None:
            if not cur.set_range_dup(key, lo):
                return
        elif not cur.set_key(key):
            return
        for value in cur.iternext_dup(keys=False):
            if hi is not None and value >= hi:
                return
            yield value


def open_in_this_process(path: str) -> bool:
    """Whether this process has the store at ``path`` open (or inherited it through fork)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    key = (st.st_dev, st.st_ino)
    return key in _registry or any(old.key == key for old in _inherited)


def _closed_error(path: str) -> JournalError:
    return ClosedError(f"the journal at {path} is closed")


def _forked_error(path: str) -> JournalError:
    return ClosedError(
        f"the journal at {path} was opened in a parent process; open a new one after fork()"
    )


def _acquire(path: str, create: bool) -> _SharedEnv:
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
                shared = _open_env(path, key, files)
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


def _open_env(path: str, key: Any, files: StoreFiles) -> _SharedEnv:
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
                env = lmdb.open(lmdb_path, map_size=_MAP_SIZE, max_dbs=_MAX_DBS, max_readers=_MAX_READERS,
                                sync=False, metasync=False, mode=0o600, create=True, subdir=True)
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
                    _replay(shared, path, slot, restored)
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
    storage._generation = _generation
    storage._bind(shared)
    if storage._replay(slot) or restored:
        _checkpoint(shared, path, locked=True)


def _relabel(exc: lmdb.Error, lmdb_path: str, path: str) -> lmdb.Error:
    """The same LMDB error, naming the store's path rather than /proc/self/fd/N."""
    if lmdb_path == path or lmdb_path not in str(exc):
        return exc
    return type(exc)(str(exc).replace(lmdb_path, path))


def _os_error(exc: OSError, path: str) -> StorageError:
    if exc.errno == errno.EROFS:
        return StorageError(f"storage at {path} is on a read-only file system", path)
    return StorageError(f"cannot open storage at {path}: {exc.strerror or exc}", path)


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
