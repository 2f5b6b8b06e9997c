"""LMDB follows the commit log: records applied in batches, many per LMDB transaction.

One application is one LMDB write transaction, committed with LMDB's own sync (data pages, then
the meta page): it puts every entry with its four index rows, extends the Merkle tree (and stores
every completed subtree of height 8k), interns new op names, adds the counter increments, and
moves ``meta["log"]`` past the last record applied — so the log's space before it may be written
again, and a recovery starts from there. Which thread or process applies does not matter: it
happens under the store's writer lock, from LMDB's own pointer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, StorageError
from ..._model import TransactionLog
from ...tlog._merkle import append_leaf
from .._codec import STATUS_CODE, encode_value, rid_hash
from ._catchup import catch_up
from ._commitlog import BARRIER, LOG
from ._layout import (
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
    _wrap,
)
from ._state import LogPointer, Shared, read_log_pointer
from ._tail import TailRecord

__all__ = ["APPLY_ENTRIES", "APPLY_SECONDS", "applier", "apply_records", "apply_tail", "new_op",
           "put_entries"]

#: the background applier runs when this many entries wait, or the oldest waited this long
APPLY_ENTRIES = 2048
APPLY_SECONDS = 0.25
#: at most this many entries per LMDB transaction (a bigger backlog takes several)
_MAX_ENTRIES_PER_TXN = 65536
# looks in a row, each after catching up, at an LMDB pointer past a tail that did not move, before
# the pointer is called damage: a record another process applied is always in the log first, so
# the second look finds it; the third allows for a head read while it was being written
_MAX_STALLS = 3


def apply_records(shared: Shared, txn: Any, records: Sequence[TailRecord],
                  pointer: LogPointer) -> tuple[LogPointer, dict[str, int]]:
    """Apply ``records`` (which must continue ``pointer``) inside the write transaction ``txn``;
    return the pointer past them (also written to ``meta["log"]``) and the op names it interned
    (the caller adds them to the caches once the transaction committed)."""
    path = shared.path
    dbs = shared.dbs
    stats, meta = dbs[b"stats"], shared.meta
    put = txn.put
    seq, first_seq, epoch, frontier = shared.read_tree(txn)
    size = seq - first_seq
    new_ops: dict[str, int] = {}
    increments: dict[bytes, int] = {}
    position, link = pointer.position, pointer.link
    entries: list[tuple[TransactionLog, bytes]] = []
    leaves: list[bytes] = []
    next_seq = seq
    for record in records:
        if record.position != position and record.position != position + (-position % shared.log.ring):
            raise CorruptStorageError(f"storage at {path}: the commit log's record at {record.position} "
                                      f"does not continue position {position}", path)
        if record.kind == BARRIER:
            raise CorruptStorageError(
                f"storage at {path}: the commit log holds, at position {record.position}, a change made "
                "outside the log (a clear, an archive or a checkpoint) that data.mdb does not have: "
                "data.mdb is older than its commit log. Restore the store with krepis restore", path)
        if record.first_seq != next_seq:
            raise CorruptStorageError(f"storage at {path}: the commit log's record at {record.position} "
                                      f"begins at seq {record.first_seq}; the store is at seq {next_seq}",
                                      path)
        entries += record.entries  # every record's rows go in together: a few calls per batch
        leaves += record.leaves()
        next_seq += len(record.entries)
        for name in record.increments:
            increments[name] = increments.get(name, 0) + 1
        position, link = record.end, record.crc
    seq, size = put_entries(shared, txn, entries, leaves, seq, size, frontier, new_ops)
    for name, add in increments.items():
        key = COUNTER_PREFIX + name
        raw = txn.get(key, db=stats)
        if raw is not None and len(raw) != 8:
            raise CorruptStorageError(f"storage at {path}: counter {name.decode('utf-8', 'replace')!r} "
                                      f"holds {len(raw)} bytes, not 8", path)
        value = (0 if raw is None else _U64.unpack(raw)[0]) + add
        if value > _MAX_U64:
            raise CorruptStorageError(f"storage at {path}: the commit log takes counter "
                                      f"{name.decode('utf-8', 'replace')!r} past 2**64-1", path)
        put(key, _U64.pack(value), db=stats)
    put(b"seq", _U64.pack(seq), db=meta)
    put(b"tree", _TREE_HDR.pack(first_seq, epoch) + b"".join(frontier), db=meta)
    after = LogPointer(pointer.log_id, position, link)
    put(b"log", after.pack(), db=meta)
    return after, new_ops


def put_entries(shared: Shared, txn: Any, entries: Sequence[tuple[TransactionLog, bytes]],
                leaves: Sequence[bytes], seq: int, size: int, frontier: list[bytes],
                new_ops: dict[str, int]) -> tuple[int, int]:
    """Put ``entries`` (from ``seq`` on) with their index rows, and extend the tree of ``size``
    leaves (``frontier``, changed in place) with their ``leaves``; returns the next seq and size.

    The rows go in a few calls, not one per row: the entries appended in one call (their keys
    only grow), the time index's rows appended in one (appends keep LMDB's pages full), every
    other index row, sorted, in one more."""
    path = shared.path
    dbs = shared.dbs
    put = txn.put
    tree = dbs[b"tree"]
    op_ids = shared.op_ids
    first = seq

    def on_node(level: int, at: int, node: bytes) -> None:
        put(_NODE_KEY.pack(level, at), node, db=tree)

    values: list[tuple[bytes, bytes]] = []
    times: list[tuple[bytes, bytes]] = []
    rows: list[tuple[bytes, bytes]] = []
    seq_pack, ts_seq_pack, op_key_pack = _SEQ.pack, _TS_SEQ.pack, _OP_KEY.pack
    for (log, _canonical), leaf in zip(entries, leaves, strict=True):
        op = log.op_name
        op_id = op_ids.get(op)
        if op_id is None:
            op_id = new_ops.get(op)
            if op_id is None:
                op_id = new_op(shared, txn, op, new_ops)
        values.append((seq_pack(seq), encode_value(log, op_id)))
        ts_seq = ts_seq_pack(log.timestamp, seq)
        status = STATUS_CODE[log.status]
        times.append((_TIME_KEY, ts_seq))
        rows.append((_STATUS_KEY[status], ts_seq))
        rows.append((op_key_pack(b"o", op_id, status), ts_seq))
        rows.append((b"r" + rid_hash(log.request_id.encode("utf-8")) + _STATUS_BYTE[status], ts_seq))
        size = append_leaf(frontier, size, leaf, on_node)
        seq += 1
    if values:
        _consumed, added = txn.cursor(db=dbs[b"entries"]).putmulti(values, overwrite=False, append=True)
        if added != len(values):
            raise CorruptStorageError(f"storage at {path}: a sequence number from {first} on is already "
                                      "used; the meta sequence is behind the entries", path)
        index = txn.cursor(db=dbs[b"index"])
        times.sort()
        _consumed, added = index.putmulti(times, append=True)
        if added != len(times):  # an entry older than the newest: those go in place
            index.putmulti(times)
        rows.sort()
        index.putmulti(rows)
    return seq, size


def new_op(shared: Shared, txn: Any, name: str, new_ops: dict[str, int]) -> int:
    """The op's id, from the table (another process may have added it) or newly allocated."""
    path = shared.path
    ops, meta = shared.dbs[b"ops"], shared.meta
    raw_name = name.encode("utf-8")
    stored = txn.get(b"n" + raw_name, db=ops)
    if stored is not None:
        if len(stored) != 4:
            raise CorruptStorageError(f"storage at {path}: malformed op table entry for {name!r}", path)
        op_id = int.from_bytes(stored, "little")
        shared.op_ids[name] = op_id
        shared.op_names[op_id] = name
        return op_id
    raw_next = txn.get(b"next_op", db=meta)
    if raw_next is None or len(raw_next) != 8:
        raise CorruptStorageError(f"storage at {path}: malformed next_op record", path)
    op_id = int(_U64.unpack(raw_next)[0])
    if op_id >= 2**32:
        raise StorageError(f"storage at {path} holds 2**32 op names; no more fit", path)
    if txn.get(b"i" + op_id.to_bytes(4, "big"), db=ops) is not None:
        # ids are handed out in order: one already taken means the record went back
        raise CorruptStorageError(f"storage at {path}: the next_op record names op id {op_id}, which "
                                  "is taken", path)
    txn.put(b"n" + raw_name, op_id.to_bytes(4, "little"), db=ops)
    txn.put(b"i" + op_id.to_bytes(4, "big"), raw_name, db=ops)
    txn.put(b"next_op", _U64.pack(op_id + 1), db=meta)
    new_ops[name] = op_id
    return op_id


