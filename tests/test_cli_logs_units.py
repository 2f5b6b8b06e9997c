"""``krepis.cli._logs``'s helpers in-process, on real stores: ``logs --follow`` (the last entries
first, then every entry appended afterwards exactly once, in append order, filtered; a clear
said once; Ctrl-C ending it quietly) with the waits between polls scripted by the test — what
other writers do meanwhile happens inside them —, the export's progress reports and its writes
in batches of 512 lines, and ``export -o FILE`` / ``--count`` through click's runner."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import _logs, cli
from krepis.cli._logs import _counted, _follow, _write_entries
from krepis.cli._select import _Selection

from conftest import script_sleeps

T0 = 1_700_000_000_000
Cap = pytest.CaptureFixture[str]


def _entry(i: int, op: str = "op", rid: str | None = None) -> TransactionLog:
    return TransactionLog(T0 + i, op, rid or f"r-{i}", LogStatus.Completed, duration_us=i)


def _render(entry: TransactionLog) -> str:
    return f"{entry.seq}:{entry.op_name}:{entry.request_id}"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "s", flush="interval:1000ms", retention="off") as j:
        yield j



def _script(monkeypatch: pytest.MonkeyPatch, *steps: Callable[[], None]) -> list[float]:
    return script_sleeps(monkeypatch, _logs, *steps)


def _append(journal: SovereignJournal, *entries: TransactionLog) -> Callable[[], None]:
    def step() -> None:
        for entry in entries:
            journal.log_transaction(entry)
        journal.flush()
    return step


def _nothing() -> None:
    pass


def test_follow_shows_the_last_entries_then_each_new_one_once(
        journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch, capsys: Cap) -> None:
    _append(journal, *(_entry(i) for i in range(5)))()
    waits = _script(monkeypatch, _nothing, _append(journal, _entry(1, rid="late-a"), _entry(9, rid="late-b")),
                    _nothing, _append(journal, _entry(3, rid="late-c")))
    _follow(journal, _Selection(), 2, _render)  # returns quietly at Ctrl-C
    out = capsys.readouterr()
    # the two newest first (oldest first), then the new ones in the order they were appended,
    # whatever their timestamps
    assert out.out == "3:op:r-3\n4:op:r-4\n5:op:late-a\n6:op:late-b\n7:op:late-c\n"
    assert out.err == ""
    assert waits == [0.25] * 5


def test_follow_from_a_single_entry(journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                    capsys: Cap) -> None:
    _append(journal, _entry(0))()
    _script(monkeypatch, _append(journal, _entry(1)))
    _follow(journal, _Selection(), 20, _render)
    assert capsys.readouterr().out == "0:op:r-0\n1:op:r-1\n"


def test_follow_from_an_empty_journal(journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                      capsys: Cap) -> None:
    _script(monkeypatch, _nothing, _append(journal, _entry(0)), _append(journal, _entry(1)))
    _follow(journal, _Selection(), None, _render)
    assert capsys.readouterr().out == "0:op:r-0\n1:op:r-1\n"


def test_follow_filters_the_new_entries_too(journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                            capsys: Cap) -> None:
    _append(journal, _entry(0, "a"), _entry(1, "b"), _entry(2, "a"))()
    _script(monkeypatch, _append(journal, _entry(3, "b"), _entry(4, "a")), _append(journal, _entry(5, "b")))
    _follow(journal, _Selection(ops=("a",)), 1, _render)
    assert capsys.readouterr().out == "2:a:r-2\n4:a:r-4\n"


def test_follow_says_a_clear_once_and_goes_on(journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                              capsys: Cap) -> None:
    _append(journal, _entry(0), _entry(1))()
    _script(monkeypatch, journal.clear_all, _nothing, _append(journal, _entry(7)), _nothing)
    _follow(journal, _Selection(ops=("op",)), 20, _render)
    out = capsys.readouterr()
    assert out.err == "(the journal was cleared)\n"
    assert out.out == "0:op:r-0\n1:op:r-1\n3:op:r-7\n"  # (seq 2: the clear's own trace, another op)


def test_follow_shows_the_trace_of_a_clear_when_it_matches(
        journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch, capsys: Cap) -> None:
    _append(journal, _entry(0))()
    _script(monkeypatch, journal.clear_all)
    _follow(journal, _Selection(), 20, _render)
    out = capsys.readouterr()
    [first, trace] = out.out.splitlines()
    assert first == "0:op:r-0" and trace.startswith("1:")
    assert out.err == "(the journal was cleared)\n"


def test_follow_stops_when_the_reader_has_gone(journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch,
                                               capsys: Cap) -> None:
    _append(journal, _entry(0))()
    gone = iter([False, False, True])
    monkeypatch.setattr(_logs, "_reader_gone", lambda: next(gone))
    waits = _script(monkeypatch, _append(journal, _entry(1)), _append(journal, _entry(2)))
    _follow(journal, _Selection(), 20, _render)
    assert capsys.readouterr().out == "0:op:r-0\n1:op:r-1\n2:op:r-2\n"
    assert waits == [0.25, 0.25]


def test_follow_reads_the_archive_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: Cap) -> None:
    """The last entries are read from the archive given (the one the store records moved away)."""
    store, arch, moved = tmp_path / "s", tmp_path / "arch", tmp_path / "moved"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        _append(journal, *(_entry(i) for i in range(300)))()
        journal.archive(arch, keep_last=2)
    arch.rename(moved)
    with SovereignJournal(store, create=False, flush="interval:1000ms", retention="off") as journal:
        _script(monkeypatch, _append(journal, _entry(300)))
        _follow(journal, _Selection(archive=str(moved)), 50, _render)
    assert capsys.readouterr().out.splitlines() == [f"{i}:op:r-{i}" for i in range(250, 301)]


def test_follow_live_only_never_reads_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: Cap) -> None:
    """--live-only with the recorded archive moved away: the new entries are read live only too."""
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        _append(journal, *(_entry(i) for i in range(300)))()
        journal.archive(arch, keep_last=2)
    arch.rename(tmp_path / "moved")
    with SovereignJournal(store, create=False, flush="interval:1000ms", retention="off") as journal:
        _script(monkeypatch, _append(journal, _entry(300)))
        _follow(journal, _Selection(live_only=True), 1, _render)
    assert capsys.readouterr().out == "299:op:r-299\n300:op:r-300\n"


class _WrittenAtTheStart:
    """The real journal, with one entry appended by another writer just after ``_follow`` took
    its starting point (its first look at the tree head)."""

    def __init__(self, journal: SovereignJournal) -> None:
        self._journal, self._heads = journal, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._journal, name)

    def tree_head(self) -> object:
        self._heads += 1
        if self._heads == 1:
            _append(self._journal, _entry(1, rid="meanwhile"))()
        return self._journal.tree_head()


def test_follow_shows_an_entry_written_at_the_start_once(
        journal: SovereignJournal, monkeypatch: pytest.MonkeyPatch, capsys: Cap) -> None:
    _append(journal, _entry(0))()
    _script(monkeypatch, _nothing)
    _follow(_WrittenAtTheStart(journal), _Selection(), 20, _render)  # type: ignore[arg-type]
    assert capsys.readouterr().out == "0:op:r-0\n1:op:meanwhile\n"


def test_counted_reports_every_4096_entries_and_the_end() -> None:
    entries = [_entry(i) for i in range(8200)]
    calls: list[tuple[int, int | None]] = []
    passed = list(_counted(iter(entries), lambda done, total: calls.append((done, total)), 9000))  # type: ignore[arg-type]
    assert passed == entries
    assert calls == [(4096, 9000), (8192, 9000), (8200, 8200)]
    calls.clear()
    assert list(_counted(iter(()), lambda done, total: calls.append((done, total)), None)) == []  # type: ignore[arg-type]
    assert calls == [(0, 0)]


class _Writes(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_write_entries_in_batches_of_512_lines() -> None:
    out = _Writes()
    count = _write_entries(out, (_entry(i) for i in range(1025)), lambda e: str(e.duration_us))
    assert count == 1025
    assert [w.count("\n") for w in out.writes] == [512, 512, 1]
    assert out.getvalue() == "".join(f"{i}\n" for i in range(1025))
    out = _Writes()
    assert _write_entries(out, (_entry(i) for i in range(512)), lambda e: str(e.duration_us)) == 512
    assert [w.count("\n") for w in out.writes] == [512]
    out = _Writes()
    assert _write_entries(out, iter(()), str) == 0 and out.writes == []


# -- the commands, in process -------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with SovereignJournal(path, flush="interval:1000ms") as journal:
        for i in range(5):
            journal.log_transaction(_entry(i, "a" if i % 2 else "b"))
    return path


def test_export_to_a_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(cli, ["--storage", str(store), "export", "--op", "a", "--format", "csv",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == f"exported 2 entries to {out}\n"
    lines = out.read_text().splitlines()
    assert lines[0] == "seq,time,op_name,request_id,status,duration_us,error"
    assert [line.split(",")[:3] for line in lines[1:]] == [["1", "2023-11-14T22:13:20.001Z", "a"],
                                                          ["3", "2023-11-14T22:13:20.003Z", "a"]]
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["--storage", str(store), "export", "-o", str(out)])
    assert result.exit_code == 0 and result.stderr == f"exported 5 entries to {out}\n"
    assert [json.loads(line)["seq"] for line in out.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_count_and_a_missed_request(store: Path) -> None:
    result = CliRunner().invoke(cli, ["--storage", str(store), "logs", "--count", "--grep", "^a$"])
    assert (result.exit_code, result.stdout) == (0, "2\n")
    result = CliRunner().invoke(cli, ["--storage", str(store), "logs", "--request-id", "zz", "--json",
                                      "--count"])
    assert (result.exit_code, result.stdout) == (0, '{"count": 0}\n')
    assert result.stderr == "krepis: no request id is or begins with 'zz'\n"


# -- the commands' bodies, in process -----------------------------------------------------------

class _TtyStream:
    """A stream that says it is a terminal (the rest is the stream's)."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


class _TtySys:
    """``sys`` as ``_logs`` sees it, with stdout (and stdin) on a terminal."""

    def __init__(self, stdin: bool = False) -> None:
        self._stdin = stdin

    @property
    def stdout(self) -> object:
        return _TtyStream(sys.stdout)

    @property
    def stdin(self) -> object:
        return _TtyStream(sys.stdin) if self._stdin else sys.stdin

    def __getattr__(self, name: str) -> object:
        return getattr(sys, name)


def _run(store: Path, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(store), *args], input=stdin)


