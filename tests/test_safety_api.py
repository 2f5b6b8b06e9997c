"""API edges that used to give tracebacks or be silently accepted, and a store on a read-only
file system."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import (
    InvalidTypeError,
    JournalError,
    Kernel,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)


@pytest.mark.parametrize("timeout, error", [
    (True, InvalidTypeError), (False, InvalidTypeError), ("3", InvalidTypeError),
    (math.nan, ValidationError), (math.inf, ValidationError), (-1, ValidationError),
])
def test_script_timeout_must_be_a_finite_number_of_seconds(
        tmp_path: Path, timeout: object, error: type[JournalError]) -> None:
    with Kernel(tmp_path / "store") as kernel:
        with pytest.raises(error, match="timeout must be"):
            kernel.run_script("Krepis.ops.op_increment_stats();", timeout=timeout)  # type: ignore[arg-type]
        assert kernel.stats.js_ops_called == 0  # nothing ran


@contextlib.contextmanager
def read_only_bind(source: Path, target: Path) -> Iterator[None]:
    target.mkdir()
    ok = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot bind-mount here (needs root with CAP_SYS_ADMIN)")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(target)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_store_on_a_read_only_file_system_says_so(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "rw" / "store") as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    ro = tmp_path / "ro"
    with read_only_bind(tmp_path / "rw", ro):
        store = ro / "store"
        for create in (False, True):
            with pytest.raises(StorageError, match="read-only file system") as info:
                SovereignJournal(store, create=create)
            assert str(info.value) == (f"storage directory {store} is on a read-only file system; "
                                       "krepis needs to write its lock file even to read")
            assert info.value.path == str(store)
        proc = subprocess.run([sys.executable, "-m", "krepis", "stats", "--storage", str(store)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "read-only file system" in proc.stderr
        assert "Traceback" not in proc.stderr
