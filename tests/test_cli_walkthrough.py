"""What a newcomer's walk through the README found: a backup says which entries it leaves in the
archive, `verify --vkey` checks the checkpoints another key signed against the tree without
calling them bad, and counts are written in words that agree with them."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import cli
from krepis.storage import open_storage
from krepis.tlog._note import Checkpoint, format_checkpoint, generate_signer, sign_note

SIGNER = generate_signer("example.com/walk")
OTHER = generate_signer("example.com/other")


def _run(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(store), *args])


def _fill(store: Path, n: int) -> None:
    with SovereignJournal(store, flush="interval:20ms") as journal:
        for i in range(n):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, duration_us=i))


def test_a_backup_says_which_archived_entries_it_leaves_out(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "arch"
    _fill(store, 700)
    with SovereignJournal(store) as journal:
        assert journal.archive(arch, keep_last=100).bundles == 2
    result = _run(store, "backup", str(tmp_path / "bk"))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"backed up to {tmp_path / 'bk'}: 188 entries, tree of 700 leaves")
    assert lines[1] == (f"not in this backup: 512 archived entries of this log, in {arch} — back that "
                        "directory up too (--archive-to DIR; docs/operations.md)")
    as_json = _run(store, "backup", str(tmp_path / "bk2"), "--json")
    out = json.loads(as_json.output)
    assert out["archived_not_copied"] == 512 and out["archive"] == str(arch) and out["entries"] == 188
    assert out["archive_copied"] is False
    plain = _run(tmp_path / "bk", "backup", str(tmp_path / "bk3"))  # a copy of the copy: the same note
    assert "not in this backup: 512 archived entries" in plain.output


def test_a_backup_of_a_store_without_an_archive_says_nothing_more(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 5)
    result = _run(store, "backup", str(tmp_path / "bk"))
    assert result.exit_code == 0 and len(result.output.splitlines()) == 1
    out = json.loads(_run(store, "backup", str(tmp_path / "bk2"), "--json").output)
    assert out["archived_not_copied"] == 0 and out["archive"] is None


def test_verify_checks_another_keys_checkpoint_against_the_tree(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 300)
    with SovereignJournal(store) as journal:
        trusted = journal.sign_checkpoint(SIGNER)
    _fill_more(store, 20)
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(OTHER)  # a second key's checkpoint kept in the same store
    (tmp_path / "kept.cp").write_text(trusted)
    args = ("verify", "--vkey", str(SIGNER.verifier()), "--trusted", str(tmp_path / "kept.cp"))
    result = _run(store, *args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 320 entries, tree of 320 leaves extends the trusted checkpoint")
    assert "2 checkpoints consistent (1 of other keys: roots checked, signatures not)" in result.output
    assert json.loads(_run(store, *args, "--json").output)["checkpoints_of_other_keys"] == 1
    both = _run(store, "verify", "--vkey", str(SIGNER.verifier()), "--vkey", str(OTHER.verifier()),
                "--trusted", str(tmp_path / "kept.cp"))
    assert "2 checkpoints consistent" in both.output and "other keys" not in both.output


def test_another_keys_checkpoint_that_does_not_match_the_tree_fails(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 40)
    with SovereignJournal(store) as journal:
        trusted = journal.sign_checkpoint(SIGNER)
        epoch = journal.tree_head().epoch
    lying = sign_note(format_checkpoint(Checkpoint(OTHER.name, 40, b"\x07" * 32)), OTHER)
    storage = open_storage(store, create=False)
    try:
        storage.add_checkpoint(epoch, 40, OTHER.name, lying)
    finally:
        storage.close()
    (tmp_path / "kept.cp").write_text(trusted)
    result = _run(store, "verify", "--vkey", str(SIGNER.verifier()), "--trusted", str(tmp_path / "kept.cp"))
    assert result.exit_code == 1
    assert "the stored checkpoint of tree size 40 does not match the tree" in result.output


def test_a_bad_kept_checkpoint_is_named_by_its_origin_and_size(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 40)
    with SovereignJournal(store) as journal:
        trusted = journal.sign_checkpoint(SIGNER)
        epoch = journal.tree_head().epoch
    forged = sign_note(format_checkpoint(Checkpoint(SIGNER.name, 40, b"\x07" * 32)), OTHER)
    storage = open_storage(store, create=False)
    try:
        storage.add_checkpoint(epoch, 40, SIGNER.name, forged)  # the key's name, another key's signature
    finally:
        storage.close()
    (tmp_path / "kept.cp").write_text(trusted)
    result = _run(store, "verify", "--vkey", str(SIGNER.verifier()), "--trusted", str(tmp_path / "kept.cp"))
    assert result.exit_code == 1
    assert (f"a stored checkpoint is bad (origin '{SIGNER.name}', tree size 40): the note carries no "
            "signature of a known key") in result.output


def _fill_more(store: Path, n: int) -> None:
    with SovereignJournal(store, flush="interval:20ms") as journal:
        for i in range(n):
            journal.log_transaction(TransactionLog(1000 + i, "more", f"m{i}", LogStatus.Completed))


def test_counts_are_written_in_words_that_agree(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 1)
    assert "; 1 journal entry in " in _run(store, "stats").output
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
    assert "files written to" in _run(store, "tlog", "export", str(tmp_path / "tiles")).output
    assert ", 1 checkpoint consistent" in _run(store, "verify").output


def test_an_export_says_which_checkpoint_it_published_and_what_is_newer(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 300)
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
    _fill_more(store, 10)
    out = _run(store, "tlog", "export", str(tmp_path / "tiles")).output
    assert out.endswith(f"written to {tmp_path / 'tiles'}: the checkpoint of {SIGNER.name}, tree size 300; "
                        "10 newer entries not in it (sign a checkpoint: --key FILE)\n"), out
    key = tmp_path / "k"
    key.write_text(str(SIGNER))
    signed = _run(store, "tlog", "export", str(tmp_path / "tiles"), "--key", str(key)).output
    assert signed.endswith(f": the checkpoint of {SIGNER.name}, tree size 310\n"), signed


def test_proving_an_entry_newer_than_the_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    store = tmp_path / "s"
    _fill(store, 30)
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
    _fill_more(store, 5)
    result = _run(store, "prove", "32")
    assert result.exit_code == 1 and result.stdout == ""
    assert ("entry 32 is newer than the latest checkpoint (tree size 30, entries 0…29): sign a newer one "
            "first (krepis checkpoint --key FILE), or prove it against the unsigned current tree with "
            "--tree-size 35") in result.output
    assert _run(store, "prove", "32", "--tree-size", "35").exit_code == 0
    assert _run(store, "prove", "29").exit_code == 0
    assert "not in the tree" in _run(store, "prove", "35").output  # beyond the log: as before


def test_stats_shows_the_counters_when_the_archive_cannot_be_read(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "arch"
    _fill(store, 600)
    with SovereignJournal(store) as journal:
        journal.increment_op_count("op_a")
        assert journal.archive(arch, keep_last=10).bundles == 2
    arch.rename(tmp_path / "moved")
    result = _run(store, "stats")
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "op_a\t1"  # (piped: the counters, tab-separated)
    assert result.stderr.splitlines()[0] == (f"600 journal entries (88 live, 512 archived in {arch}), "
                                             f"1 counter in {store}")
    assert result.stderr.splitlines()[-1].startswith(f"Error: entries 0…511 of the journal at {store} are in "
                                                     f"its archive at {arch}, which cannot be read")
    assert result.stderr.rstrip().endswith("(the counts above are the store's own)")
    as_json = _run(store, "stats", "--json")
    assert as_json.exit_code == 1
    out = json.loads(as_json.stdout)
    assert out["op_counts"] == {"op_a": 1} and "cannot be read" in out["archive_error"]
    assert _run(store, "stats", "--live-only").exit_code == 0
