"""The CLI, run as a user runs it: the installed ``krepis`` command in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KREPIS = shutil.which("krepis", path=os.path.dirname(sys.executable)) or shutil.which("krepis")


def krepis(
    *args: str, cwd: Path, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    assert KREPIS, "the krepis command is not installed (pip install -e '.[test]')"
    full_env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    full_env.update(env or {})
    proc = subprocess.run([KREPIS, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def last_json(out: str) -> dict:  # type: ignore[type-arg]
    return json.loads(out.strip().splitlines()[-1])


def test_run_twice_carries_the_count_over(tmp_path: Path) -> None:
    first = krepis("run", cwd=tmp_path)
    assert "js_ops_called 0 → 3" in first.stdout
    assert (tmp_path / ".krepis" / "storage" / "data.mdb").is_file()
    second = last_json(krepis("run", "--json", cwd=tmp_path).stdout)
    assert second["recovered"] == 3
    assert second["js_ops_called"] == 6
    # per run: kernel_init, op_get_context ×2, op_log_from_js ×4, op_increment_stats ×3,
    # op_check_permission ×2, kernel_shutdown
    assert second["journal_entries"] == 26
    assert second["ok"] is True and second["ops_called"] == 7
    assert len(second["request_id"]) == 36
    third = krepis("run", cwd=tmp_path)
    assert "recovered         js_ops_called=6" in third.stdout
    assert "js_ops_called 6 → 9" in third.stdout


def test_stats(tmp_path: Path) -> None:
    krepis("run", cwd=tmp_path)
    assert json.loads(krepis("stats", "--json", cwd=tmp_path).stdout) == {
        "storage": str(tmp_path / ".krepis" / "storage"),
        "journal_entries": 13, "entries": {"live": 13, "archived": 0, "total": 13}, "archive": None,
        "op_counts": {"contexts_created": 1, "js_ops_called": 3, "op_get_context": 1, "op_log_from_js": 2,
                      "op_check_permission": 1}}
    piped = krepis("stats", cwd=tmp_path)
    assert "js_ops_called\t3" in piped.stdout.splitlines()  # plain lines when not a terminal
    assert "13 journal entries, 5 counters" in piped.stderr


def test_stats_on_an_empty_store_says_so(tmp_path: Path) -> None:
    from krepis import SovereignJournal

    SovereignJournal(tmp_path / "s").close()
    out = krepis("stats", "--storage", str(tmp_path / "s"), cwd=tmp_path).stdout
    assert out.startswith("no counters yet; 0 journal entries in ")
    assert json.loads(krepis("stats", "--json", "--storage", str(tmp_path / "s"), cwd=tmp_path).stdout) == {
        "storage": str(tmp_path / "s"), "journal_entries": 0,
        "entries": {"live": 0, "archived": 0, "total": 0}, "archive": None, "op_counts": {}}


def jsonl(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines()]


def test_logs_filters_and_json(tmp_path: Path) -> None:
    krepis("run", cwd=tmp_path)
    krepis("run", cwd=tmp_path)
    logs = jsonl(krepis("logs", "-n", "100", "--json", cwd=tmp_path).stdout)
    assert len(logs) == 26
    assert len(jsonl(krepis("logs", "--json", cwd=tmp_path).stdout)) == 20  # default -n 20
    assert set(logs[0]) >= {"timestamp", "op_name", "request_id", "status"}
    assert logs[0]["op_name"] == "kernel_shutdown"
    assert [e["timestamp"] for e in logs] == sorted((e["timestamp"] for e in logs), reverse=True)
    assert len(jsonl(krepis("logs", "-n", "2", "--json", cwd=tmp_path).stdout)) == 2
    inits = jsonl(krepis("logs", "--op", "kernel_init", "--json", cwd=tmp_path).stdout)
    assert [e["status"] for e in inits] == ["Started", "Started"]
    rid = inits[0]["request_id"]
    mine = jsonl(krepis("logs", "--request-id", rid, "--json", cwd=tmp_path).stdout)
    assert len(mine) == 13 and {e["request_id"] for e in mine} == {rid}
    done = jsonl(krepis("logs", "--status", "Completed", "-n", "99", "--json", cwd=tmp_path).stdout)
    assert len(done) == 16
    since = logs[0]["timestamp"]
    recent = jsonl(krepis("logs", "--since", str(since), "--json", cwd=tmp_path).stdout)
    assert recent and all(e["timestamp"] >= since for e in recent)
    plain = krepis("logs", "-n", "3", cwd=tmp_path).stdout.splitlines()
    assert len(plain) == 3 and plain[0].split("\t")[1:4] == ["kernel_shutdown", rid_of(logs[0]), "Completed"]


def rid_of(entry: dict) -> str:  # type: ignore[type-arg]
    return str(entry["request_id"])


def test_export_jsonl_oldest_first(tmp_path: Path) -> None:
    krepis("run", cwd=tmp_path)
    lines = krepis("export", cwd=tmp_path).stdout.splitlines()
    assert len(lines) == 13
    assert json.loads(lines[0])["op_name"] == "kernel_init"
    assert lines[1].startswith('{"seq":1,"timestamp":') and '"op_name":"op_get_context"' in lines[1]
    out = tmp_path / "trail.jsonl"
    proc = krepis("export", "-o", str(out), cwd=tmp_path)
    assert "exported 13 entries" in proc.stderr
    assert out.read_text().splitlines() == lines


def test_storage_option_and_environment_variable(tmp_path: Path) -> None:
    krepis("--storage", str(tmp_path / "a"), "run", cwd=tmp_path)
    krepis("run", cwd=tmp_path, env={"KREPIS_STORAGE": str(tmp_path / "b")})
    krepis("run", cwd=tmp_path, env={"KREPIS_STORAGE": str(tmp_path / "b")})
    a = json.loads(krepis("--storage", str(tmp_path / "a"), "stats", "--json", cwd=tmp_path).stdout)
    b_env = {"KREPIS_STORAGE": str(tmp_path / "b")}
    b = json.loads(krepis("stats", "--json", cwd=tmp_path, env=b_env).stdout)
    assert (a["op_counts"]["js_ops_called"], b["op_counts"]["js_ops_called"]) == (3, 6)
    after = json.loads(krepis("stats", "--json", "--storage", str(tmp_path / "a"), cwd=tmp_path).stdout)
    assert after == a  # --storage may also follow the command
    assert not (tmp_path / ".krepis").exists()


def test_clear_needs_yes(tmp_path: Path) -> None:
    krepis("run", cwd=tmp_path)
    refused = krepis("clear", cwd=tmp_path, ok=False)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    assert json.loads(krepis("stats", "--json", cwd=tmp_path).stdout)["op_counts"]["js_ops_called"] == 3
    assert "cleared 13 entries" in krepis("clear", "--yes", cwd=tmp_path).stdout
    assert json.loads(krepis("stats", "--json", cwd=tmp_path).stdout)["op_counts"] == {}
    [trace] = [json.loads(line) for line in krepis("logs", "--json", cwd=tmp_path).stdout.splitlines()]
    assert trace["op_name"] == "journal_cleared"
    assert re.fullmatch(r"cleared 13 entries, \d+ counters \(log 0 ended, log 1 begins\)",
                        trace["request_id"])


@pytest.mark.parametrize("command", ["run", "stats", "logs", "export", "clear", "metrics", "bench"])
def test_help_on_every_command(tmp_path: Path, command: str) -> None:
    out = krepis(command, "--help", cwd=tmp_path).stdout
    assert out.startswith(f"Usage: krepis {command}")
    assert not (tmp_path / ".krepis").exists()  # --help touches nothing


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--storage", "{file}", "stats"], "{file} exists and is not a directory"),
        (["--storage", "{garbage}", "logs"], "{garbage} is corrupted"),
        (["logs", "--since", "soon"], "'soon' is not a time; use ISO-8601"),
        (["logs", "--since", "²"], "'²' is not a time"),
        (["logs", "--until", "1700000000"], "'1700000000' looks like Unix seconds (2023-11-14 22:13:20 UTC)"),
        (["logs", "--since", "2026-02-30"], "'2026-02-30' is not a valid date/time"),
        (["logs", "-n", "-1"], "'-1' is not a number of entries >= 0 or 'all'"),
        (["logs", "--status", "Done"], "'Done' is not one of"),
    ],
)
def test_expected_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], words: str) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.mdb").write_bytes(b"\x01" * 8192)
    subst = {"{file}": str(tmp_path / "file"), "{garbage}": str(tmp_path / "garbage")}
    args = [subst.get(a, a) for a in args]
    for key, value in subst.items():
        words = words.replace(key, value)
    proc = krepis(*args, cwd=tmp_path, ok=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and words in error_lines[0], proc.stderr
    assert (tmp_path / "garbage" / "data.mdb").read_bytes() == b"\x01" * 8192


def test_module_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "krepis", "--version"], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.startswith("krepis, version")


def test_run_flush_option_and_environment(tmp_path: Path) -> None:
    out = last_json(krepis("run", "--flush", "interval:10ms", "--json", cwd=tmp_path).stdout)
    assert out["js_ops_called"] == 3
    out = last_json(krepis("run", "--json", cwd=tmp_path, env={"KREPIS_FLUSH": "interval:5ms"}).stdout)
    assert out["js_ops_called"] == 6
    bad = krepis("run", "--flush", "sometimes", cwd=tmp_path, ok=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "flush policy 'sometimes' is not valid" in bad.stderr


WRITE_ROWS = ["ceiling", "sqlite_full", "sqlite_normal", "sync_1", "interval_1", "sync_threads", "asyncio",
              "js_interval", "js_sync"]


def test_bench_smoke(tmp_path: Path) -> None:
    """The benchmark runs end to end (--quick, tiny sizes; speed itself is not tested here)."""
    proc = krepis("bench", "--quick", "--seconds", "0.05", "--large", "3000", "--json", cwd=tmp_path)
    result = json.loads(proc.stdout)
    rows = result["rows"]
    assert [r["key"] for r in rows] == WRITE_ROWS
    assert rows[0]["name"].startswith("disk ceiling")
    for row in rows:  # --quick: two interleaved rounds; medians, spread, CPU and ratios for each
        assert [r["round"] for r in row["rounds"]] == [1, 2]
        assert all(r["ops"] > 0 and r["cpu_us_per_op"] > 0 for r in row["rounds"])
        assert row["ops_per_s_min"] <= row["ops_per_s"] <= row["ops_per_s_max"]
        assert row["cpu_us_per_op"] > 0 and row["ratio_ceiling"] > 0 and row["ratio_sqlite_full"] > 0
    # round 1 of every row ran before round 2 of any
    assert max(r["rounds"][0]["order"] for r in rows) < min(r["rounds"][1]["order"] for r in rows)
    # the query rows ran on both sides (the bench itself checks both gave the same answers)
    queries = result["queries"]
    assert queries["sizes"] == [3000, 3000]
    for name in ("request-id lookup", "rare op, all matches", "status=Failed, limit 20",
                 "op + 1-second window", "get_recent_logs(100)"):
        assert queries["3000"][name]["krepis_us"] > 0 and queries["3000"][name]["sqlite_us"] > 0
    assert queries["3000"]["recover_op_count"]["krepis_us"] > 0
    assert queries["3000"]["journal_count"]["krepis_us"] > 0
    bulk = {b["key"]: b for b in result["bulk"]}
    assert list(bulk) == ["verify", "export", "archive", "migrate"]
    assert all(b["entries_per_s"] > 0 and b["cpu_us_per_entry"] > 0 for b in bulk.values())
    assert bulk["verify"]["entries"] == bulk["export"]["entries"] == bulk["migrate"]["entries"] == 3000
    assert bulk["archive"]["entries"] == 1792  # whole bundles of 256, the newest 1,000 kept
    assert [s["entries"] for s in result["size"]] == [1000, 3000]
    assert all("size-store/commit.log" in s["krepis_files"] for s in result["size"])
    core = [t for t in result["targets"] if not t["key"].startswith("web_")]
    assert len(core) == 16
    web = result.get("web")  # (the console's rows, with the web extra installed)
    assert len(result["targets"]) == 16 + (0 if web is None else len(web["reads"]) + 2)
    assert all(t["status"] in ("met", "missed") and t["met"] == (t["status"] == "met")
               for t in result["targets"])
    assert [p.name for p in tmp_path.iterdir()] == []  # temporary stores removed
    people = krepis("bench", "--rounds", "1", "--seconds", "0.02", "--large", "1000", cwd=tmp_path).stdout
    assert "disk ceiling" in people and "targets" in people and "queries" in people
    assert "ratios between rows are what counts" in people and "targets met" in people


@pytest.mark.parametrize("command", [["stats"], ["logs"], ["export"], ["clear", "--yes"]])
def test_reading_commands_never_create_a_store(tmp_path: Path, command: list[str]) -> None:
    proc = krepis(*command, cwd=tmp_path, ok=False)
    assert proc.returncode == 1
    assert f"Error: there is no krepis store at {tmp_path / '.krepis' / 'storage'}" in proc.stderr
    assert not (tmp_path / ".krepis").exists()


def test_metrics_text_and_server(tmp_path: Path) -> None:
    import re
    import urllib.error
    import urllib.request

    from krepis import SovereignJournal, prometheus_text

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.increment_op_count('we"ird\\op\nname')
        journal.increment_op_count("plain")
        journal.increment_op_count("plain")
    with SovereignJournal(store) as journal:  # (as the command will find it: data.mdb up to date)
        text = prometheus_text(journal)
    assert 'krepis_op_count_total{op="we\\"ird\\\\op\\nname"} 1' in text
    assert 'krepis_op_count_total{op="plain"} 2' in text
    assert "# TYPE krepis_op_count_total counter" in text and "krepis_journal_entries 0" in text
    for line in text.splitlines():  # every counter family and sample ends in _total
        if line.startswith("# TYPE") and line.endswith(" counter"):
            assert line.split()[2].endswith("_total"), line
    assert krepis("metrics", "--storage", str(store), cwd=tmp_path).stdout == text
    proc = subprocess.Popen([KREPIS, "--storage", str(store), "metrics", "--serve", "127.0.0.1:0"],
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"serving (http://127\.0\.0\.1:\d+)/metrics", line)
        assert match, line
        base = match.group(1)
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert 'krepis_op_count_total{op="plain"} 2' in response.read().decode()
        head = urllib.request.Request(base + "/metrics", method="HEAD")
        with urllib.request.urlopen(head, timeout=10) as response:
            assert response.status == 200 and response.read() == b""
            assert int(response.headers["Content-Length"]) > 0
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        port = base.rsplit(":", 1)[1]
        busy = krepis("metrics", "--storage", str(store), "--serve", f"127.0.0.1:{port}", cwd=tmp_path,
                      ok=False)
        assert busy.returncode == 1 and "Traceback" not in busy.stderr
        assert busy.stderr.strip().splitlines() == [
            f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"]
        with SovereignJournal(store) as journal:  # each scrape reads afresh
            journal.increment_op_count("plain")
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            assert 'krepis_op_count_total{op="plain"} 3' in response.read().decode()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/other", timeout=10)
        assert info.value.code == 404
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = krepis("metrics", "--storage", str(store), "--serve", "99999", cwd=tmp_path, ok=False)
    assert bad.returncode == 2 and "PORT 0–65535" in bad.stderr


def test_logs_follow(tmp_path: Path) -> None:
    import queue
    import threading

    from krepis import LogStatus, SovereignJournal, TransactionLog

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.log_transaction(TransactionLog(1, "wanted", "before", LogStatus.Completed))
        journal.log_transaction(TransactionLog(2, "other", "x", LogStatus.Completed))
    cmd = [KREPIS, "logs", "--storage", str(store), "-f", "--json", "-n", "1", "--op", "wanted"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        first = json.loads(lines.get(timeout=30))  # the last matching entry, printed at start
        assert first["request_id"] == "before"
        with SovereignJournal(store) as journal:
            for i in range(3):
                journal.log_transaction(TransactionLog(10 + i, "wanted", f"r{i}", LogStatus.Completed))
                journal.log_transaction(TransactionLog(10 + i, "other", f"x{i}", LogStatus.Completed))
        got = [json.loads(lines.get(timeout=30)) for _ in range(3)]
        assert [(e["op_name"], e["request_id"]) for e in got] == [("wanted", f"r{i}") for i in range(3)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_write_side_settings_never_break_reading_commands(tmp_path: Path) -> None:
    krepis("run", cwd=tmp_path)
    bogus = {"KREPIS_FLUSH": "whenever"}
    for command in (["stats"], ["logs"], ["export"], ["metrics"], ["logs", "--count"]):
        krepis(*command, cwd=tmp_path, env=bogus)
    krepis("clear", "--yes", cwd=tmp_path, env=bogus)
    bad = krepis("run", cwd=tmp_path, env=bogus, ok=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "KREPIS_FLUSH='whenever': flush policy 'whenever' is not valid" in bad.stderr


def test_errors_about_environment_values_name_the_variable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    proc = krepis("stats", cwd=tmp_path, env={"KREPIS_STORAGE": str(tmp_path / "file")}, ok=False)
    assert proc.stderr.strip().splitlines() == [
        f"Error: storage path {tmp_path / 'file'} exists and is not a directory "
        "(the storage location comes from KREPIS_STORAGE)"]
    proc = krepis("--storage", str(tmp_path / "file"), "stats", cwd=tmp_path, ok=False)
    assert "KREPIS_STORAGE" not in proc.stderr  # given on the command line: nothing to name


def test_a_storage_path_that_is_not_utf8_is_a_one_line_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    for args in ([b"--storage", b"s\xff", b"stats"], [b"logs", b"--storage", b"s\xff"]):
        proc = subprocess.run([os.fsencode(KREPIS or ""), *args], cwd=tmp_path, env=env, capture_output=True,
                              timeout=60)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "Traceback" not in err
        assert "Error: Invalid value for --storage: b's\\xff' is not valid UTF-8" in err
    proc = subprocess.run([os.fsencode(KREPIS or ""), b"stats"], cwd=tmp_path, capture_output=True,
                          timeout=60, env={**{os.fsencode(k): os.fsencode(v) for k, v in env.items()},
                               b"KREPIS_STORAGE": b"s\xff"})
    assert proc.returncode == 2 and b"(from KREPIS_STORAGE) is not valid UTF-8" in proc.stderr
    assert list(tmp_path.iterdir()) == []


UNREACHABLE = "postgresql://nobody@127.0.0.1:1/krepis_bench_must_not_be_touched"


def test_bench_never_uses_krepis_storage_from_the_environment(tmp_path: Path) -> None:
    proc = krepis("bench", "--seconds", "0.02", "--large", "1000", "--json", cwd=tmp_path,
                  env={"KREPIS_STORAGE": UNREACHABLE})
    result = json.loads(proc.stdout)
    assert [row["key"] for row in result["rows"]] == WRITE_ROWS


@pytest.mark.parametrize("storage", [UNREACHABLE, "./somewhere"])
def test_bench_storage_before_or_after_the_command_is_the_same(tmp_path: Path, storage: str) -> None:
    before = krepis("--storage", storage, "bench", "--seconds", "0.02", "--large", "1000", cwd=tmp_path,
                    ok=False)
    after = krepis("bench", "--seconds", "0.02", "--large", "1000", "--storage", storage, cwd=tmp_path,
                   ok=False)
    assert before.returncode == after.returncode != 0
    errors = [[line for line in p.stderr.splitlines() if line.startswith("Error:")] for p in (before, after)]
    assert errors[0] == errors[1] and len(errors[0]) == 1
    if storage == UNREACHABLE:
        assert "cannot connect to PostgreSQL at postgresql://nobody@127.0.0.1:1/" in errors[0][0]
    else:
        assert "only a postgresql:// URL adds rows" in errors[0][0]


def test_logs_follow_prints_every_entry_of_several_writer_processes_once(tmp_path: Path) -> None:
    """Following goes by sequence number: whatever the timestamps (here: out of order on
    purpose) and however the writers interleave, every appended entry is printed exactly once,
    in append order."""
    import queue
    import threading

    from krepis import LogStatus, SovereignJournal, TransactionLog

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.log_transaction(TransactionLog(1, "op", "ready", LogStatus.Completed))
    cmd = [KREPIS, "logs", "--storage", str(store), "-f", "--json", "-n", "1"]
    follower = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    lines: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in follower.stdout],  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    assert json.loads(lines.get(timeout=30))["request_id"] == "ready"  # following from here on
    writers = [subprocess.Popen([sys.executable, str(Path(__file__).parent / "workers.py"), "skewed",
                                 str(store), f"w{n}", "150"]) for n in range(4)]
    try:
        for w in writers:
            assert w.wait(timeout=120) == 0
        with SovereignJournal(store) as journal:
            appended = [e.request_id for e in journal.iter_logs(order="append", newest_first=False, after=0)]
        assert len(appended) == 600
        printed = [json.loads(lines.get(timeout=30))["request_id"] for _ in appended]
        assert printed == appended  # each once, in append order
        with pytest.raises(queue.Empty):
            lines.get(timeout=0.6)  # and nothing twice
    finally:
        for w in writers:
            w.kill()
        follower.terminate()
        follower.wait(timeout=10)
