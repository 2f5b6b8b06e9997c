"""Confining Deno's file access with Linux Landlock: the kernel, not Deno, decides what it opens.

Deno reads some files without a permission check of its own — a source map's ``sources`` to show
a line of code in a Worker's error report, a module named by a ``sourceURL`` — and prints what it
read. Deno's permissions cannot stop that, so every run is confined beneath Deno with Landlock
(Linux >= 5.13): after ``restrict_self`` the process can open only

* the run's private directory (its script copy, prelude, import map and ``DENO_DIR``), fully;
* what Deno needs to start and run: its own binary, the system's shared libraries, the dynamic
  loader's cache, the time zone data, the name-service files (for ``--allow-net``), its own
  ``/proc/<pid>``, a few ``/proc``, ``/sys`` and ``/dev`` entries — read only;
* the read and write roots the :class:`PermissionPolicy` grants, for reading or writing.

Any other ``open`` fails with ``EACCES`` whatever Deno meant to do with the file, so no route —
known today or added by a later Deno — can read a secret for a stack trace. (Landlock does not
restrict ``stat`` or ``readlink``; Deno's own permissions still refuse those to a script.)

:func:`abi_version` tells whether the running kernel offers Landlock; :func:`restrict` runs in
the child between fork and exec.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Confinement", "abi_version", "restrict"]

# Syscall numbers: Landlock came after the syscall tables were unified, so they are the same on
# every architecture Linux numbers uniformly (x86-64, arm64, riscv64, ...).
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13      # ABI 2
TRUNCATE = 1 << 14   # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

#: The rights that apply to a file (a rule on a file may carry only these).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

READ = READ_FILE | READ_DIR
RUN = READ | EXECUTE
WRITE = (WRITE_FILE | TRUNCATE | READ_DIR | MAKE_REG | MAKE_DIR | REMOVE_FILE | REMOVE_DIR
         | REFER)
ALL = (1 << 16) - 1

#: Read only, for Deno to start and run: shared libraries (and the ELF interpreter, which the
#: kernel opens for execution), the loader's cache, time zones, name service, CPU and memory facts.
_SYSTEM_DIRS = ("/lib", "/lib32", "/lib64", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/local/lib")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/ld.so.preload", "/etc/localtime", "/etc/hosts",
                 "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf",
                 "/proc/meminfo", "/proc/cpuinfo", "/proc/stat", "/proc/sys/kernel/osrelease",
                 "/sys/devices/system/cpu/online", "/sys/devices/system/cpu/possible",
                 "/dev/urandom", "/dev/random", "/dev/zero")
#: ``/proc/self`` is opened in the child, so the rule is Deno's own ``/proc/<pid>`` (its maps,
#: cgroup, ...); another process's entries, the host's ``environ`` among them, stay closed.
_SYSTEM_TREES = ("/usr/share/zoneinfo", "/sys/fs/cgroup", "/proc/self")


_libc: Any = None


def _syscall() -> Any:
    """libc's ``syscall``, or None off Linux. Looked up in the parent (by :func:`abi_version`):
    the child between fork and exec must not ``dlopen`` (another thread may have held the
    loader's lock at the fork)."""
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.syscall.restype = ctypes.c_long
            _libc.prctl  # noqa: B018 - resolved now, in the parent
        except (OSError, AttributeError):
            _libc = False
    return _libc.syscall if _libc else None


_version: int | None = None


def abi_version() -> int:
    """The Landlock ABI version the running kernel offers (0: none — not Linux, a kernel older
    than 5.13, Landlock not enabled, or a seccomp filter refusing it)."""
    global _version
    if _version is None:
        fn = _syscall()
        found = 0 if fn is None else int(fn(_CREATE_RULESET, None, ctypes.c_size_t(0),
                                              ctypes.c_uint32(_CREATE_RULESET_VERSION)))
        _version = max(found, 0)
    return _version


def _handled(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


@dataclass(frozen=True)
class Confinement:
    """What one run may open: ``(path, rights)`` pairs on top of the system's share."""

    rules: tuple[tuple[str, int], ...]

    @classmethod
    def for_run(cls, private_dir: str, deno: str, read: Iterable[str],
                write: Iterable[str]) -> Confinement:
        """A run's rules: everything in ``private_dir``, ``deno`` to execute, the system's share
        (read only), the ``read`` roots to read and the ``write`` roots to write."""
        rules: list[tuple[str, int]] = [(private_dir, ALL), (deno, RUN), ("/dev/null", READ | WRITE_FILE)]
        rules += [(path, RUN) for path in _SYSTEM_DIRS]
        rules += [(path, READ) for path in _SYSTEM_FILES + _SYSTEM_TREES]
        rules += [(path, READ) for path in read]
        rules += [(path, WRITE) for path in write]
        return cls(tuple(rules))


class LandlockError(OSError):
    """Landlock refused to set up the confinement (raised in the child, before exec)."""


def restrict(confinement: Confinement) -> None:
    """Confine the calling process (single-threaded: the child between fork and exec) to
    ``confinement``. Paths that do not exist are skipped; any failure raises. Call
    :func:`abi_version` in the parent first (it loads what this needs)."""
    abi = abi_version()
    fn = _syscall()
    if fn is None or abi < 1:
        raise LandlockError("Landlock is not available")
    handled = _handled(abi)
    attr = _RulesetAttr(handled)
    ruleset = int(fn(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                     ctypes.c_uint32(0)))
    if ruleset < 0:
        raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path, rights in confinement.rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # not on this system (or not reachable): nothing to allow
            try:
                allowed = rights & handled
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    allowed &= _FILE_RIGHTS
                if not allowed:
                    continue
                rule = _PathBeneathAttr(allowed, fd)
                if fn(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
                    raise LandlockError(ctypes.get_errno(), f"landlock_add_rule failed for {path!r}")
            finally:
                os.close(fd)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise LandlockError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if fn(_RESTRICT_SELF, ruleset, ctypes.c_uint32(0)) != 0:
            raise LandlockError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
