"""Mount powerloss-fs, run writers on it, cut the power, and check what survived.

The pieces:

* :func:`fuse_unavailable` — why this machine cannot run the tests (``None`` when it can).
* :class:`PowerLossMount` — a mounted powerloss-fs (a child process) with its control socket.
* :class:`Zygote` — forks writer processes on demand (see :mod:`powerloss.writer`).
* :func:`run_cut` — one round: start writers, wait a random moment, SIGKILL them, cut the power.
* :func:`check_store` — open a copy of the post-cut store and check it against the acks.
* :func:`verify_store_hook` — where a full store verification is called.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS_DIR = str(Path(__file__).resolve().parent.parent)
STORE = "store"  # the store's directory, relative to the mount
DATA_FILE = f"{STORE}/data.mdb"
LOG_FILE = f"{STORE}/commit.log"  # a commit is durable once its record here is flushed


class DurabilityViolation(AssertionError):
    """The post-cut store broke a promise of its flush policy."""


def fuse_unavailable() -> str | None:
    """The reason this machine cannot run the power-loss tests, or ``None`` when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (no FUSE in this kernel/container)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror}"
    probe = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return ("the FUSE binding mfusepy cannot be loaded (pip install mfusepy; apt-get install "
                f"fuse3): {last}")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        return "not root and fusermount3 is missing (apt-get install fuse3)"
    return None


def _unmount(mountpoint: str) -> None:
    for cmd in (["fusermount3", "-u", "-q", mountpoint], ["umount", mountpoint],
                ["umount", "-l", mountpoint]):
        if not os.path.ismount(mountpoint):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, timeout=30)


class PowerLossMount:
    """powerloss-fs mounted at ``root/mnt`` over ``root/backing`` (durable image in ``root/shadow``).

    Whatever ``backing`` holds at mount time counts as durable. Use as a context manager.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backing = root / "backing"
        self.shadow = root / "shadow"
        self.mnt = root / "mnt"
        self.control = str(root / "control.sock")
        for d in (self.backing, self.shadow, self.mnt):
            d.mkdir(parents=True, exist_ok=True)
        self._log = open(root / "fs.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "powerloss.fs", str(self.backing), str(self.shadow), str(self.mnt),
             self.control], cwd=TESTS_DIR, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT)
        self._sock: socket.socket | None = None
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"powerloss-fs exited with {self.proc.returncode}: {self.log_text()}")
            if os.path.ismount(self.mnt) and os.path.exists(self.control):
                try:
                    self.request({"cmd": "ping"})
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"powerloss-fs did not come up in 30 s: {self.log_text()}")
            time.sleep(0.01)

    def log_text(self) -> str:
        try:
            return (self.root / "fs.log").read_text(errors="replace")[-4000:]
        except OSError:
            return "?"

    def request(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(60)
            sock.connect(self.control)
            self._sock = sock
            self._stream = sock.makefile("rwb")
        self._stream.write(json.dumps(msg).encode() + b"\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise OSError(f"powerloss-fs closed the control socket: {self.log_text()}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"powerloss-fs refused {msg}: {reply.get('error')}")
        return reply

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.request({"cmd": "stats"})["stats"]
        return stats

    def cut(self, mode: str, seed: int, sector: int = 512) -> dict[str, Any]:
        """Cut the power (every process using the mount must be dead): see :mod:`powerloss.fs`."""
        msg = {"cmd": "cut", "mode": mode, "seed": seed, "sector": sector}
        report: dict[str, Any] = self.request(msg)["report"]
        return report

    def set_ignore_fsync(self, ignore: bool) -> None:
        self.request({"cmd": "config", "ignore_fsync": ignore})

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        _unmount(str(self.mnt))
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> PowerLossMount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Zygote:
    """A pre-imported process that forks writers (see :mod:`powerloss.writer`)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "powerloss.writer"], cwd=TESTS_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"writer zygote died ({self.proc.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(self, spec: dict[str, Any]) -> int:
        pid: int = self._ask({"cmd": "spawn", "spec": spec})["pid"]
        return pid

    def reap(self, pid: int) -> int:
        status: int = self._ask({"cmd": "reap", "pid": pid})["status"]
        return status

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Ack:
    request_id: str
    at_ns: int  # CLOCK_MONOTONIC when the call had returned


