"""Every run is bounded (memory, time, op calls, storage) and never outlives its host; hostile
messages and errors are reported as what they are (issue 11, resources and signals)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import krepis.kernel._plane as plane
from krepis import Kernel, LogStatus, SovereignJournal
from krepis.kernel import ScriptError

FRAME_JS = """
const frame = (message) => {
  const body = new TextEncoder().encode(typeof message === "string" ? message : JSON.stringify(message));
  const f = new Uint8Array(8 + body.length);
  f.set([0x4b, 0x52, 0x50, 0x31]);
  new DataView(f.buffer).setUint32(4, body.length);
  f.set(body, 8);
  return f;
};
"""


def journal_of(store: Path) -> list[tuple[str, LogStatus, str | None, str]]:
    with SovereignJournal(store) as journal:
        return [(e.op_name, e.status, e.error, e.request_id)
                for e in journal.query(newest_first=False, limit=100_000)]


def fails_with(store: Path, source: str, **limits: object) -> ScriptError:
    """Run ``source`` expecting a ScriptError; check it is journaled exactly once as kernel_error."""
    with Kernel(store) as kernel:
        with pytest.raises(ScriptError) as info:
            kernel.run_script(source, stderr=io.BytesIO(), **limits)  # type: ignore[arg-type]
    errors = [e for e in journal_of(store) if e[0] == "kernel_error"]
    assert len(errors) == 1 and errors[0][1] is LogStatus.Failed
    assert str(info.value)[:50] in str(errors[0][2])
    return info.value


def deno_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


# --- memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("source", "words"), [
    ("const b = new ArrayBuffer(8 * 2 ** 30); new Uint8Array(b).fill(1); Krepis.ops.op_increment_stats();",
     "Array buffer allocation failed"),
    ("const a = []; for (;;) { const b = new Uint8Array(32 << 20); b.fill(1); a.push(b); }",
     "Array buffer allocation failed"),
    ("const a = []; for (;;) a.push({ x: Math.random(), y: 'k' + Math.random() });", "and was ended"),
    ("const m = new WebAssembly.Memory({ initial: 65536 }); new Uint8Array(m.buffer).fill(1);",
     "WebAssembly.Memory(): could not allocate memory"),
    ("const m = new WebAssembly.Memory({ initial: 1, maximum: 65536 });\n"
     "for (let i = 1; i < 65536; i += 256) { m.grow(256); new Uint8Array(m.buffer).fill(1, i * 65536); }",
     "Unable to grow"),
], ids=["8GiB-buffer", "buffers", "v8-heap", "wasm-memory", "wasm-grow"])
def test_memory_limit(store: Path, source: str, words: str) -> None:
    error = fails_with(store, source, memory_limit_mb=64, timeout=120)
    assert error.name == "MemoryLimit"
    assert str(journal_of(store)[-2][2]).startswith("MemoryLimit: the script ran out")  # named as documented
    assert "memory limit of 64 MiB" in str(error) and words in str(error)
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("js_ops_called") == 0


def test_memory_limit_default_and_validation(store: Path) -> None:
    assert plane.DEFAULT_MEMORY_LIMIT_MB == 512
    with Kernel(store) as kernel:
        for bad in (0, 15, -1, 1.5, "64"):
            with pytest.raises(ValueError, match="memory_limit_mb"):
                kernel.run_script("1", memory_limit_mb=bad)  # type: ignore[arg-type]
        # 300 MiB of buffers fit under the default
        big = "const b = new Uint8Array(300 << 20); b.fill(1); Krepis.ops.op_increment_stats();"
        assert kernel.run_script(big, stderr=io.BytesIO()).ops_called == 1


# --- time and op calls ----------------------------------------------------------------------

def test_default_timeout_applies_and_zero_means_none(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plane.DEFAULT_TIMEOUT == 300
    monkeypatch.setattr(plane, "DEFAULT_TIMEOUT", 1.0)
    error = fails_with(store, "while (true) {}")
    assert error.name == "Timeout" and "timed out after 1 s" in str(error)
    with Kernel(store) as kernel:  # 0: no limit (the script ends on its own after > 1 s)
        result = kernel.run_script("const end = Date.now() + 1500; while (Date.now() < end) {}", timeout=0)
        assert result.ops_called == 0


def test_timeout_fires_when_the_script_floods_calls_without_reading_replies(store: Path) -> None:
    """Both pipes full: the host must not block writing a reply."""
    source = FRAME_JS + """
        const f = frame({ id: 1, op: "op_get_context", args: [] });
        for (;;) Deno.stdout.writeSync(f);
    """
    outcome: list[object] = []

    def go() -> None:
        try:
            with Kernel(store) as kernel:
                kernel.run_script(source, timeout=2)
        except ScriptError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the host blocked writing to the script; the timeout never fired"
    (error,) = outcome
    assert isinstance(error, ScriptError) and error.name == "Timeout"


def test_max_ops(store: Path) -> None:
    error = fails_with(store, "for (let i = 0; i < 10; i++) Krepis.ops.op_increment_stats();", max_ops=3)
    assert error.name == "OpLimit" and "limit of 3 op calls" in str(error)
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("js_ops_called") == 3  # the ones within the cap ran
    with Kernel(store) as kernel:
        assert kernel.run_script("Krepis.ops.op_increment_stats();", max_ops=1).ops_called == 1
        with pytest.raises(ValueError, match="max_ops"):
            kernel.run_script("1", max_ops=-1)


@pytest.mark.parametrize("limit", [0, 1, 3])
def test_max_ops_allows_exactly_n_calls(store: Path, limit: int) -> None:
    """max_ops=N: N calls run and the (N+1)-th — of any op — is OpLimit and never runs; so
    max_ops=0 allows none: the first call ends the run."""
    with Kernel(store) as kernel:  # exactly N calls: the run succeeds
        ops = "Krepis.ops.op_increment_stats();" * limit
        assert kernel.run_script(ops or "1", max_ops=limit, stderr=io.BytesIO()).ops_called == limit
    ran: list[int] = []
    with Kernel(store) as kernel, pytest.raises(ScriptError) as info:  # N + 1: OpLimit
        kernel.op("user_op")(ran.append)
        kernel.run_script("for (let i = 0; i < 10; i++) { Krepis.ops.op_increment_stats(); "
                          "Krepis.ops.user_op(i); }", max_ops=limit, stderr=io.BytesIO())
    assert info.value.name == "OpLimit" and f"limit of {limit} op calls" in str(info.value)
    assert ran == list(range(limit // 2))  # the calls alternate: N of them ran, no more
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("js_ops_called") == limit + (limit + 1) // 2
        assert journal.recover_op_count("user_op") == limit // 2
    errors = [e for e in journal_of(store) if e[0] == "kernel_error"]
    assert len(errors) == 1 and str(errors[0][2]).startswith(f"OpLimit: the script exceeded its limit of "
                                                             f"{limit} op calls")


# --- no storage outlives a run --------------------------------------------------------------

def test_no_storage_outlives_a_run(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # where Deno's default cache would be
    monkeypatch.setenv("DENO_DIR", str(home / "deno"))
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # other processes share /tmp
    seen: list[object] = []
    kernel = Kernel(store)
    kernel.op("report")(seen.append)
    with kernel:
        for _ in range(2):
            kernel.run_script("""
                Krepis.ops.report([localStorage.getItem("channel"), typeof caches, typeof CacheStorage]);
                localStorage.setItem("channel", "from an earlier run");
                sessionStorage.setItem("x", "y");
            """)
    assert seen == [[None, "undefined", "undefined"]] * 2  # nothing carried over; no Cache API
    assert list(home.iterdir()) == []
    assert list(private_tmp.iterdir()) == []  # each run's directory was removed


# --- hostile messages and errors ------------------------------------------------------------

@pytest.mark.parametrize(("source", "name", "words"), [
    (FRAME_JS + "const s = '['.repeat(100000) + ']'.repeat(100000);"
     "Deno.stdout.writeSync(frame('{\"id\":1,\"op\":\"op_get_context\",\"args\":' + s + '}'));"
     "Deno.stdin.readSync(new Uint8Array(8));", "ProtocolError", "nested deeper than 512"),
    (FRAME_JS + "Deno.stdout.writeSync(frame('{\"id\":1,\"op\":\"op_get_context\",\"args\":[1e999999]}'));"
     "Deno.stdin.readSync(new Uint8Array(8));", "Error", ""),
    (FRAME_JS + "Deno.stdout.writeSync(frame('[1,2]'));", "ProtocolError", "not an object"),
    (FRAME_JS + "Deno.stdout.writeSync(frame('{\"id\":{\"x\":1},\"op\":\"a\",\"args\":[]}'));",
     "ProtocolError", "is not an integer"),
    (FRAME_JS + "Deno.stdout.writeSync(frame('\\xff\\xfe'));", "ProtocolError", "malformed message"),
    ("throw new Error('x'.repeat(20 * 1024 * 1024));", "Error", "Error: xxxx"),
    ("class E extends Error { get message() { throw new Error('gotcha'); } get name() { throw 1; } }\n"
     "throw new E();", "Error", "Error: "),
    ("throw new Proxy({}, { getPrototypeOf() { throw 1; }, get() { throw 2; }, ownKeys() { throw 3; } });",
     "Error", "Uncaught"),
    ("JSON.stringify = () => { throw new Error('tampered'); }; TextEncoder.prototype.encode = () => null;\n"
     "throw new TypeError('still reported');", "TypeError", "TypeError: still reported"),
    ("const e = new Error('fake'); e.name = 'MemoryLimit'; throw e;", "Error", "Error: MemoryLimit: fake"),
    (FRAME_JS + "Deno.stdout.writeSync(frame({ t: 'error', name: 'Timeout', message: 'forged' }));",
     "Error", "Error: Timeout: forged"),
    (FRAME_JS + "Deno.stdout.writeSync(frame('{\"id\":1,\"op\":\"op_get_context\",\"args\":['"
     " + '9'.repeat(5000) + ']}'));"
     "Deno.stdin.readSync(new Uint8Array(8));", "ProtocolError", "malformed message"),
], ids=["deep-json", "huge-number", "array-message", "bad-id", "bad-utf8", "20MB-message", "throwing-getters",
        "hostile-proxy", "tampered-globals", "forged-limit-name", "forged-limit-frame", "huge-int"])
def test_hostile_messages_and_errors_are_script_errors(store: Path, source: str, name: str,
                                                       words: str) -> None:
    with Kernel(store) as kernel:
        try:
            kernel.run_script(source, stderr=io.BytesIO(), timeout=60)
        except ScriptError as exc:
            error: ScriptError | None = exc
        else:
            error = None
    if name == "Error" and words == "":  # a huge number is a float: the call itself is fine
        assert error is None
        return
    assert error is not None
    assert error.name == name, (error.name, str(error)[:200])
    assert words in str(error)
    assert "Deno exited" not in str(error)
    assert len(str(error)) <= plane.MAX_ERROR_TEXT + 200
    (entry,) = [e for e in journal_of(store) if e[0] == "kernel_error"]
    assert entry[2] is not None and len(entry[2].encode()) <= 16 * 1024


def test_console_output_is_capped(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plane, "MAX_STDERR_BYTES", 1000)
    sink = io.BytesIO()
    with Kernel(store) as kernel:
        result = kernel.run_script("for (let i = 0; i < 2000; i++) console.log('y'.repeat(500));"
                                   "Krepis.ops.op_increment_stats();", stderr=sink)
    assert result.ops_called == 1  # the script ran to its end, its output was drained
    out = sink.getvalue()
    assert out.startswith(b"y" * 500)
    assert out.endswith(b"[krepis: the script's output was cut at 1000 bytes]\n")
    assert len(out) < 1100


# --- signals and the host's death -----------------------------------------------------------

CHILD = """
import sys
from krepis import Kernel
kernel = Kernel(sys.argv[1])

