"""SovereignJournal: the persistent transaction journal and its atomic, persistent op counters."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from ._errors import ClosedError, CorruptStorageError, InvalidTypeError, StorageError
from ._model import (
    MAX_REQUEST_ID_BYTES,
    LogStatus,
    TransactionLog,
    check_limit,
    check_op_name,
    check_text,
    decode_log,
    decode_logs,
    encode_log,
)
from ._policy import FlushPolicy
from ._storage import EntryFilter, Storage, WriteRequest, open_storage
from ._time import parse_time

__all__ = ["DEFAULT_STORAGE", "SovereignJournal"]

DEFAULT_STORAGE = os.path.join(".krepis", "storage")
_SCAN_CHUNK = 512
_GATHER_YIELDS = 3


class _Pending:
    """A write waiting for a commit; filled in by whichever thread leads that commit."""

    __slots__ = ("done", "error", "lead", "request", "result", "wakeup")

    def __init__(self, request: WriteRequest) -> None:
        self.request = request
        self.result: list[int] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # set when the waiter is handed leadership instead of a result
        self.wakeup: threading.Lock | None = None  # held while its owner sleeps


class _GroupCommit:
    """Leader/follower group commit with hand-off.

    A caller queues its request. If no commit is running it becomes the leader: it takes every
    queued request and applies them in ONE storage transaction, wakes exactly the callers that
    transaction served, and hands leadership to a caller still queued (if any) before returning.
    Callers arriving during a commit sleep on their own lock — no thundering herd — and are
    served together by the next leader. Nobody returns before the transaction holding its own
    request has committed.
    """

    def __init__(self, storage: Storage, on_commit: Callable[[], None] | None = None) -> None:
        self._storage = storage
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leading = False
        self._last_batch = 1

    def submit(self, request: WriteRequest) -> list[int]:
        item = _Pending(request)
        self.run([item])
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def run(self, items: list[_Pending]) -> None:
        """Commit ``items`` (with whatever else is queued); return when all of them are done."""
        last = items[-1]  # items enter the queue together, so one transaction takes them all
        batch: list[_Pending] | None = None
        with self._lock:
            self._queue.extend(items)
            lead = not self._leading
            if lead:
                self._leading = True
                if self._last_batch <= 1:  # a lone writer takes the queue at once
                    batch, self._queue = self._queue, []
            else:
                wakeup = last.wakeup = threading.Lock()
                wakeup.acquire()
        if not lead:
            wakeup.acquire()  # released by a leader: either we are done, or we lead now
            if last.done:
                return
            assert last.lead
        while True:
            if batch is None:
                # Callers served by the previous commit are often still on their way back
                # (they need the GIL). When it served many, yield a moment so this commit can
                # take them too, instead of committing almost alone.
                for _ in range(_GATHER_YIELDS):
                    if len(self._queue) * 2 > self._last_batch:
                        break
                    time.sleep(0)
                with self._lock:
                    batch, self._queue = self._queue, []
            self._last_batch = len(batch)
            self._apply(batch)
            for pending in batch:
                pending.done = True
                if pending.wakeup is not None and pending is not last:
                    pending.wakeup.release()
            if last.done:
                break
            batch = None
        with self._lock:  # hand leadership over, or give it up
            if self._queue:
                successor = self._queue[-1]  # the last item of a run, whose owner is asleep
                successor.lead = True
                assert successor.wakeup is not None
                successor.wakeup.release()
            else:
                self._leading = False

    def _apply(self, batch: list[_Pending]) -> None:
        try:
            results = self._storage.write_batch([p.request for p in batch])
        except BaseException as exc:  # every waiter of this transaction learns it failed
            for pending in batch:
                pending.error = exc
            return
        if self._on_commit is not None:
            self._on_commit()
        for pending, result in zip(batch, results, strict=True):
            pending.result = result


class _Syncer:
    """Background durability for ``interval`` policies: syncs within N ms of a commit."""

    def __init__(self, storage: Storage, interval_ms: int) -> None:
        self._storage = storage
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self._dirty = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"krepis-sync:{storage.location}",
                                        daemon=True)
        self._thread.start()

    def mark_dirty(self) -> None:
        self._dirty = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._dirty:
                self._dirty = False  # a commit landing during sync() sets it again
                try:
                    self._storage.sync()
                except BaseException as exc:
                    self.error = exc
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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

    With ``flush="interval:Nms"`` a call returns once its transaction is committed to the engine
    (safe against a crash of the process) and a background sync makes it durable within N ms;
    see :class:`FlushPolicy`. ``flush=None`` reads ``KREPIS_FLUSH``, else uses ``"sync"``.
    ``create=False`` raises :class:`StorageError` instead of starting a new, empty store.

    Opening is O(1) in the number of entries. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORAGE,
        *,
        flush: str | FlushPolicy | None = None,
        create: bool = True,
    ) -> None:
        self._closed = True  # until fully open
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not os.fspath(path):
            raise StorageError("storage path must not be empty", "")
        self._policy = FlushPolicy.parse(flush)
        self._storage: Storage = open_storage(path, durable=self._policy.durable, create=create)
        self._syncer: _Syncer | None = None
        if self._policy.interval_ms is not None:
            self._syncer = _Syncer(self._storage, self._policy.interval_ms)
        self._commit = _GroupCommit(self._storage, self._syncer.mark_dirty if self._syncer else None)
        self._closed = False

    @property
    def policy(self) -> FlushPolicy:
        """The flush policy in force."""
        return self._policy

    @property
    def path(self) -> str:
        """The storage location: an absolute directory, or a PostgreSQL URL without its password."""
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
        try:
            if self._syncer is not None:
                self._syncer.stop()
                self._storage.sync()
                self._check_syncer()
        finally:
            self._storage.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _live(self) -> Storage:
        if self._closed:
            raise ClosedError(f"the journal at {self.path} is closed")
        return self._storage

    def _check_syncer(self) -> None:
        if self._syncer is not None and self._syncer.error is not None:
            exc = self._syncer.error
            raise StorageError(f"background sync of {self.path} failed: {exc}", self.path) from exc

    def flush(self) -> None:
        """Make every committed write durable now (a no-op cost under ``sync``, where it already is)."""
        storage = self._live()
        self._check_syncer()
        storage.sync()

    def __repr__(self) -> str:
        if not hasattr(self, "_storage"):
            return "<SovereignJournal (not opened)>"
        state = "closed" if self._closed else "open"
        return f"<SovereignJournal {self.path!r} flush={self._policy} {state}>"

    # -- writes ----------------------------------------------------------------------------
    def _write(self, entries: Sequence[tuple[int, bytes, bytes]], increments: Sequence[bytes]) -> list[int]:
        self._live()
        if self._syncer is not None:
            self._check_syncer()
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
        """Remove every entry and counter, durably under every policy. The journal stays usable."""
        storage = self._live()
        storage.clear()
        if not self._policy.durable:
            storage.sync()

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
        out: list[TransactionLog] = []
        for logs in self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                                 until=until, limit=limit, newest_first=newest_first):
            out += logs
        return out

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
        chunks = self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                              until=until, limit=limit, newest_first=newest_first)
        return (log for logs in chunks for log in logs)

    def _chunks(
        self,
        *,
        op_name: str | None,
        request_id: str | None,
        status: LogStatus | None,
        since: int | None,
        until: int | None,
        limit: int | None,
        newest_first: bool,
    ) -> Iterator[list[TransactionLog]]:
        """Validate the filters now; return a generator of matching entries, a chunk at a time."""
        storage = self._live()
        if op_name is not None:
            check_op_name(op_name)
        rid = None if request_id is None else check_text("request_id", request_id, MAX_REQUEST_ID_BYTES)
        if status is not None and not isinstance(status, LogStatus):
            raise InvalidTypeError(f"status must be a LogStatus, got {type(status).__name__} {status!r:.80}")
        since = None if since is None else parse_time(since, param="since")  # int, datetime, ISO …
        until = None if until is None else parse_time(until, param="until")
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
    ) -> Iterator[list[TransactionLog]]:
        remaining = limit
        after: bytes | None = None
        filtered = op_name is not None or status is not None
        while remaining is None or remaining > 0:
            chunk = _SCAN_CHUNK if remaining is None or filtered else min(remaining, _SCAN_CHUNK)
            rows = storage.scan(flt, newest_first=newest_first, after=after, limit=chunk)
            logs = self._decode(rows)
            if filtered:
                logs = [log for log in logs if (op_name is None or log.op_name == op_name)
                        and (status is None or log.status is status)]
            if remaining is not None:
                logs = logs[:remaining]
                remaining -= len(logs)
            yield logs
            if len(rows) < chunk:
                return
            after = rows[-1][0]

    def _decode(self, rows: list[tuple[bytes, bytes]]) -> list[TransactionLog]:
        try:
            return decode_logs([raw for _, raw in rows])
        except (ValueError, KeyError, TypeError):
            pass
        for position, raw in rows:  # find the culprit to name it
            try:
                decode_log(raw)
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptStorageError(
                    f"storage at {self.path}: entry {position.decode('utf-8', 'replace')!r} is not "
                    f"a valid TransactionLog ({exc})", self.path) from exc
        raise CorruptStorageError(f"storage at {self.path}: unreadable journal entries", self.path)


def _encode_entry(log: TransactionLog) -> tuple[int, bytes, bytes]:
    if not isinstance(log, TransactionLog):
        raise InvalidTypeError(f"log must be a TransactionLog, got {type(log).__name__} {log!r:.80}")
    return (log.timestamp, log.request_id.encode("utf-8"), encode_log(log))

