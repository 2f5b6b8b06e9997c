"""What one process holds of an open LMDB store: the environment and its databases, the commit
log, the tail of records LMDB has not applied yet, and the locks that order them.

Lock order, always in this direction: the store's writer lock (LMDB write transactions, an
``flock`` on ``data.mdb``) → :attr:`Shared.mu` (this process's tail and appends) → the log's
append lock (an ``flock`` on ``commit.log``, across processes). An append never takes the writer
lock while it holds ``mu``; the applier takes ``mu`` only briefly inside the writer lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import struct
import threading
from typing import Any

import lmdb

from ..._errors import CorruptStorageError, StorageError
from ._commitlog import CommitLog, seed_link
from ._files import StoreFiles
from ._layout import _TREE_HDR, _U64
from ._tail import Tail

__all__ = ["LogPointer", "Shared", "read_log_pointer"]

#: meta "log": the log's id, the position LMDB has applied it up to, the CRC of the record before
_LOG_PTR = struct.Struct("<16sQI")
NO_LOG = bytes(16)


class LogPointer:
    """``meta["log"]``: which commit log continues this ``data.mdb``, and how far it is applied."""

    __slots__ = ("link", "log_id", "position")

    def __init__(self, log_id: bytes, position: int, link: int) -> None:
        self.log_id, self.position, self.link = log_id, position, link

    def pack(self) -> bytes:
        return _LOG_PTR.pack(self.log_id, self.position, self.link)

    @staticmethod
    def fresh(log_id: bytes) -> LogPointer:
        return LogPointer(log_id, 0, seed_link(log_id))


class _Appending:
    """``with shared.appending():`` — a class rather than a generator: it runs on every write."""

    __slots__ = ("_shared",)

    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    def __enter__(self) -> None:
        shared = self._shared
        shared.mu.acquire()
        try:
            fcntl.flock(shared.log.fd, fcntl.LOCK_EX)
        except BaseException:
            shared.mu.release()
            raise

    def __exit__(self, *exc: object) -> None:
        shared = self._shared
        try:
            fcntl.flock(shared.log.fd, fcntl.LOCK_UN)
        finally:
            shared.mu.release()


def read_log_pointer(txn: Any, meta: Any, path: str) -> LogPointer:
    raw = txn.get(b"log", db=meta)
    if raw is None:
        return LogPointer(NO_LOG, 0, 0)
    if len(raw) != _LOG_PTR.size:
        raise CorruptStorageError(f"storage at {path}: malformed commit-log pointer record "
                                  f"({len(raw)} bytes, not {_LOG_PTR.size})", path)
    log_id, position, link = _LOG_PTR.unpack(raw)
    return LogPointer(bytes(log_id), int(position), int(link))


def read_seq(txn: Any, meta: Any, path: str) -> int:
    raw = txn.get(b"seq", db=meta)
    if raw is None or len(raw) != 8:
        raise CorruptStorageError(f"storage at {path}: malformed sequence record", path)
    return int(_U64.unpack(raw)[0])


class Shared:
    """One LMDB environment per directory per process (LMDB forbids opening one twice), with this
    process's side of the write path."""

    def __init__(self, env: lmdb.Environment, dbs: dict[bytes, Any], key: Any, files: StoreFiles,
                 log: CommitLog, pointer: LogPointer, next_seq: int) -> None:
        self.files = files
        self.env = env
        self.dbs = dbs
        self.meta = dbs[b"meta"]
        self.key = key
        self.refs = 0
        self.path = files.path
        self.log = log
        # The op table is append-only: a name's id never changes once committed.
        self.op_ids: dict[str, int] = {}
        self.op_names: dict[int, str] = {}
        #: guards the tail and this process's appends (see the module's lock order)
        self.mu = threading.Lock()
        self.tail = Tail(pointer.position, pointer.link, next_seq)
        #: ring space before this position may be written again: LMDB holds it durably
        self.floor = pointer.position
        #: the first write error of the write path: every later write refuses, naming it
        self.failed: BaseException | None = None
        #: the last error of the background applier that may pass (a full disk), or None
        self.apply_error: BaseException | None = None
        self.closing = False
        self.wrote = False  # this process appended since it opened the store
        # durability of the log: who flushes, how far it is flushed
        self.flush_cv = threading.Condition(threading.Lock())
        self.flushing = False
        self.durable = pointer.position
        # the applier: LMDB follows the log in the background
        self.wake = threading.Event()
        self.applier: threading.Thread | None = None
        self.first_unapplied = 0.0  # monotonic time of the oldest record not applied yet

    def appending(self) -> _Appending:
        """Hold ``mu`` and the log's cross-process append lock."""
        return _Appending(self)

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """The store-wide writer lock (an flock on data.mdb that outlives lock.mdb)."""
        return self.files.writer_lock()

    def refuse_if_failed(self) -> None:
        if self.failed is not None:
            raise StorageError(f"storage at {self.path} refuses writes after an earlier failure of its "
                               f"write path ({self.failed}); close and reopen it", self.path)

    def read_tree(self, txn: Any) -> tuple[int, int, int, list[bytes]]:
        """(next seq, first seq of the log, epoch, frontier), checked against each other."""
        meta, path = self.meta, self.path
        seq = read_seq(txn, meta, path)
        raw_tree = txn.get(b"tree", db=meta)
        if raw_tree is None or len(raw_tree) < 16 or (len(raw_tree) - 16) % 32:
            raise CorruptStorageError(f"storage at {path}: malformed sequence or tree record", path)
        first_seq, epoch = _TREE_HDR.unpack_from(raw_tree)
        size = seq - first_seq
        frontier = [raw_tree[i:i + 32] for i in range(16, len(raw_tree), 32)]
        if size < 0 or len(frontier) != size.bit_count():
            raise CorruptStorageError(
                f"storage at {path}: the Merkle tree record ({len(frontier)} subtrees) does "
                f"not match the sequence ({size} entries since seq {first_seq})", path)
        return seq, first_seq, epoch, frontier
