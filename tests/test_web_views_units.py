"""What the console's pages read (``krepis.web._views``), called in-process on real LMDB stores:
the bounds (``Limits``), the trail's pages and cursors both ways, one request, the ops summary
(the journal's own, archived entries counted apart) and its series over time (buckets, window,
percentiles), the budgets of heavy reads, the counters and the verifiable log's leaves and
proofs — with the exact message of every refusal."""
from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis._errors import ValidationError
from krepis._model import now_ms
from krepis.tlog import generate_signer
from krepis.web._views import BUCKETS, Busy, Limits, Reader, _order, entry_dict, percentile
from webtools import ARCHIVED, ENTRIES, console_entries

S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed
T0 = 1_769_860_800_000  # 2026-01-31T12:00:00Z: on the hour, not on the day
NOW = T0 + 3_600_000


def p(**params: str | list[str]) -> dict[str, list[str]]:
    """A query string's parameters, ``now`` fixed unless given."""
    out = {k: [v] if isinstance(v, str) else v for k, v in params.items()}
    out.setdefault("now", [str(NOW)])
    return out


def refused(words: str, call: Any, *args: Any) -> None:
    with pytest.raises(ValidationError) as info:
        call(*args)
    assert str(info.value) == words


#: ten entries: request r0…r4 of two each (Started, then Completed; r2 Failed), ops a and b alternating
SMALL = [TransactionLog(T0 + i * 1000, "ab"[i % 2], f"r{i // 2}", S if i % 2 == 0 else (F if i == 5 else C),
                        duration_us=None if i % 2 == 0 else 100 * i) for i in range(10)]


def build(path: Path, entries: list[TransactionLog], archive: bool = True) -> None:
    """As webtools.make_console_store (each entry counted under its op, the kernel's counters, the
    first 512 archived, a signed checkpoint), written with an interval flush to be quick."""
    with SovereignJournal(path, flush="interval:20ms") as journal:
        for entry in entries:
            journal.record(entry, increment=entry.op_name if len(entry.op_name) < 40 else "hostile")
        for _ in range(3):
            journal.increment_op_count("js_ops_called")
        journal.increment_op_count("contexts_created")
        if archive:
            journal.archive(path.parent / "archive", keep_last=journal.journal_count() - ARCHIVED)
        journal.sign_checkpoint(generate_signer("example.com/journal"))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path_factory.mktemp("views") / "small", flush="interval:20ms") as journal:
        for entry in SMALL:
            journal.record(entry, increment=entry.op_name)
        yield journal


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SovereignJournal]:
    """700 entries, the first 512 archived, a signed checkpoint."""
    path = tmp_path_factory.mktemp("views") / "storage"
    build(path, console_entries())
    with SovereignJournal(path) as journal:
        yield journal


def make(tmp_path: Path, entries: list[TransactionLog]) -> SovereignJournal:
    journal = SovereignJournal(tmp_path / "store", flush="interval:20ms")
    for entry in entries:
        journal.record(entry)
    return journal


def seqs(page: dict[str, Any]) -> list[int]:
    return [e["seq"] for e in page["entries"]]


# -- Limits ------------------------------------------------------------------------------------

INTS = ("page_size", "page_max", "scan_budget", "request_max", "series_max", "series_buckets", "summary_max",
        "heavy", "live_max", "live_backlog", "live_queue_bytes", "live_total_bytes", "readers", "max_query",
        "half_open_max")
NUMBERS = ("scan_seconds", "heavy_seconds", "live_poll", "header_seconds")


def test_the_default_limits() -> None:
    assert dataclasses.asdict(Limits()) == {
        "page_size": 100, "page_max": 500, "scan_budget": 200_000, "scan_seconds": 2.0, "request_max": 1000,
        "series_max": 2_000_000, "series_buckets": 1500, "summary_max": 2_000_000, "heavy_seconds": 10.0,
        "heavy": 2, "live_max": 100, "live_backlog": 5000, "live_queue_bytes": 8_000_000,
        "live_total_bytes": 64_000_000, "live_poll": 0.1, "readers": 4, "max_query": 4096,
        "header_seconds": 10.0, "half_open_max": 256}


