"""The module graph of a script reaches nothing but the script: no file, environment or existence
leaks through imports, whatever the route (issue 11, critical)."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import pytest

from krepis import Kernel, SovereignJournal
from krepis.kernel import ScriptError

SECRET = f"KREPIS_TOPSECRET_{uuid.uuid4().hex}"


@pytest.fixture
def secrets(tmp_path: Path) -> dict[str, Path]:
    """Files holding SECRET, next to where the scripts live, in every format an import takes."""
    root = tmp_path / "secrets"
    root.mkdir()
    files = {
        "json": root / "secret.json",
        "text": root / "secret.txt",
        "js": root / "secret.js",
        "firstline": root / "shadow",  # no suffix: Deno parses it as JavaScript
    }
    files["json"].write_text(json.dumps({"key": SECRET}))
    files["text"].write_text(SECRET + "\n")
    files["js"].write_text(f"export default {json.dumps(SECRET)};\n")
    files["firstline"].write_text(f"{SECRET}:$6$hunter2:19000:0:99999:7:::\n")  # a SyntaxError quotes it
    link = root / "link.json"
    link.symlink_to(files["json"])
    files["link"] = link
    return files


def run(store: Path, source: str, script_dir: Path | None = None, name: str = "probe.js") -> tuple[
        list[object], ScriptError | None, str, list[str]]:
    """Run ``source`` (as a file in ``script_dir`` when given); return what it reported, its
    error, its stderr and every error text in the journal."""
    kernel = Kernel(store)
    reported: list[object] = []
    kernel.op("report")(reported.append)
    err = io.BytesIO()
    failure: ScriptError | None = None
    target: str | Path = source
    if script_dir is not None:
        target = script_dir / name
        target.write_text(source)
    with kernel:
        try:
            # Workers reserve V8 address space of their own: more room than one isolate needs.
            kernel.run_script(target, stderr=err, timeout=60, memory_limit_mb=1536)
        except ScriptError as exc:
            failure = exc
    with SovereignJournal(store) as journal:
        errors = [e.error or "" for e in journal.query(newest_first=False, limit=10_000)]
    return reported, failure, err.getvalue().decode("utf-8", "replace"), errors


def assert_no_leak(*texts: object) -> None:
    for text in texts:
        shown = json.dumps(text, default=str) if not isinstance(text, str) else text
        assert SECRET not in shown, f"the secret leaked: {shown[:300]}"
        assert "hunter2" not in shown


STATIC = {
    "json": 'import s from "{json}" with {{ type: "json" }}; Krepis.ops.report(s);',
    "text": 'import s from "{text}" with {{ type: "text" }}; Krepis.ops.report(s);',
    "bytes": 'import s from "{text}" with {{ type: "bytes" }}; Krepis.ops.report(Array.from(s));',
    "js": 'import s from "{js}"; Krepis.ops.report(s);',
    "file-url": 'import s from "file://{json}" with {{ type: "json" }}; Krepis.ops.report(s);',
    "localhost-url": 'import s from "file://localhost{json}" with {{ type: "json" }}; Krepis.ops.report(s);',
    "relative": 'import s from "./secrets/secret.json" with {{ type: "json" }}; Krepis.ops.report(s);',
    "parent-relative": 'import s from "../{rel_json}" with {{ type: "json" }}; Krepis.ops.report(s);',
    "symlink": 'import s from "{link}" with {{ type: "json" }}; Krepis.ops.report(s);',
    "syntax-error-quote": 'import s from "{firstline}"; Krepis.ops.report(s);',
    "proc-environ": 'import s from "/proc/self/environ" with {{ type: "text" }}; Krepis.ops.report(s);',
    "reexport": 'export {{ default }} from "{js}"; Krepis.ops.report(1);',
    "jsx-import-source": '/** @jsxImportSource file://{root} */\nKrepis.ops.report(1);',
}


@pytest.mark.parametrize("vector", list(STATIC))
def test_static_imports_read_nothing(store: Path, tmp_path: Path, secrets: dict[str, Path],
                                     vector: str) -> None:
    here = tmp_path / "scripts"
    here.mkdir()
    (here / "secrets").symlink_to(secrets["json"].parent)
    source = STATIC[vector].format(
        json=secrets["json"], text=secrets["text"], js=secrets["js"], link=secrets["link"],
        firstline=secrets["firstline"], root=secrets["json"].parent,
        rel_json=os.path.relpath(secrets["json"], tmp_path))
    name = "probe.jsx" if vector == "jsx-import-source" else "probe.js"
    reported, failure, stderr, errors = run(store, source, here, name)
    assert_no_leak(reported, str(failure), failure and failure.stack, stderr, errors)
    if vector == "jsx-import-source":  # no JSX in the script: nothing is imported at all
        assert failure is None and reported == [1]
        return
    assert failure is not None and reported == [], vector


def test_dynamic_imports_and_other_routes_read_nothing(store: Path, tmp_path: Path,
                                                       secrets: dict[str, Path]) -> None:
    """Every other route in one script: each must throw, none may return the secret."""
    pid = os.getpid()  # Deno's parent: the environment of this very process
    os.environ["KREPIS_TEST_ENV_SECRET"] = SECRET
    j, t, js, link = (json.dumps(str(secrets[k])) for k in ("json", "text", "js", "link"))
    data_module = json.dumps(
        f'data:text/javascript,export default (await import({j}, {{with: {{type: "json"}}}})).default')
    worker_src = json.dumps(
        f'import s from "file://{secrets["json"]}" with {{type: "json"}}; postMessage(s);')
    blob_src = json.dumps(f'export {{ default }} from "file://{secrets["js"]}";')
    here_url = json.dumps("./secrets/secret.json")
    source = f"""
        const worker = (url) => new Promise((resolve, reject) => {{
          const w = new Worker(url, {{ type: "module" }});
          w.onmessage = (m) => {{ w.terminate(); resolve(m.data); }};
          w.onerror = (e) => {{ e.preventDefault(); w.terminate(); reject(new Error(String(e.message))); }};
        }});
        const attempts = {{
          literalJson: () => import({j}, {{ with: {{ type: "json" }} }}),
          literalText: () => import({t}, {{ with: {{ type: "text" }} }}),
          literalJs: () => import({js}),
          literalFirstLine: () => import({json.dumps(str(secrets["firstline"]))}),
          literalSymlink: () => import({link}, {{ with: {{ type: "json" }} }}),
          computed: () => import([{j}][0], {{ with: {{ type: "json" }} }}),
          ppidEnviron: () => import(`/proc/${{Deno.ppid}}/environ`, {{ with: {{ type: "text" }} }}),
          literalPpidEnviron: () => import("/proc/{pid}/environ", {{ with: {{ type: "text" }} }}),
          literalPpidEnvironAsJs: () => import("/proc/{pid}/environ"),
          literalPpidEnvironFileUrl: () => import("file:///proc/{pid}/environ"),
          selfEnviron: () => import("/proc/self/environ", {{ with: {{ type: "text" }} }}),
          devStdin: () => import("/dev/stdin"),
          metaResolve: () => import(import.meta.resolve({j}), {{ with: {{ type: "json" }} }}),
          newUrl: () => import(new URL({here_url}, import.meta.url).href, {{ with: {{ type: "json" }} }}),
          dataModule: () => import({data_module}),
          blobModule: () => import(URL.createObjectURL(new Blob([{blob_src}], {{ type: "text/javascript" }})
                                   )),
          workerFile: () => worker("file://" + {j}),
          workerData: () => worker("data:text/javascript," + encodeURIComponent({worker_src})),
          fetchFile: () => fetch("file://" + {j}).then((r) => r.text()),
          nodeRequire: async () => {{
            const {{ createRequire }} = await import("node:module");
            return createRequire(import.meta.url)({j});
          }},
          nodeFs: async () => (await import("node:fs")).readFileSync({j}, "utf8"),
          nodeWorker: async () => {{
            const {{ Worker: NodeWorker }} = await import("node:worker_threads");
            return await new Promise((resolve, reject) => {{
              const w = new NodeWorker({js});
              w.on("message", resolve);
              w.on("error", reject);
            }});
          }},
          processEnv: async () => (await import("node:process")).env.KREPIS_TEST_ENV_SECRET,
          denoEnv: () => Deno.env.get("KREPIS_TEST_ENV_SECRET"),
          jsr: () => import("jsr:@std/path"),
          npm: () => import("npm:left-pad"),
          remote: () => import("https://example.com/x.js"),
        }};
        const outcome = {{}};
        for (const [name, attempt] of Object.entries(attempts)) {{
          try {{
            const got = await attempt();
            outcome[name] = "ALLOWED " + JSON.stringify(got);
          }} catch (e) {{
            outcome[name] = String(e && e.message);
          }}
        }}
        Krepis.ops.report(outcome);
    """
    here = tmp_path / "scripts"
    here.mkdir()
    (here / "secrets").symlink_to(secrets["json"].parent)
    try:
        reported, failure, stderr, errors = run(store, source, here)
    finally:
        del os.environ["KREPIS_TEST_ENV_SECRET"]
    assert failure is None, failure
    assert_no_leak(reported, stderr, errors)
    (outcome,) = reported
    assert isinstance(outcome, dict)
    allowed = {name: text for name, text in outcome.items() if str(text).startswith("ALLOWED")}
    assert allowed == {}, allowed
    # a SyntaxError's code frame would show the start of this process's environment
    first = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[0].decode("utf-8", "replace")
    shown = json.dumps(outcome, ensure_ascii=False) + stderr + json.dumps(errors)
    assert len(first) < 8 or first[:40] not in shown, first


def test_imports_do_not_tell_whether_a_path_exists(store: Path, tmp_path: Path,
                                                   secrets: dict[str, Path]) -> None:
    """An existing and a missing file, a readable and an unreadable one: the same answer."""
    missing = secrets["json"].parent / "missing.json"
    probes = {"exists": secrets["json"], "missing": missing, "dir": secrets["json"].parent,
              "root-only": Path("/root/.bashrc"), "etc": Path("/etc/hostname")}
    source = "const out = {};\n" + "".join(
        f"try {{ await import({json.dumps(str(p))}, {{ with: {{ type: 'json' }} }}); "
        f"out[{json.dumps(k)}] = 'LOADED'; }} catch (e) {{ out[{json.dumps(k)}] = "
        f"e.name + ': ' + e.message.split({json.dumps(str(p))}).join('<P>'); }}\n"
        for k, p in probes.items()) + "Krepis.ops.report(out);"
    reported, failure, _stderr, _errors = run(store, source)
    assert failure is None, failure
    (outcome,) = reported
    assert isinstance(outcome, dict)
    assert len(set(outcome.values())) == 1, outcome
    # and for static imports: the whole run fails the same way
    texts = []
    for path in (secrets["json"], missing):
        _r, failure, _s, _e = run(
            store, f'import s from "{path}" with {{ type: "json" }}; Krepis.ops.report(s);')
        assert failure is not None
        texts.append(str(failure).replace(str(path), "<P>"))
    assert texts[0] == texts[1]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
@pytest.mark.parametrize("where", ["file", "inline"])
def test_external_source_maps_are_not_read(store: Path, tmp_path: Path, encoding: str, where: str) -> None:
    """Deno would read a source map named in the script's magic comment and show its sources."""
    source_map = tmp_path / "secret.map"
    source_map.write_text(json.dumps({"version": 3, "sources": [SECRET], "names": [SECRET],
                                      "mappings": "AAAA;AACA", "sourcesContent": [SECRET]}))
    source = (f"function f() {{ throw new Error('boom'); }}\nf();\n//# sourceMappingURL={source_map}\n"
              f"//# sourceMappingURL = file://{source_map}\n")
    kernel = Kernel(store)
    with kernel, pytest.raises(ScriptError) as info:
        if where == "file":
            script = tmp_path / "mapped.js"
            script.write_bytes(source.encode(encoding))  # "utf-16" writes a BOM
            kernel.run_script(script, stderr=io.BytesIO())
        else:
            kernel.run_script(source, stderr=io.BytesIO())
    assert_no_leak(str(info.value), info.value.stack)
    assert info.value.location is not None and info.value.location.endswith(":1:22")


