"""The CLI's smaller promises: one-line usage errors, whole command summaries in ``--help``,
``krepis run -`` and ``--eval``, an empty time range refused, errors naming the right source,
``metrics --live-only``, ``du`` with the archive, and every Markdown table with a header row."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from test_cli import KREPIS, krepis, last_json

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [
    ["logs", "--bogus"], ["--bogus"], ["nosuch"], ["logs", "--since", "soon"], ["tlog", "export"],
    ["logs", "-n", "x"], ["stats", "--by", "colour"], ["logs", "--request-id"],
])
def test_a_usage_error_is_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = krepis(*args, cwd=tmp_path, ok=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    command = " ".join(["krepis", *[a for a in args[:1] if a in ("logs", "tlog", "stats")]])
    if args[0] == "tlog":
        command = "krepis tlog export"
    assert lines[0].endswith(f"(see {command} --help)"), lines[0]


def _summaries(help_text: str) -> dict[str, str]:
    section = help_text.split("Commands:\n", 1)[1]
    out = {}
    for line in section.splitlines():
        match = re.match(r"  (\S+)\s+(.*)", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


@pytest.mark.parametrize("group", [[], ["tlog"], ["witness"]])
def test_every_command_summary_shows_whole(tmp_path: Path, group: list[str]) -> None:
    for env in ({"COLUMNS": "80"}, {}):
        summaries = _summaries(krepis(*group, "--help", cwd=tmp_path, env=env).stdout)
        assert summaries
        cut = {name: text for name, text in summaries.items()
               if text.endswith("...") or not text.endswith(".")}
        assert not cut, cut
    if not group:
        assert "cannot be undone" in summaries["clear"]
        assert len(summaries) == len(set(summaries))


def test_run_a_script_from_stdin_or_eval(tmp_path: Path) -> None:
    code = 'Krepis.ops.op_increment_stats(); Krepis.ops.op_log_from_js("info", "inline " + (1 + 1));\n'
    proc = subprocess.run([KREPIS, "run", "-", "--json"], input=code, capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = last_json(proc.stdout)
    assert out["ok"] and out["js_ops_called"] == 1 and out["script"] == "-"
    assert "js info: inline 2" in proc.stderr
    out = last_json(krepis("run", "--eval", "Krepis.ops.op_increment_stats()", "--json", cwd=tmp_path).stdout)
    assert out["ok"] and out["js_ops_called"] == 2 and out["script"] == "--eval"
    # one line of code ending like a file name is still code, never a path
    failed = krepis("run", "--eval", "throw new Error('x.js')", cwd=tmp_path, ok=False)
    assert failed.returncode == 1 and "Error: script failed" in failed.stderr and "x.js" in failed.stderr
    both = krepis("run", "--eval", "1", "-", cwd=tmp_path, ok=False)
    assert both.returncode == 2 and "SCRIPT or --eval" in both.stderr
    empty = subprocess.run([KREPIS, "run", "-"], input="", capture_output=True, text=True, cwd=tmp_path,
                           timeout=60)
    assert empty.returncode != 0 and "Traceback" not in empty.stderr and "empty" in empty.stderr


@pytest.mark.parametrize("command", [["logs"], ["export"], ["stats", "--by", "op"], ["logs", "--count"]])
def test_since_after_until_is_an_error(tmp_path: Path, command: list[str]) -> None:
    SovereignJournal(tmp_path / "s").close()
    proc = krepis(*command, "--storage", str(tmp_path / "s"), "--since", "2026-02-01T00:00Z", "--until",
                  "2026-01-01T00:00Z", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and proc.stdout == ""
    [error] = proc.stderr.strip().splitlines()
    assert "--since 2026-02-01T00:00:00.000Z is not before --until 2026-01-01T00:00:00.000Z" in error
    same = krepis(*command, "--storage", str(tmp_path / "s"), "--since", "@1767225600", "--until",
                  "2026-01-01T00:00Z", cwd=tmp_path, ok=False)  # the same instant, written twice
    assert same.returncode == 2 and "is not before --until" in same.stderr


def test_a_backup_destination_error_does_not_blame_krepis_storage(tmp_path: Path) -> None:
    store = tmp_path / "s"
    SovereignJournal(store).close()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    proc = krepis("backup", str(tmp_path / "full"), cwd=tmp_path, env={"KREPIS_STORAGE": str(store)},
                  ok=False)
    assert proc.returncode == 1 and "is not an empty directory" in proc.stderr
    assert "KREPIS_STORAGE" not in proc.stderr
    (tmp_path / "file").write_text("x")
    proc = krepis("stats", cwd=tmp_path, env={"KREPIS_STORAGE": str(tmp_path / "file")}, ok=False)
    assert "(the storage location comes from KREPIS_STORAGE)" in proc.stderr  # about the store: named


def _archived(tmp_path: Path) -> tuple[Path, Path]:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:100ms") as journal:
        for i in range(600):
            journal.log_transaction(TransactionLog(1000 + i, "early" if i < 512 else "late", f"r{i}",
                                                   LogStatus.Completed, duration_us=10))
        journal.archive(cold, keep_last=50)
    return store, cold


def test_metrics_live_only_never_reads_the_archive(tmp_path: Path) -> None:
    store, cold = _archived(tmp_path)
    everything = krepis("metrics", "--storage", str(store), cwd=tmp_path).stdout
    assert 'krepis_op_entries_total{op="early",status="Completed"} 512' in everything
    assert "krepis_archive_bytes" in everything
    shutil.move(cold, tmp_path / "elsewhere")  # the archive is gone (unmounted, say)
    failed = krepis("metrics", "--storage", str(store), cwd=tmp_path, ok=False)
    assert failed.returncode == 1 and str(cold) in failed.stderr
    live = krepis("metrics", "--storage", str(store), "--live-only", cwd=tmp_path).stdout
    assert 'op="early"' not in live and 'krepis_op_entries_total{op="late",status="Completed"} 88' in live
    assert "krepis_journal_live_entries 88" in live and "krepis_journal_archived_entries 512" in live
    assert "krepis_archive_bytes" not in live


def test_du_shows_the_archive(tmp_path: Path) -> None:
    store, cold = _archived(tmp_path)
    use = json.loads(krepis("du", "--storage", str(store), "--json", cwd=tmp_path).stdout)
    on_disk = sum(p.stat().st_blocks * 512 for p in cold.iterdir() if p.is_file())
    assert use["archive"] == {"directory": str(cold), "bytes": on_disk, "entries": 512}
    piped = krepis("du", "--storage", str(store), cwd=tmp_path).stdout.splitlines()  # tab-separated
    assert piped[0] == f"file\tbytes\twhat it is\t{store}"
    assert piped[-1] == f"archive\t{on_disk}\t512 archived entries in {cold}"
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in piped[1:]}
    assert int(rows["data.mdb"]) == use["data"] and int(rows["total"]) == use["total"]
    bare = tmp_path / "bare"
    SovereignJournal(bare).close()
    assert json.loads(krepis("du", "--storage", str(bare), "--json", cwd=tmp_path).stdout)["archive"] is None
    shutil.move(cold, tmp_path / "elsewhere")
    gone = krepis("du", "--storage", str(store), cwd=tmp_path)  # du still answers, and says so
    assert gone.stdout.splitlines()[-1] == f"archive\tmissing\t512 archived entries should be in {cold}"


def test_every_markdown_table_has_a_header_row() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        lines = doc.read_text(encoding="utf-8").splitlines()
        fenced = False
        for i, line in enumerate(lines):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            if fenced or not line.startswith("|") or (i and lines[i - 1].startswith("|")):
                continue
            following = lines[i + 1] if i + 1 < len(lines) else ""
            assert re.match(r"\|\s*:?-{3,}", following), f"{doc.name}:{i + 1}: a table without a header row"
