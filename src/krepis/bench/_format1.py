"""A storage-format-1 store (krepis 0.1), written by the rules of its contract
(``docs/storage-format.md``, "Version 1"), for the bench's ``migrate`` row."""
from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterable

import lmdb

from .._model import TransactionLog, encode_log


def write_format1_store(path: str, logs: Iterable[TransactionLog], counters: dict[str, int],
                        chunk: int = 50_000) -> int:
    """Write a new format-1 LMDB store at ``path`` (which must not exist) holding ``logs`` in
    this append order (sequence numbers from 1) and ``counters``; returns the entries written.

    Format 1: database ``journal`` keyed ``%019d(timestamp):%020d(seq):request_id`` holding the
    entry's JSON, ``stats`` keyed ``op_count:name`` holding ``LE8(count)``, ``meta`` holding
    ``format`` = ``1`` and ``seq`` = ``LE8(last seq)``. Written in transactions of ``chunk``
    entries, synced once at the end. If anything fails, the directory is removed again."""
    os.mkdir(path)
    try:
        seq = _write(path, logs, counters, chunk)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    os.unlink(os.path.join(path, "lock.mdb"))
    return seq


def _write(path: str, logs: Iterable[TransactionLog], counters: dict[str, int], chunk: int) -> int:
    env = lmdb.open(path, map_size=1 << 36, max_dbs=8, sync=False)
    seq = 0
    try:
        journal = env.open_db(b"journal")
        batch: list[tuple[bytes, bytes]] = []

        def put() -> None:
            with env.begin(write=True) as txn:
                for key, value in batch:
                    txn.put(key, value, db=journal)
            batch.clear()

        for log in logs:
            seq += 1
            batch.append((b"%019d:%020d:%b" % (log.timestamp, seq, log.request_id.encode()),
                          encode_log(log)))
            if len(batch) >= chunk:
                put()
        put()
        with env.begin(write=True) as txn:
            stats = env.open_db(b"stats", txn=txn)
            meta = env.open_db(b"meta", txn=txn)
            for name, value in counters.items():
                txn.put(b"op_count:" + name.encode(), struct.pack("<Q", value), db=stats)
            txn.put(b"format", b"1", db=meta)
            txn.put(b"seq", struct.pack("<Q", seq), db=meta)
        env.sync(True)
    finally:
        env.close()
    return seq
