from __future__ import annotations

import os
import shutil
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A fresh storage location on the real disk (not yet created)."""
    return tmp_path / "krepis" / "storage"


def hammer_threads(journal: Any, threads: int, per_thread: int) -> None:
    """`threads` threads each record `per_thread` entries, bumping counter "op" with each."""
    from krepis import LogStatus, TransactionLog

    def work(n: int) -> None:
        for i in range(per_thread):
            journal.record(TransactionLog(i, "op", f"t{n}-{i}", LogStatus.Completed), increment="op")

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def make_store(path: Path, entries: int = 3) -> Path:
    """An LMDB store at ``path`` holding ``entries`` completed entries of op "op" (request ids
    r0, r1, …; timestamps 0, 1, …), each counted in ``op``."""
    from krepis import LogStatus, SovereignJournal, TransactionLog

    with SovereignJournal(path) as journal:
        for i in range(entries):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
    return path


def script_sleeps(monkeypatch: pytest.MonkeyPatch, module: Any, *steps: Callable[[], None]) -> list[float]:
    """Replace ``module``'s ``time`` (its waits between polls) so that each ``time.sleep`` runs the
    next step (what happens meanwhile), and the one after the last raises ``KeyboardInterrupt``
    (Ctrl-C). Returns the waits asked for."""
    waits: list[float] = []
    todo = list(steps)

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if not todo:
            raise KeyboardInterrupt
        todo.pop(0)()

    monkeypatch.setattr(module, "time", types.SimpleNamespace(sleep=sleep))
    return waits


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file below root with its bytes, to prove nothing on disk changed.

    ``lock.mdb`` is LMDB's runtime lock table (shared memory, rebuilt by whichever process opens
    the store first); only its presence is compared, not its bytes.
    """
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = b"<lock table>" if name == "lock.mdb" else p.read_bytes()
    return out


# --- PostgreSQL -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def strace() -> str:
    """The strace binary, for the tests that count system calls (flushes before renames, one
    flush per durable write). Missing: a skip, or a failure with ``KREPIS_REQUIRE_STRACE=1`` or
    ``CI=true`` (``.ci/run`` installs it)."""
    found = shutil.which("strace")
    if found is None:
        message = "strace is not installed (Debian: strace)"
        if os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_STRACE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def pg_cluster():  # type: ignore[no-untyped-def]
    """A throwaway PostgreSQL server for the whole session (skipped where the binaries are
    missing, unless KREPIS_REQUIRE_POSTGRES=1, which .ci/run sets, turns that into a failure)."""
    import pg

    reuse = os.environ.get(pg.REUSE_ENV)
    if reuse:  # a server left running by `python tests/pg.py start DIR` (mutation runs)
        base, _, port = reuse.rpartition(":")
        yield pg.Cluster(Path(base), port=int(port))
        return
    missing = pg.binaries_missing()
    if missing:
        reason = f"PostgreSQL server binaries not found on PATH: {missing}"
        if os.environ.get(pg.REQUIRE_ENV) == "1":
            pytest.fail(f"{reason} (and {pg.REQUIRE_ENV}=1 requires them)")
        pytest.skip(reason)
    with pg.temporary_base() as base:
        cluster = pg.Cluster(base)
        cluster.init()
        cluster.start()
        try:
            pg.create_roles(cluster)
            yield cluster
        finally:
            cluster.stop("immediate")


_db_counter = [0]


@pytest.fixture
def pg_url(pg_cluster) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A fresh, empty database on the session's server. On a server shared by many sessions (a
    mutation run starts one for thousands of test sessions) it is dropped afterwards, so that
    they do not fill the disk; a session's own server goes away whole."""
    import pg

    _db_counter[0] += 1
    name = f"krepis_test_{os.getpid()}_{_db_counter[0]}_{os.urandom(4).hex()}"  # unique on a reused server
    pg_cluster.sql(f"CREATE DATABASE {name}")
    yield str(pg_cluster.url(name))
    if os.environ.get(pg.REUSE_ENV):
        pg_cluster.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the PostgreSQL server (it uses its fixtures) carries the keyword
    ``postgres``: ``-k "not postgres"`` (the mutation tool's LMDB selections) leaves out exactly
    those and the tests parametrized with a PostgreSQL engine, not every test whose name merely
    contains some letters of it (``upgrade``). First, so that ``-k`` sees the keyword."""
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker("postgres")
