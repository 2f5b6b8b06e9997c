"""``file:`` URLs with a host (``file://HOST/…``) are refused like every other file import, in
every form, and the refusal does not tell whether the path exists."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest

from krepis import Kernel
from krepis.kernel import ScriptError

TOKEN = f"KREPIS_HOST_URL_SECRET_{uuid.uuid4().hex}"

HOSTS = ["evil", "127.0.0.1", "[::1]", "localhost.", "example.com", "host:80", "user@localhost",
         "localhost"]


def url(host: str, path: Path) -> str:
    return f"file://{host}{path}"


def forms(target: str, js_target: str) -> dict[str, str]:
    """Each way a script can ask for ``target`` (a JSON file URL; ``js_target`` a module URL)."""
    t, m = json.dumps(target), json.dumps(js_target)
    inner = json.dumps(f"import s from {t} with {{ type: 'json' }}; postMessage(s);")
    stay = "\nawait new Promise(() => setInterval(() => {}, 1000));"
    return {
        "static": f"import s from {t} with {{ type: 'json' }}; Krepis.ops.report(s);",
        "static-js": f"import s from {m}; Krepis.ops.report(s);",
        "reexport": f"export {{ default }} from {m}; Krepis.ops.report(1);",
        "dynamic": f"Krepis.ops.report(await import({t}, {{ with: {{ type: 'json' }} }}));",
        "dynamic-computed": f"Krepis.ops.report(await import([{t}][0], {{ with: {{ type: 'json' }} }}));",
        "data-module": ("Krepis.ops.report(await import('data:text/javascript,' + encodeURIComponent("
                        f"{inner.replace('postMessage', 'export default ')})));"),
        "worker": f"new Worker({m}, {{ type: 'module' }});" + stay,
        "worker-importing": (f"new Worker(URL.createObjectURL(new Blob([{inner}], "
                             "{ type: 'text/javascript' })), { type: 'module' });" + stay),
        "node-worker": f"new (await import('node:worker_threads')).Worker(new URL({m}));" + stay,
    }


@pytest.fixture
def secret(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "secrets"
    root.mkdir()
    (root / "secret.json").write_text(json.dumps({"key": TOKEN}))
    (root / "secret.js").write_text(f"export default {json.dumps(TOKEN)}; postMessage({json.dumps(TOKEN)});")
    return root / "secret.json", root / "secret.js"


def fail(store: Path, source: str, where: Path | None = None) -> ScriptError:
    """Run ``source`` (as ``where`` when given); it must fail; the token appears nowhere."""
    kernel = Kernel(store)
    reported: list[object] = []
    kernel.op("report")(reported.append)
    err = io.BytesIO()
    target: str | Path = source
    if where is not None:
        where.write_text(source)
        target = where
    with kernel, pytest.raises(ScriptError) as info:
        kernel.run_script(target, stderr=err, timeout=60, memory_limit_mb=1536)
    for text in (json.dumps(reported), str(info.value), str(info.value.stack), err.getvalue().decode()):
        assert TOKEN not in text
    assert reported == []
    return info.value


@pytest.mark.parametrize("host", HOSTS)
def test_file_urls_with_a_host_are_refused_in_every_form(store: Path, tmp_path: Path, host: str,
                                                         secret: tuple[Path, Path]) -> None:
    json_file, js_file = secret
    missing = json_file.parent / "missing.json"
    for form in forms(url(host, json_file), url(host, js_file)):
        texts = []
        for target in (json_file, missing):  # an existing file and a missing one: one answer
            failure = fail(store, forms(url(host, target), url(host, js_file))[form])
            texts.append(str(failure).replace(str(target), "<P>"))
            if not form.endswith("worker") and form != "worker-importing":
                text = str(failure)
                assert 'import of "file:' in text and "refused: a script can import only itself" in text, \
                    (form, text)
        assert texts[0] == texts[1], (form, texts)


def test_a_host_file_url_in_an_import_map_next_to_the_script_is_refused(store: Path, tmp_path: Path,
                                                                       secret: tuple[Path, Path]) -> None:
    json_file, _ = secret
    here = tmp_path / "project"
    here.mkdir()
    mapping = {"imports": {"secret": url("evil", json_file), "file://evil/": "file:///"}}
    (here / "deno.json").write_text(json.dumps(mapping))
    (here / "import_map.json").write_text(json.dumps(mapping))
    for source in ("import s from 'secret' with { type: 'json' }; Krepis.ops.report(s);",
                   f"import s from {json.dumps(url('evil', json_file))} with {{ type: 'json' }};"
                   "Krepis.ops.report(s);"):
        failure = fail(store, source, here / "probe.js")
        assert "refused" in str(failure) or "secret" in str(failure), failure


def test_a_worker_of_a_host_file_url_fails_as_a_file_worker_does(store: Path,
                                                                 secret: tuple[Path, Path]) -> None:
    """The script's own onerror sees the worker refused; nothing loads."""
    _, js_file = secret
    source = """
        const seen = [];
        for (const u of %s) {
          seen.push(await new Promise((resolve) => {
            let w;
            try { w = new Worker(u, { type: "module" }); } catch { resolve("refused"); return; }
            w.onmessage = (m) => { w.terminate(); resolve("LOADED " + m.data); };
            w.onerror = (e) => { e.preventDefault(); w.terminate(); resolve("refused"); };
          }));
        }
        Krepis.ops.report(seen);
        throw new Error("end");
    """ % json.dumps([url(host, js_file) for host in HOSTS] + [js_file.as_uri()])
    kernel = Kernel(store)
    reported: list[object] = []
    kernel.op("report")(reported.append)
    with kernel, pytest.raises(ScriptError, match="end"):
        kernel.run_script(source, stderr=io.BytesIO(), timeout=60, memory_limit_mb=1536)
    assert reported == [["refused"] * (len(HOSTS) + 1)]
