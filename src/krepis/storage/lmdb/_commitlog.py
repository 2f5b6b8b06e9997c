"""The commit log of an LMDB store (``commit.log``, version 2): the write path.

A durable write is one record appended here and one ``fdatasync`` (shared by every caller
waiting: group commit). LMDB is brought up to date behind the log, many records per LMDB
transaction, each such transaction synced by LMDB itself; the log's space is reused once the
records in it are durable in LMDB. Nothing ever writes ``data.mdb`` but LMDB, so no state of
the log — damaged, stale, foreign — can damage ``data.mdb``. The layout and the recovery rules
are a contract (``docs/storage-format.md``, "The commit log"):

* **Superblock**, twice (bytes 0 and 2048): magic, version, the log's 16-byte id, where the ring
  starts and how long it is, a CRC. ``data.mdb`` names the id of the log that continues it.
* **Ring** (from byte 4096): records at increasing *virtual positions*, 8-byte aligned; a
  record at position ``p`` lies at ``ring start + p mod ring size`` and never straddles the
  ring's end (it starts the next lap instead). Each record carries its own position, the CRC of
  the record before it (a chain: a record left over from before a crash cannot join it), how far
  the log was durable when it was written, the sequence number of its first entry, and a CRC.

Beside it, ``commit.state`` holds what the processes sharing the store tell each other and is
never flushed (so that a flush of the log writes the log's pages only): the **head**, the end of
the last complete record (never trusted after a crash: recovery walks the records), and the
**marker**, how far the log is known to be durable (written after each flush).

**Recovery** (by the first process to open the store after every other closed or died): walk
the chain from the position ``data.mdb`` says it has applied, and apply the records found, in
order. The first missing or damaged record ends the chain — but only if nothing proves it was
ever durable: when the marker, or any valid record found further on, says the log was durable
past that point, the break is damage, and the open is refused (naming the position) before
anything is written.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..._errors import CorruptStorageError, StorageError

__all__ = ["LOG", "STATE", "CommitLog", "Record", "decode_payload", "encode_payload"]

LOG = "commit.log"
STATE = "commit.state"
VERSION = 2
#: bytes of the ring of a new log: once a lap is written the file stays this size (plus the
#: 4 KiB superblock page). A log states its own ring size: any power of two in 64 KiB … 1 GiB.
RING_SIZE = 4 << 20
_RING_MIN, _RING_MAX = 64 << 10, 1 << 30
_SUPER = struct.Struct("<8sI4x16sQQ")  # magic, version, log id, ring start, ring size
_SUPER_MAGIC = b"KRPSCLOG"
_SUPER_AT = (0, 2048)
#: commit.state: the head at 0 (end, end ^ 2**64-1: a torn read shows as a mismatch), a pending
#: change made outside the log at 16 (the same shape; 0: none), the marker at 64 (magic, the
#: log's id, the durable end, a CRC)
_HEAD_AT = 0
_PENDING_AT = 16
_HEAD = struct.Struct("<QQ")
_MARK_AT = 64
_MARK = struct.Struct("<8s16sQ")
_MARK_MAGIC = b"KRPSMARK"
_STATE_SIZE = 4096
RING_START = 4096
#: magic, payload length, position, durable end, first seq, link (CRC of the previous record), kind
_REC = struct.Struct("<IIQQQIB3x")
_REC_MAGIC = 0x3243524B  # "KRC2"
REC_HEADER = _REC.size
_CRC = struct.Struct("<I")
_CHUNK = 64 << 10  # the ring's file space is zero-filled (allocated) a chunk at a time
_SCAN = 1 << 20  # recovery reads the ring this much at a time
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_ALL = 2**64 - 1

#: record kinds
BATCH = 1     # entries and counter increments of one or more write requests
BARRIER = 2   # a change made to data.mdb outside the log (clear, archive, checkpoint note)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    """``pwrite`` all of ``data``, or raise (a short write on a full disk is an ``OSError``)."""
    done = os.pwrite(fd, data, offset)
    while done < len(data):
        more = os.pwrite(fd, data[done:], offset + done)
        if more <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done += more


def _crc(*parts: bytes) -> int:
    value = 0
    for part in parts:
        value = zlib.crc32(part, value)
    return value


def read_state(fd: int) -> tuple[bytes, int, int] | None:
    """What a ``commit.state`` says without its log: (the log's id, head, durable end), or
    ``None`` when its marker is not valid."""
    raw = os.pread(fd, _STATE_SIZE, 0)
    if len(raw) < _MARK_AT + _MARK.size + 4:
        return None
    mark = raw[_MARK_AT:_MARK_AT + _MARK.size]
    if _CRC.unpack_from(raw, _MARK_AT + _MARK.size)[0] != _crc(mark):
        return None
    magic, log_id, durable = _MARK.unpack(mark)
    end, check = _HEAD.unpack_from(raw, _HEAD_AT)
    if magic != _MARK_MAGIC:
        return None
    return bytes(log_id), end if end ^ check == _ALL else 0, int(durable)


def record_size(payload: int) -> int:
    """Bytes a record with ``payload`` bytes takes in the ring (8-byte aligned)."""
    return (REC_HEADER + payload + 4 + 7) & ~7


def seed_link(log_id: bytes) -> int:
    """The link of the first record of a log: the previous record's CRC when there is none."""
    return _crc(b"KRPSLINK", log_id)


@dataclass(frozen=True, slots=True)
class Record:
    """A record read back from the ring."""

    position: int
    end: int          # the position of the next record (before any lap skip)
    kind: int
    first_seq: int
    durable: int      # how far the log was durable (by its writer's knowledge) when written
    link: int         # the CRC of the record before it
    crc: int          # its own CRC: the next record's link
    payload: bytes


def encode_payload(requests: Sequence[tuple[Sequence[bytes], Sequence[bytes]]]) -> bytes:
    """A batch's write requests: per request, its entries' canonical bytes and counter names."""
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
    """The open commit log of one store in this process: a descriptor and the layout."""

    def __init__(self, path: str, fd: int, state_fd: int = -1) -> None:
        """``state_fd``: ``commit.state`` (-1: none yet; the head then reads as unknown and the
        marker as 0); it is mapped, and the descriptor closed in every case."""
        self.path = path  # the store's directory, for messages
        self.fd = fd
        self._state: mmap.mmap | None = None
        try:
            self._read_superblock(path, fd)
            if state_fd >= 0:
                self._map_state(state_fd)
        finally:
            if state_fd >= 0:
                os.close(state_fd)

    def _read_superblock(self, path: str, fd: int) -> None:
        self.file = os.path.join(path, LOG)
        copies = []
        for at in _SUPER_AT:
            raw = os.pread(fd, _SUPER.size + 4, at)
            body = raw[:_SUPER.size]
            if len(raw) == _SUPER.size + 4 and _CRC.unpack_from(raw, _SUPER.size)[0] == _crc(body):
                copies.append(raw[:_SUPER.size])
        if not copies:
            head = os.pread(fd, 12, 0)
            if len(head) < 12:
                raise CorruptStorageError(f"storage at {path}: {LOG} is truncated (no superblock)", path)
            if head[:8] == _SUPER_MAGIC and head[8:12] == b"\x01\x00\x00\x00":
                raise CorruptStorageError(
                    f"storage at {path}: {LOG} is of version 1 (krepis storage format 3), not {VERSION}",
                    path)
            raise CorruptStorageError(f"storage at {path}: {LOG} is not a krepis commit log or both "
                                      "copies of its superblock are damaged", path)
        if len(copies) == 2 and copies[0] != copies[1]:
            raise CorruptStorageError(f"storage at {path}: the two superblocks of {LOG} differ (both "
                                      "with a valid checksum): the file was edited", path)
        magic, version, log_id, start, ring = _SUPER.unpack(copies[0])
        if magic != _SUPER_MAGIC:
            raise CorruptStorageError(f"storage at {path}: {LOG} is not a krepis commit log", path)
        if version != VERSION:
            raise CorruptStorageError(f"storage at {path}: {LOG} has version {version}; this krepis "
                                      f"reads version {VERSION}", path)
        if start != RING_START or not _RING_MIN <= ring <= _RING_MAX or ring & (ring - 1):
            raise CorruptStorageError(
                f"storage at {path}: the superblock of {LOG} places the ring at {start} with {ring} "
                f"bytes; version {VERSION} has it at {RING_START}, with a power of two of "
                f"{_RING_MIN} … {_RING_MAX} bytes", path)
        self.log_id = bytes(log_id)
        self.start = RING_START
        self.ring = int(ring)
        self._size = 0  # the file's length as last seen (it only grows): fstat only past it

    # -- creation --------------------------------------------------------------------------
    @staticmethod
    def create(dir_fd: int, path: str, log_id: bytes, position: int, *, rename: bool = True) -> None:
        """Write a new, empty log whose records start at ``position`` as ``commit.log.new`` and
        make it durable; with ``rename``, it then replaces any old log with one rename (a crash
        leaves the old log or the new one)."""
        tmp = LOG + ".new"
        try:
            os.unlink(tmp, dir_fd=dir_fd)  # (a directory there stays: the create fails, naming it)
        except (FileNotFoundError, IsADirectoryError):
            pass
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o600)
            body = _SUPER.pack(_SUPER_MAGIC, VERSION, log_id, RING_START, RING_SIZE)
            if not _RING_MIN <= RING_SIZE <= _RING_MAX or RING_SIZE & (RING_SIZE - 1):
                raise ValueError(f"ring size {RING_SIZE}")
            block = body + _CRC.pack(_crc(body))
            page = bytearray(RING_START)
            for at in _SUPER_AT:
                page[at:at + len(block)] = block
            os.pwrite(fd, bytes(page), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        if rename:
            os.rename(tmp, LOG, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)

    # -- the shared end and the marker (commit.state) ---------------------------------------
    @staticmethod
    def create_state(dir_fd: int, log_id: bytes, head: int, durable: int, *, path: str) -> int:
        """(Re)write ``commit.state`` for the log ``log_id``; returns a descriptor of it. Never a
        planted link: ``O_NOFOLLOW``, and a regular file with one link only (else a
        ``StorageError`` naming ``path``, the store's directory)."""
        fd = os.open(STATE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                raise StorageError(f"storage at {path}: {STATE} is not a plain file with one link; "
                                   "refusing to use it", path)
            os.fchmod(fd, 0o600)
            body = _MARK.pack(_MARK_MAGIC, log_id, durable)
            page = bytearray(_STATE_SIZE)
            page[_HEAD_AT:_HEAD_AT + _HEAD.size] = _HEAD.pack(head, head ^ _ALL)
            page[_PENDING_AT:_PENDING_AT + _HEAD.size] = _HEAD.pack(0, _ALL)
            page[_MARK_AT:_MARK_AT + _MARK.size + 4] = body + _CRC.pack(_crc(body))
            os.pwrite(fd, bytes(page), 0)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _map_state(self, fd: int) -> None:
        """Map ``commit.state`` (a page): the head and the marker are read and written as memory,
        with no system call, and seen by every process that maps it."""
        if os.fstat(fd).st_size >= _STATE_SIZE:  # (a truncated one is as good as none: remade)
            self._state = mmap.mmap(fd, _STATE_SIZE)

    def read_head(self) -> int:
        """The end of the last complete record, as the processes sharing the store last wrote
        it (-1 when unknown, or when the two copies disagree: a write is in progress; read again)."""
        state = self._state
        if state is None:
            return -1
        end, check = _HEAD.unpack_from(state, _HEAD_AT)
        return end if end ^ check == _ALL else -1

    def write_head(self, end: int) -> None:
        if self._state is not None:
            _HEAD.pack_into(self._state, _HEAD_AT, end, end ^ _ALL)

    def read_pending(self) -> int:
        """Where the log continues after a change outside it that its process began and may or
        may not have committed (see ``_store._outside_log``); 0: none, -1: being written."""
        state = self._state
        if state is None:
            return 0
        end, check = _HEAD.unpack_from(state, _PENDING_AT)
        return end if end ^ check == _ALL else -1

    def write_pending(self, end: int) -> None:
        if self._state is not None:
            _HEAD.pack_into(self._state, _PENDING_AT, end, end ^ _ALL)

    def write_marker(self, durable: int) -> None:
        """Record that the log is durable up to ``durable`` (after a flush that made it so). Not
        flushed itself: it says something true whether or not it survives a power cut."""
        if self._state is not None:
            body = _MARK.pack(_MARK_MAGIC, self.log_id, durable)
            self._state[_MARK_AT:_MARK_AT + _MARK.size + 4] = body + _CRC.pack(_crc(body))

    def _marker(self) -> tuple[bytes, bytes, int] | None:
        state = self._state
        if state is None:
            return None
        raw = bytes(state[_MARK_AT:_MARK_AT + _MARK.size + 4])
        if _CRC.unpack_from(raw, _MARK.size)[0] != _crc(raw[:_MARK.size]):
            return None
        magic, log_id, durable = _MARK.unpack_from(raw)
        return magic, log_id, int(durable)

    def state_belongs(self) -> bool:
        """Whether ``commit.state`` is this log's (its marker names this log's id)."""
        found = self._marker()
        return found is not None and found[0] == _MARK_MAGIC and found[1] == self.log_id

    def read_marker(self) -> int:
        """How far the marker says the log was durable (0 when there is no valid one)."""
        return self._marker()[2] if self.state_belongs() else 0  # type: ignore[index]

    def reset_state(self, dir_fd: int, head: int) -> None:
        """A fresh ``commit.state`` for this log: head and marker at ``head`` (after a recovery,
        everything before it is durable in LMDB)."""
        fd = CommitLog.create_state(dir_fd, self.log_id, head, head, path=self.path)
        try:
            if self._state is not None:
                self._state.close()
            self._map_state(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._state is not None:
            self._state.close()
            self._state = None
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self.fd = -1

    # -- records ---------------------------------------------------------------------------
    def place(self, position: int, size: int) -> int:
        """Where a record of ``size`` bytes goes when the next free position is ``position``:
        the same position, or the start of the next lap when it would straddle the ring's end."""
        offset = position % self.ring
        if offset + size > self.ring:
            return position - offset + self.ring
        return position

    @staticmethod
    def encode(kind: int, position: int, durable: int, first_seq: int, link: int,
               payload: bytes) -> tuple[bytes, int]:
        """A record's bytes (padded to its size) and its CRC (the next record's link)."""
        head = _REC.pack(_REC_MAGIC, len(payload), position, durable, first_seq, link, kind)
        crc = _crc(head, payload)
        raw = head + payload + _CRC.pack(crc)
        return raw + bytes(record_size(len(payload)) - len(raw)), crc

    def write(self, position: int, record: bytes) -> None:
        """Write a record at its ring position, allocating the ring's file space first. An
        ``OSError`` (a full disk) leaves no valid record there."""
        offset = self.start + position % self.ring
        end = offset + len(record)
        if end > self._size:
            self._size = size = os.fstat(self.fd).st_size  # another process may have grown it
            if end > size:
                grow_to = min(self.start + self.ring, -(-end // _CHUNK) * _CHUNK)
                _write_all(self.fd, bytes(grow_to - size), size)
                os.fdatasync(self.fd)  # the new length is durable before any record relies on it
                self._size = grow_to
        _write_all(self.fd, record, offset)

    def flush(self) -> None:
        os.fdatasync(self.fd)

    def read(self, position: int, link: int | None) -> Record | None:
        """The record at ``position`` (or at the start of the next lap, where one that did not
        fit went), or ``None`` when there is no valid one there. ``link``: it must follow the
        record whose CRC that is (``None``: any)."""
        found = self._read_at(position, link)
        if found is None and position % self.ring:
            found = self._read_at(position + self.ring - position % self.ring, link)
        return found

    def _read_at(self, position: int, link: int | None) -> Record | None:
        offset = self.start + position % self.ring
        head = os.pread(self.fd, REC_HEADER, offset)
        if len(head) < REC_HEADER:
            return None
        magic, length, rec_pos, durable, first_seq, rec_link, kind = _REC.unpack(head)
        if magic != _REC_MAGIC or rec_pos != position or (link is not None and rec_link != link) \
                or position % self.ring + record_size(length) > self.ring or kind not in (BATCH, BARRIER):
            return None
        rest = os.pread(self.fd, length + 4, offset + REC_HEADER)
        if len(rest) < length + 4:
            return None
        crc = _CRC.unpack_from(rest, length)[0]
        if crc != _crc(head, rest[:length]):
            return None
        return Record(position, position + record_size(length), kind, first_seq, durable, rec_link, crc,
                      bytes(rest[:length]))

    def chain(self, position: int, link: int) -> Iterator[Record]:
        """The records from ``position`` on, each following the one before, up to the first
        missing or damaged one."""
        while True:
            record = self.read(position, link)
            if record is None:
                return
            yield record
            position, link = record.end, record.crc

    def durable_evidence(self, after: int) -> tuple[int, int]:
        """How far the log is known to have been durable, from the marker and from every valid
        record in the ring positioned after ``after`` (a record of a later lap counts too; one
        left over from a lap before it does not): ``(durable end, records found after 'after')``.
        Reads the ring a chunk at a time (memory stays flat), and a record's body only when its
        header places it after
        ``after``."""
        best = self.read_marker()
        found = 0
        limit = min(os.fstat(self.fd).st_size, self.start + self.ring) - self.start
        magic = _U32.pack(_REC_MAGIC)
        for base in range(0, max(limit, 0), _SCAN):
            data = os.pread(self.fd, min(_SCAN, limit - base), self.start + base)
            at = data.find(magic)
            while at >= 0:
                if at % 8 == 0:
                    head = data[at:at + REC_HEADER]
                    if len(head) < REC_HEADER:
                        head = os.pread(self.fd, REC_HEADER, self.start + base + at)
                    if len(head) == REC_HEADER:
                        _m, length, pos, durable, _first, _link, kind = _REC.unpack(head)
                        offset = base + at
                        if pos > after and pos % self.ring == offset \
                                and kind in (BATCH, BARRIER) and offset + record_size(length) <= self.ring:
                            body = os.pread(self.fd, length + 4, self.start + offset + REC_HEADER)
                            if len(body) == length + 4 and \
                                    _CRC.unpack_from(body, length)[0] == _crc(head, body[:length]):
                                found += 1
                                best = max(best, int(durable))
                at = data.find(magic, at + 1)
        return best, found

    def check_attached(self) -> None:
        """Refuse to acknowledge writes into a ``commit.log`` that was deleted or replaced."""
        if os.fstat(self.fd).st_nlink == 0:
            raise StorageError(f"storage at {self.path}: {LOG} was deleted or replaced while the store "
                               "was open; krepis stopped writing so that no write is silently lost. "
                               "Close the journal and check the store", self.path)
