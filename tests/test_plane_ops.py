"""Honest ops in the journal, one request id per run, permissions that mean what Deno users
expect, and errors that say where (issue 11: ops, usability, PermissionPolicy)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
import json
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from krepis import InvalidTypeError, Kernel, LogStatus, OpError, SovereignJournal, ValidationError
from krepis.kernel import PermissionPolicy, ScriptError


def journal_of(store: Path) -> list[tuple[str, LogStatus, str | None, str]]:
    with SovereignJournal(store) as journal:
        return [(e.op_name, e.status, e.error, e.request_id) for e in journal.query(newest_first=False)]


# --- ops are honest -------------------------------------------------------------------------

async def _async_op() -> int:
    return 1


class _AsyncCallable:
    async def __call__(self) -> int:
        return 1


@pytest.mark.parametrize("fn", [_async_op, functools.partial(_async_op), _AsyncCallable()],
                         ids=["async-def", "partial", "async-call"])
def test_async_ops_are_refused_at_registration(store: Path, fn: Any) -> None:
    kernel = Kernel(store)
    with pytest.raises(InvalidTypeError, match="'later' is an async function"):
        kernel.op("later")(fn)
    assert "later" not in kernel.ops


def test_results_that_cannot_reach_the_script_are_failed(store: Path) -> None:
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    kernel.op("when")(lambda: dt.datetime(2026, 1, 1))
    kernel.op("sneaky")(lambda: _async_op())  # a plain function returning a coroutine
    kernel.op("deep")(lambda: functools.reduce(lambda acc, _: [acc], range(100_000), []))
    kernel.op("fine")(lambda: {"ok": [1, 2]})
    with kernel:
        kernel.run_script("""
            for (const name of ["when", "sneaky", "deep", "fine"]) {
              try { Krepis.ops.report([name, "ok", Krepis.ops[name]()]); }
              catch (e) { Krepis.ops.report([name, e.name, e.message]); }
            }
        """)
        with pytest.raises(OpError, match="awaitable"):
            kernel.call("sneaky")
    by_name = {r[0]: r[1:] for r in seen}  # type: ignore[index]
    assert by_name["when"][0] == "OpError" and "not JSON" in by_name["when"][1]
    assert "datetime" in by_name["when"][1]
    assert by_name["sneaky"][0] == "OpError" and "coroutine" in by_name["sneaky"][1]
    assert by_name["deep"][0] == "OpError" and "not JSON" in by_name["deep"][1]
    assert by_name["fine"] == ["ok", {"ok": [1, 2]}]
    log = journal_of(store)
    for name in ("when", "sneaky", "deep"):
        statuses = [e[1] for e in log if e[0] == name]
        assert LogStatus.Completed not in statuses, name
        failed = [e[2] for e in log if e[0] == name and e[1] is LogStatus.Failed]
        assert failed and all(f and "OpError" in f for f in failed), (name, failed)
    assert [e[1] for e in log if e[0] == "fine"] == [LogStatus.Started, LogStatus.Completed]


# --- one request id per run -----------------------------------------------------------------

def test_each_run_has_its_own_request_id(store: Path) -> None:
    kernel = Kernel(store)
    contexts: list[Any] = []
    kernel.op("report")(contexts.append)
    with kernel:
        probe = "Krepis.ops.report(Krepis.ops.op_get_context()); Krepis.ops.op_increment_stats();"
        first = kernel.run_script(probe)
        second = kernel.run_script(probe)
        chosen = kernel.run_script("Krepis.ops.op_increment_stats();", request_id="job-42")
        with pytest.raises(ScriptError):
            kernel.run_script("Krepis.ops.op_increment_stats(); throw new Error('x');", request_id="job-43")
        with pytest.raises(ValidationError, match="request_id"):
            kernel.run_script("1", request_id="")
        boot_id = kernel.context.request_id
    assert first.request_id and second.request_id and first.request_id != second.request_id
    assert str(uuid.UUID(first.request_id)) == first.request_id
    assert [c["request_id"] for c in contexts] == [first.request_id, second.request_id]
    assert chosen.request_id == "job-42"
    by_rid: dict[str, list[str]] = {}
    for name, _status, _error, rid in journal_of(store):
        by_rid.setdefault(rid, []).append(name)
    assert by_rid[first.request_id] == ["op_get_context", "op_get_context", "report", "report",
                                        "op_increment_stats"]
    assert by_rid[second.request_id] == by_rid[first.request_id]
    assert by_rid["job-42"] == ["op_increment_stats"]
    assert by_rid["job-43"] == ["op_increment_stats", "kernel_error"]
    assert by_rid[boot_id] == ["kernel_init", "kernel_shutdown"]


# --- the permission policy ------------------------------------------------------------------

def test_policy_roots_are_pinned_and_never_everything(tmp_path: Path) -> None:
    to_root = tmp_path / "to-root"
    to_root.symlink_to("/")
    with pytest.raises(ValidationError, match="resolves to '/'"):
        PermissionPolicy().allow_read(to_root)
    with pytest.raises(ValidationError, match="resolves to '/'"):
        PermissionPolicy(read=["/"])
    # a root that later becomes a symlink to / grants nothing, not everything
    data = tmp_path / "data"
    data.mkdir()
    policy = PermissionPolicy()
    policy.allow_read(data)
    assert policy.check("read", str(data / "x.json"))
    data.rmdir()
    data.symlink_to("/")
    assert not policy.check("read", str(data / "etc" / "passwd"))
    assert not policy.check("read", "/etc/passwd")
    assert policy.deno_flags() == []
    # a root added to the list directly is pinned on first use
    other = tmp_path / "other"
    other.mkdir()
    policy.read.append(str(other))
    assert policy.check("read", str(other / "f"))
    other.rmdir()
    other.symlink_to("/etc")
    assert not policy.check("read", "/etc/passwd") and not policy.check("read", str(other / "passwd"))


def test_policy_targets_and_hosts_are_validated(tmp_path: Path) -> None:
    policy = PermissionPolicy(read=[str(tmp_path)])
    with pytest.raises(ValidationError, match="relative"):
        policy.check("read", "data/x.json")
    with pytest.raises(ValidationError, match="relative"):
        policy.check("write", ".")
    for bad in ("example.com:0", "example.com:65536", "example.com:http", "exa mple.com", "a:b:c",
                "[::1", "[nothost]:80", ""):
        with pytest.raises(ValidationError):
            policy.allow_net(bad)
        with pytest.raises(ValidationError):
            policy.check("net", bad)
    policy.allow_net("[::1]:8080")
    policy.allow_net("Example.COM")
    assert policy.check("net", "[::1]:8080") and not policy.check("net", "[::1]:8081")
    assert policy.check("net", "example.com:443")
    with pytest.raises(ValidationError, match="','"):
        policy.allow_read(tmp_path / "a,b")
    with pytest.raises(InvalidTypeError):
        PermissionPolicy(read="/srv")  # type: ignore[arg-type]


def test_relative_roots_resolve_against_the_directory_at_grant_time(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    policy = PermissionPolicy(read=["data"])
    policy.allow_write("data")
    assert policy.read == [str(tmp_path / "data")] and policy.write == [str(tmp_path / "data")]
    monkeypatch.chdir("/")
    assert policy.check("read", str(tmp_path / "data" / "x")) and not policy.check("read", "/data/x")
    assert policy.deno_flags() == [f"--allow-read={tmp_path / 'data'}", f"--allow-write={tmp_path / 'data'}"]


def test_granted_paths_and_hosts_are_real_deno_permissions(store: Path, tmp_path: Path) -> None:
    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "in.txt").write_text("inside")
    (granted / "mod.js").write_text("export default 'module';")
    (tmp_path / "outside.txt").write_text("outside")
    out = tmp_path / "out"
    out.mkdir()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    other_port = other.getsockname()[1]
    accepted: list[object] = []
    watcher = threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True)
    watcher.start()
    kernel = Kernel(store, permissions=PermissionPolicy(read=[str(granted)], write=[str(out)],
                                                        net=[f"127.0.0.1:{port}"]))
    seen: list[Any] = []
    kernel.op("report")(seen.append)
    g, o, m = json.dumps(str(granted)), json.dumps(str(out)), json.dumps(str(granted / "mod.js"))
    try:
        with kernel:
            kernel.run_script(f"""
                const tries = {{
                  readGranted: () => Deno.readTextFileSync({g} + "/in.txt"),
                  readOutside: () => Deno.readTextFileSync({json.dumps(str(tmp_path / "outside.txt"))}),
                  readEscape: () => Deno.readTextFileSync({g} + "/../outside.txt"),
                  importGranted: async () => (await import({g} + "/mod.js")).default,
                  importGrantedLiteral: async () => (await import({m})).default,
                  writeGranted: () => Deno.writeTextFileSync({o} + "/new.txt", "written"),
                  writeOutside: () => Deno.writeTextFileSync({json.dumps(str(tmp_path / "no.txt"))}, "x"),
                  net: async () => {{ const c = await Deno.connect({{ hostname: "127.0.0.1", port: {port} }});
                                      c.close(); return "connected"; }},
                  netOtherPort: async () => {{ const c = await Deno.connect({{ hostname: "127.0.0.1",
                                                                                port: {other_port} }});
                                               c.close(); }},
                  env: () => Deno.env.get("HOME"),
                }};
                const out = {{}};
                for (const [k, f] of Object.entries(tries)) {{
                  try {{ out[k] = ["ok", await f()]; }} catch (e) {{ out[k] = [e.name]; }}
                }}
                Krepis.ops.report(out);
                Krepis.ops.report([Krepis.ops.op_check_permission("read", {g} + "/in.txt"),
                                   Krepis.ops.op_check_permission("net", "127.0.0.1:{port}")]);
            """, stderr=io.BytesIO())
    finally:
        watcher.join(5)
        server.close()
        other.close()
    results, answers = seen
    assert results["readGranted"] == ["ok", "inside"]
    assert results["writeGranted"][0] == "ok" and (out / "new.txt").read_text() == "written"
    assert results["net"] == ["ok", "connected"] and accepted
    for denied in ("readOutside", "readEscape", "writeOutside", "netOtherPort", "env"):
        assert results[denied] == ["NotCapable"], (denied, results[denied])
    for refused in ("importGranted", "importGrantedLiteral"):  # imports stay the script alone
        assert results[refused] == ["TypeError"], (refused, results[refused])
    assert answers == [True, True]


# --- usability ------------------------------------------------------------------------------

def test_errors_say_where(store: Path, tmp_path: Path) -> None:
    script = tmp_path / "broken.ts"
    script.write_text("const a: number = 1;\nconst b = (;\n")
    with Kernel(store) as kernel, pytest.raises(ScriptError) as info:
        kernel.run_script(script, stderr=io.BytesIO())
    assert info.value.name == "SyntaxError"
    assert str(info.value).startswith("SyntaxError: ")
    assert info.value.location == f"{script}:2:12"
    assert "TypeError" not in str(info.value)
    nested = tmp_path / "nested.js"
    nested.write_text("function f() {\n  null.x;\n}\nf();\n")
    with Kernel(store) as kernel, pytest.raises(ScriptError) as info:
        kernel.run_script(nested, stderr=io.BytesIO())
    assert info.value.name == "TypeError" and info.value.location == f"{nested}:2:8"
    assert str(info.value).endswith(f"(at {nested}:2:8)")


def test_a_file_without_a_script_suffix_is_refused(store: Path, tmp_path: Path) -> None:
    plain = tmp_path / "job.txt"
    plain.write_text("Krepis.ops.op_increment_stats();")
    with Kernel(store) as kernel:
        for given in (plain, str(plain)):
            with pytest.raises(ValidationError, match=r"job\.txt"):
                kernel.run_script(given)  # type: ignore[arg-type]
        assert kernel.stats.js_ops_called == 0
    krepis = Path(sys.executable).with_name("krepis")
    proc = subprocess.run([krepis, "run", str(plain)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "job.txt" in proc.stderr and "suffix" in proc.stderr
    assert "ReferenceError" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / ".krepis").exists()  # refused before the kernel booted


def test_cli_help_says_what_the_flags_grant() -> None:
    krepis = Path(sys.executable).with_name("krepis")
    text = subprocess.run([krepis, "run", "--help"], capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.split())
    assert "Deno's --allow-net" in flat and "Deno's --allow-write" in flat and "Deno's --allow-" in flat
    assert "default 300" in flat and "--memory-limit" in flat
    assert "--max-ops" in flat and "import nothing but itself" in flat


def test_cli_allow_net_lets_deno_connect(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    script = tmp_path / "connect.js"
    script.write_text(f"const c = await Deno.connect({{ hostname: '127.0.0.1', port: {port} }}); c.close();\n"
                      "Krepis.ops.op_log_from_js('info', 'connected');")
    krepis = Path(sys.executable).with_name("krepis")
    try:
        denied = subprocess.run([krepis, "run", str(script)], cwd=tmp_path, capture_output=True, text=True)
        allowed = subprocess.run([krepis, "run", str(script), "--allow-net", f"127.0.0.1:{port}"],
                                 cwd=tmp_path, capture_output=True, text=True)
    finally:
        server.close()
    assert denied.returncode == 1 and "NotCapable" in denied.stderr
    assert "grant it with PermissionPolicy / krepis run --allow-net" in denied.stderr  # a flag that works
    assert allowed.returncode == 0 and "js info: connected" in allowed.stderr
    bad = subprocess.run([krepis, "run", str(script), "--allow-net", "host:99999"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "99999" in bad.stderr


def test_asyncio_is_still_usable_inside_a_sync_op(store: Path) -> None:
    """The documented way to call async code from an op."""
    kernel = Kernel(store)
    kernel.op("fetch_value")(lambda: asyncio.run(_async_op()))
    seen: list[object] = []
    kernel.op("report")(seen.append)
    with kernel:
        kernel.run_script("Krepis.ops.report(Krepis.ops.fetch_value());")
    assert seen == [1]


def test_a_reply_larger_than_the_pipe_reaches_the_script_whole(store: Path) -> None:
    """A reply of several MiB fills the pipe many times over: the host writes it in parts, waiting
    for the script to read, and every byte arrives (a script's replies are not cut short)."""
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    kernel.op("big")(lambda n: "é" * n)
    with kernel:
        kernel.run_script("""
            const s = Krepis.ops.big(3000000);
            Krepis.ops.report([s.length, s === "é".repeat(3000000)]);
        """)
    assert seen == [[3000000, True]]
