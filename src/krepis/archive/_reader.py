"""Reading archived entries: by seq, as leaf data for proofs, and by query (a request-id
lookup reads only the bundles the segment indexes name).

Guarantees: nothing is returned that was not checked. A segment's index is checked against
the checksum the manifest records for it (format 1: the whole file's), its counts and times
against the manifest; every bundle read is decompressed within the size a bundle can have and
its RFC 6962 hash compared with the tree's stored height-8 node (with ``tree``; without it, the
hash the checked index records). A mismatch is a :class:`CorruptStorageError` naming the file
(and bundle); files are opened only by the names the format derives, inside the directory.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from .._errors import CorruptStorageError, ValidationError
from .._model import MAX_TIMESTAMP, LogStatus, TransactionLog, make_log
from ..storage import Query
from ..storage._codec import rid_hash
from ._files import ArchiveDir
from ._format import (
    _KEY,
    _MAX_BUNDLE_BYTES,
    _TRAILER,
    SEGMENT_MAGIC,
    WIDTH,
    _SegmentIndex,
    _zstd,
    bundle_hash,
    decode_index,
    decode_trailer,
    decompress,
    index_limit,
    split_bundle,
)
from ._manifest import MANIFEST, MAX_DICT_BYTES, MAX_MANIFEST_BYTES, log_of, new_manifest, parse_manifest

_STATUS = {s.value: s for s in LogStatus}

#: the tree's stored height-8 node ``k`` of the log being read (``Storage.tree_node(8, k)``)
TreeNodes = Callable[[int], "bytes | None"]


def read_manifest(adir: ArchiveDir) -> dict[str, Any] | None:
    """The archive's manifest, every field checked; ``None`` when there is none."""
    raw = adir.read(MANIFEST, MAX_MANIFEST_BYTES, missing_ok=True)
    return None if raw is None else parse_manifest(raw, adir.where(MANIFEST))


def load_index(adir: ArchiveDir, zstd: Any, name: str, bundles: int, index_sha256: str | None,
               sha256: str | None) -> tuple[_SegmentIndex, int]:
    """Segment ``name``'s index (at most ``bundles`` bundles) and the file's size, checked
    against ``index_sha256`` (the compressed index's) or, if given instead, ``sha256`` (the
    whole file's, format 1)."""
    where = adir.where(name)
    fd = adir.open_file(name)
    assert fd is not None
    try:
        size = os.fstat(fd).st_size
        if size < len(SEGMENT_MAGIC) + _TRAILER.size:
            raise CorruptStorageError(f"archive segment {where} is damaged: it is cut off ({size} bytes)",
                                      where)
        trailer = adir.pread(fd, size - _TRAILER.size, _TRAILER.size, name)
        offset, length = decode_trailer(trailer, size, where)
        if length > index_limit(bundles) or length == 0:
            raise CorruptStorageError(f"archive segment {where} is damaged: an index of {length} bytes",
                                      where)
        head = adir.pread(fd, 0, len(SEGMENT_MAGIC), name)
        packed = adir.pread(fd, offset, length, name)
        if index_sha256 is not None and hashlib.sha256(packed).hexdigest() != index_sha256:
            raise CorruptStorageError(f"archive segment {where} is damaged: its index does not match the "
                                      "checksum the manifest records", where)
        if sha256 is not None and adir.sha256(fd, name) != (sha256, size):
            raise CorruptStorageError(f"archive file {where} does not match its checksum", where)
    finally:
        os.close(fd)
    return decode_index(zstd, head, packed, offset, bundles, where), size


