"""The log's side and the client's side of witnessing, end to end through the CLI against real
``krepis witness serve`` processes: a checkpoint is kept and published only once a quorum
cosigned it; clients accept it only with that quorum; Go's crypto/ed25519 reads the
cosignatures and Go's note package the log's signature. And the attack witnesses exist for: an
operator who holds the log's key rewrites history (or rolls it back) and re-signs — every
witness refuses to cosign, and a monitor that saw the old checkpoint raises the alarm."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import CosignerKey, Verifier, open_checkpoint, open_cosigned_checkpoint
from krepis.tlog._witness import CONFLICT_OP
from test_tlog_cli import go_check, tlogcheck  # noqa: F401  (the Go checker, built once)

KREPIS = str(Path(sys.executable).parent / "krepis")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("KREPIS_")}


def krepis(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([KREPIS, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=ENV,
                          stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``krepis`` server process (witness serve, tlog serve) on a free port."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([KREPIS, *args, "--listen", f"127.0.0.1:{self.port}"], cwd=cwd, env=ENV,
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        assert "serving" in line, line + self.proc.stderr.read()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def write(store: Path, n: int, tag: str = "r", change: int | None = None) -> None:
    """``n`` entries; with ``change``, entry ``change`` has another request id (a rewrite)."""
    with SovereignJournal(store) as journal:
        for i in range(n):
            rid = f"{tag}{i}" + ("-edited" if i == change else "")
            journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "charge", rid, LogStatus.Completed))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A log key, two witnesses (keys and running servers) that witness it; their URLs in files."""
    vkey = krepis("keygen", "example.com/log", "--key", "log.key", cwd=tmp_path).stdout
    (tmp_path / "log.pub").write_text(vkey)
    servers = []
    try:
        for name in ("w1", "w2"):
            vkey = krepis("keygen", f"witness.example/{name}", "--witness", "--key", f"{name}.key",
                          cwd=tmp_path).stdout
            (tmp_path / f"{name}.pub").write_text(vkey)
            server = Server(tmp_path, "witness", "serve", "--key", f"{name}.key", "--log", "log.pub",
                            "--state", f"{name}-state")
            servers.append(server)
            (tmp_path / f"{name}.url").write_text(server.url)
        yield tmp_path
    finally:
        for server in servers:
            server.stop()


def witness_args(site: Path, *names: str) -> list[str]:
    out = []
    for name in names:
        out += ["--witness", f"{name}={(site / f'{name}.url').read_text()}:{name}.pub"]
    return out


def keys(site: Path, *names: str) -> list[CosignerKey]:
    return [CosignerKey.parse((site / f"{name}.pub").read_text()) for name in names]