@pytest.mark.parametrize("name", INTS)
def test_a_count_limit_is_an_int_of_one_or_more(name: str) -> None:
    assert getattr(Limits(**{name: 1, "page_size": 1}), name) == 1
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(ValidationError) as info:
            Limits(**{name: bad})
        assert str(info.value) == f"limit {name} must be an int >= 1, got {bad!r}"


@pytest.mark.parametrize("name", NUMBERS)
def test_a_time_limit_is_a_number_above_zero(name: str) -> None:
    assert getattr(Limits(**{name: 1}), name) == 1
    assert getattr(Limits(**{name: 0.001}), name) == 0.001
    for bad in (0, 0.0, -1, "1", None, float("nan")):
        with pytest.raises(ValidationError) as info:
            Limits(**{name: bad})
        assert str(info.value) == f"limit {name} must be a number > 0, got {bad!r}"


def test_the_page_size_is_at_most_the_page_max() -> None:
    assert Limits(page_size=5, page_max=5).page_size == 5
    with pytest.raises(ValidationError) as info:
        Limits(page_size=6, page_max=5)
    assert str(info.value) == "page_size 6 is above page_max 5"


# -- small helpers -----------------------------------------------------------------------------

def test_entry_dict_is_the_entrys_fields_and_seq() -> None:
    entry = TransactionLog(5, "op", "r", F, duration_us=3, error="e", seq=7)
    assert entry_dict(entry) == {**entry.to_dict(), "seq": 7}


def test_the_order_is_by_time_when_anything_filters() -> None:
    assert _order({"since": None, "until": None}) == "append"
    assert _order({}) == "append"
    assert _order({"since": None, "until": 0}) == "time"
    assert _order({"since": 5, "until": None, "op_name": ["a"]}) == "time"


def test_percentiles_are_nearest_rank() -> None:
    ten = list(range(1, 11))
    assert [percentile(ten, q) for q in (0, 1, 10, 11, 50, 95, 99, 100)] == [1, 1, 1, 2, 5, 10, 10, 10]
    hundred = list(range(1, 101))
    assert [percentile(hundred, q) for q in (50, 95, 99)] == [50, 95, 99]
    assert percentile([7], 99) == 7 and percentile([3, 9, 12], 50) == 9
    assert percentile([], 50) is None


# -- the trail ---------------------------------------------------------------------------------

def test_the_first_page_is_the_newest_entries(small: SovereignJournal) -> None:
    page = Reader(small).trail(p())
    assert seqs(page) == list(range(9, -1, -1))
    assert page["entries"][0] == entry_dict(small.entry(9))
    assert {k: v for k, v in page.items() if k not in ("entries", "filters")} == {
        "older": None, "newer": None, "scanned": 10, "budget_spent": False, "next_seq": 10, "limit": 100}
    assert page["filters"] == {"op": [], "status": [], "request_id": [], "prefix": False, "since": None,
                               "until": None, "q": "", "now": NOW}


def test_pages_towards_older_entries(small: SovereignJournal) -> None:
    reader = Reader(small)
    page = reader.trail(p(limit="3"))
    assert (seqs(page), page["older"], page["newer"]) == ([9, 8, 7], 7, None)
    assert (page["scanned"], page["limit"]) == (3, 3)
    page = reader.trail(p(limit="3", after="7"))
    assert (seqs(page), page["older"], page["newer"]) == ([6, 5, 4], 4, 6)
    page = reader.trail(p(limit="3", after="3"))
    assert (seqs(page), page["older"], page["newer"]) == ([2, 1, 0], None, 2)
    page = reader.trail(p(limit="3", after="0"))
    assert (seqs(page), page["older"], page["newer"]) == ([], None, None)


def test_pages_towards_newer_entries(small: SovereignJournal) -> None:
    reader = Reader(small)
    page = reader.trail(p(limit="3", before="2"))
    assert (seqs(page), page["older"], page["newer"]) == ([5, 4, 3], 3, 5)
    page = reader.trail(p(limit="3", before="6"))
    assert (seqs(page), page["older"], page["newer"]) == ([9, 8, 7], 7, None)
    page = reader.trail(p(limit="3", before="8"))
    assert (seqs(page), page["older"], page["newer"]) == ([9], 9, None)
    page = reader.trail(p(limit="3", before="9"))
    assert (seqs(page), page["older"], page["newer"]) == ([], 9, None)


