"""The archive directory and every file operation in it.

Guarantees:

* **The store directory's checks.** An archive directory must be owned by this user or root,
  writable by nobody else, and reached only through directories (and symbolic links) that
  nobody else can change — the checks of ``storage/lmdb/_paths.py`` ("Operating safely" in
  ``docs/storage-format.md``). A refusal is a :class:`StorageError` naming the directory.
* **One directory, opened once.** Every file is opened relative to the directory's descriptor,
  by a name that is never a path (no ``/``, never ``.``/``..``): swapping the directory or a
  parent later changes nothing this process reads or writes.
* **Never through a link, never blocked.** Files are opened ``O_NOFOLLOW|O_NONBLOCK`` and must be
  regular files: a symbolic link, FIFO, device or directory in a file's place is a refusal
  naming it, and its target is never read or written. New files are created
  ``O_CREAT|O_EXCL|O_NOFOLLOW`` (mode 0600) under a fresh random temporary name, written,
  fsynced, renamed into place — never over a file this run did not prove its own — and the
  directory fsynced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import stat
import weakref
from collections.abc import Iterator

from .._errors import CorruptStorageError, InvalidTypeError, StorageError, ValidationError
from ..storage.lmdb._paths import _check_directory, _check_path_to, _trusted, check_path, open_directory

LOCK = ".lock"

#: a temporary file of a run: ``.tmp-<final name>.<16 hex>`` (and, from format 1, ``.tmp-<final name>``)
TEMP_NAME = re.compile(r"\.tmp-(MANIFEST\.json|log[0-9]{6,}-[0-9]{12,}\.kseg|dict-[0-9a-f]{16}\.zdict)"
                       r"(\.[0-9a-f]{16})?\Z")

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_CHUNK = 1 << 20


def _plain_name(name: str) -> None:
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r:.80}")  # (a bug: names are checked before)


def _check_creatable(path: str) -> None:
    """Refuse (``StorageError``) to create ``path`` under a directory that users other than this
    one and root can change — before anything is created (``open_directory`` would refuse the
    new directory, but only once made)."""
    parent = os.path.dirname(path)
    while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open {parent}: {exc.strerror}", path) from None
    try:
        st = os.fstat(fd)
        if not _trusted(st):
            raise StorageError(f"{path} would be made inside {parent} (owner uid {st.st_uid}, mode "
                               f"{stat.S_IMODE(st.st_mode):04o}), which users other than you and root can "
                               "change: they could replace it. Use another directory", path)
        _check_path_to(parent, fd)
    finally:
        os.close(fd)


class ArchiveDir:
    """An archive directory, opened and checked; file operations by name inside it."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        self._closer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open(cls, directory: object, *, create: bool) -> ArchiveDir:
        """Open (and with ``create`` make, mode 0700) the archive directory ``directory``.
        ``ValidationError``: not a path, a file, missing (without ``create``); ``StorageError``:
        the ownership, mode or path checks refuse it."""
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidTypeError(f"the archive directory must be a path, got {type(directory).__name__}")
        raw = os.fspath(directory)
        if not isinstance(raw, str):
            raise InvalidTypeError("the archive directory must be a str path, got bytes")
        if not raw:
            raise ValidationError("the archive directory must not be empty")
        path = os.path.abspath(os.path.expanduser(raw))
        try:
            check_path(path)
        except ValidationError as exc:
            raise ValidationError(f"archive directory: {exc}") from None
        if os.path.lexists(path) and not os.path.isdir(path):
            raise ValidationError(f"the archive directory {path} exists and is not a directory")
        if not os.path.isdir(path) and not create:
            raise ValidationError(f"there is no archive at {path}")
        try:
            if create:
                if not os.path.isdir(path):
                    _check_creatable(path)
                fd = open_directory(path, create=True)
            else:  # reading needs no write access: open_directory's checks but that one
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    raise StorageError(f"cannot open {path}: {exc.strerror}", path) from None
                try:
                    _check_directory(path, os.fstat(fd))
                    _check_path_to(path, fd)
                except BaseException:
                    os.close(fd)
                    raise
        except StorageError as exc:
            raise type(exc)(f"krepis does not use {path} as an archive directory: {exc}", path) from None
        return cls(path, fd)

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> ArchiveDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def where(self, name: str) -> str:
        return os.path.join(self.path, name)

    # -- reading ----------------------------------------------------------------------------
    def open_file(self, name: str, missing_ok: bool = False) -> int | None:
        """A read-only descriptor of the regular file ``name`` (``None`` if missing and
        ``missing_ok``); a link, FIFO, device or directory there is a ``CorruptStorageError``."""
        _plain_name(name)
        where = self.where(name)
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise CorruptStorageError(f"archive file {where} is missing", where) from None
        except OSError as exc:
            try:
                st = self.lstat(name)
            except OSError:  # (EACCES: a directory this reader may list but not search)
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise CorruptStorageError(f"archive file {where} is a symbolic link; krepis never follows "
                                          "links in an archive directory (its target is left untouched)",
                                          where) from None
            raise CorruptStorageError(f"cannot open archive file {where}: {exc.strerror}", where) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else \
                    "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
                raise CorruptStorageError(f"archive file {where} is {kind}, not a regular file", where)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def pread(self, fd: int, offset: int, length: int, name: str) -> bytes:
        """Exactly ``length`` bytes at ``offset`` of an open file, or a ``CorruptStorageError``."""
        parts: list[bytes] = []
        got = 0
        try:
            while got < length:
                part = os.pread(fd, min(length - got, _CHUNK << 4), offset + got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        except OSError as exc:
            raise CorruptStorageError(f"cannot read archive file {self.where(name)}: {exc.strerror}",
                                      self.where(name)) from None
        if got != length:
            raise CorruptStorageError(f"archive file {self.where(name)} is cut off (it ends before byte "
                                      f"{offset + length})", self.where(name))
        return b"".join(parts)

    def read(self, name: str, limit: int, missing_ok: bool = False) -> bytes | None:
        """The whole of file ``name``; larger than ``limit`` bytes is a ``CorruptStorageError``."""
        fd = self.open_file(name, missing_ok)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise CorruptStorageError(f"archive file {self.where(name)} is {size} bytes; at most {limit} "
                                          "are expected", self.where(name))
            return self.pread(fd, 0, size, name)
        finally:
            os.close(fd)

    def sha256(self, fd: int, name: str) -> tuple[str, int]:
        """The sha256 (hex) and length of an open file."""
        digest, offset = hashlib.sha256(), 0
        try:
            while part := os.pread(fd, _CHUNK, offset):
                digest.update(part)
                offset += len(part)
        except OSError as exc:
            raise CorruptStorageError(f"cannot read archive file {self.where(name)}: {exc.strerror}",
                                      self.where(name)) from None
        return digest.hexdigest(), offset

    def names(self) -> list[str]:
        return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result | None:
        _plain_name(name)
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- writing ----------------------------------------------------------------------------
    def write_durable(self, name: str, data: bytes, *, replace: bool = False) -> None:
        """``name`` written whole: a fresh temporary file (``O_CREAT|O_EXCL|O_NOFOLLOW``), fsynced,
        renamed to ``name``, the directory fsynced. Without ``replace``, an existing ``name`` is a
        ``StorageError`` (nothing is renamed over it)."""
        _plain_name(name)
        tmp = f".tmp-{name}.{secrets.token_hex(8)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
        except OSError as exc:
            raise StorageError(f"cannot create {self.where(tmp)}: {exc.strerror}", self.where(tmp)) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if not replace and self.lstat(name) is not None:
                raise StorageError(f"{self.where(name)} exists and krepis did not write it: it is left as it "
                                   "is and nothing was archived; move it out of the archive directory",
                                   self.where(name))
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise StorageError(f"cannot write {self.where(name)}: {exc.strerror}", self.where(name)) from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        self.fsync()

    def fsync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise StorageError(f"cannot sync the archive directory {self.path}: {exc.strerror}",
                               self.path) from None

    def unlink(self, name: str) -> None:
        _plain_name(name)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held (``flock``) by a running archive: one writer at a time."""
        try:
            fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600,
                         dir_fd=self.fd)
        except OSError as exc:
            where = self.where(LOCK)
            st = self.lstat(LOCK)
            what = "is a symbolic link; krepis never follows links in an archive directory" \
                if st is not None and stat.S_ISLNK(st.st_mode) else f"cannot be opened: {exc.strerror}"
            raise StorageError(f"the archive's lock file {where} {what}", where) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"the archive's lock file {self.where(LOCK)} is not a regular file",
                                   self.where(LOCK))
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