def test_a_config_file_next_to_the_script_changes_nothing(store: Path, tmp_path: Path,
                                                          secrets: dict[str, Path]) -> None:
    """deno.json / package.json / an import map beside the script are not read."""
    here = tmp_path / "project"
    here.mkdir()
    mapping = {"imports": {"secret": f"file://{secrets['json']}"}}
    (here / "deno.json").write_text(json.dumps(mapping))
    (here / "import_map.json").write_text(json.dumps(mapping))
    (here / "package.json").write_text(
        json.dumps({"name": "x", "imports": {"#secret": str(secrets["json"])}}))
    for specifier in ("secret", "#secret"):
        reported, failure, stderr, errors = run(
            store, f'import s from "{specifier}" with {{ type: "json" }}; Krepis.ops.report(s);', here)
        assert failure is not None and reported == []
        assert_no_leak(str(failure), stderr, errors)


def test_the_script_is_run_from_a_private_copy(store: Path, tmp_path: Path) -> None:
    """A script given as a symlink runs as its target's text, from a copy only krepis writes."""
    real = tmp_path / "real.js"
    real.write_text("Krepis.ops.report(import.meta.url);")
    link = tmp_path / "link.js"
    link.symlink_to(real)
    kernel = Kernel(store)
    urls: list[object] = []
    kernel.op("report")(urls.append)
    with kernel:
        kernel.run_script(link)
    (url,) = urls
    assert isinstance(url, str) and url.startswith("file://") and "krepis-js-" in url
    assert not Path(url.removeprefix("file://")).exists()  # removed with the run