def test_the_page_size_is_bounded(small: SovereignJournal) -> None:
    reader = Reader(small, limits=Limits(page_size=2, page_max=4))
    assert seqs(reader.trail(p())) == [9, 8]
    assert seqs(reader.trail(p(limit="4"))) == [9, 8, 7, 6]
    assert reader.trail(p(limit="1"))["older"] == 9
    refused("limit='5' is not a whole number in 1 … 4", reader.trail, p(limit="5"))
    refused("limit='0' is not a whole number in 1 … 4", reader.trail, p(limit="0"))


def test_a_cursor_must_be_an_entry_shown(small: SovereignJournal, console: SovereignJournal) -> None:
    reader = Reader(small)
    refused("give after (older entries) or before (newer entries), not both", reader.trail,
            p(after="3", before="5"))
    for name in ("after", "before"):
        refused(f"{name}=10: no entry has that seq (a page's cursor is the seq of an entry it showed)",
                reader.trail, p(**{name: "10"}))
    refused("after=5: no entry has that seq (a page's cursor is the seq of an entry it showed)",
            Reader(console, live_only=True).trail, p(after="5"))
    assert seqs(Reader(console).trail(p(after="5"))) == [4, 3, 2, 1, 0]


def test_filters_the_indexes_answer(small: SovereignJournal) -> None:
    reader = Reader(small)
    page = reader.trail(p(op="a", limit="2"))
    assert (seqs(page), page["older"], page["scanned"]) == ([8, 6], 6, 2)
    page = reader.trail(p(op="zz*"))
    assert {k: v for k, v in page.items() if k != "filters"} == {
        "entries": [], "older": None, "newer": None, "scanned": 0, "budget_spent": False, "next_seq": 10,
        "limit": 100}
    assert page["filters"]["op"] == ["zz*"]


def test_filters_checked_here_read_past_the_page(small: SovereignJournal) -> None:
    reader = Reader(small)
    page = reader.trail(p(q="R1", limit="1"))
    assert (seqs(page), page["older"], page["scanned"], page["budget_spent"]) == ([3], 3, 7, False)
    page = reader.trail(p(q="R1", limit="1", after="3"))
    assert (seqs(page), page["older"], page["newer"]) == ([2], None, 2)
    page = reader.trail(p(request_id=["r0", "r4"], limit="3", before="0"))
    assert (seqs(page), page["older"], page["newer"]) == ([9, 8, 1], 1, None)


def test_the_scan_budget_ends_a_page(small: SovereignJournal) -> None:
    page = Reader(small, limits=Limits(scan_budget=4)).trail(p(q="r0"))
    assert (seqs(page), page["older"], page["scanned"], page["budget_spent"]) == ([], 6, 4, True)