def _rids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [line.split("\t")[2] for line in result.stdout.splitlines()]


def test_logs_newest_first_limited(store: Path) -> None:
    assert _rids(_run(store, "logs")) == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    assert _rids(_run(store, "logs", "-n", "2")) == ["r-4", "r-3"]
    assert _rids(_run(store, "logs", "-n", "2", "--all")) == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    assert _rids(_run(store, "logs", "-n", "2", "--reverse")) == ["r-3", "r-4"]
    assert _rids(_run(store, "logs", "--op", "a", "--grep", "r-[13]", "-i")) == ["r-3", "r-1"]
    assert _run(store, "logs", "-n", "1").stdout == "2023-11-14T22:13:20.004Z\tb\tr-4\tCompleted\t4\t\n"


def test_logs_refusals(store: Path) -> None:
    for args, message in (
            (["--count", "-f"], "--count and --follow do not go together"),
            (["--since", str(T0 + 1), "--until", str(T0)],
             "--since 2023-11-14T22:13:20.001Z is not before --until 2023-11-14T22:13:20.000Z: no entry can "
             "match (--since is inclusive, --until exclusive)"),
            (["-i"], "--ignore-case goes with --grep"),
            (["--archive", "x", "--live-only"], "--archive and --live-only do not go together"),
            (["--json", "-o", "csv"], "--json is --format jsonl: it does not go with --format csv")):
        result = _run(store, "logs", *args)
        assert (result.exit_code, result.stdout) == (2, ""), args
        assert result.stderr == f"Error: {message} (see cli logs --help)\n"


