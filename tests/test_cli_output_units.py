"""``krepis.cli._output`` in-process: times and durations at every boundary, the table's columns
at several terminal widths (exact lines: what fits, what ends in ``…``, the year, colours), the
TSV, CSV and JSON lines, the renderers, batching to stdout and stopping when the reader has gone,
and the pager (a real child process standing in for it)."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from krepis import LogStatus, TransactionLog
from krepis.cli import _output
from krepis.cli._common import _PipeGuard
from krepis.cli._output import (
    _CSV_HEADER,
    FORMATS,
    _cells,
    _chain,
    _Columns,
    _crop,
    _csv_field,
    _csv_line,
    _duration,
    _emit_lines,
    _fit,
    _format_option,
    _headed,
    _json_line,
    _json_seq_line,
    _local_second,
    _pager_command,
    _renderer,
    _SecondCache,
    _to_pager,
    _to_stdout,
    _tsv_line,
    _use_color,
    _utc_iso,
    _utc_second,
    _width,
    _with_header,
    _with_seq,
)

UUID = "ab64ab48-1234-4abc-8def-0123456789ab"
LONG = TransactionLog(1764424000250, "op_name_that_is_quite_long_indeed", UUID, LogStatus.Failed, 1500,
                      "boom \x1b error text that is long enough to be cut somewhere")
WIDE = TransactionLog(1764424001001, "日本語", "req-1", LogStatus.Completed)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# -- times and durations -----------------------------------------------------------------------

def test_second_cache_formats_once_per_second() -> None:
    calls: list[int] = []
    cache = _SecondCache(lambda s: calls.append(s) or f"<{s}>")
    assert [cache(ms) for ms in (0, 999, 1000, 1999, 1000, 5)] == ["<0>", "<0>", "<1>", "<1>", "<1>", "<0>"]
    assert calls == [0, 1, 0]


def test_utc_times() -> None:
    assert _utc_second(1764424000) == "2025-11-29T13:46:40."
    assert _utc_second(10**15) == "@1000000000000000."
    assert _utc_iso(1764424000005) == "2025-11-29T13:46:40.005Z"
    assert _utc_iso(1764424000250) == "2025-11-29T13:46:40.250Z"
    assert _utc_iso(0) == "1970-01-01T00:00:00.000Z"


def test_local_times(utc: None) -> None:
    assert _local_second(1764424000, True) == "2025-11-29 13:46:40."
    assert _local_second(1764424000, False) == "11-29 13:46:40."
    assert _local_second(10**20, True) == "@100000000000000000000."


@pytest.mark.parametrize(("us", "text"), [
    (None, ""), (0, "0µs"), (999, "999µs"), (1000, "1.0ms"), (1550, "1.6ms"), (999_999, "1000.0ms"),
    (1_000_000, "1.00s"), (1_234_567, "1.23s"), (99_999_999, "100.00s"), (100_000_000, "100s"),
    (123_999_999, "123s"),
])
def test_durations(us: int | None, text: str) -> None:
    assert _duration(us) == text


# -- fitting text to cells ---------------------------------------------------------------------

def test_fit_and_crop() -> None:
    assert _fit("abc", 0) == "" and _fit("abc", -1) == ""
    assert _fit("abc", 5) == "abc  " and _fit("abc", 3) == "abc" and _fit("abcd", 3) == "ab…"
    assert _fit("日本", 5) == "日本 " and _fit("日本", 4) == "日本" and _fit("日本語", 4) == "日 …"
    assert _fit("é", 1) == "é" and _fit("éé", 1) == "…"
    assert _crop("abc", 3) == "abc" and _crop("abcd", 3) == "ab…" and _crop("ab", 5) == "ab"
    assert _crop("日本", 4) == "日本" and _crop("日本", 3) == "日…" and _crop("é", 1) == "é"
    assert _cells("abc") == 3 and _cells("日本") == 4 and _cells("é") == 1


def test_use_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert _use_color() is False
    monkeypatch.setattr(sys, "stdout", Tty())
    assert _use_color() is True
    monkeypatch.setenv("TERM", "dumb")
    assert _use_color() is False
    monkeypatch.delenv("TERM")
    assert _use_color() is True
    monkeypatch.setenv("NO_COLOR", "")
    assert _use_color() is False


def test_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "123")
    assert _width() == 123
    monkeypatch.setenv("COLUMNS", "40")
    assert _width() == 40
    monkeypatch.setenv("COLUMNS", "39")
    assert _width() == 40
    monkeypatch.setenv("COLUMNS", "0")  # no size known: 80 (and not a terminal here)
    monkeypatch.setattr(sys, "__stdout__", io.StringIO())
    assert _width() == 80


# -- the table -----------------------------------------------------------------------------------

TABLES = {
    40: ((False, 18, 12, 8, 0),
         ["TIME               OP       REQUEST      STATUS       TOOK",
          "11-29 13:46:40.250 op_name… ab64ab48…    Failed      1.5ms",
          "11-29 13:46:41.001 日本語   req-1        Completed"]),
    80: ((False, 18, 12, 16, 12),
         ["TIME               OP               REQUEST      STATUS       TOOK ERROR",
          "11-29 13:46:40.250 op_name_that_is… ab64ab48…    Failed      1.5ms boom \\x1b e…",
          "11-29 13:46:41.001 日本語           req-1        Completed"]),
    99: ((False, 18, 12, 32, 15),
         ["TIME               OP                               REQUEST      STATUS       TOOK ERROR",
          "11-29 13:46:40.250 op_name_that_is_quite_long_inde… ab64ab48…    Failed      1.5ms "
          "boom \\x1b erro…",
          "11-29 13:46:41.001 日本語                           req-1        Completed"]),
    100: ((True, 23, 12, 29, 14),
          ["TIME                    OP                            REQUEST      STATUS       TOOK ERROR",
           "2025-11-29 13:46:40.250 op_name_that_is_quite_long_i… ab64ab48…    Failed      1.5ms "
           "boom \\x1b err…",
           "2025-11-29 13:46:41.001 日本語                        req-1        Completed"]),
    120: ((True, 23, 36, 26, 13),
          ["TIME                    OP                         REQUEST                              STATUS"
           "       TOOK ERROR",
           f"2025-11-29 13:46:40.250 op_name_that_is_quite_lon… {UUID} Failed      1.5ms boom \\x1b er…",
           "2025-11-29 13:46:41.001 日本語                     req-1                               "
           " Completed"]),
    200: ((True, 23, 36, 40, 79),
          ["TIME                    OP                                       REQUEST                      "
           "        STATUS       TOOK ERROR",
           f"2025-11-29 13:46:40.250 op_name_that_is_quite_long_indeed        {UUID} Failed      1.5ms "
           "boom \\x1b error text that is long enough to be cut somewhere",
           "2025-11-29 13:46:41.001 日本語                                   req-1                        "
           "        Completed"]),
}


@pytest.mark.parametrize("width", sorted(TABLES))
def test_table_lines_at_each_width(width: int, utc: None) -> None:
    widths, lines = TABLES[width]
    columns = _Columns(width, False)
    assert (columns.with_year, columns.time_w, columns.rid_w, columns.op_w, columns.error_w) == widths
    assert [columns.header(), columns.line(LONG), columns.line(WIDE)] == lines


def test_table_columns_fit_the_sample(utc: None) -> None:
    columns = _Columns(120, False, [WIDE])
    assert (columns.rid_w, columns.op_w, columns.error_w) == (7, 8, 60)
    assert [columns.header(), columns.line(LONG), columns.line(WIDE)] == [
        "TIME                    OP       REQUEST STATUS       TOOK ERROR",
        "2025-11-29 13:46:40.250 op_name… ab64ab… Failed      1.5ms boom \\x1b error text that is long "
        "enough to be cut somewhere",
        "2025-11-29 13:46:41.001 日本語   req-1   Completed"]
    # a sample needing the whole id and a long op name: as wide as it needs, within the limits
    columns = _Columns(120, False, [LONG])
    assert (columns.rid_w, columns.op_w) == (36, 26)
    sample = TransactionLog(0, "o" * 10, "r" * 20, LogStatus.Started)
    columns = _Columns(80, False, [sample])
    assert (columns.rid_w, columns.op_w, columns.error_w) == (12, 10, 18)  # 20 > 12: the default stays
    columns = _Columns(200, False, [TransactionLog(0, "o" * 12, "r" * 12, LogStatus.Started)])
    assert (columns.rid_w, columns.op_w, columns.error_w) == (12, 12, 131)


def test_table_keeps_the_request_id_before_the_op(utc: None) -> None:
    # 36 + 16 + 12 cells left: the whole UUID; one less: its first group
    assert _Columns(109, False).rid_w == 36
    assert _Columns(108, False).rid_w == 12
    other = TransactionLog(0, "op", "request-id-that-is-long", LogStatus.Started)
    assert _Columns(80, False).line(other) == "01-01 00:00:00.000 op               request-id-… Started"


def test_table_in_colour(utc: None) -> None:
    columns = _Columns(80, True)
    assert columns.header() == click.style(TABLES[80][1][0], bold=True)
    assert columns.line(LONG) == ("11-29 13:46:40.250 op_name_that_is… ab64ab48…    "
                                  + click.style("Failed   ", fg="red") + "   1.5ms boom \\x1b e…")
    for status, colour in (("Started", "yellow"), ("Completed", "green")):
        entry = TransactionLog(0, "op", "r", LogStatus(status))
        assert click.style(status.ljust(9), fg=colour) in columns.line(entry)


def test_table_error_column_too_narrow_for_its_title(utc: None) -> None:
    columns = _Columns(64, False)
    assert columns.error_w == 4
    assert columns.header().endswith("TOOK")
    assert columns.line(LONG).endswith("1.5ms boo…")
    columns = _Columns(65, False)
    assert columns.error_w == 5 and columns.header().endswith("TOOK ERROR")
    assert _Columns(60, False).error_w == 0 and _Columns(60, False).line(LONG).endswith("1.5ms")


# -- TSV, CSV, JSON ------------------------------------------------------------------------------

def test_tsv_line() -> None:
    assert _tsv_line(LONG) == (f"2025-11-29T13:46:40.250Z\top_name_that_is_quite_long_indeed\t{UUID}\t"
                               "Failed\t1500\tboom \\x1b error text that is long enough to be cut somewhere")
    assert _tsv_line(TransactionLog(1, "a\tb", "r\\", LogStatus.Started)) == (
        "1970-01-01T00:00:00.001Z\ta\\tb\tr\\\\\tStarted\t\t")
    assert _tsv_line(TransactionLog(1, "a", "r", LogStatus.Failed, 0, "e")) == (
        "1970-01-01T00:00:00.001Z\ta\tr\tFailed\t0\te")


def test_csv() -> None:
    assert _CSV_HEADER == "seq,time,op_name,request_id,status,duration_us,error"
    assert _csv_field("plain") == "plain"
    assert _csv_field('say "hi"') == '"say ""hi"""'
    assert _csv_field("a,b") == '"a,b"'
    assert _csv_field("a\nb\\") == "a\\nb\\\\"
    entry = TransactionLog(7, "op,x", 'r"', LogStatus.Failed, 12, "e\n", seq=41)
    assert _csv_line(entry) == '41,1970-01-01T00:00:00.007Z,"op,x","r""",Failed,12,e\\n'
    assert _csv_line(TransactionLog(7, "op", "r", LogStatus.Started)) == (
        ",1970-01-01T00:00:00.007Z,op,r,Started,,")
    assert _csv_line(TransactionLog(7, "op", "r", LogStatus.Started, seq=0)).startswith("0,")


