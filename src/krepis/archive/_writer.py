"""The journal's cold storage: whole bundles of 256 entries moved out of the live store into a
directory of zstd-compressed, verifiable segment files (format: ``docs/archive.md``).

Guarantees:

* **Whole bundles, in append order.** Bundle ``k`` of a log is its leaves ``256k … 256k+255``
  (``seq = first_seq + leaf``); it decompresses to exactly the C2SP entry bundle
  ``tile/entries/k`` that ``krepis tlog export`` writes, and its Merkle hash is checked against
  the tree's stored height-8 node before it is written.
* **Durable and checked before removed.** A segment file and then the manifest naming it are
  written, fsynced and renamed into place (the directory fsynced too); then the archive is read
  back from disk — the manifest, each new bundle decompressed, its hash compared with the tree's
  stored node and its bytes with the store's entries — and only then does the store remove
  those entries. A crash at any point leaves every entry readable exactly once (reads take seqs
  below the store's live first seq from the archive, the rest from the store); the next run
  completes the work after the same check, so a damaged or forged archive never costs an entry.
* **Only its own files.** A non-empty directory that is not an archive is refused unchanged;
  the only files ever removed are those a crashed run provably left (see ``_ours``), and no
  file is written through a link or renamed over a file it did not prove its own.
* **Counters and the tree are untouched**: the stored tree nodes keep proofs and checkpoints of
  every entry working; proofs of archived entries read their leaves from the archive.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import Callable
from typing import Any

from .._errors import CorruptStorageError, JournalError, ValidationError
from .._model import LogStatus, TransactionLog, encode_log, make_log
from ..storage import Progress, Query, Storage
from ..storage._codec import rid_hash
from ..tlog._merkle import TILE_HEIGHT
from ._files import LOCK, TEMP_NAME, ArchiveDir
from ._format import (
    _KEY,
    _TRAILER,
    DICT_MIN_BUNDLES,
    DICT_SIZE,
    MAX_SEGMENT_BUNDLES,
    VERSION,
    WIDTH,
    _encode_segment,
    _zstd,
    bundle_hash,
    bundle_of,
    segment_name,
)
from ._manifest import MANIFEST, MAX_DICT_BYTES, encode_manifest, log_of, new_manifest
from ._policy import ArchiveReport
from ._reader import ArchiveReader, load_index, read_manifest

_SEGMENT_NAME = re.compile(r"log([0-9]{6,})-([0-9]{12,})\.kseg\Z")

_DICT_NAME = re.compile(r"dict-([0-9a-f]{16})\.zdict\Z")

_DICT_MAGIC = b"\x37\xa4\x30\xec"


class _Source:
    """Entries of the live store in append order, a bundle at a time."""

    def __init__(self, storage: Storage, start_seq: int) -> None:
        self._storage, self._next = storage, start_seq
        self._buffer: list[TransactionLog] = []

    def bundle(self, seq: int) -> list[TransactionLog] | None:
        """The 256 entries from ``seq`` (which must follow the previous call), or None."""
        want = seq + WIDTH
        while len(self._buffer) < WIDTH:
            last = self._next - 1
            got = self._storage.scan(Query(order="append", newest_first=False),
                                     after=make_log(0, "-", "-", _COMPLETED, None, None, last)
                                     if last >= 0 else None, limit=WIDTH * 16)
            if not got:
                break
            self._buffer += got
            assert got[-1].seq is not None
            self._next = got[-1].seq + 1
        if len(self._buffer) < WIDTH:
            return None
        out, self._buffer = self._buffer[:WIDTH], self._buffer[WIDTH:]
        if out[0].seq != seq or out[-1].seq != want - 1:
            raise CorruptStorageError(f"storage at {self._storage.location}: entries {seq}…{want - 1} are "
                                      "not all there", self._storage.location)
        return out

_COMPLETED = LogStatus.Completed


def archive_store(storage: Storage, directory: str | os.PathLike[str], *, durable: bool,
                  before: int | None, keep_last: int | None, max_bundles: int | None = None,
                  min_bundles: int = 1, on_step: Callable[[str], None] | None = None,
                  progress: Progress | None = None) -> ArchiveReport:
    """Move whole bundles of the current log, oldest first, into ``directory``: every bundle
    whose entries are all older than ``before`` (Unix ms), or all but the newest ``keep_last``
    entries — nothing when fewer than ``min_bundles`` are due. See the module's guarantees.
    ``durable=False`` (a store written under an interval policy): each removal is synced before
    the next step. ``on_step(name)`` is called after each durable step (for crash tests);
    ``progress(entries, total)`` after each bundle read and compressed (total: the entries due
    when the run began; the last call has done == total).

    Entries leave the store only once the archive on disk — its manifest and segment files,
    re-read just before — holds exactly them, each bundle's hash equal to the tree's stored
    node: a damaged or forged archive stops the run with a :class:`CorruptStorageError` and
    removes nothing. A non-empty directory that is not an archive is refused unchanged."""
    zstd = _zstd()
    step = on_step or (lambda _name: None)
    with ArchiveDir.open(directory, create=True) as adir:
        _refuse_foreign(adir, zstd, storage)  # before the lock file is made: nothing changes there
        with adir.lock():
            return _archive(adir, zstd, storage, durable, before, keep_last, max_bundles, min_bundles, step,
                            (lambda _done, _total: None) if progress is None else progress)


def _archive(adir: ArchiveDir, zstd: Any, storage: Storage, durable: bool, before: int | None,
             keep_last: int | None, max_bundles: int | None, min_bundles: int,
             step: Callable[[str], None], progress: Progress) -> ArchiveReport:
    path = adir.path
    manifest = read_manifest(adir)
    if manifest is None:
        _refuse_foreign(adir, zstd, storage)
    head = storage.tree_head()
    epoch, first = head.epoch, head.first_seq
    if manifest is not None:
        newer = [log["epoch"] for log in manifest["logs"] if log["epoch"] > epoch]
        if newer:
            raise ValidationError(f"the archive at {path} holds log {max(newer)}, newer than this "
                                  f"store's log {epoch}: it is the archive of another store (or of "
                                  "this store before it was restored from a backup)")
    if manifest is None:
        manifest = new_manifest(storage.location)
    log = log_of(manifest, epoch)
    if log is None:
        if manifest["logs"] and manifest["store"]["location"] != storage.location:
            raise ValidationError(f"the archive at {path} belongs to the store at "
                                  f"{manifest['store']['location']}, not {storage.location}")
        log = {"epoch": epoch, "first_seq": first, "bundles": 0, "last_hash": None, "segments": []}
        fresh = True
    else:
        fresh = False
        if log["first_seq"] != first:
            raise ValidationError(f"the archive at {path} holds another log (log {epoch} begins at seq "
                                  f"{log['first_seq']} there, at seq {first} in this store)")
        if log["bundles"] and storage.tree_node(TILE_HEIGHT, log["bundles"] - 1) != \
                bytes.fromhex(log["last_hash"]):
            raise ValidationError(f"the archive at {path} is of another store: its bundle "
                                  f"{log['bundles'] - 1} does not match this store's Merkle tree")
    archived_end = first + WIDTH * log["bundles"]
    live = storage.live_first_seq()
    completed = False
    if archived_end < live:
        raise ValidationError(f"the store's entries before seq {live} are not in the archive at {path} "
                              f"(it ends at seq {archived_end}): archive into the directory used before")
    _remove_strays(adir, zstd, storage, manifest)
    if archived_end > live:  # a run that crashed after its archive was durable: finish it
        _check_holds(adir, storage, epoch, first, (live - first) // WIDTH, log["bundles"], None)
        storage.drop_prefix(epoch, archived_end)
        if not durable:
            storage.sync()
        completed = True
        live = archived_end
        step("completed")
    # which bundles go
    size = storage.next_seq() - first
    full = size // WIDTH
    target = full if keep_last is None else max(0, (size - keep_last) // WIDTH)
    if max_bundles is not None:
        target = min(target, log["bundles"] + max_bundles)
    if min_bundles > 1 and not _due(storage, first, log["bundles"], target, before, min_bundles):
        target = log["bundles"]
    source = _Source(storage, live)
    bundle = log["bundles"]
    due = max(0, target - bundle) * WIDTH
    written = entries = nbytes = segments = 0
    dictionary = _dictionary_for(zstd, adir, manifest, storage, live, target - bundle, step) \
        if bundle < target else None
    while bundle < target:
        batch: list[tuple[bytes, bytes, int, int, list[bytes]]] = []
        seg_first = bundle
        while bundle < target and len(batch) < MAX_SEGMENT_BUNDLES:
            logs = source.bundle(first + bundle * WIDTH)
            if logs is None:
                target = bundle
                break
            if before is not None and max(x.timestamp for x in logs) >= before:
                target = bundle
                break
            at = first + bundle * WIDTH
            data = [encode_log(x) for x in logs]
            hash_ = bundle_hash(data)
            if storage.tree_node(TILE_HEIGHT, bundle) != hash_:
                raise CorruptStorageError(f"storage at {storage.location}: entries {at}…{at + WIDTH - 1} "
                                          "do not match the stored Merkle hash; nothing was archived "
                                          "from there (run krepis verify)", storage.location)
            try:
                raw = bundle_of(data)
            except ValidationError as exc:
                raise ValidationError(f"entries {at}…{at + WIDTH - 1} of the store at {storage.location}: "
                                      f"{exc}") from None
            stamps = [x.timestamp for x in logs]
            rids = {rid_hash(x.request_id.encode("utf-8"))[:_KEY] for x in logs}
            batch.append((raw, hash_, min(stamps), max(stamps), sorted(rids)))
            bundle += 1
            progress(entries + len(batch) * WIDTH, due)
        if not batch:
            break
        if manifest["version"] < 2:
            _upgrade(adir, zstd, manifest)
        ident = None if dictionary is None else dictionary[0]
        raw = _encode_segment(zstd, None if dictionary is None else dictionary[1], epoch, seg_first,
                              [(b[0], [], b[1], b[2], b[3], b[4]) for b in batch])
        name = segment_name(epoch, seg_first)
        adir.write_durable(name, raw)
        step("segment")
        offset, length, _magic = _TRAILER.unpack_from(raw, len(raw) - _TRAILER.size)
        log["segments"].append({
            "file": name, "first_bundle": seg_first, "bundles": len(batch), "bytes": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "index_sha256": hashlib.sha256(raw[offset:offset + length]).hexdigest(), "dictionary": ident,
            "min_ts": min(b[2] for b in batch), "max_ts": max(b[3] for b in batch)})
        log["bundles"] = bundle
        log["last_hash"] = batch[-1][1].hex()
        if fresh:
            manifest["logs"].append(log)
            manifest["logs"].sort(key=lambda x: x["epoch"])
            fresh = False
        adir.write_durable(MANIFEST, encode_manifest(manifest), replace=True)
        step("manifest")
        upto = first + bundle * WIDTH
        _check_holds(adir, storage, epoch, first, seg_first, bundle,
                     {seg_first + i: b[0] for i, b in enumerate(batch)})
        storage.drop_prefix(epoch, upto)
        if not durable:
            storage.sync()
        step("dropped")
        live = upto
        written += len(batch)
        entries += len(batch) * WIDTH
        nbytes += len(raw)
        segments += 1
    progress(entries, entries)
    return ArchiveReport(path, epoch, entries, written, segments, nbytes, live,
                         log["bundles"] * WIDTH, completed)


def _check_holds(adir: ArchiveDir, storage: Storage, epoch: int, first: int, lo: int, hi: int,
                 expect: dict[int, bytes] | None) -> None:
    """Raise unless the archive on disk — the manifest and segment files, read again now — holds
    bundles ``lo … hi−1`` of the log: each one's hash the tree's stored node, its bytes the
    store's entries (``expect``: those bytes, just read from the store; ``None``: read them)."""
    manifest = read_manifest(adir)
    log = log_of(manifest, epoch)
    file = adir.where(MANIFEST)
    if log is None or log["first_seq"] != first or log["bundles"] < hi:
        raise CorruptStorageError(f"{file} does not name bundles {lo}…{hi - 1} of log {epoch}, which it "
                                  "should hold by now: nothing was removed from the store", file)

    def tree(k: int) -> bytes | None:
        return storage.tree_node(TILE_HEIGHT, k)

    if tree(log["bundles"] - 1) != bytes.fromhex(log["last_hash"]):
        raise CorruptStorageError(f"{file}: the last archived bundle ({log['bundles'] - 1}) does not match "
                                  "the store's Merkle tree: nothing was removed from the store", file)
    reader = ArchiveReader(adir, epoch, first, tree, manifest)
    source = _Source(storage, first + lo * WIDTH) if expect is None else None
    for k in range(lo, hi):
        raw = reader.bundle_bytes(k)  # its hash: the tree's node
        if expect is not None:
            want = expect[k]
        else:
            assert source is not None
            logs = source.bundle(first + k * WIDTH)
            want = b"" if logs is None else bundle_of([encode_log(x) for x in logs])
        if raw != want:
            where = adir.where(reader.segments[_segment_holding(reader, k)]["file"])
            raise CorruptStorageError(f"archive segment {where}: bundle {k} does not hold the store's "
                                      f"entries {first + k * WIDTH}…: nothing was removed from the store",
                                      where)