def test_logs_formats(store: Path) -> None:
    jsonl = _run(store, "logs", "-n", "1", "--json", "--format", "JSONL")
    assert jsonl.stdout == ('{"seq":4,"timestamp":1700000000004,"op_name":"b","request_id":"r-4",'
                            '"status":"Completed","duration_us":4}\n')
    assert _run(store, "logs", "-n", "1", "--json", "-o", "json").stdout == jsonl.stdout
    assert _run(store, "logs", "-n", "1", "-o", "Json").stdout == jsonl.stdout
    assert _run(store, "logs", "-n", "1", "-o", "CSV").stdout == (
        "seq,time,op_name,request_id,status,duration_us,error\n4,2023-11-14T22:13:20.004Z,b,r-4,Completed,4,\n")
    assert _run(store, "logs", "-n", "1", "-o", "tsv").stdout == _run(store, "logs", "-n", "1").stdout


def test_logs_count(store: Path) -> None:
    assert _run(store, "logs", "--count").stdout == "5\n"
    assert _run(store, "logs", "--count", "-n", "1").stdout == "5\n"
    assert _run(store, "logs", "--count", "--json").stdout == '{"count": 5}\n'
    assert _run(store, "logs", "--count", "-o", "jsonl").stdout == '{"count": 5}\n'
    assert _run(store, "logs", "--count", "-o", "json").stdout == '{"count": 5}\n'
    assert _run(store, "logs", "--count", "--op", "a").stdout == "2\n"
    assert _run(store, "logs", "--count", "--request-id", "r-1", "--request-id", "r-2").stdout == "2\n"


