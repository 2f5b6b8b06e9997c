"""``krepis compact`` and ``krepis du``: space comes back after archiving, and nothing is lost —
not by a compaction killed (SIGKILL) at any of its steps, not while another process holds the
store, not by what a planted name in the store directory points at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from krepis import SovereignJournal, StorageError
from krepis.cli import cli
from krepis.storage import backup, restore
from krepis.storage.lmdb import compact, disk_use
from krepis.storage.lmdb._compact import COMPACT_DIR
from krepis.tlog._note import generate_signer
from test_archive import fill_fast, realistic

SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(path: Path, archive: Path | None) -> dict[str, Any]:
    """Everything a reader can see of the store: every entry (archived ones from ``archive``),
    counters, the tree and the signed checkpoints."""
    with SovereignJournal(path) as j:
        report = j.verify()
        return {
            "entries": [(x.timestamp, x.op_name, x.request_id, str(x.status), x.duration_us, x.error)
                        for x in j.iter_logs(order="append", newest_first=False, archive=archive)],
            "counters": j.op_counts(),
            "count": j.journal_count(),
            "root": report.root,
            "tree_size": report.tree_size,
            "checkpoints": j.checkpoints(),
            "next_seq": j.next_seq(),
        }


def archived_store(tmp_path: Path, n: int, keep: int) -> tuple[Path, Path]:
    store, arch = tmp_path / "store", tmp_path / "archive"
    with SovereignJournal(store) as j:
        fill_fast(j, realistic(n))
        j.sign_checkpoint(generate_signer("compact.example/log"))
        j.archive(arch, keep_last=keep)
        j.sign_checkpoint(generate_signer("compact.example/log"))
    return store, arch


def test_compact_after_archiving_99_percent_returns_90_percent_keeps_everything(tmp_path: Path) -> None:
    store, arch = archived_store(tmp_path, 60_000, 600)
    before = snapshot(store, arch)
    use = disk_use(store)
    assert use.free > use.data_apparent * 0.8  # what the archive took became free pages
    result = compact(store)
    after_use = disk_use(store)
    assert result.before == use.data and result.after == after_use.data
    assert after_use.total <= use.total * 0.10, (use, after_use)
    assert after_use.free < after_use.data_apparent * 0.2
    assert snapshot(store, arch) == before
    assert not (store / COMPACT_DIR).exists()
    # the compacted store keeps working: writes, reads, proofs over the whole tree
    with SovereignJournal(store) as j:
        size = j.tree_head().size
        assert j.record(realistic(1, seed=5)[0], increment="op_new") == 1
        assert j.next_seq() == size + 1
        assert j.verify().tree_size == size + 1


def test_compact_keeps_writes_only_the_commit_log_held(tmp_path: Path) -> None:
    """A writer killed with its last writes in the commit log only (interval policy, applier
    never ran): compaction applies them first."""
    store = tmp_path / "store"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {SRC!r})
        from krepis import SovereignJournal, TransactionLog, LogStatus
        j = SovereignJournal({str(store)!r})
        for i in range(500):
            j.record(TransactionLog(1_764_424_000_000 + i, "op_a", f"r{{i}}", LogStatus.Completed),
                     increment="op_a")
        j.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KREPIS_FLUSH": "interval:100ms"})
    assert proc.returncode == -signal.SIGKILL
    compact(store)
    with SovereignJournal(store) as j:
        assert j.journal_count() == 500 and j.op_counts() == {"op_a": 500}
        assert j.verify().entries == 500


HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {src!r})
    from krepis import SovereignJournal
    j = SovereignJournal({store!r})
    print("open", flush=True)
    sys.stdin.readline()
    j.close()
""")


def test_compact_is_refused_while_another_process_has_the_store_open(tmp_path: Path) -> None:
    store, arch = archived_store(tmp_path, 3_000, 256)
    before = snapshot(store, arch)
    data_before = (store / "data.mdb").stat().st_size
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(src=SRC, store=str(store))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match=str(store)):
            compact(store)
        result = CliRunner().invoke(cli, ["--storage", str(store), "compact"])
        assert result.exit_code != 0 and "open" in result.output
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    assert (store / "data.mdb").stat().st_size == data_before
    assert not (store / COMPACT_DIR).exists()
    assert snapshot(store, arch) == before
    compact(store)  # and once it is closed, compaction runs
    assert snapshot(store, arch) == before


KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from krepis.storage.lmdb import _compact

    target = int(sys.argv[1])
    count = 0

    def step(name, fn):
        def wrapped(*args, **kwargs):
            global count
            count += 1
            if count == target:
                print(name, flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            result = fn(*args, **kwargs)
            count += 1
            if count == target:
                print(name + " done", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapped

    for name in ("fsync_fd", "remove_at", "make_private_dir", "create_exclusive", "copy_compacted",
                 "_copy_db", "_check_copy", "_unapplied", "_summary"):
        setattr(_compact, name, step(name, getattr(_compact, name)))
    os.rename = step("rename", os.rename)
    _compact.compact({store!r})
    print("finished", flush=True)
""")


def test_a_compaction_killed_at_every_step_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL before and after each file-system step of ``compact`` (each flush, rename,
    removal, creation, the copy and its check): the store opens whole every time (every entry,
    counter, tree node and checkpoint), and the next compaction completes."""
    store, arch = archived_store(tmp_path, 3_000, 256)
    before = snapshot(store, arch)
    steps: list[str] = []
    for target in range(1, 200):
        proc = subprocess.run([sys.executable, "-c", KILLER.format(src=SRC, store=str(store)), str(target)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            assert proc.stdout.strip().endswith("finished"), proc.stdout
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        steps.append(proc.stdout.strip())
        assert snapshot(store, arch) == before, f"killed at step {target} ({steps[-1]})"
        leftover = set(os.listdir(store)) - {"data.mdb", "lock.mdb", "commit.log", "commit.state",
                                             COMPACT_DIR}
        assert not leftover, (steps[-1], leftover)
    else:
        pytest.fail(f"compact never finished: {steps}")
    assert "rename" in steps and "rename done" in steps and "_check_copy done" in steps, steps
    assert len(steps) >= 20, steps
    assert snapshot(store, arch) == before
    assert not (store / COMPACT_DIR).exists()


def test_a_planted_compact_directory_is_removed_never_followed(tmp_path: Path) -> None:
    store, arch = archived_store(tmp_path, 1_000, 256)
    before = snapshot(store, arch)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.mdb").write_bytes(b"precious")
    (store / COMPACT_DIR).symlink_to(victim)
    compact(store)
    assert (victim / "data.mdb").read_bytes() == b"precious"
    assert not (store / COMPACT_DIR).exists()
    assert snapshot(store, arch) == before


def test_backup_writes_a_compacted_copy_that_restores_everything(tmp_path: Path) -> None:
    store, arch = archived_store(tmp_path, 60_000, 600)
    before = snapshot(store, arch)
    live = disk_use(store)
    backup(store, tmp_path / "backup")
    assert (tmp_path / "backup" / "data.mdb").stat().st_blocks * 512 <= live.data * 0.10
    restore(tmp_path / "backup", tmp_path / "restored")
    assert snapshot(tmp_path / "restored", arch) == before


def test_cli_du_and_compact(tmp_path: Path) -> None:
    store, _arch = archived_store(tmp_path, 20_000, 256)
    runner = CliRunner()
    out = runner.invoke(cli, ["--storage", str(store), "du", "--json"])
    assert out.exit_code == 0, out.output
    use = json.loads(out.output)
    assert use["storage"] == str(store) and use["entries"] == 20_000 - (20_000 - 256) // 256 * 256
    assert use["total"] == use["data"] + use["log"] + use["state"] + use["lock"]
    assert use["data"] == (store / "data.mdb").stat().st_blocks * 512
    assert use["free"] > use["data"] // 2
    text = runner.invoke(cli, ["--storage", str(store), "du"])
    assert text.exit_code == 0 and "krepis compact" in text.output and "data.mdb" in text.output
    done = runner.invoke(cli, ["--storage", str(store), "compact", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["after"] < result["before"] and result["entries"] == use["entries"]
    again = json.loads(runner.invoke(cli, ["--storage", str(store), "du", "--json"]).output)
    assert again["data"] == result["after"] and again["free"] < again["data"]
    plain = runner.invoke(cli, ["--storage", str(store), "compact"])
    assert plain.exit_code == 0 and "entries kept" in plain.output


@pytest.mark.parametrize("command", ["du", "compact"])
def test_cli_du_and_compact_refuse_what_they_cannot_do(tmp_path: Path, command: str) -> None:
    runner = CliRunner()
    missing = tmp_path / "nothing"
    out = runner.invoke(cli, ["--storage", str(missing), command])
    assert out.exit_code != 0 and str(missing) in out.output
    assert not missing.exists()  # neither creates a store
    pg = runner.invoke(cli, ["--storage", "postgresql://localhost/x", command])
    assert pg.exit_code == 2 and "LMDB" in pg.output
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = runner.invoke(cli, ["--storage", str(afile), command])
    assert out.exit_code != 0 and str(afile) in out.output
    assert afile.read_text() == "x"
