"""Every code block of README.md and docs/*.md runs as written.

The rule, per fenced block:

* ``python`` blocks are executed, verbatim, each in a fresh interpreter;
* ``bash``/``sh``/``shell`` blocks are executed, verbatim, by ``bash -euo pipefail``, with the
  installed ``krepis`` command first on ``PATH``. ``pip`` is a shell function there that checks
  its arguments install THIS project — the checkout (``.``, ``-e .``) or the distribution
  ``krepis-journal``, with extras it declares — and installs nothing: the suite already runs in an
  environment where the checkout is installed (``.ci/run`` builds it from scratch);
* ``json`` blocks must parse (as one JSON text or as JSON Lines);
* blocks in any other language, or none (``text``, diagrams, command synopses), are illustrative
  and not run;
* a runnable block that cannot run here (it needs other machines, or it is this suite itself) is
  marked in the Markdown source, on the line before its fence, with
  ``<!-- not-tested: the reason -->``.

The blocks of one document run in order, in one fresh temporary directory that holds a copy of
``examples/``, so a document reads like a session: the default store ``./.krepis/storage`` is a
temporary store, and a later block sees what an earlier one wrote. ``KREPIS_STORAGE`` and
``KREPIS_FLUSH`` are unset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell"}
FENCE = re.compile(r"^\s*(`{3,})\s*([\w+-]*)\s*$")
MARK = re.compile(r"<!--\s*not-tested:\s*(\S.*?)\s*-->")
LOOSE_MARK = re.compile(r"not[- _]?tested", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip: str | None  # the not-tested reason

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, lang = opening.group(1), opening.group(2).lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{doc.relative_to(ROOT)}:{i + 1}: the code block is never closed"
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        mark = MARK.fullmatch(before)
        code = "\n".join(lines[i + 1:end]) + "\n"
        found.append(Block(doc, i + 1, lang, code, mark.group(1) if mark else None))
        i = end + 1
    return found


def test_every_document_is_found() -> None:
    assert ROOT / "README.md" in DOCS and len(DOCS) >= 2
    assert any(b.lang in PYTHON for b in blocks(ROOT / "README.md"))
    assert any(b.lang in SHELL and b.skip is None for b in blocks(ROOT / "README.md"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_not_tested_marks_are_well_formed(doc: Path) -> None:
    """A mark has a reason, sits right before the fence of a runnable block, and is not misspelt."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    marked = {b.line: b for b in blocks(doc)}
    for number, line in enumerate(lines, 1):
        if "<!--" not in line or not LOOSE_MARK.search(line):
            continue
        assert MARK.fullmatch(line.strip()), f"{doc.name}:{number}: write <!-- not-tested: reason -->"
        after = next((n for n in range(number, len(lines)) if lines[n].strip()), None)
        assert after is not None and after + 1 in marked, f"{doc.name}:{number}: no code block follows"
        assert marked[after + 1].lang in PYTHON | SHELL, f"{doc.name}:{number}: marks a block that never runs"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_json_blocks_parse(doc: Path) -> None:
    for block in blocks(doc):
        if block.lang != "json":
            continue
        try:
            json.loads(block.code)
        except json.JSONDecodeError:
            for line in block.code.splitlines():
                if line.strip():
                    json.loads(line)


PIP_CHECK = r'''
import importlib.metadata as md
import re
import sys

DIST = "krepis-journal"
meta = md.metadata(DIST)
extras = set(meta.get_all("Provides-Extra") or [])
args = sys.argv[1:]


def fail(why):
    sys.exit(f"pip {' '.join(args)}: {why}")


if not args or args[0] != "install":
    fail("only `pip install` is checked here")
requirements = []
rest = iter(args[1:])
for arg in rest:
    if arg in ("-e", "--editable"):
        requirements.append(next(rest, ""))
    elif arg in ("-q", "--quiet", "-U", "--upgrade"):
        continue
    elif arg.startswith("-"):
        fail(f"unexpected option {arg}")
    else:
        requirements.append(arg)
if not requirements:
    fail("installs nothing")
for requirement in requirements:
    match = re.fullmatch(r"(\.|[A-Za-z0-9_.-]+)(?:\[([A-Za-z0-9_,-]+)\])?", requirement)
    if match is None:
        fail(f"{requirement!r} is not the checkout or {DIST}")
    name, wanted = match.group(1), match.group(2)
    if name != "." and re.sub(r"[-_.]+", "-", name).lower() != DIST:
        fail(f"{name!r} is not this project: it is distributed as {DIST!r} (or `.` from a checkout)")
    unknown = set((wanted or "").split(",")) - extras - {""}
    if unknown:
        fail(f"{DIST} has no extra {sorted(unknown)} (it has {sorted(extras)})")
'''

PREAMBLE = 'pip() { "$KREPIS_DOCS_PYTHON" "$KREPIS_DOCS_PIP_CHECK" "$@"; }\n'


@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.lang in PYTHON | SHELL for b in blocks(d))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(doc: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    check = tmp_path / "pip_check.py"
    check.write_text(PIP_CHECK)
    env = {k: v for k, v in os.environ.items() if k not in ("KREPIS_STORAGE", "KREPIS_FLUSH", "PAGER")}
    env.update({
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "KREPIS_DOCS_PYTHON": sys.executable,
        "KREPIS_DOCS_PIP_CHECK": str(check),
    })
    ran = 0
    for block in blocks(doc):
        if block.skip is not None or block.lang not in PYTHON | SHELL:
            continue
        if block.lang in PYTHON:
            script = tmp_path / f"block_{block.line}.py"
            script.write_text(block.code)
            argv = [sys.executable, str(script)]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", PREAMBLE + block.code]
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, (f"{block.where}: the {block.lang} block failed "
                                      f"(exit {proc.returncode})\n{block.code}\n--- stdout\n"
                                      f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")
        ran += 1
    assert ran > 0 or all(b.skip for b in blocks(doc) if b.lang in PYTHON | SHELL)
