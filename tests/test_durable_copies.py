"""A backup is flushed before it is checked or reported done, and a migration's new store is
flushed before the rename that swaps it in — counted at the system call with strace, as in
``test_commitlog.py::test_a_durable_commit_is_one_flush_of_the_commit_log``: a copy that stopped
flushing fails here, not only after a power cut."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog

from conftest import make_store
from format1 import write_lmdb_store
from stracekit import joined

pytestmark = pytest.mark.usefixtures("strace")

SYNCS = ("fsync", "fdatasync")
WRITES = ("write", "pwrite64", "writev", "pwritev", "pwritev2")
RENAMES = ("rename", "renameat", "renameat2")
#: `PID call(FD<path>, rest` (strace -f -y)
_CALL = re.compile(r"^(?:\d+\s+)?(\w+)\((-?\d+|AT_FDCWD)<([^>]*)>(.*)$")


def _trace(tmp_path: Path, code: str) -> list[tuple[str, str, str]]:
    """(call, path of its first descriptor, the rest of the line) for every traced call of
    ``code``, which ends by writing ``<done>`` to stderr."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
                    "trace=" + ",".join(SYNCS + WRITES + RENAMES + ("openat",)),
                    sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    events = []
    for line in joined(trace.read_text(errors="replace")):
        m = _CALL.match(line)
        if m:
            events.append((m.group(1), m.group(3), m.group(4)))
    return events


def _index(events: list[tuple[str, str, str]], test: object, *, last: bool = False) -> int:
    found = [i for i, event in enumerate(events) if test(*event)]  # type: ignore[operator]
    assert found, "no such call in the trace"
    return found[-1] if last else found[0]


def _done(events: list[tuple[str, str, str]]) -> int:
    return _index(events, lambda call, _path, rest: call == "write" and '"<done>"' in rest)


def _synced_between(events: list[tuple[str, str, str]], path: str, after: int, before: int) -> bool:
    return any(call in SYNCS and p == path for call, p, _ in events[after + 1:before])


def test_a_backup_is_flushed_by_the_backup_before_it_is_checked_and_reported(tmp_path: Path) -> None:
    """The copy's data.mdb is flushed right after it is written — before the check opens the
    copy (whose open may flush it too, but that is the check's business, not the backup's
    guarantee) — then its directory and the parent of the directory the backup created; and
    nothing written to it after its last flush before backup() returns."""
    source = make_store(tmp_path / "live", 50)
    dest = tmp_path / "new" / "bk"
    events = _trace(tmp_path, "import os, sys; from krepis.storage import backup; "
                              f"backup({str(source)!r}, {str(dest)!r}); os.write(2, b'<done>')")
    data, done = f"{dest}/data.mdb", _done(events)
    check = _index(events, lambda call, path, rest: call == "openat" and path == str(dest)
                   and '"lock.mdb"' in rest)
    created = _index(events, lambda call, path, rest: call == "openat" and path == str(dest)
                     and '"data.mdb", O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW' in rest)
    copied = max(i for i, (call, path, _) in enumerate(events[:check]) if call in WRITES and path == data)
    assert created < copied < check < done
    assert _synced_between(events, data, copied, check), "data.mdb not flushed before the check"
    assert any(call == "fsync" and path == str(dest) for call, path, _ in events[created:check])
    assert any(call == "fsync" and path == str(tmp_path / "new") for call, path, _ in events[created:done])
    assert any(call == "fsync" and path == str(tmp_path) for call, path, _ in events[created:done])
    last = max(i for i, (call, path, _) in enumerate(events[:done]) if call in WRITES and path == data)
    assert _synced_between(events, data, last, done)
    with SovereignJournal(dest, create=False) as journal:
        assert journal.journal_count() == 50


@pytest.mark.parametrize("entries", [0, 3000])
def test_migrate_flushes_the_new_store_before_the_rename_that_swaps_it_in(tmp_path: Path,
                                                                          entries: int) -> None:
    """With no entries, only counters: the new store's last commit is the counters', which no
    write of the storage port covers — the migration must flush data.mdb itself."""
    store = tmp_path / "store"
    logs = [TransactionLog(i, f"op{i % 3}", f"r{i}", LogStatus.Completed) for i in range(entries)]
    write_lmdb_store(store, logs, {"op0": 7, "only counted": 2**40})
    store.chmod(0o700)
    events = _trace(tmp_path, "import os; from krepis.storage import migrate; "
                              f"migrate({str(store)!r}); os.write(2, b'<done>')")
    work, done = f"{store}/.migrate", _done(events)
    swap = _index(events, lambda call, path, rest: call in RENAMES and path == work and '"data.mdb"' in rest)
    last = max(i for i, (call, path, _) in enumerate(events[:swap])
               if call in WRITES and path == f"{work}/data.mdb")
    assert _synced_between(events, f"{work}/data.mdb", last, swap), "the new data.mdb was not flushed " \
                                                                     "before the rename"
    assert any(call == "fsync" and path == str(store) for call, path, _ in events[swap:done])
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == entries
        assert journal.op_counts()["only counted"] == 2**40
        journal.verify()
