"""Compaction and disk use, step by step (``storage/lmdb/_compact.py``): the compacted copy (every
row of every database, in order, no lock file, the pointer naming no log or the source's, the
progress it reports chunk by chunk), each refusal by its text and what it names, the records of
the commit log LMDB has not applied, and what ``compact`` and ``disk_use`` report.

Real stores on disk; a failure or a race is injected by wrapping one call (a writer killed in a
child process, a copy damaged after it was written), never by a fake store. The whole-store
guarantees (99 % archived, SIGKILL at every step, another process holding the store) are in
tests/test_compact.py.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage, _compact, compact, disk_use
from krepis.storage.lmdb._compact import COMPACT_DIR, _allocated, _copy_db, _Rows, _unapplied, copy_compacted
from krepis.storage.lmdb._layout import _DBS

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _log(i: int, op: str = "op") -> TransactionLog:
    return TransactionLog(1_700_000_000_000 + i, op, f"r{i}", LogStatus.Completed)


def _fill(path: Path, n: int, *, per_batch: int = 100) -> None:
    store = LmdbStorage(path)
    try:
        for start in range(0, n, per_batch):
            logs = [_log(i, f"op{i % 3}") for i in range(start, min(n, start + per_batch))]
            store.write_batch([WriteRequest([(x, encode_log(x))], [x.op_name.encode()]) for x in logs])
    finally:
        store.close()


def _rows(where: Path | str | LmdbStorage) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every row of every database of the ``data.mdb`` in ``where`` (a directory, or an open
    store), read with LMDB itself."""
    if isinstance(where, LmdbStorage):
        return _rows_of(where._shared.env)
    env = lmdb.open(str(where), max_dbs=16, readonly=True, lock=False, create=False)
    try:
        return _rows_of(env)
    finally:
        env.close()


def _rows_of(env: lmdb.Environment) -> dict[bytes, list[tuple[bytes, bytes]]]:
    out = {}
    with env.begin() as txn:
        for name, dupsort in _DBS:
            try:
                db = env.open_db(name, txn=txn, create=False, dupsort=dupsort, dupfixed=dupsort)
            except lmdb.NotFoundError:
                continue
            out[name] = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db).iternext()]
    return out


def _flags(where: Path | LmdbStorage) -> dict[bytes, dict[str, bool]]:
    """Each database's flags as the ``data.mdb`` in ``where`` records them."""
    env = where._shared.env if isinstance(where, LmdbStorage) else \
        lmdb.open(str(where), max_dbs=16, readonly=True, lock=False, create=False)
    try:
        with env.begin() as txn:
            return {name: env.open_db(name, txn=txn, create=False).flags(txn) for name, _dupsort in _DBS}
    finally:
        if not isinstance(where, LmdbStorage):
            env.close()


def _pointer(where: Path | LmdbStorage) -> bytes:
    return dict(_rows(where)[b"meta"])[b"log"]


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    where = tmp_path / "dest"
    where.mkdir()
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield where, fd
    finally:
        os.close(fd)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[LmdbStorage]:
    path = tmp_path / "s"
    _fill(path, 300)
    store = LmdbStorage(path)
    try:
        yield store
    finally:
        store.close()


# -- what a file takes on disk ---------------------------------------------------------------

def test_allocated_is_the_blocks_and_the_size_of_the_entry_itself(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10_000)
    (tmp_path / "link").symlink_to(tmp_path / "f")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = (tmp_path / "f").stat()
        assert _allocated(fd, "f") == (st.st_blocks * 512, 10_000)
        assert st.st_blocks > 0
        link = (tmp_path / "link").lstat()
        assert _allocated(fd, "link") == (link.st_blocks * 512, link.st_size)  # never followed
        assert _allocated(fd, "link")[1] == len(str(tmp_path / "f"))
        assert _allocated(fd, "missing") == (0, 0)
    finally:
        os.close(fd)


# -- the compacted copy ----------------------------------------------------------------------

