"""A stack trace reads no file: however a script names a file for Deno to show a line of — an
inline or external source map, a ``sourceURL`` — in whatever module or Worker, thrown however,
the file's text appears nowhere (the script's output, stderr, the ScriptError, the journal)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import pytest

import krepis.kernel._landlock as landlock
from krepis import Kernel, SovereignJournal
from krepis.kernel import ScriptError

TOKEN = f"KREPIS_STACK_SECRET_{uuid.uuid4().hex}"


class Secret:
    """A file only the token's holder could know, and source maps that point Deno at it."""

    def __init__(self, root: Path) -> None:
        root.mkdir()
        self.path = root / "secret.txt"  # every line is the token: whichever line Deno shows
        self.path.write_text("".join(f"{TOKEN} line {i}\n" for i in range(1, 9)))
        self.url = self.path.as_uri()
        source_map = {"version": 3, "sources": [self.url], "names": [], "mappings": "AAAA;AACA;AACA;AACA"}
        self.inline_map = "data:application/json;base64," + base64.b64encode(
            json.dumps(source_map).encode()).decode()
        self.map_file = root / "secret.map"  # an external map: its own text holds the token too
        self.map_file.write_text(json.dumps({**source_map, "sourcesContent": [TOKEN], "names": [TOKEN]}))

    def inline(self, **fields: object) -> str:
        """An inline source map (a data: URL) mapping lines 1-4 to the secret's lines 1-4."""
        source_map = {"version": 3, "sources": [self.url], "names": [], "mappings": "AAAA;AACA;AACA;AACA",
                      **fields}
        return "data:application/json;base64," + base64.b64encode(json.dumps(source_map).encode()).decode()

    def throwers(self) -> dict[str, str]:
        """Module sources that throw with a file named for Deno to show (each throws on line 1)."""
        sourceurl = f"throw new Error('x');\n//# sourceURL={self.url}\n"
        throw = "throw new Error('x');\n//# sourceMappingURL="
        return {
            "inline-map": f"throw new Error('x');\n//# sourceMappingURL={self.inline_map}\n",
            "inline-map-path": throw + self.inline(sources=[str(self.path)]) + "\n",
            "inline-map-source-root": throw + self.inline(sourceRoot="file:///",
                                                          sources=[str(self.path).lstrip("/")]) + "\n",
            "inline-map-null-content": throw + self.inline(sourcesContent=[None]) + "\n",
            "inline-map-promise": (f"await Promise.reject(new Error('p'));\n"
                                   f"//# sourceMappingURL={self.inline_map}\n"),
            "map-file-url": f"throw new Error('x');\n//# sourceMappingURL={self.map_file.as_uri()}\n",
            "map-file-path": f"throw new Error('x');\n//# sourceMappingURL={self.map_file}\n",
            "eval-sourceurl": f"eval({json.dumps(sourceurl)});\n",
            "function-sourceurl": f"new Function({json.dumps(sourceurl)})();\n",
            "sourceurl-self": f"throw new Error('x');\n//# sourceURL={self.url}\n",
        }


@pytest.fixture
def secret(tmp_path: Path) -> Secret:
    return Secret(tmp_path / "secrets")


def run(store: Path, source: str) -> tuple[list[object], ScriptError | None, str]:
    """Run ``source``; assert the token is nowhere; return what it reported, its error, stderr."""
    kernel = Kernel(store)
    reported: list[object] = []
    kernel.op("report")(reported.append)
    err = io.BytesIO()
    failure: ScriptError | None = None
    with kernel:
        try:
            # Workers reserve V8 address space of their own: more room than one isolate needs.
            kernel.run_script(source, stderr=err, timeout=60, memory_limit_mb=2048)
        except ScriptError as exc:
            failure = exc
    with SovereignJournal(store) as journal:
        logged = [json.dumps(e.to_dict(), default=str)
                  for e in journal.query(newest_first=False, limit=10_000)]
    stderr = err.getvalue().decode("utf-8", "replace")
    for where, text in (("reported", json.dumps(reported, default=str)), ("error", str(failure)),
                        ("stack", str(failure and failure.stack)), ("stderr", stderr),
                        ("journal", "\n".join(logged))):
        assert TOKEN not in text, f"the secret leaked into {where}: {text[:600]}"
    return reported, failure, stderr


