"""Storage checks that the rest of the suite let through when they were removed one at a time
(see each docstring for the bug it kills)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from hashlib import blake2b
from pathlib import Path

import pytest

import rawlmdb
from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest, open_storage
from krepis.storage._codec import STATUS_CODE, rid_hash
from test_archive import fill_fast

from stracekit import joined

#: two request ids whose BLAKE2b-64 hashes share their first 4 bytes (the archive's request-id
#: key; found by a birthday search). The 8-byte key of the live index cannot be made to collide
#: in a test: its comparison is tested through an index row edited at the raw level instead.
COLLIDING = ("req-3079", "req-65782")


def test_the_colliding_request_ids_collide() -> None:
    a, b = (blake2b(x.encode(), digest_size=8).digest() for x in COLLIDING)
    assert a[:4] == b[:4] and a != b
    assert rid_hash(COLLIDING[0].encode()) == a


def test_a_request_id_lookup_compares_the_id_after_the_index_hash_matches(tmp_path: Path) -> None:
    """Kills: the LMDB scan taking every entry its request-id index row names, without comparing
    the entry's request id with the one asked for (storage/lmdb/_reads.py, ``check_rid``). Two
    ids with equal 8-byte hashes cannot be made here, so an index row is added at the raw level:
    under the key of "ghost", pointing to the entry of "r5" — as a hash collision would."""
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        for i in range(10):
            journal.log_transaction(TransactionLog(1000 + i, "op", f"r{i}", LogStatus.Completed))
        (r5,) = journal.query(request_id="r5")
    assert r5.seq is not None
    key = b"r" + rid_hash(b"ghost") + bytes((STATUS_CODE[LogStatus.Completed],))
    rawlmdb.edit(store, lambda txn, db: txn.put(key, struct.pack(">QQ", r5.timestamp, r5.seq),
                                                db=db(b"index", dupsort=True, dupfixed=True)))
    with SovereignJournal(store) as journal:
        assert journal.query(request_id="ghost") == []
        assert journal.query(request_id="ghost", status=LogStatus.Completed) == []
        assert journal.query(request_id="r5") == [r5]


def test_an_archived_request_id_lookup_compares_the_id_after_the_key_matches(tmp_path: Path) -> None:
    """Kills: the archive's query taking every entry of the bundles its request-id index names
    without comparing each entry's id (archive/_reader.py ``iterate``). The two ids here share
    the archive's 4-byte key; each sits in its own bundle, among other entries."""
    logs = [TransactionLog(i, "op", f"other-{i}", LogStatus.Completed) for i in range(3 * 256)]
    logs[10] = TransactionLog(10, "op", COLLIDING[0], LogStatus.Completed)
    logs[300] = TransactionLog(300, "op", COLLIDING[1], LogStatus.Completed)
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "store", flush="interval:20ms") as journal:
        fill_fast(journal, logs)
        assert journal.archive(arch, keep_last=0).entries == 3 * 256
        for seq, rid in ((10, COLLIDING[0]), (300, COLLIDING[1])):
            found = journal.query(request_id=rid, archive=arch)
            assert [(x.seq, x.request_id) for x in found] == [(seq, rid)]
            found = journal.query(request_id=rid, archive=arch, order="append")
            assert [(x.seq, x.request_id) for x in found] == [(seq, rid)]


def _fill_and_drop(location: str) -> None:
    """65,546 entries, the first 65,536 of them dropped as if archived: their leaves are gone, the
    stored tree keeps the hashes of height 8 and 16 that stand in for them."""
    storage = open_storage(location)
    try:
        n = (1 << 16) + 10
        for start in range(0, n, 4096):
            logs = [TransactionLog(i, "op", f"r{i}", LogStatus.Completed)
                    for i in range(start, min(n, start + 4096))]
            storage.write_batch([WriteRequest([(x, encode_log(x)) for x in logs], [])])
        head = storage.tree_head()
        assert storage.drop_prefix(head.epoch, 1 << 16) == 1 << 16
        assert storage.verify().tree_nodes == 257
    finally:
        storage.close()


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("pg_url"))