def test_a_cosigned_checkpoint_is_kept_published_and_verified(site: Path, tlogcheck: str) -> None:  # noqa: F811
    write(site / "store", 300)
    done = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "w2"),
                  "--quorum", "2", cwd=site)
    note = done.stdout
    assert "witness w1 cosigned" in done.stderr and "witness w2 cosigned" in done.stderr
    log_key = Verifier.parse((site / "log.pub").read_text())
    cosigned = open_cosigned_checkpoint(note, [log_key], keys(site, "w1", "w2"), 2)
    assert cosigned.checkpoint.size == 300
    with SovereignJournal(site / "store", create=False) as journal:
        assert journal.latest_checkpoint() == note
    # published: an export, and tlog serve
    krepis("tlog", "export", "tiles", "--storage", "store", cwd=site)
    assert (site / "tiles" / "checkpoint").read_text() == note
    args = ["--vkey", "log.pub", "--witness-vkey", "w1.pub", "--witness-vkey", "w2.pub"]
    out = krepis("verify", "--tlog", "tiles", *args, cwd=site).stdout
    assert "cosigned by witness.example/w1 at " in out and "witness.example/w2 at " in out
    served = Server(site, "--storage", "store", "tlog", "serve")
    try:
        found = json.loads(krepis("verify", "--tlog", served.url, *args, "--json", cwd=site).stdout)
        assert found["tree_size"] == 300 and found["ok"]
        assert sorted(c["witness"] for c in found["cosignatures"]) == ["witness.example/w1",
                                                                        "witness.example/w2"]
        assert {c["timestamp"] for c in found["cosignatures"]} == {c.timestamp for c in cosigned.cosignatures}
    finally:
        served.stop()
    # Go: the log's signature with the note package (cosignatures are unknown keys to it), and the
    # cosignatures with crypto/ed25519 following tlog-cosignature
    vkey = (site / "log.pub").read_text().strip()
    assert go_check(tlogcheck, str(site / "tiles"), vkey).stdout == "ok 300\n"
    go = subprocess.run([tlogcheck, "cosig", (site / "log.pub").read_text().strip(),
                         (site / "w1.pub").read_text().strip(), (site / "w2.pub").read_text().strip()],
                        input=note, capture_output=True, text=True, timeout=60)
    assert go.returncode == 0, go.stderr
    lines = go.stdout.splitlines()
    assert lines[0] == "ok 300"
    assert sorted(lines[1:]) == sorted(f"{c.witness} {c.timestamp}" for c in cosigned.cosignatures)
    # a cosignature made by Go is byte for byte the one krepis makes, and verifies
    from krepis.tlog import Cosigner, find_cosignatures

    text = note[:note.index("\n\n") + 1]
    go = subprocess.run([tlogcheck, "cosign", (site / "w1.key").read_text().strip(), "1700000000"],
                        input=text, capture_output=True, text=True, timeout=60)
    assert go.returncode == 0, go.stderr
    assert go.stdout == Cosigner.parse((site / "w1.key").read_text()).cosign(text, 1700000000)
    assert find_cosignatures(note + go.stdout, keys(site, "w1"))[0].timestamp != 1700000000  # the first
    assert find_cosignatures(note.split("\u2014 witness")[0] + go.stdout, keys(site, "w1"))[0].timestamp \
        == 1700000000
    # a client asking for a third witness's cosignature does not accept it
    krepis("keygen", "witness.example/w3", "--witness", "--key", "w3.key", cwd=site)
    w3 = krepis("keygen", "witness.example/w3b", "--witness", "--key", "w3b.key", cwd=site).stdout.strip()
    bad = krepis("verify", "--tlog", "tiles", *args, "--witness-vkey", w3, cwd=site, ok=False)
    assert bad.returncode == 1 and "fewer than the quorum of 3 (missing: witness.example/w3b)" in bad.stderr
    assert "ok:" in krepis("verify", "--tlog", "tiles", *args, "--witness-vkey", w3, "--quorum", "2",
                           cwd=site).stdout

    # the log grows; the next round proves from the size each witness cosigned (kept with the note)
    write(site / "store", 50, tag="more")
    note2 = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "w2"),
                   cwd=site).stdout
    assert open_cosigned_checkpoint(note2, [log_key], keys(site, "w1", "w2")).checkpoint.size == 350
    # signing the same tree again without witnesses keeps the cosigned note: it is the same one
    assert krepis("checkpoint", "--key", "log.key", "--storage", "store", cwd=site).stdout == note2
    with SovereignJournal(site / "store", create=False) as journal:
        assert journal.latest_checkpoint() == note2


