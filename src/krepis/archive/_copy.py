"""Copying an archive directory for a backup: every file its manifest names, checked against
the manifest while it is read, written durably into a new directory, the manifest last.

Guarantees:

* **No archive run changes the source meanwhile**: the copy holds the archive's lock (the one
  an archive run holds), so the manifest read and the files it names stay as they are.
* **Checked while copied**: each file's length and SHA-256 must be the manifest's, or the copy
  stops with a ``CorruptStorageError`` naming the source file.
* **Durable, manifest last**: each file is written under a fresh temporary name
  (``O_CREAT|O_EXCL|O_NOFOLLOW``, mode 0600), fsynced and renamed, the directory fsynced; the
  manifest — naming the copy's store — comes after every file it names. A copy cut short has
  no manifest: it is no archive, and nothing reads it as one.
* **Nothing written outside the destination**, which must be new or an empty directory and
  pass the checks of an archive directory; on failure, what this call created is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import CorruptStorageError, StorageError, ValidationError
from ._files import LOCK, ArchiveDir
from ._format import VERSION
from ._manifest import MANIFEST, MAX_MANIFEST_BYTES, encode_manifest, parse_manifest

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveCopy:
    """What :func:`copy_archive` wrote: the directory, the files (the manifest included) and
    their bytes."""

    directory: str
    files: int
    bytes: int


def copy_archive(source: str, destination: str, location: str,
                 progress: Callable[[int, int], None] | None = None) -> ArchiveCopy:
    """Copy the archive at ``source`` into ``destination`` (new, or an empty directory), its
    manifest naming the store at ``location`` (the backup's). ``progress(bytes, total)`` is
    called as files are written. Refused (nothing left behind): a source that is not an archive
    or whose files do not match its manifest (``CorruptStorageError``), a format-1 archive (run
    ``krepis archive`` once to upgrade it), a destination that is not empty (``StorageError``)."""
    src = ArchiveDir.open(source, create=False)
    try:
        with src.lock():
            raw = src.read(MANIFEST, MAX_MANIFEST_BYTES, missing_ok=True)
            if raw is None:
                raise ValidationError(f"there is no archive at {src.path} (no {MANIFEST})")
            manifest = parse_manifest(raw, src.where(MANIFEST))
            if manifest["version"] != VERSION:
                raise ValidationError(f"the archive at {src.path} is in format {manifest['version']}: run "
                                      "krepis archive on its store once (it upgrades the archive), then "
                                      "copy it")
            files = [(d["file"], d["bytes"], d["sha256"]) for d in manifest["dictionaries"].values()]
            files += [(seg["file"], seg["bytes"], seg["sha256"])
                      for log in manifest["logs"] for seg in log["segments"]]
            total = sum(size for _, size, _ in files)
            return _write(src, files, total, manifest, destination, location, progress)
    finally:
        src.close()


def _write(src: ArchiveDir, files: list[tuple[str, int, str]], total: int, manifest: dict[str, object],
           destination: str, location: str, progress: Callable[[int, int], None] | None) -> ArchiveCopy:
    existed = os.path.lexists(os.path.abspath(os.path.expanduser(destination)))
    dest = ArchiveDir.open(destination, create=True)
    written: list[str] = []
    done = False
    try:
        if [name for name in dest.names() if name != LOCK]:
            raise StorageError(f"the archive copy's directory {dest.path} exists and is not empty", dest.path)
        copied = 0
        for name, size, sha256 in files:
            written.append(name)
            _copy_file(src, dest, name, size, sha256)
            copied += size
            if progress is not None:
                progress(copied, total)
        manifest = {**manifest, "store": {"location": location}}
        data = encode_manifest(manifest)
        written.append(MANIFEST)
        dest.write_durable(MANIFEST, data)
        done = True
        return ArchiveCopy(dest.path, len(files) + 1, copied + len(data))
    finally:
        if not done:
            for name in reversed(written):
                dest.unlink(name)
            with contextlib.suppress(OSError):
                if not existed:
                    dest.unlink(LOCK)
                    os.rmdir(dest.path)
        dest.close()


def _copy_file(src: ArchiveDir, dest: ArchiveDir, name: str, size: int, sha256: str) -> None:
    fd = src.open_file(name)
    assert fd is not None
    tmp = f".tmp-{name}.{secrets.token_hex(8)}"
    try:
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                      dir_fd=dest.fd)
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot create {dest.where(tmp)}: {exc.strerror}", dest.where(tmp)) from None
    try:  # (from here on the temporary file is this call's: removed whatever happens)
        try:
            digest, offset = hashlib.sha256(), 0
            while offset < size:
                part = src.pread(fd, offset, min(_CHUNK, size - offset), name)
                digest.update(part)
                view = memoryview(part)
                while view:
                    view = view[os.write(out, view):]
                offset += len(part)
            if os.pread(fd, 1, size) or digest.hexdigest() != sha256:
                raise CorruptStorageError(f"archive file {src.where(name)} does not match the manifest's "
                                          "length and sha256: it is damaged (krepis verify --archive "
                                          "names what)", src.where(name))
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(tmp, name, src_dir_fd=dest.fd, dst_dir_fd=dest.fd)
        dest.fsync()
    except OSError as exc:
        raise StorageError(f"cannot write {dest.where(name)}: {exc.strerror}", dest.where(name)) from None
    finally:
        dest.unlink(tmp)
        os.close(fd)
