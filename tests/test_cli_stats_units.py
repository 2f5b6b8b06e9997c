"""``krepis.cli._stats`` in-process: ``--by``'s values and refusals, the counters' every form (a
terminal table fitted to its width, with and without colour; tab-separated lines with the
summary line on stderr; CSV; none yet; archived and ``--live-only`` counts), a summary's order
for each ``--sort`` (ties, missing values), its table (the op column giving way on a narrow
terminal, never under 8 cells; the status column never), TSV, CSV and JSON, the footer with its
range, and the command through click's runner on a real store."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import cli
from krepis.cli._stats import (
    _FIELDS,
    _SORTS,
    _ByType,
    _csv_lines,
    _key_text,
    _show_counts,
    _show_summary,
    _sorted,
    _span,
    _table,
)
from krepis.journal import EntryCounts, Summary, SummaryRow

T0 = 1_700_000_000_000
Cap = pytest.CaptureFixture[str]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _on_tty(monkeypatch: pytest.MonkeyPatch) -> _Tty:
    """stdout a terminal of 80 columns, without colour (set in the test itself: pytest's own
    capture replaces stdout once the fixtures are set up)."""
    out = _Tty()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("NO_COLOR", "1")
    return out


def _counts(live: int, archived: int, archive: str | None = None) -> EntryCounts:
    return EntryCounts(live, archived, live + archived, 0, archived, archive)


def _row(op: str | None, status: LogStatus | None, entries: int, failed: int, rate: float | None,
         p50: int | None = None, p95: int | None = None, p99: int | None = None,
         mx: int | None = None) -> SummaryRow:
    return SummaryRow(op, status, entries, 0, entries - failed, failed, rate, entries, p50, p95, p99, mx)


# -- --by ----------------------------------------------------------------------------------------------

def test_by_values() -> None:
    by = _ByType()
    assert by.name == "op[,status]"
    assert by.convert("op", None, None) == ("op",)
    assert by.convert(" status , op ", None, None) == ("status", "op")
    assert by.convert(("op", "status"), None, None) == ("op", "status")
    with pytest.raises(click.BadParameter) as raised:
        by.convert(" ", None, None)
    assert raised.value.message == "name what to group by: op, status or op,status"
    with pytest.raises(click.BadParameter) as raised:
        by.convert("op,time", None, None)
    assert raised.value.message == "a summary groups by op and status; got 'time'"


# -- the counters ----------------------------------------------------------------------------------------

def test_counters_piped(capsys: Cap) -> None:
    _show_counts({"b_op": 2, "a\tx": 10}, _counts(5, 0), None, "/store", False, False)
    out = capsys.readouterr()
    assert out.out == "a\\tx\t10\nb_op\t2\n"
    assert out.err == "5 journal entries, 2 counters in /store\n"
    _show_counts({"a": 1}, _counts(1, 0), None, "/st\x1bore", False, False)
    assert capsys.readouterr().err == "1 journal entry, 1 counter in /st\\x1bore\n"


def test_counters_with_an_archive(capsys: Cap) -> None:
    _show_counts({"a": 1}, _counts(3, 256, "/arch"), "/arch", "/s", False, False)
    assert capsys.readouterr().err == "259 journal entries (3 live, 256 archived in /arch), 1 counter in /s\n"
    _show_counts({"a": 1}, _counts(3, 256), None, "/s", False, False)
    assert capsys.readouterr().err == "259 journal entries (3 live, 256 archived), 1 counter in /s\n"
    _show_counts({"a": 1}, _counts(3, 0), "/a\x1b", "/s", False, False)
    assert capsys.readouterr().err == "3 journal entries (3 live, 0 archived in /a\\x1b), 1 counter in /s\n"
    _show_counts({"a": 1}, _counts(3, 256), "/arch", "/s", True, False)
    assert capsys.readouterr().err == "3 live journal entries (--live-only; 256 archived), 1 counter in /s\n"


def test_no_counters_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    _show_counts({}, _counts(0, 0), None, "/s\x1b", False, False)
    assert tty.getvalue() == "no counters yet; 0 journal entries in /s\\x1b\n"


def test_counters_as_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    _show_counts({"b,c": 2, "a\x1b": 1}, _counts(5, 0), None, "/s", False, True)
    assert tty.getvalue() == 'counter,value\na\\x1b,1\n"b,c",2\n'
    tty.truncate(0)
    tty.seek(0)
    _show_counts({}, _counts(5, 0), None, "/s", False, True)
    assert tty.getvalue() == "counter,value\n"


def test_counters_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    _show_counts({"op": 3, "kernel_init": 1_234_567}, _counts(5, 0), None, "/s", False, False)
    assert tty.getvalue() == ("COUNTER        VALUE\n"
                              "kernel_init  1234567\n"
                              "op                 3\n"
                              "5 journal entries, 2 counters in /s\n")
    tty.truncate(0)
    tty.seek(0)
    _show_counts({"a": 3}, _counts(1, 0), None, "/s", False, False)  # the columns' least widths
    assert tty.getvalue() == "COUNTER  VALUE\na            3\n1 journal entry, 1 counter in /s\n"
    tty.truncate(0)
    tty.seek(0)
    monkeypatch.setenv("COLUMNS", "40")
    _show_counts({"n" * 50: 7, "é\x1b": 1}, _counts(1, 0), None, "/s", False, False)
    assert tty.getvalue().splitlines()[:3] == ["COUNTER" + " " * 26 + "  VALUE",
                                               "n" * 32 + "…      7",
                                               "é\\x1b" + " " * 28 + "      1"]
    tty.truncate(0)
    tty.seek(0)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "xterm")
    _show_counts({"a": 3}, _counts(1, 0), None, "/s", False, False)
    assert tty.getvalue().splitlines()[0] == "\x1b[1mCOUNTER  VALUE\x1b[0m"


# -- a summary ---------------------------------------------------------------------------------------------

ROWS = (_row("a", None, 10, 1, 0.1, 500, 2000, 3_000_000, 3_000_000),
        _row("b", None, 4, 2, 0.5),
        _row("c", None, 7, 0, 0.0, 5, 5, 5, 5),
        _row("d", None, 9, 2, 0.25, 600, 600, 600, 600))
TOTAL = _row(None, None, 30, 5, 5 / 30, 5, 2000, 3_000_000, 3_000_000)


@pytest.mark.parametrize(("sort", "order"), [
    ("name", "abcd"), ("failed", "dbac"), ("entries", "adcb"), ("rate", "bdac"), ("p50", "dacb"),
    ("p95", "adcb"), ("p99", "adcb"), ("max", "adcb"),
])
def test_sorted(sort: str, order: str) -> None:
    assert "".join(row.op_name or "" for row in _sorted(ROWS, sort)) == order


def test_sorts_and_fields() -> None:
    assert _SORTS == ("failed", "entries", "rate", "p50", "p95", "p99", "max", "name")
    assert _FIELDS == ("entries", "started", "completed", "failed", "failure_rate", "durations", "p50_us",
                       "p95_us", "p99_us", "max_us")


def test_ties_keep_the_summarys_order() -> None:
    rows = (_row("x", None, 1, 1, 1.0), _row("y", None, 1, 1, 1.0), _row("z", None, 2, 1, 0.5))
    assert [r.op_name for r in _sorted(rows, "failed")] == ["z", "x", "y"]  # then more entries first
    assert [r.op_name for r in _sorted(rows, "p50")] == ["z", "x", "y"]  # (no durations: -1 each)
    zero = (_row("x", None, 1, 0, None, 0, 0, 0, 0), _row("y", None, 1, 0, None))
    assert [r.op_name for r in _sorted(zero, "max")] == ["x", "y"]  # 0 µs before no duration at all
    assert [r.op_name for r in _sorted(zero[::-1], "max")] == ["x", "y"]


def test_csv_lines() -> None:
    assert _csv_lines([["a", 1], ["b,c", 'd"e'], ["", None]]) == ["a,1", '"b,c","d""e"', ","]


def test_key_text() -> None:
    row = _row("op\x1b", LogStatus.Failed, 1, 1, 1.0)
    assert _key_text(row, "op") == "op\\x1b" and _key_text(row, "status") == "Failed"
    bare = _row(None, None, 1, 1, 1.0)
    assert _key_text(bare, "op") == "" and _key_text(bare, "status") == ""


def test_span() -> None:
    def summary(since: int | None, until: int | None) -> Summary:
        return Summary(("op",), since, until, (), TOTAL, 0, 0)
    assert _span(summary(None, None)) == ""
    assert _span(summary(T0, None)) == " since 2023-11-14T22:13:20.000Z"
    assert _span(summary(None, T0)) == " until 2023-11-14T22:13:20.000Z"
    assert _span(summary(T0, T0 + 1)) == " since 2023-11-14T22:13:20.000Z until 2023-11-14T22:13:20.001Z"


WIDE = (_row("kernel_init", None, 10, 1, 0.1, 500, 2000, 3_000_000, 3_000_000),
        _row("op_a_very_long_operation_name_indeed", None, 4, 2, 0.5),
        _row("x", None, 7, 0, 0.0, 5, 5, 5, 5))
WIDE_TOTAL = _row(None, None, 21, 3, 3 / 21, 5, 2000, 3_000_000, 3_000_000)
BY_OP = Summary(("op",), T0, None, WIDE, WIDE_TOTAL, 15, 6)


def test_summary_table_fitted_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    _show_summary(BY_OP, "/p", "failed", None, False, False)
    assert tty.getvalue().splitlines() == [
        "OP                          ENTRIES  FAILED  FAIL%    P50    P95    P99    MAX",
        "op_a_very_long_operation_…        4       2  50.0%",
        "kernel_init                      10       1  10.0%  500µs  2.0ms  3.00s  3.00s",
        "x                                 7       0   0.0%    5µs    5µs    5µs    5µs",
        "TOTAL                            21       3  14.3%    5µs  2.0ms  3.00s  3.00s",
        "21 entries in 3 groups (15 live, 6 archived) since 2023-11-14T22:13:20.000Z in /p"]
    tty.truncate(0)
    tty.seek(0)
    monkeypatch.setenv("COLUMNS", "120")  # room for the whole name
    _show_summary(BY_OP, "/p", "name", 2, False, False)
    assert tty.getvalue().splitlines()[:3] == [
        "OP                                    ENTRIES  FAILED  FAIL%    P50    P95    P99    MAX",
        "kernel_init                                10       1  10.0%  500µs  2.0ms  3.00s  3.00s",
        "op_a_very_long_operation_name_indeed        4       2  50.0%"]
    assert len(tty.getvalue().splitlines()) == 5  # (--limit 2: the head, two groups, the total, the footer)


def test_summary_table_op_column_never_under_8(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    monkeypatch.setenv("COLUMNS", "40")
    _show_summary(BY_OP, "/p", "failed", None, False, False)
    assert tty.getvalue().splitlines()[:3] == [
        "OP        ENTRIES  FAILED  FAIL%    P50    P95    P99    MAX",
        "op_a_ve…        4       2  50.0%",
        "kernel_…       10       1  10.0%  500µs  2.0ms  3.00s  3.00s"]


def test_summary_table_status_first_never_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    monkeypatch.setenv("COLUMNS", "40")
    rows = (_row("op", LogStatus.Completed, 3, 0, 0.0, 1, 2, 3, 4),
            _row("op", LogStatus.Failed, 2, 2, 1.0, 10, 20, 30, 40))
    summary = Summary(("status", "op"), None, T0, rows, WIDE_TOTAL, 5, 0)
    _show_summary(summary, "/p", "name", None, False, False)
    assert tty.getvalue() == (
        "STATUS     OP  ENTRIES  FAILED   FAIL%   P50    P95    P99    MAX\n"
        "Completed  op        3       0    0.0%   1µs    2µs    3µs    4µs\n"
        "Failed     op        2       2  100.0%  10µs   20µs   30µs   40µs\n"
        "TOTAL               21       3   14.3%   5µs  2.0ms  3.00s  3.00s\n"
        "21 entries in 2 groups (5 live, 0 archived) until 2023-11-14T22:13:20.000Z in /p\n")


def test_summary_table_op_then_status_narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    _on_tty(monkeypatch)
    monkeypatch.setenv("COLUMNS", "60")
    rows = (_row("a_rather_long_op_name", LogStatus.Completed, 3, 0, 0.0, 1, 2, 3, 4),)
    lines = _table(list(rows), rows[0], ["op", "status"])
    assert lines == [
        "OP        STATUS     ENTRIES  FAILED  FAIL%  P50  P95  P99  MAX",
        "a_rathe…  Completed        3       0   0.0%  1µs  2µs  3µs  4µs",
        "TOTAL                      3       0   0.0%  1µs  2µs  3µs  4µs"]
    monkeypatch.setenv("COLUMNS", "70")  # 70 - 44 (the numbers) - 9 (STATUS) - 4 (two gaps) = 13
    assert _table(list(rows), rows[0], ["op", "status"])[1] == (
        "a_rather_lon…  Completed        3       0   0.0%  1µs  2µs  3µs  4µs")


def test_summary_table_in_colour(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "xterm")
    lines = _table([], WIDE_TOTAL, ["op"])
    assert lines[0] == "\x1b[1mOP        ENTRIES  FAILED  FAIL%  P50    P95    P99    MAX\x1b[0m"
    assert tty.getvalue() == ""


def test_summary_piped(capsys: Cap) -> None:
    _show_summary(BY_OP, "/p\x1b", "entries", 2, False, False)
    out = capsys.readouterr()
    assert out.out == (
        "op\tentries\tstarted\tcompleted\tfailed\tfailure_rate\tdurations\tp50_us\tp95_us\tp99_us\tmax_us\n"
        "kernel_init\t10\t0\t9\t1\t0.1\t10\t500\t2000\t3000000\t3000000\n"
        "x\t7\t0\t7\t0\t0.0\t7\t5\t5\t5\t5\n")
    assert out.err == ("21 entries in 3 groups (15 live, 6 archived) since 2023-11-14T22:13:20.000Z "
                       "in /p\\x1b\n")


def test_summary_piped_leaves_missing_values_empty(capsys: Cap) -> None:
    rows = (_row("started_only", None, 2, 0, None),)
    _show_summary(Summary(("op",), None, None, rows, rows[0], 2, 0), "/p", "name", None, False, False)
    assert capsys.readouterr().out.splitlines()[1] == "started_only\t2\t0\t2\t0\t\t2\t\t\t\t"


def test_summary_table_leaves_missing_values_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    _on_tty(monkeypatch)
    rows = [_row("started_only", None, 2, 0, None)]
    assert _table(rows, rows[0], ["op"])[1:] == ["started_only        2       0",
                                                 "TOTAL               2       0"]


def test_summary_as_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _on_tty(monkeypatch)
    _show_summary(BY_OP, "/p", "rate", None, False, True)
    assert tty.getvalue() == (
        "op,entries,started,completed,failed,failure_rate,durations,p50_us,p95_us,p99_us,max_us\n"
        "op_a_very_long_operation_name_indeed,4,0,2,2,0.5,4,,,,\n"
        "kernel_init,10,0,9,1,0.1,10,500,2000,3000000,3000000\n"
        "x,7,0,7,0,0.0,7,5,5,5,5\n")


def test_summary_as_json(capsys: Cap) -> None:
    _show_summary(BY_OP, "/p", "p50", 1, True, False)
    out = json.loads(capsys.readouterr().out)
    assert out == {"storage": "/p", "by": ["op"], "since": T0, "until": None,
                   "rows": [WIDE[0].to_dict()], "total": WIDE_TOTAL.to_dict(), "live_entries": 15,
                   "archived_entries": 6, "sort": "p50"}


# -- the command -------------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with SovereignJournal(path, flush="interval:1000ms") as journal:
        for i in range(6):
            journal.log_transaction(TransactionLog(T0 + i, "a" if i % 3 else "b", f"r{i}",
                                                   LogStatus.Failed if i == 4 else LogStatus.Completed,
                                                   duration_us=i))
            journal.increment_op_count("a")
    return path


def test_stats_command(store: Path) -> None:
    result = CliRunner().invoke(cli, ["--storage", str(store), "stats"])
    assert (result.exit_code, result.stdout) == (0, "a\t6\n")
    assert result.stderr == f"6 journal entries, 1 counter in {store}\n"
    result = CliRunner().invoke(cli, ["--storage", str(store), "stats", "--status", "failed", "--csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1:] == ["a,1,0,0,1,1.0,1,4,4,4,4"]
    result = CliRunner().invoke(cli, ["--storage", str(store), "stats", "--by", "status", "--json", "--csv"])
    assert result.exit_code == 2 and "--json and --csv do not go together" in result.stderr


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, Path]:
    """300 entries (ops b, a, b, a…; every third Failed), 256 of them archived; counter a at 1."""
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        for i in range(300):
            journal.log_transaction(TransactionLog(T0 + i, "a" if i % 2 else "b", f"r{i}",
                                                   LogStatus.Failed if i % 3 == 0 else LogStatus.Completed,
                                                   duration_us=i))
        journal.increment_op_count("a")
        journal.archive(arch, keep_last=44)
    return store, arch


def _stats_of(store: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--storage", str(store), "stats", *args])
    return result.exit_code, result.stdout, result.stderr


def test_stats_counts_as_json(archived: tuple[Path, Path], tmp_path: Path) -> None:
    store, arch = archived
    code, out, err = _stats_of(store, "--json")
    assert (code, err) == (0, "")
    assert json.loads(out) == {"storage": str(store), "journal_entries": 300,
                               "entries": {"live": 44, "archived": 256, "total": 300}, "archive": str(arch),
                               "op_counts": {"a": 1}}
    code, out, _ = _stats_of(store, "--json", "--live-only")
    assert code == 0 and json.loads(out)["journal_entries"] == 44 and json.loads(out)["archive"] == str(arch)
    moved = tmp_path / "moved"
    arch.rename(moved)
    code, out, _ = _stats_of(store, "--json", "--archive", str(moved))
    assert code == 0 and json.loads(out)["archive"] == str(moved) and "archive_error" not in json.loads(out)


def test_stats_counts_shown_before_the_archives_error(archived: tuple[Path, Path]) -> None:
    store, arch = archived
    arch.rename(arch.parent / "moved")
    code, out, err = _stats_of(store)
    assert (code, out) == (1, "a\t1\n")
    reason = (f"entries 0…255 of the journal at {store} are in its archive at {arch}, which cannot be read: "
              f"there is no archive at {arch}; if the archive moved, record its new place: krepis archive "
              "--set-dir DIR (journal.set_archive_dir(DIR)); --live-only (live_only=True) reads the live "
              "store alone")
    assert err == (f"300 journal entries (44 live, 256 archived in {arch}), 1 counter in {store}\n"
                   f"Error: {reason} (the counts above are the store's own)\n")
    code, out, err = _stats_of(store, "--json")
    assert code == 1 and json.loads(out)["archive_error"] == reason
    assert err == f"Error: {reason} (the counts above are the store's own)\n"
    code, out, err = _stats_of(store, "--live-only")  # the archive is not read
    assert (code, out) == (0, "a\t1\n")
    assert err == f"44 live journal entries (--live-only; 256 archived), 1 counter in {store}\n"


def test_stats_refusals(archived: tuple[Path, Path]) -> None:
    store, arch = archived
    code, _, err = _stats_of(store, "--archive", str(arch), "--live-only")
    assert (code, err) == (2, "Error: --archive and --live-only do not go together (see cli stats --help)\n")
    code, _, err = _stats_of(store, "--since", str(T0), "--until", str(T0))
    assert code == 2 and err.startswith("Error: --since 2023-11-14T22:13:20.000Z is not before --until")
    code, _, err = _stats_of(store, "--json", "--csv")
    assert (code, err) == (2, "Error: --json and --csv do not go together (see cli stats --help)\n")
    code, out, _ = _stats_of(store, "--csv")
    assert (code, out) == (0, "counter,value\na,1\n")


@pytest.mark.parametrize("args", [["--since", str(T0 + 150)], ["--until", str(T0 + 150)], ["--op", "a"],
                                  ["--status", "failed"], ["--by", "op"]])
def test_stats_filters_imply_a_summary_by_op(archived: tuple[Path, Path], args: list[str]) -> None:
    store, _ = archived
    code, out, _ = _stats_of(store, *args, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["by"] == ["op"] and summary["storage"] == str(store) and summary["sort"] == "failed"
    with SovereignJournal(store, create=False) as journal:
        since = int(args[1]) if args[0] == "--since" else None
        until = int(args[1]) if args[0] == "--until" else None
        expected = journal.summary(("op",), since=since, until=until,
                                   op_name=["a"] if args[0] == "--op" else None,
                                   status=["Failed"] if args[0] == "--status" else None)
    assert summary["rows"] == [row.to_dict() for row in _sorted(expected.rows, "failed")]
    assert summary["total"] == expected.total.to_dict()
    assert (summary["live_entries"], summary["archived_entries"]) == (expected.live_entries,
                                                                      expected.archived_entries)


def test_stats_summary_of_the_history_read(archived: tuple[Path, Path], tmp_path: Path) -> None:
    store, arch = archived
    moved = tmp_path / "moved"
    arch.rename(moved)
    code, out, _ = _stats_of(store, "--by", "status", "--live-only", "--json")
    live = json.loads(out)
    assert code == 0 and live["total"]["entries"] == 44 and live["archived_entries"] == 0
    code, out, _ = _stats_of(store, "--by", "status", "--archive", str(moved), "--json", "--sort", "name",
                             "-n", "1")
    summary = json.loads(out)
    assert code == 0 and summary["total"]["entries"] == 300 and summary["archived_entries"] == 256
    assert [row["status"] for row in summary["rows"]] == ["Completed"] and summary["sort"] == "name"
    code, out, err = _stats_of(store, "--by", "op")
    assert code == 1 and out == "" and f"there is no archive at {arch}" in err
    code, out, err = _stats_of(store, "--by", "op", "--live-only")
    assert code == 0 and out.splitlines()[0].startswith("op\tentries\t")
    assert err == f"44 entries in 2 groups (44 live, 0 archived) in {store}\n"


def test_stats_reads_no_policy_of_the_environment(archived: tuple[Path, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A read: KREPIS_FLUSH and KREPIS_RETENTION (here ones that do not parse) are not read."""
    store, _ = archived
    monkeypatch.setenv("KREPIS_FLUSH", "whenever")
    monkeypatch.setenv("KREPIS_RETENTION", "keep-forever-please")
    assert _stats_of(store)[:2] == (0, "a\t1\n")
    assert _stats_of(store, "--by", "op")[0] == 0


def test_stats_of_no_store_creates_none(tmp_path: Path) -> None:
    for args in ([], ["--by", "op"]):
        code, out, err = _stats_of(tmp_path / "none", *args)
        assert (code, out, err) == (1, "", f"Error: there is no krepis store at {tmp_path / 'none'}\n")
    assert not (tmp_path / "none").exists()