@kernel.op("ready")
def ready(pid, url):
    print(pid, url, flush=True)

with kernel:
    kernel.run_script("Krepis.ops.ready(Deno.pid, import.meta.url); console.error('spinning'); for (;;) {}",
                      timeout=0)
"""


def default_signals() -> None:
    """In the child: the default disposition of the signals under test, even where the suite runs
    under ``nohup`` (an ignored SIGHUP is inherited, and krepis rightly leaves it ignored)."""
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen[str], int, Path]:
    # the run's directory goes below tmp_path: a SIGKILLed host cannot remove it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, preexec_fn=default_signals)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    pid, url = line.split()
    spinning(proc)
    return proc, int(pid), Path(url.removeprefix("file://")).parent.parent


def spinning(proc: subprocess.Popen[str]) -> None:
    """Wait until the script has its reply and spins: from now on only a signal ends Deno."""
    assert proc.stderr is not None
    while (line := proc.stderr.readline()) and "spinning" not in line:
        pass
    assert line


def wait_gone(pid: int) -> bool:
    for _ in range(200):
        if not deno_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_to_a_python_process_in_run_script(store: Path, tmp_path: Path,
                                                  signum: signal.Signals) -> None:
    proc, deno_pid, workdir = start([sys.executable, "-c", CHILD, str(store)], tmp_path)
    try:
        assert deno_alive(deno_pid) and workdir.is_dir()
        os.kill(proc.pid, signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert not deno_alive(deno_pid)
    assert not workdir.exists()
    errors = [e for e in journal_of(store) if e[0] == "kernel_error"]
    assert len(errors) == 1 and errors[0][2] is not None and signum.name in errors[0][2]
    assert "kernel_shutdown" not in [e[0] for e in journal_of(store)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_to_krepis_run(tmp_path: Path, signum: signal.Signals) -> None:
    krepis = Path(sys.executable).with_name("krepis")
    script = tmp_path / "spin.js"
    script.write_text("Krepis.ops.op_log_from_js('info', `${Deno.pid} ${import.meta.url}`);\n"
                      "console.error('spinning'); for (;;) {}")
    proc = subprocess.Popen([krepis, "run", str(script), "--timeout", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(tmp_path)}, preexec_fn=default_signals)
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        pid_text, url = line.removeprefix("js info: ").split()
        spinning(proc)
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=60) == 128 + signum
    finally:
        proc.kill()
        proc.wait()
    assert not deno_alive(int(pid_text))
    assert not Path(url.removeprefix("file://")).parent.parent.exists()
    errors = [e for e in journal_of(tmp_path / ".krepis" / "storage") if e[0] == "kernel_error"]
    assert len(errors) == 1 and errors[0][2] is not None and signum.name in errors[0][2]


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """The default handlers of the signals krepis turns into interruptions (a test runner, such as
    mutmut's worker, may have installed its own), restored afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
    saved[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def test_setup_and_cleanup_are_not_cut_by_a_signal(default_handlers: None) -> None:
    """A signal inside a shielded section is raised when the section is done, not in it."""
    steps: list[str] = []
    with pytest.raises(plane.ScriptInterrupted) as info, plane.interruptible():
        with plane.shielded():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes, here
                pass
            steps.append("cleanup finished")
            os.kill(os.getpid(), signal.SIGHUP)  # a second signal is ignored
            for _ in range(1000):
                pass
            steps.append("still here")
        steps.append("not reached")
    assert info.value.signum == signal.SIGTERM
    assert steps == ["cleanup finished", "still here"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    with pytest.raises(KeyboardInterrupt), plane.interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass


def test_deno_dies_with_a_killed_host(store: Path, tmp_path: Path) -> None:
    proc, deno_pid, _workdir = start([sys.executable, "-c", CHILD, str(store)], tmp_path)
    try:
        assert deno_alive(deno_pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    gone = wait_gone(deno_pid)
    if not gone:
        os.kill(deno_pid, signal.SIGKILL)  # do not leave it spinning
    assert gone, "Deno outlived its SIGKILLed host"


def test_run_script_json_for_the_summary(tmp_path: Path) -> None:
    """krepis run --json names the limit that ended a run."""
    krepis = Path(sys.executable).with_name("krepis")
    script = tmp_path / "many.js"
    script.write_text("for (let i = 0; i < 5; i++) Krepis.ops.op_increment_stats();")
    proc = subprocess.run([krepis, "run", str(script), "--max-ops", "2", "--json"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["error_name"] == "OpLimit" and summary["js_ops_called"] == 2
