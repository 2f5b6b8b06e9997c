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

import bisect
import contextlib
import fcntl
import hashlib
import heapq
import json
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from ._errors import CorruptStorageError, InvalidTypeError, JournalError, ValidationError
from ._model import TransactionLog, decode_logs, make_log
from .storage import Query, Storage
from .storage._codec import rid_hash
from .tlog._merkle import TILE_HEIGHT, append_leaf, leaf_hash, root_from_frontier

if TYPE_CHECKING:
    from ._journal import SovereignJournal

__all__ = ["ArchiveReader", "ArchiveReport", "ArchiveVerifyReport", "RetentionPolicy", "archive_journal",
           "verify_archive"]

FORMAT = "krepis-archive"
VERSION = 1
MANIFEST = "MANIFEST.json"
WIDTH = 1 << TILE_HEIGHT
SEGMENT_MAGIC = b"KRPSEG1\n"
INDEX_MAGIC = b"KRPIDX1\n"
#: at most this many bundles (1,048,576 entries) go into one segment file: one archive step
MAX_SEGMENT_BUNDLES = 4096
#: a retention run archives at least this many bundles (16,384 entries) at once, or nothing: few,
#: large segments keep the manifest small and lookups fast
RETENTION_MIN_BUNDLES = 64
#: the dictionary is trained once enough of the journal exists (this many bundles)
DICT_MIN_BUNDLES = 16
DICT_SIZE = 16384
_LEN = struct.Struct(">H")
_IDX_HEAD = struct.Struct(">QQII")         # epoch, first bundle, bundles, keys
_IDX_BUNDLE = struct.Struct(">IQQ32s")     # frame length, min timestamp, max timestamp, bundle hash
_TRAILER = struct.Struct(">QI8s")          # index offset, index length, INDEX_MAGIC
_KEY = 4                                   # request-id key: the first 4 bytes of H8(request_id)
_MAX_BUNDLE_BYTES = WIDTH * (2 + 65535)
_DAY_MS = 86_400_000


def _compressor_params(zstd: Any) -> Any:
    # Level 9 with 6-byte minimum matches and a shallow lazy search: on journal entries this
    # compresses as well as level 12+ does, several times faster (see docs/performance.md).
    return zstd.ZstdCompressionParameters.from_level(
        9, min_match=6, search_log=4, strategy=zstd.STRATEGY_LAZY2, write_content_size=True,
        write_checksum=False, write_dict_id=False)


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:  # pragma: no cover - a dependency of the distribution
        raise JournalError("the archive needs the 'zstandard' package (a dependency of "
                           "krepis-journal): pip install zstandard") from exc
    return zstandard


# -- results --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchiveReport:
    """What :meth:`SovereignJournal.archive` did.

    ``entries``/``bundles``/``segments``/``bytes`` were archived (written) by this call;
    ``live_first_seq`` is the oldest entry the store still holds; ``archived_entries`` how many
    entries of the current log the archive holds in all; ``completed_previous`` is true when
    the call finished the removal of a run that crashed after its archive was durable."""

    directory: str
    epoch: int
    entries: int
    bundles: int
    segments: int
    bytes: int
    live_first_seq: int
    archived_entries: int
    completed_previous: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ArchiveVerifyReport:
    """What :func:`verify_archive` checked: every segment's checksum, every bundle's entries
    against its recorded hash and (for the current log) the tree's stored node."""

    directory: str
    segments: int
    bundles: int
    entries: int


# -- the retention policy -------------------------------------------------------------------------

_POLICY = re.compile(r"(keep-last|keep-days):([0-9]+(?:\.[0-9]+)?)(?:,every:([0-9]+(?:\.[0-9]+)?)s)?\Z")


