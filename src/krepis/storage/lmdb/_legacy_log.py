"""The commit log of storage format 3 (``commit.log`` version 1), read only by the migration
to format 4 (``_migrate3``): its two checkpoint slots (a durable snapshot of ``data.mdb``'s meta
pages) and the records of the commits that followed the newest one. Format 3 is described at
the end of ``docs/storage-format.md``."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..._errors import CorruptStorageError

__all__ = ["LegacyLog", "Slot"]

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

class LegacyLog:
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
        if psize < 512 or psize > 1 << 16 or psize & (psize - 1):
            raise CorruptStorageError(f"storage at {path}: the superblock of {LOG} names a page size of "
                                      f"{psize} bytes", path)
        self.page_size = int(psize)
        self.slot_size = _slot_size(self.page_size)
        if start != _HEADER_PAGE + 2 * self.slot_size or ring != RING_SIZE:
            raise CorruptStorageError(f"storage at {path}: the superblock of {LOG} places the ring at "
                                      f"{start} with {ring} bytes; version 1 has it at "
                                      f"{_HEADER_PAGE + 2 * self.slot_size} with {RING_SIZE}", path)
        self.start = int(start)
        self.ring = int(ring)

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
