"""Writing stores whose commit log holds records LMDB has not applied, and reading the log as
another program would (storage format 4, docs/storage-format.md)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb

from krepis.storage.lmdb._commitlog import CommitLog, Record

HOLD_OFF = """
import krepis.storage.lmdb._apply as _apply, krepis.storage.lmdb._store as _store
_apply.APPLY_SECONDS = 10**9
_apply.APPLY_ENTRIES = _store.APPLY_ENTRIES = 10**9
"""


def write_and_die(store: Path, n: int, *, flush: str = "sync", start: int = 0, code: str = "") -> None:
    """In a child: ``n`` writes (entry ``r{i}`` and the counter ``op``) that LMDB does not apply,
    then ``code``, then the process ends without closing anything (as a SIGKILL would leave it)."""
    script = HOLD_OFF + textwrap.dedent(f"""
        import os
        from krepis import SovereignJournal, TransactionLog, LogStatus
        j = SovereignJournal({str(store)!r}, flush={flush!r})
        for i in range({start}, {start + n}):
            j.record(TransactionLog(1_700_000_000_000 + i, "op", f"r{{i}}", LogStatus.Completed,
                                    duration_us=i), increment="op")
    """) + textwrap.dedent(code) + "\nos._exit(0)\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def pointer(store: Path) -> tuple[bytes, int, int]:
    """``meta["log"]``: (the log's id, the position LMDB applied it up to, the link there)."""
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            raw = txn.get(b"log", db=env.open_db(b"meta", txn=txn, create=False))
    finally:
        env.close()
    log_id, position, link = struct.unpack("<16sQI", raw)
    return bytes(log_id), position, link


def stored_entries(store: Path) -> int:
    """How many entries LMDB itself holds (without the log's records)."""
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(b"entries", txn=txn, create=False))["entries"])
    finally:
        env.close()


def unapplied(store: Path) -> list[Record]:
    """The log's records after LMDB's pointer, as recovery would walk them."""
    _log_id, position, link = pointer(store)
    fd = os.open(store / "commit.log", os.O_RDONLY)
    try:
        return list(CommitLog(str(store), fd).chain(position, link))
    finally:
        os.close(fd)


def ring_offset(store: Path, position: int) -> int:
    """Where in ``commit.log`` the record at ``position`` lies."""
    fd = os.open(store / "commit.log", os.O_RDONLY)
    try:
        log = CommitLog(str(store), fd)
        return log.start + position % log.ring
    finally:
        os.close(fd)


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def flip_last(data: bytes) -> bytes:
    """``data`` with its last byte changed (one bit flipped). Replacing the byte with a constant
    instead leaves it unchanged whenever it already held that constant — a test that fails one
    run in 256."""
    return data[:-1] + bytes((data[-1] ^ 1,))
