"""The files of an LMDB store, handled so that neither an attacker nor a careless operator can turn
krepis against them.

Guarantees (each has a test in ``tests/test_safety_files.py`` or ``tests/test_safety_writers.py``):

* **No links followed.** The store directory is opened once and pinned by a file descriptor;
  LMDB is handed ``/proc/self/fd/N``, so the directory cannot be swapped underneath. Its
  ``data.mdb`` and ``lock.mdb`` must be plain regular files with one link each: a symbolic link,
  a hard link, a FIFO or a directory under either name is refused before LMDB touches it (a
  symlink's target is never opened, written or created). Missing files are created here with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600, and LMDB must end up on those very inodes.
* **Trusted directory only.** A store directory must be owned by the user running krepis (or by
  root) and writable by nobody else: whoever can write the directory can replace its files. The
  same holds for every real ancestor (unless sticky, like /tmp), and no symbolic link on the
  given path may belong to another user: whoever can change those can swap the whole directory.
  The check-to-open window that remains is reachable only by this user or root, who can change
  the files anyway.
* **No SIGBUS on a truncated store.** Before LMDB maps ``data.mdb``, its two meta pages are read
  and the file must be at least as long as the newest one says (``(mm_last_pg + 1) × page
  size``); an empty ``data.mdb`` that this open did not create is refused, not re-initialised.
* **One writer, even after ``lock.mdb`` is deleted.** LMDB serializes writers with a mutex inside
  ``lock.mdb``; deleting that file lets a second process build a second, independent lock table.
  Every write transaction therefore also holds an exclusive ``flock`` on ``data.mdb`` itself
  (which survives ``lock.mdb``'s deletion), and before writing checks that ``lock.mdb`` and
  ``data.mdb`` in the directory are still the inodes this process opened. A process whose lock
  table is no longer the store's refuses to read or write (``StorageError``) instead of
  corrupting the store; so does one whose ``data.mdb`` was deleted (writes would be lost).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading

from ..._errors import CorruptStorageError, StorageError
from ._paths import _FILE_MODE, _NOFOLLOW, _check_entry, _lstat

DATA = "data.mdb"

LOCK = "lock.mdb"

LOG = "commit.log"  # see _commitlog.py

STATE = "commit.state"  # (the processes' shared head and marker, beside the log)

MIGRATE_DIR = ".migrate"  # where `krepis migrate` builds the new store before swapping it in

# LMDB's meta page (mdb.c, MDB_meta after the 16-byte page header, 64-bit build):
# mm_magic u32 @0, mm_version u32 @4, mm_address @8, mm_mapsize @16, mm_dbs[2] (48 bytes each)
# @24 — mm_dbs[0].md_pad is the page size — mm_last_pg @120, mm_txnid @128.
_PAGE_HEADER = 16

_META = struct.Struct("<II8x8xI44x48xQQ")

_MAGIC = 0xBEEFC0DE

_DATA_VERSION = 1

_META_CHECKABLE = struct.calcsize("P") == 8

def meta_txnid(pages: bytes, page_size: int) -> int:
    """The newest transaction id of LMDB's two meta pages in ``pages`` (-1 if neither is one)."""
    newest = -1
    for at in (0, page_size):
        if len(pages) >= at + _PAGE_HEADER + _META.size:
            magic, version, _psize, _last, txnid = _META.unpack_from(pages, at + _PAGE_HEADER)
            if magic == _MAGIC and version == _DATA_VERSION:
                newest = max(newest, txnid)
    return newest

