"""The mutation-score table of docs/testing.md cannot lapse: it lists every source module, its
figures add up, and each module's state (current, stale, never run) is what git says — a change
to a module without marking it stale fails here (``python tests/mutation.py --status --write``
marks it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import mutation

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_lists_every_source_module_once() -> None:
    rows = mutation.read_table(mutation.DOC.read_text())
    assert sorted(rows) == mutation.modules(), "run: python tests/mutation.py --status --write"
    body = mutation.DOC.read_text().split(mutation.TABLE_START)[1].split(mutation.TABLE_END)[0]
    assert len(body.strip().splitlines()) == len(rows) + 2


def test_every_recorded_row_adds_up() -> None:
    for module, row in mutation.read_table(mutation.DOC.read_text()).items():
        if row["code of"] == "—":
            assert set(row.values()) - {module} <= {"—", "never run"}, row
            continue
        mutants, run, killed, equivalent, rest = (int(row[c]) for c in
                                                   ("mutants", "run", "killed", "equivalent", "not killed"))
        assert run <= mutants and killed + equivalent + rest == run, row
        assert row["score"] == f"{100 * killed / max(1, run - equivalent):.1f} %", row
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["run on"]), row
        assert re.fullmatch(r"[0-9a-f]{12}", row["code of"]), row


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="needs the project's git history")
def test_each_modules_state_is_what_git_says() -> None:
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip()
    if shallow == "true":
        pytest.skip("a shallow clone does not hold the recorded commits")
    rows = mutation.read_table(mutation.DOC.read_text())
    wrong = {m: (r["status"], mutation.state(m, r["code of"])) for m, r in rows.items()
             if r["status"] != mutation.state(m, r["code of"])}
    assert not wrong, f"states out of date (python tests/mutation.py --status --write): {wrong}"


def test_every_listed_equivalent_names_a_module_and_gives_a_reason() -> None:
    names = {m.replace("/", ".") for m in mutation.modules()}
    for name, reason in mutation.equivalents().items():
        assert reason, f"{name}: no reason given"
        module = name.split(".x")[0]  # krepis.tlog._note.x_open_note__mutmut_3, ….xǁClassǁmethod__mutmut_1
        assert module.removeprefix("krepis.") in names, name


def test_every_module_has_a_test_selection() -> None:
    for module in mutation.modules():
        source, tests, _select = mutation.selection(module)
        assert (ROOT / source).exists() and tests, module
        assert all((ROOT / "tests" / t).exists() for t in tests), module
