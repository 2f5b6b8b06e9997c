"""Findings of a review of storage format 2, the verifiable log, migration and backup: each test
failed on the code as reviewed and states what is expected and why."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import lmdb
import pytest

from krepis import JournalError, LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.tlog._note import (
    Checkpoint,
    NoteError,
    format_checkpoint,
    generate_signer,
    open_note,
    parse_checkpoint,
    sign_note,
)
from krepis.tlog._tiles import parse_tile_path
from rawlmdb import forget_commit_log

from format1 import PG_SCHEMA_1


def _log(ts: int, rid: str = "r", op: str = "op", **kw: object) -> TransactionLog:
    return TransactionLog(ts, op, rid, LogStatus.Completed, **kw)  # type: ignore[arg-type]


# --- storage/lmdb: append-order scan ----------------------------------------------------

def test_append_order_newest_first_after_a_seq_beyond_u64(store: Path) -> None:
    # lmdb.py:596 packs after.seq with ">Q" unguarded (the oldest-first branch checks
    # `start <= _MAX_U64`); _journal._cursor accepts any int >= 0 in append order. Expected: every
    # entry (all seqs are < after), as PostgreSQL's `seq < %s` answers; got: struct.error.
    with SovereignJournal(store) as j:
        for i in range(3):
            j.log_transaction(_log(i, f"r{i}"))
        assert [g.seq for g in j.query(order="append", after=2**64)] == [2, 1, 0]


# --- storage/postgres -------------------------------------------------------------------

def test_postgres_op_names_keep_names_cleared_since(pg_url: str, store: Path) -> None:
    # Storage.op_names and SovereignJournal.op_names promise every op name "including ones since
    # cleared"; LMDB keeps its op table, but postgres.py:116 (_OP_NAMES) reads the names from
    # krepis_entries, which clear() truncates. The engines must answer alike.
    answers = []
    for where in (str(store), pg_url):
        with SovereignJournal(where) as j:
            j.log_transaction(_log(1, op="gone_after_clear"))
            j.clear_all()
            answers.append(j.op_names())
    assert answers[0] == ["gone_after_clear", "journal_cleared"]
    assert answers[1] == answers[0]


@pytest.mark.parametrize("extra", [{}, {"request_id": "r"}, {"op_name": "op"}])
def test_postgres_time_scan_with_an_empty_status_list(
    pg_url: str, store: Path, extra: dict[str, str]
) -> None:
    # status=[] ("any of none") reaches Query(statuses=()): LMDB answers [] (as it does for
    # op_name=[]), but postgres.py:440-457 builds zero UNION ALL branches and sends
    # " ORDER BY … LIMIT %s" alone: StorageError "syntax error at or near ORDER".
    answers = []
    for where in (str(store), pg_url):
        with SovereignJournal(where) as j:
            j.log_transaction(_log(1))
            answers.append(j.query(status=[], **extra))  # type: ignore[arg-type]
    assert answers == [[], []]


# --- storage migrate --------------------------------------------------------------------

def test_postgres_migration_of_an_error_text_holding_nul(pg_url: str) -> None:
    # TransactionLog allows NUL in `error` (check_text(..., nul=True)); format 1 kept it as
    # "\u0000" inside the JSON text and format 2 keeps error as bytea, and the LMDB migration
    # carries it over. migrate.py:413 extracts it with `e->>'error'`, which PostgreSQL refuses
    # ("unsupported Unicode escape sequence"), so such a journal can never be migrated.
    import psycopg

    from krepis.storage import migrate

    logs = [_log(1, "a"), TransactionLog(2, "op", "b", LogStatus.Failed, error="bad\0byte")]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(PG_SCHEMA_1)
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO krepis_journal (timestamp, request_id, entry) VALUES (%s, %s, %s)",
                            [(g.timestamp, g.request_id, g.to_json()) for g in logs])
        conn.execute("INSERT INTO krepis_state VALUES ('entries', 2)")
    assert migrate(pg_url).entries == 2
    with SovereignJournal(pg_url, create=False) as j:
        assert j.query(order="append", newest_first=False) == logs
        j.verify()


def test_a_failed_lmdb_migration_removes_its_work_directory(tmp_path: Path) -> None:
    # migrate.py:247 builds the new store in <store>/.migrate and removes it only after a
    # success (migrate.py:250); when the format-1 data is refused (a clean error, not a crash)
    # the partial format-2 store stays there — up to a full copy of the journal on disk.
    import shutil

    from krepis import CorruptStorageError
    from krepis.storage import migrate

    store = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "format1-store", store)
    env = lmdb.open(str(store), max_dbs=8)
    with env.begin(write=True) as txn:
        db = env.open_db(b"journal", txn=txn)
        last = list(txn.cursor(db=db).iternext(values=False))[-1]
        txn.put(last, b"{broken", db=db)
    env.close()
    with pytest.raises(CorruptStorageError):
        migrate(store)
    assert not (store / ".migrate").exists()


# --- storage/lmdb/_backup.py ---------------------------------------------------------------------

def test_restore_over_a_store_open_in_this_process_changes_nothing(tmp_path: Path) -> None:
    # restore() promises to replace a store "only when no process has it open". Its check
    # (an fcntl lock on lock.mdb, backup.py:135) cannot see this process's own LMDB locks, so
    # it swaps data.mdb in (backup.py:144) and only then fails in lmdb.open with a raw
    # lmdb.Error ("already open in this process"): the caller is told the restore failed, yet
    # the store was replaced and the entry written after the backup is gone.
    from krepis.storage import backup, restore

    live, copy = tmp_path / "live", tmp_path / "copy"
    j = SovereignJournal(live)
    try:
        j.log_transaction(_log(1, "before-backup"))
        backup(live, copy)
        j.log_transaction(_log(2, "after-backup"))
        with pytest.raises(Exception) as info:  # (its type is checked below)
            restore(copy, live, force=True)
    finally:
        try:
            j.close()
        except JournalError:
            pass
    with SovereignJournal(live, create=False) as again:  # nothing replaced…
        assert [g.request_id for g in again.query()] == ["after-backup", "before-backup"]
    assert isinstance(info.value, StorageError)  # …and a StorageError saying the store is open


def test_a_failed_backup_into_an_existing_empty_directory_leaves_it_empty(tmp_path: Path) -> None:
    # backup() accepts an existing empty directory, but on failure removes only a directory it
    # created (backup.py:103): the copied data.mdb/lock.mdb stay behind, and the next backup to
    # the same place is refused ("exists and is not an empty directory").
    from krepis.storage import backup

    src, dest = tmp_path / "src", tmp_path / "dest"
    with SovereignJournal(src) as j:
        j.log_transaction(_log(1))
    env = lmdb.open(str(src), max_dbs=16)  # drop the entry's time-index row: verify() fails
    with env.begin(write=True) as txn:
        index = env.open_db(b"index", txn=txn, dupsort=True, dupfixed=True, create=False)
        cur = txn.cursor(db=index)
        assert cur.set_key(b"t")
        cur.delete()
    env.close()
    forget_commit_log(src)
    dest.mkdir()
    with pytest.raises(JournalError):
        backup(src, dest)
    assert os.listdir(dest) == []


def test_hot_backup_from_a_process_writing_under_an_interval_policy(tmp_path: Path) -> None:
    # backup() is a hot backup "while writers keep writing", yet it opens the source with the
    # default 'sync' policy (backup.py:90); in a process that has the journal open under
    # flush="interval:…" that open is refused (lmdb.py:758), and backup() has no way to choose
    # the policy, so an application cannot back up its own journal in-process. Reading needs no
    # particular flush policy: expected, the backup succeeds.
    from krepis.storage import backup

    src = tmp_path / "src"
    with SovereignJournal(src, flush="interval:50ms") as j:
        j.log_transaction(_log(1))
        assert backup(src, tmp_path / "copy").entries == 1


# --- tlog/_tiles.py and export ----------------------------------------------------------------

def test_an_entry_longer_than_a_bundle_can_hold_is_refused_on_write(store: Path, tmp_path: Path) -> None:
    # An error text of 12000 control characters is valid (<= 16 KiB of UTF-8), but its canonical
    # JSON escapes each as \u00XX: ~72 KB, beyond the uint16 length of a C2SP entry bundle, so
    # the journal could never export it. Such an entry is refused when written (a
    # ValidationError naming the size and the limit), on every engine alike, and nothing is
    # written; an export of the journal then works.
    from krepis import ValidationError

    out = tmp_path / "tiles"
    with SovereignJournal(store) as j:
        with pytest.raises(ValidationError, match="the limit is 65535"):
            j.log_transaction(TransactionLog(1, "op", "r", LogStatus.Failed, error="\x01" * 12000))
        assert j.journal_count() == 0
        j.log_transaction(TransactionLog(1, "op", "r", LogStatus.Failed, error="\x01" * 10000))
        j.export_tiles(out, generate_signer("example.com/log"))
    assert (out / "tile" / "entries" / "000.p" / "1").stat().st_size > 60000


@pytest.mark.parametrize("path", ["tile/00/000", "tile/\u0660/000", "tile/01/x001/000"])
def test_parse_tile_path_refuses_non_canonical_paths(path: str) -> None:
    # tiles.py:50 checks the level with str.isdigit(), which accepts "00" and non-ASCII digits
    # (U+0660 ARABIC-INDIC DIGIT ZERO); `krepis tlog serve` then serves one tile under several
    # URLs. Only the canonical path (tile_path) is a tile path.
    with pytest.raises(ValueError):
        parse_tile_path(path)


# --- tlog/_note.py ----------------------------------------------------------------------------

_ROOT = base64.b64encode(b"\0" * 32).decode()


@pytest.mark.parametrize("size", ["\u0661", "\u00b2"])
def test_checkpoint_size_must_be_ascii_decimal(size: str) -> None:
    # note.py:433 uses str.isdigit(): "\u0661" (ARABIC-INDIC ONE) parses as size 1, and "\u00b2"
    # (superscript two) passes isdigit() and then crashes int() with a bare ValueError instead of
    # a NoteError. A checkpoint's size is ASCII decimal (C2SP tlog-checkpoint).
    with pytest.raises(NoteError):
        parse_checkpoint(f"example.com/log\n{size}\n{_ROOT}\n")


def test_open_note_refuses_a_signature_line_ending_in_cr() -> None:
    # note.py:387 splits the signature block with str.splitlines(), which also splits on "\r"
    # (and \v, \f, \x1c…, \u2028): a signature line "— name sig\r" is accepted although a signed
    # note's lines end in "\n" only.
    key = generate_signer("example.com/log")
    note = sign_note(format_checkpoint(Checkpoint("example.com/log", 1, b"\0" * 32)), key)
    assert note.endswith("\n")
    with pytest.raises(NoteError):
        open_note(note[:-1] + "\r\n", [key.verifier()])


def test_export_after_a_restore_does_not_keep_tiles_of_the_replaced_log(tmp_path: Path) -> None:
    # export_tiles keeps every full tile already in the directory (tiles.py:116/123) and only
    # checks the marker (path, first_seq, epoch; journal/_tree.py). A store restored from an older
    # backup has the same three, but a different log past the backup point: the next export
    # silently mixes the old log's full tiles with the new checkpoint, and the published tree
    # does not verify. Expected: the export refuses (or rewrites the tiles) so that what it
    # writes matches the checkpoint it writes.
    from krepis.storage import backup, restore
    from krepis.tlog._tiles import check_tiles

    live, copy, out = tmp_path / "live", tmp_path / "copy", tmp_path / "tiles"
    key = generate_signer("example.com/log")
    with SovereignJournal(live) as j:
        for i in range(10):
            j.log_transaction(_log(i, f"kept-{i}"))
    backup(live, copy)
    with SovereignJournal(live) as j:
        for i in range(10, 256):
            j.log_transaction(_log(i, f"lost-{i}"))
        j.export_tiles(out, key)
    restore(copy, live, force=True)
    with SovereignJournal(live) as j:
        for i in range(10, 256):
            j.log_transaction(_log(i, f"new-{i}"))
        key2 = generate_signer("example.com/log2")  # (the first origin named the replaced log)
        try:
            j.export_tiles(out, key2)
        except JournalError:
            return  # refusing is fine
    # raises: the kept full bundle and level-0 tile hold the replaced log, tile/1 the new one
    check_tiles(str(out), [key2.verifier()])


def test_a_tree_reader_never_mixes_two_logs(store: Path) -> None:
    # TreeReader (log.py:317-343) keeps the head it was made with but reads nodes from the live
    # store, which after a clear holds the NEW log's nodes under the same (level, index) keys.
    # A reader from tile_sources() — or the one inside tree_root/inclusion_proof/export_tiles
    # when a clear lands mid-call — then answers with another log's hashes, silently. Expected:
    # the old log's answer or a JournalError; never the new log's hash as the old log's root.
    # (The entries() reader of the same pair reports the clear as CorruptStorageError.)
    with SovereignJournal(store) as j:
        j._write([_entry(_log(i, f"old-{i}")) for i in range(512)], ())
        old_root = j.tree_root(256)
        reader, _entries = j.tile_sources()
        j.clear_all()
        j._write([_entry(_log(i, f"new-{i}")) for i in range(300)], ())
        try:
            got = reader.root(256)
        except JournalError:
            return
        assert got == old_root


def _entry(log: TransactionLog) -> tuple[TransactionLog, bytes]:
    from krepis._model import encode_log

    return (log, encode_log(log))