def test_a_scan_has_its_seconds(console: SovereignJournal) -> None:
    page = Reader(console).trail(p(q="upstream", limit="500"))
    assert page["scanned"] == ENTRIES and not page["budget_spent"] and page["older"] is None
    assert len(page["entries"]) == sum(1 for i in range(ENTRIES) if i % 2 and (i // 2) % 7 == 3
                                       and not (i >= 600 and (i - 600) % 25 == 0))


def test_the_history_read(console: SovereignJournal, tmp_path: Path) -> None:
    assert len(Reader(console).trail(p(limit="500", after="499"))["entries"]) == 499
    live = Reader(console, live_only=True).trail(p(limit="500"))
    assert seqs(live) == list(range(ENTRIES - 1, ARCHIVED - 1, -1))
    empty = tmp_path / "no-archive"
    empty.mkdir()
    with pytest.raises(Exception, match="no-archive"):
        Reader(console, archive=str(empty)).trail(p(limit="500"))


# -- one request -------------------------------------------------------------------------------

def test_one_request_oldest_first(small: SovereignJournal) -> None:
    out = Reader(small).request({"id": ["r2"]})
    assert out == {"request_id": "r2", "entries": [entry_dict(small.entry(4)), entry_dict(small.entry(5))],
                   "more": False, "after": None, "statuses": {"Started": 1, "Completed": 0, "Failed": 1}}
    assert Reader(small).request({"id": [" r2"]})["entries"] == []
    assert Reader(small).request({"id": ["r2"], "after": ["4"]})["statuses"] == {"Started": 0, "Completed": 0,
                                                                                  "Failed": 1}


def test_one_request_a_page_at_a_time(small: SovereignJournal) -> None:
    reader = Reader(small, limits=Limits(request_max=1))
    out = reader.request({"id": ["r1"]})
    assert ([e["seq"] for e in out["entries"]], out["more"], out["after"]) == ([2], True, 2)
    out = reader.request({"id": ["r1"], "after": ["2"]})
    assert ([e["seq"] for e in out["entries"]], out["more"], out["after"]) == ([3], False, None)
    out = Reader(small, limits=Limits(request_max=2)).request({"id": ["r1"]})
    assert ([e["seq"] for e in out["entries"]], out["more"], out["after"]) == ([2, 3], False, None)


def test_one_request_is_asked_well(small: SovereignJournal) -> None:
    reader = Reader(small)
    for ids in ([], ["r1", "r2"]):
        refused("id (the request id) is required, once", reader.request, {"id": ids})
    refused("id must not be empty (1–256 bytes of UTF-8)", reader.request, {"id": [""]})
    refused("after=99: no entry has that seq (a page's cursor is the seq of an entry it showed)",
            reader.request, {"id": ["r1"], "after": ["99"]})


# -- the ops summary ---------------------------------------------------------------------------

@pytest.mark.parametrize("params, args", [
    ({}, {}),
    ({"op": "op_charge"}, {"op_name": "op_charge"}),
    ({"op": "op_*"}, {"op_name": ["op_charge", "op_login", "op_refund"]}),
    ({"status": "failed"}, {"status": "Failed"}),
    ({"since": str(1_769_860_800_000 + 5_000_000), "until": str(1_769_860_800_000 + 12_000_000)},
     {"since": 1_769_860_800_000 + 5_000_000, "until": 1_769_860_800_000 + 12_000_000}),
])
def test_the_summary_is_the_journals(console: SovereignJournal, params: dict[str, str],
                                     args: dict[str, Any]) -> None:
    out = Reader(console).summary(p(**params))
    want = console.summary(**args).to_dict()
    assert out.pop("filters")["op"] == ([params["op"]] if "op" in params else [])
    assert out == want
    assert Reader(console, live_only=True).summary(p(**params)) | {"filters": None} == (
        console.summary(**args, live_only=True).to_dict() | {"filters": None})


def test_the_summary_counts_archived_entries_apart(console: SovereignJournal) -> None:
    out = Reader(console).summary(p())
    assert (out["live_entries"], out["archived_entries"]) == (ENTRIES - ARCHIVED, ARCHIVED)
    out = Reader(console).summary(p(op="op_charge", status="started"))
    assert out["total"]["entries"] == out["live_entries"] + out["archived_entries"]


def test_the_summary_of_a_small_store(small: SovereignJournal) -> None:
    out = Reader(small).summary(p())
    assert out["total"]["entries"] == 10 and out["total"]["failed"] == 1
    assert out == small.summary().to_dict() | {"filters": out["filters"]}
    assert Reader(small).summary(p(op="zz*")) == {"rows": [], "total": None, "filters": out["filters"] | {
        "op": ["zz*"]}}


@pytest.mark.parametrize("params", [{"request_id": "r1"}, {"q": "x"}])
def test_the_ops_pages_filter_by_op_status_and_time_only(small: SovereignJournal,
                                                         params: dict[str, str]) -> None:
    for read in (Reader(small).summary, Reader(small).series):
        refused("the ops page filters by op, status and time only", read, p(**params))


def test_heavy_reads_are_bounded_in_entries(small: SovereignJournal) -> None:
    assert Reader(small, limits=Limits(summary_max=10)).summary(p())["total"]["entries"] == 10
    refused("the window holds more than 9 entries, the most one summary reads: choose a shorter window "
            "or one op",
            Reader(small, limits=Limits(summary_max=9)).summary, p())
    assert Reader(small, limits=Limits(series_max=10)).series(p())["entries"] == 10
    refused("the window holds more than 9 entries, the most one plot reads: choose a shorter window "
            "or one op",
            Reader(small, limits=Limits(series_max=9)).series, p())


def test_heavy_reads_are_bounded_in_time(console: SovereignJournal) -> None:
    reader = Reader(console, limits=Limits(heavy_seconds=1e-9))
    with pytest.raises(Busy) as info:
        reader.summary(p())
    assert str(info.value) == ("the summary read 256 entries in 1e-09 s, the most it may take, and was "
                               "stopped: "
                               "choose a shorter window or one op, or retry when the server is less busy")
    with pytest.raises(Busy, match=r"^the plot read 256 entries in 1e-09 s"):
        reader.series(p())
    assert Reader(console).summary(p())["total"]["entries"] == ENTRIES


def test_a_budgeted_read_closes_its_entries(small: SovereignJournal) -> None:
    reader = Reader(small)
    entries = iter(SMALL)
    gen = (e for e in entries)
    with pytest.raises(ValidationError):
        list(reader._budgeted(gen, 3, "summary"))
    assert gen.gi_frame is None  # closed
    gen = (e for e in SMALL)
    assert len(list(reader._budgeted(gen, 10, "plot"))) == 10
    assert gen.gi_frame is None
    gen = (e for e in SMALL)
    budgeted = reader._budgeted(gen, 10, "plot")
    next(budgeted)
    budgeted.close()
    assert gen.gi_frame is None
    assert list(reader._budgeted(iter(SMALL), 10, "plot")) == SMALL  # no close method: fine


# -- the series --------------------------------------------------------------------------------

SERIES = [TransactionLog(T0, "a", "r0", S), TransactionLog(T0 + 10_000, "a", "r0", C, duration_us=50),
          TransactionLog(T0 + 20_000, "a", "r1", C, duration_us=10),
          TransactionLog(T0 + 30_000, "b", "r2", C, duration_us=30),
          TransactionLog(T0 + 90_000, "b", "r3", F, duration_us=70),
          TransactionLog(T0 + 150_000, "a", "r4", C, duration_us=20)]


def point(t: int, entries: int = 0, failed: int = 0, p50: int | None = None, p95: int | None = None,
          p99: int | None = None) -> dict[str, Any]:
    return {"t": t, "entries": entries, "failed": failed, "p50_us": p50, "p95_us": p95, "p99_us": p99}


@pytest.fixture(scope="module")
def series_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SovereignJournal]:
    with make(tmp_path_factory.mktemp("series"), SERIES) as journal:
        yield journal


