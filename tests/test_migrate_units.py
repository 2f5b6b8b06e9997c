"""``krepis.storage.lmdb._migrate`` in this process (the CLI tests run it in child processes, out
of the mutation tool's sight): every refusal of a format-1, 2 or unknown store with its exact
text and path, nothing changed; the pointer naming no log a format-2 migration leaves; the
progress reported; the store kept locked against every LMDB opener while it is rebuilt; each
failure of the rebuild named by the file it concerns."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import (
    CorruptStorageError,
    LogStatus,
    NeedsMigrationError,
    SovereignJournal,
    StorageError,
    TransactionLog,
)
from krepis.storage import migrate
from test_migrate_rows import GOOD, _write_format1
from test_offline_units import exclusively_locked

from format1 import write_lmdb_store

FIXTURES = Path(__file__).parent / "fixtures"
NO_LOG_POINTER = bytes(28)  # meta["log"] naming no log: log id, position and link all zero


def _digest(store: Path) -> str:
    return hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest()


def _copy(name: str, tmp_path: Path) -> Path:
    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)
    os.chmod(store, 0o700)
    return store


def _refused(store: Path, error: type[Exception], text: str, *, regex: bool = False) -> None:
    """``migrate(store)`` fails with exactly ``text`` (a pattern when ``regex``), naming the store,
    and leaves its data.mdb, and the absence of .migrate/ and commit.log, as they were."""
    digest = _digest(store)
    had_log = (store / "commit.log").exists()
    with pytest.raises(error) as info:
        migrate(store)
    if regex:
        assert re.fullmatch(text, str(info.value)), str(info.value)
    else:
        assert str(info.value) == text
    assert getattr(info.value, "path", None) == str(store)
    assert _digest(store) == digest
    assert not (store / ".migrate").exists()
    assert (store / "commit.log").exists() == had_log


def _meta(store: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            return {bytes(k): bytes(v) for k, v in txn.cursor(db=meta)}
    finally:
        env.close()


# --- what is there ----------------------------------------------------------------------------

def test_a_directory_without_data_mdb_is_no_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    with pytest.raises(StorageError) as info:
        migrate(store)
    assert str(info.value) == f"there is no krepis store at {store} (no data.mdb)"
    assert info.value.path == str(store)
    assert os.listdir(store) == []


def test_a_current_store_has_nothing_to_migrate(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    result = migrate(store)
    assert (result.location, result.from_format, result.to_format, result.entries, result.counters) == (
        str(store), 4, 4, 0, 0)


def test_a_store_open_in_this_process_is_refused_naming_the_command(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store):
        with pytest.raises(StorageError) as info:
            migrate(store)
    assert str(info.value) == f"storage at {store} is open in this process; close it before krepis migrate"
    assert info.value.path == str(store)


@pytest.mark.parametrize(("fmt", "says"), [
    (b"7", "has format version 7; krepis migrates formats 1, 2 and 3 to 4"),
    (b"x1", "has format version b'x1'"),
    (None, "has format version None"),
])
def test_an_unknown_format_is_refused(tmp_path: Path, fmt: bytes | None, says: str) -> None:
    store = tmp_path / "store"
    _write_format1(store, [g.to_json().encode() for g in GOOD], [])
    env = lmdb.open(str(store), max_dbs=8)
    with env.begin(write=True) as txn:
        meta = env.open_db(b"meta", txn=txn)
        if fmt is None:
            txn.delete(b"format", db=meta)
        else:
            txn.put(b"format", fmt, db=meta)
    env.close()
    (store / "lock.mdb").unlink()
    _refused(store, CorruptStorageError, f"storage at {store} {says}")


def test_an_lmdb_store_without_a_meta_database_is_not_a_krepis_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    env = lmdb.open(str(store), max_dbs=4)
    with env.begin(write=True) as txn:
        env.open_db(b"journal", txn=txn)
    env.close()
    _refused(store, CorruptStorageError, f"storage at {store} is not a krepis store")


def test_an_empty_data_mdb_is_refused_and_left_empty(tmp_path: Path) -> None:
    """Opened read-only: LMDB would otherwise write a new environment's meta pages into it."""
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "data.mdb").touch(mode=0o600)
    _refused(store, CorruptStorageError, rf"storage at {re.escape(str(store))} cannot be read: .+",
             regex=True)
    assert (store / "data.mdb").stat().st_size == 0


