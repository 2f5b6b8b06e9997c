"""Long operations report progress: ``progress=`` callbacks on the journal, archive and storage
APIs that loop, and a bar on stderr for ``verify``, ``backup``, ``restore``, ``archive``,
``export``, ``migrate`` and ``compact`` when stderr is a terminal — never when it is piped or with
``--quiet``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.storage import backup
from krepis.storage.lmdb import compact
from test_cli import krepis
from test_cli_logs import on_terminal

N = 3000


def _fill(path: Path, n: int = N) -> None:
    with SovereignJournal(path, flush="interval:1000ms") as journal:
        batch = [TransactionLog(1000 + i, f"op{i % 5}", f"r{i}", LogStatus.Completed) for i in range(n)]
        journal._write([(e, e.to_json().encode()) for e in batch], ())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    _fill(path)
    return path


class Calls(list[tuple[int, int | None]]):
    def __call__(self, done: int, total: int | None) -> None:
        self.append((done, total))

    def check(self, total: int) -> None:
        assert self, "no progress was reported"
        dones = [done for done, _ in self]
        assert dones == sorted(dones) and dones[-1] == total == self[-1][1]
        assert all(t is not None and done <= t for done, t in self)


def test_journal_verify_and_archive_report_progress(store: Path, tmp_path: Path) -> None:
    with SovereignJournal(store, create=False) as journal:
        calls = Calls()
        journal.verify(progress=calls)
        assert calls[0] == (0, N)
        calls.check(N)
        calls = Calls()
        report = journal.archive(tmp_path / "cold", keep_last=100, progress=calls)
        calls.check(report.entries)
        assert report.entries == 2816 and len(calls) >= 11  # (a call per bundle of 256)
        calls = Calls()
        journal.verify(progress=calls)  # the store, then the archive bundle by bundle
        calls.check(N)
        assert calls[0] == (0, N) and calls[1] == (N - 2816, N) and len(calls) >= 11
        calls = Calls()
        journal.verify_archive(progress=calls)
        calls.check(2816)


def test_backup_and_compact_report_the_rows_copied(store: Path, tmp_path: Path) -> None:
    calls = Calls()
    backup(store, tmp_path / "copy", progress=calls)
    calls.check(calls[-1][0])
    assert calls[-1][0] > N  # every database's rows: entries, index rows, tree nodes, …
    calls = Calls()
    compact(store, progress=calls)
    calls.check(calls[-1][0])


def _legacy(tmp_path: Path) -> Path:
    path = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "format1-store", path)
    return path


COMMANDS = {
    "verify": (["verify"], "verifying"),
    "backup": (["backup", "{tmp}/b"], "copying"),
    "archive": (["archive", "{tmp}/cold", "--keep-last", "10"], "archiving"),
    "export": (["export", "-o", "{tmp}/trail.jsonl"], "exporting"),
    "compact": (["compact"], "copying"),
    "migrate": (["migrate"], "migrating"),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bar_on_a_terminal_and_none_piped_or_quiet(name: str, tmp_path: Path) -> None:
    args, label = COMMANDS[name]

    def fresh(where: str) -> list[str]:
        base = tmp_path / where
        base.mkdir()
        path = _legacy(base) if name == "migrate" else base / "s"
        if name != "migrate":
            _fill(path, 1000)
        return ["--storage", str(path), *(a.replace("{tmp}", str(base)) for a in args)]

    status, shown = on_terminal(*fresh("tty"), cwd=tmp_path)
    assert status == 0, shown
    assert label in shown  # the bar was drawn (and erased: it is transient)
    for quiet in (["-q"], ["--quiet"]):
        command = fresh(f"quiet{quiet[0]}")
        status, shown = on_terminal(*quiet, *command, cwd=tmp_path)  # krepis -q verify …
        assert status == 0 and label not in shown, shown
    command = fresh("quiet-after")
    status, shown = on_terminal(*command, "--quiet", cwd=tmp_path)  # krepis verify … --quiet
    assert status == 0 and label not in shown, shown
    piped = krepis(*fresh("piped"), cwd=tmp_path)
    assert label not in piped.stderr and "\x1b" not in piped.stderr
