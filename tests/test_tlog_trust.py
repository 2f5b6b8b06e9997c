"""``krepis verify --vkey`` proves today's log extends the newest checkpoint the user kept
(``--trusted``), taking nothing from the store on faith: an attacker who can write the store can
delete its checkpoints, clear it, or drop its oldest entries as if archived — each is a failure
with a clear message, never an "ok"."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import (
    CorruptStorageError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.cli import cli
from krepis.storage import backup, open_storage, restore
from krepis.tlog._note import Checkpoint, NoteError, format_checkpoint, generate_signer, sign_note

SIGNER = generate_signer("example.com/trust")
VKEY = str(SIGNER.verifier())


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("pg_url"))


def _fill(location: str | Path, n: int, start: int = 0, tag: str = "r") -> None:
    with SovereignJournal(location, flush="interval:20ms") as journal:
        for i in range(start, start + n):
            journal.log_transaction(TransactionLog(i, "op", f"{tag}{i}", LogStatus.Completed, duration_us=i))


def _checkpoint(location: str | Path) -> str:
    with SovereignJournal(location) as journal:
        return journal.sign_checkpoint(SIGNER)


def _verify(location: str | Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(location), "verify", *args])


def _trusting(location: str | Path, trusted: Path, *args: str) -> Result:
    return _verify(location, "--vkey", VKEY, "--trusted", str(trusted), *args)


def _tamper(note: str) -> str:
    """The note with one bit of its signature bytes flipped; the key ID stays right."""
    import base64

    line = note.rstrip("\n").rsplit("\n", 1)[1]
    raw = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
    raw[20] ^= 0x04
    return note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw)).decode())


def test_todays_log_extends_the_trusted_checkpoint(location: str, tmp_path: Path) -> None:
    _fill(location, 300)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(location))
    _fill(location, 40, start=300)
    with SovereignJournal(location) as journal:
        report = journal.verify_extends(kept.read_text(), [VKEY])
        assert (report.checkpoint.size, report.tree_size, report.entries, report.archived) == \
            (300, 340, 340, 0)
        assert report.root == journal.tree_head().root
    result = _trusting(location, kept)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 340 entries, tree of 340 leaves extends the trusted checkpoint of "
                                    "example.com/trust (tree size 300)")


def test_a_rewritten_history_without_its_checkpoints_fails(location: str, tmp_path: Path) -> None:
    """The attacker replaced the log with another of the same length and kept no checkpoint."""
    _fill(location, 300)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(location))
    forged = tmp_path / "forged"
    _fill(forged, 300, tag="forged")
    _fill(forged, 1, start=300)
    # before: "ok: 301 entries, tree of 301 leaves, 0 checkpoint(s) consistent", exit 0
    result = _verify(forged, "--vkey", VKEY)
    assert result.exit_code == 1
    assert "--vkey needs the newest checkpoint you trust: pass --trusted FILE" in result.output
    result = _trusting(forged, kept)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "does not extend the trusted checkpoint of example.com/trust (tree size 300): its entries " \
           "before seq 300 are not the ones that checkpoint signed" in result.output
    with SovereignJournal(forged) as journal, pytest.raises(CorruptStorageError, match="does not extend"):
        journal.verify_extends(kept.read_text(), [SIGNER.verifier()])
    assert _trusting(location, kept).exit_code == 0


def test_a_clear_fails_even_with_the_old_checkpoints_kept(tmp_path: Path) -> None:
    """A clear ends the log the key signed: its checkpoints are "of an earlier log" — which once
    let a verify with the key pass."""
    store = tmp_path / "store"
    _fill(store, 20)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(store))
    with SovereignJournal(store) as journal:
        journal.clear_all()
    _fill(store, 30, start=20, tag="after")
    # before: "ok: 31 entries, … 0 checkpoint(s) consistent (1 of logs before a clear not checkable)"
    assert _verify(store, "--vkey", VKEY).exit_code == 1
    result = _trusting(store, kept)
    assert result.exit_code == 1
    assert "was cleared after example.com/trust signed a checkpoint of it (tree size 20, log 0): the log " \
           "the trusted checkpoint signed has ended" in result.output
    assert "the current log, log 1, began at seq 20" in result.output


def test_a_clear_whose_checkpoints_were_deleted_fails_too(tmp_path: Path) -> None:
    """The same, on a forged store without the old checkpoints: the consistency proof fails and
    the message says the journal was cleared since."""
    forged = tmp_path / "forged"
    kept = tmp_path / "kept.cp"
    _fill(tmp_path / "store", 20)
    kept.write_text(_checkpoint(tmp_path / "store"))
    _fill(forged, 20)  # the same entries…
    with SovereignJournal(forged) as journal:
        journal.clear_all()  # …cleared, and more
    _fill(forged, 30, start=20)
    result = _trusting(forged, kept)
    assert result.exit_code == 1
    assert "does not extend the trusted checkpoint" in result.output
    assert "or the journal was cleared since (its current log, log 1, began at seq 20)" in result.output


def test_entries_dropped_as_if_archived_are_named_unless_the_archive_is_checked(
        location: str, tmp_path: Path) -> None:
    _fill(location, 1000)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(location))
    storage = open_storage(location)
    try:  # the attacker removes the oldest 512 entries and marks the rest "live"
        storage.drop_prefix(storage.tree_head().epoch, 512)
    finally:
        storage.close()
    # before: "ok: 488 entries, tree of 1000 leaves, 1 checkpoint(s) consistent"
    result = _trusting(location, kept)
    assert result.exit_code == 1
    assert "entries 0…511 of the journal at" in result.output
    assert "are archived, and the store records no archive directory" in result.output
    result = _trusting(location, kept, "--live-only")
    assert result.exit_code == 1
    assert "entries 0…511 of the journal at" in result.output
    assert "are not in the store (archived, or removed): they were not checked against the tree" \
        in result.output
    with SovereignJournal(location) as journal:
        with pytest.raises(StorageError, match="entries 0…511"):
            journal.verify_extends(kept.read_text(), [VKEY])
        with pytest.raises(ValidationError, match="entries 0…511"):
            journal.verify_extends(kept.read_text(), [VKEY], live_only=True)


def test_archived_entries_are_checked_from_the_archive(tmp_path: Path) -> None:
    store, arch = tmp_path / "store", tmp_path / "archive"
    _fill(store, 700)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(store))
    early = tmp_path / "early.cp"  # a tree size inside the archived prefix, not a whole bundle
    with SovereignJournal(store) as journal:
        root = journal.tree_root(300)
        early.write_text(sign_note(format_checkpoint(Checkpoint(SIGNER.name, 300, root)), SIGNER))
        journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == 512
        report = journal.verify_extends(early.read_text(), [VKEY], archive=arch)
        assert (report.entries, report.archived, report.tree_size) == (188, 512, 700)
    result = _trusting(store, kept, "--archive", str(arch))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 188 entries and 512 archived, tree of 700 leaves extends")
    result = _trusting(store, kept)  # the archive the store records, by default
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 188 entries and 512 archived")
    assert _trusting(store, kept, "--live-only").exit_code == 1
    # an archive of other entries (another store's, of the same length) is refused
    other = tmp_path / "other"
    _fill(other, 700, tag="other")
    with SovereignJournal(other) as journal:
        journal.archive(tmp_path / "other-archive", keep_last=0)
    result = _trusting(store, kept, "--archive", str(tmp_path / "other-archive"))
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_a_rolled_back_log_fails(tmp_path: Path) -> None:
    store, copy = tmp_path / "store", tmp_path / "copy"
    _fill(store, 100)
    backup(store, copy)
    _fill(store, 50, start=100)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(store))
    restore(copy, store, force=True)
    result = _trusting(store, kept)
    assert result.exit_code == 1
    assert "has 100 entries, fewer than the 150 of the trusted checkpoint of example.com/trust: entries " \
           "were removed (or rolled back" in result.output


def test_the_trusted_checkpoint_itself_must_verify(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _fill(store, 10)
    note = _checkpoint(store)
    bad = tmp_path / "bad.cp"
    bad.write_text(_tamper(note))
    result = _trusting(store, bad)
    assert result.exit_code == 1
    assert "bad.cp: the signature of example.com/trust does not verify" in result.output
    with SovereignJournal(store) as journal, pytest.raises(NoteError, match="does not verify"):
        journal.verify_extends(_tamper(note), [VKEY])
    other = generate_signer("example.com/another")
    bad.write_text(sign_note(format_checkpoint(Checkpoint(SIGNER.name, 10, b"\0" * 32)), other))
    result = _verify(store, "--vkey", str(other.verifier()), "--trusted", str(bad))
    assert result.exit_code == 1 and "is not the name of a key that signed it" in result.output
    result = _verify(store, "--trusted", str(bad))
    assert result.exit_code == 2 and "--trusted needs --vkey" in result.output
    missing = _trusting(store, tmp_path / "nope.cp")
    assert missing.exit_code == 1 and "nope.cp is missing" in missing.output


def test_a_stored_checkpoint_with_an_altered_signature_fails_verify_vkey(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _fill(store, 10)
    kept = tmp_path / "kept.cp"
    kept.write_text(_checkpoint(store))
    _fill(store, 5, start=10)
    with SovereignJournal(store) as journal:
        head = journal.tree_head()
        note = sign_note(format_checkpoint(Checkpoint(SIGNER.name, head.size, head.root)), SIGNER)
    storage = open_storage(store)
    try:
        storage.add_checkpoint(head.epoch, head.size, SIGNER.name, _tamper(note))
    finally:
        storage.close()
    result = _trusting(store, kept)
    assert result.exit_code == 1
    assert ("a stored checkpoint is bad (origin 'example.com/trust', tree size 15): the signature of "
            "example.com/trust does not verify") in result.output


def test_verify_compares_a_stored_checkpoints_root_with_the_tree(tmp_path: Path) -> None:
    """Without keys too: a kept checkpoint whose root is not the tree's at its size fails."""
    store = tmp_path / "store"
    _fill(store, 10)
    with SovereignJournal(store) as journal:
        head = journal.tree_head()
        wrong = journal.tree_root(9)
    note = sign_note(format_checkpoint(Checkpoint(SIGNER.name, head.size, wrong)), SIGNER)
    storage = open_storage(store)
    try:
        storage.add_checkpoint(head.epoch, head.size, SIGNER.name, note)
    finally:
        storage.close()
    result = _verify(store)
    assert result.exit_code == 1
    assert "the stored checkpoint of tree size 10 does not match the tree: an entry before seq 10 changed" \
        in result.output
    result = _verify(store, "--vkey", VKEY, "--trusted", str(_write(tmp_path / "k.cp", note)))
    assert result.exit_code == 1 and "does not extend" in result.output


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_trusted_checkpoint_of_the_empty_tree_must_have_the_empty_root(tmp_path: Path) -> None:
    """Every tree extends the empty one — but a checkpoint of size 0 signing another root is not
    of the empty tree (a consistency proof from size 0 never looks at the old root)."""
    from krepis.tlog import EMPTY_ROOT

    store = tmp_path / "store"
    _fill(store, 3)
    with SovereignJournal(store) as journal:
        empty = sign_note(format_checkpoint(Checkpoint(SIGNER.name, 0, EMPTY_ROOT)), SIGNER)
        assert journal.verify_extends(empty, [VKEY]).tree_size == 3
        bogus = sign_note(format_checkpoint(Checkpoint(SIGNER.name, 0, b"\7" * 32)), SIGNER)
        with pytest.raises(CorruptStorageError, match="does not extend the trusted checkpoint"):
            journal.verify_extends(bogus, [VKEY])
