"""A backup of the store with its archive: the live store copied by the storage layer, then
the archive's files, checked and recorded as the copy's archive."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from ..storage import BackupResult
from ..storage import backup as backup_store

Progress = Callable[[int, int], None]


def backup(source: str | os.PathLike[str], destination: str | os.PathLike[str], *,
           archive_to: str | os.PathLike[str] | None = None, progress: Progress | None = None,
           archive_progress: Progress | None = None) -> BackupResult:
    """Copy the store at ``source`` into the new directory ``destination`` while writers keep
    writing (:func:`krepis.storage.backup`: consistent, durable, verified), and say how many of
    the current log's entries are in the archive, not in the copy (``archived``).

    With ``archive_to`` (a new or empty directory), the archive the store records is copied
    there too — every file checked against its manifest while read, written durably, the
    manifest last — then recorded as the copy's archive and verified against the copy's tree
    (every segment, every bundle) before this returns (``archive`` names it). A store that
    records no archive, or one that holds nothing yet, has nothing to copy (``archive`` stays
    ``None``). On a failure of the
    archive's copy or check, the backup's store is left (it was complete) and the error names
    what failed."""
    if archive_to is not None:
        _check_empty(os.fspath(archive_to))  # before anything is copied
    result = backup_store(source, destination, progress=progress)
    result = dataclasses.replace(result, archived=result.tree_size - result.entries)
    if archive_to is None:
        return result
    from ..archive import MANIFEST
    from ..archive._copy import copy_archive
    from ._journal import SovereignJournal

    with SovereignJournal(source, create=False, flush="sync", retention="off") as journal:
        recorded = journal.get_archive_dir()
    if recorded is None or (not result.archived and not os.path.lexists(os.path.join(recorded, MANIFEST))):
        return result  # (nothing archived yet: nothing to copy)
    copied = copy_archive(recorded, os.fspath(archive_to), result.path, archive_progress)
    with SovereignJournal(result.path, create=False, flush="sync", retention="off") as journal:
        journal.set_archive_dir(copied.directory)
        journal.verify_archive(copied.directory)
    return dataclasses.replace(result, archive=copied.directory)


def _check_empty(path: str) -> None:
    """``path`` is free for the archive's copy: missing, or an empty directory (not a link)."""
    from .._errors import StorageError, ValidationError

    if not path:
        raise ValidationError("archive_to must not be empty")
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.islink(full):
        raise StorageError(f"the archive copy's directory {full} is a symbolic link; krepis never writes "
                           "through one", full)
    if os.path.lexists(full):
        if not os.path.isdir(full):
            raise StorageError(f"the archive copy's directory {full} exists and is not a directory", full)
        if os.listdir(full):
            raise StorageError(f"the archive copy's directory {full} exists and is not empty", full)