def test_damaged_pages_are_named_when_the_format_is_read(tmp_path: Path) -> None:
    store = _copy("format2-store", tmp_path)
    data = bytearray((store / "data.mdb").read_bytes())
    data[2 * 4096:] = bytes(len(data) - 2 * 4096)  # every page but the two meta pages zeroed
    (store / "data.mdb").write_bytes(bytes(data))
    _refused(store, CorruptStorageError,
             f"storage at {store} cannot be read: mdb_dbi_open: MDB_CORRUPTED: Located page was wrong type")


# --- format 2 ---------------------------------------------------------------------------------

def test_a_format2_migration_leaves_a_pointer_naming_no_log(tmp_path: Path) -> None:
    """Before anything opens the store: meta["log"] is the 28 zero bytes of a pointer that names
    no log (the first open makes the log), and no other key was added."""
    store = _copy("format2-store", tmp_path)
    before = _meta(store)
    assert b"log" not in before
    migrate(store)
    after = _meta(store)
    assert after[b"log"] == NO_LOG_POINTER
    assert after[b"format"] == b"4"
    assert set(after) == set(before) | {b"log"}


@pytest.mark.parametrize("db", [b"entries", b"stats"])
def test_a_format2_store_lacking_a_database_is_refused(tmp_path: Path, db: bytes) -> None:
    store = _copy("format2-store", tmp_path)
    env = lmdb.open(str(store), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(db, txn=txn, create=False), delete=True)
    env.close()
    (store / "lock.mdb").unlink()
    _refused(store, CorruptStorageError,
             f"storage at {store} cannot be migrated: mdb_dbi_open: MDB_NOTFOUND: No matching key/data "
             "pair found")
    with pytest.raises(NeedsMigrationError):
        SovereignJournal(store, create=False)


# --- format 1: keys, entries, counters ---------------------------------------------------------

def _format1(store: Path, keys: dict[int, bytes] | None = None,
             counters: list[tuple[bytes, bytes]] | None = None) -> None:
    _write_format1(store, [g.to_json().encode() for g in GOOD], counters or [], keys=keys)


def test_a_long_malformed_key_is_named_by_its_first_60_bytes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    key = b"k" * 100
    _format1(store, keys={2: key})
    _refused(store, CorruptStorageError, f"storage at {store}: malformed format-1 key {key[:60]!r} (not "
             "timestamp:sequence:request id); nothing was changed")


@pytest.mark.parametrize("key", [b"0000000000000000011x00000000000000000002:r1",
                                 b"0000000000000000011:00000000000000000002xr1"],
                         ids=["no colon after the timestamp", "no colon after the sequence"])
def test_a_key_missing_one_colon_is_malformed(tmp_path: Path, key: bytes) -> None:
    store = tmp_path / "store"
    _format1(store, keys={2: key})
    _refused(store, CorruptStorageError, f"storage at {store}: malformed format-1 key {key!r} (not "
             "timestamp:sequence:request id); nothing was changed")


def test_a_sequence_of_2_to_the_64_is_refused_naming_the_key(tmp_path: Path) -> None:
    store = tmp_path / "store"
    key = b"0000000000000000011:%020d:" % 2**64 + b"r" * 40
    _format1(store, keys={2: key})
    _refused(store, CorruptStorageError,
             f"storage at {store}: format-1 key {key[:60]!r} holds sequence number "
             f"{2**64}, past 2**64-1; nothing was changed")


def test_a_sequence_used_twice_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _format1(store, keys={2: b"%019d:%020d:r1" % (11, 1)})  # entry 2 keyed with sequence 1 as well
    _refused(store, CorruptStorageError,
             f"storage at {store}: format-1 sequence 1 is used twice; nothing was "
             "changed")


