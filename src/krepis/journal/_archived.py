"""The journal's archive: moving the oldest entries out, knowing where they went, and reading
them back as if they had never moved (the archive half of :class:`~krepis.SovereignJournal`).

The store records its archive directory (the storage setting ``archive``) when it is first
archived into one; every read covers the whole history — the live store and the archive — by
default. A read that needs archived entries it cannot have (no archive recorded, the directory
missing, moved or of another store) raises a :class:`StorageError` naming the directory, never
returns a shorter history; ``live_only=True`` narrows a read to the live store.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .._errors import (
    InvalidTypeError,
    JournalError,
    StorageError,
    ValidationError,
)
from .._model import (
    TransactionLog,
)
from .._policy import FlushPolicy
from .._time import TimeLike
from ..archive import ArchiveReader, ArchiveReport, ArchiveVerifyReport, RetentionPolicy
from ..storage import Progress, Query, Storage, TreeHead

#: entries read from the engine per scan
_SCAN_CHUNK = 512

#: the storage setting that records the archive directory
_SETTING = "archive"

#: entries per archived bundle
_WIDTH = 256

_MOVED = ("if the archive moved, record its new place: krepis archive --set-dir DIR "
          "(journal.set_archive_dir(DIR)); --live-only (live_only=True) reads the live store alone")


@dataclass(frozen=True)
class EntryCounts:
    """How many entries the journal's current log holds, and where (see
    :meth:`SovereignJournal.entry_counts`): ``live`` in the store, ``archived`` moved into the
    archive (sequence numbers ``first_seq … live_first_seq − 1``), ``total`` both. ``archive``
    is the archive directory reads use (``None``: none recorded)."""

    live: int
    archived: int
    total: int
    first_seq: int
    live_first_seq: int
    archive: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _directory(value: object, what: str = "the archive directory") -> str:
    """``value`` as an absolute path (``~`` expanded), its type and form checked."""
    if not isinstance(value, (str, os.PathLike)):
        raise InvalidTypeError(f"{what} must be a path, got {type(value).__name__}")
    raw = os.fspath(value)
    if not isinstance(raw, str):
        raise InvalidTypeError(f"{what} must be a str path, got bytes")
    if not raw:
        raise ValidationError(f"{what} must not be empty")
    if "\0" in raw:
        raise ValidationError(f"{what} must not contain NUL: {raw!r:.80}")
    return os.path.abspath(os.path.expanduser(raw))


def _same_directory(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_history(archive: object, live_only: object) -> None:
    """The rule of every read's ``archive=``/``live_only=`` pair."""
    if type(live_only) is not bool:
        raise InvalidTypeError(f"live_only must be a bool, got {type(live_only).__name__}")
    if live_only and archive is not None:
        raise ValidationError("archive= and live_only=True contradict each other: give one of them")


