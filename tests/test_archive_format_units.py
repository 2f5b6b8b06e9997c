"""The archive's segment format (``krepis.archive._format``) piece by piece, against the
layout ``docs/archive.md`` defines (decoded here independently of krepis's code): a bundle's
bytes and hash, a segment's frames, index and trailer, and every refusal of a damaged one —
its text and the path it names."""

from __future__ import annotations

import hashlib
import struct
import sys
from typing import Any

import pytest
import zstandard

from krepis import CorruptStorageError, JournalError, ValidationError
from krepis.archive._format import (
    _encode_segment,
    _SegmentIndex,
    _zstd,
    bundle_hash,
    bundle_of,
    decode_index,
    decode_trailer,
    decompress,
    index_limit,
    segment_name,
    split_bundle,
)

WHERE = "/srv/cold/log000000-000000000000.kseg"
MAGIC = b"KRPSEG1\n"


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash, as the RFC writes it."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def entries(n: int, start: int = 0) -> list[bytes]:
    """``n`` distinct entries of varied sizes (some empty)."""
    return [b"" if i % 7 == 3 else f"entry-{start + i}-".encode() * (i % 5 + 1) for i in range(n)]


def fails(exc: pytest.ExceptionInfo[CorruptStorageError], message: str, path: str = WHERE) -> None:
    assert str(exc.value) == message
    assert exc.value.path == path


# -- bundles ----------------------------------------------------------------------------------
def test_a_bundle_is_each_entry_behind_its_big_endian_length() -> None:
    assert bundle_of([]) == b""
    assert bundle_of([b"", b"a", b"x" * 0xFFFF, b"bc"]) == (
        b"\x00\x00" + b"\x00\x01a" + b"\xff\xff" + b"x" * 0xFFFF + b"\x00\x02bc")


def test_an_entry_longer_than_a_bundle_holds_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        bundle_of([b"a", b"x" * 0x10000])
    assert str(info.value) == ("an entry's canonical bytes are longer than 65,535 bytes, the most a C2SP "
                               "entry bundle holds: this bundle cannot be archived")


def test_a_bundle_splits_into_its_256_entries() -> None:
    data = [*entries(255), b""]  # the last entry empty: it ends exactly at the end
    assert split_bundle(bundle_of(data), WHERE) == data
    big = [b"y" * 65535, *entries(255)]
    assert split_bundle(bundle_of(big), WHERE) == big


@pytest.mark.parametrize("cut", [1, 2, 5])
def test_a_bundle_cut_off_is_refused(cut: int) -> None:
    """Cut inside the last length (1 byte left of it), right after it, or inside its data."""
    raw = bundle_of([*entries(255), b"last"])
    with pytest.raises(CorruptStorageError) as info:
        split_bundle(raw[:-cut] if cut != 5 else raw[:-6] + b"\x00", WHERE)
    fails(info, f"{WHERE}: an entry is cut off")


def test_a_length_running_past_the_end_is_refused() -> None:
    raw = bundle_of(entries(255)) + b"\x00\x05abcd"
    with pytest.raises(CorruptStorageError) as info:
        split_bundle(raw, WHERE)
    fails(info, f"{WHERE}: an entry is cut off")


@pytest.mark.parametrize("count", [0, 1, 255, 257, 512])
def test_a_bundle_of_another_count_is_refused(count: int) -> None:
    with pytest.raises(CorruptStorageError) as info:
        split_bundle(bundle_of(entries(count)), WHERE)
    fails(info, f"{WHERE}: {count} entries, a bundle holds 256")


def test_a_refusal_names_the_file_given_beside_what_the_bundle_is() -> None:
    what = f"archive segment {WHERE}: bundle 3"
    for raw, message in ((bundle_of(entries(255)), f"{what}: 255 entries, a bundle holds 256"),
                         (bundle_of(entries(256))[:-1], f"{what}: an entry is cut off"),
                         (bundle_of(entries(256)) + b"\x00", f"{what}: an entry is cut off"),
                         (bundle_of(entries(256)) + b"\x00\x09", f"{what}: an entry is cut off")):
        with pytest.raises(CorruptStorageError) as info:
            split_bundle(raw, what, WHERE)
        fails(info, message)
    frame = zstandard.ZstdCompressor().compress(b"z" * 1000)
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(b"z" * 1000)

    class Short:
        def decompress(self, frame: bytes, max_output_size: int) -> bytes:
            return b"z"

    dctx = zstandard.ZstdDecompressor()
    for args, message in (((dctx, frame, 999), f"{what} declares 1000 bytes; at most 999 are possible"),
                          ((dctx, no_size, 10**6), f"{what} does not declare its size"),
                          ((Short(), frame, 10**6),
                           f"{what} decompresses to 1 bytes, not the 1000 it declares")):
        with pytest.raises(CorruptStorageError) as info:
            decompress(zstandard, *args, what, WHERE)  # type: ignore[arg-type]
        fails(info, message)
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, zstandard.ZstdDecompressor(), b"junk", 10**6, what, WHERE)
    assert str(info.value).startswith(f"{what} does not decompress (") and info.value.path == WHERE


