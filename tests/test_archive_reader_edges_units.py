"""Edges of the archive reader (``krepis.archive._reader``) the tests of
``test_archive_reader_units.py`` do not reach with the shared archive: segments whose time
ranges do not grow with their bundles (a clock set back, entries written with their own
timestamps), segments beginning exactly where the live entries begin, entries all at time 0."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from archivekit import FIRST1, LOG1_SEG1, Built, built, install
from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog
from krepis.archive import ArchiveReader
from krepis.archive._format import segment_name
from krepis.archive._manifest import new_manifest
from krepis.storage import Query
from krepis.storage._codec import rid_hash
from test_archive_reader_units import _seg_times, brute, craft, encoded

__all__ = ["built"]

W = 256


def handed(tmp_path: Path, ranges: list[tuple[int, int]], *, first_seq: int = 0,
           version: int = 2) -> ArchiveReader:
    """A reader of log 0 handed a manifest whose segment ``k`` holds bundle ``k`` with the time
    range ``ranges[k]`` (``time_bounds`` reads the manifest alone, no segment file)."""
    (tmp_path / "cold").mkdir(mode=0o700)
    segments = [{"file": segment_name(0, k), "first_bundle": k, "bundles": 1, "bytes": 100,
                 "sha256": "00" * 32, "index_sha256": "00" * 32, "dictionary": None,
                 "min_ts": lo, "max_ts": hi} for k, (lo, hi) in enumerate(ranges)]
    manifest = new_manifest("somewhere")
    manifest["version"] = version
    manifest["logs"] = [{"epoch": 0, "first_seq": first_seq, "bundles": len(ranges), "last_hash": "00" * 32,
                         "segments": segments}]
    return ArchiveReader(tmp_path / "cold", 0, first_seq, None, manifest)


# -- time_bounds ----------------------------------------------------------------------------------
def test_time_bounds_take_only_the_segments_wholly_below_the_live_entries(tmp_path: Path) -> None:
    """A segment beginning exactly at the first live bundle is not counted (its range is
    outside the bounds here, so counting it would widen them)."""
    r = handed(tmp_path, [(300, 400), (100, 200), (500, 600)], first_seq=10)
    for live, want in ((10, None), (10 + W - 1, None), (10 + W, (300, 400)), (10 + 2 * W - 1, (300, 400)),
                       (10 + 2 * W, (100, 400)), (10 + 3 * W - 1, (100, 400)), (10 + 3 * W, (100, 600)),
                       (10 + 9 * W, (100, 600))):
        assert r.time_bounds(Query(), live) == want, live


def test_time_bounds_skip_a_segment_out_of_range_and_go_on_to_the_next(tmp_path: Path) -> None:
    """A segment wholly before ``since`` or from ``until`` on is left out, and the segments
    after it are still looked at (their ranges need not grow)."""
    r = handed(tmp_path, [(300, 400), (100, 200), (500, 600)])
    live = 3 * W
    assert r.time_bounds(Query(since=450), live) == (500, 600)  # the first two end before it
    assert r.time_bounds(Query(since=401), live) == (500, 600)
    assert r.time_bounds(Query(since=400), live) == (300, 600)
    assert r.time_bounds(Query(until=250), live) == (100, 200)  # the first begins at or after it
    assert r.time_bounds(Query(until=300), live) == (100, 200)
    assert r.time_bounds(Query(until=301), live) == (100, 400)
    assert r.time_bounds(Query(since=201, until=300), live) is None
    assert r.time_bounds(Query(since=200, until=301), live) == (100, 400)
    assert r.time_bounds(Query(since=601), live) is None


@pytest.mark.parametrize("version", [1, 2])
def test_entries_all_at_time_0_have_bounds(tmp_path: Path, version: int) -> None:
    """Timestamp 0 is a time like any other: a segment whose every entry is at 0 has the
    bounds (0, 0), not none (format 1: every timestamp)."""
    r = handed(tmp_path, [(0, 0), (0, 0)], version=version)
    want = (0, 0) if version == 2 else (0, 2**63 - 1)
    assert r.time_bounds(Query(), 2 * W) == want
    assert r.time_bounds(Query(until=1), 2 * W) == want
    assert r.time_bounds(Query(since=1), 2 * W) == (None if version == 2 else want)


# -- queries over five segments whose time ranges interleave --------------------------------------
T0 = 1_767_225_600_000
FIRST = 0
BASES = (1000, 0, 2000, 1100, 1127)  # bundle k's timestamps begin at T0 + BASES[k]
SPREAD = (2, 1, 1, 4, 1)             # … and grow by one every SPREAD[k] entries (ties within)


def _stamp(seq: int) -> int:
    k, j = divmod(seq, W)
    return T0 + (BASES[k] + j // SPREAD[k] if k < len(BASES) else 3000 + j)


def _rid(seq: int) -> str:
    return "only-in-3" if seq == 3 * W + 7 else f"r{seq % 300}"  # most request ids in two bundles


@dataclass(frozen=True)
class Five:
    arch: Path
    logs: list[TransactionLog]   # the archived entries, in append order


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Five]:
    """A store of 5 × 256 + 10 entries, its five bundles archived one run (one segment) at a
    time: bundle 1 holds the oldest timestamps, bundle 2 the newest, bundles 0, 3 and 4 overlap
    (bundle 4 begins at bundle 0's largest timestamp)."""
    root = tmp_path_factory.mktemp("five")
    with SovereignJournal(root / "s", flush="interval:20ms") as journal:
        for seq in range(5 * W + 10):
            status = LogStatus.Failed if seq % 7 == 0 else LogStatus.Completed
            journal.log_transaction(TransactionLog(_stamp(seq), f"op{seq % 3}", _rid(seq), status))
        for k in range(5):
            assert journal.archive(root / "cold", keep_last=(4 - k) * W + 10).bundles == 1
        logs = [x for x in journal.query(order="append", newest_first=False) if (x.seq or 0) < 5 * W]
    yield Five(root / "cold", logs)


def _five_queries(logs: list[TransactionLog]) -> list[Query]:
    out = []
    for order in ("time", "append"):
        for newest in (True, False):
            for extra in ({}, {"since": T0 + 1100}, {"since": T0 + 1127}, {"since": T0 + 1128},
                          {"until": T0 + 1000}, {"until": T0 + 1001}, {"until": T0 + 1127},
                          {"since": T0 + 1050, "until": T0 + 1110}, {"since": T0 + 2000},
                          {"until": T0 + 256}, {"since": T0 + 256, "until": T0 + 1000},
                          {"request_id": "r7"}, {"request_id": "only-in-3"}, {"request_id": "r299"},
                          {"request_id": "nobody"}, {"op_names": ("op1",)},
                          {"statuses": (LogStatus.Failed,), "since": T0 + 1100}):
                out.append(Query(order=order, newest_first=newest, **extra))  # type: ignore[arg-type]
    return out


def test_every_query_over_interleaved_segments_matches_the_entries_one_by_one(five: Five) -> None:
    r = ArchiveReader(five.arch, 0, FIRST)
    assert [s["first_bundle"] for s in r.segments] == [0, 1, 2, 3, 4]
    for query in _five_queries(five.logs):
        for live, count in ((5 * W, 5 * W), (5 * W + 10, 5 * W), (4 * W + 255, 4 * W), (2 * W, 2 * W),
                            (W, W), (W - 1, 0)):
            assert list(r.iterate(query, None, live)) == brute(five.logs[:count], query, None), (query, live)


def test_paging_over_interleaved_segments(five: Five) -> None:
    """A cursor anywhere: in each order, the rest of the entries after it, whichever segment
    the cursor's entry came from (the segments before and after it are read or skipped by
    their ranges)."""
    r = ArchiveReader(five.arch, 0, FIRST)
    live = 5 * W
    for order in ("time", "append"):
        for newest in (True, False):
            for extra in ({}, {"since": T0 + 1100}, {"until": T0 + 1127}, {"request_id": "r7"}):
                query = Query(order=order, newest_first=newest, **extra)  # type: ignore[arg-type]
                whole = brute(five.logs, query, None)
                ats = sorted({0, 1, len(whole) // 5, len(whole) // 3, len(whole) // 2, 2 * len(whole) // 3,
                              len(whole) - 2, len(whole) - 1} - {-1, -2})
                for at in (a for a in ats if 0 <= a < len(whole)):
                    assert list(r.iterate(query, whole[at], live)) == whole[at + 1:], (query, at)
            for seq in (0, 255, 256, 300, 511, 512, 700, 767, 768, 1000, 1023, 1024, 1279):
                query = Query(order=order, newest_first=newest)  # type: ignore[arg-type]
                after = five.logs[seq]
                assert list(r.iterate(query, after, live)) == brute(five.logs, query, after), (query, seq)


def test_time_bounds_of_interleaved_segments(five: Five) -> None:
    r = ArchiveReader(five.arch, 0, FIRST)
    ranges = [(min(x.timestamp for x in five.logs[k * W:(k + 1) * W]),
               max(x.timestamp for x in five.logs[k * W:(k + 1) * W])) for k in range(5)]
    assert [(s["min_ts"], s["max_ts"]) for s in r.segments] == ranges
    for n in range(1, 6):
        want = (min(lo for lo, _ in ranges[:n]), max(hi for _, hi in ranges[:n]))
        assert r.time_bounds(Query(), n * W) == want
    assert r.time_bounds(Query(since=T0 + 1382), 5 * W) == (T0 + 1127, T0 + 2255)  # bundles 4 and 2
    assert r.time_bounds(Query(since=T0 + 1383), 5 * W) == (T0 + 2000, T0 + 2255)  # bundle 2 alone
    assert r.time_bounds(Query(until=T0 + 1000), 5 * W) == (T0, T0 + 255)          # bundle 1 alone


# -- bundles a query's range or the live entries exclude are not read -----------------------------
def _log1_seg1(built: Built, rids: list[list[bytes]] | None = None) -> bytes:
    """Log 1's segment of bundles 1-2 as the shared archive has it, but without a dictionary
    (and with these request-id keys)."""
    data = [encoded(built.log1[W * k:W * k + W]) for k in (1, 2)]
    return craft(1, 1, data, None, _seg_times(built, 1, 2), rids)


def _with_index(raw: bytes, change: Callable[[bytearray], None]) -> bytes:
    offset, length = struct.unpack(">QI", raw[-20:-8])
    index = bytearray(zstandard.ZstdDecompressor().decompress(raw[offset:offset + length]))
    change(index)
    packed = zstandard.ZstdCompressor().compress(bytes(index))
    return raw[:offset] + packed + struct.pack(">QI8s", offset, len(packed), b"KRPIDX1\n")


def test_a_bundle_from_until_on_is_not_read(built: Built, tmp_path: Path) -> None:
    """A bundle whose smallest timestamp is the query's ``until`` (exclusive) holds no match and
    is not read: damaged, it changes nothing; one timestamp later it is read, and refused."""
    _store, arch = built.copy(tmp_path)
    raw = bytearray(_log1_seg1(built))
    install(arch, LOG1_SEG1, bytes(raw), dictionary=None)
    r = ArchiveReader(arch, 1, FIRST1)
    idx = r.segment_index(r.segments[1])
    assert idx.min_ts[0] < idx.min_ts[1]
    raw[idx.offsets[1] + idx.lengths[1] // 2] ^= 0xFF  # inside bundle 2's frame
    install(arch, LOG1_SEG1, bytes(raw), dictionary=None)
    logs = built.log1[:3 * W]
    live = FIRST1 + 3 * W
    for order in ("time", "append"):
        query = Query(until=idx.min_ts[1], order=order)  # type: ignore[arg-type]
        assert list(ArchiveReader(arch, 1, FIRST1).iterate(query, None, live)) == brute(logs, query, None)
        query = Query(until=idx.min_ts[1] + 1, order=order)  # type: ignore[arg-type]
        with pytest.raises(CorruptStorageError, match="bundle 2"):
            list(ArchiveReader(arch, 1, FIRST1).iterate(query, None, live))


def test_a_damaged_request_id_index_is_refused_past_the_live_entries_too(built: Built,
                                                                         tmp_path: Path) -> None:
    """A request-id index naming a bundle the segment does not have is refused even when the
    bundle named before it lies past the live entries (so that one is not read)."""
    _store, arch = built.copy(tmp_path)
    key = rid_hash(b"shared")[:4]
    raw = _log1_seg1(built, [[key], [key]])  # the key in both bundles: rows (key, 0), (key, 1)

    def damage(index: bytearray) -> None:
        nkeys = struct.unpack_from(">I", index, 20)[0]
        at = 24 + 52 * 2 + 4 * nkeys  # the bundle numbers, after the keys
        assert index[at:at + 4] == b"\0\0\0\1"
        struct.pack_into(">H", index, at, 2)  # (key, 0) made (key, 2): no such bundle

    install(arch, LOG1_SEG1, _with_index(raw, damage), dictionary=None)
    query = Query(request_id="shared")
    for live in (FIRST1 + 3 * W, FIRST1 + 2 * W):  # bundle 2 below the live entries, and not
        with pytest.raises(CorruptStorageError) as info:
            list(ArchiveReader(arch, 1, FIRST1).iterate(query, None, live))
        assert str(info.value) == (f"archive segment {arch / LOG1_SEG1} is damaged: its request-id index "
                                   "names bundle 2 of 2")


# -- one segment of five bundles whose times interleave, within bundles too -----------------------
def _mixed_stamp(seq: int) -> int:
    k, j = divmod(seq, W)
    return T0 + (
        (j if j % 2 == 0 else 5000 - j) if k == 0 else  # 0 … 4999, back and forth
        100 + j // 3 if k == 1 else                     # 100 … 185
        3000 + j if k == 2 else                         # 3000 … 3255
        200 + (j * 7919) % 256 if k == 3 else           # 200 … 455, shuffled
        4999 if k == 4 else                             # all at bundle 0's largest
        6000 + j)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Five]:
    """A store of 5 × 256 + 10 entries whose five bundles went into one segment in one run."""
    root = tmp_path_factory.mktemp("mixed")
    with SovereignJournal(root / "s", flush="interval:20ms") as journal:
        for seq in range(5 * W + 10):
            status = LogStatus.Failed if seq % 5 == 0 else LogStatus.Completed
            journal.log_transaction(TransactionLog(_mixed_stamp(seq), f"op{seq % 3}", _rid(seq), status))
        assert journal.archive(root / "cold", keep_last=10).bundles == 5
        logs = [x for x in journal.query(order="append", newest_first=False) if (x.seq or 0) < 5 * W]
    yield Five(root / "cold", logs)


def _mixed_queries() -> list[Query]:
    out = []
    for order in ("time", "append"):
        for newest in (True, False):
            for extra in ({}, {"since": T0 + 300}, {"since": T0 + 186}, {"since": T0 + 185},
                          {"until": T0 + 1000}, {"until": T0 + 200}, {"until": T0 + 3000},
                          {"since": T0 + 150, "until": T0 + 3100}, {"since": T0 + 4999},
                          {"request_id": "r7"}, {"request_id": "only-in-3"}, {"op_names": ("op2",)}):
                out.append(Query(order=order, newest_first=newest, **extra))  # type: ignore[arg-type]
    return out


def test_every_query_over_one_segment_of_interleaved_bundles(mixed: Five) -> None:
    r = ArchiveReader(mixed.arch, 0, FIRST)
    assert [(s["first_bundle"], s["bundles"]) for s in r.segments] == [(0, 5)]
    for query in _mixed_queries():
        for live, count in ((5 * W, 5 * W), (3 * W + 5, 3 * W), (W, W)):
            assert list(r.iterate(query, None, live)) == brute(mixed.logs[:count], query, None), (query, live)
        whole = brute(mixed.logs, query, None)
        for at in sorted({0, len(whole) // 4, len(whole) // 2, 3 * len(whole) // 4, len(whole) - 1}):
            if 0 <= at < len(whole):
                assert list(r.iterate(query, whole[at], 5 * W)) == whole[at + 1:], (query, at)


def _damaged(mixed: Five, tmp_path: Path, bundles: tuple[int, ...]) -> ArchiveReader:
    """A copy of the mixed archive with these bundles' frames damaged (checksums made right)."""
    import shutil

    shutil.copytree(mixed.arch, tmp_path / "cold")
    arch = tmp_path / "cold"
    name = segment_name(0, 0)
    raw = bytearray((arch / name).read_bytes())
    idx = ArchiveReader(arch, 0, FIRST).segment_index(ArchiveReader(arch, 0, FIRST).segments[0])
    for k in bundles:
        raw[idx.offsets[k] + idx.lengths[k] // 2] ^= 0xFF
    install(arch, name, bytes(raw))
    return ArchiveReader(arch, 0, FIRST)


def test_a_query_that_can_match_nothing_reads_nothing(mixed: Five, tmp_path: Path) -> None:
    """No op or no status chosen: nothing is read (every bundle damaged here), in either order."""
    r = _damaged(mixed, tmp_path, (0, 1, 2, 3, 4))
    for order in ("time", "append"):
        for query in (Query(op_names=(), order=order), Query(statuses=(), order=order),  # type: ignore[arg-type]
                      Query(op_names=(), statuses=(LogStatus.Completed,), order=order)):  # type: ignore[arg-type]
            assert list(r.iterate(query, None, 5 * W)) == []
        with pytest.raises(CorruptStorageError, match=r": bundle [0-4] does not"):  # (the rest reads)
            list(r.iterate(Query(order=order), None, 5 * W))  # type: ignore[arg-type]


def test_in_append_order_a_bundle_wholly_on_the_wrong_side_of_the_cursor_is_not_read(
        mixed: Five, tmp_path: Path) -> None:
    """Oldest first, a cursor at a bundle's last seq (or past it) skips that bundle; newest
    first, a cursor at a bundle's first seq (or before it) skips it; a cursor one seq inside
    reads it (here: damaged, refused)."""
    r = _damaged(mixed, tmp_path, (2,))
    logs = mixed.logs
    oldest, newest = Query(order="append", newest_first=False), Query(order="append", newest_first=True)
    for seq in (3 * W - 1, 3 * W, 3 * W + 1):  # bundle 2's last seq, and after it
        assert list(r.iterate(oldest, logs[seq], 5 * W)) == brute(logs, oldest, logs[seq])
    with pytest.raises(CorruptStorageError, match="bundle 2"):
        list(r.iterate(oldest, logs[3 * W - 2], 5 * W))
    for seq in (2 * W, 2 * W - 1):  # bundle 2's first seq, and before it
        assert list(r.iterate(newest, logs[seq], 5 * W)) == brute(logs, newest, logs[seq])
    with pytest.raises(CorruptStorageError, match="bundle 2"):
        list(r.iterate(newest, logs[2 * W + 1], 5 * W))


def test_in_time_order_a_bundle_is_read_only_once_the_merge_reaches_it(mixed: Five, tmp_path: Path) -> None:
    """The bundles are merged lazily: the first entries of a time-ordered query come without
    reading a bundle none of them can come from (damaged here: refused only once reached)."""
    from itertools import islice

    r = _damaged(mixed, tmp_path, (1, 2))  # 100 … 185 and 3000 … 3255
    logs = mixed.logs
    newest = Query()  # bundles 0 and 4 reach 4999; bundle 2 is read once the merge is below 3256
    want = brute(logs, newest, None)
    assert list(islice(r.iterate(newest, None, 5 * W), 3)) == want[:3]
    above = [x for x in want if x.timestamp > T0 + 3255]
    assert list(islice(r.iterate(newest, None, 5 * W), len(above))) == above
    with pytest.raises(CorruptStorageError, match="bundle 2"):
        list(islice(r.iterate(newest, None, 5 * W), len(above) + 1))
    oldest = Query(newest_first=False)  # bundle 0 begins at 0; bundle 1 is read once the merge is at 100
    want = brute(logs, oldest, None)
    below = [x for x in want if x.timestamp < T0 + 100]
    assert list(islice(r.iterate(oldest, None, 5 * W), len(below))) == below
    with pytest.raises(CorruptStorageError, match="bundle 1"):
        list(islice(r.iterate(oldest, None, 5 * W), len(below) + 1))


# -- what a reader keeps --------------------------------------------------------------------------
def test_a_dictionary_is_read_and_checked_once_per_reader(built: Built, tmp_path: Path) -> None:
    """(Files the manifest names never change.) The dictionary read for one bundle serves the
    next: removed after the first read, the reader still decodes with it."""
    _store, arch = built.copy(tmp_path)
    r = ArchiveReader(arch, 1, FIRST1)
    ident = r.segments[0]["dictionary"]
    assert ident is not None and r.dictionary(ident) is r.dictionary(ident)
    assert r.dictionary(None) is None
    first = r.bundle_data(0)
    (arch / built.dictionary).unlink()
    assert r.bundle_data(1) == encoded(built.log1[W:2 * W]) and first == encoded(built.log1[:W])
    with pytest.raises(CorruptStorageError, match="is missing"):
        ArchiveReader(arch, 1, FIRST1).bundle_data(1)  # (a new reader reads it again)


def test_the_last_bundle_read_is_kept(built: Built, tmp_path: Path) -> None:
    """Its bytes and entries are read and checked once while the next read is of the same
    bundle (leaves read one by one do not decompress it again)."""
    _store, arch = built.copy(tmp_path)
    r = ArchiveReader(arch, 1, FIRST1)
    data = r.bundle_data(1)
    assert r.bundle_data(1) is data and r.bundle_bytes(1) is r.bundle_bytes(1)
    (arch / LOG1_SEG1).unlink()
    assert r.leaf_data(W + 3, 2) == data[3:5]  # (from memory)
    with pytest.raises(CorruptStorageError, match="is missing"):
        r.bundle_data(2)