@dataclass(frozen=True)
class RetentionPolicy:
    """When a journal archives its oldest entries on its own, in the background.

    ``keep_last=N``: keep the newest N entries (at least; whole bundles move); ``keep_days=D``:
    keep entries younger than D days. ``every`` seconds between runs (default 60). Text form:
    ``"keep-last:1000000"``, ``"keep-days:30"``, optionally ``",every:300s"``.
    """

    keep_last: int | None = None
    keep_days: float | None = None
    every: float = 60.0

    def __post_init__(self) -> None:
        if (self.keep_last is None) == (self.keep_days is None):
            raise ValidationError("a retention policy needs exactly one of keep_last and keep_days")
        if self.keep_last is not None and (type(self.keep_last) is not int or self.keep_last < 0):
            raise ValidationError(f"keep_last must be an int >= 0, got {self.keep_last!r:.40}")
        if self.keep_days is not None and (isinstance(self.keep_days, bool) or not isinstance(
                self.keep_days, (int, float)) or not 0 <= self.keep_days <= 1_000_000):
            raise ValidationError(f"keep_days must be a number of days in 0 … 1000000, got "
                                  f"{self.keep_days!r:.40}")
        if isinstance(self.every, bool) or not isinstance(self.every, (int, float)) \
                or not 0.01 <= self.every <= 86_400:
            raise ValidationError(f"retention interval must be 0.01 … 86400 seconds, got {self.every!r:.40}")

    @classmethod
    def parse(cls, value: str | RetentionPolicy, source: str = "") -> RetentionPolicy:
        """A policy, or its text (``keep-last:N`` / ``keep-days:D`` [``,every:Ss``])."""
        if isinstance(value, RetentionPolicy):
            return value
        if not isinstance(value, str):
            raise InvalidTypeError(f"retention must be a RetentionPolicy or its text, got "
                                   f"{type(value).__name__}")
        match = _POLICY.match(value.strip())
        if match is None:
            raise ValidationError(f"retention policy {value!r:.80}{source} is not valid; use "
                                  "'keep-last:N' or 'keep-days:D', optionally followed by ',every:Ss'")
        kind, amount, every = match.groups()
        try:
            if kind == "keep-last":
                if "." in amount:
                    raise ValidationError("keep-last takes a whole number of entries")
                return cls(keep_last=int(amount), every=float(every) if every else 60.0)
            return cls(keep_days=float(amount), every=float(every) if every else 60.0)
        except ValidationError as exc:
            raise ValidationError(f"retention policy {value!r:.80}{source}: {exc}") from None

    def __str__(self) -> str:
        kind = f"keep-last:{self.keep_last}" if self.keep_last is not None else \
            f"keep-days:{self.keep_days:g}"
        return kind if self.every == 60.0 else f"{kind},every:{self.every:g}s"