@pytest.mark.parametrize("count", [256, 1, 2, 3, 100, 255, 257, 512])
def test_a_bundles_hash_is_rfc_6962s(count: int) -> None:
    data = entries(count)
    assert bundle_hash(data) == mth(data)


def test_the_hash_of_no_entries_is_the_empty_trees() -> None:
    assert bundle_hash([]) == hashlib.sha256(b"").digest()


# -- a segment, written -----------------------------------------------------------------------
def _rid(i: int) -> bytes:
    return hashlib.sha256(b"rid %d" % i).digest()[:4]


Bundle = tuple[bytes, list[bytes], bytes, int, int, list[bytes]]


def _bundles(n: int, keys: list[list[bytes]]) -> list[Bundle]:
    out = []
    for k in range(n):
        data = entries(256, start=1000 * k)
        out.append((bundle_of(data), data, bundle_hash(data), 100 * k, 100 * k + 50 + k, keys[k]))
    return out


def _parse(raw: bytes) -> dict[str, Any]:
    """A segment decoded by docs/archive.md alone."""
    assert raw[:8] == MAGIC and raw[-8:] == b"KRPIDX1\n"
    offset, length = struct.unpack(">QI", raw[-20:-8])
    assert offset + length + 20 == len(raw)
    packed = raw[offset:offset + length]
    params = zstandard.get_frame_parameters(packed)
    index = zstandard.ZstdDecompressor().decompress(packed)  # (no dictionary)
    assert params.content_size == len(index)
    epoch, first, count, nkeys = struct.unpack_from(">QQII", index)
    rows = [struct.unpack_from(">IQQ32s", index, 24 + 52 * i) for i in range(count)]
    pos = 24 + 52 * count
    keys = [index[pos + 4 * i:pos + 4 * i + 4] for i in range(nkeys)]
    pos += 4 * nkeys
    key_bundles = [int.from_bytes(index[pos + 2 * i:pos + 2 * i + 2], "big") for i in range(nkeys)]
    assert pos + 2 * nkeys == len(index)
    frames, at = [], 8
    for row in rows:
        frames.append(raw[at:at + row[0]])
        at += row[0]
    assert at == offset
    return {"epoch": epoch, "first": first, "rows": rows, "keys": keys, "key_bundles": key_bundles,
            "frames": frames, "offset": offset, "length": length}


def test_a_segment_is_laid_out_as_the_format_says() -> None:
    shared = _rid(0)
    keys = [[_rid(5), shared, _rid(1)], [shared, _rid(2)], [_rid(3), _rid(3), shared]]
    bundles = _bundles(3, keys)
    raw = _encode_segment(zstandard, None, 7, 300, bundles)
    seg = _parse(raw)
    assert (seg["epoch"], seg["first"]) == (7, 300)
    assert [(r[1], r[2], r[3]) for r in seg["rows"]] == [(b[3], b[4], b[2]) for b in bundles]
    want = sorted({(k, i) for i, ks in enumerate(keys) for k in ks})
    assert list(zip(seg["keys"], seg["key_bundles"], strict=True)) == want
    for frame, bundle in zip(seg["frames"], bundles, strict=True):
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size == len(bundle[0])  # declared, as the reader requires
        assert not params.has_checksum and params.dict_id == 0
        assert zstandard.ZstdDecompressor().decompress(frame) == bundle[0]


def test_a_segment_with_a_dictionary_needs_it_and_does_not_name_it() -> None:
    samples = [bundle_of(entries(16, start=100 * i)) for i in range(200)]
    trained = zstandard.train_dictionary(16384, samples)
    bundles = _bundles(2, [[_rid(1)], [_rid(2)]])
    raw = _encode_segment(zstandard, zstandard.ZstdCompressionDict(trained.as_bytes()), 0, 0, bundles)
    seg = _parse(raw)
    for frame, bundle in zip(seg["frames"], bundles, strict=True):
        params = zstandard.get_frame_parameters(frame)
        assert params.dict_id == 0 and not params.has_checksum and params.content_size == len(bundle[0])
        dctx = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(trained.as_bytes()))
        assert dctx.decompress(frame) == bundle[0]
        with pytest.raises(zstandard.ZstdError):  # compressed with the dictionary: useless without it
            zstandard.ZstdDecompressor().decompress(frame)


