"""Reading an LMDB store exactly: every read sees every write acknowledged before it began, in
any thread or process.

A read first catches up with the commit log (the records other processes appended), then takes
one LMDB snapshot — which has applied the log up to some position — and combines it with the
tail's records from that position on. Counters, counts, entries, queries in both orders, op
names, leaf hashes and the tree head come from the two together; a stored subtree hash that the
tail would complete, and a full verification, bring LMDB up to date first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from hashlib import sha256
from typing import Any

import lmdb

from ..._errors import CorruptStorageError
from ..._model import TransactionLog, encode_log
from ...tlog._merkle import append_leaf, root_from_frontier
from .._port import Query, TreeHead, VerifyReport
from ._apply import apply_tail
from ._catchup import catch_up
from ._layout import _MAX_U64, _NODE_KEY, _SEQ, COUNTER_PREFIX, _wrap
from ._reads import _Reads
from ._state import read_log_pointer
from ._tail import TailRecord

__all__ = ["_Views"]


class _Views(_Reads):
    """The port's reads over LMDB plus the commit log's tail."""

    def _snapshot(self, doing: str) -> tuple[Any, list[TailRecord]]:
        """A read transaction and the tail's records it has not applied (the caller aborts the
        transaction)."""
        shared = self._shared
        try:
            with shared.mu:
                catch_up(shared)
            while True:
                txn = self._env.begin()
                try:
                    pointer = read_log_pointer(txn, self._meta, self.location)
                    with shared.mu:
                        tail = shared.tail
                        records = [] if pointer.position > tail.end else tail.since(pointer.position)
                except BaseException:
                    txn.abort()
                    raise
                if records is not None:
                    return txn, records
                txn.abort()  # the tail moved on meanwhile (applied): a newer snapshot has it
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, doing) from exc

    def _apply_now(self, doing: str = "applying the commit log") -> None:
        """Bring LMDB up to date with the whole log this process knows of."""
        shared = self._shared
        try:
            with shared.writer_lock():
                apply_tail(shared, doing=doing)
            shared.apply_error = None
        except (lmdb.Error, OSError) as exc:
            raise _wrap(exc, self.location, doing) from exc

    # -- counters ----------------------------------------------------------------------------
    def _counter_now(self, name: bytes) -> int:
        """A counter's value after every record of the tail (the caller holds ``mu`` and has
        caught up)."""
        shared = self._shared
        tail = shared.tail
        value = tail.counters.get(name)
        if value is not None:
            return value
        while True:
            with self._env.begin() as txn:
                pointer = read_log_pointer(txn, self._meta, self.location)
                raw = txn.get(COUNTER_PREFIX + name, db=self._stats)
            if pointer.position <= tail.end:
                break
            catch_up(shared)  # another process applied records appended after the last look
        if pointer.position < tail.base:
            raise CorruptStorageError(f"storage at {self.location}: LMDB's commit-log pointer went back "
                                      f"({pointer.position} < {tail.base})", self.location)
        value = self._counter(raw, name) + tail.increments_since(pointer.position, name)
        tail.counters[name] = value
        return value

    def get_count(self, name: bytes) -> int:
        self._check()
        shared = self._shared
        try:
            with shared.mu:
                catch_up(shared)
                return self._counter_now(name)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading a counter") from exc

    def get_counts(self) -> dict[str, int]:
        self._check()
        txn, records = self._snapshot("reading counters")
        out: dict[str, int] = {}
        try:
            cur = txn.cursor(db=self._stats)
            if cur.set_range(COUNTER_PREFIX):
                for key, raw in cur:
                    if not key.startswith(COUNTER_PREFIX):
                        break
                    name = key[len(COUNTER_PREFIX):]
                    out[name.decode("utf-8")] = self._counter(raw, name)
            for record in records:
                for name in record.increments:
                    text = name.decode("utf-8")
                    out[text] = out.get(text, 0) + 1
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading counters") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed counter name: {exc}",
                                      self.location) from exc
        finally:
            txn.abort()
        return out

    # -- counts and the sequence --------------------------------------------------------------
    def entry_count(self) -> int:
        self._check()
        txn, records = self._snapshot("counting entries")
        try:
            return int(txn.stat(self._entries)["entries"]) + sum(len(r.entries) for r in records)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "counting entries") from exc
        finally:
            txn.abort()

    def next_seq(self) -> int:
        self._check()
        txn, records = self._snapshot("reading the sequence")
        try:
            return records[-1].next_seq if records else self._read_tree(txn)[0]
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the sequence") from exc
        finally:
            txn.abort()

    def live_first_seq(self) -> int:
        self._check()
        try:
            with self._env.begin() as txn:
                _seq, first_seq, epoch, _frontier = self._read_tree(txn)
                return self._live_first(txn, first_seq, epoch)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the tree") from exc

    def op_names(self) -> list[str]:
        self._check()
        txn, records = self._snapshot("reading op names")
        names: set[str] = set()
        try:
            cur = txn.cursor(db=self._ops)
            if cur.set_range(b"n"):
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(b"n"):
                        break
                    names.add(key[1:].decode("utf-8"))
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading op names") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed op table: {exc}",
                                      self.location) from exc
        finally:
            txn.abort()
        for record in records:
            names.update(log.op_name for log, _canonical in record.entries)
        return sorted(names)

    # -- entries ------------------------------------------------------------------------------
    def get_entry(self, seq: int) -> TransactionLog | None:
        self._check()
        if not 0 <= seq <= _MAX_U64:
            return None
        txn, records = self._snapshot("reading the journal")
        try:
            if records and seq >= records[0].first_seq:
                for record in records:
                    if record.first_seq <= seq < record.next_seq:
                        return record.logs()[seq - record.first_seq]
                return None
            raw = txn.get(_SEQ.pack(seq), db=self._entries)
            return None if raw is None else self._decode(txn, seq, raw)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        finally:
            txn.abort()

    def scan(self, query: Query, *, after: TransactionLog | None, limit: int) -> list[TransactionLog]:
        self._check()
        if limit <= 0:
            return []
        txn, records = self._snapshot("reading the journal")
        try:
            if query.order == "append":
                stored = self._scan_append(txn, query, after, limit)
            else:
                stored = self._scan_time(txn, query, after, limit)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        except UnicodeDecodeError as exc:
            raise CorruptStorageError(f"storage at {self.location}: malformed op table: {exc}",
                                      self.location) from exc
        finally:
            txn.abort()
        if not records:
            return stored
        pending = _tail_scan(records, query, after, limit)
        if not pending:
            return stored
        key = _order_key(query)
        merged = heapq.merge(stored, pending, key=key, reverse=query.newest_first)
        return [log for _, log in zip(range(limit), merged, strict=False)]

    # -- the tree -----------------------------------------------------------------------------
    def tree_head(self) -> TreeHead:
        self._check()
        txn, records = self._snapshot("reading the tree")
        try:
            seq, first_seq, epoch, frontier = self._read_tree(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the tree") from exc
        finally:
            txn.abort()
        size = seq - first_seq
        for record in records:
            for leaf in record.leaves():
                size = append_leaf(frontier, size, leaf)
        return TreeHead(size, root_from_frontier(frontier), first_seq, epoch)

    def tree_node(self, level: int, index: int) -> bytes | None:
        self._check()
        for attempt in (0, 1):
            txn, records = self._snapshot("reading the tree")
            try:
                raw = txn.get(_NODE_KEY.pack(level, index), db=self._tree)
            except lmdb.Error as exc:
                raise _wrap(exc, self.location, "reading the tree") from exc
            finally:
                txn.abort()
            if raw is not None or not records or attempt:
                return None if raw is None else bytes(raw)
            self._apply_now()  # the tail may complete it: LMDB stores it once applied
        return None  # pragma: no cover (the loop returns)

    def leaf_hashes(self, first_seq: int, start: int, count: int) -> list[bytes]:
        self._check()
        out: list[bytes] = []
        if count <= 0:
            return out
        txn, records = self._snapshot("reading the journal")
        seq = first_seq + start
        end = seq + count
        try:
            stored_end = records[0].first_seq if records else _U64_END
            if seq < stored_end:
                cur = txn.cursor(db=self._entries)
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
                    if seq >= end or seq >= stored_end:
                        break
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading the journal") from exc
        finally:
            txn.abort()
        for record in records:
            if seq >= end:
                break
            if record.first_seq <= seq < record.next_seq:
                leaves = record.leaves()[seq - record.first_seq:end - record.first_seq]
                out += leaves
                seq += len(leaves)
        if len(out) != count:
            raise CorruptStorageError(f"storage at {self.location}: entry {first_seq + start + len(out)} "
                                      "is missing", self.location)
        return out

    def checkpoints(self) -> list[tuple[int, int, str, str]]:
        self._check()
        try:
            with self._env.begin() as txn:
                return self._read_checkpoints(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "reading checkpoints") from exc

    def verify(self) -> VerifyReport:
        """Every entry, index row and tree node of LMDB checked, and the commit log's records
        that LMDB has not applied yet checked to continue it (their sequence numbers and the
        tree they extend). Nothing is written."""
        self._check()
        txn, records = self._snapshot("verifying")
        try:
            report = self._verify(txn)
            seq, first_seq, _epoch, frontier = self._read_tree(txn)
        except lmdb.Error as exc:
            raise _wrap(exc, self.location, "verifying") from exc
        finally:
            txn.abort()
        if not records:
            return report
        size = seq - first_seq
        for record in records:
            if record.first_seq != seq:
                raise CorruptStorageError(f"storage at {self.location}: the commit log's record at "
                                          f"{record.position} begins at seq {record.first_seq}, not at "
                                          f"{seq}", self.location)
            for leaf in record.leaves():
                size = append_leaf(frontier, size, leaf)
            seq = record.next_seq
        # (the subtrees the records complete are stored when they are applied)
        return VerifyReport(report.entries + sum(len(r.entries) for r in records), size,
                            root_from_frontier(frontier), sum(size >> h for h in range(8, 64, 8)))


_U64_END = 2**64


def _order_key(query: Query) -> Callable[[TransactionLog], tuple[int, int]]:
    if query.order == "append":
        return lambda log: (log.seq or 0, 0)
    return lambda log: (log.timestamp, log.seq or 0)


def _tail_scan(records: list[TailRecord], query: Query, after: TransactionLog | None,
               limit: int) -> list[TransactionLog]:
    """The tail's entries a scan returns, in its order: the filters, the cursor, the limit."""
    key = _order_key(query)
    desc = query.newest_first
    matches = query.matches
    bound = None if after is None or after.seq is None else key(after)
    found: list[TransactionLog] = []
    for log in _logs(records):
        if not matches(log):
            continue
        if bound is not None:
            k = key(log)
            if (desc and k >= bound) or (not desc and k <= bound):
                continue
        found.append(log)
    found.sort(key=key, reverse=desc)
    return found[:limit]


def _logs(records: list[TailRecord]) -> Iterator[TransactionLog]:
    for record in records:
        yield from record.logs()