def _segment_holding(reader: ArchiveReader, bundle: int) -> int:
    return max(i for i, s in enumerate(reader.segments) if s["first_bundle"] <= bundle)


def _upgrade(adir: ArchiveDir, zstd: Any, manifest: dict[str, Any]) -> None:
    """A format-1 manifest made format 2 (in memory; the caller writes it): every segment,
    checked against its whole-file sha256, gets the checksum of its index, computed from the
    file — an ``index_sha256`` found in a format-1 manifest (format 1 has none; written by hand)
    is neither trusted nor a reason to skip the check. A segment that does not match its sha256
    stops the run (:class:`CorruptStorageError` naming the file) before anything is written."""
    for log in manifest["logs"]:
        for seg in log["segments"]:
            load_index(adir, zstd, seg["file"], seg["bundles"], None, seg["sha256"])
            fd = adir.open_file(seg["file"])
            assert fd is not None
            try:
                size = os.fstat(fd).st_size
                offset, length, _magic = _TRAILER.unpack(adir.pread(fd, size - _TRAILER.size, _TRAILER.size,
                                                                    seg["file"]))
                seg["index_sha256"] = hashlib.sha256(adir.pread(fd, offset, length, seg["file"])).hexdigest()
            finally:
                os.close(fd)
    manifest["version"] = VERSION  # the segments written next get theirs when they are made


