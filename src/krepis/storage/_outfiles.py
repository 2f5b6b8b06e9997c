"""Files krepis creates outside a live store — backups, restores, migrations, exports — made so
that neither an attacker nor a careless operator can turn them against other files.

Guarantees (tests in ``tests/test_outfiles.py``):

* **Never through a link.** Every file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode
  0600 (whatever the umask), relative to a directory descriptor opened once: a name that already
  exists — a symbolic link to one of your files included — is never opened, written, truncated
  or chmodded; the creation fails instead (or, for names of krepis' own temporary files, what is
  there is removed first: an unlink removes a link, never its target).
* **Durable before it counts.** :func:`fsync_fd` and :func:`fsync_dir` raise a
  :class:`StorageError` naming the path when the operating system reports a failure; callers
  flush a file before renaming it into place and the directory after.
* **Removal stays inside.** :func:`remove_at` removes a leftover temporary file or directory tree
  through descriptors, never following a symbolic link out of it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator
from typing import IO

from .._errors import StorageError

__all__ = ["atomic_output", "create_exclusive", "fsync_dir", "fsync_fd", "make_private_dir",
           "remove_at"]

FILE_MODE = 0o600

DIR_MODE = 0o700

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def create_exclusive(name: str, dir_fd: int, where: str) -> int:
    """Create the new file ``name`` in the directory ``dir_fd`` (mode 0600) and return a
    write descriptor; ``where`` is its full path, for messages. Anything already under that name
    is left untouched and the call fails with a :class:`StorageError`."""
    try:
        fd = os.open(name, _CREATE, FILE_MODE, dir_fd=dir_fd)
    except FileExistsError:
        what = "a symbolic link" if _is_link(name, dir_fd) else "already there"
        raise StorageError(f"{where} is {what}; krepis creates this file itself and never writes "
                           "through an existing name (remove it if it is not yours)", where) from None
    except OSError as exc:
        raise StorageError(f"cannot create {where}: {_why(exc)}", where) from exc
    try:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def make_private_dir(name: str, dir_fd: int, where: str) -> int:
    """Create the new directory ``name`` (mode 0700) in ``dir_fd`` and return a descriptor
    pinning it; like :func:`create_exclusive`, an existing name is never reused."""
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        raise StorageError(f"{where} already exists; krepis creates this directory itself (remove "
                           "it if it is not yours)", where) from None
    except OSError as exc:
        raise StorageError(f"cannot create {where}: {_why(exc)}", where) from exc
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise StorageError(f"cannot open {where}: {_why(exc)}", where) from exc
    try:
        os.fchmod(fd, DIR_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def fsync_fd(fd: int, where: str) -> None:
    """Flush a file (or, for a directory descriptor, its entries) to stable storage."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageError(f"cannot make {where} durable (fsync failed: {_why(exc)})", where) from exc


def fsync_file_at(name: str, dir_fd: int, where: str) -> None:
    """Flush the file ``name`` of the directory ``dir_fd`` (opened without following a link);
    ``where`` is its full path, for messages."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        fsync_fd(fd, where)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries, by path (for a parent that holds no pinned descriptor)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open {path} to make it durable: {_why(exc)}", path) from exc
    try:
        fsync_fd(fd, path)
    finally:
        os.close(fd)


def remove_at(name: str, dir_fd: int) -> None:
    """Remove ``name`` in ``dir_fd`` — a file, a link (not its target) or a whole directory tree
    walked through descriptors that never follow a link. Missing is fine."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            remove_at(entry, fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=dir_fd)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[IO[str]]:
    """Write the text file ``path`` all at once: into a new temporary file beside it (created
    exclusively, mode 0600), flushed, then renamed over ``path`` and the directory flushed. If
    the body raises, ``path`` is left as it was and the temporary file is removed.

    ``path`` itself may be missing or a regular file (it is replaced, never written through); a
    symbolic link there is refused, since replacing it would not write where it points. A FIFO
    or a character device (``/dev/stdout``, a process substitution) is a stream: it is written
    directly, as a stream cannot be replaced."""
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {_why(exc)}", path) from exc
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            target: os.stat_result | None = os.stat(path)
        except OSError:
            target = None
        if target is None or stat.S_ISREG(target.st_mode) or stat.S_ISDIR(target.st_mode):
            raise StorageError(
                f"{path} is a symbolic link; krepis replaces the file it writes in one step and "
                "never writes through a link: give the path it points to", path)
        st = target
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        try:
            stream = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {_why(exc)}", path) from exc
        with stream:
            yield stream
        return
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise StorageError(f"{path} exists and is not a regular file", path)
    directory = os.path.dirname(os.path.abspath(path)) or os.sep
    base = os.path.basename(path)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot write into {directory}: {_why(exc)}", directory) from exc
    try:
        for _attempt in range(100):
            tmp = f".{base}.{secrets.token_hex(6)}.tmp"
            try:
                fd = os.open(tmp, _CREATE, FILE_MODE, dir_fd=dir_fd)
                break
            except FileExistsError:
                continue  # someone else's name (or a planted link): never touched, take another
            except OSError as exc:
                raise StorageError(f"cannot create a file in {directory}: {_why(exc)}",
                                   directory) from exc
        else:  # pragma: no cover - 100 random names taken
            raise StorageError(f"cannot create a temporary file in {directory}", directory)
        done = False
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                os.fchmod(fd, FILE_MODE)  # whatever the umask
                yield out
                out.flush()
                fsync_fd(out.fileno(), os.path.join(directory, tmp))
            try:
                os.rename(tmp, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except OSError as exc:
                raise StorageError(f"cannot replace {path}: {_why(exc)}", path) from exc
            done = True
            fsync_fd(dir_fd, directory)
        finally:
            if not done:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