@dataclass
class Round:
    """What one cut saw: the acknowledged writes, the file system's counters, the cut report."""

    number: int
    mode: str
    seed: int
    sector: int
    acks: list[Ack]
    writers: int  # threads/tasks in all writer processes: at most this many writes in flight
    fsyncs: int  # fsync/fdatasync/O_DSYNC writes of the commit log during the round
    last_durable_ns: int  # when the commit log was last made durable (0: never)
    cut_report: dict[str, Any] = field(default_factory=dict)
    trigger: str = "time"


def _read_acks(paths: list[Path]) -> list[Ack]:
    acks = []
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        for line in text.split("\n")[:-1]:  # a line cut by the kill is no acknowledgement
            rid, at = line.split(" ")
            acks.append(Ack(rid, int(at)))
    return acks


def _durable_count(stats: dict[str, Any]) -> int:
    return int(stats["fsyncs"].get(LOG_FILE, 0)) + int(stats["sync_writes"].get(LOG_FILE, 0))


def run_cut(
    fs: PowerLossMount,
    zygote: Zygote,
    workdir: Path,
    *,
    number: int,
    mode: str,
    flush: str,
    kind: str = "threads",
    threads: int = 1,
    processes: int = 1,
    rng: random.Random,
    broken: str | None = None,
    min_acks: int | None = None,
    trigger: str | None = None,
) -> Round:
    """One power cut: start the writers, let them run to a random moment, SIGKILL them all, cut.

    The moment is random. ``trigger="time"``: after ``min_acks`` acknowledgements (by default 0
    in one round of eight, else 1 to 40), plus 0 to 20 ms. ``trigger="event"``: right before the
    N-th write or fsync of the data file or of the commit log (either at random; N from 1 to 120;
    the file system freezes there, see :mod:`powerloss.fs`), which lands cuts inside commits and
    checkpoints: between a record's write and its flush, among a commit's page writes, inside a
    checkpoint's flush of the data file or its write of a slot. By default one trigger or the
    other at random (``"time"`` when ``min_acks`` is given).
    Returns what the checks need.
    """
    if trigger is None:
        trigger = "time" if min_acks is not None else rng.choice(("time", "event"))
    if trigger not in ("time", "event"):
        raise ValueError(f"trigger must be 'time' or 'event', got {trigger!r}")
    if min_acks is None:
        min_acks = 0 if rng.random() < 0.125 else rng.randint(1, 40)
    delay = rng.uniform(0, 0.02)
    events = rng.randint(1, 120)
    armed = rng.choice((DATA_FILE, LOG_FILE))
    seed = rng.getrandbits(32)
    sector = rng.choice((512, 512, 4096))
    before = fs.stats()
    acks_files = [workdir / f"r{number}.p{p}.acks" for p in range(processes)]
    err = workdir / f"r{number}.err"
    if trigger == "event":
        fs.request({"cmd": "arm", "file": armed, "events": events})
    pids = [zygote.spawn({"store": str(fs.mnt / STORE), "flush": flush, "kind": kind, "threads": threads,
                          "tag": f"r{number}p{p}", "ack": str(acks_files[p]), "err": str(err),
                          "broken": broken})
            for p in range(processes)]
    deadline = time.monotonic() + 60
    after: dict[str, Any] | None = None
    report: dict[str, Any] | None = None
    try:
        while True:
            if err.exists() and err.stat().st_size:
                break
            if trigger == "event":
                if fs.stats()["state"] == "frozen":
                    break
            elif not min_acks or (sum(f.stat().st_size for f in acks_files if f.exists())
                                  and len(_read_acks(acks_files)) >= min_acks):
                time.sleep(delay)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"round {number}: the writers did not reach the cut ({trigger}, "
                                   f"{min_acks} acks / event {events}) in 60 s")
            time.sleep(0.001)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if trigger == "event":
            if fs.stats()["state"] == "frozen":  # nothing moves: cut now, then let them die
                after = fs.stats()
                report = fs.cut(mode, seed, sector)
            fs.request({"cmd": "thaw"})
        statuses = [zygote.reap(pid) for pid in pids]
        if trigger == "event":
            fs.request({"cmd": "resume"})
    errors = err.read_text() if err.exists() else ""
    if errors or any(not os.WIFSIGNALED(s) for s in statuses):
        message = f"round {number}: a writer failed before the cut (statuses {statuses}):\n{errors}"
        if "CorruptStorageError" in errors or "MDB_CORRUPTED" in errors or "MDB_PAGE_NOTFOUND" in errors:
            # the store passed the check after the previous cut, yet is damaged where it did not look
            raise DurabilityViolation(f"{message}\n(the store left by the previous cut is corrupt)")
        raise RuntimeError(message)
    if report is None or after is None:
        after = fs.stats()
        report = fs.cut(mode, seed, sector)
    acks = _read_acks(acks_files)  # after the writers are gone: complete lines only
    return Round(number, mode, seed, sector, acks, threads * processes,
                 _durable_count(after) - _durable_count(before),
                 int(after["last_durable_ns"].get(LOG_FILE, 0)), report, trigger)


