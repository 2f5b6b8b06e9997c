"""The LMDB adapter on damaged or exhausted stores: every failure is an error naming the store and
what was being done, and a refused change changes nothing. And checkpoints racing writers.

Stores are damaged with LMDB itself, behind krepis's back (tests/rawlmdb.py), as another tool or
a failing disk would.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

import krepis.storage.lmdb._layout as adapter
from krepis import (
    CorruptStorageError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
)
from krepis.storage import Query
from krepis.storage.lmdb import LmdbStorage
from krepis.storage.lmdb._layout import _os_error, _wrap
from rawlmdb import edit

from conftest import make_store


def _raw(store: Path, change: dict[int, bytes | None]) -> None:
    """Delete (None) or overwrite entries by seq, then drop the commit log so that krepis takes
    data.mdb as it now is."""
    def apply(txn, db) -> None:  # type: ignore[no-untyped-def]
        entries = db(b"entries")
        for seq, value in change.items():
            key = struct.pack(">Q", seq)
            if value is None:
                assert txn.delete(key, db=entries)
            else:
                txn.put(key, value, db=entries)

    edit(store, apply)


def test_wrap_names_the_store_and_what_was_being_done() -> None:
    for exc in (lmdb.CorruptedError("bad page"), lmdb.InvalidError("no"), lmdb.PageNotFoundError("p"),
                lmdb.VersionMismatchError("v"), lmdb.BadChecksumError("c"), lmdb.PanicError("x")):
        wrapped = _wrap(exc, "/s", "reading the journal")
        assert type(wrapped) is CorruptStorageError
        assert str(wrapped) == f"storage at /s is corrupted or not an LMDB store (reading the journal): {exc}"
        assert wrapped.path == "/s"
    full = _wrap(lmdb.MapFullError("full"), "/s", "writing")
    assert type(full) is StorageError and full.path == "/s"
    assert str(full) == f"storage at /s is full (LMDB map size {adapter._MAP_SIZE} bytes) while writing"
    for other in (lmdb.Error("disk"), OSError(5, "Input/output error")):
        wrapped = _wrap(other, "/s", "clearing")
        assert type(wrapped) is StorageError and wrapped.path == "/s"
        assert str(wrapped) == f"storage at /s failed while clearing: {other}"
    already = CorruptStorageError("storage at /s: entry 3 is missing", "/s")
    assert _wrap(already, "/other", "writing") is already  # an error of ours passes unchanged


def test_an_os_error_at_open_names_the_store() -> None:
    rofs = _os_error(OSError(errno.EROFS, "Read-only file system"), "/s")
    assert (str(rofs), rofs.path) == ("storage at /s is on a read-only file system", "/s")
    denied = _os_error(OSError(errno.EACCES, "Permission denied"), "/s")
    assert (str(denied), denied.path) == ("cannot open storage at /s: Permission denied", "/s")


def test_leaf_hashes_name_the_missing_entry(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", 5)
    _raw(store, {0: None, 3: None})
    storage = LmdbStorage(store)
    try:
        for start, count, missing in ((0, 2, 0), (1, 3, 3), (4, 2, 5)):
            with pytest.raises(CorruptStorageError) as caught:
                storage.leaf_hashes(0, start, count)
            assert str(caught.value) == f"storage at {store}: entry {missing} is missing", (start, count)
            assert caught.value.path == str(store)
        assert len(storage.leaf_hashes(0, 1, 2)) == 2  # entries 1 and 2 are there
    finally:
        storage.close()


@pytest.mark.parametrize(("value", "reason"), [
    (None, None),
    (b"\x00" + bytes(12) + b"\x00r", "bad header (flags 0x0)"),
    (b"\x06" + bytes(12) + b"\x01\x02", "truncated request id"),
    (b"\x02\x00", "unpack_from requires a buffer of at least 13 bytes"),
], ids=["missing", "no-status", "short-uuid", "short"])
def test_removing_archived_entries_names_the_damage_and_removes_nothing(
        tmp_path: Path, value: bytes | None, reason: str | None) -> None:
    store = make_store(tmp_path / "s", 5)
    _raw(store, {2: value})
    storage = LmdbStorage(store)
    try:
        before = storage.entry_count()
        with pytest.raises(CorruptStorageError) as caught:
            storage.drop_prefix(0, 4)
        expected = (f"storage at {store}: entries 0…3 are not all there (3 found)" if reason is None else
                    f"storage at {store}: entry 2 is not a valid TransactionLog ({reason}")
        assert str(caught.value).startswith(expected) and caught.value.path == str(store)
        assert storage.entry_count() == before and storage.live_first_seq() == 0
    finally:
        storage.close()


def test_a_full_store_refuses_the_change_naming_it_and_keeps_what_it_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "_MAP_SIZE", 1 << 20)  # a 1 MiB map fills quickly
    store = tmp_path / "s"
    journal = SovereignJournal(store)
    try:
        written = 0
        with pytest.raises(StorageError) as caught:
            for i in range(10_000):
                journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, error="e" * 500),
                               increment="op")
                written += 1
        full = f"storage at {store} is full (LMDB map size {1 << 20} bytes)"
        assert str(caught.value) == f"{full} while writing"
        assert caught.value.path == str(store)
        assert written > 10
        assert journal.journal_count() == journal.recover_op_count("op") == written  # nothing partial
        assert journal.verify().entries == written
        storage = journal._storage
        head = storage.tree_head()
        with pytest.raises(JournalError) as caught:
            storage.add_checkpoint(head.epoch, head.size, "example.com/log", "n" * (2 << 20))
        assert str(caught.value) == f"{full} while storing a checkpoint"
        assert storage.checkpoints() == []
    finally:
        journal.close()


def _damage_pages_holding(store: Path, *markers: bytes) -> None:
    """Overwrite the header of every page (but the two meta pages) holding one of ``markers``
    with a page type LMDB does not know."""
    data = (store / "data.mdb").read_bytes()
    damaged = 0
    fd = os.open(store / "data.mdb", os.O_WRONLY)
    try:
        for page in range(2, len(data) // 4096):
            if any(marker in data[page * 4096:(page + 1) * 4096] for marker in markers):
                os.pwrite(fd, struct.pack("<H", 0x7FFF), page * 4096 + 10)  # mp_flags
                damaged += 1
    finally:
        os.close(fd)
    assert damaged >= len(markers)


_READS: dict[str, list[tuple[str, Callable[[LmdbStorage], object]]]] = {
    # the entries and the counters (their request ids and counter name are on their pages)
    "entries": [("reading the journal", lambda s: s.get_entry(0)),
                ("reading the journal", lambda s: s.leaf_hashes(0, 0, 40)),
                ("reading the journal", lambda s: s.scan(Query(order="append"), after=None, limit=5)),
                ("verifying", lambda s: s.verify()),
                ("reading a counter", lambda s: s.get_count(b"counter-marker")),
                ("reading counters", lambda s: s.get_counts()),
                ("clearing", lambda s: s.clear())],
    # the store's own records: sequence, tree head, archived prefix ("format" is among its keys)
    "meta": [("reading the sequence", lambda s: s.next_seq()),
             ("reading the tree", lambda s: s.tree_head()),
             ("reading the tree", lambda s: s.live_first_seq())],
    "checkpoints": [("reading checkpoints", lambda s: s.checkpoints())],
}
_MARKERS = {"entries": (b"entry-marker-", b"counter-marker"), "meta": (b"format",),
            "checkpoints": (b"marker.example/log",)}


@pytest.mark.parametrize("part", sorted(_READS))
def test_a_damaged_page_is_reported_naming_the_store_and_the_read(tmp_path: Path, part: str) -> None:
    """B-tree pages overwritten on disk while the store is open (LMDB reads through a shared
    mapping of the file): every read through them fails naming the store and what was being
    read."""
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for i in range(40):
            journal.record(TransactionLog(i, "op", f"entry-marker-{i:04d}", LogStatus.Completed),
                           increment="counter-marker")
        head = journal._storage.tree_head()
        journal._storage.add_checkpoint(head.epoch, head.size, "marker.example/log", "note")
    storage = LmdbStorage(store)  # damaged while open (opening reads some of these pages)
    try:
        _damage_pages_holding(store, *_MARKERS[part])
        for doing, read in _READS[part]:
            with pytest.raises(StorageError) as caught:
                read(storage)
            # LMDB reports the damage as MDB_CORRUPTED, or as MDB_BAD_TXN once its transaction
            # was spoiled by it: "is corrupted … (doing)" or "failed while doing"
            text = str(caught.value)
            assert text.startswith(f"storage at {store} "), text
            assert f"({doing}): " in text or f" failed while {doing}: " in text, text
            assert caught.value.path == str(store)
    finally:
        storage.close()


def test_checkpoints_taken_while_another_thread_writes_are_consistent(tmp_path: Path) -> None:
    """``checkpoint()`` captures the newest commit under the writer lock: a commit landing
    meanwhile must not give it a snapshot whose meta pages name another transaction."""
    store = tmp_path / "s"
    journal = SovereignJournal(store)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            try:
                journal.record(TransactionLog(i, "op", f"w{i}", LogStatus.Completed), increment="op")
            except BaseException as exc:
                errors.append(exc)
                return
            i += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for _ in range(300):
            journal._storage.checkpoint()
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    count = journal.journal_count()
    journal.close()
    with SovereignJournal(store) as reopened:
        assert reopened.journal_count() == reopened.recover_op_count("op") == count


def _meta(storage: LmdbStorage) -> dict[bytes, bytes]:
    with storage._env.begin() as txn:
        return dict(txn.cursor(db=storage._meta))


def test_a_new_store_holds_the_documented_meta_records_and_numbers_ops_from_zero(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "s")
    try:
        meta = _meta(storage)
        log_id, position, link = struct.unpack("<16sQI", meta.pop(b"log"))
        assert meta == {b"format": b"4", b"seq": bytes(8), b"tree": bytes(16), b"next_op": bytes(8)}
        assert log_id != bytes(16) and position == 0  # the commit log that continues data.mdb
        assert (store_log := (tmp_path / "s" / "commit.log").read_bytes())[16:32] == log_id
        assert link == zlib.crc32(log_id, zlib.crc32(b"KRPSLINK")) and store_log[:8] == b"KRPSCLOG"
    finally:
        storage.close()
    with SovereignJournal(tmp_path / "s") as journal:
        for name in ("b", "a", "b", "c"):
            journal.record(TransactionLog(1, name, "r", LogStatus.Completed))
    storage = LmdbStorage(tmp_path / "s")
    try:
        with storage._env.begin() as txn:
            rows = dict(txn.cursor(db=storage._ops))
        assert rows == {b"nb": struct.pack("<I", 0), b"na": struct.pack("<I", 1), b"nc": struct.pack("<I", 2),
                        b"i" + struct.pack(">I", 0): b"b", b"i" + struct.pack(">I", 1): b"a",
                        b"i" + struct.pack(">I", 2): b"c"}
        assert _meta(storage)[b"next_op"] == struct.pack("<Q", 3)
    finally:
        storage.close()


@pytest.mark.parametrize(("next_op", "expected"), [
    (None, "malformed next_op record"),
    (b"\x01" * 7, "malformed next_op record"),
    (struct.pack("<Q", 1), "the next_op record names op id 1, which is taken"),
])
def test_a_damaged_next_op_record_is_named_when_a_new_op_needs_an_id(
        tmp_path: Path, next_op: bytes | None, expected: str) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        for name in ("a", "b"):
            journal.record(TransactionLog(1, name, "r", LogStatus.Completed), increment=name)
    def apply(txn, db) -> None:  # type: ignore[no-untyped-def]
        if next_op is None:
            assert txn.delete(b"next_op", db=db(b"meta"))
        else:
            txn.put(b"next_op", next_op, db=db(b"meta"))

    edit(store, apply)
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(2, "a", "r", LogStatus.Completed), increment="a")  # known ops work
        with pytest.raises(CorruptStorageError) as caught:
            journal.record(TransactionLog(3, "c", "r", LogStatus.Completed), increment="c")
        assert str(caught.value) == f"storage at {store}: {expected}"
        assert caught.value.path == str(store)
        assert journal.journal_count() == 3 and journal.op_counts() == {"a": 2, "b": 1}  # nothing written


def test_clearing_and_archiving_keep_the_documented_meta_records(tmp_path: Path) -> None:
    """docs/storage-format.md lists the records of ``meta``; clearing and archiving (commits made
    outside the commit log) write no other record, keep the log's id and only move its position
    on (past the barrier record they leave in the log)."""
    store = make_store(tmp_path / "s", 6)
    documented = {b"format", b"seq", b"tree", b"next_op", b"log", b"live", b"archive"}
    storage = LmdbStorage(store)
    try:
        log_id, position, _link = struct.unpack("<16sQI", _meta(storage)[b"log"])
        assert storage.drop_prefix(0, 3) == 3
        after_archive = _meta(storage)
        assert set(after_archive) <= documented and b"live" in after_archive
        archived_id, archived_at, _ = struct.unpack("<16sQI", after_archive[b"log"])
        assert archived_id == log_id and archived_at > position
        storage.clear()
        after_clear = _meta(storage)
        assert set(after_clear) <= documented
        cleared_id, cleared_at, _ = struct.unpack("<16sQI", after_clear[b"log"])
        assert cleared_id == log_id and cleared_at > archived_at
        storage.set_setting("archive", "/srv/cold")  # the archive directory: one record, outside the log
        after_setting = _meta(storage)
        assert set(after_setting) <= documented and after_setting[b"archive"] == b"/srv/cold"
        set_id, set_at, _ = struct.unpack("<16sQI", after_setting[b"log"])
        assert set_id == log_id and set_at > cleared_at
    finally:
        storage.close()


@pytest.mark.parametrize(("kind", "name"), [(b"t", "time"), (b"s", "status"), (b"o", "op"),
                                            (b"r", "request id")])
def test_verify_names_an_index_holding_a_row_too_many(tmp_path: Path, kind: bytes, name: str) -> None:
    store = make_store(tmp_path / "s", 3)
    def apply(txn, db) -> None:  # type: ignore[no-untyped-def]
        index = db(b"index", dupsort=True)
        cur = txn.cursor(db=index)
        assert cur.set_range(kind)
        assert txn.put(cur.key(), struct.pack(">QQ", 1, 999), db=index, dupdata=True)

    edit(store, apply)
    storage = LmdbStorage(store)
    try:
        with pytest.raises(CorruptStorageError) as caught:
            storage.verify()
        assert str(caught.value) == f"storage at {store}: the {name} index holds 4 rows for 3 entries"
        assert caught.value.path == str(store)
    finally:
        storage.close()


def test_a_malformed_op_table_entry_is_named_when_the_op_is_next_used(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s", 2)
    edit(store, lambda txn, db: txn.put(b"nop", b"\x00\x00\x00", db=db(b"ops")))
    with SovereignJournal(store) as journal:
        with pytest.raises(CorruptStorageError) as caught:
            journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
        assert str(caught.value) == f"storage at {store}: malformed op table entry for 'op'"
        assert caught.value.path == str(store)
        assert journal.journal_count() == 2  # nothing written


@pytest.mark.parametrize(("seq", "tree", "expected"), [
    (3, struct.pack("<QQ", 0, 0) + b"\x01" * 32 * 3,
     "the Merkle tree record (3 subtrees) does not match the sequence (3 entries since seq 0)"),
    (3, struct.pack("<QQ", 5, 0), "the Merkle tree record (0 subtrees) does not match the sequence "
                                  "(-2 entries since seq 5)"),
    (None, struct.pack("<QQ", 0, 0) + b"\x01" * 31, "malformed sequence or tree record"),
])
def test_a_tree_record_that_does_not_fit_the_sequence_is_named(
        tmp_path: Path, seq: int | None, tree: bytes, expected: str) -> None:
    store = make_store(tmp_path / "s", 3)
    def apply(txn, db) -> None:  # type: ignore[no-untyped-def]
        txn.put(b"tree", tree, db=db(b"meta"))
        if seq is not None:
            txn.put(b"seq", struct.pack("<Q", seq), db=db(b"meta"))

    edit(store, apply)
    storage = LmdbStorage(store)
    try:
        with pytest.raises(CorruptStorageError) as caught:
            storage.tree_head()
        assert str(caught.value) == f"storage at {store}: {expected}"
        assert caught.value.path == str(store)
    finally:
        storage.close()

