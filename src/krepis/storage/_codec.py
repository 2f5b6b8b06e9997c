"""The binary encoding of an entry in an LMDB store of format 2 (``docs/storage-format.md``).

``value = flags u8 | timestamp u64 LE | op_id u32 LE | request id | [duration] | [error]``

* ``flags`` bits 0–1: status (1 Started, 2 Completed, 3 Failed); bit 2: the request id is a
  canonical lowercase UUID stored as its 16 bytes; bit 3: ``duration_us`` as u32 LE; bit 4:
  ``duration_us`` as u64 LE; bit 5: ``error`` present (UTF-8, to the end of the value).
* request id otherwise: one byte ``length - 1`` then the UTF-8 bytes (1–256 bytes).
"""

from __future__ import annotations

import re
import struct
from hashlib import blake2b

from .._model import LogStatus, TransactionLog, make_log

__all__ = ["STATUS_CODE", "STATUS_OF", "decode_value", "encode_value", "rid_hash"]

STATUS_CODE = {LogStatus.Started: 1, LogStatus.Completed: 2, LogStatus.Failed: 3}
STATUS_OF = {1: LogStatus.Started, 2: LogStatus.Completed, 3: LogStatus.Failed}
_HDR = struct.Struct("<BQI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BODY = _HDR.size
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
_F_UUID, _F_D32, _F_D64, _F_ERR = 4, 8, 16, 32
_U32_MAX = 2**32 - 1


def rid_hash(request_id: bytes) -> bytes:
    """The 8-byte key prefix of the request-id index: BLAKE2b-64 of the request id's UTF-8."""
    return blake2b(request_id, digest_size=8).digest()


def encode_value(log: TransactionLog, op_id: int) -> bytes:
    flags = STATUS_CODE[log.status]
    rid = log.request_id
    if len(rid) == 36 and _UUID(rid):
        flags |= _F_UUID
        rid_part = bytes.fromhex(rid.replace("-", ""))
    else:
        raw = rid.encode("utf-8")
        rid_part = bytes((len(raw) - 1,)) + raw
    tail = b""
    duration = log.duration_us
    if duration is not None:
        if duration <= _U32_MAX:
            flags |= _F_D32
            tail = _U32.pack(duration)
        else:
            flags |= _F_D64
            tail = _U64.pack(duration)
    if log.error is not None:
        flags |= _F_ERR
        tail += log.error.encode("utf-8")
    return _HDR.pack(flags, log.timestamp, op_id) + rid_part + tail


def decode_value(value: bytes, seq: int, op_name_of: dict[int, str]) -> TransactionLog:
    """Decode a stored value. Raises ``ValueError``/``KeyError`` (and only those) when malformed;
    ``op_name_of`` must map the value's op id (a ``KeyError`` lets the caller load it)."""
    flags, ts, op_id = _HDR.unpack_from(value)
    status = STATUS_OF.get(flags & 3)
    if status is None or flags & ~63 or ts >> 63:
        raise ValueError(f"bad header (flags {flags:#x})")
    off = _BODY
    if flags & _F_UUID:
        h = value[off:off + 16].hex()
        if len(h) != 32:
            raise ValueError("truncated request id")
        rid = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        off += 16
    else:
        if off >= len(value):
            raise ValueError("truncated request id")
        n = value[off] + 1
        raw = value[off + 1:off + 1 + n]
        if len(raw) != n:
            raise ValueError("truncated request id")
        rid = raw.decode("utf-8")
        off += 1 + n
    duration = None
    if flags & _F_D32:
        if flags & _F_D64:
            raise ValueError("two duration encodings")
        duration = _U32.unpack_from(value, off)[0]
        off += 4
    elif flags & _F_D64:
        duration = _U64.unpack_from(value, off)[0]
        if duration >> 63:
            raise ValueError("duration out of range")
        off += 8
    error = None
    if flags & _F_ERR:
        error = value[off:].decode("utf-8")
        if not error:
            raise ValueError("empty error text")
    elif off != len(value):
        raise ValueError(f"{len(value) - off} trailing bytes")
    op = op_name_of[op_id]
    return make_log(ts, op, rid, status, duration, error, seq)