def test_json_lines() -> None:
    entry = TransactionLog(7, "op\u202e", "r", LogStatus.Completed, 3, seq=41)
    assert _with_seq(entry) == ('{"seq":41,"timestamp":7,"op_name":"op\u202e","request_id":"r",'
                                '"status":"Completed","duration_us":3}')
    assert _json_seq_line(entry) == _with_seq(entry).replace("\u202e", "\\u202e")
    assert _json_line(entry) == entry.to_json().replace("\u202e", "\\u202e")
    plain = TransactionLog(7, "op", "r", LogStatus.Completed, seq=None)
    assert _with_seq(plain) == plain.to_json()
    first = TransactionLog(7, "op", "r", LogStatus.Completed, seq=0)
    assert _with_seq(first).startswith('{"seq":0,"timestamp":7,')


def test_renderers(monkeypatch: pytest.MonkeyPatch, utc: None) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    header, line = _renderer("TABLE", color=False)
    assert header == TABLES[80][1][0] and line(LONG) == TABLES[80][1][1]
    header, line = _renderer("table", color=True, sample=[WIDE])
    assert header == click.style("TIME               OP       REQUEST STATUS       TOOK ERROR", bold=True)
    assert _renderer("csv", color=False) == (_CSV_HEADER, _csv_line)
    assert _renderer("CSV", color=False) == (_CSV_HEADER, _csv_line)
    assert _renderer("jsonl", color=False) == (None, _json_seq_line)
    assert _renderer("json", color=False) == (None, _json_seq_line)
    assert _renderer("tsv", color=False) == (None, _tsv_line)
    assert FORMATS == ("table", "tsv", "jsonl", "json", "csv")


