"""``krepis.storage.lmdb._migrate3`` on format-3 stores edited byte by byte: ``data.mdb``'s
records changed in every page copy LMDB kept of them (so the checkpoint's snapshot, written back
onto the copy, sees the change), checkpoint slots rewritten with valid checksums, the old log a
link or missing, a descriptor numbered 0. Each refusal names the store and changes nothing."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import CorruptStorageError, SovereignJournal, StorageError
from krepis.storage import migrate
from test_migrate_format3 import _legacy_records
from test_migrate_units import _fail_for

FIXTURES = Path(__file__).parent / "fixtures"
NO_LOG_POINTER = bytes(28)


def _copy(name: str, tmp_path: Path) -> Path:
    store = tmp_path / name
    shutil.copytree(FIXTURES / name, store)
    os.chmod(store, 0o700)
    return store


def _files(store: Path) -> dict[str, bytes]:
    return {name: (store / name).read_bytes() for name in sorted(os.listdir(store)) if name != "lock.mdb"}


def _edit(store: Path, pattern: bytes, replace: Any) -> None:
    """Every match of the regular expression ``pattern`` in data.mdb replaced (``re.sub``)."""
    data = (store / "data.mdb").read_bytes()
    edited, count = re.subn(pattern, replace, data, flags=re.S)
    assert count > 0 and len(edited) == len(data)
    (store / "data.mdb").write_bytes(edited)


def _refused(store: Path, text: str) -> None:
    before = _files(store)
    with pytest.raises(CorruptStorageError) as info:
        migrate(store)
    assert str(info.value) == text
    assert info.value.path == str(store)
    assert _files(store) == before
    assert not (store / ".migrate").exists()


def _meta_log(store: Path) -> bytes | None:
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            value = txn.get(b"log", db=env.open_db(b"meta", txn=txn, create=False))
            return None if value is None else bytes(value)
    finally:
        env.close()


# LMDB leaf nodes: data size (u16 low, u16 high), flags (u16), key size (u16), key, data
_SEQ = re.escape(b"\x08\x00\x00\x00\x00\x00\x03\x00seq")
_TREE = b"(..)\x00\x00(\x00\x00\x04\x00)tree"  # (a meta record: flags 0, unlike the database's node)


# --- which path ---------------------------------------------------------------------------------

def test_a_clean_store_is_converted_in_place_with_a_pointer_naming_no_log(tmp_path: Path) -> None:
    """No copy: data.mdb keeps its inode; meta["log"] is the pointer naming no log (28 zero
    bytes) until the first open makes the new log."""
    store = _copy("format3-store", tmp_path)
    inode = (store / "data.mdb").stat().st_ino
    assert migrate(store).entries == 180
    assert (store / "data.mdb").stat().st_ino == inode
    assert _meta_log(store) == NO_LOG_POINTER
    assert not (store / "commit.log").exists()


def test_a_recovered_copy_holds_a_pointer_naming_no_log(tmp_path: Path) -> None:
    store = _copy("format3-crashed", tmp_path)
    inode = (store / "data.mdb").stat().st_ino
    assert migrate(store).entries == 60
    assert (store / "data.mdb").stat().st_ino != inode  # the copy was renamed over it
    assert _meta_log(store) == NO_LOG_POINTER


def test_a_store_without_its_old_log_is_converted_in_place(tmp_path: Path) -> None:
    store = _copy("format3-store", tmp_path)
    (store / "commit.log").unlink()
    result = migrate(store)
    assert (result.from_format, result.entries, result.counters) == (3, 180, 5)
    with SovereignJournal(store) as journal:
        assert journal.verify().entries == 180


def test_meta_pages_differing_from_the_snapshot_only_in_unused_bytes_go_through_the_copy(
        tmp_path: Path) -> None:
    """data.mdb at the checkpoint's own transaction, its meta pages differing from the snapshot
    in a byte LMDB never reads (the end of a meta page): not older than the checkpoint, so it is
    recovered on a copy, not refused."""
    store = _copy("format3-store", tmp_path)
    data = bytearray((store / "data.mdb").read_bytes())
    data[4095] ^= 0xFF
    (store / "data.mdb").write_bytes(bytes(data))
    inode = (store / "data.mdb").stat().st_ino
    assert migrate(store).entries == 180
    assert (store / "data.mdb").stat().st_ino != inode
    with SovereignJournal(store) as journal:
        assert journal.verify().entries == 180


# --- the old log ------------------------------------------------------------------------------

def test_an_old_log_that_is_a_link_is_refused(tmp_path: Path) -> None:
    store = _copy("format3-crashed", tmp_path)
    os.rename(store / "commit.log", tmp_path / "elsewhere.log")
    os.symlink(tmp_path / "elsewhere.log", store / "commit.log")
    before = _files(store)
    with pytest.raises(StorageError) as info:
        migrate(store)
    assert str(info.value) == f"cannot open {store}/commit.log: Too many levels of symbolic links"
    assert info.value.path == str(store)
    assert _files(store) == before and os.path.islink(store / "commit.log")


def test_an_old_log_opened_as_descriptor_0_is_read_and_closed(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Descriptor 0 freed just before the old log is opened, so the log gets it: it is still a
    log (the store whose writer died is recovered on a copy, which replaces data.mdb), and it is
    closed at the end."""
    store = _copy("format3-crashed", tmp_path)
    inode = (store / "data.mdb").stat().st_ino
    try:
        saved: int | None = os.dup(0)
    except OSError:  # (no standard input: something else must hold 0 until the log is opened)
        saved = None
        assert os.open(os.devnull, os.O_RDONLY) == 0
    real = os.open
    freed: list[int] = []

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if path == "commit.log" and not freed:
            os.close(0)
            freed.append(0)
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    try:
        result = migrate(store)
        try:
            os.fstat(0)
            still_open = True
        except OSError:
            still_open = False
    finally:
        monkeypatch.undo()
        if saved is not None:
            os.dup2(saved, 0)
            os.close(saved)
        else:
            try:
                os.close(0)
            except OSError:
                pass
    assert freed == [0]
    assert result.entries == 60
    assert (store / "data.mdb").stat().st_ino != inode  # recovered on a copy, not converted in place
    assert not still_open


