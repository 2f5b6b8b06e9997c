"""Checking an archive: every file against the manifest, every bundle against its hash and
the store's tree."""

from __future__ import annotations

import os

from .._errors import CorruptStorageError, ValidationError
from ..storage import Progress, Storage
from ..tlog._merkle import TILE_HEIGHT
from ._files import ArchiveDir
from ._format import WIDTH
from ._manifest import log_of, new_manifest
from ._policy import ArchiveVerifyReport
from ._reader import ArchiveReader, read_manifest


def _check_file(adir: ArchiveDir, name: str, sha256: str, size: int | None, what: str = "") -> None:
    fd = adir.open_file(name)
    assert fd is not None
    try:
        got, length = adir.sha256(fd, name)
    finally:
        os.close(fd)
    if got != sha256 or (size is not None and length != size):
        where = adir.where(name)
        raise CorruptStorageError(f"archive file {where} does not match its checksum{what}", where)


def verify_archive(directory: str | os.PathLike[str], storage: Storage | None, *,
                   progress: Progress | None = None) -> ArchiveVerifyReport:
    """Check every file the manifest names against its checksum, every bundle's entries against
    the hash recorded for it, and — for the store's current log — against the tree's stored
    height-8 node. Only the files the manifest names (by the names the format derives) are
    opened, inside the directory. Raises :class:`CorruptStorageError` naming the file (and
    bundle) at fault. ``progress(entries, total)`` is called after each bundle checked (total:
    the entries the manifest names)."""
    with ArchiveDir.open(directory, create=False) as adir:
        path = adir.path
        manifest = read_manifest(adir) or new_manifest("")
        head = None if storage is None else storage.tree_head()
        if storage is not None and head is not None:
            live = storage.live_first_seq()
            cur = log_of(manifest, head.epoch)
            end = head.first_seq + (0 if cur is None else cur["bundles"] * WIDTH)
            if end < live:
                raise ValidationError(f"the store's entries before seq {live} are not in the archive at "
                                      f"{path} (it ends at seq {end}): is it the store's archive directory?")
        segments = bundles = entries = 0
        total = sum(log["bundles"] for log in manifest["logs"]) * WIDTH
        for ident, meta in manifest["dictionaries"].items():
            _check_file(adir, meta["file"], meta["sha256"], meta["bytes"], f" (dictionary {ident})")
        for log in manifest["logs"]:
            if head is not None and log["epoch"] == head.epoch and log["first_seq"] != head.first_seq:
                raise ValidationError(f"the archive at {path} holds another log {head.epoch} than the "
                                      "store's")
            current = head is not None and log["epoch"] == head.epoch
            tree = None
            if current:
                assert storage is not None
                tree = lambda k, s=storage: s.tree_node(TILE_HEIGHT, k)  # noqa: E731
            reader = ArchiveReader(adir, log["epoch"], log["first_seq"], tree, manifest)
            for seg in log["segments"]:
                _check_file(adir, seg["file"], seg["sha256"], seg["bytes"])
                reader.segment_index(seg)
                for k in range(seg["first_bundle"], seg["first_bundle"] + seg["bundles"]):
                    entries += len(reader.bundle_data(k))  # (checked against the tree / the index)
                    bundles += 1
                    if progress is not None:
                        progress(entries, total)
                segments += 1
        return ArchiveVerifyReport(path, segments, bundles, entries)
