"""``krepis run`` whose reader goes away (``krepis run 2>&1 | head -1``): the script runs to the
end and is journaled as any other run; the command exits quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal

KREPIS = str(Path(sys.executable).with_name("krepis"))

#: Far more than a pipe holds (~400 KiB of log lines and console output): writing it must meet the
#: closed pipe while the script is still running.
SCRIPT = """
for (let i = 0; i < 200; i++) {
  Krepis.ops.op_log_from_js("info", `line ${i} ` + "x".repeat(1000));
  console.error(`console ${i} ` + "y".repeat(1000));
}
Krepis.ops.op_increment_stats();
"""


def run_then_close(args: list[str], cwd: Path, *, merge: bool) -> tuple[int, bytes]:
    """Start ``krepis run``, read its first line, close the pipe (as ``head -1`` does), wait."""
    proc = subprocess.Popen([KREPIS, "run", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge else subprocess.PIPE)
    assert proc.stdout is not None
    if not merge:  # stderr first: with --json, stdout gets its one line only at the end
        assert proc.stderr is not None
        proc.stderr.readline()
        proc.stderr.close()
    first = proc.stdout.readline()
    proc.stdout.close()
    return proc.wait(timeout=120), first


@pytest.mark.parametrize("merge", [True, False], ids=["2>&1 | head -1", "stdout and stderr closed"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_a_reader_going_away_does_not_end_the_script(tmp_path: Path, merge: bool, as_json: bool) -> None:
    script = tmp_path / "chatty.js"
    script.write_text(SCRIPT)
    store = tmp_path / "store"
    args = [str(script), "--storage", str(store)] + (["--json"] if as_json else [])
    code, first = run_then_close(args, tmp_path, merge=merge)
    assert first  # the reader got its line
    assert code == 0
    with SovereignJournal(store) as journal:
        log = [(e.op_name, e.status) for e in journal.query(newest_first=False, limit=10_000)]
        assert journal.recover_op_count("js_ops_called") == 1
        assert journal.recover_op_count("op_log_from_js") == 200
    assert ("kernel_error", LogStatus.Failed) not in log
    assert log[-1] == ("kernel_shutdown", LogStatus.Completed)
    assert log.count(("op_log_from_js", LogStatus.Completed)) == 200


def test_a_failing_script_with_its_reader_gone_still_exits_1(tmp_path: Path) -> None:
    script = tmp_path / "fails.js"
    script.write_text(SCRIPT + "throw new Error('at the end');\n")
    store = tmp_path / "store"
    code, _first = run_then_close([str(script), "--storage", str(store)], tmp_path, merge=True)
    assert code == 1
    with SovereignJournal(store) as journal:
        last = journal.query(newest_first=True, limit=1)[0]
        assert last.op_name == "kernel_error" and "at the end" in (last.error or "")
        assert journal.recover_op_count("op_log_from_js") == 200