class ArchiveReader:
    """The archived bundles of one log (``epoch``, ``first_seq``) in an archive directory.

    Segments are immutable once named by the manifest, so a reader needs no lock; it reads the
    manifest once, when created. ``tree``: the store's stored height-8 nodes of this log, which
    every bundle read is checked against (``None``: against the segment's checked index)."""

    def __init__(self, directory: str | os.PathLike[str] | ArchiveDir, epoch: int, first_seq: int,
                 tree: TreeNodes | None = None, manifest: dict[str, Any] | None = None) -> None:
        self._dir = directory if isinstance(directory, ArchiveDir) else \
            ArchiveDir.open(directory, create=False)
        self.directory = self._dir.path
        if manifest is None:  # (a caller that read it already passes it)
            manifest = read_manifest(self._dir)
        if manifest is None:  # nothing archived into it yet (or a run crashed before its first step)
            manifest = new_manifest("")
        self._zstd = _zstd()
        self.manifest = manifest
        self.version: int = manifest["version"]
        log = log_of(manifest, epoch)
        if log is not None and log["first_seq"] != first_seq:
            raise ValidationError(f"the archive at {self.directory} holds another log (log {epoch} begins "
                                  f"at seq {log['first_seq']} there, at seq {first_seq} in this store)")
        self.epoch, self.first_seq, self.tree = epoch, first_seq, tree
        self.segments: list[dict[str, Any]] = [] if log is None else list(log["segments"])
        self.bundles = 0 if log is None else int(log["bundles"])
        #: the recorded hash of the last archived bundle (the tree's height-8 node there)
        self.last_hash = b"" if log is None or not log["last_hash"] else bytes.fromhex(log["last_hash"])
        self._starts = [s["first_bundle"] for s in self.segments]
        self._indexes: dict[str, _SegmentIndex] = {}
        self._dicts: dict[str, Any] = {}
        self._cache: tuple[int, list[TransactionLog]] | None = None
        self._raw: tuple[int, bytes, list[bytes]] | None = None

    def _path(self, name: str) -> str:
        return self._dir.where(name)

    def close(self) -> None:
        """Release the directory (reads after this fail). Idempotent."""
        self._dir.close()

    def dictionary(self, ident: str | None) -> Any:
        if ident is None:
            return None
        found = self._dicts.get(ident)
        if found is None:
            meta = self.manifest["dictionaries"][ident]  # (the manifest's check: every one named is listed)
            raw = self._dir.read(meta["file"], MAX_DICT_BYTES)
            assert raw is not None
            if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
                path = self._path(meta["file"])
                raise CorruptStorageError(f"archive file {path} does not match its checksum", path)
            found = self._zstd.ZstdCompressionDict(raw)
            self._dicts[ident] = found
        return found

    def segment_index(self, seg: dict[str, Any]) -> _SegmentIndex:
        """The segment's index, checked (see the class) and matched against the manifest."""
        found = self._indexes.get(seg["file"])
        if found is None:
            path = self._path(seg["file"])
            v1 = "index_sha256" not in seg
            found, size = load_index(self._dir, self._zstd, seg["file"], seg["bundles"],
                                     None if v1 else seg["index_sha256"], seg["sha256"] if v1 else None)
            if (found.epoch, found.first_bundle, len(found.offsets)) != (
                    self.epoch, seg["first_bundle"], seg["bundles"]):
                raise CorruptStorageError(f"archive segment {path} does not hold the bundles the manifest "
                                          f"says (log {self.epoch}, bundles {seg['first_bundle']}… "
                                          f"{seg['first_bundle'] + seg['bundles'] - 1})", path)
            if (min(found.min_ts), max(found.max_ts), size) != (seg["min_ts"], seg["max_ts"], seg["bytes"]):
                raise CorruptStorageError(f"archive segment {path} does not match what {MANIFEST} records "
                                          "of it (its size or time range)", path)
            if seg["first_bundle"] + seg["bundles"] == self.bundles and found.hashes[-1] != self.last_hash:
                raise CorruptStorageError(f"archive segment {path}: its last bundle is not the last_hash "
                                          f"{MANIFEST} records", path)
            self._indexes[seg["file"]] = found
        return found

    def _segment_of(self, bundle: int) -> dict[str, Any]:
        i = bisect.bisect_right(self._starts, bundle) - 1
        if i < 0 or not 0 <= bundle - self.segments[i]["first_bundle"] < self.segments[i]["bundles"]:
            raise ValidationError(f"bundle {bundle} of log {self.epoch} is not in the archive at "
                                  f"{self.directory}")
        return self.segments[i]

    def _bundle(self, bundle: int) -> tuple[bytes, list[bytes]]:
        """Bundle ``bundle``'s bytes and entries, checked against the tree (or the index)."""
        if self._raw is not None and self._raw[0] == bundle:
            return self._raw[1], self._raw[2]
        seg = self._segment_of(bundle)
        idx = self.segment_index(seg)
        i = bundle - seg["first_bundle"]
        name = seg["file"]
        where = f"archive segment {self._path(name)}: bundle {bundle}"
        fd = self._dir.open_file(name)
        assert fd is not None
        try:
            frame = self._dir.pread(fd, idx.offsets[i], idx.lengths[i], name)
        finally:
            os.close(fd)
        dctx = self._zstd.ZstdDecompressor(dict_data=self.dictionary(seg["dictionary"])) \
            if seg["dictionary"] else self._zstd.ZstdDecompressor()
        raw = decompress(self._zstd, dctx, frame, _MAX_BUNDLE_BYTES, where, self._path(name))
        data = split_bundle(raw, where, self._path(name))
        got = bundle_hash(data)
        want = idx.hashes[i] if self.tree is None else self.tree(bundle)
        if got != want or got != idx.hashes[i]:
            against = "the hash its index records" if self.tree is None else "the store's Merkle tree"
            raise CorruptStorageError(f"{where} does not match {against}: the segment is damaged "
                                      "(run krepis verify --archive)", self._path(name))
        self._raw = (bundle, raw, data)
        return raw, data

    def bundle_bytes(self, bundle: int) -> bytes:
        """Bundle ``bundle`` decompressed and checked: exactly the C2SP entry bundle
        ``tile/entries/<bundle>``."""
        return self._bundle(bundle)[0]

    def bundle_data(self, bundle: int) -> list[bytes]:
        """The canonical bytes of bundle ``bundle``'s 256 entries (checked)."""
        return self._bundle(bundle)[1]

    def bundle_logs(self, bundle: int) -> list[TransactionLog]:
        """Bundle ``bundle``'s 256 entries (checked), each with its ``seq``: one JSON parse for
        the bundle, one object per entry."""
        if self._cache is not None and self._cache[0] == bundle:
            return self._cache[1]
        data = self.bundle_data(bundle)
        base = self.first_seq + bundle * WIDTH
        try:
            rows = json.loads(b"[" + b",".join(data) + b"]")
            logs = []
            for i, d in enumerate(rows):
                ts, op, rid, dur, err = (d["timestamp"], d["op_name"], d["request_id"], d.get("duration_us"),
                                         d.get("error"))
                if type(ts) is not int or type(op) is not str or type(rid) is not str or not (
                        dur is None or type(dur) is int) or not (err is None or type(err) is str):
                    raise TypeError("a field has the wrong type")
                logs.append(make_log(ts, op, rid, _STATUS[d["status"]], dur, err, base + i))
        except (ValueError, KeyError, TypeError) as exc:
            seg = self._segment_of(bundle)
            raise CorruptStorageError(f"archive segment {self._path(seg['file'])}: bundle {bundle} holds "
                                      f"an entry that is not a TransactionLog ({exc})",
                                      self._path(seg["file"])) from None
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
        """Archived entry ``seq`` of this log; ``None`` for a seq before the log. A seq past the
        archive's end — asked for because the store no longer holds it — is a
        ``ValidationError``: the archive is not (or no longer) the one the store was archived to."""
        leaf = seq - self.first_seq
        if leaf < 0:
            return None
        if leaf >= self.bundles * WIDTH:
            raise ValidationError(f"entry {seq} is not in the archive at {self.directory} ({MANIFEST} ends "
                                  f"at seq {self.first_seq + self.bundles * WIDTH}): is it this store's "
                                  "archive directory, or an older copy of it?")
        return self.bundle_logs(leaf // WIDTH)[leaf % WIDTH]

    # one candidate bundle with what ordering needs: (min ts, max ts, bundle)
    def _candidates(self, query: Query, nbundles: int,
                    after: TransactionLog | None = None) -> list[tuple[int, int, int]]:
        """The bundles below ``nbundles`` that may hold a match past ``after``: by the segments'
        time ranges (format 2: from the manifest, without reading an index) and, in append
        order, by their sequence numbers (a segment wholly on the wrong side of the cursor is
        never read); then by each bundle's time range and, for a request id, the index's keys."""
        out: list[tuple[int, int, int]] = []
        key = None if query.request_id is None else rid_hash(query.request_id.encode("utf-8"))[:_KEY]
        desc = query.newest_first
        cursor = None if after is None else after.seq
        by_seq = query.order == "append" and cursor is not None
        by_time = query.order == "time" and cursor is not None
        for seg in self.segments:
            first = seg["first_bundle"]
            if first >= nbundles:
                break
            if by_seq:
                assert cursor is not None
                lo_seq = self.first_seq + first * WIDTH
                hi_seq = self.first_seq + (first + seg["bundles"]) * WIDTH - 1
                if (lo_seq >= cursor) if desc else (hi_seq <= cursor):
                    continue
            # (a format-1 manifest has no checksum: its time ranges are used once checked, below)
            if self.version >= 2 and query.since is not None and seg["max_ts"] < query.since:
                continue
            if self.version >= 2 and query.until is not None and seg["min_ts"] >= query.until:
                continue
            if self.version >= 2 and by_time:
                assert after is not None
                if (seg["min_ts"] > after.timestamp) if desc else (seg["max_ts"] < after.timestamp):
                    continue
            idx = self.segment_index(seg)
            numbers = idx.bundles_of(key) if key is not None else range(len(idx.offsets))
            for i in numbers:
                if i >= len(idx.offsets):
                    path = self._path(seg["file"])
                    raise CorruptStorageError(f"archive segment {path} is damaged: its request-id index "
                                              f"names bundle {i} of {len(idx.offsets)}", path)
                if first + i >= nbundles:
                    continue
                if query.since is not None and idx.max_ts[i] < query.since:
                    continue
                if query.until is not None and idx.min_ts[i] >= query.until:
                    continue
                if by_seq:
                    assert cursor is not None
                    lo_seq = self.first_seq + (first + i) * WIDTH
                    if (lo_seq >= cursor) if desc else (lo_seq + WIDTH - 1 <= cursor):
                        continue
                if by_time:
                    assert after is not None
                    if (idx.min_ts[i] > after.timestamp) if desc else (idx.max_ts[i] < after.timestamp):
                        continue
                out.append((idx.min_ts[i], idx.max_ts[i], first + i))
        return out

    def time_bounds(self, query: Query, live_first: int) -> tuple[int, int] | None:
        """The smallest and largest timestamp an archived entry below ``live_first`` matching
        ``query``'s time range can have — from the manifest alone (format 2; format 1: every
        timestamp) — or ``None`` when no archived bundle is in range. A merge with the live
        store need not read the archive while the live entries lie outside these bounds."""
        nbundles = min(self.bundles, max(0, (live_first - self.first_seq) // WIDTH))
        if nbundles == 0 or query.op_names == () or query.statuses == ():
            return None
        if self.version < 2:
            return (0, MAX_TIMESTAMP)
        lo, hi = MAX_TIMESTAMP, -1
        for seg in self.segments:
            if seg["first_bundle"] >= nbundles:
                break
            if query.since is not None and seg["max_ts"] < query.since:
                continue
            if query.until is not None and seg["min_ts"] >= query.until:
                continue
            lo, hi = min(lo, seg["min_ts"]), max(hi, seg["max_ts"])
        return None if hi < 0 else (lo, hi)

    def iterate(
        self, query: Query, after: TransactionLog | None, live_first: int
    ) -> Iterator[TransactionLog]:
        """Matching archived entries with ``seq < live_first``, in the query's order, past ``after``."""
        nbundles = min(self.bundles, max(0, (live_first - self.first_seq) // WIDTH))
        if nbundles == 0 or query.op_names == () or query.statuses == ():
            return
        desc = query.newest_first
        cands = self._candidates(query, nbundles, after)
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