def test_the_compression_parameters_are_the_documented_ones() -> None:
    """Frames declare their size and carry no checksum and no dictionary id (docs/archive.md)."""
    from krepis.archive._format import _compressor_params

    params = _compressor_params(zstandard)
    assert (params.write_content_size, params.write_checksum, params.write_dict_id) == (1, 0, 0)


def test_a_segment_decodes_to_what_was_written() -> None:
    keys = [[_rid(9), _rid(1)], [_rid(1)], [_rid(4)]]
    bundles = _bundles(3, keys)
    raw = _encode_segment(zstandard, None, 2, 4096, bundles)
    offset, length = decode_trailer(raw[-20:], len(raw), WHERE)
    idx = decode_index(zstandard, raw[:8], raw[offset:offset + length], offset, 3, WHERE)
    seg = _parse(raw)
    assert (idx.epoch, idx.first_bundle) == (2, 4096)
    assert idx.lengths == [len(f) for f in seg["frames"]]
    assert idx.offsets == [8, 8 + idx.lengths[0], 8 + idx.lengths[0] + idx.lengths[1]]
    assert idx.min_ts == [0, 100, 200] and idx.max_ts == [50, 151, 252]
    assert idx.hashes == [b[2] for b in bundles]
    assert idx.bundles_of(_rid(1)) == [0, 1] and idx.bundles_of(_rid(4)) == [2]
    assert idx.bundles_of(_rid(9)) == [0] and idx.bundles_of(_rid(2)) == []


# -- request-id lookups -----------------------------------------------------------------------
def _index(rows: list[tuple[bytes, int]]) -> _SegmentIndex:
    return _SegmentIndex(0, 0, [], [], [], [], [], b"".join(k for k, _ in rows),
                         b"".join(b.to_bytes(2, "big") for _, b in rows))


def test_a_lookup_finds_every_bundle_of_a_key_and_no_other() -> None:
    k = [bytes([0, 0, 0, 1]), bytes([0, 0, 1, 0]), bytes([0, 1, 0, 0]), bytes([1, 0, 0, 0]),
         bytes([0xFF] * 4)]
    idx = _index([(k[0], 3), (k[1], 0), (k[1], 300), (k[1], 4095), (k[2], 7), (k[3], 1), (k[3], 2),
                  (k[4], 9)])
    assert idx.bundles_of(k[0]) == [3]  # the first key
    assert idx.bundles_of(k[1]) == [0, 300, 4095]  # two bytes, big-endian
    assert idx.bundles_of(k[2]) == [7]
    assert idx.bundles_of(k[3]) == [1, 2]
    assert idx.bundles_of(k[4]) == [9]  # the last key
    for absent in (bytes(4), bytes([0, 0, 0, 2]), bytes([0, 2, 0, 0]), bytes([0xFF, 0xFF, 0xFF, 0xFE])):
        assert idx.bundles_of(absent) == []
    assert _index([]).bundles_of(k[0]) == []


def test_a_lookup_answers_each_bundle_once_in_order() -> None:
    """A hostile index may repeat a row or order a key's bundles backwards: each bundle is read once."""
    key = b"abcd"
    idx = _index([(b"aaaa", 1), (key, 5), (key, 2), (key, 5), (key, 2), (b"zzzz", 0)])
    assert idx.bundles_of(key) == [2, 5]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 65])
def test_a_lookup_finds_every_key_of_indexes_of_any_size(n: int) -> None:
    keys = sorted({_rid(i) for i in range(n)})
    idx = _index([(key, i) for i, key in enumerate(keys)])
    for i, key in enumerate(keys):
        assert idx.bundles_of(key) == [i]


# -- reading a segment ------------------------------------------------------------------------
def test_the_index_limit_is_every_entry_its_own_key() -> None:
    assert index_limit(1) == 24 + 52 + 256 * 6 == 1612
    assert index_limit(4096) == 24 + 4096 * (52 + 256 * 6)