def test_the_copy_holds_every_row_of_every_database_and_names_no_log(
        source: LmdbStorage, dest: tuple[Path, int]) -> None:
    where, fd = dest
    assert copy_compacted(source._shared.env, fd, str(where), name_no_log=True) == 300
    assert os.listdir(where) == ["data.mdb"]  # no lock file: the copy is private until renamed
    assert stat.S_IMODE((where / "data.mdb").stat().st_mode) == 0o600
    mine, copied = _rows(source), _rows(where)
    assert set(copied) == set(mine) and b"entries" in copied and b"index" in copied
    assert len(copied[b"entries"]) == 300
    for name, rows in mine.items():
        if name != b"meta":
            assert copied[name] == rows, name
    assert [r for r in copied[b"meta"] if r[0] != b"log"] == [r for r in mine[b"meta"] if r[0] != b"log"]
    assert _pointer(where) == bytes(28)
    assert _pointer(source) != bytes(28)
    assert _flags(where) == _flags(source)  # the same layout: the index duplicate-sorted, fixed-size
    assert _flags(where)[b"index"]["dupsort"] and _flags(where)[b"index"]["dupfixed"]


def test_a_copy_that_may_keep_the_pointer_keeps_the_sources(source: LmdbStorage,
                                                           dest: tuple[Path, int]) -> None:
    where, fd = dest
    assert copy_compacted(source._shared.env, fd, str(where), name_no_log=False) == 300
    assert _rows(where) == _rows(source)
    assert _pointer(where) == _pointer(source) != bytes(28)


def test_the_copy_reports_its_rows_after_each_chunk(source: LmdbStorage, dest: tuple[Path, int]) -> None:
    where, fd = dest
    calls: list[tuple[int, int]] = []
    copy_compacted(source._shared.env, fd, str(where), name_no_log=True,
                   progress=lambda done, total: calls.append((done, total)))
    sizes = [len(rows) for name, rows in _rows(source).items() if rows]
    total = sum(len(rows) for rows in _rows(source).values())
    expected, done = [], 0
    for n in sizes:
        done += n
        expected.append((done, total))
    assert calls == expected
    assert calls[-1] == (total, total)


def test_a_database_of_more_rows_than_a_chunk_takes_several_transactions(tmp_path: Path,
                                                                         dest: tuple[Path, int]) -> None:
    """17,000 entries make 68,000 index rows: one chunk of 65,536, then the rest."""
    path = tmp_path / "big"
    _fill(path, 17_000, per_batch=1000)
    where, fd = dest
    calls: list[tuple[int, int]] = []
    store = LmdbStorage(path)
    try:
        copy_compacted(store._shared.env, fd, str(where), name_no_log=True,
                       progress=lambda done, total: calls.append((done, total)))
    finally:
        store.close()
    rows = _rows(path)
    assert len(rows[b"index"]) == 68_000
    expected, done = [], 0
    total = sum(len(r) for r in rows.values())
    for name, _dupsort in _DBS:
        n = len(rows.get(name, []))
        while n:
            step = min(n, 65_536)
            done += step
            n -= step
            expected.append((done, total))
    assert calls == expected
    assert _rows(where)[b"index"] == rows[b"index"]


def test_progress_never_reports_more_done_than_its_total() -> None:
    calls: list[tuple[int, int]] = []
    rows = _Rows(10, lambda done, total: calls.append((done, total)))
    rows.add(4)
    rows.add(4)
    rows.add(5)  # (a database grew in between: rows are counted as they are copied)
    assert calls == [(4, 10), (8, 10), (13, 13)]
    _Rows(3, None).add(1)  # no callback: nothing to call


def test_a_copy_is_never_written_over_an_existing_file(source: LmdbStorage, dest: tuple[Path, int]) -> None:
    where, fd = dest
    (where / "data.mdb").write_bytes(b"keep")
    with pytest.raises(StorageError) as info:
        copy_compacted(source._shared.env, fd, str(where), name_no_log=True)
    assert str(info.value).startswith(f"{where}/data.mdb is already there; ")
    assert info.value.path == f"{where}/data.mdb"
    assert (where / "data.mdb").read_bytes() == b"keep"