def test_a_key_disagreeing_with_its_entry_is_named_by_60_bytes_of_each(tmp_path: Path) -> None:
    store = tmp_path / "store"
    rid = "ŕ" * 70
    values = [g.to_json().encode() for g in GOOD]
    values[1] = TransactionLog(11, "op", rid, LogStatus.Completed).to_json().encode()
    key = b"%019d:%020d:%b" % (11, 2, ("q" * 70).encode())
    _write_format1(store, values, [], keys={2: key})
    _refused(store, CorruptStorageError,
             f"storage at {store}: format-1 entry 2 (its sequence number) is not a "
             f"valid TransactionLog: its key says timestamp 11 and request id {('q' * 60).encode()!r}, "
             f"its value 11 and {rid[:60]!r}; nothing was changed")


def test_an_invalid_entry_names_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    values = [g.to_json().encode() for g in GOOD]
    values[2] = b""
    _write_format1(store, values, [], keys={3: b"%019d:%020d:r2" % (12, 3)})
    _refused(store, CorruptStorageError,
             f"storage at {store}: format-1 entry 3 (its sequence number) is not a "
             "valid TransactionLog: it is not valid JSON (Expecting value: line 1 column 1 (char 0)); "
             "nothing was changed")


@pytest.mark.parametrize(("counter", "says"), [
    ((b"x" * 80, struct.pack("<Q", 1)), "format-1 counter key {key60} does not start with op_count:"),
    ((b"op_count:" + b"\xff" * 80, struct.pack("<Q", 1)),
     r"format-1 counter {key60}: its name b'.+ is not valid UTF-8 \(byte 0\)"),
    ((b"op_count:op2", b"\x01" * 4), "format-1 counter 'op2' holds 4 bytes, not 8"),
], ids=["long key without the prefix", "long name not UTF-8", "4-byte value"])
def test_a_malformed_counter_is_refused_with_its_exact_text(tmp_path: Path, counter: tuple[bytes, bytes],
                                                            says: str) -> None:
    """(``says`` is a pattern; ``{key60}`` stands for the key's first 60 bytes.)"""
    store = tmp_path / "store"
    _format1(store, counters=[counter])
    text = says.replace("{key60}", re.escape(repr(counter[0][:60])))
    _refused(store, CorruptStorageError, rf"storage at {re.escape(str(store))}: {text}; nothing was changed",
             regex=True)


