"""Child processes for the multi-process and crash tests: ``python workers.py MODE ...``."""

from __future__ import annotations

import os
import sys
import threading

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis._model import now_ms as now_ms_for_tests


def append(path: str, tag: str, count: int, flush: str = "sync") -> None:
    """Append ``count`` entries, each with the shared counter bumped in the same transaction."""
    with SovereignJournal(path, flush=flush) as journal:
        for i in range(count):
            entry = TransactionLog(now_ms_for_tests(), "proc_op", f"{tag}-{i}", LogStatus.Completed)
            journal.record(entry, increment="shared")
            journal.increment_op_count("plain")


def skewed(path: str, tag: str, count: int) -> None:
    """Append ``count`` entries whose timestamps lag the clock by 0–50 ms at random (as entries
    stamped before a slow commit do), under an interval policy."""
    import random

    with SovereignJournal(path, flush="interval:5ms") as journal:
        for i in range(count):
            ts = now_ms_for_tests() - random.randrange(50)
            entry = TransactionLog(ts, "proc_op", f"{tag}-{i}", LogStatus.Completed)
            journal.record(entry, increment="shared")


def crash_loop(path: str, tag: str, threads: int, flush: str) -> None:
    """Write forever from ``threads`` threads, reporting each acknowledged write on stdout as one
    line written with a single write(2); the parent SIGKILLs us."""
    journal = SovereignJournal(path, flush=flush)

    def work(t: int) -> None:
        i = 0
        while True:
            rid = f"{tag}-{t}.{i}"
            journal.record(TransactionLog(now_ms_for_tests(), "crash_op", rid, LogStatus.Completed),
                           increment="crash_op")
            os.write(1, f"{rid}\n".encode())
            i += 1

    for t in range(threads):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "append":
        append(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])
    elif mode == "skewed":
        skewed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "crash":
        crash_loop(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        raise SystemExit(f"unknown mode {mode}")
