"""Reading an archive (``krepis.archive._reader``) piece by piece: a segment's index and what it
is checked against, each bundle against the tree or its index, entries by seq and as leaves,
and queries — every filter, order and cursor against the same entries filtered one by one."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from archivekit import (
    FIRST1,
    LOG1_SEG0,
    LOG1_SEG1,
    MANIFEST,
    Built,
    built,
    edit_manifest,
    install,
    manifest_of,
)
from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis._model import encode_log
from krepis.archive import ArchiveReader
from krepis.archive._files import ArchiveDir
from krepis.archive._format import _encode_segment, bundle_hash, bundle_of
from krepis.archive._reader import load_index, read_manifest
from krepis.storage import Query
from krepis.storage._codec import rid_hash

__all__ = ["built"]

ARCHIVED = 3 * 256  # log 1's archived entries


@pytest.fixture
def copy(built: Built, tmp_path: Path) -> tuple[Path, Path]:
    return built.copy(tmp_path)


@pytest.fixture
def tree(copy: tuple[Path, Path]) -> Iterator[Callable[[int], bytes | None]]:
    with SovereignJournal(copy[0]) as journal:
        storage = journal._live()
        yield lambda k: storage.tree_node(8, k)


def reader(arch: Path, tree: Callable[[int], bytes | None] | None = None) -> ArchiveReader:
    return ArchiveReader(arch, 1, FIRST1, tree)


def keys(bundle: list[TransactionLog]) -> list[bytes]:
    return sorted({rid_hash(x.request_id.encode())[:4] for x in bundle})


def craft(epoch: int, first: int, bundles: list[list[bytes]], hashes: list[bytes] | None = None,
          times: list[tuple[int, int]] | None = None, rids: list[list[bytes]] | None = None) -> bytes:
    """A segment of these bundles' entries (no dictionary); its index as given or as it should be."""
    return _encode_segment(zstandard, None, epoch, first, [
        (bundle_of(data), [], bundle_hash(data) if hashes is None else hashes[i],
         *((0, 0) if times is None else times[i]), [] if rids is None else rids[i])
        for i, data in enumerate(bundles)])


def encoded(logs: list[TransactionLog]) -> list[bytes]:
    return [encode_log(x) for x in logs]