@pytest.mark.parametrize("db", [b"journal", b"stats"])
def test_a_format1_store_lacking_a_database_is_refused(tmp_path: Path, db: bytes) -> None:
    store = tmp_path / "store"
    _format1(store)
    env = lmdb.open(str(store), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.drop(env.open_db(db, txn=txn, create=False), delete=True)
    env.close()
    (store / "lock.mdb").unlink()
    _refused(store, CorruptStorageError, f"storage at {store} says format 1 but lacks its journal or stats "
             "database")


def test_a_damaged_journal_page_is_named(tmp_path: Path) -> None:
    """A format-1 store whose meta database reads, but one of its journal's leaf pages says it is
    neither a branch nor a leaf (its flags, at offset 10 of the page header)."""
    store = tmp_path / "store"
    logs = [TransactionLog(100 + i, "op", f"r{i:04}", LogStatus.Completed) for i in range(400)]
    write_lmdb_store(store, logs, {"op": 400})
    os.chmod(store, 0o700)
    data = bytearray((store / "data.mdb").read_bytes())
    at = data.index(b"r0200") // 4096 * 4096
    data[at + 10:at + 12] = struct.pack("<H", 0x10)  # neither branch nor leaf
    (store / "data.mdb").write_bytes(bytes(data))
    _refused(store, CorruptStorageError, rf"storage at {re.escape(str(store))} cannot be read for migration: "
             r"mdb_cursor_get: MDB_CORRUPTED: Located page was wrong type", regex=True)


# --- format 1: the rebuild --------------------------------------------------------------------

def test_progress_is_reported_per_chunk_and_at_the_end(tmp_path: Path) -> None:
    store = tmp_path / "store"
    logs = [TransactionLog(100 + i, "op", f"r{i}", LogStatus.Completed) for i in range(4096)]
    write_lmdb_store(store, logs, {"op": 4096})
    seen: list[tuple[int, int]] = []
    result = migrate(store, progress=lambda done, total: seen.append((done, total)))
    assert (result.from_format, result.entries, result.counters) == (1, 4096, 1)
    assert seen == [(4096, 4096), (4096, 4096)]  # a full chunk of 4096, then the end


def test_the_store_stays_locked_against_lmdb_openers_while_it_is_rebuilt(tmp_path: Path) -> None:
    """While a format-1 store is rebuilt (its progress reported), no process can take even the
    shared lock every LMDB opener takes on lock.mdb: reading the old store never drops the
    exclusive lock this process holds there."""
    store = _copy("format1-store", tmp_path)
    lmdb.open(str(store), max_dbs=8, readonly=True).close()  # (a lock.mdb, as an earlier open leaves)
    assert (store / "lock.mdb").exists()
    seen: list[str] = []

    def probe(done: int, total: int) -> None:
        seen.append("locked" if exclusively_locked(store / "lock.mdb") else "free")

    assert migrate(store, progress=probe).entries == 305
    assert seen == ["locked"]


def test_the_went_wrong_check_compares_the_tree_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rebuilt store is checked against what was read: with the leaf hashes computed while
    reading made wrong (sha256 replaced), the roots differ though every count agrees."""
    import hashlib as real

    from krepis.storage.lmdb import _migrate

    store = tmp_path / "store"
    _format1(store)
    monkeypatch.setattr(_migrate, "sha256", lambda data: real.sha256(b"wrong" + data))
    _refused(store, StorageError, f"migration of {store} went wrong: 6 of 6 entries read, the new store "
             "holds 6 and a tree of 6; nothing was changed")


def _fail_for(monkeypatch: pytest.MonkeyPatch, function: str, target: str) -> None:
    """``os.<function>`` failing with EIO for a descriptor or name ending in ``target``."""
    real = getattr(os, function)

    def failing(first: Any, *args: Any, **kwargs: Any) -> Any:
        name = first if isinstance(first, str) else os.readlink(f"/proc/self/fd/{first}")
        if name.endswith(target):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(first, *args, **kwargs)

    monkeypatch.setattr(os, function, failing)


def test_the_scratch_file_that_cannot_be_created_is_named(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    _format1(store)
    _fail_for(monkeypatch, "open", "order.mdb")
    with pytest.raises(StorageError) as info:
        migrate(store)
    assert str(info.value).startswith(f"cannot create {store}/.migrate/order.mdb: ")
    assert info.value.path == f"{store}/.migrate/order.mdb"
    monkeypatch.undo()
    assert not (store / ".migrate").exists()
    assert migrate(store).entries == 6


def test_the_new_data_mdb_that_cannot_be_flushed_is_named(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    _format1(store)
    digest = _digest(store)
    _fail_for(monkeypatch, "fsync", "/.migrate/data.mdb")
    with pytest.raises(StorageError) as info:
        migrate(store)
    assert str(info.value).startswith(f"cannot make {store}/.migrate/data.mdb durable (fsync failed: ")
    assert info.value.path == f"{store}/.migrate/data.mdb"
    monkeypatch.undo()
    assert _digest(store) == digest and not (store / ".migrate").exists()
    assert migrate(store).entries == 6


def test_a_store_past_lmdbs_default_map_size_migrates(tmp_path: Path) -> None:
    """The scratch environment that sorts the format-1 keys by sequence holds every key (here
    36,000 of some 290 bytes: more than py-lmdb's default map of 10 MiB); its map is 1 TiB."""
    store = tmp_path / "store"
    logs = [TransactionLog(100 + i, "op", f"{i:06}" + "q" * 250, LogStatus.Completed) for i in range(36_000)]
    write_lmdb_store(store, logs, {"op": 36_000})
    result = migrate(store)
    assert (result.entries, result.counters) == (36_000, 1)
    with SovereignJournal(store) as journal:
        assert journal.entry(35_999).request_id == "035999" + "q" * 250
