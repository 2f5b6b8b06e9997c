"""``krepis logs``/``export``/``stats`` output: terminal view, plain lines, pager, filters, inert text,
streaming and closed pipes — run as a user runs them, the installed command in a subprocess (on a
pseudo-terminal where the terminal matters)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import pytest
from rich.cells import cell_len

from krepis import LogStatus, SovereignJournal, TransactionLog
from test_cli import KREPIS, krepis

UUID = "913eaf7c-f24d-4c1a-a74b-762f183f9f83"
T0 = 1_769_860_800_000  # 2026-01-31T12:00:00Z
HOSTILE_ERROR = ("Error: [/] [bold]x[/bold]\nFAKE 2026-01-31 kernel_init Completed\r"
                 "\x1b]0;pwned\x07\x1b[31mred\x1b[0m\u202eevil\x9b2J\x00end")
# What a terminal would act on: C0/C1 controls (but newline and tab), DEL, bidi overrides.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
OUR_SGR = re.compile(r"\x1b\[[0-9;]*m")  # the colours krepis itself adds


def on_terminal(*args: str, cwd: Path, cols: int = 80, rows: int = 200,
                env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run krepis on a pseudo-terminal of cols × rows; its exit status and what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("KREPIS_STORAGE", "COLUMNS", "LINES", "NO_COLOR", "PAGER", "KREPIS_PAGER")}
    full_env.update({"TERM": "xterm", "TZ": "UTC"}, **(env or {}))
    proc = subprocess.Popen([KREPIS, *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=full_env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every holder of the terminal has gone
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8").replace("\r\n", "\n")


def fill(store: Path, entries: list[TransactionLog]) -> None:
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        for entry in entries:
            journal.log_transaction(entry)


def sample() -> list[TransactionLog]:
    return [
        TransactionLog(T0, "kernel_init", UUID, LogStatus.Started),
        TransactionLog(T0 + 1, "op_check_permission", UUID, LogStatus.Failed, duration_us=1234,
                       error="PermissionDenied: reading /etc/shadow is not allowed by the kernel policy"),
        TransactionLog(T0 + 2, "日本語の操作名前がとても長いですね", "req-1", LogStatus.Completed,
                       duration_us=5),
        TransactionLog(T0 + 3, "x" * 200, "customer-123456789-order-987654321", LogStatus.Completed,
                       duration_us=5_000_000),
        TransactionLog(T0 + 4, "script\x1b[2J\x1b]0;op\x07", "rid\nforged", LogStatus.Failed,
                       error=HOSTILE_ERROR),
    ]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    fill(path, sample())
    return path


@pytest.mark.parametrize("cols", [80, 100, 160])
def test_terminal_view_fits_the_width_one_line_per_entry(store: Path, tmp_path: Path, cols: int) -> None:
    status, shown = on_terminal("logs", "--storage", str(store), cwd=tmp_path, cols=cols)
    assert status == 0, shown
    lines = shown.splitlines()
    assert len(lines) == 1 + 5  # a header and one line per entry: nothing wraps
    for line in lines:
        assert cell_len(OUR_SGR.sub("", line)) <= cols, line
    plain = [OUR_SGR.sub("", line) for line in lines]
    assert plain[0].split() == ["TIME", "OP", "REQUEST", "STATUS", "TOOK", "ERROR"]
    assert "op_check_perm" in plain[4] and "Failed" in plain[4] and "1.2ms" in plain[4]
    assert plain[5].split()[2] == "kernel_init"  # newest first
    if cols == 80:
        assert plain[5].startswith("01-31 12:00:00.000 kernel_init")  # compact local time
        assert f" {UUID[:8]}… " in plain[5] and UUID not in shown  # a UUID's first group, marked as cut
        assert " op_check_permis… " in plain[4]  # the op name gives way to the request id
    if cols >= 100:
        assert plain[5].startswith("2026-01-31 12:00:00.000 kernel_init")
    if cols == 160:
        assert UUID in plain[5] and "PermissionDenied: reading /etc/shadow" in plain[4]
    assert "\x1b[32mCompleted" in shown  # status colours on a terminal


def test_columns_are_no_wider_than_the_entries_need_and_errors_get_the_rest(tmp_path: Path) -> None:
    error = "timeout talking to the payment gateway (upstream 502)"
    fill(tmp_path / "s", [TransactionLog(T0 + i, "charge_card", f"req-19{i:02d}", LogStatus.Failed,
                                         duration_us=9, error=error) for i in range(5)])
    status, shown = on_terminal("logs", "--storage", str(tmp_path / "s"), cwd=tmp_path, cols=120,
                                env={"NO_COLOR": "1"})
    assert status == 0, shown
    lines = shown.splitlines()
    assert lines[0].split() == ["TIME", "OP", "REQUEST", "STATUS", "TOOK", "ERROR"]
    # op and request id as wide as they are (the request column as wide as its header)
    assert lines[1].startswith("2026-01-31 12:00:00.004 charge_card req-1904 Failed")
    assert lines[1].endswith(error) and all(len(line) <= 120 for line in lines)
    narrow = on_terminal("logs", "--storage", str(tmp_path / "s"), cwd=tmp_path, cols=80,
                         env={"NO_COLOR": "1"})[1].splitlines()
    assert " charge_card req-1904 Failed " in narrow[1] and narrow[1].endswith("…")
    assert "timeout talking to t…" in narrow[1]  # (before: 12 cells of error at 80 columns)


def test_no_color(store: Path, tmp_path: Path) -> None:
    status, shown = on_terminal("logs", "--storage", str(store), cwd=tmp_path, env={"NO_COLOR": "1"})
    assert status == 0 and "\x1b" not in shown


def test_plain_lines_when_piped(store: Path, tmp_path: Path) -> None:
    out = krepis("logs", "--storage", str(store), "--reverse", cwd=tmp_path).stdout
    lines = out.splitlines()
    assert len(lines) == 5 and not any(ch in out for ch in "│─┃━")  # no box drawing
    assert lines[0].split("\t") == ["2026-01-31T12:00:00.000Z", "kernel_init", UUID, "Started", "", ""]
    assert lines[1].split("\t") == [
        "2026-01-31T12:00:00.001Z", "op_check_permission", UUID, "Failed", "1234",
        "PermissionDenied: reading /etc/shadow is not allowed by the kernel policy"]
    assert lines[3].split("\t")[1] == "x" * 200  # whole values, never cut
    assert all(line.count("\t") == 5 for line in lines)


def test_json_lines(store: Path, tmp_path: Path) -> None:
    out = krepis("logs", "--storage", str(store), "--json", cwd=tmp_path).stdout
    got = [json.loads(line) for line in out.splitlines()]
    assert [TransactionLog(**{**e, "status": LogStatus(e["status"])}) for e in got] == sample()[::-1]


def visible(text: str) -> str:
    """``text`` with krepis' own colours removed; what is left must hold no raw control."""
    return OUR_SGR.sub("", text)