def test_a_copy_lmdb_cannot_create_is_named(source: LmdbStorage, dest: tuple[Path, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    where, fd = dest
    real = lmdb.open

    def failing(path: str, **kwargs: Any) -> lmdb.Environment:
        if path == f"/proc/self/fd/{fd}":
            raise lmdb.InvalidError("injected")
        return real(path, **kwargs)

    monkeypatch.setattr(lmdb, "open", failing)
    with pytest.raises(StorageError) as info:
        copy_compacted(source._shared.env, fd, str(where), name_no_log=True)
    assert str(info.value) == f"cannot create the copy in {where}: injected"
    assert info.value.path == str(where)


def test_an_lmdb_error_while_copying_is_named(source: LmdbStorage, dest: tuple[Path, int]) -> None:
    where, fd = dest

    def full(done: int, total: int) -> None:
        raise lmdb.MapFullError("injected")

    with pytest.raises(StorageError) as info:
        copy_compacted(source._shared.env, fd, str(where), name_no_log=True, progress=full)
    assert str(info.value) == f"copying into {where} failed: injected"
    assert info.value.path == str(where)
    env = lmdb.open(str(where), max_dbs=16, create=False)  # (closed: it opens again)
    env.close()


def test_rows_out_of_order_are_refused_naming_the_database(source: LmdbStorage,
                                                          dest: tuple[Path, int]) -> None:
    where, _fd = dest
    out = lmdb.open(str(where), max_dbs=16, map_size=1 << 30)
    try:
        with out.begin(write=True) as txn:
            target = out.open_db(b"entries", txn=txn)
            txn.put((150).to_bytes(8, "big"), b"there", db=target)  # seqs 0…150 cannot follow it
        env = source._shared.env
        with env.begin() as src:
            db = env.open_db(b"entries", txn=src, create=False)
            with pytest.raises(StorageError) as info:
                _copy_db(src, db, out, target, False, b"entries", "/the/copy", _Rows(300, None))
        assert str(info.value) == "copying entries into /the/copy: 151 rows out of order"
        assert info.value.path == "/the/copy"
    finally:
        out.close()


# -- the records LMDB has not applied --------------------------------------------------------

_KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {src!r})
    from krepis import LogStatus, TransactionLog
    from krepis._model import encode_log
    from krepis.storage import WriteRequest
    from krepis.storage.lmdb import _store
    _store.start_applier = lambda shared: None  # (no applier: the records stay in the log only)
    s = _store.LmdbStorage({store!r})
    for i in range({records}):
        x = TransactionLog(1_800_000_000_000 + i, "late", f"late{{i}}", LogStatus.Completed)
        s.write_batch([WriteRequest([(x, encode_log(x))], [b"late"])])
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _killed_writer(path: Path | str, records: int) -> None:
    code = _KILLED_WRITER.format(src=SRC, store=str(path), records=records)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _unapplied_at(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return _unapplied(str(path), fd)
    finally:
        os.close(fd)


def test_unapplied_counts_the_records_only_the_commit_log_holds(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path, 10)
    assert _unapplied_at(path) == 0  # closed cleanly: LMDB holds everything
    _killed_writer(path, 3)
    assert _unapplied_at(path) == 3
    LmdbStorage(path).close()  # recovered
    assert _unapplied_at(path) == 0


def test_unapplied_is_none_without_a_log(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path, 10)
    _killed_writer(path, 2)
    assert _unapplied_at(path) == 2
    (path / "commit.log").rename(tmp_path / "aside")
    assert _unapplied_at(path) == 0  # (the open refuses such a store: a log was lost)
    (tmp_path / "aside").rename(path / "commit.log")
    env = lmdb.open(str(path), max_dbs=16, lock=False)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"log", bytes(28), db=env.open_db(b"meta", txn=txn, create=False))
    finally:
        env.close()
    assert _unapplied_at(path) == 0  # data.mdb names no log: it holds every write


# -- compact -----------------------------------------------------------------------------------

def test_compact_swaps_in_the_copy_and_reports_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    _fill(path, 500)
    rows = _rows(path)
    before = (path / "data.mdb").stat().st_blocks * 512
    (path / "commit.log.new").write_bytes(b"left by a crash, not this log's")
    monkeypatch.chdir(tmp_path)
    calls: list[tuple[int, int]] = []
    result = compact("s", progress=lambda done, total: calls.append((done, total)))
    assert result.path == str(path) and result.entries == 500
    assert result.before == before
    assert result.after == (path / "data.mdb").stat().st_blocks * 512
    assert sorted(os.listdir(path)) == ["data.mdb", "lock.mdb"]  # the old log described the old file
    assert _pointer(path) == bytes(28)
    assert calls and calls[-1][0] == calls[-1][1] == sum(len(r) for r in rows.values())
    after = _rows(path)
    assert {k: v for k, v in after.items() if k != b"meta"} == {k: v for k, v in rows.items() if k != b"meta"}
    store = LmdbStorage(path)
    try:
        assert store.entry_count() == 500 and store.verify().entries == 500
    finally:
        store.close()


def test_compact_expands_a_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(tmp_path / "s", 5)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compact("~/s").path == str(tmp_path / "s")


def test_compact_never_creates_a_store(tmp_path: Path) -> None:
    with pytest.raises(StorageError):
        compact(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(StorageError):
        disk_use(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_compact_is_refused_while_this_process_has_the_store_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path, 5)
    store = LmdbStorage(path)
    try:
        with pytest.raises(StorageError) as info:
            compact(path)
        assert str(info.value) == f"storage at {path} is open in this process; close it before krepis compact"
        assert not (path / COMPACT_DIR).exists()
    finally:
        store.close()


def test_compact_refuses_what_another_process_wrote_meanwhile(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process writes (and dies) between compaction's open-and-close and the offline lock."""
    path = tmp_path / "s"
    _fill(path, 20)
    real = _compact.Offline

    def racing(where: str, **kwargs: Any) -> Any:
        _killed_writer(where, 2)
        return real(where, **kwargs)

    monkeypatch.setattr(_compact, "Offline", racing)
    data = (path / "data.mdb").read_bytes()
    with pytest.raises(StorageError) as info:
        compact(path)
    assert str(info.value) == (f"storage at {path} was written by another process while it was being "
                               "prepared for compaction; run krepis compact again")
    assert info.value.path == str(path)
    assert (path / "data.mdb").read_bytes() == data and not (path / COMPACT_DIR).exists()
    monkeypatch.undo()
    assert compact(path).entries == 22


def test_a_commit_log_swapped_for_a_link_meanwhile_is_refused_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``commit.log`` replaced by a symbolic link (to a copy of itself) between compaction's
    open-and-close and the offline lock: never followed, refused as a StorageError naming it."""
    path = tmp_path / "s"
    _fill(path, 20)
    real = _compact.Offline

    def racing(where: str, **kwargs: Any) -> Any:
        os.rename(path / "commit.log", tmp_path / "elsewhere.log")
        os.symlink(tmp_path / "elsewhere.log", path / "commit.log")
        return real(where, **kwargs)

    monkeypatch.setattr(_compact, "Offline", racing)
    rows = _rows(path)
    with pytest.raises(StorageError) as info:
        compact(path)
    assert str(info.value) == f"cannot open {path}/commit.log: Too many levels of symbolic links"
    assert info.value.path == str(path)
    assert _rows(path) == rows and (path / "commit.log").is_symlink()
    assert not (path / COMPACT_DIR).exists()


def _damage_copy(monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Each compacted copy is changed with LMDB (``change(txn, env)``) once it is written."""
    real = _compact.copy_compacted

    def damaging(env: lmdb.Environment, dest_fd: int, where: str, **kwargs: Any) -> int:
        n = real(env, dest_fd, where, **kwargs)
        out = lmdb.open(where, max_dbs=16, lock=False, create=False)
        try:
            with out.begin(write=True) as txn:
                change(txn, out)
        finally:
            out.close()
        return n

    monkeypatch.setattr(_compact, "copy_compacted", damaging)


def test_a_copy_that_does_not_hold_the_stores_counters_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    _fill(path, 30)

    def bump(txn: Any, env: lmdb.Environment) -> None:
        stats = env.open_db(b"stats", txn=txn, create=False)
        txn.put(b"op_count:op0", (999).to_bytes(8, "little"), db=stats)

    _damage_copy(monkeypatch, bump)
    rows = _rows(path)
    with pytest.raises(CorruptStorageError) as info:
        compact(path)
    assert str(info.value) == (f"storage at {path}: the compacted copy does not hold what the store holds; "
                               "nothing was changed")
    assert info.value.path == str(path)
    assert _rows(path) == rows and not (path / COMPACT_DIR).exists()


def _tree_epoch(txn: Any, env: lmdb.Environment) -> None:
    meta = env.open_db(b"meta", txn=txn, create=False)
    raw = bytes(txn.get(b"tree", db=meta))
    txn.put(b"tree", raw[:8] + (5).to_bytes(8, "little") + raw[16:], db=meta)


def _first_tile_dropped(txn: Any, env: lmdb.Environment) -> None:
    """The first 256 entries and their index rows gone, ``live`` past them: as if archived."""
    meta = env.open_db(b"meta", txn=txn, create=False)
    entries = env.open_db(b"entries", txn=txn, create=False)
    index = env.open_db(b"index", txn=txn, create=False, dupsort=True, dupfixed=True)
    rows = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=index).iternext()
            if int.from_bytes(bytes(v)[8:], "big") < 256]
    assert len(rows) == 4 * 256
    for key, value in rows:
        txn.delete(key, value, db=index)
    for seq in range(256):
        txn.delete(seq.to_bytes(8, "big"), db=entries)
    txn.put(b"live", (0).to_bytes(8, "little") + (256).to_bytes(8, "little"), db=meta)


@pytest.mark.parametrize("change", [_tree_epoch, _first_tile_dropped])
def test_a_copy_that_verifies_but_differs_from_the_store_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """Another tree epoch, or fewer entries (a whole tile gone, ``live`` moved past it): each
    copy verifies on its own; only the comparison with the store tells."""
    path = tmp_path / "s"
    _fill(path, 300)
    _damage_copy(monkeypatch, change)
    rows = _rows(path)
    with pytest.raises(CorruptStorageError) as info:
        compact(path)
    assert str(info.value) == (f"storage at {path}: the compacted copy does not hold what the store holds; "
                               "nothing was changed")
    assert _rows(path) == rows and not (path / COMPACT_DIR).exists()


def test_a_copy_that_does_not_verify_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    _fill(path, 30)

    def drop_an_entry(txn: Any, env: lmdb.Environment) -> None:
        entries = env.open_db(b"entries", txn=txn, create=False)
        cursor = txn.cursor(db=entries)
        assert cursor.last()
        cursor.delete()

    _damage_copy(monkeypatch, drop_an_entry)
    rows = _rows(path)
    with pytest.raises(CorruptStorageError) as info:
        compact(path)
    message = str(info.value)
    assert message.startswith(f"storage at {path}: the compacted copy does not verify (")
    assert message.endswith("); nothing was changed")
    assert str(path / COMPACT_DIR) in message  # the copy's own error, inside
    assert info.value.path == str(path)
    assert _rows(path) == rows and not (path / COMPACT_DIR).exists()


@pytest.mark.parametrize("failing", [1, 2])
def test_a_copy_that_cannot_be_flushed_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                failing: int) -> None:
    """The copy is flushed when written and again after its check: either failing names it."""
    path = tmp_path / "s"
    _fill(path, 30)
    copy = str(path / COMPACT_DIR / "data.mdb")
    real = os.fsync
    seen: list[int] = []

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == copy:
            seen.append(fd)
            if len(seen) == failing:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    rows = _rows(path)
    with pytest.raises(StorageError) as info:
        compact(path)
    assert str(info.value) == f"cannot make {copy} durable (fsync failed: Input/output error)"
    assert info.value.path == copy
    assert len(seen) == failing
    assert _rows(path) == rows and not (path / COMPACT_DIR).exists()
    monkeypatch.undo()
    assert compact(path).entries == 30