def test_verify_counts_the_stored_hashes_an_archived_prefix_needs(location: str) -> None:
    """Kills: verify accepting fewer stored tree hashes than the entries make (storage/_port.py
    ``LogAudit.finish``: ``!=`` made ``>``). Behind an archived prefix of 65,536 entries the
    stored height-16 hash stands in for its 256 height-8 hashes, so none of them is read: the
    count is the only check that notices one of them gone."""
    _fill_and_drop(location)
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            assert conn.execute("DELETE FROM krepis_tree WHERE level = 8 AND idx = 3").rowcount == 1
    else:
        rawlmdb.edit(location, lambda txn, db: txn.delete(struct.pack(">BQ", 8, 3), db=db(b"tree")))
    storage = open_storage(location)
    try:
        with pytest.raises(CorruptStorageError, match="the tree holds 256 subtree hashes; the entries "
                                                      "make 257"):
            storage.verify()
    finally:
        storage.close()



def test_verify_refuses_a_stored_hash_the_entries_do_not_make(location: str) -> None:
    """Kills: verify accepting more stored tree hashes than the entries make (storage/_port.py
    ``LogAudit.finish``: ``!=`` made ``<``). A hash stored for bundle 5 of a log of 300 entries
    (one full bundle): no leaf reaches it, so only the count notices it."""
    with SovereignJournal(location, flush="interval:20ms") as journal:
        for i in range(300):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    if location.startswith("postgresql"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("INSERT INTO krepis_tree (level, idx, hash) VALUES (8, 5, %s)", (b"\x07" * 32,))
    else:
        node = struct.pack(">BQ", 8, 5)
        rawlmdb.edit(location, lambda txn, db: txn.put(node, b"\x07" * 32, db=db(b"tree")))
    storage = open_storage(location)
    try:
        with pytest.raises(CorruptStorageError, match="the tree holds 2 subtree hashes; the entries make 1"):
            storage.verify()
    finally:
        storage.close()


#: ``PID call(FD<path>, rest`` and, for an openat, its result ``= FD<path>`` (strace -f -y)
_CALL = re.compile(r"^(\d+)\s+(\w+)\((-?\d+|AT_FDCWD)<([^>]*)>(.*)$")
_RESULT = re.compile(r"= (\d+)<([^>]*)>$")


def _flushes(tmp_path: Path, code: str, file: str, rename_from: str) -> tuple[list[str], bool]:
    """Trace ``code``; return, for the writes to ``file`` after its last fsync/fdatasync before
    its rename out of the directory ``rename_from``, how each was made durable (``"dsync"``
    for a write through a descriptor opened with O_DSYNC, else ``"none"``), and whether the rename
    was seen."""
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-y", "-o", str(trace), "-e",
                    "trace=openat,fsync,fdatasync,write,pwrite64,writev,pwritev,pwritev2,rename,renameat,"
                    "renameat2", sys.executable, "-c", code], check=True, timeout=120, capture_output=True)
    dsync: dict[tuple[str, str], bool] = {}
    pending: list[str] = []
    for line in joined(trace.read_text(errors="replace")):
        m = _CALL.match(line)
        if not m:
            continue
        pid, call, fd, path, rest = m.groups()
        if call == "openat":
            opened = _RESULT.search(rest)
            if opened:
                dsync[(pid, opened.group(1))] = "O_DSYNC" in rest
        elif call in ("rename", "renameat", "renameat2") and path == rename_from and \
                rest.split(",")[1].strip() == f'"{os.path.basename(file)}"':
            return pending, True
        elif path == file and call in ("fsync", "fdatasync"):
            pending = []
        elif path == file and "write" in call:
            pending.append("dsync" if dsync.get((pid, fd)) else "none")
    return pending, False


