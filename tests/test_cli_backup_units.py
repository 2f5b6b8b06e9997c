"""``krepis backup`` and ``krepis restore`` (cli/_backup.py) in process: every line and JSON field
they print — where the archived entries are, and what the signatures prove. Real LMDB stores."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import Result

from archivekit import Built, built
from krepis import SovereignJournal
from krepis.tlog._note import generate_signer
from test_cli_tlog_units import _fill, _run

__all__ = ["built"]

SIGNER = generate_signer("example.com/backup-units")
VKEY = str(SIGNER.verifier())


def _root(location: Path) -> str:
    with SovereignJournal(location) as journal:
        return base64.b64encode(journal.tree_head().root).decode()


def test_backup_says_what_it_copied(tmp_path: Path) -> None:
    _fill(tmp_path / "s", 5)
    root = _root(tmp_path / "s")
    result = _run("--storage", str(tmp_path / "s"), "backup", str(tmp_path / "bk"))
    assert result.exit_code == 0, result.output
    assert result.output == (f"backed up to {tmp_path / 'bk'}: 5 entries, tree of 5 leaves (root {root}), "
                             "verified\n")
    result = _run("--storage", str(tmp_path / "s"), "backup", str(tmp_path / "bk2"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"path": str(tmp_path / "bk2"), "entries": 5, "tree_size": 5,
                                         "root": root, "checkpoint": None, "archived_not_copied": 0,
                                         "archive": None,
                                         "archive_copied": False}


def test_backup_names_the_archive_it_did_not_copy(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    result = _run("--storage", str(store), "backup", str(tmp_path / "bk"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"backed up to {tmp_path / 'bk'}: ")
    assert lines[1] == (f"not in this backup: 768 archived entries of this log, in {arch} — back that "
                        "directory up too (--archive-to DIR; docs/operations.md)")
    out = json.loads(_run("--storage", str(store), "backup", str(tmp_path / "bk2"), "--json").output)
    assert (out["archived_not_copied"], out["archive"], out["archive_copied"]) == (768, str(arch), False)


def test_backup_without_a_recorded_archive_says_so(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path, record=False)
    result = _run("--storage", str(store), "backup", str(tmp_path / "bk"))
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == (
        "not in this backup: 768 archived entries of this log, in (no archive recorded) — back that "
        "directory up too (--archive-to DIR; docs/operations.md)")
    out = json.loads(_run("--storage", str(store), "backup", str(tmp_path / "bk2"), "--json").output)
    assert (out["archived_not_copied"], out["archive"], out["archive_copied"]) == (768, None, False)


def test_backup_with_its_archive_says_it_is_there(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)
    result = _run("--storage", str(store), "backup", str(tmp_path / "bk"), "--archive-to",
                  str(tmp_path / "a1"))
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == (f"archive copied to {tmp_path / 'a1'} and verified: the "
                      "backup's 768 archived entries of this log are there")
    out = json.loads(_run("--storage", str(store), "backup", str(tmp_path / "bk2"), "--archive-to",
                          str(tmp_path / "a2"), "--json").output)
    assert (out["archived_not_copied"], out["archive_copied"]) == (0, True)
    assert out["archive"] == str(tmp_path / "a2")


@pytest.fixture
def backed_up(tmp_path: Path) -> Path:
    _fill(tmp_path / "s", 5)
    return tmp_path / "s"


def _restore(source: Path, target: Path, *args: str) -> Result:
    return _run("--storage", str(target), "restore", str(source), *args)


def test_restore_without_a_checkpoint_says_nothing_is_signed(backed_up: Path, tmp_path: Path) -> None:
    root = _root(backed_up)
    result = _restore(backed_up, tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert result.output == (f"restored into {tmp_path / 'r'}: 5 entries, tree of 5 leaves (root {root}), "
                             "verified\nno signature checked (no checkpoint kept): nothing proves who wrote "
                             "any of the 5 leaves\n")
    result = _restore(backed_up, tmp_path / "r2", "--json")
    assert json.loads(result.output) == {"path": str(tmp_path / "r2"), "entries": 5, "tree_size": 5,
                                         "root": root, "checkpoint": None, "signed_size": 0,
                                         "signed_origin": None,
                                         "unsigned": 5}


def test_restore_says_what_the_signatures_prove(backed_up: Path, tmp_path: Path) -> None:
    with SovereignJournal(backed_up) as journal:
        note = journal.sign_checkpoint(SIGNER)
    result = _restore(backed_up, tmp_path / "r1")
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == ("no signature checked (give --vkey): the newest checkpoint "
                      "matches the tree, but nothing proves who wrote any of the 5 leaves")
    result = _restore(backed_up, tmp_path / "r2", "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == ("signed: the checkpoint of example.com/backup-units covers all 5 "
                      "leaves")
    out = json.loads(_restore(backed_up, tmp_path / "r3", "--vkey", VKEY, "--json").output)
    assert (out["checkpoint"], out["signed_size"], out["signed_origin"], out["unsigned"]) == (
        note, 5, "example.com/backup-units", 0)
    _fill(backed_up, 2, start=5)
    result = _restore(backed_up, tmp_path / "r4", "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == ("signed: the checkpoint of example.com/backup-units covers "
                      "leaves 0–4 (5 of 7); the 2 leaves after it are covered by no signature")


def test_restore_of_a_checkpoint_of_the_empty_tree_covers_no_leaf(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        journal.sign_checkpoint(SIGNER)
    _fill(tmp_path / "s", 2)
    result = _restore(tmp_path / "s", tmp_path / "r", "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    second = result.output.splitlines()[1]
    assert second == ("signed: the checkpoint of example.com/backup-units covers "
                      "no leaf (0 of 2); the 2 leaves after it are covered by no signature")


def test_restore_names_a_bad_verifier_key_before_touching_the_target(backed_up: Path,
                                                                      tmp_path: Path) -> None:
    result = _restore(backed_up, tmp_path / "r", "--vkey", "not-a-key")
    assert result.exit_code == 1
    assert result.output.startswith("Error: not-a-key: ")
    assert not (tmp_path / "r").exists()
