"""The tail: the records of the commit log that LMDB has not applied yet, held in memory by each
process that uses the store, so that reads see every acknowledged write without waiting for
LMDB to catch up.

A read combines one LMDB snapshot (which has applied the log up to some position ``P``) with
the tail's records from ``P`` on: counters, counts, entries, queries and the tree head are all
exact. Records written by other processes are read from the log when the shared head says there
are some (see ``_catchup``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from hashlib import sha256

from ..._model import TransactionLog, decode_log, encode_log

__all__ = ["Tail", "TailRecord"]


@dataclass(slots=True)
class TailRecord:
    """One record of the log, decoded: its entries (with their seqs) and counter increments."""

    position: int
    end: int
    crc: int
    kind: int
    first_seq: int
    #: (entry, canonical bytes); the entry's ``seq`` is ``first_seq + index``
    entries: list[tuple[TransactionLog, bytes]]
    increments: list[bytes]
    _logs: list[TransactionLog] | None = field(default=None)
    _leaves: list[bytes] | None = field(default=None)

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self.entries)

    def logs(self) -> list[TransactionLog]:
        """The entries as read back (``seq`` set), built once."""
        if self._logs is None:
            out = []
            for i, (log, _canonical) in enumerate(self.entries):
                out.append(_with_seq(log, self.first_seq + i))
            self._logs = out
        return self._logs

    def leaves(self) -> list[bytes]:
        """The Merkle leaf hashes of the entries, computed once."""
        if self._leaves is None:
            self._leaves = [sha256(b"\x00" + canonical).digest() for _log, canonical in self.entries]
        return self._leaves


def _with_seq(log: TransactionLog, seq: int) -> TransactionLog:
    from ..._model import make_log

    return make_log(log.timestamp, log.op_name, log.request_id, log.status, log.duration_us, log.error, seq)


def decode_entries(raw: list[bytes]) -> list[tuple[TransactionLog, bytes]]:
    """Entries of a record read from the log: parsed, and required to be exactly canonical."""
    out = []
    for canonical in raw:
        try:
            log = decode_log(canonical)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"an entry does not decode: {exc}") from None
        if encode_log(log) != canonical:
            raise ValueError("an entry is not in canonical form")
        out.append((log, canonical))
    return out


class Tail:
    """The unapplied records, in log order, from ``base`` to ``end``.

    Not thread-safe on its own: the store guards it with its state lock.
    """

    __slots__ = ("_positions", "base", "counters", "end", "entries", "link", "new_ops", "next_seq", "records")

    def __init__(self, position: int, link: int, next_seq: int) -> None:
        self.reset(position, link, next_seq)

    def reset(self, position: int, link: int, next_seq: int) -> None:
        """Empty, at ``position`` (whose previous record's CRC is ``link``)."""
        self.base = self.end = position
        self.link = link
        self.next_seq = next_seq
        self.records: list[TailRecord] = []
        self._positions: list[int] = []
        self.entries = 0
        #: counter values as of ``end``, for the names looked up or written since they were known
        self.counters: dict[bytes, int] = {}
        #: op names of the records that LMDB's op table did not hold when they were written
        self.new_ops: set[str] = set()

    def add(self, record: TailRecord) -> None:
        self.records.append(record)
        self._positions.append(record.position)
        self.end = record.end
        self.link = record.crc
        self.next_seq = record.next_seq
        self.entries += len(record.entries)
        counters = self.counters
        for name in record.increments:
            value = counters.get(name)
            if value is not None:
                counters[name] = value + 1

    def drop_before(self, position: int) -> None:
        """Forget the records before ``position`` (LMDB has applied them)."""
        cut = bisect.bisect_left(self._positions, position)
        if cut:
            self.entries -= sum(len(r.entries) for r in self.records[:cut])
            del self.records[:cut]
            del self._positions[:cut]
        if position > self.base:
            self.base = position
        if position > self.end:  # another process applied records this one never saw
            self.end = position

    def since(self, position: int) -> list[TailRecord] | None:
        """The records from ``position`` on, or ``None`` when some of them were dropped
        already (the caller's LMDB snapshot is older than the tail: take a newer one)."""
        if position < self.base:
            return None
        return self.records[bisect.bisect_left(self._positions, position):]

    def increments_since(self, position: int, name: bytes) -> int:
        start = bisect.bisect_left(self._positions, position)
        return sum(r.increments.count(name) for r in self.records[start:])