@pytest.mark.skipif(not shutil.which("strace") and os.environ.get("CI") != "true",
                    reason="strace is not installed (.ci/run installs it)")
def test_a_format3_migration_flushes_its_copy_before_the_rename_that_swaps_it_in(tmp_path: Path) -> None:
    """Kills: the recovered copy of a format-3 store whose writer died (``.migrate/data.mdb``,
    storage/lmdb/_migrate3.py) renamed into place without being flushed after its last write —
    counted at the system call, as test_durable_copies does for format 1."""
    store = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "format3-crashed", store)
    os.chmod(store, 0o700)
    work = f"{store}/.migrate"
    unflushed, renamed = _flushes(tmp_path, f"from krepis.storage import migrate; migrate({str(store)!r})",
                                  f"{work}/data.mdb", work)
    assert renamed, "the recovered copy was not renamed into place"
    assert set(unflushed) <= {"dsync"}, "the recovered data.mdb was not flushed before the rename"
    with SovereignJournal(store, create=False) as journal:
        journal.verify()


# -- format 3's recovery, run by the migration on a copy (storage/lmdb/_migrate3.py) -------------

_FORMAT3_CRASHED = Path(__file__).parent / "fixtures" / "format3-crashed"
_LEGACY_REC = struct.Struct("<IIQQ")  # a version-1 log's record: magic, payload length, txnid, position
_LEGACY_MAGIC = 0x4C43524B


def _format3_crashed(tmp_path: Path) -> Path:
    """The fixture of a format-3 store whose writer died: checkpoint at transaction 21 in its
    commit log (version 1), transactions 22…61 logged after it, data.mdb's meta pages at 61."""
    store = tmp_path / "format3-crashed"
    shutil.copytree(_FORMAT3_CRASHED, store)
    os.chmod(store, 0o700)
    return store


def _store_files(store: Path) -> dict[str, bytes]:
    return {name: (store / name).read_bytes() for name in sorted(os.listdir(store)) if name != "lock.mdb"}