def test_logs_count_of_an_archived_history(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        _append(journal, *(_entry(i, "a" if i % 2 else "b") for i in range(300)))()
        journal.archive(arch, keep_last=44)
    assert _run(store, "logs", "--count").stdout == "300\n"
    assert _run(store, "logs", "--count", "--live-only").stdout == "44\n"
    assert _run(store, "logs", "--count", "--live-only", "--op", "a").stdout == "22\n"
    arch.rename(tmp_path / "moved")
    for args in (["--count"], ["--count", "--op", "a"]):
        result = _run(store, "logs", *args)
        assert result.exit_code == 1 and f"there is no archive at {arch};" in result.stderr, args
    assert _run(store, "logs", "--count", "--live-only").stdout == "44\n"
    assert _run(store, "logs", "--count", "--archive", str(tmp_path / "moved")).stdout == "300\n"


def test_logs_of_a_request_not_there(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    miss = "krepis: no request id is or begins with 'zz'\n"
    for args, out in ((["--count"], "0\n"), (["--count", "--json"], '{"count": 0}\n'), ([], ""),
                      (["-o", "csv"], "seq,time,op_name,request_id,status,duration_us,error\n"),
                      (["--json"], ""), (["-o", "table"], "-- no entries --\n")):
        result = _run(store, "logs", "--request-id", "zz", *args)
        assert (result.exit_code, result.stdout, result.stderr) == (0, out, miss), args
    monkeypatch.setattr(_logs, "sys", _TtySys())
    result = _run(store, "logs", "--request-id", "zz")
    assert (result.stdout, result.stderr) == ("-- no entries --\n", miss)


def test_logs_follow(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SovereignJournal(store, create=False, flush="interval:1000ms") as journal:
        _script(monkeypatch, _append(journal, _entry(9, "a", "zz-9")))
        result = _run(store, "logs", "-f", "-n", "1", "-o", "csv", "--op", "a")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout == ("seq,time,op_name,request_id,status,duration_us,error\n"
                             "3,2023-11-14T22:13:20.003Z,a,r-3,Completed,3,\n"
                             "5,2023-11-14T22:13:20.009Z,a,zz-9,Completed,9,\n")
    with SovereignJournal(store, create=False, flush="interval:1000ms") as journal:
        _script(monkeypatch, _append(journal, _entry(10, "a", "zz-10")))
        result = _run(store, "logs", "-f", "--request-id", "zz-1*")  # a request that may come
    assert (result.exit_code, result.stderr) == (0, "")
    assert [line.split("\t")[2] for line in result.stdout.splitlines()] == ["zz-10"]
    with SovereignJournal(store, create=False, flush="interval:1000ms") as journal:
        _script(monkeypatch)
        result = _run(store, "logs", "-f", "-n", "1")
    assert result.stdout == "2023-11-14T22:13:20.010Z\ta\tzz-10\tCompleted\t10\t\n"


def test_logs_table_on_a_terminal(store: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_logs, "sys", _TtySys())
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "4")
    paged = tmp_path / "paged"
    monkeypatch.setenv("KREPIS_PAGER", f"sh -c 'cat > {paged}'")
    result = _run(store, "logs", "--no-pager")
    lines = result.stdout.splitlines()
    assert len(lines) == 6 and lines[0].split() == ["TIME", "OP", "REQUEST", "STATUS", "TOOK", "ERROR"]
    assert [line.split()[3] for line in lines[1:]] == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    assert not paged.exists()
    result = _run(store, "logs")  # longer than the 4-line screen: through the pager
    assert result.stdout == "" and paged.read_text().splitlines() == lines
    paged.unlink()
    assert _run(store, "logs", "-n", "2").stdout.count("\n") == 3 and not paged.exists()  # it fits


def test_logs_table_fitted_to_the_first_100_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        _append(journal, _entry(0, "a_rather_long_op_name"), *(_entry(i, "a") for i in range(1, 101)))()
    monkeypatch.setattr(_logs, "sys", _TtySys())
    monkeypatch.setenv("COLUMNS", "200")
    result = _run(store, "logs", "--all", "--no-pager")
    assert result.exit_code == 0, result.output
    last = result.stdout.splitlines()[-1]
    assert "a_rather_long_op_name" not in last and "…" in last  # the 101st entry: cut to the column
    result = _run(store, "logs", "-n", "100", "--reverse", "--no-pager")
    assert "a_rather_long_op_name" not in result.stdout
    result = _run(store, "logs", "--all", "--reverse", "--no-pager")
    assert "a_rather_long_op_name" in result.stdout.splitlines()[1]


def test_export_to_stdout(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ('{"seq":0,"timestamp":1700000000000,"op_name":"b","request_id":"r-0","status":"Completed",'
             '"duration_us":0}')
    result = _run(store, "export")
    assert (result.exit_code, result.stderr) == (0, "")
    assert result.stdout.splitlines()[0] == first and len(result.stdout.splitlines()) == 5
    assert _run(store, "export", "--format", "JSON").stdout == result.stdout
    assert _run(store, "export", "--format", "CSV", "--op", "a").stdout == (
        "seq,time,op_name,request_id,status,duration_us,error\n1,2023-11-14T22:13:20.001Z,a,r-1,Completed,1,\n"
        "3,2023-11-14T22:13:20.003Z,a,r-3,Completed,3,\n")
    assert _run(store, "export", "--format", "tsv", "--request-id", "r-1").stdout == (
        "2023-11-14T22:13:20.001Z\ta\tr-1\tCompleted\t1\t\n")
    result = _run(store, "export", "--request-id", "zz", "--format", "csv")
    assert (result.stdout, result.stderr) == ("seq,time,op_name,request_id,status,duration_us,error\n",
                                              "krepis: no request id is or begins with 'zz'\n")
    assert _run(store, "export", "--grep", "R-4", "-i").stdout.splitlines()[0].startswith('{"seq":4,')
    refusals = ((["--since", str(T0), "--until", str(T0)],
                 "--since 2023-11-14T22:13:20.000Z is not before --until 2023-11-14T22:13:20.000Z"),
                (["-i"], "--ignore-case goes with --grep"),
                (["--archive", "x", "--live-only"], "--archive and --live-only do not go together"))
    for args, message in refusals:
        result = _run(store, "export", *args)
        assert result.exit_code == 2 and result.stderr.startswith(f"Error: {message}"), args


def test_export_to_a_terminal_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        journal.log_transaction(_entry(0, "op\x1b[2J"))
    out = tmp_path / "out.jsonl"
    monkeypatch.setattr(_logs, "sys", _TtySys())
    shown = _run(store, "export").stdout
    assert "\\u001b" in shown and "\x1b" not in shown  # JSON's escape, made inert for the terminal
    assert _run(store, "export", "-o", str(out)).exit_code == 0
    assert out.read_text() == ('{"seq":0,"timestamp":1700000000000,"op_name":"op\\u001b[2J",'
                               '"request_id":"r-0","status":"Completed","duration_us":0}\n')  # stored form
    monkeypatch.setattr(_logs, "sys", sys)
    assert _run(store, "export").stdout == out.read_text()


def test_export_formats_to_a_file(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.tsv"
    result = _run(store, "export", "--format", "TSV", "-o", str(out), "--live-only")
    assert (result.exit_code, result.stdout) == (0, "")
    assert result.stderr == f"exported 5 entries to {out}\n"
    assert out.read_text().splitlines()[0] == "2023-11-14T22:13:20.000Z\tb\tr-0\tCompleted\t0\t"
    result = _run(store, "export", "--request-id", "zz", "-o", str(out))
    assert result.stderr == (f"krepis: no request id is or begins with 'zz'\nexported 0 entries to {out}\n")
    assert out.read_text() == ""


def test_export_of_an_archived_history(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        _append(journal, *(_entry(i) for i in range(300)))()
        journal.archive(arch, keep_last=44)
    assert _run(store, "export").stdout.count("\n") == 300
    assert _run(store, "export", "--live-only").stdout.splitlines()[0].startswith('{"seq":256,')
    moved = tmp_path / "moved"
    arch.rename(moved)
    assert _run(store, "export").exit_code == 1
    assert _run(store, "export", "--archive", str(moved)).stdout.count("\n") == 300


def test_clear(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(store, "clear")
    assert (result.exit_code, result.stderr) == (2, "Error: refusing to clear the journal without --yes "
                                                    "(see cli clear --help)\n")
    monkeypatch.setattr(_logs, "sys", _TtySys(stdin=True))
    result = _run(store, "clear", stdin="n\n")
    assert result.exit_code == 1
    assert result.stdout == f"Delete every entry and counter in {store}? [y/N]: n\n"
    assert result.stderr == "Aborted!\n"
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == 5
    result = _run(store, "clear", stdin="y\n")
    assert result.exit_code == 0
    assert result.stdout == (f"Delete every entry and counter in {store}? [y/N]: y\n"
                             f"cleared 5 entries and all counters in {store}\n")
    monkeypatch.setattr(_logs, "sys", sys)
    result = _run(store, "clear", "--yes")
    assert result.stdout == f"cleared 1 entries and all counters in {store}\n"  # (the first clear's trace)
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == 1


@pytest.mark.parametrize("command", [["logs"], ["logs", "--count"], ["export"], ["clear", "--yes"]])
def test_reads_no_policy_of_the_environment(store: Path, monkeypatch: pytest.MonkeyPatch,
                                            command: list[str]) -> None:
    """KREPIS_FLUSH and KREPIS_RETENTION (here ones that do not parse) are not read."""
    monkeypatch.setenv("KREPIS_FLUSH", "whenever")
    monkeypatch.setenv("KREPIS_RETENTION", "keep-forever-please")
    result = _run(store, *command)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", [["logs"], ["logs", "--count"], ["export"], ["clear", "--yes"]])
def test_no_store_is_created(tmp_path: Path, command: list[str]) -> None:
    result = _run(tmp_path / "none", *command)
    assert (result.exit_code, result.stdout) == (1, "")
    assert result.stderr == f"Error: there is no krepis store at {tmp_path / 'none'}\n"
    assert not (tmp_path / "none").exists()


def test_logs_and_export_filter_by_time_and_grep(store: Path) -> None:
    assert _rids(_run(store, "logs", "--since", str(T0 + 3))) == ["r-4", "r-3"]
    assert _rids(_run(store, "logs", "--until", str(T0 + 1))) == ["r-0"]
    assert _rids(_run(store, "logs", "--grep", "R-[13]", "-i")) == ["r-3", "r-1"]
    assert _rids(_run(store, "logs", "--status", "completed", "--request-id", "r-2")) == ["r-2"]
    assert _rids(_run(store, "export", "-o", "-", "--format", "tsv", "--since", str(T0 + 3))) == ["r-3",
                                                                                                  "r-4"]
    assert _rids(_run(store, "export", "--format", "tsv", "--until", str(T0 + 1))) == ["r-0"]
    assert _rids(_run(store, "export", "--format", "tsv", "--grep", "r-[13]")) == ["r-1", "r-3"]
    assert _rids(_run(store, "export", "--format", "tsv", "--status", "Completed", "--op", "a",
                      "--request-id", "r-3")) == ["r-3"]


def test_export_json_lines_inert_only_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A right-to-left override (which JSON leaves as it is): escaped for a terminal, the stored
    form byte for byte elsewhere — piped, or in a file, whatever --format's letter case."""
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        journal.log_transaction(_entry(0, "op\u202e"))
    stored = ('{"seq":0,"timestamp":1700000000000,"op_name":"op\u202e","request_id":"r-0",'
              '"status":"Completed","duration_us":0}\n')
    assert _run(store, "export").stdout == stored
    for fmt in ("jsonl", "json", "JSONL", "Json"):
        out = tmp_path / f"out-{fmt}"
        assert _run(store, "export", "--format", fmt, "-o", str(out)).exit_code == 0
        assert out.read_text() == stored, fmt
        assert _run(store, "export", "--format", fmt).stdout == stored, fmt
    monkeypatch.setattr(_logs, "sys", _TtySys())
    shown = stored.replace("\u202e", "\\u202e")
    assert _run(store, "export").stdout == shown
    assert _run(store, "export", "--format", "json").stdout == shown
    out = tmp_path / "out"
    assert _run(store, "export", "-o", str(out)).exit_code == 0 and out.read_text() == stored


def test_export_table_piped_has_no_colour(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = _run(store, "export", "--format", "table")
    assert result.exit_code == 0 and "\x1b" not in result.stdout
    assert result.stdout.splitlines()[0].split() == ["TIME", "OP", "REQUEST", "STATUS", "TOOK", "ERROR"]


def _record_bars(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, ...]]:
    """What the export reports to its progress bar (the bar itself draws only on a terminal)."""
    calls: list[tuple[object, ...]] = []

    @contextlib.contextmanager
    def progress_bar(ctx: object, label: str, *,
                     unless: bool = False) -> Iterator[Callable[[int, int | None], None]]:
        calls.append(("bar", label, unless))
        yield lambda done, total: calls.append((done, total))
    monkeypatch.setattr(_logs, "progress_bar", progress_bar)
    return calls


def test_export_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        for i in range(5000):
            journal.log_transaction(_entry(i, "a" if i % 2 else "b"))
    calls = _record_bars(monkeypatch)
    assert _run(store, "export", "-o", str(tmp_path / "out")).exit_code == 0
    assert calls == [("bar", "exporting", False), (4096, 5000), (5000, 5000)]
    calls.clear()
    assert _run(store, "export", "-o", str(tmp_path / "out"), "--op", "a").exit_code == 0
    assert calls == [("bar", "exporting", False), (2500, 2500)]  # (a count would need a scan)
    calls.clear()
    assert _run(store, "export", "-o", str(tmp_path / "out"), "--live-only").exit_code == 0
    assert calls == [("bar", "exporting", False), (4096, 5000), (5000, 5000)]
    calls.clear()
    assert _run(store, "export").exit_code == 0  # piped: a bar on a terminal's stderr is fine
    assert calls[0] == ("bar", "exporting", False)
    monkeypatch.setattr(_logs, "sys", _TtySys())
    calls.clear()
    assert _run(store, "export", "--format", "csv").exit_code == 0  # to the terminal: no bar over it
    assert calls[0] == ("bar", "exporting", True)
    calls.clear()
    assert _run(store, "export", "-o", str(tmp_path / "out")).exit_code == 0
    assert calls[0] == ("bar", "exporting", False)


def test_logs_table_of_nothing(store: Path) -> None:
    assert _run(store, "logs", "--op", "nope", "-o", "table").stdout == "-- no entries --\n"
    assert _run(store, "logs", "--op", "nope", "-o", "csv").stdout == (
        "seq,time,op_name,request_id,status,duration_us,error\n")


def test_export_in_colour_only_to_stdout(store: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_logs, "_use_color", lambda: True)  # (stdout a colour terminal)
    assert "\x1b[" in _run(store, "export", "--format", "table").stdout
    out = tmp_path / "out"
    assert _run(store, "export", "--format", "table", "-o", str(out)).exit_code == 0
    assert "\x1b" not in out.read_text() and out.read_text().startswith("TIME")


def test_export_progress_of_a_selection_has_no_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        for i in range(5000):
            journal.log_transaction(_entry(i))
    calls = _record_bars(monkeypatch)
    assert _run(store, "export", "-o", str(tmp_path / "out"), "--since", str(T0 + 1)).exit_code == 0
    assert calls == [("bar", "exporting", False), (4096, None), (4999, 4999)]