def test_format_option() -> None:
    @click.command()
    @_format_option("--format", "-o", help="How to print.")
    def show(fmt: str | None) -> None:
        click.echo(repr(fmt))

    runner = CliRunner()
    assert runner.invoke(show, []).stdout == "None\n"
    assert runner.invoke(show, ["-o", "CSV"]).stdout == "'csv'\n"
    assert runner.invoke(show, ["--format", "jsonl"]).stdout == "'jsonl'\n"
    assert runner.invoke(show, ["--format", "xml"]).exit_code == 2
    option = show.params[0]
    assert isinstance(option, click.Option) and option.metavar == "table|tsv|jsonl|csv"
    assert option.help == "How to print." and option.name == "fmt" and option.opts == ["--format", "-o"]


def test_headed_chain_and_with_header() -> None:
    assert list(_headed("H", iter(["a", "b"]))) == ["H", "a", "b"]
    assert list(_headed(None, iter(["a"]))) == ["a"]
    assert list(_chain(["a"], iter(["b", "c"]))) == ["a", "b", "c"]
    assert list(_with_header("H", iter([]))) == ["-- no entries --"]
    assert list(_with_header("H", iter(["a", "b"]))) == ["H", "a", "b"]
    assert list(_with_header("H", iter([""]))) == ["H", ""]


