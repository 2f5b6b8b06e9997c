"""Fork detection (``krepis.journal._fork``): each fork in a child adds exactly one to the
generation a journal compares with the one it was opened in, and the error a journal opened in a
parent gives in the child names its path and what to do. (The handler runs in a forked child,
where a mutation run does not see it, so it is called here directly; tests/test_safety_fork.py
forks real children.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import krepis.journal._fork as fork
from krepis import ClosedError, JournalError, LogStatus, SovereignJournal, TransactionLog


def test_each_fork_in_a_child_adds_one_to_the_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fork, "_fork_generation", 5)
    assert fork.generation() == 5
    fork._after_fork_in_child()
    assert fork.generation() == 6
    fork._after_fork_in_child()
    assert fork.generation() == 7


def test_the_handler_is_registered_and_counts_a_real_fork() -> None:
    before = fork.generation()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its generation, then leave without any cleanup
        try:
            os.write(write, str(fork.generation()).encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        reported = os.read(read, 100)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert int(reported) == before + 1
    assert fork.generation() == before  # the parent's is unchanged


def test_the_forked_error_names_the_journal_and_what_to_do() -> None:
    error = fork.forked_error("/srv/audit")
    assert type(error) is ClosedError and isinstance(error, JournalError)
    assert str(error) == ("the journal at /srv/audit was opened in a parent process; open a new one "
                          "after fork()")


def test_a_journal_of_an_earlier_generation_refuses_with_that_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = SovereignJournal(tmp_path / "s", flush="sync")
    journal.log_transaction(TransactionLog(1, "op", "r", LogStatus.Completed))
    monkeypatch.setattr(fork, "_fork_generation", fork.generation() + 1)  # as in a forked child
    with pytest.raises(ClosedError) as info:
        journal.log_transaction(TransactionLog(2, "op", "r", LogStatus.Completed))
    assert str(info.value) == (f"the journal at {tmp_path / 's'} was opened in a parent process; open "
                               "a new one after fork()")
    monkeypatch.undo()
    assert journal.journal_count() == 1
    journal.close()
