"""Power-loss tests: writers on powerloss-fs (tests/powerloss/), the power cut at random moments.

A SIGKILL leaves the page cache intact; a power cut loses every write not made durable by
fsync/fdatasync/O_DSYNC, and a disk may persist an arbitrary, partly torn subset of them. Mode A
drops every non-durable write, mode B keeps a random subset cut at sector granularity (see
tests/powerloss/fs.py). After each cut the store must open, read, take a write, hold every
acknowledged write its policy promises, and its counter must equal its entries.

Needs /dev/fuse and the mfusepy binding (libfuse3): skipped without them, except where CI=true
or KREPIS_REQUIRE_POWERLOSS=1 (as in .ci/run), where missing support fails.
``KREPIS_POWERLOSS_CUTS`` sets the cuts per case (default 25; 8 sync cases → 200 cuts),
``KREPIS_POWERLOSS_SEED`` fixes the random choices.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog
from powerloss.harness import (
    DATA_FILE,
    STORE,
    DurabilityViolation,
    PowerLossMount,
    Round,
    Zygote,
    check_fsyncs_reached,
    check_store,
    fuse_unavailable,
    make_store,
    run_cut,
)

CUTS = int(os.environ.get("KREPIS_POWERLOSS_CUTS", "25"))
SEED = int(os.environ.get("KREPIS_POWERLOSS_SEED", "0")) or random.SystemRandom().getrandbits(32)
REQUIRED = os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_POWERLOSS") == "1"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def fuse_ok() -> None:
    reason = fuse_unavailable()
    if reason is not None:
        if REQUIRED:
            pytest.fail(f"power-loss tests cannot run: {reason} (CI=true or KREPIS_REQUIRE_POWERLOSS=1 "
                        "requires them; .ci/run installs fuse3 and mfusepy)")
        pytest.skip(f"power-loss tests need FUSE: {reason}")


@dataclass
class Rig:
    fs: PowerLossMount
    zygote: Zygote
    work: Path
    rng: random.Random
    survivors: set[str]
    note: str  # how to reproduce the random choices

    def cut(self, number: int, *, mode: str, flush: str, **writers: object) -> Round:
        try:
            return run_cut(self.fs, self.zygote, self.work, number=number, mode=mode, flush=flush,
                           rng=self.rng, **writers)  # type: ignore[arg-type]
        except RuntimeError as exc:
            raise RuntimeError(f"{exc} [{self.note}; powerloss-fs log: {self.fs.log_text()}]") from exc

    def check(self, rnd: Round, policy: str, *, detected_ok: bool = False) -> bool:
        """Check the post-cut store; False when it refused to open, detecting its damage
        (accepted only with ``detected_ok``: the store is then replaced by a new one)."""
        try:
            present = check_store(self.fs, self.zygote, rnd, self.survivors, policy=policy,
                                  scratch=self.work, detected_ok=detected_ok)
        except DurabilityViolation as exc:
            raise DurabilityViolation(f"{exc} [{self.note}]") from exc
        if present is None:
            self.replace_store()
            return False
        self.survivors = present
        return True

    def replace_store(self) -> None:
        """Remove the store (through the mount) and create a new one, durably."""
        shutil.rmtree(self.fs.mnt / STORE)
        pid = self.zygote.spawn({"kind": "create", "store": str(self.fs.mnt / STORE),
                                 "err": str(self.work / "create.err")})
        assert self.zygote.reap(pid) == 0, (self.work / "create.err").read_text()
        self.survivors = set()


@pytest.fixture
def rig(fuse_ok: None, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Rig]:
    """A fresh store (durable before the first cut) on a mounted powerloss-fs, and a writer zygote."""
    make_store(tmp_path / "backing")
    seed = SEED ^ zlib.crc32(request.node.name.encode())
    with PowerLossMount(tmp_path) as fs, Zygote() as zygote:
        yield Rig(fs, zygote, tmp_path, random.Random(seed), set(), f"KREPIS_POWERLOSS_SEED={SEED}")


SYNC_WRITERS = {
    "1-thread": {"kind": "threads", "threads": 1},
    "16-threads": {"kind": "threads", "threads": 16},
    "4-processes": {"kind": "threads", "threads": 1, "processes": 4},
    "asyncio": {"kind": "async", "threads": 8},
}


@pytest.mark.parametrize("mode", ["A", "B"])
@pytest.mark.parametrize("writers", list(SYNC_WRITERS))
def test_sync_survives_power_cuts(rig: Rig, writers: str, mode: str) -> None:
    """Under ``sync``, after every cut: the store opens, reads and writes; every acknowledged
    write is there; counter == journal_count() == entries; fsyncs reached the file system."""
    acked = fsyncs = caught_pending = 0
    for n in range(CUTS):
        rnd = rig.cut(n, mode=mode, flush="sync", **SYNC_WRITERS[writers])
        rig.check(rnd, "sync")
        check_fsyncs_reached(rnd)
        acked += len(rnd.acks)
        fsyncs += rnd.fsyncs
        caught_pending += DATA_FILE in rnd.cut_report["files"]
    assert acked >= CUTS // 2, f"only {acked} writes acknowledged in {CUTS} cuts: the test checked little"
    print(f"{writers}/{mode}: {CUTS} cuts, {acked} acks, {fsyncs} durable points, "
          f"{caught_pending} cuts with unsynced data-file writes pending")


def test_interval_drop_mode_loses_only_the_last_window(rig: Rig) -> None:
    """``interval:10ms``, mode A: only writes acknowledged after the data file was last made
    durable may be missing; the store opens intact with counter == entries."""
    must = fsyncs = 0
    for n in range(CUTS):
        rnd = rig.cut(n, mode="A", flush="interval:10ms", kind="threads", threads=4)
        rig.check(rnd, "interval")
        must += sum(a.at_ns < rnd.last_durable_ns for a in rnd.acks)
        fsyncs += rnd.fsyncs
    # not vacuous: the background sync ran, and acknowledged writes depended on it
    assert CUTS < 5 or (fsyncs > 0 and must > 0), (fsyncs, must)


def test_interval_torn_mode_is_never_silently_inconsistent(rig: Rig) -> None:
    """``interval:10ms``, mode B, the minimum: a store that OPENS is consistent — readable,
    writable, counter == entries, only the last window missing. Refusing to open with
    ``CorruptStorageError`` (damage detected and said) is accepted here; the store is then
    replaced. Cuts stop at the first violation."""
    for n in range(max(CUTS, 40)):
        rnd = rig.cut(n, mode="B", flush="interval:10ms", kind="threads", threads=4)
        rig.check(rnd, "interval", detected_ok=True)


def test_interval_torn_mode_opens_intact(rig: Rig) -> None:
    """``interval:10ms``, mode B: the store always opens intact with counter == entries, only
    the last window missing (the commit log's checkpoint and records, not LMDB's unsynced
    pages, are what recovery trusts)."""
    for n in range(max(CUTS, 40)):
        rnd = rig.cut(n, mode="B", flush="interval:10ms", kind="threads", threads=4)
        rig.check(rnd, "interval")


# -- the harness catches broken designs ---------------------------------------------------------

def test_harness_catches_acknowledging_before_sync(rig: Rig) -> None:
    """A writer that never flushes its commit log (acknowledges before its data is durable)
    fails the durability check after a drop-mode cut, and the fsync check sees that no flush of
    the log reached the file system. Deterministic: the broken writer flushes nothing at all and
    LMDB applies nothing in the background, so every acknowledged write is lost."""
    rnd = rig.cut(0, mode="A", flush="sync", kind="threads", threads=1, broken="nosync", min_acks=5)
    assert rnd.fsyncs == 0
    with pytest.raises(DurabilityViolation, match=r"only 0 fsync"):
        check_fsyncs_reached(rnd)
    with pytest.raises(DurabilityViolation, match="acknowledged writes lost"):
        rig.check(rnd, "sync")


def test_harness_catches_committing_without_sync_or_log(rig: Rig) -> None:
    """A writer that writes no log record (its writes live in memory until LMDB applies them)
    loses acknowledged writes at a drop-mode cut."""
    rnd = rig.cut(0, mode="A", flush="sync", kind="threads", threads=1, broken="nolog", min_acks=5)
    with pytest.raises(DurabilityViolation, match="acknowledged writes lost"):
        rig.check(rnd, "sync")


def test_harness_catches_lmdb_applications_that_are_not_durable(rig: Rig) -> None:
    """Writers whose LMDB applications of the log are not synced, while the log's space is
    reused as if they were: at a drop-mode cut data.mdb loses those applications, and the records
    they applied are gone from the log too (a 64 KiB ring laps several times in the round), so
    the store cannot come back whole — the check fails."""
    shutil.rmtree(rig.fs.mnt / STORE)
    pid = rig.zygote.spawn({"kind": "create", "store": str(rig.fs.mnt / STORE), "ring": 64 << 10,
                            "err": str(rig.work / "create.err")})
    assert rig.zygote.reap(pid) == 0, (rig.work / "create.err").read_text()
    rnd = rig.cut(0, mode="A", flush="sync", kind="threads", threads=4, broken="noapplysync",
                  min_acks=2000)
    with pytest.raises(DurabilityViolation):
        rig.check(rnd, "sync")


def test_harness_catches_acknowledging_before_sync_in_torn_mode(rig: Rig) -> None:
    """The same broken writer fails in mode B too (within a few cuts: a random subset may keep
    everything once)."""
    with pytest.raises(DurabilityViolation):
        for n in range(8):  # the first violation ends it: the store may be broken for good
            rnd = rig.cut(n, mode="B", flush="sync", kind="threads", threads=4, broken="nosync",
                          min_acks=20)
            rig.check(rnd, "sync")


def test_harness_catches_a_disk_that_ignores_fsync(rig: Rig) -> None:
    """With fsync disabled below krepis (the file system acknowledges fsync and keeps nothing),
    acknowledged ``sync`` writes are lost at the cut and the check says so."""
    rig.fs.set_ignore_fsync(True)
    rnd = rig.cut(0, mode="A", flush="sync", kind="threads", threads=1, min_acks=5)
    with pytest.raises(DurabilityViolation, match="acknowledged writes lost"):
        rig.check(rnd, "sync")


# -- powerloss-fs itself --------------------------------------------------------------------------

@pytest.fixture
def plfs(fuse_ok: None, tmp_path: Path) -> Iterator[PowerLossMount]:
    with PowerLossMount(tmp_path) as fs:
        yield fs


def _write(path: Path, data: bytes, offset: int = 0, *, flags: int = 0, sync: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_fs_drop_mode_keeps_exactly_the_synced_bytes(plfs: PowerLossMount) -> None:
    f = plfs.mnt / "f"
    _write(f, b"a" * 4096, sync=True)
    _write(f, b"b" * 100, 10)  # not synced: lost
    _write(f, b"c" * 4096, 4096)  # not synced, grows the file: lost, size too
    assert f.read_bytes() == b"a" * 10 + b"b" * 100 + b"a" * (4096 - 110) + b"c" * 4096
    assert plfs.stats()["fsyncs"]["f"] == 1
    plfs.cut("A", seed=1)
    assert f.read_bytes() == b"a" * 4096
    assert (plfs.backing / "f").read_bytes() == b"a" * 4096


def test_fs_a_dsync_write_is_durable_when_it_returns(plfs: PowerLossMount) -> None:
    """An O_DSYNC write is durable on return — it alone, not the file's earlier pending writes;
    and a pending write it overwrote cannot resurface in torn mode."""
    f = plfs.mnt / "f"
    _write(f, b"x" * 1024, sync=True)
    _write(f, b"w" * 1024)  # pending
    _write(f, b"z" * 512, 1024)  # pending
    _write(f, b"y" * 512, flags=os.O_DSYNC)  # durable, over the first half of the "w" write
    plfs.cut("A", seed=1)
    assert f.read_bytes() == b"y" * 512 + b"x" * 512
    for seed in range(10):
        _write(f, b"w" * 1024)
        _write(f, b"y" * 512, flags=os.O_DSYNC)
        plfs.cut("B", seed=seed)
        assert f.read_bytes()[:512] == b"y" * 512


def test_fs_namespace_changes_wait_for_an_fsync(plfs: PowerLossMount) -> None:
    (plfs.mnt / "d").mkdir()
    _write(plfs.mnt / "d" / "kept", b"k", sync=True)  # the fsync commits mkdir and create
    _write(plfs.mnt / "d" / "lost", b"l")  # created after the last fsync: gone
    plfs.cut("A", seed=1)
    assert sorted(p.name for p in (plfs.mnt / "d").iterdir()) == ["kept"]
    assert (plfs.mnt / "d" / "kept").read_bytes() == b"k"


def test_fs_torn_mode_keeps_a_random_subset_of_whole_sectors(plfs: PowerLossMount) -> None:
    """Mode B: every 512-byte sector of an unsynced write is old or new on its own; over seeds
    we see all-old, all-new and torn results; synced bytes are never touched."""
    f = plfs.mnt / "f"
    size = 32 * 512
    outcomes = set()
    for seed in range(40):
        _write(f, b"\0" * size, sync=True)
        _write(f, b"\xff" * size)
        report = plfs.cut("B", seed=seed, sector=512)
        data = f.read_bytes()
        assert len(data) == size
        sectors = [data[i:i + 512] for i in range(0, size, 512)]
        assert all(s in (b"\0" * 512, b"\xff" * 512) for s in sectors), "a sector was torn inside"
        kept = sum(s == b"\xff" * 512 for s in sectors)
        assert kept == report["files"]["f"]["kept_pieces"]
        outcomes.add("new" if kept == len(sectors) else "old" if kept == 0 else "torn")
    assert "torn" in outcomes and len(outcomes) >= 2, outcomes


def test_fs_ignoring_fsync_makes_nothing_durable(plfs: PowerLossMount) -> None:
    f = plfs.mnt / "f"
    _write(f, b"a", sync=True)
    plfs.set_ignore_fsync(True)
    _write(f, b"b", sync=True)
    plfs.cut("A", seed=1)
    assert f.read_bytes() == b"a"


def test_fs_freezes_at_the_armed_event_and_rejects_changes_until_resumed(plfs: PowerLossMount) -> None:
    """``arm``: the N-th write/fsync of the file blocks (never happens); the cut runs while
    frozen; after ``thaw`` changes fail with EIO until ``resume``."""
    f = plfs.mnt / "f"
    _write(f, b"a" * 8, sync=True)
    plfs.request({"cmd": "arm", "file": "f", "events": 2})
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "os.pwrite(fd, b'b' * 8, 0)\n"  # event 1: happens (pending)
        "os.fsync(fd)\n"  # event 2: freezes, never happens
        "print('fsync returned', flush=True)\n"), str(f)], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while plfs.stats()["state"] != "frozen":
        assert time.monotonic() < deadline, "the armed fsync did not freeze the file system"
        time.sleep(0.005)
    assert (plfs.backing / "f").read_bytes() == b"b" * 8  # the first write went through
    child.send_signal(signal.SIGKILL)
    plfs.cut("A", seed=1)
    plfs.request({"cmd": "thaw"})
    out, _ = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL and out == b""
    assert plfs.stats()["state"] == "rejecting"
    with pytest.raises(OSError) as exc:
        _write(f, b"c")
    assert exc.value.errno == errno.EIO
    plfs.request({"cmd": "resume"})
    assert f.read_bytes() == b"a" * 8  # the write before the frozen fsync was lost
    _write(f, b"d", sync=True)
    assert f.read_bytes() == b"d" + b"a" * 7


def test_fs_a_write_in_flight_at_the_cut_may_be_torn(plfs: PowerLossMount) -> None:
    """The write an event cut lands on was in flight: mode A loses it, mode B keeps some of its
    sectors — even for an O_DSYNC write, which never returned."""
    f = plfs.mnt / "f"
    size = 16 * 512
    outcomes = set()
    for seed in range(8):
        _write(f, b"\0" * size, sync=True)
        plfs.request({"cmd": "arm", "file": "f", "events": 1})
        child = subprocess.Popen([sys.executable, "-c", (
            "import os, sys\n"
            "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DSYNC)\n"
            f"os.pwrite(fd, b'\\xff' * {size}, 0)\n"), str(f)])
        deadline = time.monotonic() + 30
        while plfs.stats()["state"] != "frozen":
            assert time.monotonic() < deadline, "the armed write did not freeze the file system"
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        plfs.cut("A" if seed == 0 else "B", seed=seed, sector=512)
        plfs.request({"cmd": "thaw"})
        child.wait(timeout=30)
        plfs.request({"cmd": "resume"})
        sectors = [f.read_bytes()[i:i + 512] for i in range(0, size, 512)]
        assert all(s in (b"\0" * 512, b"\xff" * 512) for s in sectors)
        kept = sum(s == b"\xff" * 512 for s in sectors)
        if seed == 0:
            assert kept == 0, "mode A kept part of a write that never completed"
        else:
            outcomes.add("new" if kept == len(sectors) else "old" if kept == 0 else "torn")
    assert "torn" in outcomes, outcomes


def test_a_failed_flush_fails_the_write_and_the_journal_refuses_writes_until_reopened(
        plfs: PowerLossMount) -> None:
    """fsync reporting EIO (a disk error) during a durable write: that write raises, and the
    journal refuses every later write — even once the disk works again, since what the failed
    flush kept is unknown — until it is closed and reopened, which recovers a consistent store."""
    store = plfs.mnt / "store"
    journal = SovereignJournal(store)
    for i in range(3):
        journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
    # the next commit writes its commit.log record (event 1), then flushes it (event 2): frozen
    plfs.request({"cmd": "arm", "file": "store/commit.log", "events": 2})
    raised: list[BaseException] = []

    def write() -> None:
        try:
            journal.record(TransactionLog(3, "op", "r3", LogStatus.Completed), increment="op")
        except BaseException as exc:
            raised.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 30
    while plfs.stats()["state"] != "frozen":
        assert time.monotonic() < deadline, "the armed flush did not freeze the file system"
        time.sleep(0.005)
    plfs.request({"cmd": "thaw"})  # the flush (and every change after it) fails with EIO
    writer.join(30)
    assert not writer.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], StorageError), raised
    assert str(store) in str(raised[0]) and "Input/output error" in str(raised[0])
    plfs.request({"cmd": "resume"})  # the disk works again; the journal still refuses
    for _ in range(2):
        refused = (rf"^storage at {store} refuses writes after an earlier failure of its write path "
                   r"\(.*Input/output error.*\); close and reopen it$")
        with pytest.raises(StorageError, match=refused) as info:
            journal.record(TransactionLog(4, "op", "r4", LogStatus.Completed), increment="op")
        assert info.value.path == str(store)
    journal.close()
    with SovereignJournal(store) as reopened:
        assert reopened.journal_count() in (3, 4)  # the failed write's outcome is unknown
        assert reopened.recover_op_count("op") == reopened.journal_count()
        assert reopened.verify().entries == reopened.journal_count()
        reopened.record(TransactionLog(5, "op", "r5", LogStatus.Completed), increment="op")