def test_a_series_spans_the_matching_entries(series_store: SovereignJournal) -> None:
    out = Reader(series_store).series(p())
    assert out.pop("filters")["now"] == NOW
    assert out == {"bucket": "minute", "bucket_ms": 60_000, "start": T0, "end": T0 + 150_001, "entries": 6,
                   "points": [point(T0, 4, 0, 30, 50, 50), point(T0 + 60_000, 1, 1, 70, 70, 70),
                              point(T0 + 120_000, 1, 0, 20, 20, 20)]}
    out = Reader(series_store).series(p(op="b"))
    assert (out["start"], out["end"], out["entries"]) == (T0, T0 + 90_001, 2)
    assert out["points"] == [point(T0, 1, 0, 30, 30, 30), point(T0 + 60_000, 1, 1, 70, 70, 70)]


def test_a_series_window(series_store: SovereignJournal) -> None:
    reader = Reader(series_store)
    out = reader.series(p(since=str(T0 - 120_000), now=str(T0 + 600_000)))  # to now
    assert (out["start"], out["end"]) == (T0 - 120_000, T0 + 600_000)
    assert (len(out["points"]), out["entries"]) == (12, 6)
    assert out["points"][2] == point(T0, 4, 0, 30, 50, 50)
    out = reader.series(p(since=str(T0 + 5_000), now=str(T0 + 10)))  # to the newest, after now
    assert (out["start"], out["end"], out["entries"]) == (T0, T0 + 150_001, 5)
    assert out["points"][0] == point(T0, 3, 0, 30, 50, 50)
    out = reader.series(p(until=str(T0 + 60_000)))  # from the oldest
    assert (out["start"], out["end"], out["points"]) == (T0, T0 + 60_000, [point(T0, 4, 0, 30, 50, 50)])
    out = reader.series(p(since=str(T0 + 200_000), until=str(T0 + 200_001)))
    assert (out["bucket"], out["start"], out["points"]) == ("minute", T0 + 180_000, [point(T0 + 180_000)])
    out = reader.series(p(since=str(T0 + 200_000), now=str(T0 + 200_001)))
    assert (out["start"], out["end"], len(out["points"])) == (T0 + 180_000, T0 + 200_001, 1)