def test_a_frame_is_decompressed_within_its_limit() -> None:
    frame = zstandard.ZstdCompressor().compress(b"z" * 1000)
    dctx = zstandard.ZstdDecompressor()
    assert decompress(zstandard, dctx, frame, 1000, WHERE) == b"z" * 1000  # exactly the limit
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, dctx, frame, 999, WHERE)
    fails(info, f"{WHERE} declares 1000 bytes; at most 999 are possible")


def test_a_frame_without_its_size_is_refused() -> None:
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(b"z" * 1000)
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, zstandard.ZstdDecompressor(), frame, 10**6, WHERE)
    fails(info, f"{WHERE} does not declare its size")


def test_a_frame_that_is_not_zstd_is_refused() -> None:
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, zstandard.ZstdDecompressor(), b"not a zstd frame", 10**6, WHERE)
    assert str(info.value).startswith(f"{WHERE} does not decompress (") and info.value.path == WHERE
    assert info.value.__cause__ is None and info.value.__suppress_context__
    frame = zstandard.ZstdCompressor().compress(b"z" * 1000)
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, zstandard.ZstdDecompressor(), frame[:-3], 10**6, WHERE)
    assert str(info.value).startswith(f"{WHERE} does not decompress (") and info.value.path == WHERE


def test_a_frame_holding_less_than_it_declares_is_refused() -> None:
    """zstandard checks this itself; a decompressor that did not (another backend) is caught too."""

    class Short:
        def decompress(self, frame: bytes, max_output_size: int) -> bytes:
            return bytes(zstandard.ZstdDecompressor().decompress(frame, max_output_size=max_output_size))[:-1]

    frame = zstandard.ZstdCompressor().compress(b"z" * 1000)
    with pytest.raises(CorruptStorageError) as info:
        decompress(zstandard, Short(), frame, 10**6, WHERE)
    fails(info, f"{WHERE} decompresses to 999 bytes, not the 1000 it declares")


def test_the_zstandard_package_missing_is_named() -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "zstandard", None)  # import zstandard: ImportError
        with pytest.raises(JournalError) as info:
            _zstd()
    assert str(info.value) == ("the archive needs the 'zstandard' package (a dependency of krepis-journal): "
                               "pip install zstandard")
    assert _zstd() is zstandard


def _trailer(offset: int, length: int, magic: bytes = b"KRPIDX1\n") -> bytes:
    return struct.pack(">QI8s", offset, length, magic)


def test_a_trailer_gives_the_index_where_the_file_says() -> None:
    assert decode_trailer(_trailer(8, 100), 128, WHERE) == (8, 100)  # right after the magic
    assert decode_trailer(_trailer(5000, 1), 5021, WHERE) == (5000, 1)


@pytest.mark.parametrize("trailer,size", [
    (_trailer(8, 100, b"KRPIDX2\n"), 128),  # another magic
    (_trailer(7, 101, b"KRPIDX1\n"), 128),  # the index inside the segment's magic
    (_trailer(0, 108, b"KRPIDX1\n"), 128),
    (_trailer(8, 100), 129),                # the file is longer
    (_trailer(8, 100), 127),                # or shorter
    (_trailer(9, 100), 128),
])
def test_a_damaged_trailer_is_refused(trailer: bytes, size: int) -> None:
    with pytest.raises(CorruptStorageError) as info:
        decode_trailer(trailer, size, WHERE)
    fails(info, f"archive segment {WHERE} is damaged: its trailer is not a krepis segment trailer")


def _packed(epoch: int = 0, first: int = 0, rows: list[tuple[int, int, int]] | None = None,
            keys: list[tuple[bytes, int]] | None = None, nkeys: int | None = None, count: int | None = None,
            tail: bytes = b"", cut: int = 0) -> bytes:
    rows = [(100, 1, 2)] if rows is None else rows
    keys = [] if keys is None else keys
    index = struct.pack(">QQII", epoch, first, len(rows) if count is None else count,
                        len(keys) if nkeys is None else nkeys)
    index += b"".join(struct.pack(">IQQ32s", n, lo, hi, bytes([i]) * 32)
                      for i, (n, lo, hi) in enumerate(rows))
    index += b"".join(k for k, _ in keys) + b"".join(b.to_bytes(2, "big") for _, b in keys) + tail
    return zstandard.ZstdCompressor().compress(index[:len(index) - cut])


def _offset(rows: list[tuple[int, int, int]] | None = None) -> int:
    return 8 + sum(n for n, _, _ in ([(100, 1, 2)] if rows is None else rows))


