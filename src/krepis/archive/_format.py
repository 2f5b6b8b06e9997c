"""The archive's segments: zstd frames of C2SP entry bundles with an index (format:
``docs/archive.md``), encoded and decoded — every decompression bounded by the size the format
allows, every count and offset of an index checked."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from hashlib import sha256
from itertools import accumulate
from typing import Any

from .._errors import CorruptStorageError, JournalError, ValidationError
from ..tlog._merkle import TILE_HEIGHT, append_leaf, leaf_hash, root_from_frontier

FORMAT = "krepis-archive"

#: the format this krepis writes (it reads 1 and 2: see ``_manifest.READABLE``)
VERSION = 2

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

def bundle_of(data: list[bytes]) -> bytes:
    """The C2SP entry bundle of these entries' canonical bytes (each at most 65,535 bytes)."""
    pack = _LEN.pack
    if any(len(d) > 0xFFFF for d in data):
        raise ValidationError("an entry's canonical bytes are longer than 65,535 bytes, the most a C2SP "
                              "entry bundle holds: this bundle cannot be archived")
    return b"".join([pack(len(d)) + d for d in data])

def split_bundle(raw: bytes, where: str, path: str | None = None) -> list[bytes]:
    """The canonical bytes of each entry of a (full) bundle. A refusal's message begins with
    ``where``; its ``path`` is ``path`` (the file), or ``where`` without one."""
    out: list[bytes] = []
    off, n = 0, len(raw)
    file = where if path is None else path
    while off < n:
        if off + 2 > n:
            raise CorruptStorageError(f"{where}: an entry is cut off", file)
        (size,) = _LEN.unpack_from(raw, off)
        if off + 2 + size > n:
            raise CorruptStorageError(f"{where}: an entry is cut off", file)
        out.append(raw[off + 2:off + 2 + size])
        off += 2 + size
    if len(out) != WIDTH:
        raise CorruptStorageError(f"{where}: {len(out)} entries, a bundle holds {WIDTH}", file)
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

def index_limit(bundles: int) -> int:
    """The largest index a segment of ``bundles`` bundles can have (every entry its own key)."""
    return _IDX_HEAD.size + bundles * (_IDX_BUNDLE.size + WIDTH * (_KEY + 2))


def decompress(zstd: Any, dctx: Any, frame: bytes, limit: int, where: str, path: str | None = None) -> bytes:
    """One zstd frame decompressed, never more than ``limit`` bytes: a frame that does not
    declare its size, declares more, or holds more is a ``CorruptStorageError`` — refused before
    anything that large is allocated. The message begins with ``where`` (what the frame is); the
    error's ``path`` is ``path`` (the file holding it), or ``where`` without one."""
    file = where if path is None else path
    try:
        size = zstd.get_frame_parameters(frame).content_size
        if size == zstd.CONTENTSIZE_UNKNOWN or size == zstd.CONTENTSIZE_ERROR:
            raise CorruptStorageError(f"{where} does not declare its size", file)
        if size > limit:
            raise CorruptStorageError(f"{where} declares {size} bytes; at most {limit} are possible", file)
        out = dctx.decompress(frame, max_output_size=limit)
    except zstd.ZstdError as exc:
        raise CorruptStorageError(f"{where} does not decompress ({exc})", file) from None
    if len(out) != size:
        raise CorruptStorageError(f"{where} decompresses to {len(out)} bytes, not the {size} it declares",
                                  file)
    return bytes(out)


def decode_trailer(trailer: bytes, size: int, where: str) -> tuple[int, int]:
    """The index's (offset, length) from a segment's last 20 bytes (the file is ``size`` long)."""
    offset, length, magic = _TRAILER.unpack(trailer)
    if magic != INDEX_MAGIC or offset < len(SEGMENT_MAGIC) or offset + length + _TRAILER.size != size:
        raise CorruptStorageError(f"archive segment {where} is damaged: its trailer is not a krepis "
                                  "segment trailer", where)
    return offset, length


def decode_index(zstd: Any, head: bytes, packed: bytes, offset: int, bundles: int,
                 where: str) -> _SegmentIndex:
    """A segment's index from its first 8 bytes and its compressed index (at ``offset``), for a
    segment of at most ``bundles`` bundles: every count and length checked (the request-id keys
    are the checksum's to vouch for; a lookup refuses a key naming a bundle past the segment)."""
    if head != SEGMENT_MAGIC:
        raise CorruptStorageError(f"archive segment {where} is damaged: it does not begin with "
                                  f"{SEGMENT_MAGIC!r}", where)
    index = decompress(zstd, zstd.ZstdDecompressor(), packed, index_limit(bundles),
                       f"archive segment {where}: the index", where)
    try:
        epoch, first, count, nkeys = _IDX_HEAD.unpack_from(index)
        if count > bundles or nkeys > count * WIDTH:
            raise ValueError(f"it counts {count} bundles and {nkeys} keys")
        pos = _IDX_HEAD.size + count * _IDX_BUNDLE.size
        if pos > len(index):
            raise ValueError("the index is cut off")
        rows = list(_IDX_BUNDLE.iter_unpack(index[_IDX_HEAD.size:pos]))
        lengths = [r[0] for r in rows]
        mins = [r[1] for r in rows]
        maxs = [r[2] for r in rows]
        hashes = [r[3] for r in rows]
        offsets = list(accumulate(lengths, initial=len(SEGMENT_MAGIC)))[:-1]
        if any(lo > hi for lo, hi in zip(mins, maxs, strict=True)):
            raise ValueError("a bundle's timestamps are out of order")
        if len(SEGMENT_MAGIC) + sum(lengths) != offset:
            raise ValueError("the index does not match the frames")
        keys = index[pos:pos + nkeys * _KEY]
        key_bundles = index[pos + nkeys * _KEY:pos + nkeys * (_KEY + 2)]
        if len(key_bundles) != 2 * nkeys or pos + nkeys * (_KEY + 2) != len(index):
            raise ValueError("the request-id index is cut off")
    except (ValueError, struct.error) as exc:
        raise CorruptStorageError(f"archive segment {where} is damaged: {exc}", where) from None
    return _SegmentIndex(epoch, first, offsets, lengths, mins, maxs, hashes, keys, key_bundles)


def segment_name(epoch: int, first_bundle: int) -> str:
    return f"log{epoch:06d}-{first_bundle:012d}.kseg"
