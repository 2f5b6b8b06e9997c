"""SovereignJournal: the persistent transaction journal and its atomic, persistent op counters."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType

from .._errors import (
    ClosedError,
    InvalidTypeError,
    StorageError,
    ValidationError,
)
from .._model import (
    MAX_REQUEST_ID_BYTES,
    LogStatus,
    TransactionLog,
    check_limit,
    check_op_name,
    check_text,
    encode_log,
    make_log,
)
from .._policy import FlushPolicy
from .._time import TimeLike, parse_time
from ..archive import ArchiveReader, ArchiveVerifyReport, RetentionPolicy
from ..storage import Progress, Query, Storage, VerifyReport, WriteRequest, open_storage
from . import _fork
from ._archived import _SCAN_CHUNK, EntryCounts, _ArchiveMethods, check_history
from ._args import _sequence, _statuses
from ._commit import _GroupCommit, _Syncer
from ._summary import Summary, SummaryRow, _SummaryMethods
from ._tree import _TreeMethods

__all__ = ["CLEAR_OP", "DEFAULT_STORAGE", "EntryCounts", "JournalVerifyReport", "SovereignJournal", "Summary",
           "SummaryRow"]

DEFAULT_STORAGE = os.path.join(".krepis", "storage")

#: The op name of the entry :meth:`SovereignJournal.clear_all` leaves as the new log's first.
CLEAR_OP = "journal_cleared"


@dataclasses.dataclass(frozen=True, slots=True)
class JournalVerifyReport(VerifyReport):
    """What :meth:`SovereignJournal.verify` checked: ``entries`` in the store (with their index
    rows and the Merkle tree: ``tree_size`` leaves, head ``root``) and ``archived`` entries of
    the current log in the archive, whose whole check (every log in it) is ``archive``."""

    archived: int = 0
    archive: ArchiveVerifyReport | None = None


class SovereignJournal(_TreeMethods, _ArchiveMethods, _SummaryMethods):
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

    ``retention`` (a :class:`~krepis.RetentionPolicy` or its text, e.g. ``"keep-days:30"``;
    ``None`` reads ``KREPIS_RETENTION``; ``"off"`` none) archives the oldest entries into
    ``archive`` (a directory; ``None`` reads ``KREPIS_ARCHIVE``, else the archive the store
    records) in a background thread, as :meth:`archive` does.

    **The whole history.** Every read — :meth:`query`, :meth:`iter_logs`, :meth:`entry`,
    :meth:`journal_count`, :meth:`summary`, :meth:`verify`, proofs and tiles — covers the
    current log's entries live and archived: archived ones come from the archive directory the
    store records (or ``archive=`` given to the journal or to the call, which overrides it).
    A read that needs archived entries it cannot have — no archive recorded, the directory
    missing, moved or of another store — raises :class:`StorageError` naming the directory;
    it never returns a shorter history. ``live_only=True`` narrows a read to the live store.

    Opening is O(1) in the number of entries. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORAGE,
        *,
        flush: str | FlushPolicy | None = None,
        create: bool = True,
        retention: str | RetentionPolicy | None = None,
        archive: str | os.PathLike[str] | None = None,
    ) -> None:
        self._closed = True  # until fully open
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        if not os.fspath(path):
            raise StorageError("storage path must not be empty", "")
        self._policy = FlushPolicy.parse(flush)
        self._retention_policy, self._archive_dir = _retention(retention, archive)
        self._retention: object = None
        self._log_first = -1  # a first seq of the current log seen before (see _archived_span)
        self._readers: dict[tuple[str, int, int], ArchiveReader] = {}
        self._readers_lock = threading.Lock()
        # A policy without a directory takes the one the store records: a store that does not
        # exist yet records none, so it is not made only to refuse the policy.
        needs_record = self._retention_policy is not None and self._archive_dir is None
        try:
            self._storage: Storage = open_storage(path, durable=self._policy.durable,
                                                  create=create and not needs_record)
        except StorageError as exc:
            if needs_record and str(exc).startswith("there is no krepis"):
                raise ValidationError(f"retention policy {self._retention_policy} needs an archive "
                                      f"directory: pass archive=DIR or set KREPIS_ARCHIVE ({exc}, so it "
                                      "records none)") from None
            raise
        self._syncer: _Syncer | None = None
        if self._policy.interval_ms is not None:
            self._syncer = _Syncer(self._storage, self._policy.interval_ms)
        self._commit = _GroupCommit(self._storage, self._syncer.mark_dirty if self._syncer else None)
        self._generation = _fork.generation()
        self._closed = False
        if self._retention_policy is not None:
            from ._retention import RetentionThread

            directory = self._archive_dir or self._storage.get_setting("archive")
            if directory is None:
                self.close()
                raise ValidationError(f"retention policy {self._retention_policy} needs an archive "
                                      "directory: pass archive=DIR or set KREPIS_ARCHIVE (the store at "
                                      f"{self.path} records none yet)")
            self._retention = RetentionThread(self, self._retention_policy, directory)

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
        if self._retention is not None and self._generation == _fork.generation():
            self._retention.stop()  # type: ignore[attr-defined]  # (a run in progress ends first)
            self._retention = None
        self._closed = True
        if self._generation != _fork.generation():
            return  # the parent's store, threads and connections: nothing here to release
        try:
            self._close_readers()
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
        if self._generation != _fork.generation():
            raise _fork.forked_error(self.path)
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
    def _write(
        self, entries: Sequence[tuple[TransactionLog, bytes]], increments: Sequence[bytes]
    ) -> list[int]:
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
        """Remove every entry and counter, durably under every policy. The journal stays usable.

        An audit trail keeps a trace: in the same transaction, the new (otherwise empty) log gets
        one entry, op :data:`CLEAR_OP` (``journal_cleared``), ``Completed``, whose request id
        says how many entries and counters were removed (``cleared 305 entries, 9 counters``).
        Sequence numbers keep counting; the Merkle log starts again (see ``tree_head().epoch``).
        """
        storage = self._live()

        def trace(entries: int, counters: int, epoch: int) -> TransactionLog:
            return TransactionLog.now(CLEAR_OP, f"cleared {entries} entries, {counters} counters "
                                                f"(log {epoch - 1} ended, log {epoch} begins)",
                                      LogStatus.Completed)

        storage.clear(trace)
        if not self._policy.durable:
            storage.sync()

    # -- reads -----------------------------------------------------------------------------
    def recover_op_count(self, op_name: str) -> int:
        """The stored value of ``op_count:{op_name}``; 0 when it was never counted."""
        return self._live().get_count(check_op_name(op_name))

    def op_counts(self) -> dict[str, int]:
        """Every counter, by op name."""
        return self._live().get_counts()

    def journal_count(self, *, live_only: bool = False) -> int:
        """How many entries the current log holds — live and archived (see
        :meth:`entry_counts`); ``live_only=True``: in the store alone. O(1): read from the
        engine's records, no scan, the archive not read."""
        check_history(None, live_only)
        storage = self._live()
        if live_only:
            return storage.entry_count()
        while True:  # (an archive run between the reads: count again)
            first, live_first, _head = self._archived_span(storage)
            count = storage.entry_count()
            if storage.live_first_seq() == live_first:
                return count + live_first - first

    def get_recent_logs(self, limit: int) -> list[TransactionLog]:
        """The ``limit`` newest entries, newest first (by numeric timestamp, then arrival)."""
        return self.query(limit=check_limit(limit))

    def entry(self, seq: int, *, archive: str | os.PathLike[str] | None = None,
              live_only: bool = False) -> TransactionLog:
        """The entry with store-wide sequence number ``seq`` (O(log n)); an archived one of the
        current log from the journal's archive, or ``archive`` (one bundle decompressed).

        Raises :class:`LookupError` (a ``KeyError``) when there is none: never written, removed
        by :meth:`clear_all`, or archived and ``live_only=True``.
        """
        if type(seq) is not int:
            raise InvalidTypeError(f"seq must be an int, got {type(seq).__name__} {seq!r:.80}")
        check_history(archive, live_only)
        storage = self._live()
        log = storage.get_entry(seq)
        if log is None and not live_only and 0 <= seq < storage.live_first_seq():
            reader = self._history_reader(storage, archive, live_only)
            if reader is not None:
                log = reader.get(seq)
        if log is None:
            raise KeyError(f"the journal at {self.path} has no entry with seq {seq}")
        return log

    def next_seq(self) -> int:
        """The sequence number the next appended entry will get (entries ever appended, O(1))."""
        return self._live().next_seq()

    def verify(self, *, archive: str | os.PathLike[str] | None = None,
               live_only: bool = False, progress: Progress | None = None) -> JournalVerifyReport:
        """Check the whole history: the store — every entry decodes, sequence numbers have no
        gap, the Merkle tree recomputed from the entries matches the stored one, every index
        holds exactly one row per entry — and, when entries of the current log are archived,
        the archive (:meth:`verify_archive`: every file against its checksum, every bundle
        against the tree's stored hash). Raises :class:`CorruptStorageError` naming the first
        entry (or file) found wrong; returns what was checked (``entries`` in the store,
        ``archived`` in the archive). ``live_only=True`` checks the store alone. Reads
        everything once: O(n).

        ``progress(entries, total)`` is called as the check goes: with 0 before the store is
        checked (the storage port reports nothing while it checks), with the store's entries once
        it is, then after each archived bundle; ``total`` counts the live and archived entries
        (those of earlier logs in the archive too, once its check begins)."""
        check_history(archive, live_only)
        storage = self._live()
        report_progress = (lambda _done, _total: None) if progress is None else progress
        if progress is not None:
            due = 0 if live_only else max(0, storage.live_first_seq() - storage.tree_head().first_seq)
            progress(0, storage.entry_count() + due)
        report = storage.verify()
        checked = None
        archived = 0
        reader = None if live_only else self._history_reader(storage, archive, False)
        if reader is not None:
            head = storage.tree_head()
            archived = max(0, storage.live_first_seq() - head.first_seq)
        total = report.entries + archived
        report_progress(report.entries, total)
        if reader is not None:
            checked = self.verify_archive(
                reader.directory,
                progress=lambda done, due: report_progress(report.entries + done, report.entries + due))
        return JournalVerifyReport(report.entries, report.tree_size, report.root, report.tree_nodes,
                                   archived, checked)

    def op_names(self) -> list[str]:
        """Every op name the journal has entries for (including ones since cleared), sorted."""
        return self._live().op_names()

    def query(
        self,
        *,
        op_name: str | Sequence[str] | None = None,
        request_id: str | None = None,
        status: LogStatus | str | Sequence[LogStatus | str] | None = None,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        order: str = "time",
        after: TransactionLog | int | None = None,
        archive: str | os.PathLike[str] | None = None,
        live_only: bool = False,
    ) -> list[TransactionLog]:
        """Entries matching every given filter, newest first unless ``newest_first=False``.

        * ``op_name`` and ``status`` take one value or a sequence of them (any of them matches);
          a status may be given as a :class:`LogStatus` or its name, in any letter case.
        * ``since`` (inclusive) and ``until`` (exclusive) bound the timestamp: Unix ms, a
          ``datetime``, or text such as ISO-8601 or ``"2 hours ago"`` (see ``parse_time``).
        * ``limit=None`` returns every match.
        * ``order="time"`` (default) sorts by (timestamp, seq) and uses an index for every
          filter and combination: O(log n + results). ``order="append"`` sorts by ``seq`` (the
          order entries were appended) and checks filters entry by entry — for following and
          exporting.
        * ``after`` resumes past an entry: a :class:`TransactionLog` returned earlier (its
          ``seq`` and ``timestamp`` are the cursor) or, a sequence number.

        * The archived entries of the current log are included, with the same filters and order:
          each entry exactly once (archived seqs below the store's live first seq come from the
          archive, the rest from the store) — from the journal's archive, or ``archive`` (a
          directory written by :meth:`archive`), which overrides it. ``live_only=True`` reads
          the live store alone. A request-id lookup reads the archive's per-segment index and
          only the bundles it names; other filters decompress the archived bundles in the time
          range, and only once the merge reaches them.

        Every returned entry has its ``seq`` set.
        """
        out: list[TransactionLog] = []
        for logs in self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                                 until=until, limit=limit, newest_first=newest_first, order=order,
                                 after=after, archive=archive, live_only=live_only):
            out += logs
        return out

    def iter_logs(
        self,
        *,
        op_name: str | Sequence[str] | None = None,
        request_id: str | None = None,
        status: LogStatus | str | Sequence[LogStatus | str] | None = None,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        order: str = "time",
        after: TransactionLog | int | None = None,
        archive: str | os.PathLike[str] | None = None,
        live_only: bool = False,
    ) -> Iterator[TransactionLog]:
        """Like :meth:`query`, streaming: reads the journal in chunks, never all at once.

        Arguments are validated when called, before the first entry is read.
        """
        chunks = self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                              until=until, limit=limit, newest_first=newest_first, order=order,
                              after=after, archive=archive, live_only=live_only)
        return (log for logs in chunks for log in logs)

    def _chunks(
        self,
        *,
        op_name: str | Sequence[str] | None,
        request_id: str | None,
        status: LogStatus | str | Sequence[LogStatus | str] | None,
        since: TimeLike | None,
        until: TimeLike | None,
        limit: int | None,
        newest_first: bool,
        order: str,
        after: TransactionLog | int | None,
        archive: str | os.PathLike[str] | None = None,
        live_only: bool = False,
    ) -> Iterator[list[TransactionLog]]:
        """Validate the arguments now; return a generator of matching entries, a chunk at a time."""
        storage = self._live()
        ops: tuple[str, ...] | None = None
        if op_name is not None:
            names = (op_name,) if isinstance(op_name, str) else tuple(_sequence("op_name", op_name))
            for name in names:
                check_op_name(name)
            ops = tuple(dict.fromkeys(names))
        if request_id is not None:
            check_text("request_id", request_id, MAX_REQUEST_ID_BYTES)
        statuses = None if status is None else _statuses(status)
        since = None if since is None else parse_time(since, param="since")  # int, datetime, ISO …
        until = None if until is None else parse_time(until, param="until")
        if limit is not None:
            check_limit(limit)
        if type(newest_first) is not bool:
            raise InvalidTypeError(f"newest_first must be a bool, got {type(newest_first).__name__}")
        if order not in ("time", "append"):
            raise ValidationError(f"order must be 'time' or 'append', got {order!r:.80}")
        reader = self._history_reader(storage, archive, live_only)
        start = self._cursor(storage, after, order, reader)
        query = Query(since=since, until=until, request_id=request_id, op_names=ops,
                      statuses=statuses, newest_first=newest_first,
                      order="append" if order == "append" else "time")
        if ops == () or statuses == ():
            return iter(())  # an empty either-of list matches nothing
        if reader is not None:
            return self._iter_archived(storage, reader, query, limit, start)
        return self._iter(storage, query, limit, start)

    def _cursor(
        self, storage: Storage, after: TransactionLog | int | None, order: str,
        reader: ArchiveReader | None = None,
    ) -> TransactionLog | None:
        if after is None:
            return None
        if isinstance(after, TransactionLog):
            if after.seq is None:
                raise ValidationError("after must be an entry read from a journal (its seq is None)")
            return after
        if type(after) is not int:
            raise InvalidTypeError(
                f"after must be a TransactionLog or a sequence number, got {type(after).__name__}")
        if after < 0:
            raise ValidationError(f"after must be a sequence number >= 0, got {after}")
        if order == "append":
            return make_log(0, "-", "-", LogStatus.Completed, None, None, after)
        found = storage.get_entry(after)
        if found is None and reader is not None and after < storage.live_first_seq():
            found = reader.get(after)
        if found is None:
            raise ValidationError(
                f"after={after}: the journal at {self.path} has no entry with that seq; in time "
                "order the cursor must be an existing entry")
        return found

    def _iter(
        self, storage: Storage, query: Query, limit: int | None, after: TransactionLog | None
    ) -> Iterator[list[TransactionLog]]:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = _SCAN_CHUNK if remaining is None else min(remaining, _SCAN_CHUNK)
            logs = storage.scan(query, after=after, limit=chunk)
            if remaining is not None:
                remaining -= len(logs)
            yield logs
            if len(logs) < chunk:
                return
            after = logs[-1]

