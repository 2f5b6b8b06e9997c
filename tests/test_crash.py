"""Crash safety: a writer killed with SIGKILL at random points never loses an acknowledged write."""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krepis import SovereignJournal

WORKERS = str(Path(__file__).with_name("workers.py"))
KILLS = int(os.environ.get("KREPIS_CRASH_KILLS", "20"))


def _read_acks(proc: subprocess.Popen[bytes], min_acks: int, extra: float) -> None:
    """Wait for the child to acknowledge min_acks writes, then let it run `extra` seconds more."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + 60
    buf = b""
    while buf.count(b"\n") < min_acks:
        assert time.monotonic() < deadline, "child wrote nothing in 60 s"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"child exited early with {proc.wait()}"
            buf += chunk
    proc._krepis_buf = buf  # type: ignore[attr-defined]
    time.sleep(extra)


@pytest.mark.parametrize("flush", ["sync", "interval:50ms"])
def test_sigkill_never_loses_an_acknowledged_write(store: Path, flush: str) -> None:
    """Under both policies: a process crash loses nothing that was acknowledged.

    (``interval`` trades durability against machine crashes, not process crashes.)
    """
    rng = random.Random(int(os.environ.get("KREPIS_CRASH_SEED", "0")) or None)
    total_acked = 0
    for round_no in range(KILLS):
        threads = 1 if round_no % 2 == 0 else 4  # odd rounds: group commits of several threads
        proc = subprocess.Popen(
            [sys.executable, WORKERS, "crash", str(store), f"k{round_no}", str(threads), flush],
            stdout=subprocess.PIPE)
        try:
            _read_acks(proc, min_acks=1, extra=rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            rest = proc.communicate()[0]
        assert proc.returncode == -signal.SIGKILL
        output = (proc._krepis_buf + rest).decode()  # type: ignore[attr-defined]
        # A line cut by the kill is not an acknowledgement; only complete lines are.
        acked = set(output.split("\n")[:-1])
        assert all(a.startswith(f"k{round_no}-") for a in acked)
        total_acked += len(acked)

        with SovereignJournal(store) as journal:  # the store opens after every kill
            stored = {e.request_id for e in journal.iter_logs(newest_first=False)
                      if e.request_id.startswith(f"k{round_no}-")}
            missing = acked - stored
            assert not missing, f"round {round_no}: acknowledged but lost: {sorted(missing)[:5]}"
            # only the writes in flight at the kill may be stored without their acknowledgement
            assert len(stored - acked) <= threads
            # entry and counter are one transaction: they always agree
            assert journal.recover_op_count("crash_op") == journal.journal_count()
            # the Merkle tree, the indexes and the entries agree after every kill
            report = journal.verify()
            assert report.entries == journal.journal_count()
            assert report.root == journal.tree_head().root
    assert total_acked >= KILLS
