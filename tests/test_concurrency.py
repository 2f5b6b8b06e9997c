"""Several threads and several processes share one store: totals are exact, nothing is lost."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from krepis import LogStatus, SovereignJournal, TransactionLog

WORKERS = str(Path(__file__).with_name("workers.py"))


def test_eight_threads_one_counter(store: Path) -> None:
    per_thread = 150
    with SovereignJournal(store) as journal:
        seen: list[list[int]] = [[] for _ in range(8)]

        def work(n: int) -> None:
            for i in range(per_thread):
                entry = TransactionLog(i, "thread_op", f"t{n}-{i}", LogStatus.Completed)
                seen[n].append(journal.record(entry, increment="shared"))  # type: ignore[arg-type]
                journal.increment_op_count("plain")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        total = 8 * per_thread
        assert journal.recover_op_count("shared") == total
        assert journal.recover_op_count("plain") == total
        assert journal.journal_count() == total
        # every returned count is distinct: no two callers were handed the same value
        values = sorted(v for s in seen for v in s)
        assert values == list(range(1, total + 1))
        # each thread's own counts increase
        assert all(s == sorted(s) for s in seen)
        ids = {e.request_id for e in journal.iter_logs()}
        assert ids == {f"t{n}-{i}" for n in range(8) for i in range(per_thread)}


def test_four_processes_one_counter(store: Path) -> None:
    per_proc = 150
    SovereignJournal(store).close()  # create it first; processes then race on an existing store
    procs = [
        subprocess.Popen([sys.executable, WORKERS, "append", str(store), f"p{n}", str(per_proc)])
        for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with SovereignJournal(store) as journal:
        total = 4 * per_proc
        assert journal.recover_op_count("shared") == total
        assert journal.recover_op_count("plain") == total
        assert journal.journal_count() == total
        ids = [e.request_id for e in journal.iter_logs(newest_first=False)]
        assert sorted(ids) == sorted(f"p{n}-{i}" for n in range(4) for i in range(per_proc))
        for n in range(4):  # each writer's entries keep its own order
            own = [int(x.split("-")[1]) for x in ids if x.startswith(f"p{n}-")]
            assert own == list(range(per_proc))


def test_processes_racing_to_create_a_new_store(tmp_path: Path) -> None:
    store = tmp_path / "fresh" / "store"
    procs = [
        subprocess.Popen([sys.executable, WORKERS, "append", str(store), f"p{n}", "20"])
        for n in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("shared") == 80
        assert journal.journal_count() == 80
