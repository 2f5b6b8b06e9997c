"""The hot backup and the verified restore of an LMDB store (storage/lmdb/_backup.py), pinned at
their edges: every refusal's exact text and ``.path``, what each leaves on disk, which names a
restore tolerates in its destination, what the result reports. Real stores on disk; a refusal
changes nothing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from krepis import (
    InvalidTypeError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.storage import backup, open_storage, restore
from krepis.tlog._note import generate_signer

_PG = ("a PostgreSQL journal is backed up with PostgreSQL's tools (pg_dump -t 'krepis_*', or "
       "pg_basebackup); see docs/operations.md")


def _store(path: Path, n: int = 5) -> None:
    with SovereignJournal(path) as journal:
        for i in range(n):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path``: a file's bytes, a directory as None."""
    out: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), path)] = Path(root, f).read_bytes()
    return out


@pytest.fixture
def bk(tmp_path: Path) -> Path:
    """A backup of a store of 5 entries."""
    _store(tmp_path / "src")
    backup(tmp_path / "src", tmp_path / "bk")
    return tmp_path / "bk"


def test_a_database_url_on_either_side_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    url = "postgresql://u@localhost/db"
    calls = [lambda: backup(url, tmp_path / "d1"), lambda: backup(tmp_path / "s", url),
             lambda: restore(url, tmp_path / "d2"), lambda: restore(tmp_path / "s", url)]
    for call in calls:
        with pytest.raises(StorageError) as info:
            call()
        assert str(info.value) == _PG
        assert info.value.path is None
    assert os.listdir(tmp_path) == []


def test_keys_that_are_not_verifiers_are_named_by_type_and_value(bk: Path, tmp_path: Path) -> None:
    bad = "k" * 100
    with pytest.raises(InvalidTypeError) as info:
        restore(bk, tmp_path / "out", verifiers=[generate_signer("example.com/a").verifier(),
                                                 bad])  # type: ignore[list-item]
    assert str(info.value) == ("verifiers must be krepis.tlog.Verifier keys (Verifier.parse(text)), got str "
                               + repr(bad)[:60])
    assert not (tmp_path / "out").exists()
    assert restore(bk, tmp_path / "none", verifiers=[]).signed_size == 0  # (no keys: nothing checked)