@pytest.mark.parametrize("params", [{"since": str(T0 + 200_000), "until": str(T0 + 200_000)},
                                    {"since": str(T0 + 200_000), "until": str(T0 + 100_000)},
                                    {"op": "zz*"}, {"op": "c"}, {"status": "started", "op": "b"}])
def test_an_empty_series(series_store: SovereignJournal, params: dict[str, str]) -> None:
    out = Reader(series_store).series(p(**params))
    assert out.pop("filters")["now"] == NOW
    assert out == {"bucket": None, "bucket_ms": None, "start": None, "points": [], "entries": 0}


def test_the_series_buckets(series_store: SovereignJournal) -> None:
    reader = Reader(series_store)
    out = reader.series(p(bucket="hour"))
    assert (out["bucket"], out["bucket_ms"], out["start"], out["points"]) == (
        "hour", 3_600_000, T0, [point(T0, 6, 1, 30, 70, 70)])
    out = reader.series(p(bucket=" day "))
    assert (out["bucket"], out["bucket_ms"], out["start"]) == ("day", 86_400_000, T0 - 43_200_000)
    assert reader.series(p(bucket="auto"))["bucket"] == "minute"
    assert BUCKETS == {"minute": 60_000, "5min": 300_000, "15min": 900_000, "hour": 3_600_000,
                       "6hour": 21_600_000, "day": 86_400_000, "week": 604_800_000}
    refused("bucket='second' is not one of auto, minute, 5min, 15min, hour, 6hour, day, week",
            reader.series, p(bucket="second"))
    refused(f"bucket={'x' * 20!r} is not one of auto, minute, 5min, 15min, hour, 6hour, day, week",
            reader.series, p(bucket="x" * 30))


def test_a_bucket_given_has_its_most_points(series_store: SovereignJournal) -> None:
    out = Reader(series_store, limits=Limits(series_buckets=4)).series(p(bucket="minute"))
    assert len(out["points"]) == 3
    refused("bucket=minute gives more than 3 points over this window: choose a wider bucket or a shorter "
            "window",
            Reader(series_store, limits=Limits(series_buckets=3)).series, p(bucket="minute"))


def test_auto_is_the_narrowest_bucket_of_300_points_at_most(series_store: SovereignJournal) -> None:
    reader = Reader(series_store)

    def auto(span: int, r: Reader = reader) -> str:
        return str(r.series(p(since=str(T0), until=str(T0 + span)))["bucket"])

    assert auto(298 * 60_000 + 59_999) == "minute"
    assert auto(299 * 60_000) == "5min"
    assert auto(298 * 300_000 + 299_999) == "5min"
    assert auto(299 * 300_000) == "15min"
    assert auto(298 * 604_800_000) == "week"
    few = Reader(series_store, limits=Limits(series_buckets=10))
    assert auto(8 * 60_000, few) == "minute"
    assert auto(9 * 60_000, few) == "5min"


def test_past_300_weekly_points_the_weeks_up_to_the_most(series_store: SovereignJournal) -> None:
    span = 400 * 604_800_000
    out = Reader(series_store).series(p(since=str(T0 - span), until=str(T0)))
    assert out["bucket"] == "week" and len(out["points"]) == 401
    assert Reader(series_store, limits=Limits(series_buckets=402)).series(
        p(since=str(T0 - span), until=str(T0)))["bucket"] == "week"
    half = 604_800_000 // 2  # whole weeks are counted: 400.5 weeks are 402 points at most
    assert Reader(series_store, limits=Limits(series_buckets=402)).series(
        p(since=str(T0 - span - half), until=str(T0)))["bucket"] == "week"
    refused("the window spans more than 401 weeks: choose a shorter one",
            Reader(series_store, limits=Limits(series_buckets=401)).series,
            p(since=str(T0 - span), until=str(T0)))


# -- counters and the verifiable log -----------------------------------------------------------

