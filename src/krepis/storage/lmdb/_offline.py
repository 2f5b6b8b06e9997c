"""Taking a store directory offline for ``krepis restore`` and ``krepis migrate``: the checks an
open applies (``_paths.open_directory``: owner, modes, the path to it), the directory lock every
opener takes, and LMDB's exclusive lock, which no process holds while another has the store open.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from ..._errors import StorageError
from ._paths import _NOFOLLOW, _check_entry, _lstat, open_directory

__all__ = ["Offline"]

DATA = "data.mdb"

LOCK = "lock.mdb"

LOG = "commit.log"


class Offline:
    """The store directory at ``path``, checked and pinned (``dir_fd``), with every opener kept
    out: the directory lock (openers take it while they open) and, when ``lock.mdb`` exists,
    LMDB's exclusive lock (every process with the store open holds a shared lock there), else a
    :class:`StorageError` telling to stop those processes and run ``command`` again.

    ``with Offline(path, create, command) as off:`` — released (and ``dir_fd`` closed) on exit.
    """

    def __init__(self, path: str, *, create: bool, command: str) -> None:
        from ._env import open_in_this_process

        self.path = path
        self.dir_fd = open_directory(path, create)
        self._lock_fd = -1
        try:
            if open_in_this_process(path):
                raise StorageError(f"storage at {path} is open in this process; close it before "
                                   f"{command}", path)
            fcntl.flock(self.dir_fd, fcntl.LOCK_EX)
            for name in (DATA, LOCK):
                st = _lstat(name, self.dir_fd)
                if st is not None:
                    _check_entry(path, name, st)  # no link, FIFO, directory or hard link
            if _lstat(LOCK, self.dir_fd) is not None:
                self._lock_fd = self._exclusive(command)
        except BaseException:
            self.close()
            raise

    def _exclusive(self, command: str) -> int:
        path = self.path
        try:
            fd = os.open(LOCK, os.O_RDWR | _NOFOLLOW, dir_fd=self.dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot open {os.path.join(path, LOCK)}: {exc.strerror}", path) from exc
        try:
            _check_entry(path, LOCK, os.fstat(fd))
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise StorageError(
                f"storage at {path} is open in another process; stop every process using it, then "
                f"run {command} again", path) from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def rebuild_lock_table(self) -> None:
        """After ``data.mdb`` was replaced: LMDB's lock table describes the old file, and this
        process holds the exclusive lock, so its open (of the pinned directory) rebuilds it. The
        close drops this process's locks on ``lock.mdb``: the exclusive one is gone after this
        (the directory lock still keeps openers out)."""
        if self._lock_fd < 0:
            return
        import lmdb

        lmdb.open(f"/proc/self/fd/{self.dir_fd}", max_dbs=16, map_size=1 << 20, subdir=True,
                  create=False).close()
        os.close(self._lock_fd)
        self._lock_fd = -1

    def close(self) -> None:
        """Release the locks and the directory. Idempotent."""
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.dir_fd)  # (releases the directory lock)
            self.dir_fd = -1

    def __enter__(self) -> Offline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
