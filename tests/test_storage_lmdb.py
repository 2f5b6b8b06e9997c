from __future__ import annotations

from pathlib import Path

import pytest

from krepis._storage import Storage
from krepis._storage.lmdb import LmdbStorage, encode_key

from storage_conformance import StorageConformance


class TestLmdbConformance(StorageConformance):
    @pytest.fixture
    def make_storage(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        def factory() -> Storage:
            return LmdbStorage(tmp_path / "store")

        return factory


def test_key_encoding_sorts_numerically() -> None:
    assert encode_key(999, 1, b"r") < encode_key(1000, 0, b"r")
    assert encode_key(5, 1, b"zzz") < encode_key(5, 2, b"a")
    assert encode_key(1234567890, 42, b"req-001") == b"0000000001234567890:00000000000000000042:req-001"


def test_two_handles_in_one_process_share_one_environment(tmp_path: Path) -> None:
    a = LmdbStorage(tmp_path / "s")
    b = LmdbStorage(tmp_path / "s")
    try:
        from krepis._storage import WriteRequest

        a.write_batch([WriteRequest([], [b"x"])])
        assert b.get_count(b"x") == 1
        a.close()
        assert b.get_count(b"x") == 1  # closing one handle leaves the other working
    finally:
        a.close()
        b.close()


def test_stored_keys_values_modes_and_sequence_follow_the_contract(tmp_path: Path) -> None:
    """docs/storage-format.md, checked against the bytes LMDB actually holds."""
    import os
    import struct

    import lmdb

    from krepis import LogStatus, SovereignJournal, TransactionLog

    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        first = TransactionLog(1234567890, "test_op", "req-001", LogStatus.Completed)
        journal.record(first, increment="test_op")
        journal.clear_all()
        journal.record(TransactionLog(5, "op", "r", LogStatus.Started), increment="op")
    assert os.stat(store).st_mode & 0o777 == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert os.stat(store / name).st_mode & 0o777 == 0o600
    env = lmdb.open(str(store), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            rows = list(txn.cursor(db=env.open_db(b"journal", txn=txn, create=False)))
            stats = list(txn.cursor(db=env.open_db(b"stats", txn=txn, create=False)))
            meta = dict(txn.cursor(db=env.open_db(b"meta", txn=txn, create=False)))
    finally:
        env.close()
    # the sequence kept counting across clear_all(): this entry is the second ever written
    assert rows == [(encode_key(5, 2, b"r"),
                     b'{"timestamp":5,"op_name":"op","request_id":"r","status":"Started"}')]
    assert rows[0][0] == b"0000000000000000005:00000000000000000002:r"
    assert stats == [(b"op_count:op", struct.pack("<Q", 1))]
    assert meta[b"format"] == b"1" and meta[b"seq"] == struct.pack("<Q", 2)
