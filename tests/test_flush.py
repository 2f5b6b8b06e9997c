"""Flush policies: parsing, the background sync, flush() and close(), and correctness under load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from krepis import (
    FlushPolicy,
    InvalidTypeError,
    Kernel,
    LogStatus,
    SovereignJournal,
    TransactionLog,
    ValidationError,
)
from krepis.storage.lmdb import LmdbStorage

from conftest import hammer_threads

WORKERS = str(Path(__file__).with_name("workers.py"))


def test_parse_policies() -> None:
    assert FlushPolicy.parse("sync") == FlushPolicy.sync()
    assert FlushPolicy.parse(" interval:10ms ") == FlushPolicy.interval(10)
    assert FlushPolicy.parse(FlushPolicy.interval(ms=250)).interval_ms == 250
    assert str(FlushPolicy.interval(7)) == "interval:7ms"
    assert str(FlushPolicy.sync()) == "sync"
    assert FlushPolicy.sync().durable and not FlushPolicy.interval(5).durable


@pytest.mark.parametrize(
    ("value", "exc", "words"),
    [
        ("async", ValidationError, "flush policy 'async' is not valid; use 'sync' or 'interval:Nms'"),
        ("interval:10", ValidationError, "is not valid"),
        ("interval:10s", ValidationError, "is not valid"),
        ("interval:0ms", ValidationError, "interval 0ms is outside 1"),
        ("interval:3600001ms", ValidationError, "outside 1 … 3600000ms"),
        ("", ValidationError, "is not valid"),
        (10, InvalidTypeError, "flush must be"),
    ],
)
def test_bad_policies(value: object, exc: type, words: str, store: Path) -> None:
    with pytest.raises(exc, match=words):
        FlushPolicy.parse(value)  # type: ignore[arg-type]
    with pytest.raises(exc, match=words):
        SovereignJournal(store, flush=value)  # type: ignore[arg-type]
    assert not store.exists()  # a bad policy is refused before anything is created
    with pytest.raises(ValidationError):
        FlushPolicy.interval(0)
    with pytest.raises(InvalidTypeError):
        FlushPolicy.interval(1.5)  # type: ignore[arg-type]


def test_environment_variable(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KREPIS_FLUSH", "interval:20ms")
    with SovereignJournal(store) as journal:
        assert journal.policy == FlushPolicy.interval(20)
    with SovereignJournal(store, flush="sync") as journal:  # an explicit policy wins
        assert journal.policy == FlushPolicy.sync()
    monkeypatch.setenv("KREPIS_FLUSH", "sometimes")
    with pytest.raises(ValidationError, match="from KREPIS_FLUSH"):
        SovereignJournal(store)


def test_sharing_a_store_between_policies_in_one_process(store: Path) -> None:
    # Durability is per handle (a durable write waits for its commit-log flush; a deferred one
    # does not), so journals of both policies share one engine in a process.
    with SovereignJournal(store, flush="interval:10ms") as deferred, \
            SovereignJournal(store, flush="sync") as durable:
        deferred.increment_op_count("x")
        durable.increment_op_count("x")
        assert durable.recover_op_count("x") == deferred.recover_op_count("x") == 2


class SyncCounting(LmdbStorage):
    """The real LMDB adapter, counting how often it is asked to sync."""

    syncs = 0

    def sync(self) -> None:
        type(self).syncs += 1
        super().sync()


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[SyncCounting]:
    import krepis.storage as port

    SyncCounting.syncs = 0
    def open_counting(loc: str, durable: bool = True, create: bool = True) -> SyncCounting:
        return SyncCounting(loc, durable=durable, create=create)

    monkeypatch.setattr(port, "open_storage", open_counting)
    monkeypatch.setattr("krepis.journal._journal.open_storage", port.open_storage)
    return SyncCounting


def test_interval_syncs_in_the_background_flush_and_close(store: Path, counting: type[SyncCounting]) -> None:
    journal = SovereignJournal(store, flush="interval:20ms")
    time.sleep(0.1)
    assert counting.syncs == 0  # nothing written, nothing to sync
    journal.increment_op_count("x")
    deadline = time.monotonic() + 10
    while counting.syncs == 0:
        assert time.monotonic() < deadline, "the background sync never ran"
        time.sleep(0.005)
    before = counting.syncs
    journal.flush()
    assert counting.syncs == before + 1
    journal.increment_op_count("x")
    before = counting.syncs
    journal.close()
    assert counting.syncs >= before + 1  # close() makes everything durable
    with SovereignJournal(store) as reopened:
        assert reopened.recover_op_count("x") == 2


def test_interval_writes_are_visible_to_other_processes_at_once(store: Path) -> None:
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
        out = subprocess.run(
            [sys.executable, "-c",
             f"from krepis import SovereignJournal as J; j = J({str(store)!r}); "
             "print(j.recover_op_count('op'), j.journal_count())"],
            capture_output=True, text=True, check=True)
        assert out.stdout.split() == ["1", "1"]


def test_clear_all_under_interval_is_synced(store: Path, counting: type[SyncCounting]) -> None:
    with SovereignJournal(store, flush="interval:3600000ms") as journal:
        journal.increment_op_count("x")
        before = counting.syncs
        journal.clear_all()
        assert counting.syncs == before + 1


@pytest.mark.parametrize("flush", ["sync", "interval:5ms"])
def test_threads_exact_under_each_policy(store: Path, flush: str) -> None:
    with SovereignJournal(store, flush=flush) as journal:
        hammer_threads(journal, 8, 100)
        assert journal.recover_op_count("op") == 800
        assert journal.journal_count() == 800


def test_processes_exact_under_interval(store: Path) -> None:
    SovereignJournal(store).close()
    procs = [subprocess.Popen([sys.executable, WORKERS, "append", str(store), f"p{n}", "100",
                               "interval:5ms"]) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("shared") == 400
        assert journal.journal_count() == 400


def test_kernel_flush_option(store: Path) -> None:
    with Kernel(store, flush="interval:10ms") as kernel:
        assert kernel.journal.policy == FlushPolicy.interval(10)
        assert kernel.increment_stats() == 1
    with Kernel(store) as kernel:
        assert kernel.stats.js_ops_called == 1
    with pytest.raises(ValidationError, match="flush applies"), SovereignJournal(store) as journal:
        Kernel(journal, flush="sync")
