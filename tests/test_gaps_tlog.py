"""A checkpoint whose signature bytes were altered — its key name and 4-byte key ID still right —
is refused at EVERY place krepis checks a signature: the note functions, ``verify_extends``,
``krepis verify --vkey --trusted`` (the trusted note and the checkpoints kept in the store),
``check_tiles`` and ``krepis verify --tlog`` (the exported checkpoint and the trusted one),
``restore(verifiers=…)`` and ``krepis restore --vkey``, ``krepis prove --vkey`` (the old
checkpoint and the journal's latest one).

Each entry point runs twice on the same world: with the checkpoint as signed (it must pass — the
case is not vacuous) and with one bit of its signature flipped (it must be refused, naming the
signature). The tile server (``krepis tlog serve``) checks no signature: it serves the store's
own notes."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, TransactionLog, ValidationError, backup, restore
from krepis.cli import cli
from krepis.storage import open_storage
from krepis.tlog._note import (
    Checkpoint,
    format_checkpoint,
    generate_signer,
    open_checkpoint,
    open_note,
    sign_note,
)
from krepis.tlog._tiles import check_tiles

SIGNER = generate_signer("example.com/gaps")
VKEY = str(SIGNER.verifier())
REFUSED = "the signature of example.com/gaps does not verify"


def _forge(note: str) -> str:
    """One bit of the signature bytes flipped; the name and the key ID (bytes 0–3) stay right."""
    line = note.rstrip("\n").rsplit("\n", 1)[1]
    prefix, b64 = line.rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[4 + 9] ^= 0x20
    forged = note.replace(line, f"{prefix} {base64.b64encode(bytes(raw)).decode()}")
    assert forged != note and base64.b64decode(forged.rstrip("\n").rsplit(" ", 1)[1])[:4] == raw[:4]
    return forged


def _same(note: str) -> str:
    return note


@dataclass
class World:
    """A store of 20 entries with a checkpoint kept at 10 (``old``, also saved to a file) and
    a fresh note signed over the whole tree (``head``, not kept yet)."""

    tmp: Path
    store: Path
    old: str
    head: str

    def keep(self, note: str) -> None:
        """Keep ``note`` in the store as the newest checkpoint (through the storage port)."""
        storage = open_storage(self.store)
        try:
            head = storage.tree_head()
            storage.add_checkpoint(head.epoch, head.size, SIGNER.name, note)
        finally:
            storage.close()

    def file(self, name: str, note: str) -> Path:
        path = self.tmp / name
        path.write_text(note)
        return path

    def export(self, forge: Callable[[str], str]) -> Path:
        out = self.tmp / "tiles"
        with SovereignJournal(self.store) as journal:
            journal.export_tiles(out, SIGNER)
        cp = out / "checkpoint"
        cp.write_text(forge(cp.read_text()))
        return out


def _world(tmp_path: Path) -> World:
    tmp_path.mkdir()
    store = tmp_path / "store"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        for i in range(10):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        old = journal.sign_checkpoint(SIGNER)
        for i in range(10, 20):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        head = journal.tree_head()
    note = sign_note(format_checkpoint(Checkpoint(SIGNER.name, head.size, head.root)), SIGNER)
    return World(tmp_path, store, old, note)


def _cli(*args: str) -> str:
    """Run ``krepis``; return its output when it succeeds, raise ``AssertionError`` with the
    output when it fails with exit code 1 (a usage error fails the test)."""
    result = CliRunner().invoke(cli, list(args))
    if result.exit_code == 0:
        return result.output
    assert result.exit_code == 1, result.output
    raise AssertionError(result.output)


def _open_note(w: World, forge: Callable[[str], str]) -> None:
    open_note(forge(w.head), [SIGNER.verifier()])


def _open_checkpoint(w: World, forge: Callable[[str], str]) -> None:
    open_checkpoint(forge(w.head), [SIGNER.verifier()])


def _verify_extends(w: World, forge: Callable[[str], str]) -> None:
    with SovereignJournal(w.store) as journal:
        journal.verify_extends(forge(w.old), [SIGNER.verifier()])


def _verify_trusted(w: World, forge: Callable[[str], str]) -> None:
    _cli("--storage", str(w.store), "verify", "--vkey", VKEY, "--trusted", str(w.file("t.cp", forge(w.old))))


def _verify_kept(w: World, forge: Callable[[str], str]) -> None:
    w.keep(forge(w.head))
    _cli("--storage", str(w.store), "verify", "--vkey", VKEY, "--trusted", str(w.file("t.cp", w.old)))


def _check_tiles(w: World, forge: Callable[[str], str]) -> None:
    check_tiles(str(w.export(forge)), [SIGNER.verifier()])


def _verify_tlog(w: World, forge: Callable[[str], str]) -> None:
    _cli("verify", "--tlog", str(w.export(forge)), "--vkey", VKEY)


def _verify_tlog_trusted(w: World, forge: Callable[[str], str]) -> None:
    out = w.export(_same)
    _cli("verify", "--tlog", str(out), "--vkey", VKEY, "--trusted", str(w.file("t.cp", forge(w.old))))


def _restore(w: World, forge: Callable[[str], str]) -> None:
    w.keep(forge(w.head))
    backup(w.store, w.tmp / "copy")
    try:
        restore(w.tmp / "copy", w.tmp / "restored", verifiers=[SIGNER.verifier()])
    except Exception:
        assert not (w.tmp / "restored" / "data.mdb").exists()
        raise


def _restore_cli(w: World, forge: Callable[[str], str]) -> None:
    w.keep(forge(w.head))
    backup(w.store, w.tmp / "copy")
    try:
        _cli("--storage", str(w.tmp / "restored"), "restore", str(w.tmp / "copy"), "--vkey", VKEY)
    except AssertionError:
        assert not (w.tmp / "restored" / "data.mdb").exists()
        raise


def _prove_old(w: World, forge: Callable[[str], str]) -> None:
    old = w.file("old.cp", forge(w.old))
    _cli("--storage", str(w.store), "prove", "--consistency", str(old), "--vkey", VKEY)


def _prove_latest(w: World, forge: Callable[[str], str]) -> None:
    w.keep(forge(w.head))
    _cli("--storage", str(w.store), "prove", "--consistency", str(w.file("old.cp", w.old)), "--vkey", VKEY)


def _prove_seq_latest(w: World, forge: Callable[[str], str]) -> None:
    w.keep(forge(w.head))
    _cli("--storage", str(w.store), "prove", "5", "--vkey", VKEY)


ENTRY_POINTS: dict[str, Callable[[World, Callable[[str], str]], None]] = {
    "open_note": _open_note,
    "open_checkpoint": _open_checkpoint,
    "verify_extends": _verify_extends,
    "verify --vkey --trusted (the trusted note)": _verify_trusted,
    "verify --vkey --trusted (a kept checkpoint)": _verify_kept,
    "check_tiles": _check_tiles,
    "verify --tlog --vkey": _verify_tlog,
    "verify --tlog --vkey --trusted (the trusted note)": _verify_tlog_trusted,
    "restore(verifiers=...)": _restore,
    "restore --vkey": _restore_cli,
    "prove --consistency OLD --vkey (OLD)": _prove_old,
    "prove --consistency --vkey (the latest kept)": _prove_latest,
    "prove SEQ --vkey (the latest kept)": _prove_seq_latest,
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_forged_signature_with_the_right_key_id_is_refused(entry: str, tmp_path: Path) -> None:
    check = ENTRY_POINTS[entry]
    check(_world(tmp_path / "good"), _same)  # as signed: accepted
    with pytest.raises((ValidationError, AssertionError)) as caught:
        check(_world(tmp_path / "forged"), _forge)
    assert REFUSED in str(caught.value), f"{entry}: {caught.value}"


def test_verify_tlog_refuses_a_tree_that_does_not_extend_the_trusted_checkpoint(tmp_path: Path) -> None:
    """The exported tree is whole and signed, but its first 10 entries are not the ones the trusted
    checkpoint (same key, same size) signed: another history. Only the comparison of the tree's
    root at the trusted size with the trusted root catches it."""
    w = _world(tmp_path / "w")
    out = w.export(_same)
    other = tmp_path / "other"
    with SovereignJournal(other) as journal:
        for i in range(10):
            journal.log_transaction(TransactionLog(i, "op", f"other{i}", LogStatus.Completed))
        rewritten = journal.sign_checkpoint(SIGNER)
    key = [SIGNER.verifier()]
    assert check_tiles(str(out), key, trusted=open_checkpoint(w.old, key)).entries == 20
    with pytest.raises(ValidationError, match="the tree does not extend the trusted checkpoint: its first 10 "
                                              "entries are not the ones that checkpoint signed"):
        check_tiles(str(out), key, trusted=open_checkpoint(rewritten, key))
    with pytest.raises(AssertionError, match="the tree does not extend the trusted checkpoint"):
        _cli("verify", "--tlog", str(out), "--vkey", VKEY, "--trusted", str(w.file("r.cp", rewritten)))


def test_verify_tlog_refuses_a_trusted_checkpoint_of_another_log(tmp_path: Path) -> None:
    """A trusted checkpoint signed by another log's key, of the same size and root: the tree is of
    example.com/gaps, the trust was placed in another log — refused, not taken as an extension."""
    w = _world(tmp_path / "w")
    out = w.export(_same)
    stranger = generate_signer("example.com/stranger")
    old = open_checkpoint(w.old, [SIGNER.verifier()])
    theirs = sign_note(format_checkpoint(Checkpoint(stranger.name, old.size, old.root)), stranger)
    keys = [SIGNER.verifier(), stranger.verifier()]
    with pytest.raises(ValidationError, match=r"the tree is of 'example\.com/gaps', the trusted "
                                              r"checkpoint of 'example\.com/stranger': another log"):
        check_tiles(str(out), keys, trusted=open_checkpoint(theirs, keys))
    with pytest.raises(AssertionError, match="another log"):
        _cli("verify", "--tlog", str(out), "--vkey", VKEY, "--vkey", str(stranger.verifier()),
             "--trusted", str(w.file("s.cp", theirs)))