# -- writing -------------------------------------------------------------------------------------

class Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


def test_to_stdout_writes_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    _to_stdout(str(i) for i in range(1025))
    assert [w.count("\n") for w in out.writes] == [512, 512, 1]
    assert out.getvalue() == "".join(f"{i}\n" for i in range(1025)) and out.flushes == 1
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    _to_stdout(str(i) for i in range(512))
    assert [w.count("\n") for w in out.writes] == [512] and out.flushes == 1
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    _to_stdout([])
    assert out.writes == [] and out.flushes == 1


def test_to_stdout_stops_when_the_reader_has_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    os.close(read)
    inner = io.TextIOWrapper(os.fdopen(write, "wb", buffering=0), encoding="utf-8", write_through=True)
    guard = _PipeGuard(inner)
    monkeypatch.setattr(sys, "stdout", guard)
    pulled: list[int] = []

    def lines() -> Iterator[str]:
        for i in range(5000):
            pulled.append(i)
            yield str(i)

    _to_stdout(lines())
    assert guard.gone is True and len(pulled) == 512  # stopped after the first batch
    monkeypatch.undo()
    inner.close()


def _pager_script(tmp_path: Path, body: str = "") -> list[str]:
    script = tmp_path / "pager.py"
    script.write_text("import os, sys\n"
                      f"out = open({str(tmp_path / 'paged')!r}, 'w')\n"
                      "out.write(os.environ.get('LESS', '-') + '|')\n" + body +
                      "out.write(sys.stdin.read())\n")
    return [sys.executable, str(script)]


def test_pager_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREPIS_PAGER", raising=False)
    monkeypatch.delenv("PAGER", raising=False)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))
    assert _pager_command() is None  # less is not on this PATH
    monkeypatch.setenv("PAGER", f"  {os.path.basename(sys.executable)} -u  ")
    assert _pager_command() == [os.path.basename(sys.executable), "-u"]
    monkeypatch.setenv("KREPIS_PAGER", "nonexistent-pager")
    assert _pager_command() is None
    for raw in ("", "   ", "cat", "'unclosed"):
        monkeypatch.setenv("KREPIS_PAGER", raw)
        assert _pager_command() is None
    monkeypatch.setenv("KREPIS_PAGER", f"{sys.executable} -c 'pass'")
    assert _pager_command() == [sys.executable, "-c", "pass"]


