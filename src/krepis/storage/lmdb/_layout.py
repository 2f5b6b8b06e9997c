"""The LMDB store's layout: database names, key encodings, limits, and the small helpers every
part of the adapter shares (error mapping, index streams). The contract is
``docs/storage-format.md``."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from typing import Any

import lmdb

from ..._errors import ClosedError, CorruptStorageError, JournalError, StorageError
from ..._model import LogStatus

FORMAT_VERSION = 4

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

_DROP_HDR = struct.Struct("<BQI")  # an entry's flags, timestamp and op id (see ``_codec``)

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

def _closed_error(path: str) -> JournalError:
    return ClosedError(f"the journal at {path} is closed")

def _forked_error(path: str) -> JournalError:
    return ClosedError(
        f"the journal at {path} was opened in a parent process; open a new one after fork()"
    )

def _relabel(exc: lmdb.Error, lmdb_path: str, path: str) -> lmdb.Error:
    """The same LMDB error, naming the store's path rather than /proc/self/fd/N."""
    if lmdb_path == path or lmdb_path not in str(exc):
        return exc
    return type(exc)(str(exc).replace(lmdb_path, path))

def _os_error(exc: OSError, path: str) -> StorageError:
    if exc.errno == errno.EROFS:
        return StorageError(f"storage at {path} is on a read-only file system", path)
    return StorageError(f"cannot open storage at {path}: {exc.strerror or exc}", path)
