"""``kernel.stats`` mirrors the stored counters: each value is what the store returned for the
kernel's own write, also when other kernels — in this process or another — count on the same
store meanwhile (LMDB and PostgreSQL)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from krepis import Kernel, SovereignJournal

CHILD = """
import sys
from krepis import Kernel
with Kernel(sys.argv[1]) as kernel:
    for _ in range(int(sys.argv[2])):
        kernel.increment_stats()
    print(kernel.stats.js_ops_called, kernel.stats.contexts_created)
"""


def stored(kernel: Kernel) -> tuple[int, int]:
    journal = kernel.journal
    return journal.recover_op_count("js_ops_called"), journal.recover_op_count("contexts_created")


def other_process(location: str, increments: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, location, str(increments)], check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    return int(out[0]), int(out[1])


def check_mirrors(location: str) -> None:
    first, second = Kernel(location), Kernel(location)
    with first, second:
        assert (first.stats.contexts_created, second.stats.contexts_created) == (1, 2)
        assert first.increment_stats() == 1 and first.stats.js_ops_called == 1
        assert second.increment_stats() == 2 and second.stats.js_ops_called == 2
        assert first.stats.js_ops_called == 1  # its own last write; the store has moved on
        # another process counts 5 and boots a context meanwhile
        assert other_process(location, 5) == (7, 3)
        assert first.increment_stats() == 8 and first.stats.js_ops_called == 8 == stored(first)[0]
        # a script's op_increment_stats: the same stored counter, never a local +1
        first.run_script("Krepis.ops.op_increment_stats(); Krepis.ops.op_increment_stats();",
                         stderr=io.BytesIO())
        assert first.stats.js_ops_called == 10 == stored(first)[0]
        second.run_script("Krepis.ops.op_increment_stats();", stderr=io.BytesIO())
        assert second.stats.js_ops_called == 11 == stored(second)[0]
        assert (first.stats.contexts_created, second.stats.contexts_created) == (1, 2)
        assert stored(first)[1] == 3
    third = Kernel(location)
    with third:  # a new kernel recovers the stored counters and writes its own context
        assert third.recovered.js_ops_called == 11 and third.stats.js_ops_called == 11
        assert third.stats.contexts_created == 4 == stored(third)[1]


def test_stats_mirror_the_stored_counters_on_lmdb(store: Path) -> None:
    check_mirrors(str(store))


def test_stats_mirror_the_stored_counters_on_postgres(pg_url: str) -> None:
    check_mirrors(pg_url)


def test_threads_counting_on_one_kernel_leave_the_newest_value(store: Path) -> None:
    """Many threads increment through one kernel: when all are done the stats are the stored
    counter — the newest write's value, not whichever thread assigned last."""
    with Kernel(store, flush="interval:5ms") as kernel:
        def work() -> None:
            for _ in range(100):
                kernel.increment_stats()

        threads = [threading.Thread(target=work) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert kernel.stats.js_ops_called == 600 == stored(kernel)[0]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("js_ops_called") == 600


@pytest.mark.parametrize("increments", [0, 3])
def test_a_second_process_counts_from_what_is_stored(store: Path, increments: int) -> None:
    with Kernel(store) as kernel:
        kernel.increment_stats()
    assert other_process(str(store), increments) == (1 + increments, 2)


def test_a_slower_thread_returning_an_older_count_does_not_set_the_stats_back(
        store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministically, the race the test above can only hit by chance: the first increment's
    write returns count 1 but its thread is held until a second increment (count 2) is done."""
    with Kernel(store) as kernel:
        journal = kernel.journal
        real = journal.record
        first_written, second_done = threading.Event(), threading.Event()
        returned: list[int | None] = []

        def record(*args: Any, **kwargs: Any) -> int | None:
            count = real(*args, **kwargs)
            returned.append(count)
            if len(returned) == 1:
                first_written.set()
                assert second_done.wait(30)
            return count

        monkeypatch.setattr(journal, "record", record)
        slow = threading.Thread(target=kernel.increment_stats)
        slow.start()
        assert first_written.wait(30)
        assert kernel.increment_stats() == 2
        second_done.set()
        slow.join()
        assert returned == [1, 2]
        assert kernel.stats.js_ops_called == 2 == stored(kernel)[0]