def test_the_counters(small: SovereignJournal) -> None:
    before = now_ms()
    out = Reader(small).counters()
    after = now_ms()
    head = small.tree_head()
    assert before <= out.pop("now") <= after
    assert out == {"counters": [{"name": "a", "value": 5}, {"name": "b", "value": 5}],
                   "kernel": {"js_ops_called": 0, "contexts_created": 0},
                   "entries": small.entry_counts().to_dict(), "journal_count": 10, "next_seq": 10,
                   "location": small.path, "archive": None, "live_only": False,
                   "tree": {"size": 10, "first_seq": 0, "epoch": 0,
                            "root": base64.b64encode(head.root).decode()}}


def test_the_counters_of_an_archived_store(console: SovereignJournal) -> None:
    out = Reader(console).counters()
    assert out["kernel"] == {"js_ops_called": 3, "contexts_created": 1}
    assert out["journal_count"] == ENTRIES and out["archive"] == console.get_archive_dir() is not None
    live = Reader(console, live_only=True).counters()
    assert (live["journal_count"], live["live_only"]) == (ENTRIES - ARCHIVED, True)
    assert live["entries"] == console.entry_counts().to_dict()


def test_the_checkpoint(small: SovereignJournal, console: SovereignJournal) -> None:
    assert Reader(small).checkpoint() is None
    assert Reader(console).checkpoint() == console.latest_checkpoint() is not None


def test_a_leaf(small: SovereignJournal, tmp_path: Path) -> None:
    reader = Reader(small)
    _tree, leaves = small.tile_sources()
    assert reader.leaf({"seq": ["0"]}) == (0, leaves(0, 1)[0])
    assert reader.leaf({"seq": ["9"]}) == (9, leaves(9, 1)[0])
    refused("seq is required", reader.leaf, {})
    with pytest.raises(KeyError) as info:
        reader.leaf({"seq": ["10"]})
    assert info.value.args[0] == "entry 10 is not in the current log (entries 0…9)"
    with make(tmp_path, SMALL[:5]) as journal:
        journal.clear_all()
        for entry in SMALL[:3]:
            journal.record(entry)
        cleared = Reader(journal)
        _tree, leaves = journal.tile_sources()
        assert cleared.leaf({"seq": ["5"]}) == (0, leaves(0, 1)[0])
        assert cleared.leaf({"seq": ["8"]}) == (3, leaves(3, 1)[0])
        for seq in (4, 9):
            with pytest.raises(KeyError) as info:
                cleared.leaf({"seq": [str(seq)]})
            assert info.value.args[0] == f"entry {seq} is not in the current log (entries 5…8)"


def test_a_leaf_of_the_live_store_only(console: SovereignJournal) -> None:
    assert Reader(console).leaf({"seq": ["3"]})[0] == 3
    with pytest.raises(ValidationError):
        Reader(console, live_only=True).leaf({"seq": ["3"]})


def test_the_proofs_are_the_journals(console: SovereignJournal) -> None:
    reader = Reader(console)
    proof = console.inclusion_proof(3, tree_size=600)
    assert reader.inclusion({"seq": ["3"], "size": ["600"]}) == {
        "seq": 3, "index": proof.index, "tree_size": 600,
        "path": [base64.b64encode(h).decode() for h in proof.path]}
    assert proof.path
    for params in ({}, {"seq": ["3"]}, {"size": ["3"]}):
        refused("seq and size are required", reader.inclusion, params)
    proof2 = console.consistency_proof(100, 650)
    assert reader.consistency({"old": ["100"], "new": ["650"]}) == {
        "old_size": 100, "new_size": 650, "path": [base64.b64encode(h).decode() for h in proof2.path]}
    assert proof2.path
    for params in ({}, {"old": ["3"]}, {"new": ["3"]}):
        refused("old and new are required", reader.consistency, params)
    with pytest.raises(ValidationError):
        Reader(console, live_only=True).inclusion({"seq": ["3"], "size": ["600"]})
    with pytest.raises(ValidationError):
        Reader(console, live_only=True).consistency({"old": ["100"], "new": ["650"]})


def test_proofs_from_the_empty_tree_and_of_the_first_entry(small: SovereignJournal) -> None:
    reader = Reader(small)
    assert reader.consistency({"old": ["0"], "new": ["5"]}) == {"old_size": 0, "new_size": 5, "path": []}
    assert reader.consistency({"old": ["0"], "new": ["0"]}) == {"old_size": 0, "new_size": 0, "path": []}
    assert reader.inclusion({"seq": ["0"], "size": ["1"]}) == {"seq": 0, "index": 0, "tree_size": 1,
                                                               "path": []}
    refused("entry 0 is not in the tree of size 0 (the log holds entries 0…9)", reader.inclusion,
            {"seq": ["0"], "size": ["0"]})


