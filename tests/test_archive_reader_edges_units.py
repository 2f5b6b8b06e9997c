"""Edges of the archive reader (``krepis.archive._reader``) the tests of
``test_archive_reader_units.py`` do not reach with the shared archive: segments whose time
ranges do not grow with their bundles (a clock set back, entries written with their own
timestamps), segments beginning exactly where the live entries begin, entries all at time 0."""

from __future__ import annotations

from pathlib import Path

import pytest

from krepis.archive import ArchiveReader
from krepis.archive._format import segment_name
from krepis.archive._manifest import new_manifest
from krepis.storage import Query

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
