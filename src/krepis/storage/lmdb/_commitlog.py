"""The commit log of an LMDB store: one flush per durable commit.

LMDB makes a commit durable with two flushes, one after the other (the data pages, then the
meta page). krepis commits LMDB without syncing and makes each commit durable by one small
write to this file instead, flushed with one ``fdatasync`` that runs while the commit is being
applied. The layout and the recovery rules are a contract (``docs/storage-format.md``):

* ``commit.log`` starts with a **superblock** (page 0): magic, version, LMDB's page size, where
  the ring starts and how long it is.
* Two **checkpoint slots** follow. A slot holds a copy of ``data.mdb``'s two meta pages taken
  right after a commit, once the data pages of that commit were flushed: a *durable snapshot*.
  A slot is written only after that flush, alternately into the older slot, and carries a CRC;
  the valid slot with the higher transaction id is the checkpoint.
* The **ring** holds one record per commit since (and around) the checkpoint, at increasing
  *virtual positions* (physical offset = ring start + position mod ring length; a record never
  straddles the ring's end, it starts the next lap instead). A record carries its transaction
  id, its position and a CRC; its payload is the commit's write requests (entries in canonical
  bytes, counter names), enough to apply it again.
* Nothing overwrites the durable snapshot while it is needed: every process that commits holds
  an LMDB read transaction opened at a snapshot no newer than the newest checkpoint, so LMDB
  never reuses the pages of that snapshot (see ``lmdb.py``).

**Recovery** (by the first process that opens the store after every other closed or died): the
checkpoint's meta pages are written back into ``data.mdb`` (the snapshot's pages are intact),
then the records following the checkpoint — transaction ids ``t+1, t+2, …`` in a row, each with
a valid CRC — are applied again in order, and a new checkpoint is taken. A torn or missing
record ends the replay: it and everything after it were never acknowledged as durable.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..._errors import CorruptStorageError, StorageError

__all__ = ["LOG", "CommitLog", "Flusher", "Slot", "decode_payload", "encode_payload"]

LOG = "commit.log"
_VERSION = 1
_SUPER = struct.Struct("<8sIIQQ")  # magic, version, page size, ring start, ring size
_SUPER_MAGIC = b"KRPSCLOG"
_SLOT = struct.Struct("<8sQQI")  # magic, txnid, ring position of the next record, meta length
_SLOT_MAGIC = b"KRPSSLOT"
_REC = struct.Struct("<IIQQ")  # magic, payload length, txnid, ring position
_REC_MAGIC = 0x4C43524B  # "KRCL"
_CRC = struct.Struct("<I")
_HEADER_PAGE = 4096
RING_SIZE = 8 << 20
_CHUNK = 1 << 20  # the ring's file space is zero-filled (allocated) a chunk at a time
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


def _crc(*parts: bytes) -> int:
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return value


@dataclass(frozen=True)
class Slot:
    """A checkpoint: LMDB transaction ``txnid`` is durable in ``data.mdb``; ``metas`` are its two
    meta pages; the first record after it is at ring position ``tail``."""

    txnid: int
    tail: int
    metas: bytes
    index: int = 0


def encode_payload(requests: Sequence[tuple[Sequence[bytes], Sequence[bytes]]]) -> bytes:
    """A commit's write requests: per request, its entries' canonical bytes and counter names."""
    out = [_U32.pack(len(requests))]
    for entries, increments in requests:
        out.append(_U32.pack(len(entries)))
        for canonical in entries:
            out.append(_U32.pack(len(canonical)))
            out.append(canonical)
        out.append(_U32.pack(len(increments)))
        for name in increments:
            out.append(_U16.pack(len(name)))
            out.append(name)
    return b"".join(out)


def decode_payload(payload: bytes) -> list[tuple[list[bytes], list[bytes]]]:
    """The inverse of :func:`encode_payload`; ``ValueError`` on anything malformed."""
    view = memoryview(payload)
    at = 0

    def take(n: int) -> bytes:
        nonlocal at
        if at + n > len(view):
            raise ValueError("payload ends early")
        chunk = bytes(view[at:at + n])
        at += n
        return chunk

    requests = []
    for _ in range(_U32.unpack(take(4))[0]):
        entries = [take(_U32.unpack(take(4))[0]) for _ in range(_U32.unpack(take(4))[0])]
        increments = [take(_U16.unpack(take(2))[0]) for _ in range(_U32.unpack(take(4))[0])]
        requests.append((entries, increments))
    if at != len(view):
        raise ValueError("payload has trailing bytes")
    return requests


class CommitLog:
    """The open commit log of one store in this process (a descriptor and the layout)."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path  # the store's directory, for messages
        self.fd = fd
        raw = os.pread(fd, _SUPER.size + 4, 0)
        if len(raw) < _SUPER.size + 4:
            raise CorruptStorageError(f"storage at {path}: {LOG} is truncated (no superblock)", path)
        magic, version, psize, start, ring = _SUPER.unpack_from(raw)
        if magic != _SUPER_MAGIC or _CRC.unpack_from(raw, _SUPER.size)[0] != _crc(raw[:_SUPER.size]):
            raise CorruptStorageError(f"storage at {path}: {LOG} is not a krepis commit log or its "
                                      "superblock is damaged", path)
        if version != _VERSION:
            raise CorruptStorageError(f"storage at {path}: {LOG} has version {version}; this krepis "
                                      f"reads version {_VERSION}", path)
        self.page_size = int(psize)
        self.slot_size = _slot_size(self.page_size)
        self.start = int(start)
        self.ring = int(ring)
        self._size = 0  # the file's length as last seen (it only grows): fstat only past it

    # -- creation --------------------------------------------------------------------------
    @staticmethod
    def create(dir_fd: int, path: str, page_size: int, slot: Slot) -> None:
        """Write a new log holding ``slot`` and make it durable, replacing any old one with one
        rename (a crash leaves either the old log or the complete new one)."""
        slot_size = _slot_size(page_size)
        start = _HEADER_PAGE + 2 * slot_size
        tmp = LOG + ".new"
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o600)
            head = _SUPER.pack(_SUPER_MAGIC, _VERSION, page_size, start, RING_SIZE)
            head += _CRC.pack(_crc(head))
            os.pwrite(fd, head.ljust(_HEADER_PAGE, b"\0"), 0)
            os.pwrite(fd, _slot_bytes(slot).ljust(slot_size, b"\0"), _HEADER_PAGE)
            os.pwrite(fd, bytes(slot_size + _CHUNK), _HEADER_PAGE + slot_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, LOG, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    # -- checkpoints -----------------------------------------------------------------------
    def _read_slot(self, index: int) -> Slot | None:
        raw = os.pread(self.fd, _SLOT.size + 2 * self.page_size + 4, _HEADER_PAGE + index * self.slot_size)
        if len(raw) < _SLOT.size + 4:
            return None
        magic, txnid, tail, length = _SLOT.unpack_from(raw)
        if magic != _SLOT_MAGIC or length != 2 * self.page_size or len(raw) < _SLOT.size + length + 4:
            return None
        body = raw[:_SLOT.size + length]
        if _CRC.unpack_from(raw, _SLOT.size + length)[0] != _crc(body):
            return None
        return Slot(txnid, tail, bytes(raw[_SLOT.size:_SLOT.size + length]), index)

    def checkpoint(self) -> Slot:
        """The newest valid checkpoint slot."""
        slots = [s for s in (self._read_slot(0), self._read_slot(1)) if s is not None]
        if not slots:
            raise CorruptStorageError(
                f"storage at {self.path}: both checkpoint slots of {LOG} are damaged; the store "
                "cannot be recovered safely. Restore it from a backup", self.path)
        return max(slots, key=lambda s: s.txnid)

    def write_checkpoint(self, txnid: int, tail: int, metas: bytes) -> bool:
        """Record a durable snapshot (its data pages must already be flushed) in the older slot
        and flush it; ``False`` (nothing written) when a checkpoint at least as new exists."""
        current = self.checkpoint()
        if current.txnid >= txnid:
            return False
        other = 1 - current.index
        os.pwrite(self.fd, _slot_bytes(Slot(txnid, tail, metas)), _HEADER_PAGE + other * self.slot_size)
        os.fdatasync(self.fd)
        return True

    # -- records ---------------------------------------------------------------------------
    def place(self, position: int, length: int) -> int:
        """Where a record of ``length`` bytes goes when the next free position is ``position``:
        the same position, or the start of the next lap when it would straddle the ring's end."""
        offset = position % self.ring
        if offset + length > self.ring:
            return position - offset + self.ring
        return position

    def fits(self, position: int, length: int, tail: int) -> bool:
        """Whether a record at ``position`` leaves every record from ``tail`` on intact."""
        return length <= self.ring and position + length - tail <= self.ring

    def record(self, txnid: int, position: int, payload: bytes) -> bytes:
        head = _REC.pack(_REC_MAGIC, len(payload), txnid, position)
        return head + payload + _CRC.pack(_crc(head, payload))

    @staticmethod
    def record_size(payload_size: int) -> int:
        return int(_REC.size + payload_size + 4)

    def write(self, position: int, record: bytes) -> None:
        """Write a record at its ring position, allocating the ring's file space first."""
        offset = self.start + position % self.ring
        end = offset + len(record)
        if end > self._size:
            self._size = size = os.fstat(self.fd).st_size  # another process may have grown it
            if end > size:
                grow_to = min(self.start + self.ring, -(-end // _CHUNK) * _CHUNK)
                os.pwrite(self.fd, bytes(grow_to - size), size)
                os.fdatasync(self.fd)  # the new length is durable before any record relies on it
                self._size = grow_to
        os.pwrite(self.fd, record, offset)

    def erase(self, position: int) -> None:
        """Make the record at ``position`` invalid (its transaction did not commit), durably."""
        os.pwrite(self.fd, bytes(_REC.size), self.start + position % self.ring)
        os.fdatasync(self.fd)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def _read_record(self, position: int, txnid: int) -> tuple[bytes, int] | None:
        offset = self.start + position % self.ring
        head = os.pread(self.fd, _REC.size, offset)
        if len(head) < _REC.size:
            return None
        magic, length, rec_txnid, rec_pos = _REC.unpack(head)
        if magic != _REC_MAGIC or rec_txnid != txnid or rec_pos != position \
                or position % self.ring + _REC.size + length + 4 > self.ring:
            return None
        rest = os.pread(self.fd, length + 4, offset + _REC.size)
        if len(rest) < length + 4 or _CRC.unpack_from(rest, length)[0] != _crc(head, rest[:length]):
            return None
        return rest[:length], position + _REC.size + length + 4

    def records(self, slot: Slot) -> Iterator[tuple[int, int, bytes, int]]:
        """``(txnid, position, payload, next position)`` of the records after ``slot``, in
        order, up to the first missing or damaged one."""
        # This ends: a record is taken only at the position written in it, and positions only
        # grow, so each record in the file is taken at most once.
        position, txnid = slot.tail, slot.txnid + 1
        while True:
            found = self._read_record(position, txnid)
            if found is None:  # the record may have started the next lap instead
                position += self.ring - position % self.ring
                found = self._read_record(position, txnid)
                if found is None:
                    return
            payload, after = found
            yield txnid, position, payload, after
            position, txnid = after, txnid + 1


def _slot_size(page_size: int) -> int:
    return -(-(_SLOT.size + 2 * page_size + 4) // _HEADER_PAGE) * _HEADER_PAGE


def _slot_bytes(slot: Slot) -> bytes:
    body = _SLOT.pack(_SLOT_MAGIC, slot.txnid, slot.tail, len(slot.metas)) + slot.metas
    return body + _CRC.pack(_crc(body))


class Flusher:
    """A thread that flushes the commit log on request, so that a commit's flush runs while the
    commit is applied to LMDB. ``request()`` returns a ticket; ``wait(ticket)`` returns once a
    flush that *started after* the request completed (so it covers everything written before)."""

    def __init__(self, log: CommitLog, name: str) -> None:
        self._log = log
        self._cv = threading.Condition(threading.Lock())
        self._wanted = 0
        self._started = 0  # the ticket the flush now running (or last run) covers
        self._done = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while self._wanted == self._done and not self._stopped:
                    cv.wait()
                if self._stopped and self._wanted == self._done:
                    return
                target = self._started = self._wanted
                cv.notify_all()  # a requester waiting for the flush to start may go on now
            try:
                self._log.flush()
            except BaseException as exc:  # every waiter learns it; nothing is durable any more
                with cv:
                    self._error = exc
                    self._done = target
                    cv.notify_all()
                return
            with cv:
                self._done = target
                cv.notify_all()

    def request(self) -> int:
        """Ask for a flush of everything written so far; returns the ticket to wait for.

        When the flusher is idle, this also waits (briefly) until its flush has started: the
        requesting thread holds Python's GIL while it goes on applying the commit, and the
        flusher needs the GIL for the moment it takes to enter ``fdatasync`` (which releases
        it). Without this hand-over, the flush would start only when the requester next
        blocks, and nothing would overlap."""
        with self._cv:
            if self._error is not None or self._stopped:
                return -1
            idle = self._started == self._done
            self._wanted += 1
            ticket = self._wanted
            self._cv.notify_all()
            if idle:
                while self._started < ticket and self._error is None and not self._stopped:
                    self._cv.wait()
            return ticket

    def wait(self, ticket: int) -> None:
        with self._cv:
            while self._done < ticket and self._error is None:
                self._cv.wait()
            if self._error is not None or ticket < 0:
                error = self._error
                raise StorageError(
                    f"storage at {self._log.path}: flushing {LOG} failed "
                    f"({error if error is not None else 'the log is closed'}); the last writes may "
                    "not be durable, and this journal refuses further writes", self._log.path)

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._thread.join()