#: The longest canonical form an entry may have: a C2SP entry bundle stores its length in 16 bits.
MAX_ENTRY_BYTES = 65535

def _encode_entry(log: TransactionLog) -> tuple[TransactionLog, bytes]:
    if not isinstance(log, TransactionLog):
        raise InvalidTypeError(f"log must be a TransactionLog, got {type(log).__name__} {log!r:.80}")
    canonical = encode_log(log)
    if len(canonical) > MAX_ENTRY_BYTES:
        raise ValidationError(
            f"the entry's canonical JSON is {len(canonical)} bytes; the limit is {MAX_ENTRY_BYTES} "
            "(a transparency-log entry bundle's): shorten the error text (control characters are "
            "escaped as 6 bytes each)")
    return (log, canonical)

def _retention(
    retention: object, archive: str | os.PathLike[str] | None
) -> tuple[RetentionPolicy | None, str | None]:
    """The retention policy (``None``: ``KREPIS_RETENTION``; ``"off"``: none) and the archive
    directory, absolute (``None``: ``KREPIS_ARCHIVE`` under a policy, else the one the store
    records, looked up once it is open), checked before anything is opened."""
    from ..archive import RetentionPolicy
    from ._archived import _directory

    source = ""
    if retention is None:
        retention = os.environ.get("KREPIS_RETENTION") or None
        source = " (from KREPIS_RETENTION)"
    directory = None if archive is None else _directory(archive, "archive")
    if retention is None or (isinstance(retention, str) and retention.strip() == "off"):
        return None, directory
    policy = RetentionPolicy.parse(retention, source)  # type: ignore[arg-type]
    if directory is None and os.environ.get("KREPIS_ARCHIVE"):
        directory = _directory(os.environ["KREPIS_ARCHIVE"], "KREPIS_ARCHIVE")
    if directory is not None and os.path.lexists(directory) and not os.path.isdir(directory):
        raise ValidationError(f"the archive directory {directory} exists and is not a directory")
    return policy, directory
