"""Reading an LMDB store: counters, entries, the indexes, the tree and verification (the
read half of :class:`~krepis.storage.lmdb.LmdbStorage`)."""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator
from typing import Any

from ..._errors import CorruptStorageError
from ..._model import TransactionLog, encode_log
from .._codec import STATUS_CODE, decode_value, rid_hash
from .._port import LogAudit, Query, VerifyReport
from ._layout import (
    _ALL_STATUSES,
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
    _dup_stream,
    _next16,
)
from ._state import Shared


class _Reads:
    """Reads of LMDB itself, each inside a given read transaction (:mod:`._views` adds the
    commit log's tail to them)."""

    location: str
    _shared: Shared
    _env: Any
    _entries: Any
    _index: Any
    _ops: Any
    _stats: Any
    _tree: Any
    _checkpoints: Any
    _meta: Any

    def _check(self) -> None:
        raise NotImplementedError

    def _read_tree(self, txn: Any) -> tuple[int, int, int, list[bytes]]:
        """(next seq, first seq of the log, epoch, frontier), checked against each other."""
        return self._shared.read_tree(txn)

    def _counter(self, raw: bytes | None, name: bytes) -> int:
        if raw is None:
            return 0
        if len(raw) != 8:
            raise CorruptStorageError(
                f"storage at {self.location}: counter {name.decode('utf-8', 'replace')!r} holds "
                f"{len(raw)} bytes, not 8", self.location)
        return int(_U64.unpack(raw)[0])

    # -- reads -----------------------------------------------------------------------------
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

    def _verify(self, txn: Any) -> VerifyReport:
        where = f"storage at {self.location}"
        seq, first_seq, epoch, frontier = self._read_tree(txn)
        tree, index = self._tree, self._index
        live = self._live_first(txn, first_seq, epoch)
        audit = LogAudit(where, self.location, first_seq,
                         lambda level, i: txn.get(_NODE_KEY.pack(level, i), db=tree), live)
        idx = txn.cursor(db=index)
        named: dict[str, int] = {}  # op name → the id its op-table record was checked to hold
        for key, raw in txn.cursor(db=self._entries):
            at = _SEQ.unpack(key)[0]
            log = self._decode(txn, at, raw)
            audit.add(at, encode_log(log))
            ts_seq = _TS_SEQ.pack(log.timestamp, at)
            status = STATUS_CODE[log.status]
            op_id = _DROP_HDR.unpack_from(raw)[2]  # the entry's own op id (it decoded: the header is whole)
            if named.get(log.op_name) != op_id:
                # a write looks an op's id up by its name: the record must hold this one
                stored = txn.get(b"n" + log.op_name.encode("utf-8"), db=self._ops)
                if stored != op_id.to_bytes(4, "little"):
                    found = "no record" if stored is None else f"a record of {bytes(stored).hex()}"
                    raise CorruptStorageError(f"{where}: the op table holds {found} for op {log.op_name!r}, "
                                              f"which entry {at} uses as op id {op_id}", self.location)
                named[log.op_name] = op_id
            rid_key = b"r" + rid_hash(log.request_id.encode("utf-8")) + _STATUS_BYTE[status]
            for name, ikey in (("time", _TIME_KEY), ("status", _STATUS_KEY[status]),
                               ("op", _OP_KEY.pack(b"o", op_id, status)),
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
