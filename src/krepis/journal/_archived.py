"""The journal's archive: moving the oldest entries out and reading them back as if they had
never moved (the archive half of :class:`~krepis.SovereignJournal`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .._errors import (
    JournalError,
    ValidationError,
)
from .._model import (
    TransactionLog,
)
from .._policy import FlushPolicy
from .._time import TimeLike
from ..archive import ArchiveReader, ArchiveReport, ArchiveVerifyReport, RetentionPolicy
from ..storage import Query, Storage, TreeHead

#: entries read from the engine per scan
_SCAN_CHUNK = 512


class _ArchiveMethods:
    """Archiving, and reading archived entries merged with the store's."""

    if TYPE_CHECKING:  # provided by SovereignJournal or the other mixin
        _policy: FlushPolicy
        _archive_dir: str | None
        _retention_policy: RetentionPolicy | None

        @property
        def path(self) -> str:
            raise NotImplementedError

        def _live(self) -> Storage:
            raise NotImplementedError

        def _iter(self, storage: Storage, query: Query, limit: int | None,
                  after: TransactionLog | None) -> Iterator[list[TransactionLog]]:
            raise NotImplementedError

    def _archive_reader(self, storage: Storage, directory: str | os.PathLike[str],
                        head: TreeHead | None = None) -> ArchiveReader:
        """A reader of the current log's archived bundles, refused (``ValidationError``) when
        the archive is of another store: its last bundle must be the tree's stored hash. Every
        bundle it reads is checked against the tree's stored node (``CorruptStorageError``)."""
        from ..archive import ArchiveReader

        head = storage.tree_head() if head is None else head
        reader = ArchiveReader(directory, head.epoch, head.first_seq, lambda k: storage.tree_node(8, k))
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
        from ..archive import archive_store, parse_before

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
        from ..archive import verify_archive

        return verify_archive(self._archive_target(directory), self._live())

    @property
    def retention(self) -> RetentionPolicy | None:
        """The background retention policy in force, or ``None``."""
        return self._retention_policy

    def live_first_seq(self) -> int:
        """The oldest sequence number the store itself still holds for the current log (entries
        before it were archived). O(1)."""
        return self._live().live_first_seq()
