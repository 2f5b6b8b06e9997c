"""The shape of the code: imports run one way (top to bottom, see docs/architecture.md), no
import cycle, and no module longer than ~600 lines.

Read from the source with ``ast`` — every import counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still an arrow between two parts of the system.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "krepis"

#: Each part of krepis and its floor: a module may import its own part and parts on lower
#: floors only. The floors read like the flow in docs/architecture.md.
FLOORS: dict[str, int] = {
    "base": 0,      # _errors, _version, _model, _policy, _time: import nothing of krepis but each other
    "tlog": 1,      # hashes, notes, tiles, proofs: pure, apart from storage
    "storage": 2,   # the port and the engines
    "archive": 3,   # on the port and tlog alone
    "journal": 4,   # validates, batches, reads; uses storage, archive, tlog
    "kernel": 5,    # the kernel and the Deno plane, over the journal
    "_metrics": 5,  # Prometheus text from a journal
    "bench": 6,     # measures the journal, the kernel and the alternatives
    "web": 7,       # the web console (krepis serve): reads the journal, tlog and storage
    "cli": 8,       # every command
    "root": 9,      # krepis/__init__.py (the public API) and __main__
}
BASE = {"_errors", "_version", "_model", "_policy", "_time"}
#: Longest module; longer ones must be split (the issue that set this: one class per room).
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return "root"
    head = parts[1]
    return "base" if head in BASE else head


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The krepis modules an import statement depends on."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == "krepis" or a.name.startswith("krepis.")]
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[:len(package) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not (target == "krepis" or target.startswith("krepis.")):
        return []
    found = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        found.append(sub if sub in MODULES else target)
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps.update(d for d in _resolve(module, path, node) if d != module)
        graph[module] = deps
    return graph


GRAPH = _graph()


def test_every_module_belongs_to_a_known_part() -> None:
    assert {_part(m) for m in MODULES} <= set(FLOORS), sorted({_part(m) for m in MODULES} - set(FLOORS))


def test_imports_run_one_way() -> None:
    """No module imports a part on a higher floor, nor one of another part on its own floor."""
    wrong = []
    for module, deps in GRAPH.items():
        mine = _part(module)
        for dep in deps:
            theirs = _part(dep)
            if theirs != mine and FLOORS[theirs] >= FLOORS[mine]:
                wrong.append(f"{module} ({mine}, floor {FLOORS[mine]}) imports {dep} "
                             f"({theirs}, floor {FLOORS[theirs]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    """Between modules (a package's ``__init__`` is a module too: a command module importing its
    own group's ``__init__`` would be a cycle)."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for dep in sorted(GRAPH.get(module, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep):], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_only_the_cli_imports_the_web_console() -> None:
    """``krepis.web`` needs the optional web extra (Starlette, uvicorn): nothing but the CLI's
    ``serve`` command imports it, so every other part works without the extra."""
    for module, deps in GRAPH.items():
        if _part(module) not in ("web", "cli"):
            assert not any(_part(d) == "web" for d in deps), module


def test_nothing_imports_the_public_root_or_the_cli() -> None:
    """``krepis/__init__`` re-exports the public API; nothing inside depends on it. Nothing but
    ``__main__`` and the root imports the CLI."""
    for module, deps in GRAPH.items():
        if module not in ("krepis", "krepis.__main__"):
            assert "krepis" not in deps, module
        if _part(module) != "cli" and module not in ("krepis.__main__",):
            assert not any(_part(d) == "cli" for d in deps), module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_600_lines(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(SRC)} has {lines} lines; split it"


def test_the_layering_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import of the journal from storage is reported, a lazy one too."""
    code = "def f():\n    from ...journal import SovereignJournal\n"
    node = next(n for n in ast.walk(ast.parse(code)) if isinstance(n, ast.ImportFrom))
    deps = _resolve("krepis.storage.lmdb._store", PACKAGE / "storage" / "lmdb" / "_store.py", node)
    assert deps == ["krepis.journal"]
    assert FLOORS[_part(deps[0])] > FLOORS[_part("krepis.storage.lmdb._store")]
