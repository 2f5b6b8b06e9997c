"""Checking an archive: every file against the manifest, every bundle against its hash and
the store's tree."""

from __future__ import annotations

import os

from .._errors import CorruptStorageError, ValidationError
from ..storage import Storage
from ..tlog._merkle import TILE_HEIGHT
from ._format import (
    FORMAT,
    MANIFEST,
    VERSION,
    WIDTH,
    _check_directory,
    _log_of,
    _read_manifest,
    _sha256_file,
    bundle_hash,
)
from ._policy import ArchiveVerifyReport
from ._reader import ArchiveReader


def verify_archive(directory: str | os.PathLike[str], storage: Storage | None) -> ArchiveVerifyReport:
    """Check every file the manifest names against its checksum, every bundle's entries against
    the hash recorded for it, and — for the store's current log — against the tree's stored
    height-8 node. Raises :class:`CorruptStorageError` naming the file (and bundle) at fault."""
    path = _check_directory(directory, create=False)
    manifest = _read_manifest(path)
    if manifest is None:
        manifest = {"format": FORMAT, "version": VERSION, "dictionaries": {}, "logs": []}
    head = None if storage is None else storage.tree_head()
    if storage is not None and head is not None:
        live = storage.live_first_seq()
        cur = _log_of(manifest, head.epoch)
        end = head.first_seq + (0 if cur is None else cur["bundles"] * WIDTH)
        if end < live:
            raise ValidationError(f"the store's entries before seq {live} are not in the archive at {path} "
                                  f"(it ends at seq {end}): is it the store's archive directory?")
    segments = bundles = entries = 0
    for ident, meta in manifest["dictionaries"].items():
        file = os.path.join(path, meta["file"])
        if not os.path.exists(file):
            raise CorruptStorageError(f"archive file {file} is missing", file)
        if _sha256_file(file) != meta["sha256"]:
            raise CorruptStorageError(f"archive file {file} does not match its checksum (dictionary {ident})",
                                      file)
    for log in manifest["logs"]:
        if head is not None and log["epoch"] == head.epoch and log["first_seq"] != head.first_seq:
            raise ValidationError(f"the archive at {path} holds another log {head.epoch} than the store's")
        current = head is not None and log["epoch"] == head.epoch
        reader = ArchiveReader(path, log["epoch"], log["first_seq"])
        expect = 0
        for seg in log["segments"]:
            file = os.path.join(path, seg["file"])
            if not os.path.exists(file):
                raise CorruptStorageError(f"archive file {file} is missing", file)
            if _sha256_file(file) != seg["sha256"]:
                raise CorruptStorageError(f"archive file {file} does not match its checksum", file)
            if seg["first_bundle"] != expect:
                raise CorruptStorageError(f"archive file {file} starts at bundle {seg['first_bundle']}; "
                                          f"bundle {expect} is missing", file)
            idx = reader.segment_index(seg)
            for i in range(seg["bundles"]):
                k = seg["first_bundle"] + i
                data = reader.bundle_data(k)
                got = bundle_hash(data)
                if got != idx.hashes[i]:
                    raise CorruptStorageError(f"archive file {file}: bundle {k} does not match its "
                                              "recorded hash", file)
                if current:
                    assert storage is not None
                    stored = storage.tree_node(TILE_HEIGHT, k)
                    if stored != got:
                        raise CorruptStorageError(
                            f"archive file {file}: bundle {k} (entries {log['first_seq'] + k * WIDTH}…) "
                            "does not match the store's Merkle tree", file)
                bundles += 1
                entries += len(data)
            expect += seg["bundles"]
            segments += 1
        if expect != log["bundles"]:
            raise CorruptStorageError(f"{path}/{MANIFEST}: log {log['epoch']} lists {log['bundles']} "
                                      f"bundles; its segments hold {expect}", path)
    return ArchiveVerifyReport(path, segments, bundles, entries)