def test_fewer_than_the_quorum_is_an_error_and_nothing_is_kept_or_published(site: Path) -> None:
    write(site / "store", 40)
    first = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1"),
                   cwd=site).stdout
    write(site / "store", 10, tag="more")
    dead = f"http://127.0.0.1:{free_port()}"
    (site / "dead.url").write_text(dead)
    (site / "dead.pub").write_text((site / "w2.pub").read_text())
    bad = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "dead"),
                 "--timeout", "5", cwd=site, ok=False)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "1 of 2 witness(es) cosigned the checkpoint of tree size 50, fewer than the quorum of 2" \
        in bad.stderr
    assert "dead: POST http://127.0.0.1" in bad.stderr and "nothing was kept" in bad.stderr
    with SovereignJournal(site / "store", create=False) as journal:
        assert journal.latest_checkpoint() == first
    krepis("tlog", "export", "tiles", "--storage", "store", cwd=site)
    assert (site / "tiles" / "checkpoint").read_text() == first
    # a witness that does not know the log says so (404); with a quorum of 1 the round succeeds
    krepis("keygen", "example.com/unknown", "--key", "u.key", cwd=site)
    bad = krepis("checkpoint", "--key", "u.key", "--storage", "store", *witness_args(site, "w1"), cwd=site,
                 ok=False)
    assert "w1: 404: unknown log origin" in bad.stderr
    one = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "dead"),
                 "--quorum", "1", "--timeout", "5", cwd=site)
    assert open_cosigned_checkpoint(one.stdout, [Verifier.parse((site / "log.pub").read_text())],
                                    keys(site, "w1", "w2"), 1).checkpoint.size == 50
    # bad options: a clear error before anything is signed
    for args, said in ((["--quorum", "3", *witness_args(site, "w1", "w2")], "more than the 2 witness"),
                       (["--quorum", "1"], "--quorum needs --witness"),
                       (["--witness", "w1=ftp://x:w1.pub"], "is not NAME=URL:VKEY"),
                       (["--witness", f"w1={dead}:log.pub"], "a log's signature key")):
        bad = krepis("checkpoint", "--key", "log.key", "--storage", "store", *args, cwd=site, ok=False)
        assert bad.returncode == 2 and said in bad.stderr, bad.stderr


def rewrite(site: Path, name: str, n: int, change: int | None, grow: int = 0) -> Path:
    """The operator's copy: the same entries with entry ``change`` edited (or only the first
    ``n``), the tree rebuilt from them — then signed with the log's own key."""
    copy = site / name
    write(copy, n, change=change)
    if grow:
        write(copy, grow, tag="more")
    return copy


def test_a_split_view_is_refused_by_every_witness_and_raises_the_monitors_alarm(site: Path) -> None:
    write(site / "store", 100)
    a = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "w2"),
               cwd=site).stdout
    served = Server(site, "--storage", "store", "tlog", "serve")
    try:
        watched = krepis("tlog", "watch", served.url, "--vkey", "log.pub", "--witness-vkey", "w1.pub",
                         "--witness-vkey", "w2.pub", "--state", "monitor.json", "--once", cwd=site)
    finally:
        served.stop()
    assert len(watched.stdout.splitlines()) == 100

    # the same size, another history: 409 from both witnesses (each holds another root there)
    copy = rewrite(site, "copy", 100, change=42)
    bad = krepis("checkpoint", "--key", "log.key", "--storage", str(copy), *witness_args(site, "w1", "w2"),
                 "--quorum", "1", cwd=site, ok=False)
    assert bad.returncode == 1 and "0 of 2 witness(es) cosigned" in bad.stderr
    assert bad.stderr.count("with another root than this log's") == 2, bad.stderr
    for name in ("w1", "w2"):  # each witness keeps the contradicting checkpoint as evidence
        with SovereignJournal(site / f"{name}-state" / "journal", create=False) as journal:
            evidence = journal.query(op_name=CONFLICT_OP)
            assert len(evidence) == 1 and evidence[0].error.startswith("example.com/log\n100\n")  # type: ignore[union-attr]

    # a longer rewritten history: the consistency proof from what they cosigned fails (422)
    longer = rewrite(site, "longer", 100, change=42, grow=20)
    bad = krepis("checkpoint", "--key", "log.key", "--storage", str(longer), *witness_args(site, "w1", "w2"),
                 "--quorum", "1", cwd=site, ok=False)
    assert bad.stderr.count(": 422: the consistency proof from tree size 100 to 120 does not verify") == 2

    # published anyway (signed by the log's key, without witnesses): the monitor raises the alarm
    b = krepis("checkpoint", "--key", "log.key", "--storage", str(longer), cwd=site).stdout
    served = Server(site, "--storage", str(longer), "tlog", "serve")
    try:
        alarm = krepis("tlog", "watch", served.url, "--vkey", "log.pub", "--state", "monitor.json", "--once",
                       cwd=site, ok=False)
    finally:
        served.stop()
    assert alarm.returncode == 3
    said = json.loads(alarm.stdout.splitlines()[-1])
    assert said["alarm"] == "conflict" and said["checkpoints"] == [a, b]
    assert "ALARM" in alarm.stderr and "contradict each other" in alarm.stderr
    # the two notes prove it: both verify with the log's key, and no tree extends both
    log_key = Verifier.parse((site / "log.pub").read_text())
    first, second = (open_checkpoint(n, [log_key]) for n in said["checkpoints"])
    with SovereignJournal(longer, create=False) as journal:
        assert journal.tree_root(first.size) != first.root and journal.tree_root(second.size) == second.root
    # the monitor's state still holds the checkpoint it verified
    assert json.loads((site / "monitor.json").read_text())["checkpoint"] == a