# -- the reader and its manifest ------------------------------------------------------------------
def test_a_reader_knows_its_log(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    m = manifest_of(arch)
    r = reader(arch)
    assert (r.directory, r.epoch, r.first_seq, r.version, r.bundles) == (str(arch), 1, FIRST1, 2, 3)
    assert r.segments == m["logs"][1]["segments"] and r.last_hash == bytes.fromhex(m["logs"][1]["last_hash"])
    assert r.manifest == read_manifest(ArchiveDir.open(arch, create=False))
    other = ArchiveReader(arch, 7, 5)  # a log the archive does not hold
    assert (other.bundles, other.segments, other.last_hash) == (0, [], b"")
    assert other.get(4) is None
    with ArchiveDir.open(arch, create=False) as adir:
        assert ArchiveReader(adir, 1, FIRST1).bundles == 3


def test_a_reader_uses_the_manifest_it_is_handed(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    m = manifest_of(arch)
    m["logs"][1]["bundles"] = 1
    m["logs"][1]["segments"] = m["logs"][1]["segments"][:1]
    r = ArchiveReader(arch, 1, FIRST1, None, m)
    assert r.bundles == 1 and r.manifest is m


def test_a_reader_of_an_empty_directory_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "cold").mkdir(mode=0o700)
    r = ArchiveReader(tmp_path / "cold", 0, 0)
    assert (r.bundles, r.segments, r.version, r.last_hash) == (0, [], 2, b"")
    assert list(r.iterate(Query(), None, 10_000)) == []
    assert read_manifest(ArchiveDir.open(tmp_path / "cold", create=False)) is None


def test_a_reader_of_another_log_is_refused(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    with pytest.raises(ValidationError) as info:
        ArchiveReader(arch, 1, FIRST1 + 1)
    assert str(info.value) == (f"the archive at {arch} holds another log (log 1 begins at seq {FIRST1} "
                               f"there, at seq {FIRST1 + 1} in this store)")


# -- entries by seq and as leaves -----------------------------------------------------------------
def test_entries_by_seq(built: Built, copy: tuple[Path, Path], tree: Any) -> None:
    _store, arch = copy
    r = reader(arch, tree)
    assert r.get(FIRST1 - 1) is None and r.get(0) is None
    for i in (0, 1, 255, 256, 511, 512, 767):
        got = r.get(FIRST1 + i)
        assert got == built.log1[i] and got is not None and got.seq == FIRST1 + i
    for seq in (FIRST1 + ARCHIVED, FIRST1 + ARCHIVED + 300):
        with pytest.raises(ValidationError) as info:
            r.get(seq)
        assert str(info.value) == (f"entry {seq} is not in the archive at {arch} ({MANIFEST} ends at seq "
                                   f"{FIRST1 + ARCHIVED}): is it this store's archive directory, or an older "
                                   "copy of it?")


def test_a_bundle_is_its_entries_in_order_with_their_seqs(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    r = reader(arch)
    for k in range(3):
        logs = r.bundle_logs(k)
        assert logs == built.log1[256 * k:256 * k + 256]
        assert [x.seq for x in logs] == list(range(FIRST1 + 256 * k, FIRST1 + 256 * k + 256))
        assert r.bundle_data(k) == encoded(built.log1[256 * k:256 * k + 256])
        assert r.bundle_bytes(k) == bundle_of(encoded(built.log1[256 * k:256 * k + 256]))
    assert r.bundle_logs(1) is r.bundle_logs(1)  # (the last bundle decoded is kept)
    assert r.bundle_logs(0)[0].seq == FIRST1  # (and the one before it decoded again, right)


def test_leaves_across_bundles(built: Built, copy: tuple[Path, Path], tree: Any) -> None:
    _store, arch = copy
    r = reader(arch, tree)
    want = encoded(built.log1[:ARCHIVED])
    assert r.leaf_data(250, 300) == want[250:550]
    assert r.leaf_data(0, ARCHIVED) == want
    assert r.leaf_data(256, 256) == want[256:512]
    assert r.leaf_data(767, 1) == want[767:]
    assert r.leaf_data(5, 0) == []


@pytest.mark.parametrize("bundle", [3, 4, -1])
def test_a_bundle_past_the_archive_is_refused(copy: tuple[Path, Path], bundle: int) -> None:
    _store, arch = copy
    with pytest.raises(ValidationError) as info:
        reader(arch).bundle_bytes(bundle)
    assert str(info.value) == f"bundle {bundle} of log 1 is not in the archive at {arch}"


def test_a_bundle_in_a_gap_between_segments_is_refused(copy: tuple[Path, Path]) -> None:
    """(A manifest never has one — its segments follow each other — but a reader handed one
    says so rather than read the wrong segment.)"""
    _store, arch = copy
    m = manifest_of(arch)
    m["logs"][1]["segments"][1] = {**m["logs"][1]["segments"][1], "first_bundle": 5}
    r = ArchiveReader(arch, 1, FIRST1, None, m)
    for bundle in (1, 2, 7):
        with pytest.raises(ValidationError, match=f"bundle {bundle} of log 1 is not in the archive"):
            r.bundle_bytes(bundle)


# -- checks of what is read -----------------------------------------------------------------------
def test_a_damaged_dictionary_is_named(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    path = arch / built.dictionary
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(0)
    assert str(info.value) == f"archive file {path} does not match its checksum"
    assert info.value.path == str(path)


def test_a_dictionary_larger_than_any_is_refused(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    path = arch / built.dictionary
    path.write_bytes(path.read_bytes() + bytes((1 << 20) + 1 - path.stat().st_size))
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(0)
    assert str(info.value) == f"archive file {path} is {(1 << 20) + 1} bytes; at most {1 << 20} are expected"


def test_a_bundle_is_checked_against_the_tree_or_its_index(built: Built, copy: tuple[Path, Path],
                                                          tree: Any) -> None:
    """Bundle 1 re-encoded with another entry, its index recording the hash of the real one
    (the checksums sealed): the tree and the index both say no; and a bundle whose index
    records its own (other) hash: only the tree says no."""
    _store, arch = copy
    data = [encoded(built.log1[256 * k:256 * k + 256]) for k in (1, 2)]
    real = [bundle_hash(d) for d in data]
    forged = [list(d) for d in data]
    forged[0][17] = encode_log(built.log1[0])
    times = [(min(x.timestamp for x in built.log1[256 * k:256 * k + 256]),
              max(x.timestamp for x in built.log1[256 * k:256 * k + 256])) for k in (1, 2)]
    install(arch, LOG1_SEG1, craft(1, 1, forged, real, times), dictionary=None)
    where = f"archive segment {arch / LOG1_SEG1}: bundle 1"
    for t, against in ((None, "the hash its index records"), (tree, "the store's Merkle tree")):
        with pytest.raises(CorruptStorageError) as info:
            reader(arch, t).bundle_bytes(1)
        assert str(info.value) == f"{where} does not match {against}: the segment is damaged (run krepis " \
                                  "verify --archive)"
        assert info.value.path == str(arch / LOG1_SEG1)
    assert reader(arch, tree).bundle_bytes(2) == bundle_of(data[1])  # the other bundle is fine
    install(arch, LOG1_SEG1, craft(1, 1, forged, [bundle_hash(forged[0]), real[1]], times), dictionary=None)
    assert reader(arch).bundle_data(1) == forged[0]  # (what its checked index vouches for)
    with pytest.raises(CorruptStorageError, match="bundle 1 does not match the store's Merkle tree"):
        reader(arch, tree).bundle_bytes(1)
    # the tree right, the index wrong: refused all the same
    install(arch, LOG1_SEG1, craft(1, 1, data, [real[1], real[1]], times), dictionary=None)
    with pytest.raises(CorruptStorageError, match="bundle 1 does not match the store's Merkle tree"):
        reader(arch, tree).bundle_bytes(1)


def test_entries_that_are_not_transaction_logs_are_named(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    data = [b'{"not":"an entry"}'] * 256
    m = manifest_of(arch)["logs"][1]["segments"][0]
    install(arch, LOG1_SEG0, craft(1, 0, [data], None, [(m["min_ts"], m["max_ts"])]), dictionary=None)
    r = reader(arch)
    assert r.bundle_data(0) == data
    with pytest.raises(CorruptStorageError) as info:
        r.bundle_logs(0)
    assert str(info.value).startswith(f"archive segment {arch / LOG1_SEG0}: bundle 0 holds an entry that "
                                      "is not a TransactionLog (")
    assert info.value.path == str(arch / LOG1_SEG0)



@pytest.mark.parametrize("field,value", [
    ("timestamp", "5"), ("timestamp", 5.0), ("timestamp", True), ("op_name", 5), ("op_name", None),
    ("request_id", 5), ("request_id", ["r"]), ("duration_us", "3"), ("duration_us", 3.5),
    ("duration_us", False), ("error", 5), ("error", ["e"]),
])
def test_an_entry_with_one_field_of_the_wrong_type_is_named(copy: tuple[Path, Path], field: str,
                                                            value: object) -> None:
    """Each field's type is checked on its own, the others right: one wrong is enough."""
    _store, arch = copy
    good = {"timestamp": 5, "op_name": "op", "request_id": "rid", "status": "Failed", "duration_us": 3,
            "error": "e"}
    data = [json.dumps(good, separators=(",", ":")).encode()] * 255 + [
        json.dumps({**good, field: value}, separators=(",", ":")).encode()]
    m = manifest_of(arch)["logs"][1]["segments"][0]
    install(arch, LOG1_SEG0, craft(1, 0, [data], None, [(m["min_ts"], m["max_ts"])]), dictionary=None)
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_logs(0)
    assert str(info.value) == (f"archive segment {arch / LOG1_SEG0}: bundle 0 holds an entry that is not a "
                               "TransactionLog (a field has the wrong type)")


# -- a segment's index ----------------------------------------------------------------------------
def _seg_times(built: Built, first: int, count: int) -> list[tuple[int, int]]:
    return [(min(x.timestamp for x in built.log1[256 * k:256 * k + 256]),
             max(x.timestamp for x in built.log1[256 * k:256 * k + 256]))
            for k in range(first, first + count)]


@pytest.mark.parametrize("epoch,first,count", [(0, 1, 2), (1, 2, 2), (1, 1, 1)])
def test_a_segment_holding_other_bundles_than_the_manifest_says_is_refused(
        built: Built, copy: tuple[Path, Path], epoch: int, first: int, count: int) -> None:
    _store, arch = copy
    data = [encoded(built.log1[256 * k:256 * k + 256]) for k in range(1, 1 + count)]
    install(arch, LOG1_SEG1, craft(epoch, first, data, None, _seg_times(built, 1, count)), dictionary=None)
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(2)
    assert str(info.value) == (f"archive segment {arch / LOG1_SEG1} does not hold the bundles the manifest "
                               "says (log 1, bundles 1… 2)")
    assert info.value.path == str(arch / LOG1_SEG1)


@pytest.mark.parametrize("field,delta", [("min_ts", -1), ("min_ts", 1), ("max_ts", 1), ("max_ts", -1),
                                         ("bytes", 1), ("bytes", -1)])
def test_a_segment_not_matching_its_recorded_size_or_times_is_refused(copy: tuple[Path, Path], field: str,
                                                                      delta: int) -> None:
    _store, arch = copy

    def change(m: dict[str, Any]) -> None:
        m["logs"][1]["segments"][0][field] += delta

    edit_manifest(arch, change)
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(0)
    assert str(info.value) == (f"archive segment {arch / LOG1_SEG0} does not match what {MANIFEST} records "
                               "of it (its size or time range)")
    assert info.value.path == str(arch / LOG1_SEG0)


def test_the_last_segment_must_end_with_the_recorded_last_hash(copy: tuple[Path, Path]) -> None:
    _store, arch = copy

    def change(m: dict[str, Any]) -> None:
        m["logs"][1]["last_hash"] = "00" * 32

    edit_manifest(arch, change)
    r = reader(arch)
    assert len(r.bundle_data(0)) == 256  # (the first segment does not hold the last bundle)
    with pytest.raises(CorruptStorageError) as info:
        r.bundle_bytes(1)
    assert str(info.value) == (f"archive segment {arch / LOG1_SEG1}: its last bundle is not the last_hash "
                               f"{MANIFEST} records")
    assert info.value.path == str(arch / LOG1_SEG1)


def test_an_index_is_read_once_per_reader(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    r = reader(arch)
    seg = r.segments[1]
    assert r.segment_index(seg) is r.segment_index(seg)
    idx = r.segment_index(seg)
    assert (idx.epoch, idx.first_bundle, len(idx.offsets)) == (1, 1, 2)


def test_load_index_checks_the_index_against_its_checksum(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    seg = manifest_of(arch)["logs"][1]["segments"][1]
    before = set(os.listdir("/proc/self/fd"))
    with ArchiveDir.open(arch, create=False) as adir:
        idx, size = load_index(adir, zstandard, LOG1_SEG1, 2, seg["index_sha256"], None)
        assert size == seg["bytes"] and idx.first_bundle == 1
        idx, size = load_index(adir, zstandard, LOG1_SEG1, 2, None, seg["sha256"])  # format 1
        assert size == seg["bytes"]
        idx, size = load_index(adir, zstandard, LOG1_SEG1, 2, None, None)  # (a crashed run's segment)
        assert size == seg["bytes"]
        where = str(arch / LOG1_SEG1)
        with pytest.raises(CorruptStorageError) as info:
            load_index(adir, zstandard, LOG1_SEG1, 2, "00" * 32, None)
        assert str(info.value) == (f"archive segment {where} is damaged: its index does not match the "
                                   "checksum the manifest records")
        assert info.value.path == where
        with pytest.raises(CorruptStorageError) as info:
            load_index(adir, zstandard, LOG1_SEG1, 2, None, "00" * 32)
        assert str(info.value) == f"archive file {where} does not match its checksum"
        assert info.value.path == where
        raw = (arch / LOG1_SEG1).read_bytes()
        (arch / LOG1_SEG1).write_bytes(raw + b"")
        with pytest.raises(CorruptStorageError, match="does not match its checksum"):
            load_index(adir, zstandard, LOG1_SEG1, 2, None, hashlib.sha256(raw[:-1]).hexdigest())
    assert set(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("size", [0, 1, 27])
def test_a_segment_too_short_for_its_magic_and_trailer_is_refused(copy: tuple[Path, Path], size: int) -> None:
    _store, arch = copy
    (arch / LOG1_SEG1).write_bytes(b"KRPSEG1\n" + bytes(20)[:max(0, size - 8)] if size >= 8 else b"K" * size)
    where = str(arch / LOG1_SEG1)
    with ArchiveDir.open(arch, create=False) as adir, pytest.raises(CorruptStorageError) as info:
        load_index(adir, zstandard, LOG1_SEG1, 2, None, None)
    assert str(info.value) == f"archive segment {where} is damaged: it is cut off ({size} bytes)"
    assert info.value.path == where


def test_an_index_of_no_bytes_or_too_many_is_refused(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    where = str(arch / LOG1_SEG1)
    for length in (0, 3201, 3200):  # (an index of 2 bundles holds at most 24 + 2 × (52 + 256 × 6) bytes)
        body = bytes(length)
        raw = b"KRPSEG1\n" + body + struct.pack(">QI8s", 8, length, b"KRPIDX1\n")
        (arch / LOG1_SEG1).write_bytes(raw)
        with ArchiveDir.open(arch, create=False) as adir, pytest.raises(CorruptStorageError) as info:
            load_index(adir, zstandard, LOG1_SEG1, 2, None, None)
        if length == 3200:  # read, then found not to be zstd
            assert "an index of" not in str(info.value) and "does not decompress" in str(info.value)
        else:
            assert str(info.value) == f"archive segment {where} is damaged: an index of {length} bytes"
        assert info.value.path.startswith(where)


# -- queries --------------------------------------------------------------------------------------
def brute(logs: list[TransactionLog], query: Query, after: TransactionLog | None) -> list[TransactionLog]:
    """The archived entries that match, in the query's order, past ``after`` — one by one."""
    out = [x for x in logs if query.matches(x)]
    if query.order == "append":
        out.sort(key=lambda x: x.seq or 0, reverse=query.newest_first)
        if after is not None:
            out = [x for x in out if ((x.seq or 0) < (after.seq or 0) if query.newest_first
                                      else (x.seq or 0) > (after.seq or 0))]
    else:
        out.sort(key=lambda x: (x.timestamp, x.seq or 0), reverse=query.newest_first)
        if after is not None:
            pos = (after.timestamp, after.seq or 0)
            out = [x for x in out if ((x.timestamp, x.seq or 0) < pos if query.newest_first
                                      else (x.timestamp, x.seq or 0) > pos)]
    return out


def _queries(logs: list[TransactionLog]) -> list[Query]:
    t = sorted({x.timestamp for x in logs})
    seg1_min = min(x.timestamp for x in logs[256:])
    rid_many = max({x.request_id for x in logs}, key=lambda r: len({(x.seq or 0) // 256 for x in logs
                                                                     if x.request_id == r}))
    out = []
    for order in ("time", "append"):
        for newest in (True, False):
            for extra in ({}, {"since": t[100]}, {"until": t[100]}, {"since": t[50], "until": t[60]},
                          {"since": seg1_min}, {"until": seg1_min}, {"since": seg1_min + 1},
                          {"since": t[-1]}, {"since": t[-1] + 1}, {"until": t[0]}, {"until": t[0] + 1},
                          {"request_id": logs[300].request_id}, {"request_id": rid_many},
                          {"request_id": "no such request"}, {"request_id": logs[0].request_id},
                          {"op_names": ("op_03", "op_11")}, {"statuses": (LogStatus.Failed,)},
                          {"op_names": ("op_03",), "statuses": (LogStatus.Started,), "since": t[200]}):
                out.append(Query(order=order, newest_first=newest, **extra))  # type: ignore[arg-type]
    return out


def test_every_query_matches_the_entries_filtered_one_by_one(built: Built, copy: tuple[Path, Path],
                                                            tree: Any) -> None:
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    live = FIRST1 + ARCHIVED
    for r in (reader(arch, tree), reader(arch)):
        for query in _queries(logs):
            assert list(r.iterate(query, None, live)) == brute(logs, query, None), query


def test_a_query_stops_at_the_stores_live_first_seq(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    r = reader(arch)
    for live, count in ((FIRST1 + 256 + 255, 256), (FIRST1 + 512, 512), (FIRST1 + 255, 0), (FIRST1, 0),
                        (0, 0), (FIRST1 + 10 * 256, ARCHIVED)):
        for query in (Query(order="append", newest_first=False), Query(), Query(since=0),
                      Query(request_id=logs[10].request_id), Query(request_id=logs[600].request_id)):
            assert list(r.iterate(query, None, live)) == brute(logs[:count], query, None), (live, query)


def test_an_empty_choice_of_ops_or_statuses_finds_nothing(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    r = reader(arch)
    assert list(r.iterate(Query(op_names=()), None, FIRST1 + ARCHIVED)) == []
    assert list(r.iterate(Query(statuses=(), order="append"), None, FIRST1 + ARCHIVED)) == []


def test_paging_with_a_cursor_in_every_order(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    r = reader(arch)
    live = FIRST1 + ARCHIVED
    for order in ("time", "append"):
        for newest in (True, False):
            query = Query(order=order, newest_first=newest)  # type: ignore[arg-type]
            whole = brute(logs, query, None)
            for at in (0, 1, 255, 256, 400, len(whole) - 2, len(whole) - 1):
                assert list(r.iterate(query, whole[at], live)) == whole[at + 1:], (order, newest, at)
            query = Query(order=order, newest_first=newest, since=logs[100].timestamp)  # type: ignore[arg-type]
            whole = brute(logs, query, None)
            assert list(r.iterate(query, whole[5], live)) == whole[6:]


def test_a_cursor_without_a_seq_starts_from_the_beginning(built: Built, copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    r = reader(arch)
    free = TransactionLog(logs[10].timestamp, "op", "rid", LogStatus.Started)
    assert free.seq is None
    assert list(r.iterate(Query(), free, FIRST1 + ARCHIVED)) == brute(logs, Query(), None)


def test_a_format_1_archive_reads_every_segment_index(built: Built, copy: tuple[Path, Path]) -> None:
    """A format-1 manifest's time ranges are not trusted before its segment indexes are read:
    every index is read (a missing segment is found), even where the range excludes the query."""
    _store, arch = copy
    raw = manifest_of(arch)
    raw["version"] = 1
    for log in raw["logs"]:
        for seg in log["segments"]:
            del seg["index_sha256"]
    logs = built.log1[:ARCHIVED]
    seg1 = raw["logs"][1]["segments"][1]
    r = ArchiveReader(arch, 1, FIRST1, None, raw)
    assert r.version == 1
    # its time bounds are every timestamp (an entry at 0 included), whatever the query's range
    for query in (Query(), Query(since=seg1["max_ts"] + 1), Query(until=seg1["min_ts"])):
        assert r.time_bounds(query, FIRST1 + ARCHIVED) == (0, 2**63 - 1)
    assert r.time_bounds(Query(), FIRST1 + 255) is None
    for query in (Query(since=seg1["max_ts"] + 1), Query(until=seg1["min_ts"], order="append")):
        assert list(r.iterate(query, None, FIRST1 + ARCHIVED)) == brute(logs, query, None)
    (arch / LOG1_SEG1).unlink()
    for query in (Query(since=seg1["max_ts"] + 1), Query(until=seg1["min_ts"], order="append")):
        with pytest.raises(CorruptStorageError, match=f"{LOG1_SEG1} is missing"):
            list(ArchiveReader(arch, 1, FIRST1, None, raw).iterate(query, None, FIRST1 + ARCHIVED))


def test_a_segment_whose_range_excludes_the_query_is_not_read(built: Built, copy: tuple[Path, Path]) -> None:
    """Format 2: a segment entirely before ``since`` or from ``until`` on is skipped unread (a
    missing file there changes nothing), one overlapping it is read."""
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    seg0 = manifest_of(arch)["logs"][1]["segments"][0]
    seg1 = manifest_of(arch)["logs"][1]["segments"][1]
    (arch / LOG1_SEG1).unlink()
    r = reader(arch)
    for query in (Query(since=seg1["max_ts"] + 1), Query(until=seg1["min_ts"])):
        assert list(r.iterate(query, None, FIRST1 + ARCHIVED)) == brute(logs, query, None)
    for query in (Query(since=seg1["max_ts"]), Query(until=seg1["min_ts"] + 1)):
        with pytest.raises(CorruptStorageError, match="is missing"):
            list(r.iterate(query, None, FIRST1 + ARCHIVED))
    assert seg0["max_ts"] > seg1["max_ts"]  # (bundle 0 holds the clear's entry: the newest of all)


def test_a_request_id_index_naming_a_bundle_past_the_segment_is_refused(built: Built,
                                                                       copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    logs = built.log1[:256]
    data = encoded(logs)
    m = manifest_of(arch)["logs"][1]["segments"][0]
    key = rid_hash(logs[5].request_id.encode())[:4]
    raw = _encode_segment(zstandard, None, 1, 0, [(bundle_of(data), [], bundle_hash(data), m["min_ts"],
                                                   m["max_ts"], keys(logs))])
    # the index rebuilt with the key's bundle number 1 (of 1)
    offset, length = struct.unpack(">QI", raw[-20:-8])
    index = bytearray(zstandard.ZstdDecompressor().decompress(raw[offset:offset + length]))
    nkeys = struct.unpack_from(">I", index, 20)[0]
    at = keys(logs).index(key)
    struct.pack_into(">H", index, 24 + 52 + 4 * nkeys + 2 * at, 1)
    packed = zstandard.ZstdCompressor().compress(bytes(index))
    install(arch, LOG1_SEG0, raw[:offset] + packed + struct.pack(">QI8s", offset, len(packed), b"KRPIDX1\n"),
            dictionary=None)
    with pytest.raises(CorruptStorageError) as info:
        list(reader(arch).iterate(Query(request_id=logs[5].request_id), None, FIRST1 + ARCHIVED))
    assert str(info.value) == (f"archive segment {arch / LOG1_SEG0} is damaged: its request-id index names "
                               "bundle 1 of 1")
    assert info.value.path == str(arch / LOG1_SEG0)
    other = logs[6].request_id  # another key: found as before
    assert list(reader(arch).iterate(Query(request_id=other), None, FIRST1 + ARCHIVED)) == brute(
        built.log1[:ARCHIVED], Query(request_id=other), None)


def test_a_bundle_that_does_not_decompress_or_split_names_its_file(built: Built,
                                                                   copy: tuple[Path, Path]) -> None:
    """The message says which bundle; the error's path is the segment file."""
    _store, arch = copy
    data = [encoded(built.log1[256 * k:256 * k + 256]) for k in (1, 2)]
    times = _seg_times(built, 1, 2)
    short = data[0][:255]
    hashes = [bundle_hash(data[0]), bundle_hash(data[1])]
    install(arch, LOG1_SEG1, craft(1, 1, [short, data[1]], hashes, times), dictionary=None)
    where = f"archive segment {arch / LOG1_SEG1}: bundle 1"
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(1)
    assert str(info.value) == f"{where}: 255 entries, a bundle holds 256"
    assert info.value.path == str(arch / LOG1_SEG1)
    raw = bytearray(craft(1, 1, data, None, times))
    raw[8] ^= 0xFF  # the first frame's magic
    install(arch, LOG1_SEG1, bytes(raw), dictionary=None)
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(1)
    assert str(info.value).startswith(f"{where} does not decompress (")
    assert info.value.path == str(arch / LOG1_SEG1)
    assert reader(arch).bundle_data(2) == data[1]


def test_an_index_that_does_not_decompress_names_its_file(copy: tuple[Path, Path]) -> None:
    _store, arch = copy
    raw = bytearray((arch / LOG1_SEG1).read_bytes())
    offset, _length = struct.unpack(">QI", raw[-20:-8])
    raw[offset] ^= 0xFF
    install(arch, LOG1_SEG1, bytes(raw))
    with pytest.raises(CorruptStorageError) as info:
        reader(arch).bundle_bytes(1)
    assert str(info.value).startswith(f"archive segment {arch / LOG1_SEG1}: the index does not decompress (")
    assert info.value.path == str(arch / LOG1_SEG1)


def test_time_bounds_are_those_of_the_segments_below_the_live_entries(copy: tuple[Path, Path]) -> None:
    """``time_bounds`` from the manifest alone: the smallest and largest timestamp of the
    segments holding bundles below ``live_first`` (whole bundles only) that the query's time
    range can reach, ``None`` when there is no such bundle or the query matches nothing."""
    _store, arch = copy
    seg0, seg1 = manifest_of(arch)["logs"][1]["segments"]  # bundle 0; bundles 1-2
    r = reader(arch)
    b0 = (seg0["min_ts"], seg0["max_ts"])
    both = (min(seg0["min_ts"], seg1["min_ts"]), max(seg0["max_ts"], seg1["max_ts"]))
    for live, want in ((0, None), (FIRST1, None), (FIRST1 + 255, None), (FIRST1 + 256, b0),
                       (FIRST1 + 511, b0), (FIRST1 + 512, both), (FIRST1 + ARCHIVED, both),
                       (FIRST1 + 10 * 256, both)):
        assert r.time_bounds(Query(), live) == want, live
    live = FIRST1 + ARCHIVED
    for query in (Query(op_names=()), Query(statuses=()), Query(op_names=(), statuses=())):
        assert r.time_bounds(query, live) is None
        assert r.time_bounds(query, FIRST1) is None
    assert r.time_bounds(Query(op_names=("x",), statuses=(LogStatus.Completed,)), live) == both
    latest = max(seg0["max_ts"], seg1["max_ts"])
    earliest = min(seg0["min_ts"], seg1["min_ts"])
    assert r.time_bounds(Query(since=latest + 1), live) is None
    assert r.time_bounds(Query(since=latest), live) is not None
    assert r.time_bounds(Query(until=earliest), live) is None
    assert r.time_bounds(Query(until=earliest + 1), live) is not None


def test_a_segment_past_the_live_entries_or_the_cursor_is_not_read(built: Built,
                                                                   copy: tuple[Path, Path]) -> None:
    """A segment beginning at or past the bundles below ``live_first``, and (with a cursor) one
    wholly on the wrong side of it — in append order by seq, in time order by its time range —
    is skipped unread: a missing file there changes nothing."""
    _store, arch = copy
    logs = built.log1[:ARCHIVED]
    seg1 = manifest_of(arch)["logs"][1]["segments"][1]
    saved = {name: (arch / name).read_bytes() for name in (LOG1_SEG0, LOG1_SEG1)}

    def without(name: str) -> ArchiveReader:
        for other, raw in saved.items():
            (arch / other).write_bytes(raw)
        (arch / name).unlink()
        return reader(arch)

    r = without(LOG1_SEG1)  # bundles 1-2: not below seq FIRST1 + 256
    for query in (Query(), Query(newest_first=False), Query(order="append"), Query(since=0)):
        assert list(r.iterate(query, None, FIRST1 + 256)) == brute(logs[:256], query, None), query
    live = FIRST1 + ARCHIVED
    for name, query, after in (
            (LOG1_SEG0, Query(order="append", newest_first=False), logs[300]),  # seqs before the cursor
            (LOG1_SEG0, Query(order="append", newest_first=False), logs[255]),
            (LOG1_SEG1, Query(order="append"), logs[256]),                      # seqs after it, newest first
            (LOG1_SEG1, Query(order="append"), logs[100])):
        assert list(without(name).iterate(query, after, live)) == brute(logs, query, after), (name, after.seq)
    before = min((x for x in logs[:256] if x.timestamp < seg1["min_ts"]), key=lambda x: x.timestamp)
    query = Query()  # time order, newest first: bundles 1-2 are all newer than the cursor
    assert list(without(LOG1_SEG1).iterate(query, before, live)) == brute(logs, query, before)
    with pytest.raises(CorruptStorageError, match="is missing"):  # (a segment the cursor reaches is read)
        list(without(LOG1_SEG1).iterate(query, logs[-1], live))