class _ArchiveMethods:
    """Archiving, where the archive is, and reading archived entries merged with the store's."""

    if TYPE_CHECKING:  # provided by SovereignJournal or the other mixin
        _policy: FlushPolicy
        _archive_dir: str | None
        _retention_policy: RetentionPolicy | None
        _retention: object
        _log_first: int
        _readers: dict[tuple[str, int, int], ArchiveReader]
        _readers_lock: threading.Lock

        @property
        def path(self) -> str:
            raise NotImplementedError

        def _live(self) -> Storage:
            raise NotImplementedError

        def _iter(self, storage: Storage, query: Query, limit: int | None,
                  after: TransactionLog | None) -> Iterator[list[TransactionLog]]:
            raise NotImplementedError

    # -- where the archive is ------------------------------------------------------------------
    def get_archive_dir(self) -> str | None:
        """The archive directory the store records (an absolute path), or ``None``. Recorded
        when the store is first archived into a directory (:meth:`archive`, ``krepis archive``,
        a retention policy) and changed only by :meth:`set_archive_dir`. Reads take archived
        entries from it unless given ``archive=`` (or the journal was opened with ``archive=``)."""
        return self._live().get_setting(_SETTING)

    def set_archive_dir(self, directory: str | os.PathLike[str]) -> str:
        """Record ``directory`` as the store's archive, after checking it: when entries of the
        current log are archived, it must hold them — its manifest is this store's (its last
        bundle is the tree's stored hash) and reaches the store's live first entry; a directory
        that does not exist is accepted only while nothing is archived. Returns the absolute
        path recorded. This is how an archive is moved: stop archiving, move the directory,
        record the new place (``krepis archive --set-dir DIR``). Refused (``ValueError``,
        ``StorageError``): nothing is recorded."""
        path = _directory(directory)
        storage = self._live()
        head = storage.tree_head()
        live = storage.live_first_seq()
        if os.path.lexists(path):
            reader = self._archive_reader(storage, path, head)
            try:
                newer = [log["epoch"] for log in reader.manifest["logs"] if log["epoch"] > head.epoch]
                if newer:
                    raise ValidationError(f"the archive at {path} holds log {max(newer)}, newer than the "
                                          f"store's log {head.epoch}: it is the archive of another store")
                end = reader.first_seq + reader.bundles * _WIDTH
                if end < live:
                    raise ValidationError(
                        f"the archive at {path} holds entries of the journal at {self.path} only up to "
                        f"seq {end - 1 if end > reader.first_seq else 'none'}; the store's archived "
                        f"entries run to seq {live - 1}: it is not this store's archive (or an older "
                        "copy of it)")
            finally:
                reader.close()
        elif live > head.first_seq:
            raise ValidationError(f"there is no archive at {path}, and entries {head.first_seq}…{live - 1} "
                                  f"of the journal at {self.path} are archived: record the directory "
                                  "that holds them")
        storage.set_setting(_SETTING, path)
        if self._archive_dir is not None:
            self._archive_dir = path
        if self._retention is not None:
            self._retention.directory = path  # type: ignore[attr-defined]
        return path

    def entry_counts(self) -> EntryCounts:
        """How many entries the current log holds live, archived and in all, and the archive
        directory reads use. O(1): from the store's records, without reading the archive."""
        storage = self._live()
        for _attempt in range(5):  # an archive run or a clear meanwhile: count again
            head = storage.tree_head()
            live_first = storage.live_first_seq()
            live = storage.entry_count()
            if storage.live_first_seq() == live_first and storage.tree_head().epoch == head.epoch:
                break
        archived = max(0, live_first - head.first_seq)
        return EntryCounts(live, archived, live + archived, head.first_seq, live_first,
                           self._archive_dir or storage.get_setting(_SETTING))

    def check_archive(self, archive: str | os.PathLike[str] | None = None) -> str | None:
        """Check now that reads can have every archived entry of the current log: the archive
        directory (``archive``, else the journal's) exists, its manifest is this store's and
        holds every archived entry. Light: reads the manifest, no bundle. Returns the directory,
        or ``None`` when nothing is archived (and none was given). Raises as a read would: a
        :class:`StorageError` naming the directory and what to do."""
        storage = self._live()
        reader = self._history_reader(storage, archive, False)
        return None if reader is None else reader.directory

    # -- reading with the archive --------------------------------------------------------------
    def _archive_reader(self, storage: Storage, directory: str | os.PathLike[str],
                        head: TreeHead | None = None) -> ArchiveReader:
        """A new reader of the current log's archived bundles, refused (``ValidationError``) when
        the archive is of another store: its last bundle must be the tree's stored hash. Every
        bundle it reads is checked against the tree's stored node (``CorruptStorageError``)."""
        from ..archive import ArchiveReader

        head = storage.tree_head() if head is None else head
        reader = ArchiveReader(directory, head.epoch, head.first_seq, lambda k: storage.tree_node(8, k))
        if reader.bundles and storage.tree_node(8, reader.bundles - 1) != reader.last_hash:
            reader.close()
            raise ValidationError(f"the archive at {reader.directory} is of another store: its bundle "
                                  f"{reader.bundles - 1} does not match this journal's Merkle tree")
        return reader

    def _archived_span(self, storage: Storage) -> tuple[int, int, TreeHead | None]:
        """``(first seq, live first seq, the tree head read or None)`` of the current log:
        entries between the two are archived. One read when nothing is: the live first seq
        equal to a first seq seen before proves it (first seqs only grow, and the live first seq
        is never below the current one)."""
        live = storage.live_first_seq()
        if live == self._log_first:
            return live, live, None
        head = storage.tree_head()
        self._log_first = head.first_seq
        return head.first_seq, max(head.first_seq, storage.live_first_seq()), head

    def _history_reader(self, storage: Storage, archive: str | os.PathLike[str] | None,
                        live_only: bool, head: TreeHead | None = None) -> ArchiveReader | None:
        """The archive a read takes archived entries from — ``archive`` when given, else the
        journal's when the current log has archived entries — or ``None`` (the store alone)."""
        check_history(archive, live_only)
        if live_only:
            return None
        if archive is not None:
            return self._cached_reader(storage, _directory(archive), head, explicit=True)
        first, live, seen = self._archived_span(storage)
        if live <= first:
            return None
        head = seen if head is None else head
        directory = self._archive_dir or storage.get_setting(_SETTING)
        if directory is None:
            raise StorageError(
                f"entries {first}…{live - 1} of the journal at {self.path} are archived, and the store "
                "records no archive directory: pass it (--archive DIR, archive=DIR) or record it "
                "(krepis archive --set-dir DIR); --live-only (live_only=True) reads the live store alone",
                self.path)
        return self._cached_reader(storage, directory, head, explicit=False)

    def _cached_reader(self, storage: Storage, directory: str, head: TreeHead | None,
                       explicit: bool) -> ArchiveReader:
        """A reader of ``directory`` for the current log, kept between reads while it holds every
        archived entry (segments never change once named; a run that archives more makes a new
        one). A recorded archive that cannot serve the log is a ``StorageError`` naming it."""
        head = storage.tree_head() if head is None else head
        live = storage.live_first_seq()
        key = (directory, head.epoch, head.first_seq)
        with self._readers_lock:
            reader = self._readers.get(key)
        if reader is None or reader.first_seq + reader.bundles * _WIDTH < live:
            try:
                reader = self._archive_reader(storage, directory, head)
            except ValidationError as exc:
                if explicit:
                    raise
                raise StorageError(f"entries {head.first_seq}…{live - 1} of the journal at {self.path} "
                                   f"are in its archive at {directory}, which cannot be read: {exc}; "
                                   f"{_MOVED}", directory) from None
            end = reader.first_seq + reader.bundles * _WIDTH
            if end < live and not explicit:
                reader.close()
                holds = "none of them" if end <= head.first_seq else f"them only up to seq {end - 1}"
                raise StorageError(f"entries {head.first_seq}…{live - 1} of the journal at {self.path} "
                                   f"are archived, but its archive at {directory} holds {holds}: is it an "
                                   f"older copy, or another directory? {_MOVED}", directory)
            with self._readers_lock:
                # One kept: the current log's, of one directory. A reader it replaces is not
                # closed here — a read in another thread may still be using it; it closes its
                # directory once nothing refers to it.
                self._readers = {key: reader}
        return reader

    def _close_readers(self) -> None:
        """Forget the kept reader (it closes its directory once no read still holds it)."""
        with self._readers_lock:
            self._readers = {}

    def _leaf_source(self, storage: Storage, archive: str | os.PathLike[str] | None, live_only: bool,
                     head: TreeHead) -> Callable[[int, int], list[bytes]] | None:
        """Leaf data of archived leaves, for a tree reader: from ``archive`` (checked now), else
        from the journal's archive, opened only if a proof needs an archived leaf."""
        check_history(archive, live_only)
        if live_only:
            return None
        if archive is not None:
            return self._history_reader(storage, archive, False, head).leaf_data  # type: ignore[union-attr]

        def leaf_data(start: int, count: int) -> list[bytes]:
            reader = self._history_reader(storage, None, False, head)
            if reader is None:  # (the tree reader asks only for archived leaves)
                raise ValidationError(f"leaves {start}… of the journal at {self.path} are not archived")
            return reader.leaf_data(start, count)

        return leaf_data

    def _iter_archived(
        self, storage: Storage, reader: ArchiveReader, query: Query, limit: int | None,
        after: TransactionLog | None,
    ) -> Iterator[list[TransactionLog]]:
        """The archive's entries (seq < the live first seq) merged with the store's, each exactly
        once. The archive is read only when its entries come next: in append order it precedes
        (or, newest first, follows) every live entry; in time order a live entry outside the
        archive's time range (from its manifest) is returned without opening a bundle."""
        import itertools

        live_first = storage.live_first_seq()
        # cleared since the reader was made (its last bundle is no longer the tree's): not this log
        if reader.bundles and storage.tree_node(8, reader.bundles - 1) != reader.last_hash:
            raise JournalError(f"the journal at {self.path} was cleared while it was being read; read again")
        if reader.first_seq + reader.bundles * _WIDTH < live_first:
            if storage.tree_head().epoch != reader.epoch:  # (a clear moves the live first seq on)
                raise JournalError(f"the journal at {self.path} was cleared while it was being read; "
                                   "read again")
            end = reader.first_seq + reader.bundles * _WIDTH
            raise ValidationError(
                f"the journal at {self.path} starts at seq {live_first}; the archive at {reader.directory} "
                f"ends at seq {end}: is it this store's archive directory?")

        def live() -> Iterator[TransactionLog]:  # (at most ``limit`` of them are needed)
            for chunk in self._iter(storage, query, limit, after):
                if storage.live_first_seq() != live_first:
                    raise JournalError(f"entries of the journal at {self.path} were archived while it "
                                       "was being read; read again")
                yield from chunk

        desc = query.newest_first
        merged: Iterator[TransactionLog]
        if query.order == "append":
            archived = reader.iterate(query, after, live_first)
            merged = itertools.chain(live(), archived) if desc else itertools.chain(archived, live())
        else:
            merged = self._time_merge(reader, query, after, live_first, live())
        remaining = limit
        chunk: list[TransactionLog] = []
        if remaining == 0:
            return
        for log in merged:  # (never one more than asked: the next one may be a bundle to open)
            chunk.append(log)
            if len(chunk) >= _SCAN_CHUNK:
                yield chunk
                chunk = []
            if remaining is not None:
                remaining -= 1
                if remaining <= 0:
                    break
        if chunk:
            yield chunk

    @staticmethod
    def _time_merge(reader: ArchiveReader, query: Query, after: TransactionLog | None, live_first: int,
                    live: Iterator[TransactionLog]) -> Iterator[TransactionLog]:
        """Live and archived entries in (timestamp, seq) order; the archive opened once a live
        entry is no longer past its time bounds (or the live store ends)."""
        import heapq

        desc = query.newest_first
        bounds = reader.time_bounds(query, live_first)
        if bounds is None:
            yield from live
            return
        lo, hi = bounds
        pending: TransactionLog | None = None
        for log in live:
            if (log.timestamp > hi) if desc else (log.timestamp < lo):
                yield log
                continue
            pending = log
            break
        archived = reader.iterate(query, after, live_first)
        rest: Iterator[TransactionLog] = live if pending is None else _prepend(pending, live)
        yield from heapq.merge(archived, rest, key=lambda log: (log.timestamp, log.seq or 0), reverse=desc)

    # -- archive ---------------------------------------------------------------------------
    def archive(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        before: TimeLike | None = None,
        keep_last: int | None = None,
        keep_days: float | None = None,
        progress: Progress | None = None,
    ) -> ArchiveReport:
        """Move the oldest entries of the current log, in whole bundles of 256 in append order,
        into ``directory`` (default: the journal's archive — the one it was opened with, else
        the one the store records) and remove them from the store.

        Exactly one selector: ``before`` (a time: every bundle whose entries are all older
        goes), ``keep_last`` (keep at least the newest N entries) or ``keep_days`` (keep entries
        younger than D days). The store records the directory as its archive when it first
        writes there (before any entry leaves the store); a directory other than the one it
        records is refused — one archive per store (:meth:`set_archive_dir` moves it).
        Guarantees: each step (a segment file, then the manifest naming it) is durable before
        any entry leaves the store; a crash at any point loses no entry and never shows one
        twice in reads; a rerun completes an interrupted one. Counters and the Merkle tree's
        stored hashes do not change: checkpoints and proofs keep working. Bad input raises
        ``ValueError``/``TypeError`` and changes nothing; so does an archive directory of another
        store. ``progress(entries, total)`` is called as bundles are read and compressed (the
        last call has ``entries == total``). See ``docs/archive.md``."""
        return self._archive_step(directory, before=before, keep_last=keep_last, keep_days=keep_days,
                                  progress=progress)

    def _archive_step(
        self, directory: str | os.PathLike[str] | None, *, before: TimeLike | None = None,
        keep_last: int | None = None, keep_days: float | None = None, min_bundles: int = 1,
        progress: Progress | None = None,
    ) -> ArchiveReport:
        from ..archive import archive_store, parse_before

        cutoff, keep = parse_before(before, keep_days, keep_last)
        storage = self._live()
        target = self._archive_target(storage, directory)
        recorded = [storage.get_setting(_SETTING) is not None]

        def record(_step: str = "") -> None:  # at the run's first durable step: before any removal
            if not recorded[0]:
                self._record_archive(storage, target)
                recorded[0] = True

        report = archive_store(storage, target, durable=self._policy.durable, before=cutoff, keep_last=keep,
                               min_bundles=min_bundles, on_step=record, progress=progress)
        record()
        return report

    def _record_archive(self, storage: Storage, target: str) -> None:
        now = storage.get_setting(_SETTING)
        if now is None:
            storage.set_setting(_SETTING, target)
        elif not _same_directory(now, target):
            raise ValidationError(f"the journal at {self.path} now records its archive at {now} (set "
                                  f"meanwhile); {target} was not recorded")

    def _archive_target(self, storage: Storage, directory: str | os.PathLike[str] | None) -> str:
        """Where :meth:`archive` writes: ``directory``, else the journal's archive; a directory
        other than the one the store records is refused."""
        recorded = storage.get_setting(_SETTING)
        if directory is None:
            directory = self._archive_dir or recorded
            if directory is None:
                raise ValidationError(f"no archive directory: the journal at {self.path} records none yet; "
                                      "pass one (krepis archive DIR, journal.archive(DIR)) or open the "
                                      "journal with archive=DIR")
        path = _directory(directory)
        if recorded is not None and not _same_directory(path, recorded):
            raise ValidationError(
                f"the journal at {self.path} keeps its archive at {recorded}; archiving into {path} would "
                f"split its history between two directories. If the archive moved to {path}, record that "
                "first: krepis archive --set-dir DIR (journal.set_archive_dir(DIR))")
        return path

    def verify_archive(self, directory: str | os.PathLike[str] | None = None, *,
                       progress: Progress | None = None) -> ArchiveVerifyReport:
        """Check an archive (default: the journal's): every file against the manifest's checksum,
        every bundle's entries against its recorded hash and, for the current log, the tree's
        stored hash (so a bundle decompresses to exactly the entries the tree commits to). Raises
        :class:`CorruptStorageError` naming the file (and bundle) at fault. ``progress(entries,
        total)`` is called after each bundle checked."""
        from ..archive import verify_archive

        storage = self._live()
        if directory is None:
            directory = self._archive_dir or storage.get_setting(_SETTING)
            if directory is None:
                raise ValidationError(f"the journal at {self.path} records no archive directory: pass one")
        return verify_archive(directory, storage, progress=progress)

    @property
    def retention(self) -> RetentionPolicy | None:
        """The background retention policy in force, or ``None``."""
        return self._retention_policy

    def live_first_seq(self) -> int:
        """The oldest sequence number the store itself still holds for the current log (entries
        before it were archived). O(1)."""
        return self._live().live_first_seq()


def _prepend(first: TransactionLog, rest: Iterator[TransactionLog]) -> Iterator[TransactionLog]:
    yield first
    yield from rest