def js(text: str) -> str:
    return json.dumps(text)


def blob_url(source: str) -> str:
    return f"URL.createObjectURL(new Blob([{js(source)}], {{ type: 'text/javascript' }}))"


def data_url(source: str) -> str:
    return js("data:text/javascript;base64," + base64.b64encode(source.encode()).decode())


#: Each way to start code in a Worker: ``{src}`` is the thrower's source.
WORKERS = {
    "module-blob": "new Worker({blob}, {{ type: 'module' }})",
    "module-data": "new Worker({data}, {{ type: 'module' }})",
    "classic-blob": "new Worker({blob})",
    "node-data": "new (await import('node:worker_threads')).Worker(new URL({data}))",
    "node-eval": "new (await import('node:worker_threads')).Worker({src}, {{ eval: true }})",
}


def landlock_modes() -> list[str]:
    return ["landlock", "no-landlock"] if landlock.abi_version() else ["no-landlock"]


@pytest.fixture(params=landlock_modes())
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """With Landlock (where the kernel has it) and as on a system without it."""
    if request.param == "no-landlock":
        monkeypatch.setattr(landlock, "_version", 0)
    return str(request.param)


@pytest.mark.parametrize("how", list(WORKERS))
def test_a_workers_uncaught_error_shows_no_file(store: Path, secret: Secret, how: str, mode: str) -> None:
    """Each Worker fails with every thrower; its onerror reports the event; the run goes on."""
    starts = []
    for name, src in secret.throwers().items():
        start = WORKERS[how].format(blob=blob_url(src), data=data_url(src), src=js(src))
        starts.append(f"""
          try {{
            const w = {start};
            seen[{js(name)}] = await new Promise((resolve) => {{
              const done = (what) => {{ try {{ w.terminate(); }} catch {{}} resolve(what); }};
              if (w.on) {{ w.on("error", (e) => done("error " + String(e && e.stack)));
                           w.on("exit", (code) => done("exit " + code)); }}
              else w.onerror = (e) => {{
                e.preventDefault();
                done([e.message, e.filename, e.lineno, String(e.error)].join(" | "));
              }};
            }});
          }} catch (e) {{ seen[{js(name)}] = "refused " + e; }}
        """)
    source = "const seen = {};\n" + "".join(starts) + "Krepis.ops.report(seen);\n"
    reported, failure, stderr = run(store, source)
    assert failure is None, failure
    (seen,) = reported
    assert isinstance(seen, dict) and set(seen) == set(secret.throwers()), seen
    if mode == "landlock" and how in ("module-blob", "module-data", "node-data"):
        # Deno did try: its reports name the file (the name is the script's own; the text is not)
        assert f"{secret.url}:1:1" in stderr, stderr


@pytest.mark.parametrize("name", [
    "inline-map", "inline-map-path", "inline-map-source-root", "inline-map-null-content",
    "inline-map-promise", "map-file-url", "map-file-path", "eval-sourceurl", "function-sourceurl",
    "sourceurl-self"])
@pytest.mark.parametrize("where", ["main", "data-import", "blob-import", "worker-unhandled"])
def test_an_uncaught_error_shows_no_file(store: Path, secret: Secret, name: str, where: str,
                                        mode: str) -> None:
    """Thrown uncaught — in the script itself, a data:/blob: module, a Worker nobody handles —
    the run fails with the error, and no file's text is anywhere."""
    src = secret.throwers()[name]
    source = {
        "main": src,
        "data-import": f"await import({data_url(src)});",
        "blob-import": f"await import({blob_url(src)});",
        "worker-unhandled": (f"new Worker({blob_url(src)}, {{ type: 'module' }});\n"
                             "await new Promise(() => setInterval(() => {}, 1000));"),
    }[where]
    _reported, failure, _stderr = run(store, source)
    assert failure is not None and ("Error: x" in str(failure) or "Error: p" in str(failure)), failure