class StoreFiles:
    """The pinned directory and ``data.mdb`` of one open environment, and its writer lock."""

    def __init__(self, path: str, dir_fd: int, create: bool) -> None:
        """Check the entries and create missing files; ``dir_fd`` is owned from now on."""
        self.path = path
        self.dir_fd = dir_fd
        self.created: list[str] = []
        self.data_fd = self.lock_fd = -1
        self._writer = 0  # the thread inside writer_lock(), if any
        self._thread_lock = threading.Lock()
        self._ids: dict[str, tuple[int, int]] = {}
        try:
            self._prepare(create)
        except BaseException:
            self.close()
            raise

    @property
    def lmdb_path(self) -> str:
        """The directory as LMDB should open it: through the pinned descriptor where possible."""
        proc = f"/proc/self/fd/{self.dir_fd}"
        return proc if os.path.isdir(proc) else self.path

    def _prepare(self, create: bool) -> None:
        path, dfd = self.path, self.dir_fd
        data = _lstat(DATA, dfd)
        lock = _lstat(LOCK, dfd)
        if lock is not None:
            _check_entry(path, LOCK, lock)
        if data is not None:
            _check_entry(path, DATA, data)
        elif not create:
            raise StorageError(f"there is no krepis store at {path}", path)
        else:
            others = sorted(set(os.listdir(dfd)) - {LOCK, DATA, LOG, LOG + ".new", STATE, MIGRATE_DIR})
            if others:
                shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
                raise StorageError(
                    f"storage directory {path} is not a krepis store and is not empty ({shown}); "
                    "choose an empty or new directory", path)
        for name in (DATA, LOCK):
            if (data if name == DATA else lock) is None:
                self._create(name)
        try:
            self.data_fd = os.open(DATA, os.O_RDONLY | _NOFOLLOW, dir_fd=dfd)
        except OSError as exc:
            raise StorageError(f"cannot open {os.path.join(path, DATA)}: {exc.strerror}",
                               path) from exc
        st = os.fstat(self.data_fd)
        _check_entry(path, DATA, st)
        self._ids[DATA] = (st.st_dev, st.st_ino)
        try:
            # Held until the environment is closed, and closed only after it: closing any
            # descriptor of lock.mdb drops this process's fcntl locks on it, LMDB's included.
            self.lock_fd = os.open(LOCK, os.O_RDONLY | _NOFOLLOW, dir_fd=dfd)
        except OSError as exc:
            raise StorageError(f"cannot open {os.path.join(path, LOCK)}: {exc.strerror}",
                               path) from exc
        st = os.fstat(self.lock_fd)
        _check_entry(path, LOCK, st)
        self._ids[LOCK] = (st.st_dev, st.st_ino)

    def _create(self, name: str) -> None:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _FILE_MODE,
                         dir_fd=self.dir_fd)
        except FileExistsError:
            st = _lstat(name, self.dir_fd)
            if st is not None:  # appeared meanwhile: check it like any existing file
                _check_entry(self.path, name, st)
            return
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise StorageError(f"storage at {self.path} is on a read-only file system",
                                   self.path) from exc
            raise StorageError(f"cannot create {os.path.join(self.path, name)}: {exc.strerror}",
                               self.path) from exc
        try:
            os.fchmod(fd, _FILE_MODE)  # whatever the umask
        finally:
            os.close(fd)  # nothing locks this file yet, so closing it drops no lock
        self.created.append(name)

    def check_data_file(self) -> None:
        """Refuse an empty ``data.mdb`` (unless created by this open) or one shorter than its
        newest meta page claims, before LMDB maps it (a mapping past the end is SIGBUS)."""
        size = os.fstat(self.data_fd).st_size
        full = os.path.join(self.path, DATA)
        if size == 0:
            if DATA in self.created:
                return
            raise CorruptStorageError(
                f"storage at {self.path}: {full} is empty (0 bytes); krepis does not re-initialise "
                "it, since it may be a store that lost its data. If you know it never held any, "
                f"delete {full}", self.path)
        if not _META_CHECKABLE:  # pragma: no cover - 32-bit builds lay the meta out differently
            return
        first = os.pread(self.data_fd, _PAGE_HEADER + _META.size, 0)
        if len(first) < _PAGE_HEADER + _META.size:
            raise CorruptStorageError(
                f"storage at {self.path}: {full} is truncated ({size} bytes, shorter than one "
                "LMDB meta page)", self.path)
        magic, version, psize, last_pg, txnid = _META.unpack_from(first, _PAGE_HEADER)
        if magic != _MAGIC or version != _DATA_VERSION or psize < 512 or psize & (psize - 1):
            return  # not an LMDB data file: LMDB refuses it with its own error, nothing mapped
        newest = (last_pg, txnid)
        newest_offset = 0
        second = os.pread(self.data_fd, _PAGE_HEADER + _META.size, psize)
        if len(second) == _PAGE_HEADER + _META.size:
            m2, v2, _p2, last2, txn2 = _META.unpack_from(second, _PAGE_HEADER)
            if m2 == _MAGIC and v2 == _DATA_VERSION and txn2 > txnid:
                newest = (last2, txn2)
                newest_offset = psize
        need = max(2 * psize, (newest[0] + 1) * psize)
        root_at = newest_offset + _PAGE_HEADER + 64  # the free database's root page number
        root = os.pread(self.data_fd, 8, root_at)
        if size < need and not _tail_is_free(self.data_fd, psize, root, size, newest[0]):
            raise CorruptStorageError(
                f"storage at {self.path}: {full} is truncated: its meta page (transaction "
                f"{newest[1]}) needs {need} bytes, the file has {size}. Restore it from a "
                "backup; krepis will not map it", self.path)

    def check_attached(self) -> None:
        """Raise :class:`StorageError` unless ``data.mdb`` and ``lock.mdb`` are still linked in
        the directory: deleting a file, or renaming another over it, leaves the inode this
        process holds with no link (one ``fstat`` each; the inodes were single-link at open)."""
        if os.fstat(self.data_fd).st_nlink == 0:
            raise StorageError(self._detached_message(DATA), self.path)
        if os.fstat(self.lock_fd).st_nlink == 0:
            raise StorageError(self._detached_message(LOCK), self.path)

    def check_reader(self) -> None:
        """The check before a read: only the lock table matters (a deleted ``data.mdb`` still
        reads consistently); skipped inside this thread's write transaction, checked there."""
        if self._writer != threading.get_ident() and os.fstat(self.lock_fd).st_nlink == 0:
            self.check_attached()  # names data.mdb when the whole store was deleted

    def _detached_message(self, name: str) -> str:
        if name == DATA:
            return (f"storage at {self.path}: {DATA} was deleted or replaced while the store was "
                    "open; krepis stopped using it so that no write is silently lost. Close the "
                    "journal and check the store")
        return (f"storage at {self.path}: {LOCK} was deleted or replaced while the store was "
                "open, so another process may be using a different lock table; this journal "
                "stopped reading and writing to protect the store. Close and reopen it, and never "
                f"delete {LOCK} while krepis runs (see docs/storage-format.md)")

    def verify_opened(self) -> None:
        """After LMDB opened the directory: it must have found exactly the files checked here."""
        for name in (DATA, LOCK):
            st = _lstat(name, self.dir_fd)
            if st is None or (st.st_dev, st.st_ino) != self._ids[name]:
                raise StorageError(
                    f"storage at {self.path}: {name} was replaced while the store was being "
                    "opened; nothing was written. Check who else writes this directory",
                    self.path)

    def open_log(self, name: str = LOG) -> int | None:
        """A read-write descriptor of ``commit.log`` (or ``name``: ``commit.state``), checked
        like the other files, or ``None`` when there is none."""
        st = _lstat(name, self.dir_fd)
        if st is None:
            return None
        _check_entry(self.path, name, st)
        try:
            fd = os.open(name, os.O_RDWR | _NOFOLLOW, dir_fd=self.dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot open {os.path.join(self.path, name)}: {exc.strerror}",
                               self.path) from exc
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise StorageError(f"storage at {self.path}: {name} was replaced while being opened",
                               self.path)
        return fd

    def alone(self) -> bool:
        """Whether no other process has the environment open (nobody holds LMDB's shared lock on
        byte 0 of ``lock.mdb``). Only meaningful before this process opens it, under the
        directory lock that every opener takes."""
        try:
            fd = os.open(LOCK, os.O_RDWR | _NOFOLLOW, dir_fd=self.dir_fd)
        except OSError as exc:
            raise StorageError(f"cannot open {os.path.join(self.path, LOCK)}: {exc.strerror}",
                               self.path) from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0, os.SEEK_SET)
        except OSError:
            return False
        finally:
            os.close(fd)  # this process holds no other fcntl lock on lock.mdb yet
        return True

    def writer_lock(self) -> _WriterLock:
        """Hold the store-wide writer lock: one write transaction at a time across threads and
        processes, independent of ``lock.mdb``; under it, check the files are still ours."""
        return _WriterLock(self)

    def remove_created(self) -> None:
        """Undo a failed open: remove only the files this open created."""
        for name in self.created:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self.dir_fd)
        self.created = []

    def close(self) -> None:
        """Close the descriptors (after the LMDB environment is closed). Idempotent."""
        for fd in (self.lock_fd, self.data_fd, self.dir_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.lock_fd = self.data_fd = self.dir_fd = -1

class _WriterLock:
    """``with files.writer_lock():`` — a class rather than a generator: it runs on every write."""

    __slots__ = ("_files",)

    def __init__(self, files: StoreFiles) -> None:
        self._files = files

    def __enter__(self) -> None:
        files = self._files
        files._thread_lock.acquire()  # flock is per open file: threads must be serialized first
        try:
            fcntl.flock(files.data_fd, fcntl.LOCK_EX)
        except BaseException:
            files._thread_lock.release()
            raise
        try:
            files.check_attached()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        files._writer = threading.get_ident()

    def __exit__(self, *exc: object) -> None:
        files = self._files
        files._writer = 0
        try:
            fcntl.flock(files.data_fd, fcntl.LOCK_UN)
        finally:
            files._thread_lock.release()

_FREE_ROOT = struct.Struct("<Q")  # the free database's root page, at offset 64 of the meta

_NO_PAGE = 2**64 - 1

def _tail_is_free(fd: int, psize: int, raw: bytes, size: int, last_pg: int) -> bool:
    """Whether every page between the end of ``data.mdb`` and the meta page's last page is on
    LMDB's free list (so LMDB never reads it: a free page is rewritten before use).

    LMDB does not write the pages a transaction allocated and freed again ("loose" pages), so a
    commit that deletes data can leave the file shorter than its last page number claims. The
    free list is walked from the newest meta page; any page of it past the end of the file, or
    any malformed page, means the file was truncated."""
    first_missing = size // psize
    missing = set(range(first_missing, last_pg + 1))
    if len(missing) > 1 << 20:
        return False
    if len(raw) != 8:
        return False
    (root,) = _FREE_ROOT.unpack(raw)
    if root == _NO_PAGE:
        return False
    stack, seen = [root], 0
    try:
        while stack:
            pgno = stack.pop()
            seen += 1
            if pgno >= first_missing or seen > 1 << 20:
                return False
            page = os.pread(fd, psize, pgno * psize)
            if len(page) != psize:
                return False
            flags, lower = struct.unpack_from("<HH", page, 10)
            nodes = [struct.unpack_from("<H", page, _PAGE_HEADER + 2 * i)[0]
                     for i in range((lower - _PAGE_HEADER) >> 1)]
            for off in nodes:
                lo, hi, nflags, ksize = struct.unpack_from("<HHHH", page, off)
                if flags & 0x01:  # a branch page: the node holds a child page number
                    stack.append(lo | hi << 16 | nflags << 32)
                    continue
                if not flags & 0x02:
                    return False
                dsize = lo | hi << 16
                data_at = off + 8 + ksize
                if nflags & 0x01:  # F_BIGDATA: the page list is on an overflow page
                    (ovpg,) = struct.unpack_from("<Q", page, data_at)
                    if ovpg >= first_missing:
                        return False
                    data = os.pread(fd, dsize, ovpg * psize + _PAGE_HEADER)
                else:
                    data = page[data_at:data_at + dsize]
                if len(data) != dsize or dsize < 8:
                    return False
                count = struct.unpack_from("<Q", data)[0]
                if 8 * (count + 1) > dsize:
                    return False
                missing.difference_update(struct.unpack_from(f"<{count}Q", data, 8))
                if not missing:
                    return True
    except struct.error:
        return False
    return not missing
