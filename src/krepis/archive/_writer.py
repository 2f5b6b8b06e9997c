"""The journal's cold storage: whole bundles of 256 entries moved out of the live store into a
directory of zstd-compressed, verifiable segment files (format: ``docs/archive.md``).

Guarantees:

* **Whole bundles, in append order.** Bundle ``k`` of a log is its leaves ``256k … 256k+255``
  (``seq = first_seq + leaf``); it decompresses to exactly the C2SP entry bundle
  ``tile/entries/k`` that ``krepis tlog export`` writes, and its Merkle hash is checked against
  the tree's stored height-8 node before it is written.
* **Durable before removed.** A segment file and then the manifest naming it are written,
  fsynced and renamed into place (the directory fsynced too) before the store removes a single
  entry; a crash at any point leaves every entry readable exactly once (reads take seqs below
  the store's live first seq from the archive, the rest from the store), and the next run
  completes the work.
* **Counters and the tree are untouched**: the stored tree nodes keep proofs and checkpoints of
  every entry working; proofs of archived entries read their leaves from the archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import CorruptStorageError, ValidationError
from .._model import TransactionLog, make_log
from ..storage import Query, Storage
from ..storage._codec import rid_hash
from ..tlog._merkle import TILE_HEIGHT
from ._format import (
    _KEY,
    DICT_MIN_BUNDLES,
    DICT_SIZE,
    FORMAT,
    MANIFEST,
    MAX_SEGMENT_BUNDLES,
    VERSION,
    WIDTH,
    _check_directory,
    _encode_segment,
    _log_of,
    _read_manifest,
    _segment_name,
    _write_durable,
    _zstd,
    bundle_hash,
    bundle_of,
)
from ._policy import ArchiveReport


@contextlib.contextmanager
def _archive_lock(path: str) -> Iterator[None]:
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

class _Source:
    """Entries of the live store in append order, as (log, canonical bytes), a bundle at a time."""

    def __init__(self, storage: Storage, start_seq: int) -> None:
        from .._model import encode_log

        self._storage, self._next = storage, start_seq
        self._encode = encode_log
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

def _completed() -> Any:
    from .._model import LogStatus

    return LogStatus.Completed

_COMPLETED = _completed()

def archive_store(storage: Storage, directory: str | os.PathLike[str], *, durable: bool,
                  before: int | None, keep_last: int | None, max_bundles: int | None = None,
                  min_bundles: int = 1, on_step: Callable[[str], None] | None = None) -> ArchiveReport:
    """Move whole bundles of the current log, oldest first, into ``directory``: every bundle
    whose entries are all older than ``before`` (Unix ms), or all but the newest ``keep_last``
    entries — nothing when fewer than ``min_bundles`` are due. See the module's guarantees.
    ``durable=False`` (a store written under an interval policy): each removal is synced before
    the next step. ``on_step(name)`` is called after each durable step (for crash tests)."""
    from .._model import encode_log

    path = _check_directory(directory, create=True)
    zstd = _zstd()
    step = on_step or (lambda _name: None)
    with _archive_lock(path):
        manifest = _read_manifest(path)
        head = storage.tree_head()
        epoch, first = head.epoch, head.first_seq
        if manifest is not None:
            newer = [log["epoch"] for log in manifest["logs"] if log["epoch"] > epoch]
            if newer:
                raise ValidationError(f"the archive at {path} holds log {max(newer)}, newer than this "
                                      f"store's log {epoch}: it is the archive of another store (or of "
                                      "this store before it was restored from a backup)")
        if manifest is None:
            manifest = {"format": FORMAT, "version": VERSION, "store": {"location": storage.location},
                        "dictionaries": {}, "logs": []}
        log = _log_of(manifest, epoch)
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
        _remove_strays(path, manifest)
        if archived_end > live:  # a run that crashed after its archive was durable: finish it
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
        written = entries = nbytes = segments = 0
        dictionary = _dictionary_for(zstd, path, manifest, storage, live, target - bundle, step)
        while bundle < target:
            batch: list[tuple[bytes, list[bytes], bytes, int, int, list[bytes]]] = []
            seg_first = bundle
            while bundle < target and len(batch) < MAX_SEGMENT_BUNDLES:
                logs = source.bundle(first + bundle * WIDTH)
                if logs is None:
                    target = bundle
                    break
                if before is not None and max(x.timestamp for x in logs) >= before:
                    target = bundle
                    break
                data = [encode_log(x) for x in logs]
                hash_ = bundle_hash(data)
                stored = storage.tree_node(TILE_HEIGHT, bundle)
                if stored != hash_:
                    at = first + bundle * WIDTH
                    raise CorruptStorageError(f"storage at {storage.location}: entries {at}…{at + WIDTH - 1} "
                                              "do not match the stored Merkle hash; nothing was archived "
                                              "from there (run krepis verify)", storage.location)
                stamps = [x.timestamp for x in logs]
                rids = {rid_hash(x.request_id.encode("utf-8"))[:_KEY] for x in logs}
                batch.append((bundle_of(data), data, hash_, min(stamps), max(stamps), sorted(rids)))
                bundle += 1
            if not batch:
                break
            ident = None if dictionary is None else dictionary[0]
            raw = _encode_segment(zstd, None if dictionary is None else dictionary[1], epoch, seg_first,
                                  batch)
            name = _segment_name(epoch, seg_first)
            _write_durable(path, name, raw)
            step("segment")
            log["segments"].append({
                "file": name, "first_bundle": seg_first, "bundles": len(batch), "bytes": len(raw),
                "sha256": hashlib.sha256(raw).hexdigest(), "dictionary": ident,
                "min_ts": min(b[3] for b in batch), "max_ts": max(b[4] for b in batch)})
            log["bundles"] = bundle
            log["last_hash"] = batch[-1][2].hex()
            if fresh:
                manifest["logs"].append(log)
                manifest["logs"].sort(key=lambda x: x["epoch"])
                fresh = False
            text = json.dumps(manifest, separators=(",", ":"), sort_keys=True)
            _write_durable(path, MANIFEST, text.encode())
            step("manifest")
            upto = first + bundle * WIDTH
            storage.drop_prefix(epoch, upto)
            if not durable:
                storage.sync()
            step("dropped")
            live = upto
            written += len(batch)
            entries += len(batch) * WIDTH
            nbytes += len(raw)
            segments += 1
        return ArchiveReport(path, epoch, entries, written, segments, nbytes, live,
                             log["bundles"] * WIDTH, completed)

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

def _remove_strays(path: str, manifest: dict[str, Any]) -> None:
    """Files a crashed run left that the manifest does not name (never a named one)."""
    named = {MANIFEST, ".lock"} | {d["file"] for d in manifest["dictionaries"].values()} | {
        s["file"] for log in manifest["logs"] for s in log["segments"]}
    for name in os.listdir(path):
        if name in named:
            continue
        if name.startswith(".tmp-") or re.fullmatch(r"log[0-9]{6,}-[0-9]{12,}\.kseg|dict-[0-9a-f]{16}\.zdict",
                                                    name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(path, name))

def _dictionary_for(zstd: Any, path: str, manifest: dict[str, Any], storage: Storage, live: int,
                    bundles: int, step: Callable[[str], None]) -> tuple[str, Any] | None:
    """The archive's dictionary: the newest one, or one trained now on the journal's own entries
    (its oldest live ones) once there are enough; ``None`` means frames without a dictionary."""
    from .._model import encode_log

    if manifest["dictionaries"]:
        ident = max(manifest["dictionaries"], key=lambda k: manifest["dictionaries"][k]["created"])
        meta = manifest["dictionaries"][ident]
        with open(os.path.join(path, meta["file"]), "rb") as f:
            raw = f.read()
        if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
            raise CorruptStorageError(f"archive file {os.path.join(path, meta['file'])} does not match its "
                                      "checksum", path)
        return ident, zstd.ZstdCompressionDict(raw)
    if bundles <= 0:
        return None
    cursor = make_log(0, "-", "-", _COMPLETED, None, None, live - 1) if live else None
    sample_entries = storage.scan(Query(order="append", newest_first=False), after=cursor, limit=WIDTH * 64)
    if len(sample_entries) < WIDTH * DICT_MIN_BUNDLES:
        return None
    data = [encode_log(x) for x in sample_entries]
    samples = [bundle_of(data[i:i + 16]) for i in range(0, len(data), 16)]
    try:
        trained = zstd.train_dictionary(DICT_SIZE, samples)
    except zstd.ZstdError:
        return None
    raw = trained.as_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    ident = digest[:16]
    name = f"dict-{ident}.zdict"
    _write_durable(path, name, raw)
    step("dictionary")
    manifest["dictionaries"][ident] = {"file": name, "sha256": digest, "bytes": len(raw),
                                       "created": time.time(), "samples": len(data)}
    return ident, zstd.ZstdCompressionDict(raw)
