"""Hot backups and restores of an LMDB store.

A backup is a consistent copy taken from one read transaction while writers keep writing
(LMDB's copy; its compacting variant crashes on stores with duplicate-sorted databases in the
LMDB that py-lmdb bundles, so the copy keeps free pages), written to a new directory, made durable and
checked (``verify()``) before it is reported done. A restore checks the backup the same way —
and, when given verifier keys, its latest checkpoint's signature and root — before it brings it
into place; it never replaces a live store unless told to, and then only when no process has it
open.

PostgreSQL journals are backed up with PostgreSQL's own tools (``pg_dump``/``pg_basebackup``);
see ``docs/operations.md``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass

from ..._errors import StorageError, ValidationError
from ..postgres._url import is_postgres_url
from ._store import LmdbStorage

__all__ = ["BackupResult", "backup", "restore"]


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore holds: ``entries``, the Merkle tree's ``tree_size`` and
    ``root``, and the newest checkpoint of the current log (or ``None``)."""

    path: str
    entries: int
    tree_size: int
    root: bytes
    checkpoint: str | None


def _no_postgres(location: object) -> None:
    if is_postgres_url(location):
        raise StorageError("a PostgreSQL journal is backed up with PostgreSQL's tools (pg_dump -t "
                           "'krepis_*', or pg_basebackup); see docs/operations.md")


def _check(path: str, verifiers: list[object] | None) -> BackupResult:
    """Open the store at ``path`` read-only in effect and check everything in it."""
    from ...tlog._note import Verifier, open_note, parse_checkpoint
    from ...tlog._reader import TreeReader
    storage = LmdbStorage(path, durable=False, create=False)
    try:
        report = storage.verify()
        head = storage.tree_head()
        mine = [(size, note) for epoch, size, _origin, note in storage.checkpoints() if epoch == head.epoch]
        note = max(mine)[1] if mine else None
        if note is not None:
            keys = [v for v in verifiers or [] if isinstance(v, Verifier)]
            text = open_note(note, keys) if keys else note[:note.rfind("\n\n") + 1]
            cp = parse_checkpoint(text)
            if cp.size > head.size or TreeReader(storage, head).root(cp.size) != cp.root:
                raise ValidationError(f"{path}: the newest checkpoint (tree size {cp.size}) does not "
                                      "match the entries")
        elif verifiers:
            raise ValidationError(f"{path} holds no checkpoint of its current log to check the keys against")
        return BackupResult(path, report.entries, report.tree_size, report.root, note)
    finally:
        storage.close()


def _fsync(path: str) -> None:
    """Make a file (or a directory's entries) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> BackupResult:
    """Copy the store at ``source`` into the new directory ``destination`` (its parent must
    exist; the directory itself must not, or be empty) while writers keep writing."""
    _no_postgres(source)
    dest = os.path.abspath(os.fspath(destination))
    if os.path.lexists(dest) and (not os.path.isdir(dest) or os.path.islink(dest) or os.listdir(dest)):
        raise StorageError(f"backup destination {dest} exists and is not an empty directory", dest)
    created = not os.path.exists(dest)
    try:
        os.makedirs(dest, mode=0o700, exist_ok=True)
        os.chmod(dest, 0o700)
    except OSError as exc:
        raise StorageError(f"cannot create backup directory {dest}: {exc.strerror}", dest) from None
    try:
        # Read only: no flush policy of our own, so a process that has the journal open under
        # an interval policy can back it up too.
        storage = LmdbStorage(source, durable=False, create=False)
        try:
            storage.checkpoint()  # every write acknowledged so far, applied to data.mdb (synced)
            storage._env.copy(dest)
        finally:
            storage.close()
        data = os.path.join(dest, "data.mdb")
        os.chmod(data, 0o600)
        _fsync(data)
        _fsync(dest)
        return _check(dest, None)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:  # it was an empty directory: leave it empty
            for name in os.listdir(dest):
                path = os.path.join(dest, name)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.unlink(path)
        raise


def restore(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    force: bool = False,
    verifiers: list[object] | None = None,
) -> BackupResult:
    """Check the backup at ``source``, then make it the store at ``destination``.

    A destination that holds a store is replaced only with ``force=True``, and only when no
    process has it open; the replacement is one atomic rename of ``data.mdb`` (its old commit
    log is removed first: it describes the file being replaced)."""
    from ._files import exclusive_lmdb_lock

    _no_postgres(destination)
    src = os.path.abspath(os.fspath(source))
    checked = _check(src, verifiers)
    dest = os.path.abspath(os.fspath(destination))
    data = os.path.join(dest, "data.mdb")
    from ._env import open_in_this_process

    if os.path.lexists(dest) and os.listdir(dest) and not force:
        raise StorageError(f"{dest} already holds a store; restoring over it needs --force (and no "
                           "process using it)", dest)
    if open_in_this_process(dest):
        raise StorageError(f"storage at {dest} is open in this process; close it before restoring "
                           "over it", dest)
    os.makedirs(dest, mode=0o700, exist_ok=True)
    dir_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    lock_fd = -1
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(dest, "lock.mdb")):
            lock_fd = exclusive_lmdb_lock(dest)
        # The destination's commit log describes the data file being replaced: it goes first
        # (the first open makes a new one for the restored file).
        try:
            os.unlink("commit.log", dir_fd=dir_fd)
            os.fsync(dir_fd)
        except FileNotFoundError:
            pass
        tmp = os.path.join(dest, ".restore.mdb")
        shutil.copyfile(os.path.join(src, "data.mdb"), tmp)
        os.chmod(tmp, 0o600)
        _fsync(tmp)
        os.replace(tmp, data)
        os.fsync(dir_fd)
        if lock_fd >= 0:
            import lmdb

            # the lock table describes the replaced file: this process holds the exclusive lock,
            # so its open rebuilds the table
            lmdb.open(dest, max_dbs=16, map_size=1 << 20, subdir=True).close()
            lock_fd = -1
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(dir_fd)
    return BackupResult(dest, checked.entries, checked.tree_size, checked.root, checked.checkpoint)
