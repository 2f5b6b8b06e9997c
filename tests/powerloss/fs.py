"""powerloss-fs: a pass-through FUSE file system that remembers which bytes are not yet durable.

Run as ``python -m powerloss.fs BACKING SHADOW MOUNTPOINT CONTROL_SOCKET`` (from ``tests/``).

Every operation goes straight through to the backing directory, so processes on the mount see
an ordinary file system. Alongside, the file system keeps the **durable image** of the tree in
the shadow directory: what a disk would still hold if the machine lost power now.

The durability model (that of a journaling Linux file system such as ext4, data=ordered):

* A ``write`` is *pending* (not durable) until an ``fsync``/``fdatasync`` of that file. A write
  through a descriptor opened with ``O_SYNC``/``O_DSYNC`` (LMDB writes its meta page so) is
  durable when it returns — that write only, not the file's other pending writes. (Linux sends
  an fsync through that descriptor after each such write; it is not counted as an fsync.)
* A ``truncate`` is pending like a write, in order with the writes of its file.
* Namespace changes (create, mkdir, unlink, rmdir, rename) are pending until the next
  ``fsync``/``fdatasync``/``fsyncdir`` of any file (a journal commit takes every metadata change).

On a ``cut`` command (sent through the control socket once every process using the mount is
dead) the backing tree is reset to the simulated post-power-loss state, which then counts as
durable:

* mode ``A`` ("drop"): every pending write is lost: each file is exactly its durable image.
* mode ``B`` ("torn"): the durable image plus an arbitrary random subset of the pending writes,
  each split at sector boundaries (``sector`` bytes, default 512) with every sector kept or lost
  on its own — the reordering and torn writes a real disk with a volatile cache may produce.
  The chance to keep a piece is drawn once per cut, so cuts range from keeping almost nothing
  to almost everything. Kept pieces are applied in their original order. Namespace changes are
  treated as in mode A.

To cut at an exact moment, ``arm`` names a file and a count N: the N-th write or fsync of that
file from then on does not complete (a write is in flight: its bytes are pending, so mode B may
keep some of its sectors); it blocks (the file system is "frozen": no other request is
served, as the loop is single-threaded) until ``thaw``, then fails with EIO, and every later
change fails with EIO until ``resume``. The harness kills the writers and cuts while frozen.

The control socket speaks one JSON object per line: ``{"cmd": "ping"}``, ``{"cmd": "stats"}``
(counters, and ``state``: live/frozen/rejecting), ``{"cmd": "cut", "mode": "A"|"B", "seed": int,
"sector": int}``, ``{"cmd": "arm", "file": path, "events": N}``, ``{"cmd": "thaw"}``,
``{"cmd": "resume"}``, ``{"cmd": "config", "ignore_fsync": bool}`` (a disk that lies: fsync
returns without making anything durable).
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import socket
import stat
import sys
import threading
import time
from typing import Any

import mfusepy as fuse

_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


class PowerLossFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, backing: str, shadow: str, control: str) -> None:
        self.backing = os.path.realpath(backing)
        self.shadow = os.path.realpath(shadow)
        self.control = control
        self._mu = threading.RLock()
        # fh -> (os fd, relative path, opened with O_SYNC/O_DSYNC)
        self.files: dict[int, tuple[int, str, bool]] = {}
        self.pending: dict[str, list[tuple[int, bytes] | tuple[int, None]]] = {}
        self.meta: list[tuple[str, ...]] = []
        self.ignore_fsync = False
        # Cut at an exact I/O event: "live" → (the armed event) "frozen": that request blocks
        # until the harness, having killed the writers and cut, sends "thaw" → "rejecting":
        # every change fails with EIO until the writers are reaped and "resume" → "live".
        self.state = "live"
        self.arm: list[Any] | None = None  # [relative path, events left]
        self.thaw = threading.Event()
        self.stats: dict[str, Any] = {"fsyncs": {}, "sync_writes": {}, "last_durable_ns": {},
                                      "writes": 0, "cuts": 0}
        _mirror(self.backing, self.shadow)  # what is on disk at mount time is durable

    # -- helpers ---------------------------------------------------------------------------
    def _b(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    @staticmethod
    def _rel(path: str) -> str:
        return path.lstrip("/")

    def _make_durable(self, rel: str | None, kind: str) -> None:
        """fsync semantics: the namespace changes, then the file's pending writes, reach the image."""
        now = time.monotonic_ns()
        self._commit_meta()
        if rel is not None:
            ops = self.pending.pop(rel, [])
            target = os.path.join(self.shadow, rel)
            if ops and os.path.exists(target):
                fd = os.open(target, os.O_WRONLY)
                try:
                    for offset, data in ops:
                        if data is None:
                            os.ftruncate(fd, offset)
                        else:
                            os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            counts = self.stats[kind]
            counts[rel] = counts.get(rel, 0) + 1
            self.stats["last_durable_ns"][rel] = now

    def _make_range_durable(self, rel: str, offset: int, data: bytes) -> None:
        """An O_SYNC/O_DSYNC write: that write alone (not the file's other pending writes)
        reaches the image, and no earlier pending write may later cover its bytes."""
        now = time.monotonic_ns()
        self._commit_meta()
        ops = self.pending.get(rel, [])
        if ops and ops[-1] == (offset, data):
            ops.pop()
        end = offset + len(data)
        trimmed: list[tuple[int, bytes] | tuple[int, None]] = []
        for off, old in ops:
            if old is None or off + len(old) <= offset or off >= end:
                trimmed.append((off, old))
                continue
            if off < offset:
                trimmed.append((off, old[:offset - off]))
            if off + len(old) > end:
                trimmed.append((end, old[end - off:]))
        if trimmed:
            self.pending[rel] = trimmed
        else:
            self.pending.pop(rel, None)
        target = os.path.join(self.shadow, rel)
        if os.path.exists(target):
            fd = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        counts = self.stats["sync_writes"]
        counts[rel] = counts.get(rel, 0) + 1
        self.stats["last_durable_ns"][rel] = now

    def _commit_meta(self) -> None:
        for op in self.meta:
            kind, rel = op[0], op[1]
            target = os.path.join(self.shadow, rel)
            try:
                if kind == "create":
                    if not os.path.exists(target):
                        with open(target, "wb"):
                            pass
                elif kind == "mkdir":
                    os.makedirs(target, exist_ok=True)
                elif kind == "unlink":
                    os.unlink(target)
                elif kind == "rmdir":
                    shutil.rmtree(target)
                elif kind == "rename":
                    new = os.path.join(self.shadow, op[2])
                    if os.path.isdir(new) and not os.path.islink(new):
                        shutil.rmtree(new)
                    os.replace(target, new)
            except FileNotFoundError:
                pass  # e.g. created and removed again between two commits
        self.meta.clear()

    # -- control ---------------------------------------------------------------------------
    def cut(self, mode: str, seed: int, sector: int) -> dict[str, Any]:
        """Reset the backing tree to the post-power-loss state; that state becomes durable."""
        if mode not in ("A", "B"):
            raise ValueError(f"cut mode must be 'A' or 'B', got {mode!r}")
        if sector < 1:
            raise ValueError(f"sector size must be >= 1, got {sector}")
        rng = random.Random(seed)
        report: dict[str, Any] = {"mode": mode, "files": {}}
        with self._mu:
            keep_p = rng.random()
            kept: list[tuple[str, int, bytes | None]] = []
            for rel, ops in sorted(self.pending.items()):
                info = {"pending_ops": len(ops), "pending_bytes": sum(len(d) for _, d in ops if d),
                        "kept_pieces": 0, "lost_pieces": 0}
                report["files"][rel] = info
                if mode != "B" or not os.path.exists(os.path.join(self.shadow, rel)):
                    info["lost_pieces"] = len(ops)
                    continue
                for offset, data in ops:
                    pieces: list[tuple[int, bytes | None]]
                    if data is None:
                        pieces = [(offset, None)]
                    else:
                        pieces = []
                        pos = offset
                        while pos < offset + len(data):
                            end = min((pos // sector + 1) * sector, offset + len(data))
                            pieces.append((pos, data[pos - offset:end - offset]))
                            pos = end
                    for piece in pieces:
                        if rng.random() < keep_p:
                            kept.append((rel, *piece))
                            info["kept_pieces"] += 1
                        else:
                            info["lost_pieces"] += 1
            self.pending.clear()
            self.meta.clear()
            for rel, offset, data in kept:  # on top of the durable image, in the original order
                fd = os.open(os.path.join(self.shadow, rel), os.O_WRONLY)
                try:
                    if data is None:
                        os.ftruncate(fd, offset)
                    else:
                        os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)
            _mirror(self.shadow, self.backing)
            self.stats["cuts"] += 1
        return report

    def serve_control(self) -> None:
        if os.path.exists(self.control):
            os.unlink(self.control)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.control)
        server.listen(4)
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    try:
                        msg = json.loads(line)
                        reply: dict[str, Any] = {"ok": True}
                        cmd = msg.get("cmd")
                        if cmd == "ping":
                            pass
                        elif cmd == "stats":
                            with self._mu:
                                reply["stats"] = json.loads(json.dumps(self.stats))
                                reply["stats"]["state"] = self.state
                                reply["pending"] = {k: len(v) for k, v in self.pending.items()}
                        elif cmd == "cut":
                            reply["report"] = self.cut(msg["mode"], int(msg["seed"]),
                                                       int(msg.get("sector", 512)))
                        elif cmd == "arm":
                            with self._mu:
                                self.arm = [str(msg["file"]), int(msg["events"])]
                        elif cmd == "thaw":
                            with self._mu:
                                self.state = "rejecting"
                                self.arm = None
                            self.thaw.set()
                        elif cmd == "resume":
                            with self._mu:
                                self.state = "live"
                            self.thaw.clear()
                        elif cmd == "config":
                            with self._mu:
                                self.ignore_fsync = bool(msg["ignore_fsync"])
                        else:
                            raise ValueError(f"unknown command {cmd!r}")
                    except Exception as exc:  # report it to the harness, keep serving
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    stream.write(json.dumps(reply).encode() + b"\n")
                    stream.flush()

    def _live(self, rel: str | None = None, in_flight: tuple[int, bytes] | None = None) -> None:
        """Refuse changes unless live; freeze at the armed event (a write or fsync of ``rel``).

        A write the cut lands on is in flight: its bytes count as pending (not in the backing
        file), so mode A drops it and mode B may keep some of its sectors — a torn last write.
        """
        with self._mu:
            if self.state != "live":
                raise fuse.FuseOSError(errno.EIO)
            if self.arm is None or rel != self.arm[0]:
                return
            self.arm[1] -= 1
            if self.arm[1] > 0:
                return
            self.arm = None
            self.state = "frozen"
            if in_flight is not None and rel is not None:
                self.pending.setdefault(rel, []).append(in_flight)
        self.thaw.wait()  # meanwhile the harness kills every writer and cuts the power
        raise fuse.FuseOSError(errno.EIO)

    # -- FUSE operations -------------------------------------------------------------------
    def init(self, path: str) -> None:
        threading.Thread(target=self.serve_control, name="powerloss-control", daemon=True).start()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        if fh is not None and fh in self.files:
            st = os.fstat(self.files[fh][0])
        else:
            st = os.lstat(self._b(path))
        attrs = {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size")}
        return attrs | {"st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._b(path))]

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._b(path))
        return {key: getattr(sv, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
            "f_frsize", "f_namemax")}

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._b(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._b(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._b(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._b(path), ns=times) if times else os.utime(self._b(path))
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._live()
        with self._mu:
            os.mkdir(self._b(path), mode)
            self.meta.append(("mkdir", self._rel(path)))
        return 0

    def rmdir(self, path: str) -> int:
        self._live()
        with self._mu:
            os.rmdir(self._b(path))
            self.meta.append(("rmdir", self._rel(path)))
        return 0

    def unlink(self, path: str) -> int:
        self._live()
        with self._mu:
            os.unlink(self._b(path))
            self.pending.pop(self._rel(path), None)
            self.meta.append(("unlink", self._rel(path)))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._live()
        with self._mu:
            os.rename(self._b(old), self._b(new))
            ro, rn = self._rel(old), self._rel(new)
            self.pending.pop(rn, None)
            if ro in self.pending:
                self.pending[rn] = self.pending.pop(ro)
            self.meta.append(("rename", ro, rn))
        return 0

    def _register(self, fd: int, path: str, flags: int) -> int:
        self.files[fd] = (fd, self._rel(path), bool(flags & _SYNC_FLAGS))
        return fd

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_TRUNC:
            self._live()
        with self._mu:
            fd = os.open(self._b(path), flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_TRUNC))
            if flags & os.O_TRUNC:
                self._truncate(fd, self._rel(path), 0, flags)
            return self._register(fd, path, flags)

    def create(self, path: str, mode: int, flags: int = os.O_RDWR) -> int:
        self._live()
        with self._mu:
            rel = self._rel(path)
            existed = os.path.exists(self._b(path))
            fd = os.open(self._b(path), (flags | os.O_CREAT) & ~os.O_TRUNC, mode)
            if not existed:
                self.meta.append(("create", rel))
            elif flags & os.O_TRUNC:
                self._truncate(fd, rel, 0, flags)
            return self._register(fd, path, flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(self.files[fh][0], size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._live(self.files[fh][1] if fh in self.files else self._rel(path), (offset, bytes(data)))
        with self._mu:
            fd, rel, sync = self.files[fh]
            written = os.pwrite(fd, data, offset)
            self.stats["writes"] += 1
            self.pending.setdefault(rel, []).append((offset, bytes(data[:written])))
            if sync and not self.ignore_fsync:  # O_SYNC/O_DSYNC: durable when the write returns
                self._make_range_durable(rel, offset, bytes(data[:written]))
            return written

    def _truncate(self, fd: int, rel: str, length: int, flags: int) -> None:
        os.ftruncate(fd, length)
        self.pending.setdefault(rel, []).append((length, None))
        if flags & _SYNC_FLAGS and not self.ignore_fsync:
            self._make_durable(rel, "sync_writes")

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        self._live()
        with self._mu:
            if fh is not None and fh in self.files:
                fd, rel, sync = self.files[fh]
                self._truncate(fd, rel, length, os.O_SYNC if sync else 0)
            else:
                fd = os.open(self._b(path), os.O_WRONLY)
                try:
                    self._truncate(fd, self._rel(path), length, 0)
                finally:
                    os.close(fd)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if not (fh in self.files and self.files[fh][2]):
            self._live(self.files[fh][1] if fh in self.files else self._rel(path))
        with self._mu:
            if fh in self.files and self.files[fh][2]:
                # Linux follows every O_SYNC/O_DSYNC write to a FUSE file with an fsync of that
                # descriptor; the write already made its own bytes durable and must not make the
                # file's other pending writes durable (on a real file system it flushes only its
                # range). So an fsync through such a descriptor is not counted as one.
                return 0
            if not self.ignore_fsync:
                self._make_durable(self.files[fh][1] if fh in self.files else self._rel(path), "fsyncs")
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._live()
        with self._mu:
            if not self.ignore_fsync:
                self._make_durable(None, "fsyncs")
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mu:
            entry = self.files.pop(fh, None)
        if entry is not None:
            os.close(entry[0])
        return 0


def _mirror(src: str, dst: str) -> None:
    """Make the tree ``dst`` hold exactly the files and directories of ``src``, with their bytes.

    Files are rewritten in place (same inode), so descriptors open on ``dst`` stay valid.
    """
    os.makedirs(dst, exist_ok=True)
    for dirpath, dirs, files in os.walk(dst, topdown=False):
        rel = os.path.relpath(dirpath, dst)
        for name in files:
            if not os.path.isfile(os.path.join(src, rel, name)):
                os.unlink(os.path.join(dirpath, name))
        for name in dirs:
            if not os.path.isdir(os.path.join(src, rel, name)):
                shutil.rmtree(os.path.join(dirpath, name))
    for dirpath, dirs, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for name in dirs:
            os.makedirs(os.path.join(dst, rel, name), exist_ok=True)
        for name in files:
            source = os.path.join(dirpath, name)
            with open(source, "rb") as f:
                data = f.read()
            target = os.path.join(dst, rel, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT, stat.S_IMODE(os.stat(source).st_mode))
            try:
                os.ftruncate(fd, len(data))
                os.pwrite(fd, data, 0)
            finally:
                os.close(fd)


def main(argv: list[str]) -> None:
    backing, shadow, mountpoint, control = argv
    fs = PowerLossFS(backing, shadow, control)
    # No attribute/entry caching: after a cut the kernel must see the reset files at once. Page
    # cache contents are dropped at every open (no kernel_cache/keep_cache).
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=True, fsname="powerloss",
              attr_timeout=0, entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main(sys.argv[1:])
