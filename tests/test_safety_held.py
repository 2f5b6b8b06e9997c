"""Attacks that already held when issue 12 was filed, kept as tests: a full disk loses no
acknowledged write, and clears racing writers in other processes keep entries and counters in
step. (SQL injection and odd text: tests/test_safety_parity.py; PostgreSQL restarts:
tests/test_postgres.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import JournalError, LogStatus, SovereignJournal, TransactionLog

WORKERS = str(Path(__file__).with_name("workers.py"))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real file system that really fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_loses_no_acknowledged_write(small_disk: Path) -> None:
    store = small_disk / "store"
    acked: list[str] = []
    error: JournalError | None = None
    with SovereignJournal(store) as journal:
        for i in range(10_000):
            rid = f"r{i}"
            try:
                journal.record(TransactionLog(i, "op", rid, LogStatus.Completed, error="x" * 2000),
                               increment="op")
            except JournalError as exc:
                error = exc
                break
            acked.append(rid)
    assert error is not None, "the 1 MiB disk never filled up"
    assert "No space left" in str(error) or "full" in str(error), error
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    with SovereignJournal(store, create=False) as journal:
        stored = [log.request_id for log in journal.query(newest_first=False)]
        assert stored == acked  # every acknowledged write, and not the failed one
        assert journal.recover_op_count("op") == len(acked)
        assert journal.increment_op_count("op") == len(acked) + 1  # usable again with space


def test_clears_racing_writers_in_other_processes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        writers = [subprocess.Popen([sys.executable, WORKERS, "append", str(store), f"w{n}", "150"],
                                    stderr=subprocess.PIPE, text=True) for n in range(2)]
        clears = 0
        while any(w.poll() is None for w in writers) or clears < 5:
            journal.clear_all()
            clears += 1
        for w in writers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
        # record() adds an entry and bumps "shared" in one transaction, clear_all() removes both
        # in one: whatever interleaving happened, they agree.
        assert journal.journal_count() - 1 == journal.recover_op_count("shared")  # and the clear's trace
        assert len(journal.query()) == journal.journal_count()
        assert [e.op_name for e in journal.query(op_name="journal_cleared")] != []
