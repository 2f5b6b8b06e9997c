"""Hot backups and restores of an LMDB store.

A backup is a consistent, compacted copy taken from one read transaction while writers keep
writing (every database copied in key order, no free page: see ``_compact``), after the commit
log was applied, so it holds every write acknowledged before it began; written into a new
directory, flushed (the file, then the directory) and checked (``verify()``) before it is
reported done.

A restore copies the backup into a staging directory inside the destination, checks that copy —
``verify()``, every kept checkpoint of the current log against the tree, and, when given verifier
keys, the newest checkpoint's signature — and only then renames its ``data.mdb`` into place. What
it reports is what it proved: the newest checkpoint whose signature was checked covers the first
``signed_size`` leaves of the tree; the ``unsigned`` leaves after it are covered by no signature
(anyone who could write the backup could have rewritten them consistently). It never replaces a
live store unless told to, and then only when no process has it open.

Both apply the checks of opening a store to the destination (owner, modes, the path to it: see
``_paths.open_directory``), work relative to the pinned directory and create every file with
``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600 (``.._outfiles``): a symbolic link planted under a
name krepis writes is never followed.

PostgreSQL journals are backed up with PostgreSQL's own tools (``pg_dump``/``pg_basebackup``);
see ``docs/operations.md``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..._errors import InvalidTypeError, JournalError, StorageError, ValidationError
from .._migration import Progress
from .._outfiles import fsync_dir, fsync_fd, fsync_file_at, make_private_dir, remove_at
from ..postgres._url import is_postgres_url
from ._commitlog import STATE
from ._compact import copy_compacted
from ._offline import DATA, LOCK, LOG, Offline
from ._paths import check_path, open_directory
from ._state import NO_LOG, LogPointer
from ._store import LmdbStorage

if TYPE_CHECKING:
    from ...tlog._note import Verifier

__all__ = ["BackupResult", "backup", "restore"]

#: the staging directory of a restore, inside the destination (removed when it is done; a
#: restore that was killed leaves it behind, and the next one removes it)
STAGE = ".restore"


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore holds and what was proved about it.

    ``entries`` (in the store), the Merkle tree's ``tree_size`` and ``root`` — all checked by
    ``verify()`` — and ``checkpoint``, the newest kept checkpoint of the current log (or
    ``None``), whose root matches the tree. ``signed_size``: how many leaves (from the first)
    the newest checkpoint covers when its signature was checked with the verifier keys given,
    else 0; ``signed_origin`` names its log. ``unsigned`` = ``tree_size - signed_size``: the
    leaves after it, which no checked signature covers.

    A backup's ``archived``: this log's entries the store had moved into its archive (they are
    not in the copy's ``data.mdb``); ``archive``: the copy of the archive the backup made and
    recorded as the copy's (``krepis.backup(..., archive_to=DIR)``), else ``None``.
    """

    path: str
    entries: int
    tree_size: int
    root: bytes
    checkpoint: str | None
    signed_size: int = 0
    signed_origin: str | None = None
    archived: int = 0
    archive: str | None = None

    @property
    def unsigned(self) -> int:
        """Leaves of the tree that no checked signature covers."""
        return self.tree_size - self.signed_size


def _no_postgres(location: object) -> None:
    if is_postgres_url(location):
        raise StorageError("a PostgreSQL journal is backed up with PostgreSQL's tools (pg_dump -t "
                           "'krepis_*', or pg_basebackup); see docs/operations.md")


def _keys(verifiers: Sequence[Verifier] | None) -> list[Verifier]:
    from ...tlog._note import Verifier

    keys = list(verifiers or [])
    for key in keys:
        if not isinstance(key, Verifier):
            raise InvalidTypeError(f"verifiers must be krepis.tlog.Verifier keys (Verifier.parse(text)), "
                                   f"got {type(key).__name__} {key!r:.60}")
    return keys


