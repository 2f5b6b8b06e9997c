"""``krepis migrate``: convert an LMDB store of storage format 1 (krepis 0.1) or 2 to format 3,
and a PostgreSQL journal of format 1 to format 2.

A migration never leaves a half-converted store: after a crash at any point (SIGKILL included)
the store is either the untouched old store or the complete new one.

* **LMDB, format 1**: the new store is built in ``<store>/.migrate/`` and made durable, then its
  ``data.mdb`` replaces the old one with one atomic ``rename`` (and the directory is fsynced).
  The old ``data.mdb`` is never written. The store must not be open anywhere else meanwhile:
  the migration holds the directory lock and LMDB's exclusive lock on ``lock.mdb``, and refuses
  to start when another process has the store open.
* **LMDB, format 2**: the databases stay; one durable commit sets the version, and the first
  open creates the commit log (``commit.log``) from the store as it is. Same locks.
* **PostgreSQL**: one transaction creates the format-2 tables, copies every row, builds the
  Merkle tree, drops the format-1 tables and sets the format; it commits entirely or not at all.

Entries keep every field and their relative append order (format 1's sequence), and get new
sequence numbers 0, 1, 2, … in that order; counters are copied exactly.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from .._errors import CorruptStorageError, JournalError, StorageError
from .._model import decode_log, encode_log
from . import WriteRequest

__all__ = ["MigrationResult", "migrate"]

_U64 = struct.Struct("<Q")
_SEQ = struct.Struct(">Q")
_CHUNK = 4096
Progress = Callable[[int, int], None]  # (entries done, entries in all)


@dataclass(frozen=True)
class MigrationResult:
    """What a migration did. ``from_format == to_format`` means there was nothing to do."""

    location: str
    from_format: int
    to_format: int
    entries: int
    counters: int


def migrate(location: str | os.PathLike[str], *, progress: Progress | None = None) -> MigrationResult:
    """Convert the store at ``location`` to the current storage format (see the module docs)."""
    from ._pgurl import is_postgres_url

    if is_postgres_url(location):
        return _migrate_postgres(str(location), progress)
    return _migrate_lmdb(os.path.abspath(os.path.expanduser(os.fspath(location))), progress)


# -- LMDB ----------------------------------------------------------------------------------------

def _migrate_lmdb(path: str, progress: Progress | None) -> MigrationResult:
    import lmdb

    from ._files import MIGRATE_DIR
    from .lmdb import FORMAT_VERSION

    data = os.path.join(path, "data.mdb")
    if not os.path.isdir(path) or os.path.islink(path):
        raise StorageError(f"there is no krepis store at {path}", path)
    if os.path.islink(data) or not os.path.isfile(data):
        raise StorageError(f"there is no krepis store at {path} (no data.mdb)", path)
    try:
        dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise StorageError(f"cannot open storage directory {path}: {exc.strerror}", path) from exc
    lock_fd = -1
    try:
        # Openers take this lock while they open the store: none can start meanwhile.
        from ._files import exclusive_lmdb_lock
        from .lmdb import open_in_this_process

        if open_in_this_process(path):
            raise StorageError(f"storage at {path} is open in this process; close it first", path)
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        lock_fd = exclusive_lmdb_lock(path)
        fmt = _lmdb_format(path)
        if fmt == FORMAT_VERSION:
            return MigrationResult(path, fmt, fmt, 0, 0)
        if fmt == 2:
            entries, counters = _format2_to_3(path, dir_fd)
            lock_fd = -1  # closing the environment dropped this process's locks on lock.mdb
            return MigrationResult(path, 2, FORMAT_VERSION, entries, counters)
        if fmt != 1:
            raise CorruptStorageError(f"storage at {path} has format version {fmt}; krepis "
                                      f"migrates formats 1 and 2 to {FORMAT_VERSION}", path)
        work = os.path.join(path, MIGRATE_DIR)
        shutil.rmtree(work, ignore_errors=True)  # what a crashed migration left behind
        try:
            entries, counters = _build_lmdb(path, work, progress)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        os.replace(os.path.join(work, "data.mdb"), data)  # the one atomic step
        os.fsync(dir_fd)
        shutil.rmtree(work, ignore_errors=True)
        # LMDB's lock table still describes the old file; an exclusive open rebuilds it. We hold
        # the exclusive lock ourselves, so this process's open is the exclusive one.
        env = lmdb.open(path, max_dbs=16, map_size=1 << 20, subdir=True)
        env.close()
        lock_fd = -1  # closing the environment dropped this process's locks on lock.mdb
        return MigrationResult(path, 1, FORMAT_VERSION, entries, counters)
    finally:
        if lock_fd >= 0:
            os.close(lock_fd)
        os.close(dir_fd)


def _format2_to_3(path: str, dir_fd: int) -> tuple[int, int]:
    """Format 3 keeps format 2's databases and adds the commit log (``commit.log``), which the
    first open creates from the store as it is: set the version in one durable commit. A
    ``commit.log`` already there cannot describe this file; it goes first."""
    import lmdb

    from ._files import LOG
    from .lmdb import FORMAT_VERSION

    try:
        os.unlink(LOG, dir_fd=dir_fd)
        os.fsync(dir_fd)
    except FileNotFoundError:
        pass
    env = lmdb.open(path, max_dbs=16, map_size=1 << 40, subdir=True)  # fully synced commits
    try:
        with env.begin(write=True) as txn:
            entries = int(txn.stat(env.open_db(b"entries", txn=txn, create=False))["entries"])
            counters = int(txn.stat(env.open_db(b"stats", txn=txn, create=False))["entries"])
            env.open_db(b"checkpoints", txn=txn)  # (added late in format 2)
            txn.put(b"format", b"%d" % FORMAT_VERSION, db=env.open_db(b"meta", txn=txn, create=False))
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be migrated: {exc}", path) from exc
    finally:
        env.close()
    return entries, counters


def _lmdb_format(path: str) -> int:
    import lmdb

    env = lmdb.open(path, readonly=True, lock=False, max_dbs=16, subdir=True)
    try:
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
            except lmdb.NotFoundError:
                raise CorruptStorageError(f"storage at {path} is not a krepis store", path) from None
            fmt = txn.get(b"format", db=meta)
    finally:
        env.close()
    try:
        return int(bytes(fmt or b""))
    except ValueError:
        raise CorruptStorageError(f"storage at {path} has format version {fmt!r}", path) from None


def _build_lmdb(path: str, work: str, progress: Progress | None) -> tuple[int, int]:
    """Write the new store into ``work`` from the format-1 store at ``path``; durable."""
    import lmdb

    from .lmdb import LmdbStorage

    old = lmdb.open(path, readonly=True, lock=False, max_dbs=16, subdir=True)
    new = LmdbStorage(work, durable=False)
    try:
        with old.begin() as src:
            journal = old.open_db(b"journal", txn=src, create=False)
            stats = old.open_db(b"stats", txn=src, create=False)
            total = int(src.stat(journal)["entries"])
            # Format 1 keys sort by time; append order is their sequence field. Sort by it
            # through a scratch database (LMDB sorts on disk, so memory stays flat).
            env = new._env
            order = env.open_db(b"migrate-order")
            with env.begin(write=True) as txn:
                cur = txn.cursor(db=order)
                for key in src.cursor(db=journal).iternext(keys=True, values=False):
                    try:
                        seq = int(key[20:40])
                    except ValueError:
                        raise CorruptStorageError(
                            f"storage at {path}: malformed format-1 key {key[:60]!r}", path) from None
                    if not cur.put(_SEQ.pack(seq), key, overwrite=False):
                        raise CorruptStorageError(
                            f"storage at {path}: format-1 sequence {seq} is used twice", path)
            done = 0
            with env.begin() as order_txn:
                batch: list[tuple[Any, bytes]] = []
                for key in order_txn.cursor(db=order).iternext(keys=False, values=True):
                    raw = src.get(key, db=journal)
                    try:
                        log = decode_log(bytes(raw or b""))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise CorruptStorageError(
                            f"storage at {path}: format-1 entry {bytes(key)[:60]!r} is not a valid "
                            f"TransactionLog ({exc})", path) from None
                    batch.append((log, encode_log(log)))
                    if len(batch) >= _CHUNK:
                        new.write_batch([WriteRequest(batch, ())])
                        done += len(batch)
                        batch = []
                        if progress:
                            progress(done, total)
                if batch:
                    new.write_batch([WriteRequest(batch, ())])
                    done += len(batch)
            with env.begin(write=True) as txn:
                txn.drop(order, delete=True)
                n_counters = 0
                new_stats = new._stats
                for key, value in src.cursor(db=stats):
                    if len(value) != 8:
                        raise CorruptStorageError(
                            f"storage at {path}: counter {bytes(key)!r} holds {len(value)} bytes, not 8",
                            path)
                    txn.put(bytes(key), bytes(value), db=new_stats)
                    n_counters += 1
            if done != total or new.entry_count() != total:
                raise StorageError(f"migration of {path} copied {done} of {total} entries", path)
            if progress:
                progress(done, total)
        new.checkpoint()  # data.mdb alone holds it all: it moves without its commit log
        return total, n_counters
    except lmdb.Error as exc:
        raise CorruptStorageError(f"storage at {path} cannot be read for migration: {exc}", path) from exc
    finally:
        new.close()
        old.close()


# -- PostgreSQL ----------------------------------------------------------------------------------

def _migrate_postgres(url: str, progress: Progress | None) -> MigrationResult:
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the postgres extra is missing
        raise StorageError("a postgresql:// storage needs psycopg (the 'postgres' extra)") from exc
    from ..tlog._merkle import append_leaf
    from .postgres import _LOCK_ID, FORMAT_VERSION, SCHEMA, _first_line, _params, redact

    where = redact(url)
    try:
        conn = psycopg.connect(**_params(url))
    except psycopg.Error as exc:
        raise StorageError(f"cannot connect to PostgreSQL at {where}: {_first_line(exc)}", where) from None
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            row = conn.execute("SELECT to_regclass('krepis_meta') IS NOT NULL").fetchone()
            if not (row and row[0]):
                raise StorageError(f"there is no krepis journal at {where}", where)
            fmt_row = conn.execute("SELECT value FROM krepis_meta WHERE key = 'format'").fetchone()
            fmt = fmt_row[0] if fmt_row else None
            if fmt == str(FORMAT_VERSION):
                return MigrationResult(where, FORMAT_VERSION, FORMAT_VERSION, 0, 0)
            if fmt != "1":
                raise CorruptStorageError(f"PostgreSQL at {where} holds krepis tables of format {fmt}; "
                                          f"krepis migrates format 1 to {FORMAT_VERSION}", where)
            # No writer of either format can commit meanwhile.
            conn.execute("LOCK TABLE krepis_journal, krepis_stats, krepis_state IN EXCLUSIVE MODE")
            conn.execute(SCHEMA)
            total = conn.execute("SELECT count(*) FROM krepis_journal").fetchone()[0]  # type: ignore[index]
            # New sequence numbers: format 1's order, numbered from 0 without gaps.
            conn.execute("CREATE TEMP TABLE krepis_renumber ON COMMIT DROP AS SELECT seq AS old, "
                         "row_number() OVER (ORDER BY seq) - 1 AS new FROM krepis_journal")
            # PostgreSQL's JSON operators cannot produce a text holding NUL (\u0000): entries whose
            # JSON has one are decoded here instead.
            conn.execute("""
                INSERT INTO krepis_entries (seq, timestamp, op_name, request_id, status, duration_us,
                                            error, leaf)
                SELECT m.new, timestamp, e->>'op_name', request_id,
                       CASE e->>'status' WHEN 'Started' THEN 1 WHEN 'Completed' THEN 2
                                         WHEN 'Failed' THEN 3 END,
                       (e->>'duration_us')::bigint, convert_to(e->>'error', 'UTF8'),
                       sha256('\\x00'::bytea || convert_to(entry, 'UTF8'))
                FROM (SELECT seq, timestamp, request_id, entry, entry::json AS e FROM krepis_journal
                      WHERE strpos(entry, '\\u0000') = 0) j
                JOIN krepis_renumber m ON m.old = j.seq
            """)
            special = conn.execute(
                "SELECT m.new, entry FROM krepis_journal j JOIN krepis_renumber m ON m.old = j.seq "
                "WHERE strpos(entry, '\\u0000') > 0").fetchall()
            if special:
                from .._model import decode_log, encode_log
                from ._codec import STATUS_CODE

                rows = []
                for new_seq, text in special:
                    log = decode_log(text.encode("utf-8"))
                    rows.append((new_seq, log.timestamp, log.op_name, log.request_id,
                                 STATUS_CODE[log.status], log.duration_us,
                                 None if log.error is None else log.error.encode("utf-8"),
                                 sha256(b"\x00" + encode_log(log)).digest()))
                with conn.cursor() as plain:
                    plain.executemany("INSERT INTO krepis_entries (seq, timestamp, op_name, request_id, "
                                      "status, duration_us, error, leaf) VALUES "
                                      "(%s, %s, %s, %s, %s, %s, %s, %s)", rows)
            frontier: list[bytes] = []
            size = 0
            nodes: list[tuple[int, int, bytes]] = []

            def on_node(level: int, index: int, node: bytes) -> None:
                nodes.append((level, index, node))

            with conn.cursor(name="krepis_migrate_leaves") as cur:
                cur.itersize = 10000
                cur.execute("SELECT leaf FROM krepis_entries ORDER BY seq")
                for (leaf,) in cur:
                    size = append_leaf(frontier, size, bytes(leaf), on_node)
                    if progress and size % 10000 == 0:
                        progress(size, int(total))
            if size != total:
                raise StorageError(f"migration of {where} copied {size} of {total} entries", where)
            with conn.cursor() as plain:
                plain.executemany("INSERT INTO krepis_tree (level, idx, hash) VALUES (%s, %s, %s)", nodes)
            conn.execute("UPDATE krepis_log SET next_seq = %s, first_seq = 0, epoch = 0, frontier = %s, "
                         "entries = %s WHERE id = 1", (size, b"".join(frontier), size))
            n_counters = conn.execute("SELECT count(*) FROM krepis_stats").fetchone()[0]  # type: ignore[index]
            conn.execute("DROP TABLE krepis_journal, krepis_state")
            conn.execute("UPDATE krepis_meta SET value = %s WHERE key = 'format'", (str(FORMAT_VERSION),))
        if progress:
            progress(int(total), int(total))
        return MigrationResult(where, 1, FORMAT_VERSION, int(total), int(n_counters))
    except JournalError:
        raise
    except psycopg.Error as exc:
        raise StorageError(f"migration of PostgreSQL at {where} failed (nothing was changed): "
                           f"{_first_line(exc)}", where) from None
    finally:
        conn.close()
