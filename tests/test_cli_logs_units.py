"""``krepis.cli._logs``'s helpers in-process, on real stores: ``logs --follow`` (the last entries
first, then every entry appended afterwards exactly once, in append order, filtered; a clear
said once; Ctrl-C ending it quietly) with the waits between polls scripted by the test — what
other writers do meanwhile happens inside them —, the export's progress reports and its writes
in batches of 512 lines, and ``export -o FILE`` / ``--count`` through click's runner."""

from __future__ import annotations

import io
import json
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import _logs, cli
from krepis.cli._logs import _counted, _follow, _write_entries
from krepis.cli._select import _Selection

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
    """Each wait of ``_follow`` runs the next step (what happens meanwhile); after the last one,
    Ctrl-C. Returns the waits asked for."""
    waits: list[float] = []
    todo = list(steps)

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if not todo:
            raise KeyboardInterrupt
        todo.pop(0)()

    monkeypatch.setattr(_logs, "time", types.SimpleNamespace(sleep=sleep))
    return waits


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