def _check(path: str, keys: list[Verifier]) -> BackupResult:
    """Open the store at ``path`` and check everything in it (see :class:`BackupResult`)."""
    from ...tlog._note import NoteError, open_note, parse_checkpoint
    from ...tlog._reader import TreeReader

    storage = LmdbStorage(path, durable=False, create=False)
    try:
        report = storage.verify()
        head = storage.tree_head()
        mine = sorted((size, note) for epoch, size, _origin, note in storage.checkpoints()
                      if epoch == head.epoch)
        reader = TreeReader(storage, head)
        for size, note in mine:
            try:
                cp = parse_checkpoint(note[:note.rfind("\n\n") + 1])
            except NoteError as exc:
                raise ValidationError(f"{path}: the kept checkpoint of tree size {size} is malformed "
                                      f"({exc})") from None
            if cp.size != size or cp.size > head.size or reader.root(cp.size) != cp.root:
                raise ValidationError(f"{path}: the checkpoint of tree size {cp.size} does not match "
                                      f"the entries (one before seq {head.first_seq + cp.size} "
                                      "changed)")
        newest = mine[-1] if mine else None
        signed, origin = 0, None
        if keys:
            if newest is None:
                raise ValidationError(f"{path} holds no checkpoint of its current log to check the "
                                      "keys against")
            try:
                cp = parse_checkpoint(open_note(newest[1], keys))
            except NoteError as exc:
                raise ValidationError(f"{path}: its newest checkpoint (tree size {newest[0]}) does not "
                                      f"verify with the keys given: {exc}") from None
            signed, origin = cp.size, cp.origin
        return BackupResult(path, report.entries, report.tree_size, report.root,
                            newest[1] if newest else None, signed, origin)
    finally:
        storage.close()


def _copy(storage: LmdbStorage, dir_fd: int, where: str, progress: Progress | None = None) -> None:
    """A compacted copy of the open store (one read transaction: every database in key order,
    no free page) as ``data.mdb`` in the directory ``dir_fd``, flushed — after LMDB was brought
    up to date with the commit log, so the copy holds every write acknowledged before it began.
    The copy names no commit log (it has none; its first open makes one)."""
    storage.checkpoint()
    copy_compacted(storage._env, dir_fd, where, name_no_log=True, progress=progress)


def _missing_dirs(path: str) -> list[str]:
    """``path`` and its ancestors that do not exist yet, innermost first."""
    out = []
    while not os.path.lexists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out


def backup(source: str | os.PathLike[str], destination: str | os.PathLike[str], *,
           progress: Progress | None = None) -> BackupResult:
    """Copy the store at ``source`` into the new directory ``destination`` (created with its
    parents, mode 0700; an existing one must be empty and pass the checks of a store directory)
    while writers keep writing. The copy is durable — its file, its directory and the new
    directories' parents flushed — and checked before this returns; on failure, what this
    created is removed. ``progress(rows, total)`` is called as the copy is written (its check
    afterwards reports nothing)."""
    _no_postgres(source)
    _no_postgres(destination)
    dest = os.path.abspath(os.fspath(destination))
    check_path(dest)
    missing = _missing_dirs(dest)
    try:
        dir_fd = open_directory(dest, create=True)
    except BaseException:
        _remove_created(missing)
        raise
    made_data = False
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)  # openers wait until the copy is whole
        if os.listdir(dir_fd):
            raise StorageError(f"backup destination {dest} exists and is not an empty directory", dest)
        # Read only: no flush policy of our own, so a process that has the journal open under
        # an interval policy can back it up too.
        storage = LmdbStorage(source, durable=False, create=False)
        try:
            made_data = True
            _copy(storage, dir_fd, dest, progress)
        finally:
            storage.close()
        fsync_fd(dir_fd, dest)
        for created in missing:  # their entries in their parents
            fsync_dir(os.path.dirname(created))
        fcntl.flock(dir_fd, fcntl.LOCK_UN)
        checked = _check(dest, [])
        # the check's open gave the copy a commit log of its own (a synced LMDB commit, partly
        # through LMDB's O_DSYNC descriptor): flush the file once more, by this process's own hand
        fsync_file_at(DATA, dir_fd, os.path.join(dest, DATA))
        return checked
    except BaseException:
        if made_data:  # the destination was empty: everything in it is this backup's
            for name in (DATA, LOCK, LOG, LOG + ".new", STATE):
                remove_at(name, dir_fd)
        _remove_created(missing)
        raise
    finally:
        os.close(dir_fd)


def _remove_created(missing: list[str]) -> None:
    """Undo the creation of the destination and of its parents that this call created (``missing``,
    innermost first): each is removed only while empty, and the first that cannot be ends it."""
    for created in missing:
        try:
            os.rmdir(created)
        except OSError:
            return