def test_a_rollback_is_refused_by_every_witness_and_raises_the_monitors_alarm(site: Path) -> None:
    write(site / "store", 60)
    a = krepis("checkpoint", "--key", "log.key", "--storage", "store", *witness_args(site, "w1", "w2"),
               cwd=site).stdout
    served = Server(site, "--storage", "store", "tlog", "serve")
    try:
        krepis("tlog", "watch", served.url, "--vkey", "log.pub", "--state", "monitor.json", "--once",
               cwd=site)
    finally:
        served.stop()
    older = rewrite(site, "older", 50, change=None)  # the first 50 entries only: a rollback
    bad = krepis("checkpoint", "--key", "log.key", "--storage", str(older), *witness_args(site, "w1", "w2"),
                 "--quorum", "1", cwd=site, ok=False)
    assert bad.stderr.count("it cosigned a tree of 60 leaves, bigger than this one (50)") == 2, bad.stderr
    b = krepis("checkpoint", "--key", "log.key", "--storage", str(older), cwd=site).stdout
    served = Server(site, "--storage", str(older), "tlog", "serve")
    try:
        alarm = krepis("tlog", "watch", served.url, "--vkey", "log.pub", "--state", "monitor.json", "--once",
                       cwd=site, ok=False)
    finally:
        served.stop()
    said = json.loads(alarm.stdout.splitlines()[-1])
    assert alarm.returncode == 3 and said["alarm"] == "rollback" and said["checkpoints"] == [a, b]


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("pg_url"))


def test_cosigning_on_both_engines(site: Path, location: str) -> None:
    with SovereignJournal(location) as journal:
        for i in range(30):
            journal.log_transaction(TransactionLog.now("op", f"e{i}", LogStatus.Completed))
    note = krepis("checkpoint", "--key", "log.key", "--storage", location, *witness_args(site, "w1"),
                  cwd=site).stdout
    with SovereignJournal(location, create=False) as journal:
        assert journal.latest_checkpoint() == note
        assert len(journal.checkpoints()) == 1
    # a plain checkpoint of a tree, then a cosigned one of the same tree: both engines keep the
    # cosigned note in its place
    with SovereignJournal(location) as journal:
        journal.log_transaction(TransactionLog.now("op", "late", LogStatus.Completed))
    plain = krepis("checkpoint", "--key", "log.key", "--storage", location, cwd=site).stdout
    again = krepis("checkpoint", "--key", "log.key", "--storage", location, *witness_args(site, "w1"),
                   cwd=site)
    assert again.stdout.startswith(plain) and again.stdout != plain
    with SovereignJournal(location, create=False) as journal:
        assert journal.latest_checkpoint() == again.stdout
