"""SovereignJournal: the persistent transaction journal and its atomic, persistent op counters."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

from ._errors import ClosedError, CorruptStorageError, InvalidTypeError, StorageError
from ._model import (
    MAX_REQUEST_ID_BYTES,
    LogStatus,
    TransactionLog,
    check_limit,
    check_op_name,
    check_text,
    check_timestamp,
    decode_log,
    encode_log,
)
from ._storage import EntryFilter, Storage, WriteRequest, open_storage

__all__ = ["DEFAULT_STORAGE", "SovereignJournal"]

DEFAULT_STORAGE = os.path.join(".krepis", "storage")
_SCAN_CHUNK = 512


class _Pending:
    """A write waiting for a commit; filled in by whichever thread leads that commit."""

    __slots__ = ("done", "error", "request", "result")

    def __init__(self, request: WriteRequest) -> None:
        self.request = request
        self.result: list[int] | None = None
        self.error: BaseException | None = None
        self.done = False


class _GroupCommit:
    """Leader/follower group commit.

    A caller queues its request; if no commit is running it becomes the leader, takes every
    queued request and applies them in ONE storage transaction. Callers that arrive while a
    commit runs wait and are served together by the next leader. Nobody returns before the
    transaction holding its own request has committed.
    """

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Pending] = []
        self._leading = False

    def submit(self, request: WriteRequest) -> list[int]:
        item = _Pending(request)
        cond = self._cond
        with cond:
            self._queue.append(item)
            while not item.done:
                if self._leading:
                    cond.wait()
                    continue
                self._leading = True
                batch, self._queue = self._queue, []
                cond.release()
                try:
                    self._apply(batch)
                finally:
                    cond.acquire()
                    self._leading = False
                    for pending in batch:
                        pending.done = True
                    cond.notify_all()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _apply(self, batch: list[_Pending]) -> None:
        try:
            results = self._storage.write_batch([p.request for p in batch])
        except BaseException as exc:  # every waiter of this transaction learns it failed
            for pending in batch:
                pending.error = exc
            return
        for pending, result in zip(batch, results, strict=True):
            pending.result = result


class SovereignJournal:
    """A persistent transaction journal plus atomic, persistent op counters.

    Guarantees (default ``flush="sync"``):

    * **Durable**: every write call returns only after its data is on stable storage.
      Concurrent callers share commits (group commit); nobody returns before its own data is
      durable.
    * **Atomic**: :meth:`record` appends an entry and bumps a counter in one transaction;
      counters are exact across threads and processes sharing the directory.
    * **Complete**: entries are never overwritten, even with equal timestamp and request_id;
      they read back ordered by numeric timestamp, then arrival.
    * **Validated**: bad input raises ``ValueError``/``TypeError`` (also :class:`JournalError`)
      and writes nothing; a storage problem raises :class:`StorageError` naming the path.

    Opening is O(1) in the number of entries. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STORAGE) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not os.fspath(path):
            raise StorageError("storage path must not be empty", "")
        self._storage: Storage = open_storage(path)
        self._commit = _GroupCommit(self._storage)
        self._closed = False

    @property
    def path(self) -> str:
        """The storage location (an absolute path)."""
        return self._storage.location

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> SovereignJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Make everything durable and release the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._storage.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _live(self) -> Storage:
        if self._closed:
            raise ClosedError(f"the journal at {self.path} is closed")
        return self._storage

    def flush(self) -> None:
        """Force every committed write onto stable storage (already the case under ``sync``)."""
        self._live().sync()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SovereignJournal {self.path!r} {state}>"

    # -- writes ----------------------------------------------------------------------------
    def _write(self, entries: Sequence[tuple[int, bytes, bytes]], increments: Sequence[bytes]) -> list[int]:
        self._live()
        return self._commit.submit(WriteRequest(entries, increments))

    def log_transaction(self, log: TransactionLog) -> None:
        """Append one entry durably."""
        self._write([_encode_entry(log)], ())

    def record(self, log: TransactionLog, *, increment: str | None = None) -> int | None:
        """Append ``log`` and, if ``increment`` names a counter, bump it — in ONE atomic transaction.

        Returns the counter's new value, or ``None`` without ``increment``.
        """
        entry = _encode_entry(log)
        if increment is None:
            self._write([entry], ())
            return None
        return self._write([entry], (check_op_name(increment),))[0]

    def increment_op_count(self, op_name: str) -> int:
        """Atomically add one to ``op_count:{op_name}`` and return the new value."""
        return self._write((), (check_op_name(op_name),))[0]

    def clear_all(self) -> None:
        """Remove every entry and counter, durably. The journal stays open and usable."""
        self._live().clear()

    # -- reads -----------------------------------------------------------------------------
    def recover_op_count(self, op_name: str) -> int:
        """The stored value of ``op_count:{op_name}``; 0 when it was never counted."""
        return self._live().get_count(check_op_name(op_name))

    def op_counts(self) -> dict[str, int]:
        """Every counter, by op name."""
        return self._live().get_counts()

    def journal_count(self) -> int:
        """How many entries the journal holds (O(1): read from the engine, no scan)."""
        return self._live().entry_count()

    def get_recent_logs(self, limit: int) -> list[TransactionLog]:
        """The ``limit`` newest entries, newest first (by numeric timestamp, then arrival)."""
        return self.query(limit=check_limit(limit))

    def query(
        self,
        *,
        op_name: str | None = None,
        request_id: str | None = None,
        status: LogStatus | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[TransactionLog]:
        """Entries matching every given filter, newest first unless ``newest_first=False``.

        ``since`` (inclusive) and ``until`` (exclusive) bound the timestamp in Unix ms;
        ``limit=None`` returns every match.
        """
        return list(self.iter_logs(op_name=op_name, request_id=request_id, status=status,
                                   since=since, until=until, limit=limit,
                                   newest_first=newest_first))

    def iter_logs(
        self,
        *,
        op_name: str | None = None,
        request_id: str | None = None,
        status: LogStatus | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> Iterator[TransactionLog]:
        """Like :meth:`query`, streaming: reads the journal in chunks, never all at once.

        Arguments are validated when called, before the first entry is read.
        """
        storage = self._live()
        if op_name is not None:
            check_op_name(op_name)
        rid = None if request_id is None else check_text("request_id", request_id, MAX_REQUEST_ID_BYTES)
        if status is not None and not isinstance(status, LogStatus):
            raise InvalidTypeError(f"status must be a LogStatus, got {type(status).__name__} {status!r:.80}")
        if since is not None:
            check_timestamp(since)
        if until is not None:
            check_timestamp(until)
        if limit is not None:
            check_limit(limit)
        flt = EntryFilter(since=since, until=until, request_id=rid)
        return self._iter(storage, flt, op_name, status, limit, newest_first)

    def _iter(
        self,
        storage: Storage,
        flt: EntryFilter,
        op_name: str | None,
        status: LogStatus | None,
        limit: int | None,
        newest_first: bool,
    ) -> Iterator[TransactionLog]:
        remaining = limit
        after: bytes | None = None
        filtered = op_name is not None or status is not None
        while remaining is None or remaining > 0:
            chunk = _SCAN_CHUNK if remaining is None or filtered else min(remaining, _SCAN_CHUNK)
            rows = storage.scan(flt, newest_first=newest_first, after=after, limit=chunk)
            for position, raw in rows:
                log = self._decode(position, raw)
                if (op_name is not None and log.op_name != op_name) or (
                    status is not None and log.status is not status
                ):
                    continue
                yield log
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def _decode(self, position: bytes, raw: bytes) -> TransactionLog:
        try:
            return decode_log(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStorageError(
                f"storage at {self.path}: entry {position.decode('utf-8', 'replace')!r} is not a "
                f"valid TransactionLog ({exc})", self.path) from exc


def _encode_entry(log: TransactionLog) -> tuple[int, bytes, bytes]:
    if not isinstance(log, TransactionLog):
        raise InvalidTypeError(f"log must be a TransactionLog, got {type(log).__name__} {log!r:.80}")
    return (log.timestamp, log.request_id.encode("utf-8"), encode_log(log))