def _same_or_inside(inner: str, outer: str) -> bool:
    a, b = os.path.realpath(inner), os.path.realpath(outer)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def restore(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    force: bool = False,
    verifiers: Sequence[Verifier] | None = None,
) -> BackupResult:
    """Check the backup at ``source``, then make it the store at ``destination``.

    The destination gets the checks of a store directory (created with its parents when
    missing). A destination that holds a store is replaced only with ``force=True``, and only
    when no process has it open; a directory holding anything but a store is never used. The
    backup is copied into ``destination/.restore/`` and that copy is checked (see
    :class:`BackupResult`; with ``verifiers``, the newest checkpoint must carry a valid signature
    of one of them, else :class:`ValidationError`); then the copy's ``data.mdb``, which names no
    commit log, is renamed into place (one atomic step, its directory flushed) and only then the
    destination's old commit log (which describes the file replaced) removed — a crash at any
    point leaves the old store whole or the restored one. Nothing at the destination changes
    when a check fails."""
    _no_postgres(source)
    _no_postgres(destination)
    keys = _keys(verifiers)
    src = os.path.abspath(os.fspath(source))
    dest = os.path.abspath(os.fspath(destination))
    check_path(src)
    check_path(dest)
    if os.path.lexists(dest) and _same_or_inside(src, dest):
        raise StorageError(f"the backup {src} is the destination {dest} or inside it; restore it "
                           "elsewhere", dest)
    missing = _missing_dirs(dest)
    staged = False
    try:
        with Offline(dest, create=True, command="krepis restore") as off:
            dir_fd = off.dir_fd
            try:
                names = set(os.listdir(dir_fd))
                if DATA in names and not force:
                    raise StorageError(f"{dest} already holds a store; restoring over it needs "
                                       "--force (and no process using it)", dest)
                # a directory that is neither empty nor a store is not restored into (the
                # careless `--storage ~`); other names beside a store's data.mdb are left alone
                others = sorted(names - {DATA, LOCK, LOG, LOG + ".new", STATE, STAGE, ".migrate"})
                if others and DATA not in names:
                    shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
                    raise StorageError(f"{dest} is not a krepis store and is not empty ({shown}); "
                                       "restore into an empty or new directory", dest)
                stage = os.path.join(dest, STAGE)
                remove_at(STAGE, dir_fd)  # what a killed restore left behind
                stage_fd = make_private_dir(STAGE, dir_fd, stage)
                staged = True
                try:
                    checked = _stage(src, stage, stage_fd, keys)
                    # The restored data.mdb names no commit log: swapped in first, it makes the
                    # destination's old log (which describes the file being replaced) a
                    # leftover the first open replaces — so a crash at any point leaves either
                    # the old store whole, with its log, or the restored one.
                    os.rename(DATA, DATA, src_dir_fd=stage_fd, dst_dir_fd=dir_fd)
                    fsync_fd(dir_fd, dest)
                    for name in (LOG, LOG + ".new", STATE):
                        remove_at(name, dir_fd)
                    fsync_fd(dir_fd, dest)
                finally:
                    os.close(stage_fd)
                off.rebuild_lock_table()
                remove_at(STAGE, dir_fd)
                fsync_fd(dir_fd, dest)
                for created in missing:  # their entries in their parents
                    fsync_dir(os.path.dirname(created))
            except BaseException:
                if staged:
                    remove_at(STAGE, dir_fd)
                raise
    except BaseException:
        _remove_created(missing)
        raise
    return BackupResult(dest, checked.entries, checked.tree_size, checked.root, checked.checkpoint,
                        checked.signed_size, checked.signed_origin)


def _name_no_log(dir_fd: int, where: str) -> None:
    """Make the checked copy's ``data.mdb`` name no commit log (one synced LMDB commit): it moves
    without the log its check made, and the first open makes one for it."""
    import lmdb

    try:
        env = lmdb.open(f"/proc/self/fd/{dir_fd}", max_dbs=16, map_size=1 << 40, subdir=True,
                        create=False)
    except lmdb.Error as exc:  # (the copy changed since its check)
        raise StorageError(f"cannot prepare {where} to be restored: {exc}", where) from exc
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            txn.put(b"log", LogPointer(NO_LOG, 0, 0).pack(), db=meta)
    except lmdb.Error as exc:
        raise StorageError(f"cannot prepare {where} to be restored: {exc}", where) from exc
    finally:
        env.close()


def _stage(src: str, stage: str, stage_fd: int, keys: list[Verifier]) -> BackupResult:
    """Copy the backup into the staging directory, flush it and check the copy; errors name the
    backup."""
    data = os.path.join(stage, DATA)
    try:
        storage = LmdbStorage(src, durable=False, create=False)
        try:
            _copy(storage, stage_fd, stage)
        finally:
            storage.close()
        checked = _check(stage, keys)
    except JournalError as exc:
        text = str(exc).replace(stage, src)
        if isinstance(exc, StorageError):
            raise type(exc)(text, src) from None
        raise type(exc)(text) from None
    _name_no_log(stage_fd, stage)
    # the check's open may have written the file (never its data): flush again before the rename
    fsync_file_at(DATA, stage_fd, data)
    fsync_fd(stage_fd, stage)
    return checked