@pytest.mark.parametrize("command", [
    ["logs"], ["logs", "--json"], ["logs", "-n", "all", "--reverse"], ["export"], ["stats"],
])
@pytest.mark.parametrize("where", ["terminal", "pipe"])
def test_journal_text_is_printed_inert(store: Path, tmp_path: Path, command: list[str], where: str) -> None:
    with SovereignJournal(store) as journal:  # a counter with a hostile name too
        journal.increment_op_count("count\x1b]52;c;cHduZWQ=\x07[/]\nforged 99")
    if where == "terminal":
        status, shown = on_terminal(*command, "--storage", str(store), cwd=tmp_path, cols=400)
    else:
        proc = krepis(*command, "--storage", str(store), cwd=tmp_path)
        status, shown = proc.returncode, proc.stdout
    assert status == 0, shown
    assert "MarkupError" not in shown and "Traceback" not in shown
    if command == ["export"] and where == "pipe":  # seq, then the stored form byte for byte: JSON escapes C0
        with SovereignJournal(store) as journal:
            assert shown == "".join(f'{{"seq":{e.seq},' + e.to_json()[1:] + "\n"
                                    for e in journal.iter_logs(order="append", newest_first=False))
        assert re.search("[\x00-\x08\x0b-\x1f]", shown) is None
    else:
        assert RAW_CONTROL.search(visible(shown)) is None, repr(shown)
    lines = shown.splitlines()
    if command == ["stats"]:
        counters = [line for line in lines if "count" in line and "forged" in line]
        assert len(counters) == 1 and "[/]" in counters[0] and "\\n" in counters[0]
        assert "\\x1b]52;c;" in counters[0]
        return
    hostile = [line for line in lines if "FAKE 2026-01-31" in line]
    assert len(hostile) == 1  # the newline in the error forged no line
    assert not any(line.startswith("FAKE") for line in lines)
    if "--json" in command or command == ["export"]:
        assert [json.loads(line) for line in lines if line.startswith("{")]  # still valid JSON
        assert "\\u001b]0;pwned" in hostile[0]
        assert ("\\u202e" in hostile[0]) is not (command == ["export"] and where == "pipe")
    elif where == "terminal":
        assert "[/] [bold]x[/bold]\\nFAKE" in hostile[0]
        assert "\\x1b]0;pwned\\x07\\x1b[31mred" in hostile[0] and "\\u202eevil\\x9b2J\\x00end" in hostile[0]
        assert "script\\x1b[2J" in hostile[0]
    else:  # tab-separated: backslashes doubled too, so every field reads back unambiguously
        fields = hostile[0].split("\t")
        assert fields[2] == "rid\\nforged"
        assert fields[5].startswith("Error: [/] [bold]x[/bold]\\nFAKE 2026-01-31 kernel_init Completed\\r")


