"""Where a store may live: the checks on its directory and the path to it (ownership, modes,
symbolic links), done before anything is opened. See "Operating safely" in
``docs/storage-format.md``."""

from __future__ import annotations

import os
import pwd
import stat

from ..._errors import CorruptStorageError, StorageError, ValidationError

_FILE_MODE = 0o600

_DIR_MODE = 0o700

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC

def check_path(path: str) -> None:
    """Refuse a path the operating system cannot take, with a :class:`ValidationError`."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raise ValidationError(
            f"storage path {path!r} contains characters that cannot be a file name "
            "(lone surrogates)") from None
    if b"\0" in raw:
        raise ValidationError(f"storage path {path!r} contains a NUL character")

def _name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None

def _user(uid: int) -> str:
    name = _name(uid)
    return f"uid {uid}" + (f" ({name})" if name else "")

def _check_directory(path: str, st: os.stat_result) -> None:
    """Owned by this user or root, writable by nobody else; else a StorageError saying why."""
    me = os.geteuid()
    if st.st_uid not in (me, 0):
        raise StorageError(
            f"storage directory {path} is owned by {_user(st.st_uid)}, not by this user "
            f"({_user(me)}): its owner could replace the store's files (for instance with links "
            "to files of yours), so krepis does not open it. Run krepis as that user (e.g. sudo "
            f"-u {_name(st.st_uid) or '#' + str(st.st_uid)} krepis …) or chown the directory",
            path)
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = "other users" if mode & stat.S_IWOTH else "its group"
        raise StorageError(
            f"storage directory {path} is writable by {who} (mode {mode:04o}): any of them could "
            f"replace the store's files, so krepis does not open it; chmod 700 {path}", path)

def _trusted(st: os.stat_result) -> bool:
    """Only this user or root can rename entries of this directory."""
    mode = st.st_mode
    return st.st_uid in (os.geteuid(), 0) and (
        not mode & (stat.S_IWGRP | stat.S_IWOTH) or bool(mode & stat.S_ISVTX))

def _check_path_to(path: str, dir_fd: int) -> None:
    """Nobody but this user or root can swap the store directory for another: no symbolic
    link on the way that someone else owns, and every real ancestor of the opened directory is
    owned by this user or root and writable by nobody else (a sticky directory such as /tmp is
    fine: others cannot rename what is ours in it)."""
    me = os.geteuid()
    prefix = os.sep
    for part in path.split(os.sep):
        if not part:
            continue
        prefix = os.path.join(prefix, part)
        try:
            st = os.lstat(prefix)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) and st.st_uid not in (me, 0):
            raise StorageError(
                f"storage path {path} goes through {prefix}, a symbolic link owned by "
                f"{_user(st.st_uid)}: that user could point it at another store, so krepis does "
                "not follow it. Use the real path", path)
    cur = os.dup(dir_fd)
    try:
        here = os.fstat(cur)
        while True:
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = parent
            st = os.fstat(cur)
            if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
                return  # the root of the file system
            here = st
            if not _trusted(st):
                where = os.readlink(f"/proc/self/fd/{cur}") if os.path.exists(
                    f"/proc/self/fd/{cur}") else "a parent directory"
                mode = stat.S_IMODE(st.st_mode)
                raise StorageError(
                    f"storage directory {path} is inside {where} (owner {_user(st.st_uid)}, mode "
                    f"{mode:04o}), which users other than you and root can change: they could "
                    "replace the store directory with another, so krepis does not open it. Move "
                    "the store, or make that directory yours and chmod go-w it", path)
    finally:
        os.close(cur)

def _make_dirs(path: str) -> None:
    """Create the directory (mode 0700) and its missing parents (the umask's mode, but never
    writable by group or others: such a parent would make the store refused)."""
    missing = []
    p = path
    while not os.path.exists(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        leaf = d == path
        try:
            os.mkdir(d, _DIR_MODE if leaf else 0o755)
        except FileExistsError:
            continue  # created meanwhile by someone else; checked like any existing directory
        if leaf:
            os.chmod(d, _DIR_MODE)  # whatever the umask
        else:
            mode = stat.S_IMODE(os.stat(d).st_mode)
            if mode & 0o022:
                os.chmod(d, mode & ~0o022)

def open_directory(path: str, create: bool) -> int:
    """Create (if allowed and missing) and open the store directory; return a pinned fd.

    The directory's owner and mode are checked on the opened descriptor. The path itself may
    pass through symbolic links; the store's entries never do.
    """
    check_path(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise StorageError(f"storage path {path} exists and is not a directory", path)
    if not os.path.exists(path):
        if not create:
            raise StorageError(f"there is no krepis store at {path}", path)
        try:
            _make_dirs(path)
        except OSError as exc:
            raise StorageError(f"cannot create storage directory {path}: {exc.strerror}",
                               path) from exc
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StorageError(f"cannot open storage directory {path}: {exc.strerror}", path) from exc
    try:
        _check_directory(path, os.fstat(fd))
        _check_path_to(path, fd)
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            if _read_only_fs(fd):
                raise StorageError(
                    f"storage directory {path} is on a read-only file system; krepis needs to "
                    "write its lock file even to read", path)
            raise StorageError(
                f"storage directory {path} is not readable and writable by this user", path)
    except BaseException:
        os.close(fd)
        raise
    return fd

def _read_only_fs(fd: int) -> bool:
    try:
        return bool(os.fstatvfs(fd).f_flag & os.ST_RDONLY)
    except OSError:
        return False

def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None

def _check_entry(path: str, name: str, st: os.stat_result) -> None:
    full = os.path.join(path, name)
    if stat.S_ISLNK(st.st_mode):
        raise StorageError(
            f"storage at {path}: {name} is a symbolic link; krepis never follows links in a "
            f"store directory (its target is left untouched). Remove {full} if it is not yours",
            path)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CorruptStorageError(f"storage at {path}: {name} is {kind}", path)
    if st.st_nlink != 1:
        raise StorageError(
            f"storage at {path}: {name} has {st.st_nlink} hard links; a store's files must not "
            "be shared with other paths (LMDB would write through them). Copy the store instead "
            "of linking it", path)
