"""Each check of an exported tree and of a restored backup has a test that fails without it: a
checkpoint with altered signature bytes (its key ID right), a signed root the entries do not
make, a level-0 tile that is not the entries' hashes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis.cli import cli
from krepis.storage import backup, open_storage
from krepis.tlog._note import Checkpoint, format_checkpoint, generate_signer, sign_note
from krepis.tlog._tiles import check_tiles

SIGNER = generate_signer("example.com/checks")
VKEY = str(SIGNER.verifier())


def _tamper(note: str) -> str:
    """One bit of the signature bytes flipped; the key name and ID stay right."""
    line = note.rstrip("\n").rsplit("\n", 1)[1]
    raw = bytearray(base64.b64decode(line.rsplit(" ", 1)[1]))
    raw[4 + 17] ^= 0x02
    return note.replace(line, line.rsplit(" ", 1)[0] + " " + base64.b64encode(bytes(raw)).decode())


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    with SovereignJournal(tmp_path / "store", flush="interval:20ms") as journal:
        for i in range(300):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        journal.export_tiles(tmp_path / "tiles", SIGNER)
    assert check_tiles(str(tmp_path / "tiles"), [SIGNER.verifier()]).entries == 300
    return tmp_path / "tiles"


def _verify_tlog(out: Path) -> Result:
    return CliRunner().invoke(cli, ["verify", "--tlog", str(out), "--vkey", VKEY])


def test_verify_tlog_refuses_a_checkpoint_with_altered_signature_bytes(exported: Path) -> None:
    cp = exported / "checkpoint"
    cp.write_text(_tamper(cp.read_text()))
    result = _verify_tlog(exported)
    assert result.exit_code == 1
    assert "the signature of example.com/checks does not verify" in result.output


def test_verify_tlog_refuses_a_signed_root_the_entries_do_not_make(exported: Path) -> None:
    """The checkpoint is signed by the key, of the right size — but not of these entries; the
    tiles and bundles agree with each other. Only the root comparison catches it."""
    cp = exported / "checkpoint"
    with SovereignJournal(exported.parent / "store") as journal:
        other_root = journal.tree_root(299)
    cp.write_text(sign_note(format_checkpoint(Checkpoint(SIGNER.name, 300, other_root)), SIGNER))
    with pytest.raises(ValidationError, match=r"the entries' tree head does not match the checkpoint's root "
                                              r"\(tree size 300\)"):
        check_tiles(str(exported), [SIGNER.verifier()])
    assert _verify_tlog(exported).exit_code == 1


def test_verify_tlog_compares_level_0_tiles_with_the_entries(exported: Path) -> None:
    """A leaf hash altered in the partial level-0 tile (entries 256…299, under no level-1 hash):
    the bundles are intact and still make the signed root."""
    tile = exported / "tile" / "0" / "001.p" / "44"
    data = bytearray(tile.read_bytes())
    data[32 * 3 + 5] ^= 0x01
    tile.write_bytes(bytes(data))
    result = _verify_tlog(exported)
    assert result.exit_code == 1
    assert "tile/0/001.p/44: hash 3 does not match the entries (entry 259 onwards)" in result.output


def test_restore_vkey_refuses_a_checkpoint_with_altered_signature_bytes(tmp_path: Path) -> None:
    live, copy = tmp_path / "live", tmp_path / "copy"
    with SovereignJournal(live) as journal:
        for i in range(10):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
        head = journal.tree_head()
    note = sign_note(format_checkpoint(Checkpoint(SIGNER.name, head.size, head.root)), SIGNER)
    storage = open_storage(live)
    try:
        storage.add_checkpoint(head.epoch, head.size, SIGNER.name, _tamper(note))
    finally:
        storage.close()
    backup(live, copy)
    target = tmp_path / "restored"
    result = CliRunner().invoke(cli, ["--storage", str(target), "restore", str(copy), "--vkey", VKEY])
    assert result.exit_code == 1
    assert "the signature of example.com/checks does not verify" in result.output
    assert not target.exists()
    good = CliRunner().invoke(cli, ["--storage", str(target), "restore", str(copy)])  # (no key: no check)
    assert good.exit_code == 0, good.output