def test_one_request_after_the_first_entry(small: SovereignJournal) -> None:
    out = Reader(small).request({"id": ["r0"], "after": ["0"]})
    assert [e["seq"] for e in out["entries"]] == [1]


def test_one_request_counts_its_statuses(console: SovereignJournal) -> None:
    for rid in ("req-0325", "req-0300", "req-0003"):
        want = {"Started": 0, "Completed": 0, "Failed": 0}
        for e in console_entries():
            if e.request_id == rid:
                want[e.status.value] += 1
        assert Reader(console).request({"id": [rid]})["statuses"] == want
    assert Reader(console).request({"id": ["req-0325"]})["statuses"]["Failed"] == 2


def test_one_request_of_the_history_read(console: SovereignJournal) -> None:
    assert [e["seq"] for e in Reader(console).request({"id": ["req-0001"]})["entries"]] == [2, 3]
    assert Reader(console, live_only=True).request({"id": ["req-0001"]})["entries"] == []
    live = Reader(console, live_only=True).request({"id": ["req-0310"]})
    assert [e["seq"] for e in live["entries"]] == [620, 621]


@pytest.fixture(scope="module")
def old_and_new(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SovereignJournal]:
    """512 entries of op ``old`` (archived), then 8 of op ``new`` (live), a minute apart."""
    path = tmp_path_factory.mktemp("views") / "storage"
    entries = [TransactionLog(T0 + i * 60_000, "old" if i < ARCHIVED else "new", f"r{i}", C)
               for i in range(ARCHIVED + 8)]
    build(path, entries)
    with SovereignJournal(path) as journal:
        assert journal.entry_counts().archived == ARCHIVED
        yield journal


def test_a_series_of_the_live_store_only(old_and_new: SovereignJournal) -> None:
    live = Reader(old_and_new, live_only=True)
    first_live = T0 + ARCHIVED * 60_000
    out = live.series(p())
    assert (out["start"], out["end"], out["entries"]) == (first_live, first_live + 7 * 60_000 + 1, 8)
    out = Reader(old_and_new).series(p())
    assert (out["start"], out["entries"]) == (T0, ARCHIVED + 8)
    # an op whose entries are all archived: none in the live store, so the window ends now
    newest_old = T0 + (ARCHIVED - 1) * 60_000
    params = p(op="old", since=str(newest_old - 60_000), now=str(newest_old - 120_000))
    assert live.series(params)["points"] == []
    out = Reader(old_and_new).series(params)
    assert (out["start"], out["end"], out["entries"]) == (newest_old - 60_000, newest_old + 1, 2)


def test_a_leaf_from_the_archive_given(console: SovereignJournal, tmp_path: Path) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(Exception, match="elsewhere"):
        Reader(console, archive=str(empty)).leaf({"seq": ["3"]})
    assert Reader(console, archive=console.get_archive_dir()).leaf({"seq": ["3"]}) == Reader(console).leaf(
        {"seq": ["3"]})


def test_a_bucket_given_counts_whole_buckets(series_store: SovereignJournal) -> None:
    reader = Reader(series_store, limits=Limits(series_buckets=3))
    out = reader.series(p(bucket="minute", since=str(T0), until=str(T0 + 119_999)))
    assert len(out["points"]) == 2


def test_a_series_point_has_the_nearest_rank_percentiles(tmp_path: Path) -> None:
    durations = [(i * 37) % 100 + 1 for i in range(100)]  # 1…100, shuffled
    with make(tmp_path, [TransactionLog(T0 + i * 10, "a", f"r{i}", C, duration_us=d)
                         for i, d in enumerate(durations)]) as journal:
        out = Reader(journal).series(p(bucket="minute"))
    assert out["points"] == [point(T0, 100, 0, 50, 95, 99)]


def test_a_scan_past_its_seconds_ends_with_a_cursor(console: SovereignJournal) -> None:
    page = Reader(console, limits=Limits(scan_seconds=1e-9)).trail(p(q="upstream", limit="500"))
    assert (page["scanned"], page["budget_spent"], page["older"]) == (256, True, ENTRIES - 256)
