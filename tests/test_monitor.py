"""The monitor (``krepis tlog watch``, ``krepis.tlog._monitor``): it follows a log over HTTP —
``krepis tlog serve``, or plain static files as any C2SP tiles log publishes them — checks every
new checkpoint and every new entry against the tree, prints each entry once, keeps its state
durably, and raises an alarm naming the signed checkpoints when the log contradicts itself."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis._model import encode_log
from krepis.cli._tlog_serve import TileServer, tile_responder
from krepis.tlog import NoteError, generate_cosigner, generate_signer
from krepis.tlog._http import reader
from krepis.tlog._monitor import Advance, Alarm, follow, load_state, save_state

LOG = generate_signer("example.com/monitored")
KREPIS = str(Path(sys.executable).parent / "krepis")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("KREPIS_")}


def grow(journal: SovereignJournal, n: int, tag: str = "r") -> None:
    for i in range(n):
        journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", f"{tag}{i}", LogStatus.Completed))


@pytest.fixture
def log(tmp_path: Path) -> Iterator[tuple[SovereignJournal, str]]:
    """A journal served by ``tlog serve``'s server (in a thread), and its URL."""
    with SovereignJournal(tmp_path / "log") as journal:
        server = TileServer(("127.0.0.1", 0), tile_responder(journal), timeout=5.0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield journal, f"http://127.0.0.1:{server.address[1]}"
        finally:
            server.shutdown()
            thread.join(timeout=10)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def static(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served as static files (any web server would do), and its URL."""
    root = tmp_path / "site"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def step(url: str, state, **kw) -> Advance | Alarm | None:  # type: ignore[no-untyped-def]
    return follow(reader(url, 10.0), state, [LOG.verifier()], **kw)


def entries(journal: SovereignJournal, start: int, stop: int) -> list[tuple[int, bytes]]:
    logs = journal.query(order="append", newest_first=False)
    return [(i, encode_log(logs[i])) for i in range(start, stop)]


def test_the_monitor_follows_a_growing_log_and_reports_every_entry_once(
        tmp_path: Path, log: tuple[SovereignJournal, str]) -> None:
    journal, url = log
    grow(journal, 300)
    journal.sign_checkpoint(LOG)
    first = step(url, None)
    assert isinstance(first, Advance) and first.count == 300
    assert list(first.entries()) == entries(journal, 0, 300)
    first.close()
    save_state(str(tmp_path / "state.json"), first.state)
    assert step(url, first.state) is None  # nothing new
    # across the partial bundle, then across whole bundles; from the state file each time
    for more, size in ((10, 310), (500, 810), (1, 811)):
        grow(journal, more, tag=f"g{size}")
        journal.sign_checkpoint(LOG)
        state = load_state(str(tmp_path / "state.json"), [LOG.verifier()])
        assert state is not None
        got = step(url, state)
        assert isinstance(got, Advance) and got.state.checkpoint.size == size
        assert list(got.entries()) == entries(journal, size - more, size)
        got.close()
        save_state(str(tmp_path / "state.json"), got.state)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".krepis-monitor-")] == []


def test_a_static_tiles_log_is_followed_too(tmp_path: Path, static: tuple[Path, str]) -> None:
    root, url = static
    with SovereignJournal(tmp_path / "log") as journal:
        grow(journal, 70)
        journal.export_tiles(root, LOG)
        got = step(url, None)
        assert isinstance(got, Advance) and list(got.entries()) == entries(journal, 0, 70)
        got.close()


def test_the_alarm_names_both_checkpoints_of_a_rewritten_history(
        tmp_path: Path, static: tuple[Path, str]) -> None:
    root, url = static
    with SovereignJournal(tmp_path / "log") as journal:
        grow(journal, 300)
        journal.export_tiles(root, LOG)
        seen = step(url, None)
        assert isinstance(seen, Advance)
        a = journal.latest_checkpoint()
    # the key holder rebuilds the log with entry 7 changed, and signs it: same size, another root
    with SovereignJournal(tmp_path / "copy") as copy:
        for i in range(300):
            copy.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", "x" if i == 7 else f"r{i}",
                                                LogStatus.Completed))
        b = copy.sign_checkpoint(LOG)
        (root / "checkpoint").write_text(b)
        alarm = step(url, seen.state)
        assert isinstance(alarm, Alarm) and alarm.kind == "conflict" and alarm.checkpoints == (a, b)
        # ... and a longer one: the entries lead elsewhere, the tiles give no consistency proof
        grow(copy, 20, tag="more")
        other = tmp_path / "other"
        copy.export_tiles(other, LOG)
        for rel in [p.relative_to(other) for p in other.rglob("*") if p.is_file()]:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((other / rel).read_bytes())
        alarm = step(url, seen.state)
        assert isinstance(alarm, Alarm) and alarm.kind == "conflict"
        assert alarm.checkpoints == (a, copy.latest_checkpoint())


def test_a_smaller_tree_is_a_stale_checkpoint_a_conflict_or_a_rollback(
        tmp_path: Path, static: tuple[Path, str]) -> None:
    root, url = static
    with SovereignJournal(tmp_path / "log") as journal:
        grow(journal, 300)
        journal.export_tiles(root, LOG)
        seen = step(url, None)
        assert isinstance(seen, Advance)
        a = journal.latest_checkpoint()
    with SovereignJournal(tmp_path / "prefix") as prefix:  # the same first 250 entries
        grow(prefix, 250)
        (root / "checkpoint").write_text(prefix.sign_checkpoint(LOG))
    assert step(url, seen.state) is None  # an older checkpoint of the same history (a stale cache)
    with SovereignJournal(tmp_path / "short") as short:  # 250 other entries
        grow(short, 250, tag="s")
        b = short.sign_checkpoint(LOG)
        (root / "checkpoint").write_text(b)
        alarm = step(url, seen.state)  # the tiles of the tree of 300 say otherwise
        assert isinstance(alarm, Alarm) and alarm.kind == "conflict" and alarm.checkpoints == (a, b)
        import shutil

        shutil.rmtree(root)
        short.export_tiles(root)  # the log serves its smaller tree only: it went back
    alarm = step(url, seen.state)
    assert isinstance(alarm, Alarm) and alarm.kind == "rollback" and alarm.checkpoints == (a, b)
    assert "no longer serves the tiles" in alarm.message


def test_entries_that_do_not_match_the_tree_raise_the_alarm(tmp_path: Path, static: tuple[Path, str]) -> None:
    root, url = static
    with SovereignJournal(tmp_path / "log") as journal:
        grow(journal, 300)
        journal.export_tiles(root, LOG)
        seen = step(url, None)
        assert isinstance(seen, Advance)
        grow(journal, 10, tag="more")
        journal.export_tiles(root, LOG)
        b = journal.latest_checkpoint()
    bundle = root / "tile" / "entries" / "001.p" / "54"
    good = bundle.read_bytes()
    # a new entry changed (the hash tiles are still the log's): not the tree's leaves
    bundle.write_bytes(good[:-3] + b"X" + good[-2:])
    alarm = step(url, seen.state)
    assert isinstance(alarm, Alarm) and alarm.kind == "entries" and alarm.checkpoints == (b,)
    assert "not its tree's leaves" in alarm.message
    # an entry seen before, served changed
    bundle.write_bytes(good[:10] + b"Y" + good[11:])
    alarm = step(url, seen.state)
    assert isinstance(alarm, Alarm) and alarm.kind == "entries" and "other entries than" in alarm.message
    # a bundle cut short
    bundle.write_bytes(good[:-5])
    alarm = step(url, seen.state)
    assert isinstance(alarm, Alarm) and "cut off" in alarm.message
    bundle.write_bytes(good)
    # entries and tiles both changed: neither gives the checkpoint's root
    tile = root / "tile" / "0" / "001.p" / "54"
    tile_bytes = tile.read_bytes()
    tile.write_bytes(tile_bytes[:-1] + bytes([tile_bytes[-1] ^ 1]))
    bundle.write_bytes(good[:-3] + b"X" + good[-2:])
    alarm = step(url, seen.state)
    assert isinstance(alarm, Alarm) and alarm.kind == "entries" and "neither the entries nor the tiles" \
        in alarm.message
    tile.write_bytes(tile_bytes)
    bundle.write_bytes(good)
    assert isinstance(step(url, seen.state), Advance)


def test_a_checkpoint_that_does_not_verify_is_no_step_and_no_alarm(
        log: tuple[SovereignJournal, str]) -> None:
    journal, url = log
    grow(journal, 5)
    journal.sign_checkpoint(generate_signer(LOG.name))  # the name, not the key
    with pytest.raises(NoteError):
        step(url, None)
    journal.sign_checkpoint(LOG)  # (the same tree: the latest kept note is the largest — this one's)
    witness = generate_cosigner("witness.example/w")
    with pytest.raises(NoteError, match="fewer than the quorum"):
        step(url, None, witnesses=[witness.verifier()])


def test_a_state_file_is_checked_before_it_is_trusted(tmp_path: Path,
                                                      log: tuple[SovereignJournal, str]) -> None:
    journal, url = log
    grow(journal, 260)
    journal.sign_checkpoint(LOG)
    got = step(url, None)
    assert isinstance(got, Advance)
    path = tmp_path / "state.json"
    save_state(str(path), got.state)
    doc = json.loads(path.read_text())
    assert load_state(str(path), [LOG.verifier()]) == got.state
    with pytest.raises(ValidationError, match="no signature of a known key"):
        load_state(str(path), [generate_signer(LOG.name).verifier()])
    for broken, said in (({**doc, "partial": doc["partial"][:-1]}, "does not fit"),
                         ({**doc, "frontier": doc["partial"][:1]}, "does not lead"),
                         ({**doc, "version": 2}, "not a krepis monitor state"),
                         ([], "not a krepis monitor state")):
        path.write_text(json.dumps(broken))
        with pytest.raises(ValidationError, match=said) as info:
            load_state(str(path), [LOG.verifier()])
        assert str(path) in str(info.value)
    path.write_text("{")
    with pytest.raises(ValidationError, match=str(path)):
        load_state(str(path), [LOG.verifier()])
    assert load_state(str(tmp_path / "none.json"), [LOG.verifier()]) is None


def watch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KREPIS, "tlog", "watch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=ENV, stdin=subprocess.DEVNULL)


def test_krepis_tlog_watch(tmp_path: Path, log: tuple[SovereignJournal, str]) -> None:
    journal, url = log
    (tmp_path / "log.pub").write_text(f"{LOG.verifier()}\n")
    grow(journal, 12)
    journal.sign_checkpoint(LOG)
    out = watch(tmp_path, url, "--vkey", "log.pub", "--state", "s.json", "--once")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(12))
    assert lines[3]["entry"] == {"timestamp": 1_700_000_000_003, "op_name": "op", "request_id": "r3",
                                 "status": "Completed"}
    assert "checkpoint of tree size 12 verified (12 new entries)" in out.stderr
    grow(journal, 2, tag="n")
    journal.sign_checkpoint(LOG)
    out = watch(tmp_path, url, "--vkey", "log.pub", "--state", "s.json", "--once")
    assert [json.loads(line)["index"] for line in out.stdout.splitlines()] == [12, 13]
    # nothing new: nothing printed
    assert watch(tmp_path, url, "--vkey", "log.pub", "--state", "s.json", "--once").stdout == ""
    # a log that cannot be reached, a checkpoint without the quorum: warnings, status 1, no alarm
    dead = watch(tmp_path, "http://127.0.0.1:9", "--vkey", "log.pub", "--once")
    assert dead.returncode == 1 and "warning" in dead.stderr and dead.stdout == ""
    w = generate_cosigner("witness.example/w")
    short = watch(tmp_path, url, "--vkey", "log.pub", "--witness-vkey", str(w.verifier()), "--once")
    assert short.returncode == 1 and "fewer than the quorum" in short.stderr
    # a state file of another log is an error, not a fresh start
    other = generate_signer(LOG.name)
    (tmp_path / "other.pub").write_text(f"{other.verifier()}\n")
    bad = watch(tmp_path, url, "--vkey", "other.pub", "--state", "s.json", "--once")
    assert bad.returncode == 1 and "s.json" in bad.stderr and "no signature of a known key" in bad.stderr
    # one monitor per state file
    import fcntl

    with open(tmp_path / "s.json.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = watch(tmp_path, url, "--vkey", "log.pub", "--state", "s.json", "--once")
    assert busy.returncode == 1 and "another monitor uses s.json" in busy.stderr
    bad = watch(tmp_path, "ftp://example.com", "--vkey", "log.pub", "--once")
    assert bad.returncode == 2 and "is not an http:// or https:// URL" in bad.stderr