class RetentionThread:
    """Applies a retention policy every ``policy.every`` seconds until stopped. A failed run is
    logged (``krepis.retention``) and kept in :attr:`error`; the next run tries again."""

    def __init__(self, journal: SovereignJournal, policy: RetentionPolicy, directory: str) -> None:
        self._journal, self.policy, self.directory = journal, policy, directory
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.runs = 0
        self._thread = threading.Thread(target=self._run, name=f"krepis-retention:{journal.path}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import logging

        log = logging.getLogger("krepis.retention")
        while not self._stop.wait(self.policy.every):
            try:
                self._journal._archive_step(self.directory, keep_last=self.policy.keep_last,
                                            keep_days=self.policy.keep_days,
                                            min_bundles=RETENTION_MIN_BUNDLES)
                self.error = None
            except BaseException as exc:  # kept and logged; the journal keeps working
                self.error = exc
                log.warning("retention run on %s failed: %s", self._journal.path, exc)
            self.runs += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


# -- files ----------------------------------------------------------------------------------------

def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(directory: str, name: str, data: bytes) -> None:
    """``directory/name`` written to a temporary file, fsynced, renamed, the directory fsynced."""
    tmp = os.path.join(directory, f".tmp-{name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))
    _fsync_dir(directory)


def _check_directory(directory: str | os.PathLike[str], create: bool) -> str:
    if not isinstance(directory, (str, os.PathLike)):
        raise InvalidTypeError(f"the archive directory must be a path, got {type(directory).__name__}")
    path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    if not os.fspath(directory):
        raise ValidationError("the archive directory must not be empty")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValidationError(f"the archive directory {path} exists and is not a directory")
    if not os.path.isdir(path):
        if not create:
            raise ValidationError(f"there is no archive at {path}")
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _read_manifest(path: str) -> dict[str, Any] | None:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a krepis archive manifest")
        if data.get("version") != VERSION:
            raise ValueError(f"archive format version {data.get('version')!r}; this krepis reads {VERSION}")
        if not isinstance(data.get("logs"), list) or not isinstance(data.get("dictionaries"), dict):
            raise ValueError("malformed manifest")
    except ValueError as exc:
        raise CorruptStorageError(f"{file}: {exc}", file) from None
    return data


def _log_of(manifest: dict[str, Any] | None, epoch: int) -> dict[str, Any] | None:
    if manifest is None:
        return None
    for log in manifest["logs"]:
        if log["epoch"] == epoch:
            return log  # type: ignore[no-any-return]
    return None


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- bundles --------------------------------------------------------------------------------------

def bundle_of(data: list[bytes]) -> bytes:
    """The C2SP entry bundle of these entries' canonical bytes."""
    pack = _LEN.pack
    return b"".join([pack(len(d)) + d for d in data])


def split_bundle(raw: bytes, where: str) -> list[bytes]:
    """The canonical bytes of each entry of a (full) bundle."""
    out: list[bytes] = []
    off, n = 0, len(raw)
    while off < n:
        if off + 2 > n:
            raise CorruptStorageError(f"{where}: an entry is cut off", where)
        (size,) = _LEN.unpack_from(raw, off)
        if off + 2 + size > n:
            raise CorruptStorageError(f"{where}: an entry is cut off", where)
        out.append(raw[off + 2:off + 2 + size])
        off += 2 + size
    if len(out) != WIDTH:
        raise CorruptStorageError(f"{where}: {len(out)} entries, a bundle holds {WIDTH}", where)
    return out


def bundle_hash(data: list[bytes]) -> bytes:
    """The Merkle hash of a bundle: over 256 leaves, the tree's height-8 node (RFC 6962)."""
    if len(data) != WIDTH:  # (a partial bundle: the general fold)
        frontier: list[bytes] = []
        size = 0
        for d in data:
            size = append_leaf(frontier, size, leaf_hash(d))
        return root_from_frontier(frontier)
    level = [sha256(b"\x00" + d).digest() for d in data]
    while len(level) > 1:  # a perfect tree: hash pairs, level by level
        level = [sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
    return level[0]


@dataclass
class _SegmentIndex:
    epoch: int
    first_bundle: int
    offsets: list[int]
    lengths: list[int]
    min_ts: list[int]
    max_ts: list[int]
    hashes: list[bytes]
    keys: bytes          # sorted 4-byte request-id keys
    key_bundles: bytes   # BE2 bundle (within the segment) of each key

    def bundles_of(self, key: bytes) -> list[int]:
        n = len(self.keys) // _KEY
        lo, hi = 0, n
        while lo < hi:  # the first key >= key
            mid = (lo + hi) // 2
            if self.keys[mid * _KEY:(mid + 1) * _KEY] < key:
                lo = mid + 1
            else:
                hi = mid
        out = []
        while lo < n and self.keys[lo * _KEY:(lo + 1) * _KEY] == key:
            out.append(int.from_bytes(self.key_bundles[2 * lo:2 * lo + 2], "big"))
            lo += 1
        return sorted(set(out))


def _encode_segment(zstd: Any, dictionary: Any, epoch: int, first_bundle: int,
                    bundles: list[tuple[bytes, list[bytes], bytes, int, int, list[bytes]]]) -> bytes:
    """A segment file: magic, one zstd frame per bundle, the compressed index, the trailer."""
    params = _compressor_params(zstd)
    cctx = zstd.ZstdCompressor(compression_params=params, dict_data=dictionary) if dictionary is not None \
        else zstd.ZstdCompressor(compression_params=params)
    parts = [SEGMENT_MAGIC]
    head = []
    keys: set[tuple[bytes, int]] = set()
    for i, (raw, _data, hash_, lo, hi, rids) in enumerate(bundles):
        frame = cctx.compress(raw)
        parts.append(frame)
        head.append(_IDX_BUNDLE.pack(len(frame), lo, hi, hash_))
        keys.update((rid, i) for rid in rids)
    ordered = sorted(keys)
    index = (_IDX_HEAD.pack(epoch, first_bundle, len(bundles), len(ordered)) + b"".join(head)
             + b"".join(k for k, _ in ordered) + b"".join(i.to_bytes(2, "big") for _, i in ordered))
    packed = zstd.ZstdCompressor(level=19).compress(index)
    offset = sum(len(p) for p in parts)
    parts += [packed, _TRAILER.pack(offset, len(packed), INDEX_MAGIC)]
    return b"".join(parts)


def _decode_index(zstd: Any, raw: bytes, where: str) -> _SegmentIndex:
    try:
        if len(raw) < len(SEGMENT_MAGIC) + _TRAILER.size or raw[:len(SEGMENT_MAGIC)] != SEGMENT_MAGIC:
            raise ValueError("not a krepis archive segment")
        offset, length, magic = _TRAILER.unpack_from(raw, len(raw) - _TRAILER.size)
        if magic != INDEX_MAGIC or offset + length + _TRAILER.size != len(raw):
            raise ValueError("the segment's trailer is damaged")
        index = zstd.ZstdDecompressor().decompress(raw[offset:offset + length])
        epoch, first, count, nkeys = _IDX_HEAD.unpack_from(index)
        pos = _IDX_HEAD.size
        offsets, lengths, mins, maxs, hashes = [], [], [], [], []
        at = len(SEGMENT_MAGIC)
        for _ in range(count):
            flen, lo, hi, hash_ = _IDX_BUNDLE.unpack_from(index, pos)
            pos += _IDX_BUNDLE.size
            offsets.append(at)
            lengths.append(flen)
            mins.append(lo)
            maxs.append(hi)
            hashes.append(hash_)
            at += flen
        if at != offset:
            raise ValueError("the index does not match the frames")
        keys = index[pos:pos + nkeys * _KEY]
        key_bundles = index[pos + nkeys * _KEY:pos + nkeys * (_KEY + 2)]
        if len(key_bundles) != 2 * nkeys or pos + nkeys * (_KEY + 2) != len(index):
            raise ValueError("the request-id index is cut off")
    except (ValueError, struct.error, zstd.ZstdError) as exc:
        raise CorruptStorageError(f"archive segment {where} is damaged: {exc}", where) from None
    return _SegmentIndex(epoch, first, offsets, lengths, mins, maxs, hashes, keys, key_bundles)


# -- reading --------------------------------------------------------------------------------------

class ArchiveReader:
    """The archived bundles of one log (``epoch``, ``first_seq``) in an archive directory.

    Segments are immutable once named by the manifest, so a reader needs no lock; it reads the
    manifest once, when created."""

    def __init__(self, directory: str | os.PathLike[str], epoch: int, first_seq: int) -> None:
        self.directory = _check_directory(directory, create=False)
        manifest = _read_manifest(self.directory)
        if manifest is None:  # nothing archived into it yet (or a run crashed before its first step)
            manifest = {"format": FORMAT, "version": VERSION, "dictionaries": {}, "logs": []}
        self._zstd = _zstd()
        self.manifest = manifest
        log = _log_of(manifest, epoch)
        if log is not None and log["first_seq"] != first_seq:
            raise ValidationError(f"the archive at {self.directory} holds another log (log {epoch} begins "
                                  f"at seq {log['first_seq']} there, at seq {first_seq} in this store)")
        self.epoch, self.first_seq = epoch, first_seq
        self.segments: list[dict[str, Any]] = [] if log is None else list(log["segments"])
        self.bundles = 0 if log is None else int(log["bundles"])
        #: the recorded hash of the last archived bundle (the tree's height-8 node there)
        self.last_hash = b"" if log is None or not log["last_hash"] else bytes.fromhex(log["last_hash"])
        self._starts = [s["first_bundle"] for s in self.segments]
        self._indexes: dict[str, _SegmentIndex] = {}
        self._dicts: dict[str, Any] = {}
        self._cache: tuple[int, list[TransactionLog]] | None = None

    def _path(self, name: str) -> str:
        if "/" in name or name.startswith("."):
            raise CorruptStorageError(f"{self.directory}/{MANIFEST}: bad file name {name!r:.80}",
                                      self.directory)
        return os.path.join(self.directory, name)

    def _read(self, name: str) -> bytes:
        path = self._path(name)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise CorruptStorageError(f"archive file {path} is missing", path) from None

    def dictionary(self, ident: str | None) -> Any:
        if ident is None:
            return None
        found = self._dicts.get(ident)
        if found is None:
            meta = self.manifest["dictionaries"].get(ident)
            if meta is None:
                raise CorruptStorageError(f"{self.directory}/{MANIFEST}: dictionary {ident} is not listed",
                                          self.directory)
            raw = self._read(meta["file"])
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                path = self._path(meta["file"])
                raise CorruptStorageError(f"archive file {path} does not match its checksum", path)
            found = self._zstd.ZstdCompressionDict(raw)
            self._dicts[ident] = found
        return found

    def segment_index(self, seg: dict[str, Any]) -> _SegmentIndex:
        found = self._indexes.get(seg["file"])
        if found is None:
            path = self._path(seg["file"])
            try:
                with open(path, "rb") as f:
                    f.seek(-_TRAILER.size, os.SEEK_END)
                    offset, length, _magic = _TRAILER.unpack(f.read(_TRAILER.size))
                    f.seek(0)
                    head = f.read(len(SEGMENT_MAGIC))
                    f.seek(offset)
                    body = f.read(length)
            except FileNotFoundError:
                raise CorruptStorageError(f"archive file {path} is missing", path) from None
            except (OSError, struct.error):
                raise CorruptStorageError(f"archive segment {path} is damaged", path) from None
            # (frames are not read: a stand-in of the right length lets the decoder check offsets)
            fake = head + b"\0" * (offset - len(head)) + body + _TRAILER.pack(offset, length, INDEX_MAGIC)
            found = _decode_index(self._zstd, fake, path)
            if (found.epoch, found.first_bundle, len(found.offsets)) != (
                    self.epoch, seg["first_bundle"], seg["bundles"]):
                raise CorruptStorageError(f"archive segment {path} does not hold the bundles the manifest "
                                          "says", path)
            self._indexes[seg["file"]] = found
        return found

    def _segment_of(self, bundle: int) -> dict[str, Any]:
        i = bisect.bisect_right(self._starts, bundle) - 1
        if i < 0 or not 0 <= bundle - self.segments[i]["first_bundle"] < self.segments[i]["bundles"]:
            raise ValidationError(f"bundle {bundle} of log {self.epoch} is not in the archive at "
                                  f"{self.directory}")
        return self.segments[i]

    def bundle_bytes(self, bundle: int) -> bytes:
        """Bundle ``bundle`` decompressed: exactly the C2SP entry bundle ``tile/entries/<bundle>``."""
        seg = self._segment_of(bundle)
        idx = self.segment_index(seg)
        i = bundle - seg["first_bundle"]
        path = self._path(seg["file"])
        with open(path, "rb") as f:
            f.seek(idx.offsets[i])
            frame = f.read(idx.lengths[i])
        try:
            dctx = self._zstd.ZstdDecompressor(dict_data=self.dictionary(seg.get("dictionary"))) \
                if seg.get("dictionary") else self._zstd.ZstdDecompressor()
            return bytes(dctx.decompress(frame, max_output_size=_MAX_BUNDLE_BYTES))
        except self._zstd.ZstdError as exc:
            raise CorruptStorageError(f"archive segment {path}: bundle {bundle} does not decompress "
                                      f"({exc})", path) from None

    def bundle_data(self, bundle: int) -> list[bytes]:
        seg = self._segment_of(bundle)
        return split_bundle(self.bundle_bytes(bundle), f"{self._path(seg['file'])} bundle {bundle}")

    def bundle_logs(self, bundle: int) -> list[TransactionLog]:
        if self._cache is not None and self._cache[0] == bundle:
            return self._cache[1]
        data = self.bundle_data(bundle)
        try:
            plain = decode_logs(data)
        except (ValueError, KeyError, TypeError) as exc:
            seg = self._segment_of(bundle)
            raise CorruptStorageError(f"archive segment {self._path(seg['file'])}: bundle {bundle} holds "
                                      f"an entry that is not a TransactionLog ({exc})",
                                      self.directory) from None
        base = self.first_seq + bundle * WIDTH
        logs = [make_log(p.timestamp, p.op_name, p.request_id, p.status, p.duration_us, p.error, base + i)
                for i, p in enumerate(plain)]
        self._cache = (bundle, logs)
        return logs

    def leaf_data(self, start: int, count: int) -> list[bytes]:
        """Leaf data (canonical bytes) of leaves ``start … start+count−1`` of the log."""
        out: list[bytes] = []
        leaf = start
        while len(out) < count:
            bundle = leaf // WIDTH
            data = self.bundle_data(bundle)
            take = data[leaf - bundle * WIDTH:leaf - bundle * WIDTH + count - len(out)]
            out += take
            leaf += len(take)
        return out

    def get(self, seq: int) -> TransactionLog | None:
        leaf = seq - self.first_seq
        if not 0 <= leaf < self.bundles * WIDTH:
            return None
        return self.bundle_logs(leaf // WIDTH)[leaf % WIDTH]

    # one candidate bundle with what ordering needs: (min ts, max ts, bundle)
    def _candidates(self, query: Query, nbundles: int) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        key = None if query.request_id is None else rid_hash(query.request_id.encode("utf-8"))[:_KEY]
        for seg in self.segments:
            first = seg["first_bundle"]
            if first >= nbundles:
                break
            if query.since is not None and seg["max_ts"] < query.since:
                continue
            if query.until is not None and seg["min_ts"] >= query.until:
                continue
            idx = self.segment_index(seg)
            numbers = idx.bundles_of(key) if key is not None else range(len(idx.offsets))
            for i in numbers:
                if first + i >= nbundles:
                    continue
                if query.since is not None and idx.max_ts[i] < query.since:
                    continue
                if query.until is not None and idx.min_ts[i] >= query.until:
                    continue
                out.append((idx.min_ts[i], idx.max_ts[i], first + i))
        return out

    def iterate(
        self, query: Query, after: TransactionLog | None, live_first: int
    ) -> Iterator[TransactionLog]:
        """Matching archived entries with ``seq < live_first``, in the query's order, past ``after``."""
        nbundles = min(self.bundles, max(0, (live_first - self.first_seq) // WIDTH))
        if nbundles == 0 or query.op_names == () or query.statuses == ():
            return
        desc = query.newest_first
        cands = self._candidates(query, nbundles)
        matches = query.matches
        if query.order == "append":
            cursor = None if after is None else after.seq
            cands.sort(key=lambda c: c[2], reverse=desc)
            for _lo, _hi, bundle in cands:
                logs = self.bundle_logs(bundle)
                for log in (reversed(logs) if desc else logs):
                    assert log.seq is not None
                    if cursor is not None and (log.seq >= cursor if desc else log.seq <= cursor):
                        continue
                    if matches(log):
                        yield log
            return
        pos = None if after is None or after.seq is None else (after.timestamp, after.seq)
        # A lazy merge of bundles: a bundle is opened once nothing unopened can precede the
        # heap's next entry (ascending: its min timestamp; descending: its max).
        cands.sort(key=lambda c: -c[1] if desc else c[0])
        heap: list[tuple[Any, int, TransactionLog]] = []
        i = 0
        while True:
            while i < len(cands) and (not heap or (
                    -cands[i][1] <= heap[0][0][0] if desc else cands[i][0] <= heap[0][0][0])):
                for log in self.bundle_logs(cands[i][2]):
                    assert log.seq is not None
                    key = (log.timestamp, log.seq)
                    if pos is not None and (key >= pos if desc else key <= pos):
                        continue
                    if matches(log):
                        heapq.heappush(heap, (((-key[0], -key[1]) if desc else key), log.seq, log))
                i += 1
            if not heap:
                return
            yield heapq.heappop(heap)[2]


# -- writing --------------------------------------------------------------------------------------

@contextlib.contextmanager
def _archive_lock(path: str) -> Iterator[None]:
    fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _segment_name(epoch: int, first_bundle: int) -> str:
    return f"log{epoch:06d}-{first_bundle:012d}.kseg"


class _Source:
    """Entries of the live store in append order, as (log, canonical bytes), a bundle at a time."""

    def __init__(self, storage: Storage, start_seq: int) -> None:
        from ._model import encode_log

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
    from ._model import LogStatus

    return LogStatus.Completed


_COMPLETED = _completed()


def archive_journal(journal: SovereignJournal, storage: Storage, directory: str | os.PathLike[str], *,
                    before: int | None, keep_last: int | None, max_bundles: int | None = None,
                    min_bundles: int = 1, on_step: Callable[[str], None] | None = None) -> ArchiveReport:
    """Move whole bundles of the current log, oldest first, into ``directory``: every bundle
    whose entries are all older than ``before`` (Unix ms), or all but the newest ``keep_last``
    entries — nothing when fewer than ``min_bundles`` are due. See the module's guarantees.
    ``on_step(name)`` is called after each durable step (for crash tests)."""
    from ._model import encode_log

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
            if not journal.policy.durable:
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
            if not journal.policy.durable:
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
    from ._model import encode_log

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


# -- verifying ------------------------------------------------------------------------------------

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


def parse_before(before: object, keep_days: object, keep_last: object) -> tuple[int | None, int | None]:
    """Check the selector (exactly one of ``before``, ``keep_days``, ``keep_last``) and return
    ``(before in Unix ms or None, keep_last or None)``."""
    from ._time import parse_time

    given = [name for name, value in (("before", before), ("keep_last", keep_last), ("keep_days", keep_days))
             if value is not None]
    if len(given) != 1:
        raise ValidationError("archive needs exactly one of before, keep_last and keep_days"
                              + (f" (got {', '.join(given)})" if given else ""))
    if keep_last is not None:
        if type(keep_last) is not int:
            raise InvalidTypeError(f"keep_last must be an int, got {type(keep_last).__name__}")
        if keep_last < 0:
            raise ValidationError(f"keep_last must be >= 0, got {keep_last}")
        return None, keep_last
    if keep_days is not None:
        if isinstance(keep_days, bool) or not isinstance(keep_days, (int, float)):
            raise InvalidTypeError(f"keep_days must be a number, got {type(keep_days).__name__}")
        if not 0 <= keep_days <= 1_000_000:
            raise ValidationError(f"keep_days must be in 0 … 1000000, got {keep_days}")
        from ._model import now_ms

        return max(0, now_ms() - int(keep_days * _DAY_MS)), None
    return parse_time(before, param="before"), None