# --- refusals -----------------------------------------------------------------------------------

def _rewrite_newest_slot(store: Path, txnid: int) -> int:
    """The newest checkpoint slot made to name ``txnid`` (its checksum recomputed); returns the
    transaction it named."""
    log = bytearray((store / "commit.log").read_bytes())
    page = struct.unpack_from("<I", log, 12)[0]
    slot_size = -(-(28 + 2 * page + 4) // 4096) * 4096
    slots = [(struct.unpack_from("<8sQQI", log, 4096 + i * slot_size), 4096 + i * slot_size) for i in (0, 1)]
    (magic, old, tail, length), at = max((s for s in slots if s[0][0] == b"KRPSSLOT"), key=lambda s: s[0][1])
    body = struct.pack("<8sQQI", magic, txnid, tail, length) + bytes(log[at + 28:at + 28 + length])
    log[at:at + len(body) + 4] = body + struct.pack("<I", zlib.crc32(body))
    (store / "commit.log").write_bytes(bytes(log))
    return int(old)


def test_a_data_mdb_older_than_the_checkpoint_is_refused_naming_the_store(tmp_path: Path) -> None:
    store = _copy("format3-crashed", tmp_path)
    _rewrite_newest_slot(store, 1_000_000)
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    at = env.info()["last_txnid"]
    env.close()
    _refused(store, f"storage at {store}: data.mdb is at transaction {at}, older than the checkpoint of its "
             "commit.log (transaction 1000000): they do not belong together. Nothing was changed")


def test_a_copy_that_cannot_be_flushed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _copy("format3-crashed", tmp_path)
    before = _files(store)
    _fail_for(monkeypatch, "fsync", "/.migrate/data.mdb")
    with pytest.raises(StorageError) as info:
        migrate(store)
    assert str(info.value).startswith(f"cannot make {store}/.migrate/data.mdb durable (fsync failed: ")
    assert info.value.path == f"{store}/.migrate/data.mdb"
    monkeypatch.undo()
    assert _files(store) == before and not (store / ".migrate").exists()


@pytest.mark.parametrize(("pattern", "replace"), [
    (_SEQ, _SEQ.replace(b"seq", b"seQ").replace(b"\\", b"")),
    (_SEQ, b"\x07" + _SEQ[1:].replace(b"\\", b"")),
    (_TREE, lambda m: m[1] + b"\x00\x00" + m[2] + b"treE"),
    (_TREE, lambda m: b"\x0f\x00\x00\x00" + m[2] + b"tree"),
], ids=["no seq", "7-byte seq", "no tree", "15-byte tree"])
def test_a_malformed_sequence_or_tree_record_stops_the_replay(tmp_path: Path, pattern: bytes,
                                                              replace: Any) -> None:
    store = _copy("format3-crashed", tmp_path)
    _edit(store, pattern, replace)
    _refused(store, f"storage at {store}: malformed sequence or tree record")


def test_a_tree_record_that_does_not_match_the_sequence_is_malformed(tmp_path: Path) -> None:
    """A tree record of its header alone (an empty tree's) where the sequence says 20 entries:
    the frontier must hold one hash per bit set in the tree's size. (It ended in an IndexError
    from inside the replay.) The message is the one an open of a format-4 store gives."""
    store = _copy("format3-crashed", tmp_path)
    _edit(store, _TREE, lambda m: b"\x10\x00\x00\x00" + m[2] + b"tree")
    _refused(store, f"storage at {store}: the Merkle tree record (0 subtrees) does not match the sequence "
             "(20 entries since seq 0)")


@pytest.mark.parametrize(("first", "size", "says"), [(21, 48, "(1 subtrees)"), (0, 79, "(2 subtrees)")],
                         ids=["first seq past the sequence", "a partial hash"])
def test_a_tree_record_that_cannot_be_a_tree_is_refused(tmp_path: Path, first: int, size: int,
                                                        says: str) -> None:
    """The tree's first sequence number past the sequence (20; its one hash is what -1 would have),
    or a frontier of two hashes, the second cut short (two, as 20 needs): refused as not matching."""
    store = _copy("format3-crashed", tmp_path)
    _edit(store, _TREE + b"(.{8})",
          lambda m: struct.pack("<H", size) + b"\x00\x00" + m[2] + b"tree" + struct.pack("<Q", first))
    with pytest.raises(CorruptStorageError, match=re.escape(says) + " does not match the sequence"):
        migrate(store)


def test_a_16_byte_tree_record_is_well_formed_for_an_empty_tree(tmp_path: Path) -> None:
    """The tree's first sequence number made the sequence itself (a tree of no leaves, as after a
    clear) and its frontier dropped: well formed, so the replay goes on; the copy, whose entries
    before the tree's start contradict it, fails its verify."""
    store = _copy("format3-crashed", tmp_path)
    _edit(store, _TREE + b"(.{8})", lambda m: b"\x10\x00\x00\x00" + m[2] + b"tree" + struct.pack("<Q", 20))
    before = _files(store)
    with pytest.raises(CorruptStorageError) as info:
        migrate(store)
    assert str(info.value).startswith(f"storage at {store}: the store recovered from its format-3 commit log "
                                      "does not verify")
    assert _files(store) == before


def _replace_payload(store: Path, index: int, payload: bytes) -> int:
    """Record ``index`` after the newest checkpoint given ``payload`` (the records after it
    moved to follow it, each with its position and checksum); returns its transaction."""
    log = bytearray((store / "commit.log").read_bytes())
    page = struct.unpack_from("<I", log, 12)[0]
    start = 4096 + 2 * (-(-(28 + 2 * page + 4) // 4096) * 4096)
    records = _legacy_records(bytes(log))
    payloads = [bytes(log[at + 24:at + 24 + length]) for at, length, _txnid in records]
    payloads[index] = payload
    first = records[index][0]
    end = records[-1][0] + 24 + records[-1][1] + 4
    out = b""
    for (_at, _length, txnid), body in zip(records[index:], payloads[index:], strict=True):
        head = struct.pack("<IIQQ", 0x4C43524B, len(body), txnid, first + len(out) - start)
        out += head + body + struct.pack("<I", zlib.crc32(body, zlib.crc32(head)))
    log[first:end] = out + bytes(max(0, end - first - len(out)))
    (store / "commit.log").write_bytes(bytes(log))
    return records[index][2]


def test_a_logged_commit_that_changes_nothing_is_refused_at_the_next(tmp_path: Path) -> None:
    """A record holding one request with no entries and no counters: LMDB commits nothing for it,
    so the next record's transaction is one past the store's; refused naming both."""
    store = _copy("format3-crashed", tmp_path)
    txnid = _replace_payload(store, 5, struct.pack("<III", 1, 0, 0))
    _refused(store, f"storage at {store}: commit.log holds transaction {txnid + 1} where the store is at "
             f"transaction {txnid - 1}")


# --- counters -----------------------------------------------------------------------------------

def test_a_counter_the_snapshot_lacks_starts_from_zero(tmp_path: Path) -> None:
    """The counter renamed in data.mdb: the 40 logged increments of "op" start from nothing."""
    store = _copy("format3-crashed", tmp_path)
    _edit(store, re.escape(b"op_count:op"), b"op_count:oo")
    migrate(store)
    with SovereignJournal(store) as journal:
        assert journal.op_counts() == {"oo": 20, "op": 40}


def test_a_counter_at_its_limit_ends_the_replay(tmp_path: Path) -> None:
    """The counter at 2**64-1 in every copy: the first logged commit would pass it, so it never
    committed (format 3 refused it), and the replay ends there — the checkpoint's 20 entries."""
    store = _copy("format3-crashed", tmp_path)
    _edit(store, re.escape(b"\x08\x00\x00\x00\x00\x00\x0b\x00op_count:op") + b"........",
          b"\x08\x00\x00\x00\x00\x00\x0b\x00op_count:op" + b"\xff" * 8)
    result = migrate(store)
    assert (result.entries, result.counters) == (20, 1)
    with SovereignJournal(store) as journal:
        assert journal.op_counts() == {"op": 2**64 - 1}
        assert journal.verify().entries == 20
