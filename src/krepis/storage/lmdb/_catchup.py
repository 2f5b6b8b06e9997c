"""Catching up with the commit log: the records other processes appended since this process
last looked.

The log's head (in ``commit.state``) says where the last complete record ends; the records
between this process's tail and the head are read, checked (position, chain, CRC) and added to
the tail. A process that fell a whole lap of the ring behind starts again from LMDB's pointer
(the records it missed are applied there).
"""

from __future__ import annotations

import time

import lmdb

from ..._errors import CorruptStorageError
from ._commitlog import BARRIER, LOG, Record, decode_payload
from ._layout import _wrap
from ._state import LogPointer, Shared, read_log_pointer, read_seq
from ._tail import TailRecord, decode_entries

__all__ = ["catch_up", "to_tail_record"]


def to_tail_record(record: Record, path: str) -> TailRecord:
    """A record read from the log, decoded (``CorruptStorageError`` naming it when malformed)."""
    if record.kind == BARRIER:
        return TailRecord(record.position, record.end, record.crc, record.kind, record.first_seq, [], [])
    try:
        entries: list[bytes] = []
        increments: list[bytes] = []
        for raw_entries, names in decode_payload(record.payload):
            entries += raw_entries
            increments += names
        decoded = decode_entries(entries)
    except ValueError as exc:
        raise CorruptStorageError(f"storage at {path}: the {LOG} record at position {record.position} "
                                  f"is malformed ({exc})", path) from None
    return TailRecord(record.position, record.end, record.crc, record.kind, record.first_seq, decoded,
                      increments)


def catch_up(shared: Shared, *, appending: bool = False) -> None:
    """Add to the tail the records other processes appended since this process last looked
    (the caller holds ``mu``; with ``appending``, the log's append lock too).

    A change outside the log announced as pending (``_store._outside_log``) was made by a
    process that holds the append lock — or died holding it. If LMDB's pointer says it was
    committed, the tail starts again from there; if not and this caller holds the append lock,
    its process died before committing: the announcement is cleared, and nothing happened."""
    log, tail = shared.log, shared.tail
    pending = log.read_pending()
    if pending:
        pointer = _pointer(shared)[0]
        if pointer.position >= pending > 0 and pointer.position > tail.end:
            _resync(shared)
        if appending:
            if pointer.position >= pending > 0:
                log.write_head(pointer.position)
            log.write_pending(0)
    head = log.read_head()
    tries = 0
    while head < 0 and tries < 100:  # a head being written: read it again
        tries += 1
        head = log.read_head()
    if head <= tail.end:
        return
    while tail.end < head:
        found = log.read(tail.end, tail.link)
        if found is None:
            if _resync(shared):
                continue
            raise CorruptStorageError(
                f"storage at {shared.path}: {LOG} has no valid record at position {tail.end}, though "
                f"other processes wrote up to {head}: the log was damaged while in use", shared.path)
        record = to_tail_record(found, shared.path)
        if record.kind == BARRIER:
            # data.mdb was changed outside the log here, and holds everything before: start over
            tail.reset(record.end, record.crc, record.first_seq)
            shared.floor = max(shared.floor, record.end)
            continue
        if record.first_seq != tail.next_seq:
            raise CorruptStorageError(
                f"storage at {shared.path}: the {LOG} record at position {record.position} begins at seq "
                f"{record.first_seq}, where {tail.next_seq} was expected", shared.path)
        if not tail.records:
            shared.first_unapplied = time.monotonic()
        tail.add(record)


def _pointer(shared: Shared) -> tuple[LogPointer, int]:
    """LMDB's commit-log pointer and next seq, now."""
    try:
        with shared.env.begin() as txn:
            return read_log_pointer(txn, shared.meta, shared.path), read_seq(txn, shared.meta, shared.path)
    except lmdb.Error as exc:
        raise _wrap(exc, shared.path, "reading the commit-log pointer") from exc


def _resync(shared: Shared) -> bool:
    """This process fell behind: when LMDB has applied past its tail (the records it missed may
    be overwritten by now, or a change was made outside the log), restart the tail from LMDB's
    pointer. ``False`` when not so."""
    tail = shared.tail
    pointer, seq = _pointer(shared)
    if pointer.position <= tail.end:
        return False
    tail.reset(pointer.position, pointer.link, seq)
    shared.floor = max(shared.floor, pointer.position)
    return True