def _legacy_chain(log: bytes) -> list[tuple[int, int, int, int]]:
    """(offset in the file, payload length, txnid, position) of the version-1 log's records after
    its newest checkpoint slot, read as format 3 read them."""
    page = struct.unpack_from("<I", log, 12)[0]
    slot_size = -(-(28 + 2 * page + 4) // 4096) * 4096
    start = 4096 + 2 * slot_size
    slots = []
    for index in (0, 1):
        magic, txnid, tail, _length = struct.unpack_from("<8sQQI", log, 4096 + index * slot_size)
        if magic == b"KRPSSLOT":
            slots.append((txnid, tail))
    txnid, position = max(slots)
    out = []
    while True:
        at = start + position
        magic, length, rec_txnid, rec_position = _LEGACY_REC.unpack_from(log, at)
        if magic != _LEGACY_MAGIC or rec_txnid != txnid + 1 or rec_position != position:
            return out
        out.append((at, length, rec_txnid, rec_position))
        txnid, position = rec_txnid, position + _LEGACY_REC.size + length + 4


def _legacy_record(txnid: int, position: int, payload: bytes) -> bytes:
    head = _LEGACY_REC.pack(_LEGACY_MAGIC, len(payload), txnid, position)
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def test_a_format3_data_file_one_transaction_older_than_its_log_checkpoint_is_refused(tmp_path: Path) -> None:
    """Kills: format 3's recovery (now run by the migration) accepting a ``data.mdb`` whose meta
    pages are one transaction older than the commit log's checkpoint (storage/lmdb/_migrate3.py
    ``_via_copy``: ``at < slot.txnid`` made ``at < slot.txnid - 1``). Such a data.mdb and log do
    not belong together (the checkpoint's pages may never have reached it): the migration must
    refuse, naming both transactions, and change nothing."""
    from krepis.storage import migrate

    store = _format3_crashed(tmp_path)
    data = bytearray((store / "data.mdb").read_bytes())
    page = 4096
    txnid_at = 16 + 4 + 4 + 8 + 8 + 2 * 48 + 8  # page header, then MDB_meta up to mm_txnid
    assert {struct.unpack_from("<Q", data, p + txnid_at)[0] for p in (0, page)} == {60, 61}
    for p in (0, page):  # both meta pages say transaction 20: one before the checkpoint's 21
        struct.pack_into("<Q", data, p + txnid_at, 20)
    (store / "data.mdb").write_bytes(bytes(data))
    before = _store_files(store)
    with pytest.raises(CorruptStorageError, match=r"data\.mdb is at transaction 20, older than the "
                                                  r"checkpoint of its commit\.log \(transaction 21\)"):
        migrate(store)
    assert _store_files(store) == before
    assert not (store / ".migrate").exists()


def test_a_format3_replay_applies_each_logged_commit_as_its_own_transaction(tmp_path: Path) -> None:
    """Kills: format 3's recovery (run by the migration) not checking that each logged commit is
    applied as the very LMDB transaction it was (storage/lmdb/_migrate3.py ``_replay``:
    ``txn.id() != txnid`` made False). A record with a valid checksum but no write in it (the old
    code never logged one: its commit would change nothing, so LMDB gives the next commit the same
    transaction id) puts the replay one transaction behind the log: the log is not the one
    data.mdb's commits wrote, and the migration must refuse it, naming it, and change nothing."""
    from krepis.storage import migrate

    store = _format3_crashed(tmp_path)
    log = bytearray((store / "commit.log").read_bytes())
    chain = _legacy_chain(bytes(log))
    assert [c[2] for c in chain] == list(range(22, 62))
    at, length, txnid, position = chain[-1]
    payload = bytes(log[at + _LEGACY_REC.size:at + _LEGACY_REC.size + length])
    empty = _legacy_record(txnid, position, struct.pack("<I", 0))  # a commit of no request
    last = _legacy_record(txnid + 1, position + len(empty), payload)  # … then the last one again
    log[at:at + len(empty) + len(last)] = empty + last
    (store / "commit.log").write_bytes(bytes(log))
    assert [c[2] for c in _legacy_chain(bytes(log))] == list(range(22, 63))
    before = _store_files(store)
    with pytest.raises(CorruptStorageError, match=r"commit\.log holds transaction 62 where the store is at "
                                                  r"transaction 60"):
        migrate(store)
    assert _store_files(store) == before
    assert not (store / ".migrate").exists()


def test_a_format3_record_whose_crc_fails_ends_the_replay_as_a_torn_tail(tmp_path: Path) -> None:
    """Kills: format 3's log read without its records' CRC check (storage/lmdb/_legacy_log.py
    ``LegacyLog._read_record``). The last commit's record, one byte changed and its checksum not
    (a write torn by the crash), is the end of the log as format 3 read it: the migration
    recovers the 59 commits before it, never the changed entry."""
    from krepis.storage import migrate

    store = _format3_crashed(tmp_path)
    log = bytearray((store / "commit.log").read_bytes())
    at, length, _txnid, _position = _legacy_chain(bytes(log))[-1]
    body = slice(at + _LEGACY_REC.size, at + _LEGACY_REC.size + length)
    assert log[body].count(b'"duration_us":59}') == 1
    log[body] = bytes(log[body]).replace(b'"duration_us":59}', b'"duration_us":58}')
    (store / "commit.log").write_bytes(bytes(log))
    result = migrate(store)
    assert (result.from_format, result.entries) == (3, 59)
    with SovereignJournal(store) as journal:
        logs = journal.query(order="append", newest_first=False)
        assert [log.request_id for log in logs] == [f"c{i}" for i in range(59)]
        assert journal.recover_op_count("op") == 59
        journal.verify()


# -- restore over a store: a crash at any point leaves the old store whole or the restored one ----

def _two_stores(tmp_path: Path) -> tuple[Path, Path]:
    """A backup of a store of 5 entries, and another store (the destination) of 3 whose last
    writes are in its commit log only (its writer died: LMDB never applied them)."""
    from krepis.storage import backup

    source, dest = tmp_path / "source", tmp_path / "dest"
    with SovereignJournal(source) as journal:
        for i in range(5):
            journal.record(TransactionLog(i, "op", f"backed-up{i}", LogStatus.Completed), increment="op")
    backup(source, tmp_path / "bk")
    subprocess.run([sys.executable, "-c", "import os; from krepis import *\n"
                    f"j = SovereignJournal({str(dest)!r}, flush='interval:3600000ms')\n"
                    "for i in range(3): j.record(TransactionLog(i, 'op', f'old{i}', LogStatus.Completed), "
                    "increment='op')\n"
                    "j.flush(); os._exit(0)"], check=True, timeout=60)
    return tmp_path / "bk", dest


def test_a_restore_whose_removal_of_the_old_log_is_lost_still_opens_as_the_restored_store(
        tmp_path: Path) -> None:
    """Kills: the restored ``data.mdb`` renamed into place still naming the commit log its check
    made (storage/lmdb/_backup.py ``_stage`` without ``_name_no_log``). A crash right after the
    rename, before the removal of the destination's old ``commit.log`` is durable, leaves that
    log beside the restored file: a log of another id, which the first open must replace — not
    refuse as one that does not belong."""
    from krepis.storage import restore

    bk, dest = _two_stores(tmp_path)
    old = {name: (dest / name).read_bytes() for name in ("commit.log", "commit.state")}
    restore(bk, dest, force=True)
    for name, raw in old.items():  # the crash: the old log's removal never reached the disk
        (dest / name).write_bytes(raw)
    with SovereignJournal(dest, create=False) as journal:
        assert [x.request_id for x in journal.query(order="append", newest_first=False)] == \
            [f"backed-up{i}" for i in range(5)]
        assert journal.recover_op_count("op") == 5
        journal.verify()


@pytest.mark.skipif(not shutil.which("strace") and os.environ.get("CI") != "true",
                    reason="strace is not installed (.ci/run installs it)")
def test_a_restore_makes_its_rename_durable_before_it_removes_the_old_log(tmp_path: Path) -> None:
    """Kills: the directory not flushed between the rename that puts the restored ``data.mdb`` in
    place and the removal of the destination's commit log (storage/lmdb/_backup.py ``restore``,
    the ``fsync_fd`` after the ``rename``). Unflushed, a crash may keep the removal and lose the
    rename: the old ``data.mdb`` without the log that holds its last acknowledged writes."""
    bk, dest = _two_stores(tmp_path)
    trace = tmp_path / "trace"
    code = f"from krepis.storage import restore; restore({str(bk)!r}, {str(dest)!r}, force=True)"
    subprocess.run(["strace", "-f", "-y", "-o", str(trace), "-e",
                    "trace=fsync,rename,renameat,renameat2,unlinkat", sys.executable, "-c", code],
                   check=True, timeout=120, capture_output=True)
    events = []
    for line in joined(trace.read_text(errors="replace")):
        found = _CALL.match(line)
        if found:
            _pid, call, _fd, path, rest = found.groups()
            events.append((call, path, rest))
    renamed = next(i for i, (call, _path, rest) in enumerate(events)
                   if call.startswith("rename") and f'<{dest}>, "data.mdb"' in rest)
    removed = next(i for i, (call, path, rest) in enumerate(events)
                   if call == "unlinkat" and path == str(dest) and rest.startswith(', "commit.log"'))
    assert renamed < removed
    assert any(call == "fsync" and path == str(dest) for call, path, _rest in events[renamed + 1:removed]), \
        "the rename was not flushed before the old commit log was removed"
    with SovereignJournal(dest, create=False) as journal:
        assert journal.journal_count() == 5
