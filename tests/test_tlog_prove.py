"""``krepis prove --consistency OLD`` checks the old checkpoint's signature and origin with
``--vkey`` before proving anything; without keys it says it checked no signature."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import cli
from krepis.storage import open_storage
from krepis.tlog import verify_consistency
from krepis.tlog._note import Checkpoint, format_checkpoint, generate_signer, sign_note

SIGNER = generate_signer("example.com/prove")
VKEY = str(SIGNER.verifier())


def _tamper(note: str) -> str:
    line = note.rstrip("\n").rsplit("\n", 1)[1]
    raw = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
    raw[30] ^= 0x10  # the signature bytes; the key ID (bytes 0–3) stays right
    return note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw)).decode())


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with SovereignJournal(path, flush="interval:20ms") as journal:
        for i in range(30):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        (tmp_path / "old.cp").write_text(journal.sign_checkpoint(SIGNER))
        for i in range(30, 70):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    return path


def _prove(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(store), "prove", *args])


def test_with_vkey_the_old_checkpoint_is_checked_and_the_proof_verifies(store: Path, tmp_path: Path) -> None:
    result = _prove(store, "--consistency", str(tmp_path / "old.cp"), "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["old_size"], out["new_size"], out["signature_checked"]) == (30, 70, True)
    assert verify_consistency(30, 70, base64.b64decode(out["old_root"]), base64.b64decode(out["new_root"]),
                              [base64.b64decode(p) for p in out["proof"]])
    assert result.stderr == ""


def test_an_old_checkpoint_with_an_altered_signature_is_refused(store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cp"
    bad.write_text(_tamper((tmp_path / "old.cp").read_text()))
    result = _prove(store, "--consistency", str(bad), "--vkey", VKEY)
    assert result.exit_code == 1 and result.stdout == ""
    assert "bad.cp: the signature of example.com/prove does not verify" in result.output


def test_an_old_checkpoint_of_another_origin_or_key_is_refused(store: Path, tmp_path: Path) -> None:
    with SovereignJournal(store) as journal:
        root = journal.tree_root(30)
    other = tmp_path / "other.cp"
    other.write_text(sign_note(format_checkpoint(Checkpoint("example.com/not-the-key", 30, root)), SIGNER))
    result = _prove(store, "--consistency", str(other), "--vkey", VKEY)
    assert result.exit_code == 1
    assert "origin 'example.com/not-the-key' is not the name of a key that signed it" in result.output
    stranger = generate_signer("example.com/prove")  # same name, another key
    other.write_text(sign_note(format_checkpoint(Checkpoint(stranger.name, 30, root)), stranger))
    result = _prove(store, "--consistency", str(other), "--vkey", VKEY)
    assert result.exit_code == 1 and "no signature of a known key" in result.output


def test_without_keys_it_says_no_signature_was_checked(store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.cp"
    bad.write_text(_tamper((tmp_path / "old.cp").read_text()))
    result = _prove(store, "--consistency", str(bad))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["signature_checked"] is False
    assert "the signature of" in result.stderr and "was not checked (no --vkey)" in result.stderr


def test_an_old_checkpoint_bigger_than_the_tree_is_named(store: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.cp"
    big.write_text(sign_note(format_checkpoint(Checkpoint(SIGNER.name, 500, b"\1" * 32)), SIGNER))
    result = _prove(store, "--consistency", str(big), "--vkey", VKEY)
    assert result.exit_code == 1
    assert "big.cp: its tree of 500 leaves is bigger than the journal's (70)" in result.output
    assert "Traceback" not in result.output


def test_with_vkey_the_latest_kept_checkpoint_must_verify_too(store: Path, tmp_path: Path) -> None:
    with SovereignJournal(store) as journal:
        head = journal.tree_head()
    storage = open_storage(store)
    try:
        note = sign_note(format_checkpoint(Checkpoint(SIGNER.name, head.size, head.root)), SIGNER)
        storage.add_checkpoint(head.epoch, head.size, SIGNER.name, _tamper(note))
    finally:
        storage.close()
    result = _prove(store, "--consistency", str(tmp_path / "old.cp"), "--vkey", VKEY)
    assert result.exit_code == 1
    assert "the journal's latest checkpoint: the signature of example.com/prove does not verify" \
        in result.output
    assert _prove(store, "5", "--vkey", VKEY).exit_code == 1
    assert _prove(store, "5").exit_code == 0