# -- disk use --------------------------------------------------------------------------------

def test_disk_use_reports_each_file_and_the_free_pages(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path, 400)
    store = LmdbStorage(path)
    try:
        store.set_setting("archive", "a" * 4000)  # a value on overflow pages
    finally:
        store.close()
    use = disk_use(path)

    def blocks(name: str) -> int:
        return (path / name).stat().st_blocks * 512

    assert use.path == str(path) and use.entries == 400
    assert use.data == blocks("data.mdb") and use.data_apparent == (path / "data.mdb").stat().st_size
    assert use.log == blocks("commit.log") and use.state == blocks("commit.state")
    assert use.lock == blocks("lock.mdb")
    assert use.total == use.data + use.log + use.state + use.lock
    assert use.log > 0 and use.state > 0 and use.lock > 0
    env = lmdb.open(str(path), max_dbs=16, readonly=True, lock=False, create=False)
    try:
        psize = env.stat()["psize"]
        used = 2 + sum(env.stat()[k] for k in ("branch_pages", "leaf_pages", "overflow_pages"))
        overflow = 0
        with env.begin() as txn:
            for name, dupsort in _DBS:
                try:
                    db = env.open_db(name, txn=txn, create=False, dupsort=dupsort, dupfixed=dupsort)
                except lmdb.NotFoundError:
                    continue
                st = txn.stat(db)
                used += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                overflow += st["overflow_pages"]
        last = env.info()["last_pgno"] + 1
    finally:
        env.close()
    assert overflow > 0
    assert use.free == (last - used) * psize  # the pages no database uses: the free list's own too


def test_disk_use_after_compaction_counts_few_free_pages_and_no_log(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _fill(path, 2000)
    store = LmdbStorage(path)
    try:
        store.clear()
    finally:
        store.close()
    assert disk_use(path).free > 0
    compact(path)
    use = disk_use(path)
    assert use.entries == 0 and use.free >= 0
    assert use.free < disk_use(path).data_apparent