def test_follow_prints_hostile_entries_inert(store: Path, tmp_path: Path) -> None:
    import queue
    import threading

    proc = subprocess.Popen([KREPIS, "logs", "--storage", str(store), "-f", "-n", "1"],
                            stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        existing = lines.get(timeout=30)  # the newest entry, printed at start: the hostile one
        assert existing.split("\t")[1] == "script\\x1b[2J\\x1b]0;op\\x07"
        with SovereignJournal(store) as journal:
            journal.log_transaction(TransactionLog(T0 + 10, "late", "r", LogStatus.Failed,
                                                   error=HOSTILE_ERROR))
            journal.log_transaction(TransactionLog(T0 + 11, "after", "r", LogStatus.Completed))
        late, after = lines.get(timeout=30), lines.get(timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for line in (existing, late):
        assert RAW_CONTROL.search(line) is None and "\\nFAKE 2026-01-31" in line
    assert late.split("\t")[1] == "late" and after.split("\t")[1] == "after"


def test_pager_only_when_longer_than_the_screen(tmp_path: Path) -> None:
    store = tmp_path / "s"
    fill(store, [TransactionLog(T0 + i, f"op{i}", f"r{i}", LogStatus.Completed) for i in range(30)])
    paged = tmp_path / "paged.txt"
    pager = {"PAGER": f"sh -c 'cat > {paged}'"}
    status, shown = on_terminal("logs", "--storage", str(store), "-n", "all", cwd=tmp_path, rows=10,
                                env=pager)
    assert status == 0
    lines = paged.read_text().splitlines()
    assert len(lines) == 31 and "op29" in lines[1] and "op0" in lines[30]  # header + every entry
    assert "op29" not in shown
    paged.unlink()
    status, shown = on_terminal("logs", "--storage", str(store), "-n", "5", cwd=tmp_path, rows=10, env=pager)
    assert status == 0 and not paged.exists() and "op25" in shown  # fits: printed directly
    status, shown = on_terminal("logs", "--storage", str(store), "--all", "--no-pager", cwd=tmp_path, rows=10,
                                env=pager)
    assert status == 0 and not paged.exists() and len(shown.splitlines()) == 31
    krepis("logs", "--storage", str(store), "--all", cwd=tmp_path, env=pager)  # not a terminal: no pager
    assert not paged.exists()


@pytest.fixture
def varied(tmp_path: Path) -> Path:
    store = tmp_path / "v"
    entries = [TransactionLog(T0 + i, op, f"r{i % 3}", status)
               for i, (op, status) in enumerate([
                   ("kernel_init", LogStatus.Started), ("op_get_context", LogStatus.Started),
                   ("op_get_context", LogStatus.Completed), ("op_log_from_js", LogStatus.Started),
                   ("op_log_from_js", LogStatus.Failed), ("resize", LogStatus.Started),
                   ("resize", LogStatus.Completed), ("kernel_error", LogStatus.Failed),
                   ("kernel_shutdown", LogStatus.Completed)])]
    fill(store, entries)
    return store


def ops(store: Path, *args: str) -> list[str]:
    every = [] if "-n" in args else ["--all"]
    out = krepis("logs", "--storage", str(store), *every, *args, cwd=store.parent).stdout
    return [line.split("\t")[1] for line in out.splitlines()]


def test_repeated_filters_mean_either_of(varied: Path) -> None:
    assert ops(varied, "--op", "resize", "--op", "kernel_init") == ["resize", "resize", "kernel_init"]
    assert ops(varied, "--status", "failed") == ["kernel_error", "op_log_from_js"]  # any case
    assert ops(varied, "--status", "FAILED", "--status", "Started") == [
        "kernel_error", "resize", "op_log_from_js", "op_log_from_js", "op_get_context", "kernel_init"]
    assert ops(varied, "--op", "op_*") == [
        "op_log_from_js", "op_log_from_js", "op_get_context", "op_get_context"]
    assert ops(varied, "--op", "kernel_[is]*", "--op", "resize") == [
        "kernel_shutdown", "resize", "resize", "kernel_init"]
    assert ops(varied, "--op", "op_*", "--status", "completed", "--status", "failed") == [
        "op_log_from_js", "op_get_context"]
    assert ops(varied, "--request-id", "r0", "--request-id", "r2") == [
        "kernel_shutdown", "resize", "resize", "op_log_from_js", "op_get_context", "kernel_init"]
    assert ops(varied, "--op", "op_*", "-n", "3") == ["op_log_from_js", "op_log_from_js", "op_get_context"]
    assert ops(varied, "--op", "nothing*") == []


def test_count(varied: Path) -> None:
    def count(*args: str) -> str:
        return krepis("logs", "--storage", str(varied), "--count", *args, cwd=varied.parent).stdout.strip()

    assert count() == "9"
    assert count("-n", "2") == "9"  # every match, whatever -n says
    assert count("--op", "op_*") == "4"
    assert count("--status", "failed", "--status", "completed") == "5"
    assert count("--since", "2026-01-31T12:00:00.005Z") == "4"
    assert json.loads(krepis("logs", "--storage", str(varied), "--count", "--json", "--op", "resize",
                             cwd=varied.parent).stdout) == {"count": 2}


def test_limits_and_reverse(tmp_path: Path) -> None:
    store = tmp_path / "s"
    fill(store, [TransactionLog(ts, op, "r", LogStatus.Completed)
                 for ts, op in ((1, "a1"), (2, "b1"), (2, "b2"), (2, "b3"), (3, "c1"))])
    assert ops(store, "-n", "3") == ["c1", "b3", "b2"]
    assert ops(store, "-n", "3", "--reverse") == ["b2", "b3", "c1"]  # the 3 newest, oldest first
    assert ops(store, "-n", "1", "--reverse") == ["c1"]
    assert ops(store, "-n", "2", "--reverse", "--op", "b*") == ["b2", "b3"]
    assert ops(store, "-n", "0", "--reverse") == []
    assert ops(store, "-n", "99", "--reverse") == ["a1", "b1", "b2", "b3", "c1"]
    assert ops(store, "--reverse") == ["a1", "b1", "b2", "b3", "c1"]
    for args in (["-n", "all"], ["--all"], ["-n", "ALL"]):
        out = krepis("logs", "--storage", str(store), *args, cwd=tmp_path).stdout
        assert len(out.splitlines()) == 5
    assert krepis("logs", "--storage", str(store), "-n", "2", cwd=tmp_path).stdout.count("\n") == 2


def many(store: Path, n: int) -> None:
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        for start in range(0, n, 1000):
            pending = [TransactionLog(T0 + i, f"op_{i % 7}", f"request-{i:08d}", LogStatus.Completed,
                                      duration_us=i, error="e" * 40)
                       for i in range(start, min(n, start + 1000))]
            journal._write([(e, e.to_json().encode()) for e in pending], ())


_PEAK = textwrap.dedent("""
    import sys, tracemalloc
    tracemalloc.start()
    from krepis.cli import main
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    sys.argv = ["krepis", *sys.argv[1:]]
    try:
        main()
    finally:
        sys.stderr.write(f"PEAK {tracemalloc.get_traced_memory()[1] - base}\\n")
""")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("big") / "s"
    many(store, 20_000)  # far more than a pipe buffer holds
    return store


@pytest.mark.parametrize("args", [["logs", "-n", "20000", "--json"],
                                  ["logs", "--all", "--reverse"], ["logs", "-n", "15000", "--reverse"],
                                  ["logs", "--all", "--op", "op_[1-6]", "--op", "op_0",
                                   "--status", "completed", "--status", "failed"],
                                  ["export"]])
def test_output_is_streamed_in_flat_memory(big: Path, tmp_path: Path, args: list[str]) -> None:
    """20,000 entries (about 3 MB of output) pass through in far less than holding them takes."""
    proc = subprocess.run([sys.executable, "-c", _PEAK, "--storage", str(big), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) > 300_000
    peak = int(re.findall(r"PEAK (\d+)", proc.stderr)[-1])
    assert peak < 3_500_000, f"{peak:,} bytes traced at the peak"  # holding them all: ~8 MB


@pytest.mark.parametrize("command", [["export"], ["logs", "--all"], ["logs", "--all", "--json"]])
def test_a_closed_pipe_ends_quietly_with_status_0(big: Path, tmp_path: Path, command: list[str]) -> None:
    proc = subprocess.Popen([KREPIS, *command, "--storage", str(big)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""


def test_run_survives_a_closed_pipe(tmp_path: Path) -> None:
    """`krepis run | head -1`: the script still runs, the kernel shuts down normally, status 0."""
    proc = subprocess.Popen([KREPIS, "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"krepis kernel booted")
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert b"Error" not in proc.stderr.read()
    with SovereignJournal(tmp_path / ".krepis" / "storage") as journal:
        assert journal.recover_op_count("js_ops_called") == 3  # the bootstrap ran to the end
        assert [e.op_name for e in journal.query(status=LogStatus.Failed)] == []
        assert journal.query(limit=1)[0].op_name == "kernel_shutdown"


def test_script_text_reaches_the_terminal_inert(tmp_path: Path) -> None:
    """What a script logs or throws is shown inert by `run`, and `logs` shows its error afterwards."""
    script = tmp_path / "evil.js"
    script.write_text('Krepis.ops.op_log_from_js("info", "\\x1b]0;pwned\\x07[/]\\nforged js line");\n'
                      'throw new Error("\\x1b[31m[/]\\nError: forged");\n')
    proc = krepis("run", str(script), cwd=tmp_path, ok=False)
    assert proc.returncode == 1
    assert RAW_CONTROL.search(proc.stderr) is None, repr(proc.stderr)
    logged = [line for line in proc.stderr.splitlines() if line.startswith("js info:")]
    assert logged == ["js info: \\x1b]0;pwned\\x07[/]\\nforged js line"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "\\x1b[31m[/]\\nError: forged" in errors[0]
    status, shown = on_terminal("logs", "--op", "kernel_error", cwd=tmp_path, cols=200)
    assert status == 0 and "MarkupError" not in shown
    assert RAW_CONTROL.search(visible(shown)) is None and "\\x1b[31m[/]\\nError: forged" in shown
