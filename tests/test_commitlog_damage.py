"""The damage campaign of the commit log: every class of byte position damaged, every stale or
foreign file swapped in. Each case ends with either every acknowledged write present (and the
store verifying, its counter equal to its entries) or a clear refusal — a ``CorruptStorageError``
or ``StorageError`` naming the store — with ``data.mdb``, ``commit.log`` and ``commit.state``
exactly as they were. Never a silently shorter journal, never a damaged store.

The store: a writer that made 40 durable (``sync``) writes and died before LMDB applied any of
them (tests/logtools.py), so every write exists only as a record of the log.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from krepis import JournalError, SovereignJournal
from logtools import flip, ring_offset, unapplied, write_and_die

from conftest import tree_snapshot

WRITES = 40


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("pristine") / "s"
    write_and_die(store, WRITES)
    return store


@pytest.fixture(scope="module")
def other_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("other") / "s"
    write_and_die(store, 10)
    return store


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "s"
    shutil.copytree(pristine, copy, ignore=shutil.ignore_patterns("lock.mdb"))
    os.chmod(copy, 0o700)
    return copy


def _outcome(store: Path) -> str:
    """'whole' (every acknowledged write there, consistent) or 'refused' (nothing written)."""
    before = tree_snapshot(store)
    try:
        journal = SovereignJournal(store, create=False)
    except JournalError as exc:
        assert exc.path == str(store), exc  # type: ignore[attr-defined]
        assert str(store) in str(exc)
        assert tree_snapshot(store) == before, f"the refusing open changed the store ({exc})"
        return "refused"
    with journal:
        ids = [e.request_id for e in journal.query(order="append", newest_first=False)]
        assert ids == [f"r{i}" for i in range(WRITES)], f"{len(ids)} of {WRITES} acknowledged writes"
        assert journal.recover_op_count("op") == journal.journal_count() == WRITES
        assert journal.verify().entries == WRITES
    return "whole"


def _record_field(field: str) -> Callable[[Path], int]:
    """The offset of a field of a record in the middle, first or last of the chain."""
    where = {"magic": 0, "length": 4, "position": 8, "durable": 16, "first_seq": 24, "link": 32,
             "kind": 36, "payload": 40}

    def offset(store: Path, which: int = WRITES // 2) -> int:
        record = unapplied(store)[which]
        return ring_offset(store, record.position) + where[field]
    return offset


def _crc(store: Path) -> int:
    record = unapplied(store)[WRITES // 2]
    return ring_offset(store, record.position) + 40 + len(record.payload)


def _padding(store: Path) -> int:  # the bytes between a record's CRC and the next 8-byte boundary
    for record in unapplied(store):
        used = 40 + len(record.payload) + 4
        if record.end - record.position > used:
            return ring_offset(store, record.position) + used
    pytest.skip("no record has padding")


def _beyond(store: Path) -> int:
    last = unapplied(store)[-1]
    return ring_offset(store, last.end) + 16


# (position class, offset in the file, the outcomes it may have)
BYTES: list[tuple[str, str, Callable[[Path], int], set[str]]] = [
    ("superblock copy 0: magic", "commit.log", lambda s: 3, {"whole"}),
    ("superblock copy 0: version", "commit.log", lambda s: 8, {"whole"}),
    ("superblock copy 0: log id", "commit.log", lambda s: 20, {"whole"}),
    ("superblock copy 0: ring start", "commit.log", lambda s: 33, {"whole"}),
    ("superblock copy 0: ring size", "commit.log", lambda s: 42, {"whole"}),
    ("superblock copy 0: crc", "commit.log", lambda s: 48, {"whole"}),
    ("superblock copy 1: log id", "commit.log", lambda s: 2048 + 20, {"whole"}),
    ("superblock copy 1: crc", "commit.log", lambda s: 2048 + 49, {"whole"}),
    *[(f"record (middle): {field}", "commit.log", _record_field(field), {"refused"})
      for field in ("magic", "length", "position", "durable", "first_seq", "link", "kind", "payload")],
    ("record (middle): crc", "commit.log", _crc, {"refused"}),
    ("record (first): magic", "commit.log", lambda s: _record_field("magic")(s, 0), {"refused"}),
    ("record (last): payload", "commit.log", lambda s: _record_field("payload")(s, WRITES - 1), {"refused"}),
    ("record padding", "commit.log", _padding, {"whole"}),
    ("ring beyond the last record", "commit.log", _beyond, {"whole"}),
    ("commit.state: head", "commit.state", lambda s: 3, {"whole"}),
    ("commit.state: marker", "commit.state", lambda s: 64 + 26, {"whole"}),
    ("commit.state: marker crc", "commit.state", lambda s: 64 + 32, {"whole"}),
]


@pytest.mark.parametrize(("file", "offset", "allowed"), [b[1:] for b in BYTES], ids=[b[0] for b in BYTES])
def test_one_damaged_byte(store: Path, file: str, offset: Callable[[Path], int], allowed: set[str]) -> None:
    flip(store / file, offset(store))
    assert _outcome(store) in allowed


def _truncate_log(store: Path) -> None:
    record = unapplied(store)[WRITES // 2]
    os.truncate(store / "commit.log", ring_offset(store, record.position) + 10)


def _older_log(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    write_and_die(old, 10)  # an earlier state of the same history: copy the store, then go on
    shutil.rmtree(store)
    shutil.copytree(old, store)
    saved = (old / "commit.log").read_bytes()
    write_and_die(store, WRITES - 10, start=10)
    (store / "commit.log").write_bytes(saved)


def _older_log_and_state(store: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    write_and_die(old, 10)
    shutil.rmtree(store)
    shutil.copytree(old, store)
    saved = {name: (old / name).read_bytes() for name in ("commit.log", "commit.state")}
    write_and_die(store, WRITES - 10, start=10)
    for name, raw in saved.items():
        (store / name).write_bytes(raw)


SWAPS: list[tuple[str, Callable[[Path, Path, Path], None], set[str]]] = [
    ("another store's commit.log", lambda s, o, t: shutil.copy(o / "commit.log", s / "commit.log"),
     {"refused"}),
    ("another store's commit.log and commit.state",
     lambda s, o, t: [shutil.copy(o / n, s / n) for n in ("commit.log", "commit.state")], {"refused"}),
    ("another store's data.mdb", lambda s, o, t: shutil.copy(o / "data.mdb", s / "data.mdb"), {"refused"}),
    ("commit.log cut short", lambda s, o, t: _truncate_log(s), {"refused"}),
    ("an older copy of commit.log", lambda s, o, t: _older_log(s, t), {"refused"}),
    ("commit.state deleted", lambda s, o, t: (s / "commit.state").unlink(), {"whole"}),
    ("commit.state emptied", lambda s, o, t: (s / "commit.state").write_bytes(b""), {"whole"}),
    ("commit.log deleted (commit.state remembers it)", lambda s, o, t: (s / "commit.log").unlink(),
     {"refused"}),
]


@pytest.mark.parametrize(("swap", "allowed"), [b[1:] for b in SWAPS], ids=[b[0] for b in SWAPS])
def test_a_swapped_file(store: Path, other_store: Path, tmp_path: Path,
                        swap: Callable[[Path, Path, Path], None], allowed: set[str]) -> None:
    swap(store, other_store, tmp_path)
    assert _outcome(store) in allowed


def test_an_older_copy_of_both_log_files_cannot_be_told_from_a_store_that_never_got_further(
        store: Path, tmp_path: Path) -> None:
    """The documented limit: every file of the store but data.mdb replaced by older copies of
    themselves looks like a store whose writer stopped there. The open then holds the older
    copy's writes — exactly, consistently — and no more."""
    _older_log_and_state(store, tmp_path)
    with SovereignJournal(store) as journal:
        assert [e.request_id for e in journal.query(order="append", newest_first=False)] == \
            [f"r{i}" for i in range(10)]
        assert journal.recover_op_count("op") == journal.journal_count() == 10
        assert journal.verify().entries == 10
