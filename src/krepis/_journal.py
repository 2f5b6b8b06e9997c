"""SovereignJournal: the persistent transaction journal and its atomic, persistent op counters."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from ._errors import (
    ClosedError,
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    StorageError,
    ValidationError,
)
from ._model import (
    MAX_REQUEST_ID_BYTES,
    LogStatus,
    TransactionLog,
    check_limit,
    check_op_name,
    check_text,
    encode_log,
    make_log,
)
from ._policy import FlushPolicy
from ._time import TimeLike, parse_time
from .storage import Query, Storage, TreeHead, VerifyReport, WriteRequest, open_storage
from .tlog._note import Checkpoint, Signer, format_checkpoint, parse_checkpoint, sign_note
from .tlog._reader import ConsistencyProof, InclusionProof, TreeReader

if TYPE_CHECKING:
    from .archive import ArchiveReader, ArchiveReport, ArchiveVerifyReport, RetentionPolicy

__all__ = ["CLEAR_OP", "DEFAULT_STORAGE", "SovereignJournal"]

DEFAULT_STORAGE = os.path.join(".krepis", "storage")
#: The op name of the entry :meth:`SovereignJournal.clear_all` leaves as the new log's first.
CLEAR_OP = "journal_cleared"
_SCAN_CHUNK = 512
_GATHER_YIELDS = 3

# Fork detection: a child inherits a journal's threads' state (a commit leader that no longer
# exists, locks held by vanished threads) but not the threads, so it must not use the journal.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked(path: str) -> ClosedError:
    return ClosedError(f"the journal at {path} was opened in a parent process; open a new one "
                       "after fork()")


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

    ``retention`` (a :class:`~krepis.RetentionPolicy` or its text, e.g. ``"keep-days:30"``;
    ``None`` reads ``KREPIS_RETENTION``; ``"off"`` none) archives the oldest entries into
    ``archive`` (a directory; ``None`` reads ``KREPIS_ARCHIVE``) in a background thread, as
    :meth:`archive` does.

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
        self._storage: Storage = open_storage(path, durable=self._policy.durable, create=create)
        self._syncer: _Syncer | None = None
        if self._policy.interval_ms is not None:
            self._syncer = _Syncer(self._storage, self._policy.interval_ms)
        self._commit = _GroupCommit(self._storage, self._syncer.mark_dirty if self._syncer else None)
        self._generation = _fork_generation
        self._closed = False
        if self._retention_policy is not None:
            from ._retention import RetentionThread

            assert self._archive_dir is not None
            self._retention = RetentionThread(self, self._retention_policy, self._archive_dir)

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
        if self._retention is not None and self._generation == _fork_generation:
            self._retention.stop()  # type: ignore[attr-defined]  # (a run in progress ends first)
            self._retention = None
        self._closed = True
        if self._generation != _fork_generation:
            return  # the parent's store, threads and connections: nothing here to release
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
        if self._generation != _fork_generation:
            raise _forked(self.path)
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

    def journal_count(self) -> int:
        """How many entries the journal holds (O(1): read from the engine, no scan)."""
        return self._live().entry_count()

    def get_recent_logs(self, limit: int) -> list[TransactionLog]:
        """The ``limit`` newest entries, newest first (by numeric timestamp, then arrival)."""
        return self.query(limit=check_limit(limit))

    def entry(self, seq: int, *, archive: str | os.PathLike[str] | None = None) -> TransactionLog:
        """The entry with store-wide sequence number ``seq`` (O(log n)); an archived one of the
        current log from ``archive`` (one bundle decompressed).

        Raises :class:`LookupError` (a ``KeyError``) when there is none: never written, removed
        by :meth:`clear_all`, or archived (and no ``archive`` given).
        """
        if type(seq) is not int:
            raise InvalidTypeError(f"seq must be an int, got {type(seq).__name__} {seq!r:.80}")
        storage = self._live()
        log = storage.get_entry(seq)
        if log is None and archive is not None and seq < storage.live_first_seq():
            log = self._archive_reader(storage, archive).get(seq)
        if log is None:
            raise KeyError(f"the journal at {self.path} has no entry with seq {seq}")
        return log

    def next_seq(self) -> int:
        """The sequence number the next appended entry will get (entries ever appended, O(1))."""
        return self._live().next_seq()

    def tree_head(self) -> TreeHead:
        """The RFC 6962 Merkle tree head over the entries in append order since the last clear."""
        return self._live().tree_head()

    def _tree_reader(self, storage: Storage, archive: str | os.PathLike[str] | None) -> TreeReader:
        head = storage.tree_head()
        if archive is None:
            return TreeReader(storage, head)
        return TreeReader(storage, head, self._archive_reader(storage, archive, head).leaf_data)

    def tree_root(self, size: int | None = None, *, archive: str | os.PathLike[str] | None = None) -> bytes:
        """The RFC 6962 tree head of the first ``size`` leaves of the current log (default: all).
        Any earlier size costs O(log n) reads. A size inside the archived prefix that is not a
        multiple of 256 needs the ``archive``."""
        storage = self._live()
        reader = self._tree_reader(storage, archive)
        return reader.root(reader.head.size if size is None else size)

    def inclusion_proof(self, seq: int, *, tree_size: int | None = None,
                        archive: str | os.PathLike[str] | None = None) -> InclusionProof:
        """Proof that entry ``seq`` is in the tree of ``tree_size`` leaves (default: the current
        tree). Verify it with :func:`krepis.tlog.verify_inclusion`; O(log n) reads. An archived
        entry's proof reads its bundle from ``archive``."""
        if type(seq) is not int:
            raise InvalidTypeError(f"seq must be an int, got {type(seq).__name__} {seq!r:.80}")
        storage = self._live()
        reader = self._tree_reader(storage, archive)
        return reader.inclusion(seq, reader.head.size if tree_size is None else tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None, *,
                          archive: str | os.PathLike[str] | None = None) -> ConsistencyProof:
        """Proof that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``
        leaves (default: the current tree). Verify it with
        :func:`krepis.tlog.verify_consistency`; O(log n) reads (a size inside the archived
        prefix that is not a multiple of 256 reads one bundle from ``archive``)."""
        storage = self._live()
        reader = self._tree_reader(storage, archive)
        return reader.consistency(old_size, reader.head.size if new_size is None else new_size)

    def sign_checkpoint(self, signer: Signer | str) -> str:
        """Sign a C2SP checkpoint of the current tree with ``signer`` (a :class:`Signer`, or its
        ``PRIVATE+KEY+…`` text), keep it in the store and return the signed note.

        The origin line is the key's name. A clear ends a log: a key (origin) that signed a
        checkpoint of an earlier log is refused for the new one, so two checkpoints under one
        origin are always consistent with each other."""
        key = Signer.parse(signer) if isinstance(signer, str) else signer
        if not isinstance(key, Signer):
            raise InvalidTypeError(f"signer must be a Signer or its text, got {type(signer).__name__}")
        storage = self._live()
        head = storage.tree_head()
        note = sign_note(format_checkpoint(Checkpoint(key.name, head.size, head.root)), key)
        storage.add_checkpoint(head.epoch, head.size, key.name, note)
        return note

    def latest_checkpoint(self) -> str | None:
        """The signed note of the largest checkpoint kept for the current log, or ``None``."""
        storage = self._live()
        epoch = storage.tree_head().epoch
        mine = [(size, note) for e, size, _origin, note in storage.checkpoints() if e == epoch]
        return max(mine)[1] if mine else None

    def tile_sources(
        self, archive: str | os.PathLike[str] | None = None
    ) -> tuple[TreeReader, Callable[[int, int], list[bytes]]]:
        """What a tile server or exporter reads: tree nodes, and leaf data by leaf number
        (archived leaves from ``archive``)."""
        storage = self._live()
        head = storage.tree_head()
        archived = None
        if archive is not None:
            archived = self._archive_reader(storage, archive, head)
        reader = TreeReader(storage, head, None if archived is None else archived.leaf_data)
        first = reader.head.first_seq

        def entries(start: int, count: int) -> list[bytes]:
            seq = first + start
            if seq < storage.live_first_seq():
                if archived is None:
                    raise ValidationError(
                        f"entries {seq}…{seq + count - 1} of the journal at {self.path} are archived: "
                        "pass the archive directory (archive=DIR, --archive DIR)")
                return archived.leaf_data(start, count)
            logs = self.query(order="append", newest_first=False, limit=count,
                              after=seq - 1 if seq > 0 else None)
            if [log.seq for log in logs] != list(range(seq, seq + count)):
                reader.check_same_log()  # cleared meanwhile: a JournalError, not corruption
                raise CorruptStorageError(f"storage at {self.path}: entries {seq}…{seq + count - 1} "
                                          "are not all there", self.path)
            return [encode_log(log) for log in logs]

        return reader, entries

    def export_tiles(self, directory: str | os.PathLike[str], signer: Signer | str | None = None, *,
                     archive: str | os.PathLike[str] | None = None) -> int:
        """Write the log as a static C2SP tlog-tiles tree into ``directory``: a checkpoint
        (signed now with ``signer``, else the latest kept one), hash tiles and entry bundles.
        Incremental: full tiles already there are kept. Returns how many files were written.
        Bundles of archived entries come from ``archive`` (needed only for those not exported
        before they were archived)."""
        from .tlog._tiles import export_tiles

        note = self.sign_checkpoint(signer) if signer is not None else self.latest_checkpoint()
        if note is None:
            raise ValidationError(f"the journal at {self.path} has no checkpoint of its current log "
                                  "yet: sign one (krepis checkpoint --key FILE, or pass a signer)")
        size = parse_checkpoint(note[:note.rfind("\n\n") + 1]).size
        target = os.fspath(directory)
        reader, entries = self.tile_sources(archive)
        # The directory's tiles must be of this log: the tree exported last time (recorded in the
        # marker) must be a prefix of today's — not so after a clear, or a restore from an older
        # backup, and then full tiles on disk would belong to another history.
        marker = os.path.join(target, ".krepis-log")
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                fields = dict(line.split(" ", 1) for line in f.read().splitlines() if " " in line)
            try:
                old_size, old_root = int(fields["size"]), bytes.fromhex(fields["root"])
                same = (int(fields["first_seq"]), int(fields["epoch"])) == (
                    reader.head.first_seq, reader.head.epoch) and old_size <= size \
                    and reader.root(old_size) == old_root
            except (KeyError, ValueError):
                same = False
            if not same:
                raise ValidationError(f"{target} holds the tiles of another log, or of another history "
                                      f"of this one (see {marker}); export into a new directory")
        os.makedirs(target, exist_ok=True)
        written = export_tiles(target, note, size, reader.node, entries)
        reader.check_same_log()
        with open(marker, "w", encoding="utf-8") as f:
            f.write(f"store {self.path}\nfirst_seq {reader.head.first_seq}\nepoch {reader.head.epoch}\n"
                    f"size {size}\nroot {reader.root(size).hex()}\n")
        return written

    def checkpoints(self) -> list[tuple[int, str]]:
        """Every checkpoint the store keeps as ``(epoch, signed note)``, oldest first."""
        return [(epoch, note) for epoch, _size, _origin, note in self._live().checkpoints()]

    def verify(self) -> VerifyReport:
        """Check the whole store: every entry decodes, sequence numbers have no gap, the Merkle
        tree recomputed from the entries matches the stored one, every index holds exactly one
        row per entry. Raises :class:`CorruptStorageError` naming the first entry (or range of
        entries) found wrong; returns what was checked. Reads everything once: O(n)."""
        return self._live().verify()

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

        * ``archive`` (a directory written by :meth:`archive`) includes the archived entries of
          the current log, with the same filters and order: each entry exactly once (archived
          seqs below the store's live first seq come from the archive, the rest from the store).
          A request-id lookup reads the archive's per-segment index and only the bundles it
          names; other filters decompress the archived bundles in the time range.

        Every returned entry has its ``seq`` set.
        """
        out: list[TransactionLog] = []
        for logs in self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                                 until=until, limit=limit, newest_first=newest_first, order=order,
                                 after=after, archive=archive):
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
    ) -> Iterator[TransactionLog]:
        """Like :meth:`query`, streaming: reads the journal in chunks, never all at once.

        Arguments are validated when called, before the first entry is read.
        """
        chunks = self._chunks(op_name=op_name, request_id=request_id, status=status, since=since,
                              until=until, limit=limit, newest_first=newest_first, order=order,
                              after=after, archive=archive)
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
        reader = None if archive is None else self._archive_reader(storage, archive)
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

    def _archive_reader(self, storage: Storage, directory: str | os.PathLike[str],
                        head: TreeHead | None = None) -> ArchiveReader:
        """A reader of the current log's archived bundles, refused (``ValidationError``) when
        the archive is of another store: its last bundle must be the tree's stored hash."""
        from .archive import ArchiveReader

        head = storage.tree_head() if head is None else head
        reader = ArchiveReader(directory, head.epoch, head.first_seq)
        if reader.bundles and storage.tree_node(8, reader.bundles - 1) != reader.last_hash:
            raise ValidationError(f"the archive at {reader.directory} is of another store: its bundle "
                                  f"{reader.bundles - 1} does not match this journal's Merkle tree")
        return reader

    def _iter_archived(
        self, storage: Storage, reader: ArchiveReader, query: Query, limit: int | None,
        after: TransactionLog | None,
    ) -> Iterator[list[TransactionLog]]:
        """The archive's entries (seq < the live first seq) merged with the store's."""
        import heapq

        live_first = storage.live_first_seq()
        head = storage.tree_head()
        if head.epoch != reader.epoch:
            raise JournalError(f"the journal at {self.path} was cleared while it was being read; read again")
        if reader.first_seq + reader.bundles * 256 < live_first:
            end = reader.first_seq + reader.bundles * 256
            raise ValidationError(
                f"the journal at {self.path} starts at seq {live_first}; the archive at {reader.directory} "
                f"ends at seq {end}: is it this store's archive directory?")

        def live() -> Iterator[TransactionLog]:
            for chunk in self._iter(storage, query, None, after):
                if storage.live_first_seq() != live_first:
                    raise JournalError(f"entries of the journal at {self.path} were archived while it "
                                       "was being read; read again")
                yield from chunk

        archived = reader.iterate(query, after, live_first)
        merged: Iterator[TransactionLog]
        if query.order == "append":
            merged = heapq.merge(archived, live(), key=lambda log: log.seq or 0, reverse=query.newest_first)
        else:
            merged = heapq.merge(archived, live(), key=lambda log: (log.timestamp, log.seq or 0),
                                 reverse=query.newest_first)
        remaining = limit
        chunk: list[TransactionLog] = []
        for log in merged:
            if remaining is not None:
                if remaining <= 0:
                    break
                remaining -= 1
            chunk.append(log)
            if len(chunk) >= _SCAN_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    # -- archive ---------------------------------------------------------------------------
    def archive(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        before: TimeLike | None = None,
        keep_last: int | None = None,
        keep_days: float | None = None,
    ) -> ArchiveReport:
        """Move the oldest entries of the current log, in whole bundles of 256 in append order,
        into ``directory`` (default: the journal's ``archive``) and remove them from the store.

        Exactly one selector: ``before`` (a time: every bundle whose entries are all older
        goes), ``keep_last`` (keep at least the newest N entries) or ``keep_days`` (keep entries
        younger than D days). Guarantees: each step (a segment file, then the manifest naming it)
        is durable before any entry leaves the store; a crash at any point loses no entry and
        never shows one twice in reads with ``archive=``; a rerun completes an interrupted one.
        Counters and the Merkle tree's stored hashes do not change: checkpoints and proofs keep
        working. Bad input raises ``ValueError``/``TypeError`` and changes nothing; so does an
        archive directory of another store. See ``docs/archive.md``."""
        return self._archive_step(directory, before=before, keep_last=keep_last, keep_days=keep_days)

    def _archive_step(
        self, directory: str | os.PathLike[str] | None, *, before: TimeLike | None = None,
        keep_last: int | None = None, keep_days: float | None = None, min_bundles: int = 1,
    ) -> ArchiveReport:
        from .archive import archive_store, parse_before

        cutoff, keep = parse_before(before, keep_days, keep_last)
        target = self._archive_target(directory)
        storage = self._live()
        return archive_store(storage, target, durable=self._policy.durable, before=cutoff, keep_last=keep,
                             min_bundles=min_bundles)

    def _archive_target(self, directory: str | os.PathLike[str] | None) -> str | os.PathLike[str]:
        if directory is None:
            if self._archive_dir is None:
                raise ValidationError("no archive directory: pass one, or open the journal with archive=DIR")
            return self._archive_dir
        return directory

    def verify_archive(self, directory: str | os.PathLike[str] | None = None) -> ArchiveVerifyReport:
        """Check an archive: every file against the manifest's checksum, every bundle's entries
        against its recorded hash and, for the current log, the tree's stored hash (so a bundle
        decompresses to exactly the entries the tree commits to). Raises
        :class:`CorruptStorageError` naming the file (and bundle) at fault."""
        from .archive import verify_archive

        return verify_archive(self._archive_target(directory), self._live())

    @property
    def retention(self) -> RetentionPolicy | None:
        """The background retention policy in force, or ``None``."""
        return self._retention_policy

    def live_first_seq(self) -> int:
        """The oldest sequence number the store itself still holds for the current log (entries
        before it were archived). O(1)."""
        return self._live().live_first_seq()

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


def _sequence(what: str, value: object) -> list[str]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise InvalidTypeError(f"{what} must be a str or a sequence of str, got {type(value).__name__}")


def _statuses(value: object) -> tuple[LogStatus, ...]:
    items = [value] if isinstance(value, (str, LogStatus)) else _sequence("status", value)
    out: list[LogStatus] = []
    for item in items:
        if isinstance(item, LogStatus):
            out.append(item)
        elif isinstance(item, str) and item.lower() in _STATUS_NAMES:
            out.append(_STATUS_NAMES[item.lower()])
        else:
            raise ValidationError(
                f"status must be a LogStatus or one of Started, Completed, Failed; got {item!r:.80}")
    return tuple(dict.fromkeys(out))


_STATUS_NAMES = {s.value.lower(): s for s in LogStatus}


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
    directory (``None``: ``KREPIS_ARCHIVE``), checked before anything is opened."""
    from .archive import RetentionPolicy

    source = ""
    if retention is None:
        retention = os.environ.get("KREPIS_RETENTION") or None
        source = " (from KREPIS_RETENTION)"
    if archive is not None and not isinstance(archive, (str, os.PathLike)):
        raise InvalidTypeError(f"archive must be a directory path, got {type(archive).__name__}")
    directory = os.fspath(archive) if archive is not None else None
    if retention is None or (isinstance(retention, str) and retention.strip() == "off"):
        return None, directory
    policy = RetentionPolicy.parse(retention, source)  # type: ignore[arg-type]
    if directory is None:
        directory = os.environ.get("KREPIS_ARCHIVE") or None
        if directory is None:
            raise ValidationError(f"retention policy {policy}{source} needs an archive directory: pass "
                                  "archive=DIR or set KREPIS_ARCHIVE")
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ValidationError(f"the archive directory {directory} exists and is not a directory")
    return policy, directory
