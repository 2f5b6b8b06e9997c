"""``krepis archive`` (cli/_archive.py) in process: the options it refuses (before the store is
opened) and every line and JSON field it prints. Real LMDB stores and archives."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import SovereignJournal
from krepis.cli import cli
from test_archive import fill_fast, realistic


def _run(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(store), "archive", *args])


@pytest.fixture
def store(tmp_path: Path) -> Path:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(3 * 256 + 5, seed=3))
    return tmp_path / "s"


@pytest.mark.parametrize(("args", "given"), [
    ([], ""),
    (["--keep-last", "1", "--keep-days", "1"], " (got --keep-last and --keep-days)"),
    (["--before", "0", "--keep-last", "1"], " (got --before and --keep-last)"),
    (["--before", "0", "--keep-days", "2"], " (got --before and --keep-days)"),
])
def test_exactly_one_policy_is_needed(tmp_path: Path, args: list[str], given: str) -> None:
    result = _run(tmp_path / "none", str(tmp_path / "cold"), *args)
    assert result.exit_code == 2
    assert f"Error: give exactly one of --before, --keep-last and --keep-days{given}, or --set-dir DIR (see" \
        in result.output
    assert not (tmp_path / "none").exists() and not (tmp_path / "cold").exists()


@pytest.mark.parametrize("extra", [["DIR"], ["--before", "0"], ["--keep-last", "0"], ["--keep-days", "0"]])
def test_set_dir_is_given_alone(tmp_path: Path, extra: list[str]) -> None:
    result = _run(tmp_path / "none", "--set-dir", str(tmp_path / "cold"), *extra)
    assert result.exit_code == 2
    assert ("Error: --set-dir records where the archive is and archives nothing: give it alone (without "
            "DIR, --before, --keep-last, --keep-days)") in " ".join(result.output.split())
    assert not (tmp_path / "none").exists()


def test_archive_says_what_it_moved(tmp_path: Path, store: Path) -> None:
    cold = tmp_path / "cold"
    result = _run(store, str(cold), "--keep-last", str(256 + 5))
    assert result.exit_code == 0, result.output
    with SovereignJournal(store) as journal:
        assert journal.live_first_seq() == 512
    size = sum(p.stat().st_size for p in cold.iterdir() if p.suffix == ".kseg")
    line = result.output
    assert line.startswith(f"archived 512 entries (2 bundles, {size} bytes, {size / 512:.1f} bytes/entry) "
                           f"into {cold}; the store now starts at seq 512, the archive holds 512 entries "
                           "of this log\n"), line
    result = _run(store, "--keep-last", "1000")
    assert result.exit_code == 0, result.output
    assert result.output == (f"archived 0 entries (0 bundles, 0 bytes) into {cold}; the store now starts at "
                             "seq 512, the archive holds 512 entries of this log\n")


def test_archive_json_is_the_report(tmp_path: Path, store: Path) -> None:
    cold = tmp_path / "cold"
    result = _run(store, str(cold), "--keep-last", "0", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert (out["entries"], out["bundles"], out["directory"]) == (768, 3, str(cold))
    assert (out["live_first_seq"], out["archived_entries"]) == (768, 768)
    assert out["completed_previous"] is False


def test_set_dir_says_where_the_archive_is_and_was(tmp_path: Path, store: Path) -> None:
    cold = tmp_path / "cold"
    assert _run(store, str(cold), "--keep-last", "0").exit_code == 0
    moved = tmp_path / "moved"
    cold.rename(moved)
    result = _run(store, "--set-dir", str(moved))
    assert result.exit_code == 0, result.output
    assert result.output == (f"the store at {store} now records its archive at {moved} (was {cold}); it "
                             "holds the 768 archived entries of the current log\n")
    result = _run(store, "--set-dir", str(moved), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"archive": str(moved), "previous": str(moved),
                                         "archived_entries": 768}


def test_set_dir_on_a_store_without_an_archive_says_no_was(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        journal.flush()
    (tmp_path / "cold").mkdir()
    result = _run(tmp_path / "s", "--set-dir", str(tmp_path / "cold"))
    assert result.exit_code == 0, result.output
    assert result.output == (f"the store at {tmp_path / 's'} now records its archive at {tmp_path / 'cold'}; "
                             "it holds the 0 archived entries of the current log\n")
    out = json.loads(_run(tmp_path / "s", "--set-dir", str(tmp_path / "cold"), "--json").output)
    assert out == {"archive": str(tmp_path / "cold"), "previous": str(tmp_path / "cold"),
                   "archived_entries": 0}


def test_archive_says_it_completed_an_interrupted_run(tmp_path: Path) -> None:
    """The format-1 fixture archive beside a store still holding its entries: the state a run
    leaves when it dies after the archive was durable and before the entries left the store."""
    from test_archive_format import FIXTURES, entries

    store, arch = tmp_path / "s", tmp_path / "cold"
    shutil.copytree(FIXTURES / "archive-format1", arch)
    arch.chmod(0o700)
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, entries())
    result = _run(store, str(arch), "--keep-last", str(10**6))
    assert result.exit_code == 0, result.output
    assert result.output == (f"archived 0 entries (0 bundles, 0 bytes) into {arch}; completed an "
                             "interrupted run; the store now starts at seq 768, the archive holds 768 "
                             "entries of this log\n")


@pytest.mark.parametrize("args", [["COLD", "--keep-last", "0"], ["--set-dir", "COLD"]])
def test_archive_never_creates_a_store(tmp_path: Path, args: list[str]) -> None:
    cold = str(tmp_path / "cold")
    result = _run(tmp_path / "none", *[cold if a == "COLD" else a for a in args])
    assert result.exit_code == 1
    assert result.output == f"Error: there is no krepis store at {tmp_path / 'none'}\n"
    assert not (tmp_path / "none").exists() and not (tmp_path / "cold").exists()


def test_archive_reads_no_retention_or_flush_policy_of_the_environment(
        tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command archives what it is told: KREPIS_RETENTION and KREPIS_FLUSH (here ones that do
    not parse) are not read."""
    monkeypatch.setenv("KREPIS_RETENTION", "keep-forever-please")
    monkeypatch.setenv("KREPIS_FLUSH", "whenever")
    result = _run(store, str(tmp_path / "cold"), "--keep-last", "0")
    assert result.exit_code == 0, result.output
    (tmp_path / "cold").rename(tmp_path / "moved")
    result = _run(store, "--set-dir", str(tmp_path / "moved"))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("policy", [["--before", "@4102444800"], ["--keep-days", "0"]])
def test_before_and_keep_days_reach_the_archive(tmp_path: Path, store: Path, policy: list[str]) -> None:
    result = _run(store, str(tmp_path / "cold"), *policy)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("archived 768 entries (3 bundles, ")


def test_on_a_terminal_the_bar_counts_what_it_archives(tmp_path: Path) -> None:
    """The bar (on a pseudo-terminal, in a child process): labelled, and moved to the end."""
    from test_cli_logs import on_terminal
    from test_cli_progress import _fill

    _fill(tmp_path / "s", 1000)
    assert _run(tmp_path / "s", str(tmp_path / "cold"), "--keep-last", "1000").exit_code == 0  # (in process)
    status, shown = on_terminal("--storage", str(tmp_path / "s"), "archive", "--keep-last", "10",
                                  cwd=tmp_path)
    assert status == 0, shown
    assert re.search(r"archiving .*768/768", shown), shown
