"""Finding a request from what the terminal shows: request ids never cut silently, ``--request-id``
as an exact id, a unique prefix or a glob, a miss said on stderr, and ``--grep``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.cells import cell_len

from krepis import LogStatus, TransactionLog
from test_cli import krepis
from test_cli_logs import OUR_SGR, T0, fill, on_terminal

A = "ab64ab48-0c1d-4e5f-8a9b-0123456789ab"
B = "ab64ab49-1111-4222-8333-444444444444"  # shares 7 characters with A
C = "c0ffee00-2222-4333-8444-555555555555"
LONG = "customer-123456789-order-987654321"
OP = "op_with_a_rather_long_name_for_a_column"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    entries = []
    for i, rid in enumerate([A, B, C, LONG, A, "req-1", "req-2", "req-3"]):
        status = LogStatus.Failed if rid == C else LogStatus.Completed
        entries.append(TransactionLog(T0 + i, OP if i % 2 else "kernel_init", rid, status, duration_us=7,
                                      error="DiskFull: no space left on /var/krepis" if rid == C else None))
    fill(path, entries)
    return path


def request_cell(row: str, header: str) -> str:
    """The REQUEST column of ``row``, located by the header's column start."""
    start = header.index("REQUEST")
    end = header.index("STATUS")
    return row[start:end].strip()


@pytest.mark.parametrize("cols", [80, 100, 120, 160])
def test_a_request_id_is_never_cut_silently(store: Path, cols: int) -> None:
    status, shown = on_terminal("logs", "--storage", str(store), cwd=store.parent, cols=cols)
    assert status == 0
    lines = [OUR_SGR.sub("", line) for line in shown.splitlines()]
    header, rows = lines[0], lines[1:]
    for line in lines:
        assert cell_len(line) <= cols, line
    cells = {request_cell(row, header) for row in rows}
    for rid in (A, B, C, LONG, "req-1"):
        if rid in cells:
            continue  # shown whole
        shortened = [cell for cell in cells if cell.endswith("…") and rid.startswith(cell[:-1])]
        assert shortened, f"{rid} is shown neither whole nor as a prefix with …: {cells}"
    if cols >= 120:  # the id keeps priority over the op column: whole UUIDs, the op name cut
        assert A in cells and LONG in cells
    if cols == 120:
        assert any(f"{OP[:10]}" in row and OP not in row for row in rows)


@pytest.mark.parametrize("cols", [80, 100])
def test_the_prefix_shown_finds_the_request(store: Path, cols: int) -> None:
    """What an operator does: read a request id off the terminal (at 80 columns, cut with …) and
    search with exactly what is shown."""
    status, shown = on_terminal("logs", "--storage", str(store), cwd=store.parent, cols=cols)
    assert status == 0
    lines = [OUR_SGR.sub("", line) for line in shown.splitlines()]
    cells = [request_cell(row, lines[0]) for row in lines[1:]]
    for rid in (A, LONG):
        [prefix] = {cell[:-1] for cell in cells if cell.endswith("…") and rid.startswith(cell[:-1])}
        found = [json.loads(line) for line in krepis("logs", "--storage", str(store), "--request-id", prefix,
                                                     "--json", cwd=store.parent).stdout.splitlines()]
        assert found and {e["request_id"] for e in found} == {rid}
        count = krepis("logs", "--storage", str(store), "--request-id", prefix, "--count", cwd=store.parent)
        assert count.stdout.strip() == str(len(found)) and count.stderr == ""


def test_an_exact_id_wins_over_a_prefix(tmp_path: Path) -> None:
    store = tmp_path / "s"
    fill(store, [TransactionLog(T0, "a", "req", LogStatus.Completed),
                 TransactionLog(T0 + 1, "b", "req-2", LogStatus.Completed)])
    out = krepis("logs", "--storage", str(store), "--request-id", "req", cwd=tmp_path).stdout
    assert [line.split("\t")[2] for line in out.splitlines()] == ["req"]


def test_an_ambiguous_prefix_is_an_error_listing_matches(store: Path) -> None:
    proc = krepis("logs", "--storage", str(store), "--request-id", "ab64ab4", cwd=store.parent, ok=False)
    assert proc.returncode == 2 and proc.stdout == ""
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "'ab64ab4' is ambiguous" in error and A in proc.stderr and B in proc.stderr
    proc = krepis("export", "--storage", str(store), "--request-id", "req-", cwd=store.parent, ok=False)
    assert proc.returncode == 2 and "req-1, req-2, req-3" in proc.stderr


def test_a_glob_matches_several_requests(store: Path) -> None:
    out = krepis("logs", "--storage", str(store), "--request-id", "req-[12]", "--all",
                 cwd=store.parent).stdout
    assert [line.split("\t")[2] for line in out.splitlines()] == ["req-2", "req-1"]
    out = krepis("logs", "--storage", str(store), "--request-id", "ab64ab4?-*", "--count", cwd=store.parent)
    assert out.stdout.strip() == "3"


def test_a_miss_is_said_on_stderr(store: Path) -> None:
    proc = krepis("logs", "--storage", str(store), "--request-id", "deadbeef", cwd=store.parent)
    assert proc.returncode == 0 and proc.stdout == ""
    assert proc.stderr.strip() == "krepis: no request id is or begins with 'deadbeef'"
    proc = krepis("logs", "--storage", str(store), "--request-id", "deadbeef", "--count", cwd=store.parent)
    assert proc.stdout == "0\n" and "no request id is or begins with 'deadbeef'" in proc.stderr
    proc = krepis("logs", "--storage", str(store), "--request-id", "dead*", cwd=store.parent)
    assert proc.stdout == "" and proc.stderr.strip() == "krepis: no request id matches 'dead*'"
    # a request that exists but has no entry the other filters select is no miss
    proc = krepis("logs", "--storage", str(store), "--request-id", A, "--status", "failed", cwd=store.parent)
    assert proc.stdout == "" and proc.stderr == ""


def test_grep_searches_op_request_id_and_error(store: Path) -> None:
    def rids(*args: str) -> list[str]:
        out = krepis("logs", "--storage", str(store), "--all", *args, cwd=store.parent).stdout
        return [line.split("\t")[2] for line in out.splitlines()]

    assert rids("--grep", "no space") == [C]  # the error text
    assert rids("--grep", "^req-[23]$") == ["req-3", "req-2"]  # the request id
    assert len(rids("--grep", "rather_long")) == 4  # the op name
    assert rids("--grep", "DISKFULL") == []
    assert rids("--grep", "DISKFULL", "--ignore-case") == [C]
    out = krepis("export", "--storage", str(store), "--grep", "order-98", cwd=store.parent).stdout
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == [LONG]
    assert krepis("logs", "--storage", str(store), "--grep", "kernel", "--count",
                  cwd=store.parent).stdout.strip() == "4"


@pytest.mark.parametrize(("pattern", "words"), [
    ("(", "'(' is not a regular expression: missing ), unterminated subpattern"),
    ("a" * 1001, "is 1001 characters long; the limit is 1000"),
])
def test_a_bad_grep_pattern_is_a_usage_error(store: Path, pattern: str, words: str) -> None:
    proc = krepis("logs", "--storage", str(store), "--grep", pattern, cwd=store.parent, ok=False)
    assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr
    assert re.search(r"^Error: .*--grep", proc.stderr, re.MULTILINE)
