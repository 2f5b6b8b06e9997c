"""Reading archived entries: by seq, as leaf data for proofs, and by query (a request-id
lookup reads only the bundles the segment indexes name)."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import os
import struct
from collections.abc import Iterator
from typing import Any

from .._errors import CorruptStorageError, ValidationError
from .._model import TransactionLog, decode_logs, make_log
from ..storage import Query
from ..storage._codec import rid_hash
from ._format import (
    _KEY,
    _MAX_BUNDLE_BYTES,
    _TRAILER,
    FORMAT,
    INDEX_MAGIC,
    MANIFEST,
    SEGMENT_MAGIC,
    VERSION,
    WIDTH,
    _check_directory,
    _decode_index,
    _log_of,
    _read_manifest,
    _SegmentIndex,
    _zstd,
    split_bundle,
)


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