def verify_store_hook(journal: Any) -> None:
    """THE place where a full store verification runs after each cut.

    ``SovereignJournal.verify`` checks every entry, index row and the Merkle tree; any failure
    it reports is a :class:`DurabilityViolation`.
    """
    verify = getattr(journal, "verify", None)
    if verify is None:
        return
    try:
        result = verify()
    except Exception as exc:
        raise DurabilityViolation(f"store verification failed: {type(exc).__name__}: {exc}") from exc
    if result is False or getattr(result, "ok", True) is False:
        raise DurabilityViolation(f"store verification failed: {result!r}")


def inspect_store(path: str, probe_id: str) -> dict[str, Any]:
    """Open the store at ``path`` and read what the checks need (runs in a forked child: a
    corrupt LMDB file may crash the process that maps it).

    Returns ``{"stage": "open"|"read", "error": ...}`` when it fails, else the counters,
    ``journal_count()``, every request id in arrival order, and the counter and count after one
    more write (a cut may break pages no read touches: the free list, another tree's branches).
    """
    from krepis import LogStatus, SovereignJournal, TransactionLog
    from krepis._model import now_ms

    try:
        journal = SovereignJournal(path, flush="sync", create=False)
    except Exception as exc:
        return {"stage": "open", "error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__}
    with journal:
        try:
            verify_store_hook(journal)
            counters = journal.op_counts()
            count = journal.journal_count()
            ids = [log.request_id for log in journal.iter_logs(newest_first=False)]
            probe = journal.record(TransactionLog(now_ms(), "op", probe_id, LogStatus.Completed),
                                   increment="op")
            return {"counters": counters, "count": count, "ids": ids,
                    "after_probe": [probe, journal.journal_count()]}
        except Exception as exc:
            return {"stage": "read", "error": f"{type(exc).__name__}: {exc}"}


def check_store(fs: PowerLossMount, zygote: Zygote, rnd: Round, survivors: set[str], *, policy: str,
                scratch: Path, detected_ok: bool = False) -> set[str] | None:
    """Check the post-cut store against the promises of ``policy``; return the entries it holds.

    With ``detected_ok``, a store that refuses to open with ``CorruptStorageError`` (it detected
    the damage and says so) is accepted: the result is then ``None``. Anything else that goes
    wrong after it opened is a silent inconsistency and fails.

    On a copy of the post-cut files, in a forked child (nothing of the check touches the mount):

    * it opens (and :func:`verify_store_hook` passes), reads, and takes one more write — and the
      process reading it does not crash;
    * counters equal entries: the ``op`` counter == ``journal_count()`` == the entries a full
      scan reads, with no request id twice, and still so after the extra write;
    * nothing durable before the cut was lost: every entry that survived an earlier cut;
    * ``sync``: every acknowledged write is there; ``interval``: every write acknowledged before
      the file system last made the data file durable is there (only the last window may be
      missing);
    * per writer thread the entries present are a prefix of what it wrote (no holes), and at
      most one unacknowledged write per thread (the one in flight at the cut) is there.

    Raises :class:`DurabilityViolation` naming the round, mode, seed and what is wrong.
    """
    where = (f"round {rnd.number} (mode {rnd.mode}, seed {rnd.seed}, sector {rnd.sector}, cut at "
             f"{rnd.trigger}, {policy})")
    copy = scratch / f"verify-{rnd.number}"
    out = scratch / f"verify-{rnd.number}.json"
    err = scratch / f"verify-{rnd.number}.err"
    shutil.copytree(fs.backing / STORE, copy, ignore=shutil.ignore_patterns("lock.mdb"))
    try:
        pid = zygote.spawn({"kind": "inspect", "store": str(copy), "probe": f"probe-{rnd.number}",
                            "out": str(out), "err": str(err)})
        status = zygote.reap(pid)
        if os.WIFSIGNALED(status):
            raise DurabilityViolation(f"{where}: reading the store crashed the reader with signal "
                                      f"{signal.Signals(os.WTERMSIG(status)).name}")
        if not out.exists():
            raise RuntimeError(f"{where}: the store inspector failed ({status}): "
                               f"{err.read_text() if err.exists() else '?'}")
        seen = json.loads(out.read_text())
    finally:
        shutil.rmtree(copy, ignore_errors=True)
        out.unlink(missing_ok=True)
    if "error" in seen and detected_ok and seen["stage"] == "open" and \
            seen["type"] == "CorruptStorageError":
        return None
    if "error" in seen:
        what = "does not open" if seen["stage"] == "open" else "opened but cannot be read or written"
        raise DurabilityViolation(f"{where}: the store {what}: {seen['error']}")
    counters: dict[str, int] = seen["counters"]
    count: int = seen["count"]
    ids: list[str] = seen["ids"]
    after_probe = tuple(seen["after_probe"])
    present = set(ids)
    problems: list[str] = []
    if counters.get("op", 0) != count or count != len(ids):
        problems.append(f"counters disagree with entries: counter op={counters.get('op', 0)}, "
                        f"journal_count()={count}, entries scanned={len(ids)}")
    if after_probe != (counters.get("op", 0) + 1, count + 1):
        problems.append(f"after one more write, counter op={after_probe[0]} and journal_count()="
                        f"{after_probe[1]} (before: {counters.get('op', 0)}, {count})")
    if len(present) != len(ids):
        problems.append(f"{len(ids) - len(present)} request ids stored twice")
    lost_old = survivors - present
    if lost_old:
        problems.append(f"{len(lost_old)} entries durable before this round vanished: {sorted(lost_old)[:5]}")
    if policy == "sync":
        must = [a for a in rnd.acks]
    else:
        must = [a for a in rnd.acks if a.at_ns < rnd.last_durable_ns]
    lost = sorted(a.request_id for a in must if a.request_id not in present)
    if lost:
        problems.append(f"{len(lost)} of {len(rnd.acks)} acknowledged writes lost "
                        f"({len(must)} had to survive): {lost[:5]}")
    acked = {a.request_id for a in rnd.acks}
    this_round = [rid for rid in ids if rid.startswith(f"r{rnd.number}p")]
    unacked = [rid for rid in this_round if rid not in acked]
    if len(unacked) > rnd.writers:
        problems.append(f"{len(unacked)} unacknowledged writes stored, but at most {rnd.writers} "
                        f"were in flight: {unacked[:5]}")
    per_thread: dict[str, list[int]] = {}
    for rid in this_round:
        stem, _, i = rid.rpartition(".")
        per_thread.setdefault(stem, []).append(int(i))
    holes = {t: sorted(v) for t, v in per_thread.items() if sorted(v) != list(range(len(v)))}
    if holes:
        t, v = next(iter(holes.items()))
        problems.append(f"entries of {len(holes)} writer threads have holes, e.g. {t}: {v[:10]}…")
    if problems:
        raise DurabilityViolation(f"{where}: " + "; ".join(problems))
    return present


def check_fsyncs_reached(rnd: Round) -> None:
    """Under ``sync``: acknowledged writes imply flushes of the commit log reached the file system.

    One writer thread commits alone, so it needs at least one durable point per acknowledged
    write; concurrent writers share commits, so at least one in all.
    """
    need = len(rnd.acks) if rnd.writers == 1 else min(1, len(rnd.acks))
    if rnd.fsyncs < need:
        raise DurabilityViolation(
            f"round {rnd.number}: {len(rnd.acks)} writes acknowledged under 'sync' but only "
            f"{rnd.fsyncs} fsync/fdatasync/O_DSYNC writes of {LOG_FILE} reached the file system "
            f"(need >= {need})")


def make_store(backing: Path) -> None:
    """Create an empty store directly on the backing directory (durable before any cut)."""
    from krepis import SovereignJournal

    SovereignJournal(backing / STORE, flush="sync").close()