def test_to_pager_feeds_the_pager_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LESS", raising=False)
    _to_pager(_pager_script(tmp_path), (f"é{i}" for i in range(1030)))
    assert (tmp_path / "paged").read_text() == "FRSX|" + "".join(f"é{i}\n" for i in range(1030))
    monkeypatch.setenv("LESS", "R")
    _to_pager(_pager_script(tmp_path), iter(["x"] * 512))
    assert (tmp_path / "paged").read_text() == "R|" + "x\n" * 512
    _to_pager(_pager_script(tmp_path), iter([]))
    assert (tmp_path / "paged").read_text() == "R|"


def test_to_pager_quit_early_or_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _to_pager([sys.executable, "-c", "import sys; sys.stdin.close()"], ("x" * 1000 for _ in range(20000)))
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    _to_pager([str(tmp_path / "no-such-pager")], iter(["a", "b"]))
    assert out.getvalue() == "a\nb\n"


def test_emit_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setenv("LINES", "5")
    monkeypatch.setenv("KREPIS_PAGER", " ".join(_pager_script(tmp_path)))
    monkeypatch.setenv("LESS", "L")
    _emit_lines(iter(["a"] * 10), pager=False)
    assert out.getvalue() == "a\n" * 10
    out.truncate(0)
    out.seek(0)
    _emit_lines(iter(["b"] * 4), pager=True)  # shorter than the screen: no pager
    assert out.getvalue() == "b\n" * 4 and not (tmp_path / "paged").exists()
    out.truncate(0)
    out.seek(0)
    _emit_lines(iter([str(i) for i in range(5)]), pager=True)  # a screenful: paged
    assert out.getvalue() == ""
    assert (tmp_path / "paged").read_text() == "L|" + "".join(f"{i}\n" for i in range(5))
    monkeypatch.setenv("KREPIS_PAGER", "cat")
    _emit_lines(iter([str(i) for i in range(7)]), pager=True)  # no pager: all to stdout
    assert out.getvalue() == "".join(f"{i}\n" for i in range(7))


def test_module_constants() -> None:
    assert _output._BATCH == 512


# -- from the mutation run of cli/_output ------------------------------------------------------

def test_utc_times_do_not_depend_on_the_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert _utc_second(1764424000) == "2025-11-29T13:46:40."
        assert _local_second(1764424000, True) == "2025-11-29 22:46:40."
    finally:
        monkeypatch.undo()
        time.tzset()


def test_seconds_round_at_the_hundredth() -> None:
    assert _duration(1_995_001) == "2.00s"
    assert _duration(1_994_999) == "1.99s"


def test_the_default_pager_is_less(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    less = tmp_path / "less"
    less.write_text("#!/bin/sh\ncat >/dev/null\n")
    less.chmod(0o755)
    monkeypatch.delenv("KREPIS_PAGER", raising=False)
    monkeypatch.delenv("PAGER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _pager_command() == ["less"]


def test_the_pager_gets_utf8_whatever_the_locale(tmp_path: Path) -> None:
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII locale: the pager still gets UTF-8
    try:
        _to_pager(_pager_script(tmp_path), iter(["é ✓", "bad \ud800 surrogate"]))
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert (tmp_path / "paged").read_bytes().endswith("é ✓\nbad ? surrogate\n".encode())


def test_an_error_while_paging_is_raised_after_the_pager_ends(tmp_path: Path) -> None:
    def lines() -> Iterator[str]:
        yield "first"
        raise ValueError("the journal went away")

    with pytest.raises(ValueError, match="the journal went away"):
        _to_pager(_pager_script(tmp_path), lines())
    assert (tmp_path / "paged").read_text().endswith("|")  # the pager ended (its input closed)


def test_ctrl_c_while_the_pager_runs_keeps_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    real_wait = subprocess.Popen.wait
    calls: list[int] = []

    def wait(self: subprocess.Popen[str], timeout: float | None = None) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C reaches krepis too: it belongs to the pager
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    _to_pager(_pager_script(tmp_path), iter(["x"]))
    assert len(calls) == 2
    assert (tmp_path / "paged").read_text().endswith("x\n")


def test_the_screen_is_24_lines_when_none_is_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = Recording()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "__stdout__", io.StringIO())  # not a terminal: the fallback size
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("KREPIS_PAGER", " ".join(_pager_script(tmp_path)))
    _emit_lines(iter(["a"] * 23), pager=True)
    assert out.getvalue() == "a\n" * 23 and not (tmp_path / "paged").exists()
    _emit_lines(iter(["b"] * 24), pager=True)
    assert (tmp_path / "paged").read_text().endswith("|" + "b\n" * 24)