def test_keys_against_a_backup_without_a_checkpoint_are_refused_naming_the_backup(bk: Path,
                                                                                  tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        restore(bk, tmp_path / "out", verifiers=[generate_signer("example.com/a").verifier()])
    assert str(info.value) == f"{bk} holds no checkpoint of its current log to check the keys against"
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_an_older_epoch_is_not_the_stores(tmp_path: Path) -> None:
    """A clear starts a new log (epoch): the checkpoints kept of the old one say nothing about it."""
    key = generate_signer("example.com/a")
    with SovereignJournal(tmp_path / "src") as journal:
        for i in range(6):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
        journal.sign_checkpoint(key)
        journal.clear_all()
        for i in range(2):
            journal.record(TransactionLog(i, "op", f"n{i}", LogStatus.Completed), increment="op")
    result = backup(tmp_path / "src", tmp_path / "bk")
    assert (result.entries, result.tree_size, result.checkpoint) == (3, 3, None)  # (the clear is an entry)
    with pytest.raises(ValidationError, match="holds no checkpoint of its current log"):
        restore(tmp_path / "bk", tmp_path / "out", verifiers=[key.verifier()])


def test_the_result_names_the_newest_checkpoint_and_what_its_signature_covers(tmp_path: Path) -> None:
    key = generate_signer("example.com/a")
    notes = []
    with SovereignJournal(tmp_path / "src") as journal:
        for size in (2, 4, 6):
            while journal.journal_count() < size:
                n = journal.journal_count()
                journal.record(TransactionLog(n, "op", f"r{n}", LogStatus.Completed), increment="op")
            notes.append(journal.sign_checkpoint(key))
        journal.record(TransactionLog(9, "op", "r9", LogStatus.Completed), increment="op")
    made = backup(tmp_path / "src", tmp_path / "bk")
    assert made.path == str(tmp_path / "bk")
    assert (made.entries, made.tree_size, made.checkpoint) == (7, 7, notes[-1])
    assert (made.signed_size, made.signed_origin, made.unsigned) == (0, None, 7)
    done = restore(tmp_path / "bk", tmp_path / "out", verifiers=[key.verifier()])
    assert done.path == str(tmp_path / "out")
    assert (done.entries, done.tree_size, done.root, done.checkpoint) == (7, 7, made.root, notes[-1])
    assert (done.signed_size, done.signed_origin, done.unsigned) == (6, "example.com/a", 1)


def test_a_malformed_kept_checkpoint_is_refused_naming_the_backup_and_its_size(bk: Path,
                                                                               tmp_path: Path) -> None:
    storage = open_storage(bk)
    try:
        storage.add_checkpoint(0, 3, "example.com/a", "not a checkpoint\n\n— example.com/a AAAA\n")
    finally:
        storage.close()
    with pytest.raises(ValidationError) as info:
        restore(bk, tmp_path / "out")
    assert str(info.value).startswith(f"{bk}: the kept checkpoint of tree size 3 is malformed (")
    assert ".restore" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_kept_under_another_size_than_its_own_is_refused(tmp_path: Path) -> None:
    key = generate_signer("example.com/a")
    with SovereignJournal(tmp_path / "src") as journal:
        for i in range(4):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
        note = journal.sign_checkpoint(key)  # of size 4
        journal.record(TransactionLog(5, "op", "r5", LogStatus.Completed), increment="op")
    storage = open_storage(tmp_path / "src")
    try:
        storage.add_checkpoint(0, 5, "example.com/b", note)  # kept as of size 5
    finally:
        storage.close()
    with pytest.raises(ValidationError, match=r"the checkpoint of tree size 4 does not match the entries "
                                              r"\(one before seq 4 changed\)"):
        backup(tmp_path / "src", tmp_path / "bk")
    assert not (tmp_path / "bk").exists()


def test_a_backup_into_a_used_directory_is_refused_naming_it(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    dest = tmp_path / "full"
    dest.mkdir(mode=0o700)
    (dest / "x").write_text("mine")
    with pytest.raises(StorageError) as info:
        backup(tmp_path / "src", dest)
    assert str(info.value) == f"backup destination {dest} exists and is not an empty directory"
    assert info.value.path == str(dest)
    assert _tree(dest) == {"x": b"mine"}


def test_a_failed_backup_removes_what_it_made_and_only_that(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    with pytest.raises(StorageError, match="there is no krepis store at"):
        backup(tmp_path / "nothing", empty)
    assert empty.is_dir() and os.listdir(empty) == []  # it existed: kept
    with pytest.raises(StorageError, match="there is no krepis store at"):
        backup(tmp_path / "nothing", tmp_path / "new")
    assert not (tmp_path / "new").exists()  # this call made it: removed


@pytest.mark.parametrize("call", ["backup", "restore"])
def test_a_failed_call_removes_the_parent_directories_it_made(tmp_path: Path, call: str) -> None:
    """The destination is created with its parents: a failure removes those too (innermost
    first, each only while empty), not only the destination."""
    (tmp_path / "kept").mkdir()
    with pytest.raises(StorageError, match="there is no krepis store at"):
        (backup if call == "backup" else restore)(tmp_path / "nothing",
                                                  tmp_path / "kept" / "a" / "b" / "dest")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []


def test_a_backup_that_fails_after_its_copy_leaves_no_file_behind(tmp_path: Path) -> None:
    """The check after the copy refuses it: every file the backup wrote is removed."""
    key = generate_signer("example.com/a")
    with SovereignJournal(tmp_path / "src") as journal:
        journal.record(TransactionLog(1, "op", "r1", LogStatus.Completed), increment="op")
        note = journal.sign_checkpoint(key)
        journal.record(TransactionLog(2, "op", "r2", LogStatus.Completed), increment="op")
    storage = open_storage(tmp_path / "src")
    try:
        storage.add_checkpoint(0, 2, "example.com/b", note)
    finally:
        storage.close()
    dest = tmp_path / "bk"
    dest.mkdir(mode=0o700)
    with pytest.raises(ValidationError):
        backup(tmp_path / "src", dest)
    assert os.listdir(dest) == []


def test_a_backup_reports_its_progress_and_makes_private_files(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    seen: list[tuple[int, int]] = []
    backup(tmp_path / "src", tmp_path / "a" / "b" / "bk",
           progress=lambda rows, total: seen.append((rows, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    dest = tmp_path / "a" / "b" / "bk"
    assert os.stat(dest).st_mode & 0o777 == 0o700
    assert os.stat(dest / "data.mdb").st_mode & 0o777 == 0o600
    with SovereignJournal(dest, create=False) as journal:
        assert journal.journal_count() == journal.recover_op_count("op") == 5


@pytest.mark.parametrize("where", ["same", "inside"])
def test_a_restore_from_inside_its_destination_is_refused(bk: Path, tmp_path: Path, where: str) -> None:
    dest = bk if where == "same" else bk.parent
    src = bk
    before = _tree(tmp_path)
    with pytest.raises(StorageError) as info:
        restore(src, dest, force=True)
    assert str(info.value) == f"the backup {src} is the destination {dest} or inside it; restore it elsewhere"
    assert info.value.path == str(dest)
    assert _tree(tmp_path) == before


def test_a_destination_whose_name_only_begins_like_the_backups_is_not_inside_it(bk: Path,
                                                                                tmp_path: Path) -> None:
    done = restore(bk, str(bk) + "x")
    assert done.entries == 5


def test_a_store_is_replaced_only_with_force(bk: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _store(dest, 2)
    before = _tree(dest)
    with pytest.raises(StorageError) as info:
        restore(bk, dest)
    assert str(info.value) == (f"{dest} already holds a store; restoring over it needs --force (and no "
                               "process using it)")
    assert info.value.path == str(dest)
    assert _tree(dest) == before


def test_a_forced_restore_removes_the_old_commit_log_and_leaves_other_names(bk: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    _store(dest, 2)
    (dest / "commit.log.new").write_bytes(b"half-made")
    (dest / "notes.txt").write_text("mine")
    restore(bk, dest, force=True)
    names = set(os.listdir(dest))
    assert names == {"data.mdb", "lock.mdb", "notes.txt"}
    with SovereignJournal(dest, create=False) as journal:
        assert [x.request_id for x in journal.query(order="append", newest_first=False)] == \
            [f"r{i}" for i in range(5)]


@pytest.mark.parametrize("count", [1, 3, 4])
def test_a_directory_that_is_not_a_store_is_refused_naming_what_it_holds(bk: Path, tmp_path: Path,
                                                                         count: int) -> None:
    dest = tmp_path / "home"
    dest.mkdir(mode=0o700)
    for i in range(count):
        (dest / f"f{i}").write_text("mine")
    before = _tree(dest)
    with pytest.raises(StorageError) as info:
        restore(bk, dest)
    shown = ", ".join(f"f{i}" for i in range(min(count, 3))) + (", …" if count > 3 else "")
    assert str(info.value) == (f"{dest} is not a krepis store and is not empty ({shown}); restore into an "
                               "empty or new directory")
    assert info.value.path == str(dest)
    assert _tree(dest) == before


@pytest.mark.parametrize("name", ["lock.mdb", "commit.log", "commit.log.new", "commit.state", ".restore",
                                  ".migrate"])
def test_a_store_directory_without_data_mdb_is_restored_into(bk: Path, tmp_path: Path, name: str) -> None:
    """The names a store's directory holds besides data.mdb (leftovers of a store whose data.mdb
    is gone, of a killed restore or migration) do not make it "not a store"."""
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    if name.startswith("."):
        (dest / name).mkdir(mode=0o700)
        (dest / name / "data.mdb").write_bytes(b"left behind")
    else:
        (dest / name).write_bytes(b"")
    done = restore(bk, dest)
    assert done.entries == 5
    assert not (dest / ".restore").exists()
    with SovereignJournal(dest, create=False) as journal:
        assert journal.journal_count() == 5


def test_a_refused_backup_leaves_the_destination_and_no_staging_directory(bk: Path, tmp_path: Path) -> None:
    """A check of the staged copy fails: the error names the backup (not the staging copy, with
    the backup's path as ``.path`` for a storage error) and the destination is as it was."""
    import lmdb

    env = lmdb.open(str(bk), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"entries", txn=txn, create=False)
        value = bytearray(txn.get((3).to_bytes(8, "big"), db=db))
        value[-1] ^= 1
        txn.put((3).to_bytes(8, "big"), bytes(value), db=db)
    env.close()
    for name in ("commit.log", "commit.state"):
        (bk / name).unlink(missing_ok=True)
    dest = tmp_path / "dest"
    _store(dest, 2)
    before = _tree(dest)
    with pytest.raises(StorageError) as info:
        restore(bk, dest, force=True)
    assert ".restore" not in str(info.value) and str(bk) in str(info.value)
    assert info.value.path == str(bk)
    assert _tree(dest) == before


def test_a_backup_over_a_store_is_refused_and_leaves_every_file_of_it(tmp_path: Path) -> None:
    _store(tmp_path / "src")
    dest = tmp_path / "other"
    _store(dest, 2)
    before = _tree(dest)
    with pytest.raises(StorageError, match="exists and is not an empty directory"):
        backup(tmp_path / "src", dest)
    assert _tree(dest) == before


@pytest.mark.parametrize("name", ["dest ", "destX", "dest/"])
def test_a_backup_inside_a_destination_of_any_name_is_found_inside_it(tmp_path: Path, name: str) -> None:
    """The destination's real path with a separator after it is what the backup's must begin
    with: no other character is taken off its end."""
    dest = tmp_path / name.rstrip("/")
    _store(dest / "bk")
    before = _tree(tmp_path)
    with pytest.raises(StorageError, match="or inside it; restore it elsewhere"):
        restore(dest / "bk", str(tmp_path / name), force=True)
    assert _tree(tmp_path) == before


def test_a_backup_larger_than_lmdbs_default_map_is_restored(tmp_path: Path) -> None:
    """A backup larger than LMDB's default map (10 MiB) is restored: the write that makes the
    staged, compacted copy name no commit log fits (LMDB keeps the larger map size the file
    records)."""
    src = tmp_path / "src"
    storage = open_storage(src, durable=False)
    try:
        from krepis._model import encode_log
        from krepis.storage import WriteRequest

        for start in range(0, 4000, 500):
            logs = [TransactionLog(i, "op", f"r{i}", LogStatus.Completed, error="e" * 3000)
                    for i in range(start, start + 500)]
            storage.write_batch([WriteRequest([(x, encode_log(x)) for x in logs], [])])
    finally:
        storage.close()
    backup(src, tmp_path / "bk")
    assert (tmp_path / "bk" / "data.mdb").stat().st_size > 10 << 20
    assert restore(tmp_path / "bk", tmp_path / "out").entries == 4000


def test_a_refused_restore_leaves_a_killed_restores_staging_directory(bk: Path, tmp_path: Path) -> None:
    """A refusal before staging changes nothing, not even what a killed restore left behind (the
    next restore that goes ahead removes it)."""
    dest = tmp_path / "dest"
    _store(dest, 2)
    (dest / ".restore").mkdir(mode=0o700)
    (dest / ".restore" / "data.mdb").write_bytes(b"left behind")
    before = _tree(dest)
    with pytest.raises(StorageError, match="already holds a store"):
        restore(bk, dest)
    assert _tree(dest) == before


def test_a_restored_data_mdb_names_no_commit_log(bk: Path, tmp_path: Path) -> None:
    """The restored ``data.mdb`` holds the pointer that names no log (docs/storage-format.md:
    28 zero bytes, as a compacted copy or a migration writes it), before anything opens it."""
    import lmdb

    restore(bk, tmp_path / "out")
    assert "commit.log" not in os.listdir(tmp_path / "out")
    env = lmdb.open(str(tmp_path / "out"), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            assert txn.get(b"log", db=env.open_db(b"meta", txn=txn, create=False)) == bytes(28)
    finally:
        env.close()


def test_a_failed_flush_of_the_staged_copy_names_it_and_changes_nothing(
        bk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The staged copy is flushed once more after it was made to name no log: that flush failing
    is an error naming the staged file, and the destination is left as it was."""
    real_fsync = os.fsync
    calls: list[int] = []
    fail_at = [-1]

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(os.sep + os.path.join(".restore", "data.mdb")):
            calls.append(fd)
            if len(calls) == fail_at[0]:
                raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    restore(bk, tmp_path / "first")  # counts the staged file's flushes: the last comes after naming no log
    fail_at[0], calls[:] = len(calls), []
    dest = tmp_path / "dest"
    _store(dest, 2)
    before = _tree(dest)
    with pytest.raises(StorageError) as info:
        restore(bk, dest, force=True)
    staged = os.path.join(dest, ".restore", "data.mdb")
    assert str(info.value) == f"cannot make {staged} durable (fsync failed: Input/output error)"
    assert info.value.path == staged
    assert _tree(dest) == before


def _flushes(monkeypatch: pytest.MonkeyPatch, fail_at: int) -> list[str]:
    """Make ``os.fsync`` record what krepis's ``fsync_fd`` flushes (the path of each descriptor)
    and fail the ``fail_at``-th of those flushes (from 1; 0: none) with EIO."""
    import sys

    real_fsync = os.fsync
    seen: list[str] = []

    def fsync(fd: int) -> None:
        caller = sys._getframe(1)
        where = (caller.f_globals.get("__name__"), caller.f_code.co_name)
        if where == ("krepis.storage._outfiles", "fsync_fd"):
            seen.append(os.readlink(f"/proc/self/fd/{fd}"))
            if len(seen) == fail_at:
                raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return seen


def test_every_failed_flush_of_a_backup_names_what_it_flushed_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backup flushes its file, its directory and the parents it made: each flush failing is
    an error naming that file or directory, and the backup removes everything it made."""
    _store(tmp_path / "src")
    seen = _flushes(monkeypatch, 0)
    backup(tmp_path / "src", tmp_path / "count" / "new" / "bk")
    flushed = [p.replace(str(tmp_path / "count"), "{}") for p in seen]
    assert {"{}/new/bk", "{}/new/bk/data.mdb", "{}/new", "{}"} <= set(flushed)
    for k, what in enumerate(flushed, 1):
        top = tmp_path / f"fail{k}"
        _flushes(monkeypatch, k)
        with pytest.raises(StorageError) as info:
            backup(tmp_path / "src", top / "new" / "bk")
        where = what.replace("{}", str(top))
        assert str(info.value) == f"cannot make {where} durable (fsync failed: Input/output error)"
        assert info.value.path == where
        assert not (top / "new").exists()


def test_every_failed_flush_of_a_restore_names_what_it_flushed_and_leaves_no_stage(
        bk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore flushes the staged copy, its directory, the destination and the parents it made:
    each flush failing is an error naming that file or directory (the staged copy, while it is
    made and checked, by the backup's name), and no staging directory is left."""
    seen = _flushes(monkeypatch, 0)
    restore(bk, tmp_path / "count" / "new" / "out")
    flushed = [p.replace(str(tmp_path / "count"), "{}") for p in seen]
    assert {"{}/new/out", "{}/new/out/.restore", "{}/new/out/.restore/data.mdb", "{}/new", "{}"} \
        <= set(flushed)
    for k, what in enumerate(flushed, 1):
        top = tmp_path / f"fail{k}"
        _flushes(monkeypatch, k)
        with pytest.raises(StorageError) as info:
            restore(bk, top / "new" / "out")
        where = path = what.replace("{}", str(top))
        if k == flushed.index("{}/new/out/.restore/data.mdb") + 1:  # the copy's own flush
            where, path = str(bk / "data.mdb"), str(bk)
        assert str(info.value) == f"cannot make {where} durable (fsync failed: Input/output error)"
        assert info.value.path == path
        assert not (top / "new" / "out" / ".restore").exists()


@pytest.mark.parametrize("damage", ["first page", "meta dropped"])
def test_a_staged_copy_that_cannot_be_made_to_name_no_log_is_named(bk: Path, tmp_path: Path, damage: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The staged copy damaged after its check: LMDB cannot open it (its first page overwritten)
    or it lacks the ``meta`` database. Making it name no commit log fails, naming the staged copy
    (never creating ``meta``); nothing at the destination changes."""
    import lmdb

    from krepis.storage.lmdb import _backup

    real_check = _backup._check

    def check_then_damage(path: str, keys: list[object]) -> object:
        result = real_check(path, keys)  # type: ignore[arg-type]
        if damage == "first page":
            with open(os.path.join(path, "data.mdb"), "r+b") as f:
                f.write(b"\xff" * 4096)
        else:
            env = lmdb.open(path, max_dbs=16, map_size=1 << 30)
            with env.begin(write=True) as txn:
                txn.drop(env.open_db(b"meta", txn=txn, create=False), delete=True)
            env.close()
        return result

    monkeypatch.setattr(_backup, "_check", check_then_damage)
    dest = tmp_path / "dest"
    _store(dest, 2)
    before = _tree(dest)
    with pytest.raises(StorageError) as info:
        restore(bk, dest, force=True)
    stage = str(dest / ".restore")
    assert str(info.value).startswith(f"cannot prepare {stage} to be restored: ")
    assert ("MDB_INVALID" if damage == "first page" else "MDB_NOTFOUND") in str(info.value)
    assert info.value.path == stage
    assert _tree(dest) == before


def test_a_backup_whose_check_fails_making_the_log_removes_the_half_made_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's open makes the copy a commit log (``commit.log.new``, then renamed): when the
    rename fails, the backup removes that file with the rest of what it made."""
    _store(tmp_path / "src")
    real_rename = os.rename

    def rename(src: str, dst: str, **kwargs: int) -> None:
        if src == "commit.log.new":
            raise OSError(28, "No space left on device")
        real_rename(src, dst, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    dest = tmp_path / "bk"
    dest.mkdir(mode=0o700)
    with pytest.raises(StorageError, match=r"cannot create commit\.log: No space left on device"):
        backup(tmp_path / "src", dest)
    assert os.listdir(dest) == []


def test_a_kept_note_is_split_at_its_last_blank_line(tmp_path: Path) -> None:
    """A signed note's text ends at its last blank line: a kept note with a signature line after
    a second blank line has a text that is not a checkpoint, and is refused as malformed."""
    key = generate_signer("example.com/a")
    with SovereignJournal(tmp_path / "src") as journal:
        for i in range(4):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
        note = journal.sign_checkpoint(key)
    storage = open_storage(tmp_path / "src")
    try:
        storage.add_checkpoint(0, 4, "example.com/b", note + "\n— example.com/b AAAA\n")
    finally:
        storage.close()
    with pytest.raises(ValidationError) as info:
        backup(tmp_path / "src", tmp_path / "bk")
    assert str(info.value).startswith(f"{tmp_path / 'bk'}: the kept checkpoint of tree size 4 is malformed (")
    assert not (tmp_path / "bk").exists()