def apply_tail(shared: Shared, upto: int | None = None, *, locked: bool = False,
               doing: str = "applying the commit log") -> int:
    """Bring LMDB up to date with the log (up to ``upto``, default: everything this process
    knows of): the caller holds the writer lock (and, with ``locked``, ``mu`` too). Returns how
    many entries were applied."""
    path = shared.path
    env = shared.env
    applied = 0
    mu: contextlib.AbstractContextManager[Any] = contextlib.nullcontext() if locked else shared.mu
    stalled = 0  # looks in a row that found LMDB's pointer past the tail, the tail not moving
    seen_end = -1
    while True:
        with mu:
            catch_up(shared)
        try:
            txn = env.begin(write=True)
        except lmdb.Error as exc:
            raise _wrap(exc, path, doing) from exc
        try:
            pointer = read_log_pointer(txn, shared.meta, path)
            with mu:
                tail = shared.tail
                if pointer.position > tail.end:  # another process applied what this one never saw
                    txn.abort()
                    # its records are in the log (written there before LMDB applied them): catching
                    # up reads them. A tail that catching up cannot move means LMDB's pointer names
                    # records the log does not hold — never wait for them
                    stalled = stalled + 1 if tail.end == seen_end else 1
                    seen_end = tail.end
                    if stalled >= _MAX_STALLS:
                        raise CorruptStorageError(
                            f"storage at {path}: LMDB's commit-log pointer ({pointer.position}) is past "
                            f"the end of the records in {LOG} ({tail.end})", path)
                    continue
                pending = tail.since(pointer.position)
                if pending is None:
                    raise CorruptStorageError(f"storage at {path}: LMDB's commit-log pointer "
                                              f"({pointer.position}) is behind what this process "
                                              f"has seen applied ({tail.base})", path)
                records = []
                count = 0
                for record in pending:
                    if (upto is not None and record.position >= upto) or count >= _MAX_ENTRIES_PER_TXN:
                        break
                    records.append(record)
                    count += len(record.entries)
            if not records:
                txn.abort()
                with mu:
                    _settle(shared, pointer)
                return applied
            after, new_ops = apply_records(shared, txn, records, pointer)
            txn.commit()  # synced by LMDB: data pages, then the meta page
        except BaseException as exc:
            txn.abort()
            if isinstance(exc, (lmdb.Error, OSError)):
                raise _wrap(exc, path, doing) from exc
            raise
        if new_ops:  # committed: the ids are now the store's
            shared.op_ids.update(new_ops)
            shared.op_names.update((i, n) for n, i in new_ops.items())
        applied += sum(len(r.entries) for r in records)
        with mu:
            _settle(shared, after)


