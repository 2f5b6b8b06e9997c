"""The archive's files: segments (zstd frames of C2SP entry bundles with an index), the
manifest, and the durable way each is written (format: ``docs/archive.md``)."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from .._errors import CorruptStorageError, InvalidTypeError, JournalError, ValidationError
from ..tlog._merkle import TILE_HEIGHT, append_leaf, leaf_hash, root_from_frontier

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

def _segment_name(epoch: int, first_bundle: int) -> str:
    return f"log{epoch:06d}-{first_bundle:012d}.kseg"
