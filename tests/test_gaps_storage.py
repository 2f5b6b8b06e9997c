"""Storage checks that the rest of the suite let through when they were removed one at a time
(see each docstring for the bug it kills)."""

from __future__ import annotations

import struct
from hashlib import blake2b
from pathlib import Path

import pytest

import rawlmdb
from krepis import CorruptStorageError, LogStatus, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest, open_storage
from krepis.storage._codec import STATUS_CODE, rid_hash
from test_archive import fill_fast

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
