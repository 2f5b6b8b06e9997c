"""A forked child must not use its parent's journal: every call raises ClosedError at once (the
parent's commit leader, writer thread and locks do not exist in the child), and close() in the
child releases nothing of the parent's. A hang fails the test (the child is killed)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from krepis import AsyncSovereignJournal, ClosedError, LogStatus, SovereignJournal, TransactionLog
from krepis.storage.lmdb import LmdbStorage

from storage_conformance import OPERATIONS

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

HANG_LIMIT = 30.0  # seconds before a child that never answers counts as hung

ENTRY = TransactionLog(1, "op", "r", LogStatus.Completed)


def in_child(fn: Callable[[], str]) -> str:
    """fork(); run fn in the child; return what it reported, or fail if it hangs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(r)
        try:
            report = fn()
        except BaseException as exc:
            report = f"unexpected {type(exc).__name__}: {exc}"
        os.write(w, report.encode())
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + HANG_LIMIT
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            pytest.fail("the forked child hung using its parent's journal")
        time.sleep(0.02)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


def every_call_is_closed(calls: dict[str, Callable[[], object]]) -> str:
    out = []
    for name, call in calls.items():
        try:
            call()
            out.append(f"{name}: no error")
        except ClosedError as exc:
            out.append(f"{name}: ClosedError {'after fork()' in str(exc)}")
    return "\n".join(out)


HOLD_WRITER = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(os.path.join(sys.argv[1], "commit.log"), os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)   # the commit log's append lock, held until told to stop
    print("holding", flush=True)
    sys.stdin.readline()
""")


@pytest.mark.parametrize("flush", ["sync", "interval:5ms"])
def test_child_forked_during_a_write_gets_closed_error(tmp_path: Path, flush: str) -> None:
    store = tmp_path / "store"
    journal = SovereignJournal(store, flush=flush)
    journal.record(ENTRY, increment="op")
    # Make the parent's next commit stall inside the storage, as a slow disk would: another
    # process holds the commit log's append lock.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITER, str(store)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "holding\n"
    writer = threading.Thread(target=journal.record, args=(ENTRY,), kwargs={"increment": "op"})
    writer.start()
    deadline = time.monotonic() + 60
    while not journal._commit._leading:  # the writer thread now leads a commit that waits
        assert time.monotonic() < deadline, "the writer never started its commit"
        time.sleep(0.005)
    time.sleep(0.05)  # (and is inside the storage, waiting for the lock)
    try:
        def child() -> str:
            report = every_call_is_closed({
                "record": lambda: journal.record(ENTRY, increment="op"),
                "increment": lambda: journal.increment_op_count("op"),
                "read": journal.journal_count,
                "flush": journal.flush,
                "clear": journal.clear_all,
            })
            journal.close()  # releases nothing of the parent's, raises nothing
            return f"{report}\nclosed {journal.closed}"

        report = in_child(child)
    finally:
        holder.stdin.write("go\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
        writer.join()
    assert report.splitlines() == [*(f"{n}: ClosedError True" for n in
                                     ("record", "increment", "read", "flush", "clear")),
                                   "closed True"]
    # The parent is unaffected: its stalled write completed, and it keeps working.
    assert journal.increment_op_count("op") == 3
    journal.close()
    with SovereignJournal(store, create=False) as again:
        assert again.recover_op_count("op") == 3 and again.journal_count() == 2


def test_async_journal_in_a_forked_child_gets_closed_error(tmp_path: Path) -> None:
    async def parent_writes(journal: AsyncSovereignJournal) -> None:
        await journal.record(ENTRY, increment="op")

    journal = AsyncSovereignJournal(tmp_path / "store")
    asyncio.run(parent_writes(journal))  # the writer thread exists now

    def child() -> str:
        async def use() -> str:
            report = []
            for name, make in (("record", lambda: journal.record(ENTRY, increment="op")),
                               ("read", journal.journal_count)):
                try:
                    await make()
                    report.append(f"{name}: no error")
                except ClosedError as exc:
                    report.append(f"{name}: ClosedError {'after fork()' in str(exc)}")
            await journal.close()
            report.append(f"closed {journal.closed}")
            return "\n".join(report)

        return asyncio.run(use())

    assert in_child(child).splitlines() == ["record: ClosedError True", "read: ClosedError True",
                                            "closed True"]

    async def parent_again() -> int:
        count = await journal.increment_op_count("op")
        await journal.close()
        return count

    assert asyncio.run(parent_again()) == 2


def test_postgres_journal_in_a_forked_child_gets_closed_error(pg_url: str) -> None:
    """The child must not touch the parent's pooled connections (their sockets are shared)."""
    journal = SovereignJournal(pg_url)
    journal.record(ENTRY, increment="op")
    report = in_child(lambda: every_call_is_closed({
        "record": lambda: journal.record(ENTRY, increment="op"),
        "read": journal.op_counts,
    }) + f"\nclosed {journal.close() or journal.closed}")
    assert report.splitlines() == ["record: ClosedError True", "read: ClosedError True",
                                   "closed True"]
    assert journal.increment_op_count("op") == 2  # the parent's connections still work
    journal.close()


def test_the_lmdb_storage_refuses_every_operation_in_a_forked_child(tmp_path: Path) -> None:
    """Below the journal, too: each operation of a storage opened in the parent raises ClosedError
    in the child (no lock of the parent's is taken, nothing is written), and the parent goes on."""
    storage = LmdbStorage(tmp_path / "store")
    calls = {f"{doing} #{i}": call for i, (doing, call) in enumerate(OPERATIONS)}
    try:
        report = in_child(lambda: every_call_is_closed(
            {name: (lambda call=call: call(storage)) for name, call in calls.items()}))
        assert report.splitlines() == [f"{name}: ClosedError True" for name in calls]
        assert storage.entry_count() == 0 and storage.checkpoints() == []
    finally:
        storage.close()
