"""Kernel checks that the rest of the suite let through when they were removed one at a time
(see each docstring for the bug it kills). Real Deno, real LMDB."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest

from krepis import Kernel, LogStatus, SovereignJournal, TransactionLog
from krepis.kernel import _landlock as landlock


class _AnotherKernelBootsMeanwhile(SovereignJournal):
    """The real journal; when a kernel booting on it has just read the contexts counter, another
    kernel's boot (its ``kernel_init`` and count) lands on the same store — the interleaving two
    processes booting at once can produce, made deterministic."""

    def recover_op_count(self, op_name: str) -> int:
        value = super().recover_op_count(op_name)
        if op_name == "contexts_created":
            self.record(TransactionLog.now("kernel_init", "another-kernel", LogStatus.Started),
                        increment="contexts_created")
        return value


def test_a_booting_kernel_reports_the_stored_contexts_count_not_its_own_sum(store: Path) -> None:
    """Kills: the kernel's stats counting locally instead of mirroring the stored counter at boot
    (kernel/_kernel.py ``Kernel.boot``: ``contexts_created`` as the recovered value + 1 instead of
    what the store returned for the kernel's own ``kernel_init`` write)."""
    with _AnotherKernelBootsMeanwhile(store) as journal:
        kernel = Kernel(journal)
        with kernel:
            assert kernel.recovered.contexts_created == 0
            assert kernel.stats.contexts_created == 2 == journal.recover_op_count("contexts_created")


@pytest.mark.parametrize("mode", ["landlock", "no-landlock"] if landlock.abi_version() else ["no-landlock"])
def test_a_deno_json_above_the_run_directory_is_not_read(store: Path, tmp_path: Path, mode: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Kills: Deno started without ``--no-config`` (kernel/_plane.py ``run_deno``). Deno then
    looks for a configuration in the directory it runs in and in every directory above: the
    run's private directory lies in the system's temporary directory, where anyone may put a
    ``deno.json`` — its settings (here: an unstable API switched on) would reach every script.
    The script runs as if there were none, with Landlock (which keeps Deno from reading the file)
    and as on a system without it (where only the flag does)."""
    if mode == "no-landlock":
        monkeypatch.setattr(landlock, "_version", 0)
    runs = tmp_path / "tmp"
    runs.mkdir()
    (runs / "deno.json").write_text(json.dumps({"unstable": ["kv"]}))
    monkeypatch.setattr(tempfile, "tempdir", str(runs))  # where the run's private directory goes
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    with kernel:
        kernel.run_script("Krepis.ops.report(typeof Deno.openKv);", stderr=io.BytesIO(), timeout=60)
    assert seen == ["undefined"]
    assert [p.name for p in runs.iterdir()] == ["deno.json"]  # (the run's directory was there, and went)
