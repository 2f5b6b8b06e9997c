"""Hot backup and verified restore of a live LMDB store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import (
    InvalidTypeError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.storage import backup, open_storage, restore
from krepis.tlog._note import Signer, generate_signer
from rawlmdb import edit, forget_commit_log

WORKERS = str(Path(__file__).parent / "workers.py")


def test_a_backup_taken_while_four_processes_write_restores_complete_and_verified(tmp_path: Path) -> None:
    store = tmp_path / "live"
    SovereignJournal(store).close()
    writers = [subprocess.Popen([sys.executable, WORKERS, "crash", str(store), f"p{n}", "2", "sync"],
                                stdout=subprocess.PIPE, text=True) for n in range(4)]
    acked: list[set[str]] = [set() for _ in writers]

    def read(n: int) -> None:
        assert writers[n].stdout is not None
        for line in writers[n].stdout:
            if line.endswith("\n"):
                acked[n].add(line.strip())

    readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(4)]
    for r in readers:
        r.start()
    try:
        deadline = time.monotonic() + 60  # every writer is under way (however loaded the machine)
        while min(len(a) for a in acked) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = set().union(*acked)  # acknowledged before the backup started
        result = backup(store, tmp_path / "backup")
        time.sleep(0.3)  # writers keep writing after it
    finally:
        for w in writers:
            w.send_signal(signal.SIGKILL)
            w.wait()
    assert len(before) > 20
    restored = restore(tmp_path / "backup", tmp_path / "restored")
    assert (restored.entries, restored.root) == (result.entries, result.root)
    with SovereignJournal(tmp_path / "restored") as journal:
        report = journal.verify()
        assert report.entries == result.entries
        stored = {e.request_id for e in journal.iter_logs()}
        assert before <= stored  # every write acknowledged before the backup began is in it
        count = journal.recover_op_count("crash_op")
        assert count == journal.journal_count()
        # the restored store takes new writes, counters continuing
        assert journal.record(TransactionLog(1, "crash_op", "after", LogStatus.Completed),
                              increment="crash_op") == count + 1
        journal.verify()
    with SovereignJournal(store) as live:
        assert live.journal_count() > result.entries  # the live store went on


def _store(path: Path, n: int = 30) -> None:
    with SovereignJournal(path) as journal:
        for i in range(n):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, duration_us=i),
                           increment="op")


def test_restore_never_replaces_a_store_unasked_nor_one_in_use(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    _store(tmp_path / "b", 5)
    backup(tmp_path / "a", tmp_path / "bk")
    before = hashlib.sha256((tmp_path / "b" / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(StorageError, match="needs --force"):
        restore(tmp_path / "bk", tmp_path / "b")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import lmdb, sys, time; e = lmdb.open(sys.argv[1], max_dbs=16); "
                               "print('open', flush=True); time.sleep(60)", str(tmp_path / "b")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match="open in another process"):
            restore(tmp_path / "bk", tmp_path / "b", force=True)
    finally:
        holder.kill()
        holder.wait()
    assert hashlib.sha256((tmp_path / "b" / "data.mdb").read_bytes()).hexdigest() == before
    restore(tmp_path / "bk", tmp_path / "b", force=True)
    with SovereignJournal(tmp_path / "b") as journal:
        assert journal.journal_count() == 30 and journal.recover_op_count("op") == 30


def test_a_tampered_or_wrongly_signed_backup_is_not_restored(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    key = generate_signer("example.com/bk")
    with SovereignJournal(tmp_path / "a") as journal:
        journal.sign_checkpoint(key)
    backup(tmp_path / "a", tmp_path / "bk")
    # the right key passes, another key with the same name does not
    restore(tmp_path / "bk", tmp_path / "ok", verifiers=[key.verifier()])
    other = generate_signer("example.com/bk")
    with pytest.raises(ValidationError, match="no signature of a known key"):
        restore(tmp_path / "bk", tmp_path / "no", verifiers=[other.verifier()])
    assert not (tmp_path / "no" / "data.mdb").exists()
    env = lmdb.open(str(tmp_path / "bk"), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"entries", txn=txn, create=False)
        value = bytearray(txn.get((3).to_bytes(8, "big"), db=db))
        value[-1] ^= 1
        txn.put((3).to_bytes(8, "big"), bytes(value), db=db)
    env.close()
    forget_commit_log(tmp_path / "bk")
    with pytest.raises(Exception, match="does not match entries 0"):
        restore(tmp_path / "bk", tmp_path / "bad")
    assert not (tmp_path / "bad" / "data.mdb").exists()


def test_backup_refuses_a_used_destination_and_postgresql(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(StorageError, match="not an empty directory"):
        backup(tmp_path / "a", tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["x"]
    with pytest.raises(StorageError, match="pg_dump"):
        backup("postgresql://u@localhost/db", tmp_path / "pg")


# --- what a restore proves ----------------------------------------------------------------------

def _signed_then_more(path: Path, key: Signer, signed: int, after: int, tag: str = "") -> str:
    """A store of `signed` entries, a checkpoint of them signed with `key`, then `after` more
    entries (their request ids carry `tag`); returns the signed note."""
    with SovereignJournal(path) as journal:
        for i in range(signed):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
        note = journal.sign_checkpoint(key)
        for i in range(after):
            journal.record(TransactionLog(1000 + i, "op", f"later{tag}-{i}", LogStatus.Completed),
                           increment="op")
    return note


def test_restore_says_which_leaves_a_signature_covers_and_which_none(tmp_path: Path) -> None:
    """The review's case: the 200 entries after the newest checkpoint were rewritten. A signed
    checkpoint proves only the prefix it covers; restore says exactly that."""
    key = generate_signer("example.com/bk")
    note = _signed_then_more(tmp_path / "real", key, 30, 200)
    # the rewrite: the same 30 signed entries, 200 others after them, the genuine checkpoint
    _signed_then_more(tmp_path / "forged", generate_signer("example.com/other"), 30, 200, tag="-forged")
    storage = open_storage(tmp_path / "forged")
    try:
        storage.add_checkpoint(0, 30, "example.com/bk", note)
    finally:
        storage.close()
    forged = [(e, s, o, n) for e, s, o, n in _kept(tmp_path / "forged") if o == "example.com/other"]
    _drop_checkpoints(tmp_path / "forged", forged)  # keep only the genuine note
    backup(tmp_path / "forged", tmp_path / "bk")
    result = restore(tmp_path / "bk", tmp_path / "out", verifiers=[key.verifier()])
    assert (result.tree_size, result.signed_size, result.unsigned) == (230, 30, 200)
    assert result.signed_origin == "example.com/bk"
    vkey = tmp_path / "bk.vkey"
    vkey.write_text(f"{key.verifier()}\n")
    done = subprocess.run([sys.executable, "-m", "krepis", "restore", str(tmp_path / "bk"), "--vkey",
                           str(vkey), "--storage", str(tmp_path / "cli")], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "signed: the checkpoint of example.com/bk covers leaves 0–29 (30 of 230); the 200 leaves " \
           "after it are covered by no signature" in done.stdout
    as_json = subprocess.run([sys.executable, "-m", "krepis", "restore", str(tmp_path / "bk"), "--vkey",
                              str(vkey), "--storage", str(tmp_path / "json"), "--json"],
                             capture_output=True, text=True, timeout=120, check=True)
    out = json.loads(as_json.stdout)
    assert (out["signed_size"], out["unsigned"], out["signed_origin"]) == (30, 200, "example.com/bk")
    # without keys, nothing is proved by a signature, and it says so
    plain = restore(tmp_path / "bk", tmp_path / "plain")
    assert (plain.signed_size, plain.unsigned, plain.signed_origin) == (0, 230, None)
    done = subprocess.run([sys.executable, "-m", "krepis", "restore", str(tmp_path / "bk"), "--storage",
                           str(tmp_path / "cli2")], capture_output=True, text=True, timeout=120, check=True)
    assert "no signature checked (give --vkey)" in done.stdout


def test_restore_with_keys_refuses_a_newest_checkpoint_they_do_not_sign(tmp_path: Path) -> None:
    """An older checkpoint signed by the key does not vouch for a newer one that is not."""
    key = generate_signer("example.com/bk")
    _signed_then_more(tmp_path / "a", key, 30, 10)
    with SovereignJournal(tmp_path / "a") as journal:
        journal.sign_checkpoint(generate_signer("example.com/bk"))  # same name, another key
    backup(tmp_path / "a", tmp_path / "bk")
    with pytest.raises(ValidationError, match=r"newest checkpoint \(tree size 40\) does not verify with "
                                              r"the keys given: .*no signature of a known key"):
        restore(tmp_path / "bk", tmp_path / "out", verifiers=[key.verifier()])
    assert not (tmp_path / "out").exists()
    assert restore(tmp_path / "bk", tmp_path / "plain").signed_size == 0  # (no keys: nothing to check)


def test_restore_refuses_a_checkpoint_whose_root_is_not_the_tree(tmp_path: Path) -> None:
    """A genuine, validly signed checkpoint of other entries: the signature verifies, the root
    does not match this tree. Refused with or without keys."""
    key = generate_signer("example.com/bk")
    note = _signed_then_more(tmp_path / "real", key, 30, 0)
    with SovereignJournal(tmp_path / "forged") as journal:
        for i in range(30):
            journal.record(TransactionLog(i, "op", f"x{i}", LogStatus.Completed), increment="op")
    storage = open_storage(tmp_path / "forged")
    try:
        storage.add_checkpoint(0, 30, "example.com/bk", note)
    finally:
        storage.close()
    with pytest.raises(ValidationError, match="does not match the entries"):
        backup(tmp_path / "forged", tmp_path / "bk")  # (a backup is checked the same way)
    assert not (tmp_path / "bk").exists()
    for keys in ([key.verifier()], None):  # a backup is a store: restore from this one directly
        with pytest.raises(ValidationError, match=r"forged: the checkpoint of tree size 30 does not "
                                                  r"match the entries \(one before seq 30 changed\)"):
            restore(tmp_path / "forged", tmp_path / "out", verifiers=keys)
        assert not (tmp_path / "out").exists()


def test_restore_refuses_keys_that_are_not_verifiers(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    backup(tmp_path / "a", tmp_path / "bk")
    with pytest.raises(InvalidTypeError, match=r"verifiers must be krepis\.tlog\.Verifier keys"):
        restore(tmp_path / "bk", tmp_path / "out", verifiers=["example.com/bk+1234+abc"])  # type: ignore[list-item]
    assert not (tmp_path / "out").exists()


def test_restore_over_a_store_in_use_gives_the_right_advice(tmp_path: Path) -> None:
    _store(tmp_path / "a")
    _store(tmp_path / "b", 5)
    backup(tmp_path / "a", tmp_path / "bk")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from krepis import SovereignJournal; "
                               "j = SovereignJournal(sys.argv[1]); print('open', flush=True); time.sleep(60)",
                               str(tmp_path / "b")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        with pytest.raises(StorageError, match="open in another process") as info:
            restore(tmp_path / "bk", tmp_path / "b", force=True)
        assert "then run krepis restore again" in str(info.value)
        assert "migrate" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()


def _kept(path: Path) -> list[tuple[int, int, str, str]]:
    storage = open_storage(path)
    try:
        return storage.checkpoints()
    finally:
        storage.close()


def _drop_checkpoints(path: Path, which: list[tuple[int, int, str, str]]) -> None:
    def change(txn: Any, db: Any) -> None:
        for epoch, size, origin, _note in which:
            assert txn.delete(epoch.to_bytes(8, "big") + size.to_bytes(8, "big") + origin.encode(),
                              db=db(b"checkpoints"))

    edit(path, change)
