"""Mutation testing one module at a time: ``python tests/mutation.py MODULE [--max-children N]``.

mutmut reads a single ``[tool.mutmut]`` section, and a run over every module with every test
would take hours on a small machine. This script runs one module against the in-process tests
that exercise it: it copies the committed tree (``git archive HEAD``) to ``.mutation/MODULE/``,
writes that module's ``[tool.mutmut]`` there and runs ``mutmut run`` in the copy, so the
working tree is never touched and runs of different modules can be resumed independently
(``mutmut results`` / ``mutmut show NAME`` inside ``.mutation/MODULE/``). Commit first: only
committed code and tests are copied. See docs/testing.md for the scores and the equivalents.

For ``postgres`` a PostgreSQL server is started once for the whole run (``tests/pg.py``) and
shared by every mutant's test session (``KREPIS_TEST_POSTGRES``), then stopped.

``PYTHONPATH`` points at the mutated copy (``mutants/src``), and mutmut names the active mutant
in the environment (``MUTANT_UNDER_TEST``), so a child Python process a test starts (a writer
killed by the power-loss tests, a ``krepis`` command) runs the same mutant. Tests are still
chosen by what they call in-process. The power-loss tests make 8 cuts per case here
(``KREPIS_POWERLOSS_CUTS``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: module → (source path, test files, pytest -k expression or None). The tests are the
#: in-process ones (mutmut never sees code run by a subprocess such as the `krepis` CLI);
#: tests that restart servers, send signals or only drive the CLI are left out to keep runs short.
MODULES: dict[str, tuple[str, list[str], str | None]] = {
    "merkle": ("src/krepis/_tlog/merkle.py",
               ["test_merkle.py", "test_tlog.py", "test_storage_lmdb.py"], None),
    "codec": ("src/krepis/_storage/_codec.py", ["test_codec.py", "test_storage_lmdb.py",
                                                 "test_bad_storage.py", "test_tlog.py"], None),
    "journal": ("src/krepis/_journal.py",
                ["test_journal.py", "test_flush.py", "test_async.py", "test_safety_api.py",
                 "test_concurrency.py", "test_guarantees.py", "test_tlog.py", "test_review_findings.py",
                 "test_kernel.py"], "not postgres and not deno"),
    "async": ("src/krepis/_async.py", ["test_async.py", "test_guarantees.py", "test_tlog.py"],
              "not postgres and not deno"),
    "kernel": ("src/krepis/_kernel.py",
               ["test_kernel.py", "test_guarantees.py", "test_plane.py", "test_plane_ops.py",
                "test_plane_limits.py", "test_model.py"],
               "not postgres and not cli and not signal and not killed_host"),
    "plane": ("src/krepis/_plane.py",
              ["test_plane.py", "test_plane_ops.py", "test_plane_limits.py", "test_plane_sandbox.py",
               "test_guarantees.py"],
              "not postgres and not cli and not signal_to_krepis and not killed_host"),
    "postgres": ("src/krepis/_storage/postgres.py",
                 ["test_postgres.py", "test_guarantees.py", "test_tlog.py", "test_review_findings.py",
                  "test_safety_parity.py", "test_backup.py", "test_migrate.py"],
                 "(postgres or pg or Postgres) and not restart and not failover and not bench and not cli "
                 "and not unreachable"),
    "lmdb": ("src/krepis/_storage/lmdb.py",
             ["test_storage_lmdb.py", "test_commitlog.py", "test_bad_storage.py", "test_journal.py",
              "test_guarantees.py", "test_tlog.py", "test_archive.py", "test_safety_files.py",
              "test_safety_held.py", "test_safety_writers.py", "test_migrate.py", "test_backup.py",
              "test_review_findings.py", "test_flush.py", "test_concurrency.py", "test_powerloss.py"],
             "not postgres and not pg and not deno and not bench"),
    "commitlog": ("src/krepis/_storage/_commitlog.py",
                  ["test_commitlog.py", "test_storage_lmdb.py", "test_bad_storage.py", "test_migrate.py",
                   "test_backup.py", "test_powerloss.py", "test_safety_files.py"],
                  "not postgres and not pg"),
}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def prepare(module: str) -> Path:
    """A copy of the committed tree in .mutation/MODULE with that module's mutmut settings."""
    source, tests, select = MODULES[module]
    target = ROOT / ".mutation" / module
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-c", "tar.umask=0022", "archive", "HEAD", "src", "tests",
                              "pyproject.toml"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    pyproject = (target / "pyproject.toml").read_text()
    start = pyproject.index("[tool.mutmut]")
    end = pyproject.find("\n[", start + 1)
    section = ("[tool.mutmut]\n"
               f"source_paths = {_toml_list([source])}\n"
               f"pytest_add_cli_args_test_selection = {_toml_list([f'tests/{t}' for t in tests])}\n"
               # a mutant that deadlocks uses no CPU, so mutmut's CPU-time limit never ends it
               f"pytest_add_cli_args = {_toml_list(['--timeout=30'] + (['-k', select] if select else []))}\n"
               'also_copy = ["src/krepis/", "tests/"]\n')
    (target / "pyproject.toml").write_text(pyproject[:start] + section +
                                           (pyproject[end:] if end >= 0 else ""))
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", choices=sorted(MODULES))
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--keep", action="store_true",
                        help="resume the run in .mutation/MODULE instead of starting afresh")
    args = parser.parse_args()
    target = ROOT / ".mutation" / args.module
    if not (args.keep and target.exists()):
        target = prepare(args.module)
    env = dict(os.environ)
    # child processes started by the tests import the mutated copy and run the same mutant
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target / "mutants" / "src"),
                                                      env.get("PYTHONPATH")]))
    env.setdefault("KREPIS_POWERLOSS_CUTS", "8")  # a surviving mutant runs every selected test
    server: Path | None = None
    if args.module == "postgres" and "KREPIS_TEST_POSTGRES" not in env:
        server = Path(tempfile.mkdtemp(prefix="krepis-mutation-pg-")) / "server"
        server.parent.chmod(0o755)  # the server runs as 'nobody' when we are root
        started = subprocess.run([sys.executable, str(ROOT / "tests" / "pg.py"), "start", str(server)],
                                 check=True, capture_output=True, text=True).stdout
        env["KREPIS_TEST_POSTGRES"] = started.strip().split("=", 1)[1]
    mutmut = shutil.which("mutmut", path=os.path.dirname(sys.executable)) or "mutmut"
    try:
        return subprocess.run([mutmut, "run", "--max-children", str(args.max_children)], cwd=target,
                              env=env).returncode
    finally:
        if server is not None:
            subprocess.run([sys.executable, str(ROOT / "tests" / "pg.py"), "stop", str(server)])
            shutil.rmtree(server.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
