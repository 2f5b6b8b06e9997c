"""``krepis prove`` in this process (Click's runner), every line of its output checked: an
inclusion proof of one entry or of each entry of a request, against the latest checkpoint or a
given tree size, of live and archived entries; the refusals, word for word, with nothing printed
before them."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import cli
from krepis.tlog import leaf_hash, verify_inclusion
from krepis.tlog._note import generate_signer

SIGNER = generate_signer("example.com/prove-units")
RID = "req-7f3a9c01"


def _fill(journal: SovereignJournal, start: int, n: int) -> None:
    for i in range(start, start + n):
        rid = RID if i % 5 == 2 else f"other-{i}"
        journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", rid, LogStatus.Completed,
                                               duration_us=i))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """40 entries, a checkpoint of them, then 10 more (entries 2, 7, 12, … are request RID)."""
    path = tmp_path / "store"
    with SovereignJournal(path, flush="interval:20ms") as journal:
        _fill(journal, 0, 40)
        journal.sign_checkpoint(SIGNER)
        _fill(journal, 40, 10)
    return path


def _prove(store: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--storage", str(store), "prove", *args])


def _lines(result: Result) -> list[dict]:  # type: ignore[type-arg]
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _proved(line: dict, store: Path, seq: int, size: int, note: str | None) -> None:  # type: ignore[type-arg]
    """``line`` is the whole proof of entry ``seq`` in the tree of ``size`` leaves."""
    with SovereignJournal(store, create=False) as journal:
        entry = journal.entry(seq)
        root = journal.tree_root(size)
        proof = journal.inclusion_proof(seq, tree_size=size)
    assert set(line) == {"seq", "index", "tree_size", "leaf_hash", "entry", "proof", "root", "checkpoint"}
    assert (line["seq"], line["index"], line["tree_size"], line["checkpoint"]) == (seq, seq, size, note)
    assert line["entry"] == entry.to_json()
    leaf = leaf_hash(line["entry"].encode())
    assert base64.b64decode(line["leaf_hash"]) == leaf
    assert base64.b64decode(line["root"]) == root
    path = [base64.b64decode(p) for p in line["proof"]]
    assert path == proof.path and verify_inclusion(leaf, seq, size, path, root)


def _note(store: Path) -> str:
    with SovereignJournal(store, create=False) as journal:
        note = journal.latest_checkpoint()
    assert note is not None
    return note


def test_one_entry_against_the_latest_checkpoint_or_a_tree_size(store: Path) -> None:
    note = _note(store)
    [line] = _lines(_prove(store, "7"))
    _proved(line, store, 7, 40, note)
    [line] = _lines(_prove(store, "7", "--tree-size", "45"))  # a tree no checkpoint signed
    _proved(line, store, 7, 45, None)
    [line] = _lines(_prove(store, "44", "--tree-size", "50"))
    _proved(line, store, 44, 50, None)


def test_every_entry_of_a_request_oldest_first(store: Path) -> None:
    lines = _lines(_prove(store, "--request-id", "req-7f", "--tree-size", "50"))  # a prefix
    assert [line["seq"] for line in lines] == list(range(2, 50, 5))
    for line in lines:
        _proved(line, store, line["seq"], 50, None)
    with SovereignJournal(store, create=False) as journal:
        note = journal.sign_checkpoint(SIGNER)
    lines = _lines(_prove(store, "--request-id", RID))
    assert [line["seq"] for line in lines] == list(range(2, 50, 5))
    for line in lines:
        _proved(line, store, line["seq"], 50, note)


def test_a_request_past_the_tree_proves_nothing(store: Path) -> None:
    for args, what in ((("--request-id", RID), "entry 42 of request req-7f3a9c01 is not in the latest "
                                                "checkpoint (tree size 40)"),
                       (("--request-id", RID, "--tree-size", "47"), "entry 47 of request req-7f3a9c01 is "
                                                                    "not in the tree (tree size 47)")):
        result = _prove(store, *args)
        assert result.exit_code == 1 and result.stdout == ""  # nothing partial
        assert result.stderr == (f"Error: {what}: sign a newer checkpoint (krepis checkpoint --key FILE) "
                                 "or give --tree-size\n")
    result = _prove(store, "--request-id", RID, "--tree-size", "48")
    assert [line["seq"] for line in _lines(result)][-1] == 47


def test_a_request_that_is_not_there_is_named(store: Path) -> None:
    result = _prove(store, "--request-id", "nobody")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: no request id is or begins with 'nobody'")


def test_an_entry_newer_than_the_checkpoint_is_refused_saying_what_to_do(store: Path) -> None:
    result = _prove(store, "45")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == (
        "Error: entry 45 is newer than the latest checkpoint (tree size 40, entries 0…39): sign a newer "
        "one first (krepis checkpoint --key FILE), or prove it against the unsigned current tree with "
        "--tree-size 50\n")


def test_archived_entries_are_proved_from_the_archive(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        _fill(journal, 0, 600)
        note = journal.sign_checkpoint(SIGNER)
        journal.archive(tmp_path / "archive", keep_last=0)
    [line] = _lines(_prove(store, "300"))
    _proved(line, store, 300, 600, note)
    lines = _lines(_prove(store, "--request-id", RID))
    assert [line["seq"] for line in lines] == list(range(2, 600, 5))
    for line in lines[::17]:
        _proved(line, store, line["seq"], 600, note)
    result = _prove(store, "300", "--live-only")
    assert result.exit_code == 1 and result.stdout == "" and "entries 256…511" in result.stderr


def test_a_request_id_with_glob_characters_is_a_prefix_not_a_pattern(store: Path) -> None:
    result = _prove(store, "--request-id", "req-7f*", "--tree-size", "50")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: no request id is or begins with 'req-7f*'")


def test_a_log_begun_by_a_clear_counts_its_tree_from_its_first_seq(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        _fill(journal, 0, 30)
        journal.clear_all()
        _fill(journal, 100, 20)  # seqs 31…50 (30 is the clear's own entry)
        note = journal.sign_checkpoint(SIGNER)
        first = journal.tree_head().first_seq
    lines = _lines(_prove(store, "--request-id", RID))
    assert [line["seq"] for line in lines] == [first + 3, first + 8, first + 13, first + 18]
    assert all(line["checkpoint"] == note and line["tree_size"] == 21 for line in lines)
    assert [line["index"] for line in lines] == [3, 8, 13, 18]


class _Moved:
    """603 entries, the first 512 archived, the archive the store records moved to ``moved``;
    request ``old-only`` has entries in the archived prefix only."""

    def __init__(self, tmp_path: Path) -> None:
        self.store, arch, self.moved = tmp_path / "store", tmp_path / "archive", tmp_path / "moved"
        with SovereignJournal(self.store, flush="interval:20ms") as journal:
            for i in range(3):  # seqs 0…2
                journal.log_transaction(TransactionLog(i, "op", "old-only-1", LogStatus.Completed))
            _fill(journal, 0, 600)  # seqs 3…602: RID at 5, 10, …
            self.note = journal.sign_checkpoint(SIGNER)
            journal.archive(arch, keep_last=0)
        arch.rename(self.moved)


def test_an_archive_given_is_read_for_archived_entries_and_requests(tmp_path: Path) -> None:
    m = _Moved(tmp_path)
    [line] = _lines(_prove(m.store, "300", "--archive", str(m.moved)))
    assert line["seq"] == 300 and line["checkpoint"] == m.note
    lines = _lines(_prove(m.store, "--request-id", RID, "--archive", str(m.moved)))
    assert [line["seq"] for line in lines] == list(range(5, 603, 5))
    for line in (lines[0], lines[-1]):
        assert line["tree_size"] == 603 and line["entry"]
    lines = _lines(_prove(m.store, "--request-id", "old-only", "--archive", str(m.moved)))  # a prefix
    assert [line["seq"] for line in lines] == [0, 1, 2]
    result = _prove(m.store, "300")  # the archive the store records is not there
    assert result.exit_code == 1 and result.stdout == "" and str(tmp_path / "archive") in result.stderr


def test_live_only_proves_the_live_entries_without_any_archive(tmp_path: Path) -> None:
    m = _Moved(tmp_path)
    [line] = _lines(_prove(m.store, "550", "--live-only"))
    assert line["seq"] == 550 and line["entry"]
    lines = _lines(_prove(m.store, "--request-id", RID, "--live-only"))
    assert [line["seq"] for line in lines] == list(range(515, 603, 5))
    result = _prove(m.store, "--request-id", "old-only", "--live-only")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: no request id is or begins with 'old-only'")