def test_an_index_decodes_every_field() -> None:
    rows = [(100, 5, 5), (40, 0, 9), (1, 3, 4)]
    keys = [(b"aaaa", 0), (b"bbbb", 2), (b"bbbb", 1)]
    idx = decode_index(zstandard, MAGIC, _packed(3, 12, rows, keys), _offset(rows), 3, WHERE)
    assert (idx.epoch, idx.first_bundle) == (3, 12)
    assert idx.lengths == [100, 40, 1] and idx.offsets == [8, 108, 148]
    assert idx.min_ts == [5, 0, 3] and idx.max_ts == [5, 9, 4]
    assert idx.hashes == [bytes([0]) * 32, bytes([1]) * 32, bytes([2]) * 32]
    assert idx.keys == b"aaaabbbbbbbb" and idx.key_bundles == b"\x00\x00\x00\x02\x00\x01"
    # at the limits: as many bundles as the segment may hold, 256 keys per bundle
    many = [(bytes([i, 0, 0, j]), 0) for i in range(2) for j in range(128)]
    assert len(decode_index(zstandard, MAGIC, _packed(keys=many), _offset(), 1, WHERE).keys) == 1024


def _refused(packed: bytes, message: str, *, offset: int | None = None, bundles: int = 1,
             head: bytes = MAGIC) -> None:
    with pytest.raises(CorruptStorageError) as info:
        decode_index(zstandard, head, packed, _offset() if offset is None else offset, bundles, WHERE)
    fails(info, f"archive segment {WHERE} is damaged: {message}" if message else str(info.value))


def test_a_segment_not_beginning_with_the_magic_is_refused() -> None:
    _refused(_packed(), f"it does not begin with {MAGIC!r}", head=b"KRPSEG2\n")


def test_an_index_counting_too_much_is_refused() -> None:
    _refused(_packed(rows=[(100, 1, 2), (1, 1, 2)]), "it counts 2 bundles and 0 keys", offset=_offset() + 1)
    many = [(bytes([i, 0, 0, j]), 0) for i in range(2) for j in range(128)] + [(b"\xff" * 4, 0)]
    _refused(_packed(keys=many), "it counts 1 bundles and 257 keys", bundles=2)  # (the size fits 2)


def test_an_index_cut_off_is_refused() -> None:
    _refused(_packed(count=2), "the index is cut off", bundles=2)
    _refused(_packed(cut=1), "the index is cut off")


def test_an_index_with_timestamps_out_of_order_is_refused() -> None:
    _refused(_packed(rows=[(100, 3, 2)]), "a bundle's timestamps are out of order")


@pytest.mark.parametrize("offset", [107, 109, 8])
def test_an_index_not_matching_the_frames_is_refused(offset: int) -> None:
    _refused(_packed(), "the index does not match the frames", offset=offset)


def test_a_request_id_index_cut_off_or_too_long_is_refused() -> None:
    keys = [(b"aaaa", 0), (b"bbbb", 0)]
    _refused(_packed(keys=keys, cut=1), "the request-id index is cut off")
    _refused(_packed(keys=keys, cut=2), "the request-id index is cut off")
    _refused(_packed(keys=keys, cut=5), "the request-id index is cut off")
    _refused(_packed(keys=keys, tail=b"\x00"), "the request-id index is cut off")
    _refused(_packed(keys=keys, nkeys=1), "the request-id index is cut off")


def test_an_index_shorter_than_its_head_is_refused() -> None:
    with pytest.raises(CorruptStorageError) as info:
        decode_index(zstandard, MAGIC, zstandard.ZstdCompressor().compress(b"\x00" * 23), 8, 1, WHERE)
    assert str(info.value).startswith(f"archive segment {WHERE} is damaged: ") and info.value.path == WHERE


def test_an_index_larger_than_the_segment_may_hold_is_refused() -> None:
    rows = [(100, 1, 2)]
    packed = _packed(rows=rows, tail=b"\x00" * 2000)
    with pytest.raises(CorruptStorageError) as info:
        decode_index(zstandard, MAGIC, packed, _offset(), 1, WHERE)
    want = f"archive segment {WHERE}: the index"
    assert str(info.value) == f"{want} declares {24 + 52 + 2000} bytes; at most 1612 are possible"
    assert info.value.path == WHERE  # the file


def test_segment_names_are_the_formats() -> None:
    assert segment_name(0, 0) == "log000000-000000000000.kseg"
    assert segment_name(12, 4096) == "log000012-000000004096.kseg"
    assert segment_name(1234567, 10**13) == "log1234567-10000000000000.kseg"