@pytest.mark.parametrize("name", ["main.js", "my job (1) ü#?.ts", "import_map.json.js", "prelude.mjs"])
def test_any_script_name_runs_as_itself(store: Path, tmp_path: Path, name: str) -> None:
    """The script's copy never collides with the prelude, whatever its name."""
    script = tmp_path / name
    script.write_text("Krepis.ops.report(Krepis.ops.op_increment_stats()); throw new Error('here');")
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    with kernel, pytest.raises(ScriptError) as info:
        kernel.run_script(script, stderr=io.BytesIO())
    assert seen == [1]
    assert info.value.location == f"{script}:1:59"
    assert info.value.stack is not None and f"at {script}:1:59" in info.value.stack


def test_commonjs_require_reads_nothing(store: Path, tmp_path: Path, secrets: dict[str, Path]) -> None:
    """A .cjs script has `require`: it is held to the read permissions like Deno.readFile."""
    here = tmp_path / "scripts"
    here.mkdir()
    (here / "secrets").symlink_to(secrets["json"].parent)
    j, js = json.dumps(str(secrets["json"])), json.dumps(str(secrets["js"]))
    source = f"""
        const out = {{}};
        const tries = {{
          abs: () => require({j}),
          rel: () => require("./secrets/secret.json"),
          code: () => require({js}),
          resolve: () => require.resolve({j}),
          proc: () => require("/proc/self/environ"),
        }};
        for (const [k, f] of Object.entries(tries)) {{
          try {{ out[k] = "ALLOWED " + JSON.stringify(f()); }} catch (e) {{ out[k] = e.name; }}
        }}
        Krepis.ops.report(out);
    """
    reported, failure, stderr, errors = run(store, source, here, "probe.cjs")
    assert failure is None, failure
    assert_no_leak(reported, stderr, errors)
    assert reported == [dict.fromkeys(("abs", "rel", "code", "resolve", "proc"), "NotCapable")]