def _due(storage: Storage, first: int, done: int, target: int, before: int | None, count: int) -> bool:
    """Whether at least ``count`` bundles from bundle ``done`` are due (for ``before``: the
    ``count``-th one is entirely older; the run itself still stops at the first that is not)."""
    if target - done < count:
        return False
    if before is None:
        return True
    last = first + (done + count) * WIDTH - 1
    cursor = make_log(0, "-", "-", _COMPLETED, None, None, last - WIDTH)
    logs = storage.scan(Query(order="append", newest_first=False), after=cursor, limit=WIDTH)
    return len(logs) == WIDTH and max(x.timestamp for x in logs) < before

def _ours(adir: ArchiveDir, zstd: Any, storage: Storage, manifest: dict[str, Any] | None, name: str) -> bool:
    """Whether ``name`` (which the manifest does not name) is provably a file a crashed run of
    krepis left here: a regular file that is one of our temporary files, a dictionary whose
    name is its content's checksum, or a segment of the store's current log, past what the
    archive holds, whose every bundle hash is the store's stored tree node."""
    st = adir.lstat(name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    if TEMP_NAME.match(name):
        return True
    try:
        found = _DICT_NAME.match(name)
        if found:
            raw = adir.read(name, MAX_DICT_BYTES)
            return raw is not None and raw.startswith(_DICT_MAGIC) and \
                hashlib.sha256(raw).hexdigest().startswith(found.group(1))
        found = _SEGMENT_NAME.match(name)
        if not found:
            return False
        epoch, first = int(found.group(1)), int(found.group(2))
        log = log_of(manifest, epoch)
        if epoch != storage.tree_head().epoch or name != segment_name(epoch, first) or \
                first < (0 if log is None else log["bundles"]):
            return False
        idx, _size = load_index(adir, zstd, name, MAX_SEGMENT_BUNDLES, None, None)
        return (idx.epoch, idx.first_bundle) == (epoch, first) and all(
            storage.tree_node(TILE_HEIGHT, first + i) == h for i, h in enumerate(idx.hashes))
    except JournalError:
        return False


def _refuse_foreign(adir: ArchiveDir, zstd: Any, storage: Storage) -> None:
    """Refuse, changing nothing, a directory without a manifest that holds anything but files
    a crashed run of krepis provably left (see :func:`_ours`)."""
    if adir.lstat(MANIFEST) is not None:
        return
    foreign = [n for n in adir.names() if n != LOCK and not _ours(adir, zstd, storage, None, n)]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(repr(n) for n in foreign[:5]) + more
        raise ValidationError(f"the directory {adir.path} is not empty and is not a krepis archive (it has "
                              f"no {MANIFEST}): it holds {shown}. Archive into a new or empty directory; "
                              "nothing was changed")


def _remove_strays(adir: ArchiveDir, zstd: Any, storage: Storage, manifest: dict[str, Any]) -> None:
    """Remove the files a crashed run provably left (see :func:`_ours`); never a file the
    manifest names, never anything else."""
    named = {MANIFEST, LOCK} | {d["file"] for d in manifest["dictionaries"].values()} | {
        s["file"] for log in manifest["logs"] for s in log["segments"]}
    removed = False
    for name in adir.names():
        if name not in named and _ours(adir, zstd, storage, manifest, name):
            adir.unlink(name)
            removed = True
    if removed:
        adir.fsync()


def _dictionary_for(zstd: Any, adir: ArchiveDir, manifest: dict[str, Any], storage: Storage, live: int,
                    bundles: int, step: Callable[[str], None]) -> tuple[str, Any] | None:
    """The archive's dictionary: the newest one, or one trained now on the journal's own entries
    (its oldest live ones) once there are enough; ``None`` means frames without a dictionary."""
    if manifest["dictionaries"]:
        ident = max(manifest["dictionaries"], key=lambda k: manifest["dictionaries"][k]["created"])
        meta = manifest["dictionaries"][ident]
        raw = adir.read(meta["file"], MAX_DICT_BYTES)
        assert raw is not None
        if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            where = adir.where(meta["file"])
            raise CorruptStorageError(f"archive file {where} does not match its checksum", where)
        return ident, zstd.ZstdCompressionDict(raw)
    if bundles <= 0:
        return None
    cursor = make_log(0, "-", "-", _COMPLETED, None, None, live - 1) if live else None
    sample_entries = storage.scan(Query(order="append", newest_first=False), after=cursor, limit=WIDTH * 64)
    if len(sample_entries) < WIDTH * DICT_MIN_BUNDLES:
        return None
    data = [encode_log(x) for x in sample_entries]
    try:
        samples = [bundle_of(data[i:i + 16]) for i in range(0, len(data), 16)]
        trained = zstd.train_dictionary(DICT_SIZE, samples)
    except (zstd.ZstdError, ValidationError):
        return None
    raw = trained.as_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    ident = digest[:16]
    name = f"dict-{ident}.zdict"
    adir.write_durable(name, raw)
    step("dictionary")
    manifest["dictionaries"][ident] = {"file": name, "sha256": digest, "bytes": len(raw),
                                       "created": time.time(), "samples": len(data)}
    return ident, zstd.ZstdCompressionDict(raw)