def _settle(shared: Shared, pointer: LogPointer) -> None:
    """LMDB holds everything before ``pointer`` durably: forget those records, free their space
    (the caller holds ``mu``)."""
    tail = shared.tail
    tail.drop_before(pointer.position)
    shared.floor = max(shared.floor, pointer.position)
    if not tail.records:
        shared.first_unapplied = 0.0


def applier(shared: Shared) -> None:
    """The background thread of a writing process: applies the tail when enough entries wait or
    the oldest waited long enough, and when woken."""
    while True:
        woke = shared.wake.wait(APPLY_SECONDS / 2)
        shared.wake.clear()
        if shared.closing:
            return
        tail = shared.tail
        if not tail.records:
            continue
        due = woke or tail.entries >= APPLY_ENTRIES or \
            (shared.first_unapplied and time.monotonic() - shared.first_unapplied >= APPLY_SECONDS)
        if not due:
            continue
        try:
            # what is there now, in as few LMDB transactions as it takes; records appended
            # meanwhile wait for the next round (chasing a steady writer would make one small
            # synced LMDB commit after another)
            upto = shared.tail.end
            with shared.writer_lock():
                apply_tail(shared, upto)
            shared.apply_error = None
        except CorruptStorageError as exc:  # writes refuse from now on, naming it
            shared.failed = exc
            return
        except BaseException as exc:  # (a full disk): tried again later; a writer that needs the
            shared.apply_error = exc  # room meanwhile gets the error itself

