"""The execution plane: real Deno, no permissions, ops over the kernel protocol."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from krepis import Kernel, LogStatus, SovereignJournal, ValidationError
from krepis.kernel import PermissionPolicy, ScriptError


def deno_children() -> list[int]:
    """Deno processes that are children of this test process (zombies included)."""
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = stat[stat.rindex(")") + 2:].split()[1]
        if ppid == me and "deno" in comm:
            found.append(int(pid))
    return found


@pytest.fixture
def kernel(store: Path):  # type: ignore[no-untyped-def]
    k = Kernel(store)
    results: list[object] = []

    @k.op("report")
    def report(value: object) -> None:
        results.append(value)

    k.results = results  # type: ignore[attr-defined]
    with k:
        yield k
    assert deno_children() == []  # no Deno process left behind, not even a zombie


def entries(store: Path) -> list[tuple[str, LogStatus, str | None]]:
    with SovereignJournal(store) as journal:
        return [(e.op_name, e.status, e.error) for e in journal.query(newest_first=False)]


# --- ops --------------------------------------------------------------------------------------

def test_builtin_ops(kernel: Kernel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="krepis.js")
    kernel.permissions.allow_read("/tmp/krepis/")
    result = kernel.run_script("""
        const ctx = Krepis.ops.op_get_context();
        Krepis.ops.report(ctx);
        for (const level of ["info", "warn", "error", "debug"]) Krepis.ops.op_log_from_js(level, `at ${level}`);
        Krepis.ops.report([Krepis.ops.op_increment_stats(), Krepis.ops.op_increment_stats()]);
        Krepis.ops.report([
          Krepis.ops.op_check_permission("read", "/tmp/krepis/data.json"),
          Krepis.ops.op_check_permission("read", "/etc/passwd"),
          Krepis.ops.op_check_permission("read", "/tmp/krepis/../../etc/passwd"),
          Krepis.ops.op_check_permission("write", "/tmp/krepis/out"),
          Krepis.ops.op_check_permission("net", "example.com:443"),
        ]);
    """)
    ctx, counts, perms = kernel.results  # type: ignore[attr-defined]
    assert ctx == {**kernel.context.to_dict(), "request_id": result.request_id}  # the run's own id
    assert set(ctx) == {"request_id", "tenant_id", "priority", "is_turbo_mode", "trace_id", "timestamp",
                        "metadata"}
    assert counts == [1, 2] and kernel.stats.js_ops_called == 2
    assert perms == [True, False, False, False, False]
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "krepis.js"] == [
        ("INFO", "at info"), ("WARNING", "at warn"), ("ERROR", "at error"), ("DEBUG", "at debug")]
    assert result.ops_called == 1 + 1 + 4 + 2 + 1 + 5 + 1
    counters = kernel.journal.op_counts()
    assert counters["op_log_from_js"] == 4 and counters["op_get_context"] == 1
    assert counters["op_check_permission"] == 5 and counters["js_ops_called"] == 2


def test_op_increment_stats_is_exactly_kernel_increment_stats(kernel: Kernel, store: Path) -> None:
    kernel.run_script("Krepis.ops.op_increment_stats();")
    kernel.increment_stats()
    ops = [e for e in entries(store) if e[0] == "op_increment_stats"]
    assert ops == [("op_increment_stats", LogStatus.Completed, None)] * 2
    assert kernel.journal.recover_op_count("js_ops_called") == 2


def test_python_ops_from_js_with_json_and_errors(kernel: Kernel, store: Path) -> None:
    @kernel.op("add")
    def add(a: float, b: float) -> dict[str, object]:
        return {"sum": a + b, "inputs": [a, b], "nested": {"ok": True, "none": None}}

    @kernel.op("fail")
    def fail(reason: str) -> None:
        raise ValueError(f"cannot: {reason}")

    @kernel.op("opaque")
    def opaque() -> object:
        return object()

    kernel.run_script("""
        Krepis.ops.report(Krepis.ops.add(2, 3.5));
        try { Krepis.ops.fail("disk on fire"); } catch (e) { Krepis.ops.report([e instanceof Error, e.name, e.message]); }
        try { Krepis.ops.opaque(); } catch (e) { Krepis.ops.report(e.message); }
        try { Krepis.ops.add(1); } catch (e) { Krepis.ops.report(e.name); }
        try { Krepis.ops.no_such_op(); } catch (e) { Krepis.ops.report(e.message); }
    """)
    added, failed, opaque_msg, missing_arg, unknown = kernel.results  # type: ignore[attr-defined]
    assert added == {"sum": 5.5, "inputs": [2, 3.5], "nested": {"ok": True, "none": None}}
    assert failed == [True, "ValueError", "cannot: disk on fire"]
    assert "returned a value that is not JSON" in opaque_msg
    assert missing_arg == "TypeError"
    assert "unknown op 'no_such_op'" in unknown
    log = entries(store)
    assert ("fail", LogStatus.Failed, "ValueError: cannot: disk on fire") in log
    assert kernel.journal.recover_op_count("add") == 2
    assert kernel.journal.recover_op_count("fail") == 1


def test_typescript_file_and_inline_source(kernel: Kernel, tmp_path: Path) -> None:
    script = tmp_path / "typed.ts"
    script.write_text("interface P { n: number }\nconst p: P = { n: 41 };\nKrepis.ops.report(p.n + 1);\n")
    kernel.run_script(script)
    kernel.run_script(str(script))
    kernel.run_script("const s: string = 'inline ts'; Krepis.ops.report(s);")
    assert kernel.results == [42, 42, "inline ts"]  # type: ignore[attr-defined]


def test_a_non_ascii_script_runs_whatever_the_hosts_locale(store: Path, tmp_path: Path) -> None:
    # The files a run writes for Deno (the script's copy, the prelude, which has "→" and "…"
    # in it, the import map) are UTF-8, as Deno reads them, also under an ASCII locale.
    code = (
        "import json, sys\n"
        "from krepis import Kernel\n"
        f"with Kernel({str(store)!r}) as k:\n"
        "    seen = []\n"
        "    k.op('report')(seen.append)\n"
        "    k.run_script(\"Krepis.ops.report('h\\u00e9 \\u2192 \\u4e16');\")\n"
        "    print(json.dumps(seen))\n")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == ["h\u00e9 \u2192 \u4e16"]


def test_script_argument_rules(kernel: Kernel, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="does not exist"):
        kernel.run_script(str(tmp_path / "missing.js"))
    with pytest.raises(ValidationError, match="empty"):
        kernel.run_script("   ")
    with pytest.raises(ValidationError, match="timeout"):
        kernel.run_script("1", timeout=-1)


# --- failure is journaled, never lost ---------------------------------------------------------

FAILURES = [
    ("syntax", "Krepis.ops.op_increment_stats(;", "SyntaxError: Expression expected (at <inline>:1:31)", 0),
    ("throw", "Krepis.ops.op_increment_stats(); throw new RangeError('out of range');",
     "RangeError: out of range", 1),
    ("reject", "Krepis.ops.op_increment_stats(); Krepis.ops.op_increment_stats(); "
               "Promise.reject(new Error('nobody caught me'));", "Error: nobody caught me", 2),
    ("async-throw", "Krepis.ops.op_increment_stats(); setTimeout(() => { throw new TypeError('later'); }, 1);",
     "TypeError: later", 1),
    ("unknown-op", "Krepis.ops.op_increment_stats(); Krepis.ops.does_not_exist();",
     "unknown op 'does_not_exist'", 1),
    ("exit-code", "Krepis.ops.op_increment_stats(); Deno.exit(7);", "exited with code 7", 1),
    ("garbage-stdout", "Krepis.ops.op_increment_stats(); Deno.stdout.writeSync(new TextEncoder().encode('hi\\n'));",
     "malformed message from the script", 1),
    ("oversized-frame", "Krepis.ops.op_increment_stats(); "
     "Deno.stdout.writeSync(new Uint8Array([0x4b,0x52,0x50,0x31,0xff,0xff,0xff,0xff]));",
     "exceeds the 16777216-byte limit", 1),
    ("oversized-call", "Krepis.ops.op_increment_stats(); Krepis.ops.op_log_from_js('info', 'x'.repeat(17 * 1024 * 1024));",
     "exceeds the 16777216-byte limit", 1),
    ("killed", "Krepis.ops.op_increment_stats(); Krepis.ops.kill_me(Deno.pid);", "killed by signal 9", 1),
]


@pytest.mark.parametrize(("source", "words", "completed"), [f[1:] for f in FAILURES], ids=[f[0] for f in FAILURES])
def test_failures_are_journaled(store: Path, source: str, words: str, completed: int) -> None:
    kernel = Kernel(store)

    @kernel.op("kill_me")
    def kill_me(pid: int) -> None:
        os.kill(pid, 9)

    with pytest.raises(ScriptError, match=re.escape(words)), kernel:
        kernel.run_script(source, timeout=60)
    log = entries(store)
    last = log[-1]
    assert last[0] == "kernel_error" and last[1] is LogStatus.Failed
    assert last[2] is not None and words in last[2]
    assert [e[0] for e in log].count("kernel_error") == 1  # once, not twice
    assert "kernel_shutdown" not in [e[0] for e in log]
    with SovereignJournal(store) as journal:  # what the script did before failing stays
        assert journal.recover_op_count("js_ops_called") == completed
        assert sum(1 for e in log if e[0] == "op_increment_stats") == completed
    assert deno_children() == []


def test_timeout_kills_deno(store: Path) -> None:
    with Kernel(store) as kernel:
        with pytest.raises(ScriptError, match="timed out after 1 s") as info:
            kernel.run_script("Krepis.ops.op_increment_stats(); while (true) {}", timeout=1)
        assert info.value.name == "Timeout"
        assert deno_children() == []
        # the kernel carries on after a failed script
        assert kernel.run_script("Krepis.ops.op_increment_stats();").ops_called == 1
        assert kernel.stats.js_ops_called == 2
    names = [e[0] for e in entries(store)]
    assert names.count("kernel_error") == 1 and names[-1] == "kernel_shutdown"


def test_script_error_message_and_stack(kernel: Kernel, tmp_path: Path) -> None:
    script = tmp_path / "thrower.js"
    script.write_text("function deep() { throw new Error('from deep'); }\ndeep();\n")
    with pytest.raises(ScriptError) as info:
        kernel.run_script(script)
    assert str(info.value) == f"Error: from deep (at {script}:1:25)"
    assert info.value.name == "Error" and info.value.location == f"{script}:1:25"
    assert info.value.stack is not None and f"{script}:1:25" in info.value.stack
    assert "krepis-js-" not in info.value.stack  # the private copy's path is not shown


# --- restart recovery, as in the spec's own test ------------------------------------------------

def test_restart_recovery_through_the_api(store: Path) -> None:
    with Kernel(store) as kernel:
        kernel.run_script("for (let i = 0; i < 5; i++) Krepis.ops.op_increment_stats();")
    last: list[int] = []
    kernel = Kernel(store)
    kernel.op("report")(last.append)
    with kernel:
        kernel.run_script("let n; for (let i = 0; i < 3; i++) n = Krepis.ops.op_increment_stats(); Krepis.ops.report(n);")
    assert last == [8]


def test_restart_recovery_through_the_cli(tmp_path: Path) -> None:
    krepis = Path(sys.executable).with_name("krepis")
    five = tmp_path / "five.js"
    five.write_text("for (let i = 0; i < 5; i++) Krepis.ops.op_increment_stats();")
    three = tmp_path / "three.js"
    three.write_text("let n; for (let i = 0; i < 3; i++) n = Krepis.ops.op_increment_stats();\n"
                     "Krepis.ops.op_log_from_js('info', `last=${n}`);")
    subprocess.run([krepis, "run", str(five)], cwd=tmp_path, check=True, capture_output=True)
    proc = subprocess.run([krepis, "run", str(three), "--json"], cwd=tmp_path, check=True,
                          capture_output=True, text=True)
    assert json.loads(proc.stdout.splitlines()[-1])["js_ops_called"] == 8
    assert "js info: last=8" in proc.stderr


# --- the sandbox --------------------------------------------------------------------------------

def test_sandbox_denies_files_env_net_and_processes(kernel: Kernel, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    watcher = threading.Thread(target=accept)
    watcher.start()
    os.environ["KREPIS_TEST_SECRET"] = "hunter2"
    try:
        kernel.run_script(f"""
            const attempts = {{
              read: () => Deno.readTextFileSync({json.dumps(str(secret))}),
              write: () => Deno.writeTextFileSync({json.dumps(str(tmp_path / "out.txt"))}, "x"),
              env: () => Deno.env.get("KREPIS_TEST_SECRET"),
              net: async () => {{ const c = await Deno.connect({{ hostname: "127.0.0.1", port: {port} }}); c.close(); }},
              fetch: async () => await fetch("http://127.0.0.1:{port}/"),
              run: () => new Deno.Command("/bin/sh", {{ args: ["-c", "echo pwned"] }}).outputSync(),
            }};
            const outcome = {{}};
            for (const [name, attempt] of Object.entries(attempts)) {{
              try {{ await attempt(); outcome[name] = "ALLOWED"; }}
              catch (e) {{ outcome[name] = e.name; }}
            }}
            Krepis.ops.report(outcome);
            Krepis.ops.report(Krepis.ops.op_increment_stats());  // ops still work
        """, timeout=60)
    finally:
        del os.environ["KREPIS_TEST_SECRET"]
        watcher.join()
        server.close()
    outcome, count = kernel.results  # type: ignore[attr-defined]
    assert outcome == {name: "NotCapable" for name in
                       ("read", "write", "env", "net", "fetch", "run")}, outcome
    assert count == 1
    assert accepted == []  # the connection never reached the listener
    assert not (tmp_path / "out.txt").exists()


# --- the permission policy ----------------------------------------------------------------------

def test_permission_policy(tmp_path: Path) -> None:
    assert not PermissionPolicy().check("read", "/tmp/krepis/a/b.json")  # nothing by default
    policy = PermissionPolicy(read=["/tmp/krepis/"])
    assert policy.check("read", "/tmp/krepis/a/b.json")
    assert policy.check("read", "/tmp/krepis")
    assert not policy.check("read", "/tmp/krepis-other/x")  # a prefix is not a parent
    assert not policy.check("read", "/tmp/krepis/../etc/passwd")
    assert not policy.check("write", "/tmp/krepis/x")
    link = tmp_path / "link"
    link.symlink_to("/etc")
    policy.allow_read(tmp_path)
    assert policy.check("read", str(tmp_path / "file"))
    assert not policy.check("read", str(link / "passwd"))  # a symlink out of the root
    policy.allow_write(tmp_path / "out")
    assert policy.check("write", str(tmp_path / "out" / "x"))
    policy.allow_net("example.com")
    policy.allow_net("db.internal:5432")
    assert policy.check("net", "example.com:443") and policy.check("net", "example.com")
    assert policy.check("net", "db.internal:5432") and not policy.check("net", "db.internal:80")
    with pytest.raises(ValidationError, match="unknown permission 'exec'"):
        policy.check("exec", "/bin/sh")


def test_cli_allow_read_timeout_and_failure(tmp_path: Path) -> None:
    krepis = Path(sys.executable).with_name("krepis")
    probe = tmp_path / "probe.js"
    probe.write_text(f"Krepis.ops.op_log_from_js('info', 'allowed=' + "
                     f"Krepis.ops.op_check_permission('read', {json.dumps(str(tmp_path / 'data'))}));")
    denied = subprocess.run([krepis, "run", str(probe)], cwd=tmp_path, capture_output=True, text=True)
    assert "allowed=false" in denied.stderr
    allowed = subprocess.run([krepis, "run", str(probe), "--allow-read", str(tmp_path)], cwd=tmp_path,
                             capture_output=True, text=True)
    assert "allowed=true" in allowed.stderr
    hang = tmp_path / "hang.js"
    hang.write_text("while (true) {}")
    proc = subprocess.run([krepis, "run", str(hang), "--timeout", "1", "--json"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert json.loads(proc.stdout.splitlines()[-1])["ok"] is False
    assert "Error: script failed: the script timed out after 1 s" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- how a run that goes wrong is named ---------------------------------------------------------

_FRAME = "(b) => { const n = new TextEncoder().encode(b); const f = new Uint8Array(8 + n.length); " \
         "f.set([0x4b, 0x52, 0x50, 0x31]); new DataView(f.buffer).setUint32(4, n.length); f.set(n, 8); " \
         "Deno.stdout.writeSync(f); }"


@pytest.mark.parametrize(("source", "limits", "name", "message"), [
    ("console.error('first'); console.error('last words'); Deno.exit(3);", {}, "DenoExited",
     "Deno exited with code 3 before the script finished: last words"),
    ("Deno.exit(4);", {}, "DenoExited", "Deno exited with code 4 before the script finished: no output"),
    ("console.error('x'.repeat(600)); Deno.exit(5);", {}, "DenoExited",
     "Deno exited with code 5 before the script finished: " + "x" * 500),
    ("Deno.stderr.writeSync(new Uint8Array([0x62, 0xff, 0x0a])); Deno.exit(6);", {}, "DenoExited",
     "Deno exited with code 6 before the script finished: b\ufffd"),
    (f"({_FRAME})('{{\"x\":1}}'); await new Promise((r) => setTimeout(r, 60000));", {}, "ProtocolError",
     "unexpected message from the script: b'{\"x\":1}'"),
    ("for (let i = 0; i < 5; i++) Krepis.ops.op_increment_stats();", {"max_ops": 3}, "OpLimit",
     "the script exceeded its limit of 3 op calls and was killed"),
], ids=["last-line", "no-output", "long-line", "not-utf8", "unexpected", "op-limit"])
def test_a_failed_run_is_named_exactly(kernel: Kernel, source: str, limits: dict[str, int], name: str,
                                       message: str) -> None:
    with pytest.raises(ScriptError) as caught:
        kernel.run_script(source, stderr=io.BytesIO(), timeout=60, **limits)  # type: ignore[arg-type]
    assert (caught.value.name, str(caught.value)) == (name, message)


def test_console_output_goes_to_this_process_stderr_by_default(kernel: Kernel,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    kernel.run_script("console.log('hello from js'); console.error('and again');")
    err = capfd.readouterr().err
    assert "hello from js\n" in err and "and again\n" in err


def test_a_host_whose_stderr_has_no_bytes_layer_drops_console_output(
        kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    text_only = io.StringIO()
    monkeypatch.setattr(sys, "stderr", text_only)
    assert kernel.run_script("console.log('dropped'); Krepis.ops.op_increment_stats();").ops_called == 1
    assert text_only.getvalue() == ""