def test_stacks_the_script_reads_itself_show_no_file(store: Path, secret: Secret, mode: str) -> None:
    """Caught errors, their stack, Deno.inspect, console.error/trace, Error.prepareStackTrace:
    frames may name the file (the script named it), never show its text."""
    tries = []
    for name, src in secret.throwers().items():
        if "promise" in name or name.startswith("map-"):
            continue  # a module thing; evaluated below through a data: import
        tries.append(f"""
          try {{ eval({js(src)}); }} catch (e) {{
            out.push(String(e.stack), Deno.inspect(e));
            console.error(e); console.error(e.stack);
          }}
        """)
    maps = js([src for name, src in secret.throwers().items() if name.startswith("map-")])
    trace = js(f"console.trace('here');\n//# sourceURL={secret.url}\n")
    caught = js(f"throw new Error('y');\n//# sourceURL={secret.url}\n")
    last = js(f"throw new Error('last');\n//# sourceURL={secret.url}\n")
    source = "const out = [];\n" + "".join(tries) + f"""
        for (const src of {maps}) {{
          try {{ await import("data:text/javascript;base64," + btoa(src)); }}
          catch (e) {{ out.push(String(e.stack), Deno.inspect(e)); console.error(e); }}
        }}
        eval({trace});
        Error.prepareStackTrace = (error, sites) => sites.map((s) => [s.getFileName(), s.getLineNumber(),
            s.getColumnNumber(), s.getFunctionName(), s.getEvalOrigin(), String(s)].join(" ")).join("; ");
        try {{ eval({caught}); }} catch (e) {{ out.push(String(e.stack)); }}
        delete Error.prepareStackTrace;
        Krepis.ops.report(out);
        eval({last});
    """
    reported, failure, _stderr = run(store, source)
    assert failure is not None and "Error: last" in str(failure)
    (out,) = reported
    assert isinstance(out, list) and any(secret.url in str(text) for text in out), out


def test_without_landlock_deno_stderr_is_not_shown(store: Path, secret: Secret,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A system without Landlock: the stream gets one line saying why, nothing of Deno's."""
    monkeypatch.setattr(landlock, "_version", 0)
    _reported, failure, stderr = run(store, "console.error('hello from the script'); Deno.exit(3);")
    assert "hello from the script" not in stderr and "no Landlock" in stderr
    assert failure is not None and failure.name == "DenoExited" and "code 3" in str(failure)
    assert "hello" not in str(failure)


@pytest.mark.skipif(not landlock.abi_version(), reason="this kernel has no Landlock")
def test_landlock_lets_deno_open_only_its_share(store: Path, tmp_path: Path, secret: Secret) -> None:
    """Under Landlock a symlink in a granted root leads nowhere outside the roots, whatever Deno's
    own permissions say; the granted root itself and the system's files (time zones) work."""
    from krepis.kernel import PermissionPolicy

    granted = tmp_path / "granted"
    granted.mkdir()
    (granted / "in.txt").write_text("inside")
    (granted / "link.txt").symlink_to(secret.path)
    kernel = Kernel(store, permissions=PermissionPolicy(read=[str(granted)]))
    seen: list[object] = []
    kernel.op("report")(seen.append)
    g = js(str(granted))
    with kernel:
        kernel.run_script(f"""
            const out = {{}};
            for (const name of ["in.txt", "link.txt"]) {{
              try {{ out[name] = Deno.readTextFileSync({g} + "/" + name); }}
              catch (e) {{ out[name] = e.name; }}
            }}
            out.zone = typeof Intl.DateTimeFormat().resolvedOptions().timeZone;
            Krepis.ops.report(out);
        """, stderr=io.BytesIO())
    assert seen == [{"in.txt": "inside", "link.txt": "PermissionDenied", "zone": "string"}]
