"""The bulk rows, in entries per second: ``verify()``, ``krepis export`` to a file, ``archive``
and ``migrate`` of a format-1 store, each on a journal of the run's large size.

Each row is timed once (wall) with its CPU: ``time.process_time()`` of this process over the
call, or, for ``krepis export`` (a command run as a child process), the child's user + system
time (``RUSAGE_CHILDREN``)."""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ..journal import SovereignJournal
from ..storage import migrate
from ._data import COUNTER, realistic_entries
from ._format1 import write_format1_store

KEEP_NEWEST = 1_000  # the archive row keeps this many entries live


def _row(name: str, entries: int, seconds: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "entries": entries, "seconds": round(seconds, 4),
            "entries_per_s": round(entries / seconds) if seconds > 0 else 0,
            "cpu_us_per_entry": round(cpu / entries * 1e6, 2) if entries else 0.0, **extra}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    cpu, t0 = time.process_time(), time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - cpu


def bench_verify(location: str) -> dict[str, Any]:
    """``verify()``: every entry decoded, checked and hashed into the tree, every index row and
    counter checked — entries per second over the journal's entries."""
    with SovereignJournal(location, create=False, retention="off") as journal:
        entries = journal.journal_count()
        report, seconds, cpu = _timed(journal.verify)
    if report.entries != entries:  # (a damaged store raises)
        raise AssertionError(f"verify() of {location} checked {report.entries} of {entries} entries")
    return _row("verify()", entries, seconds, cpu)


def _cli_env() -> dict[str, str]:
    # As a user's shell runs it: Python caches compiled modules (some sandboxes turn that off
    # with PYTHONDONTWRITEBYTECODE, which makes every start compile krepis again).
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "KREPIS_STORAGE")}


def _child(args: list[str]) -> tuple[float, float]:
    """Run ``python -m krepis ARGS``: (wall seconds, the child's CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "krepis", *args], capture_output=True, check=True, env=_cli_env())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_export(location: str, out: str, entries: int) -> dict[str, Any]:
    """``krepis export --storage LOCATION -o OUT``, the whole command as a user runs it (its
    process start included); ``start_s`` is the median of three ``krepis --version`` for scale."""
    _child(["--version"])  # warm-up: compiled modules cached, files in the page cache
    start = statistics.median(_child(["--version"])[0] for _ in range(3))
    wall, cpu = _child(["export", "--storage", location, "-o", out])
    with open(out, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    os.unlink(out)
    if lines != entries:
        raise AssertionError(f"krepis export wrote {lines} lines for {entries} entries")
    return _row("krepis export -o FILE", entries, wall, cpu, start_s=round(start, 3))


def bench_archive(location: str, directory: str) -> dict[str, Any]:
    """``archive(directory, keep_last=1000)`` into a fresh directory: entries archived per second
    (the dictionary's training included); bytes per archived entry (every file of the archive)
    and a request-id lookup in it."""
    with SovereignJournal(location, create=False, retention="off") as journal:
        probe = journal.entry(journal.live_first_seq()).request_id
        report, seconds, cpu = _timed(lambda: journal.archive(directory, keep_last=KEEP_NEWEST))
        files = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))
        t0 = time.perf_counter()
        found = journal.query(request_id=probe, archive=directory)
        lookup_ms = (time.perf_counter() - t0) * 1000
        if not found:
            raise AssertionError(f"request id {probe} not found in the archive")
    shutil.rmtree(directory)
    return _row("archive (all but the newest 1,000)", report.entries, seconds, cpu,
                bytes_per_entry=round(files / max(1, report.entries), 2),
                request_id_lookup_ms=round(lookup_ms, 2))


def bench_migrate(location: str, entries: int) -> dict[str, Any]:
    """``migrate`` of a format-1 store of ``entries`` realistic entries (written first, not
    timed): read, checked, written in the current format, verified, swapped in."""
    write_format1_store(location, realistic_entries(entries), {COUNTER.decode(): entries})
    result, seconds, cpu = _timed(lambda: migrate(location))
    if (result.from_format, result.entries) != (1, entries):
        raise AssertionError(f"migrating {location}: {result}")
    shutil.rmtree(location)
    return _row("migrate a format-1 store", entries, seconds, cpu)
