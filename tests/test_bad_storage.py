"""A storage location that cannot be used is an error naming the path, and the disk is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from krepis import (
    CorruptStorageError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
)
from rawlmdb import forget_commit_log

from conftest import make_store, tree_snapshot


def test_path_is_a_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"not a store")
    with pytest.raises(StorageError, match=f"{target} exists and is not a directory") as info:
        SovereignJournal(target)
    assert info.value.path == str(target)
    assert target.read_bytes() == b"not a store"


def test_parent_is_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError, match=str(tmp_path / "file" / "store")):
        SovereignJournal(tmp_path / "file" / "store")
    assert (tmp_path / "file").read_bytes() == b"x"


def test_non_empty_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    before = tree_snapshot(tmp_path)
    with pytest.raises(StorageError, match=rf"{tmp_path} is not a krepis store .*notes.txt"):
        SovereignJournal(tmp_path)
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("size", [4096, 20000])
def test_garbage_data_file_is_refused_and_untouched(tmp_path: Path, size: int) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "data.mdb").write_bytes(os.urandom(size))
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=str(store)):
        SovereignJournal(store)
    assert tree_snapshot(store) == before  # not re-initialised; no lock file left behind either


def test_truncated_store_is_refused_and_untouched(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    data = store / "data.mdb"
    data.write_bytes(data.read_bytes()[:100])
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=str(store)):
        SovereignJournal(store)
    assert tree_snapshot(store) == before


def test_lmdb_store_of_another_program_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "other"
    env = lmdb.open(str(store))
    with env.begin(write=True) as txn:
        txn.put(b"their", b"data")
    env.close()
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=rf"{store} is an LMDB store but not a krepis store"):
        SovereignJournal(store)
    assert tree_snapshot(store) == before


def _poke(store: Path, db: bytes, key: bytes, value: bytes) -> None:
    env = lmdb.open(str(store), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db, txn=txn))
    env.close()
    forget_commit_log(store)


@pytest.mark.parametrize("value", [b"", b"\x01" * 27, b"\x01" * 29])
def test_malformed_commit_log_pointer_is_refused(tmp_path: Path, value: bytes) -> None:
    store = tmp_path / "store"
    make_store(store)
    _poke(store, b"meta", b"log", value)
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=rf"^storage at {store}: malformed commit-log pointer "
                       rf"record \({len(value)} bytes, not 28\)$") as info:
        SovereignJournal(store)
    assert info.value.path == str(store)
    assert tree_snapshot(store) == before  # no commit.log made for it


def test_a_commit_log_deleted_while_the_store_is_in_use_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys\nfrom krepis import SovereignJournal\n"
        f"j = SovereignJournal({str(store)!r})\nprint('open', flush=True)\nsys.stdin.read()\n")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        (store / "commit.log").unlink()
        with pytest.raises(StorageError, match=rf"^storage at {store}: commit\.log is missing while other "
                           r"processes use the store; never delete commit\.log"):
            SovereignJournal(store)
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    with SovereignJournal(store) as journal:  # alone again: a new log is made
        assert journal.journal_count() == 3
    assert (store / "commit.log").exists()


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    _poke(store, b"meta", b"format", b"99")
    before = tree_snapshot(store)
    with pytest.raises(CorruptStorageError, match=rf"{store} has format version b'99'"):
        SovereignJournal(store)
    assert tree_snapshot(store)["data.mdb"] == before["data.mdb"]


def _entry_value(store: Path, seq: int) -> bytes:
    env = lmdb.open(str(store), max_dbs=16, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            value = txn.get(seq.to_bytes(8, "big"), db=env.open_db(b"entries", txn=txn, create=False))
    finally:
        env.close()
    assert value is not None
    return bytes(value)


def _corrupt(value: bytes, how: str) -> bytes:
    body = bytearray(value)
    if how == "not a record":
        return b"{not json"
    if how == "bad status bits":
        body[0] = (body[0] & ~3) & 0xFF
    elif how == "unknown flag":
        body[0] |= 0x80
    elif how == "truncated":
        return bytes(body[:-1])
    elif how == "trailing bytes":
        return bytes(body) + b"x"
    elif how == "unknown op id":
        body[9:13] = (999).to_bytes(4, "little")
    elif how == "error not UTF-8":
        body[0] |= 32
        return bytes(body) + b"\xff\xfe"
    return bytes(body)


@pytest.mark.parametrize("how", ["not a record", "bad status bits", "unknown flag", "truncated",
                                 "trailing bytes", "unknown op id", "error not UTF-8"])
def test_corrupted_entry_is_reported_with_path_and_seq(tmp_path: Path, how: str) -> None:
    store = tmp_path / "store"
    make_store(store)
    _poke(store, b"entries", (1).to_bytes(8, "big"), _corrupt(_entry_value(store, 1), how))
    with SovereignJournal(store) as journal:
        assert journal.journal_count() == 3
        for read in (lambda: journal.get_recent_logs(10), lambda: journal.entry(1),
                     lambda: journal.query(order="append"), lambda: journal.query(request_id="r1")):
            with pytest.raises(CorruptStorageError, match=rf"{store}: entry 1 is not a valid"):
                read()
        assert journal.entry(2).request_id == "r2"  # the others still read


def test_index_naming_a_missing_entry_is_reported(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    env = lmdb.open(str(store), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            txn.delete((1).to_bytes(8, "big"), db=env.open_db(b"entries", txn=txn, create=False))
    finally:
        env.close()
        forget_commit_log(store)
    missing = rf"{store}: an index names entry 1, which is missing"
    with SovereignJournal(store) as journal, pytest.raises(CorruptStorageError, match=missing) as info:
        journal.get_recent_logs(10)
    assert info.value.path == str(store)


@pytest.mark.parametrize("value", [b"", b"\x01" * 7, b"\x01" * 9])
def test_malformed_counter_is_corruption_everywhere(tmp_path: Path, value: bytes) -> None:
    store = tmp_path / "store"
    make_store(store)
    _poke(store, b"stats", b"op_count:op", value)
    with SovereignJournal(store) as journal:
        for call in (lambda: journal.recover_op_count("op"), journal.op_counts,
                     lambda: journal.increment_op_count("op"),
                     lambda: journal.record(TransactionLog(1, "op", "r", LogStatus.Started), increment="op")):
            with pytest.raises(CorruptStorageError, match=rf"{store}: counter 'op' holds {len(value)} bytes"):
                call()
        assert journal.journal_count() == 3  # the failed record() wrote nothing


def test_a_malformed_counter_with_a_name_that_is_not_utf8_is_named_readably(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    _poke(store, b"stats", b"op_count:op\xff", b"\x01" * 7)
    with SovereignJournal(store) as journal, pytest.raises(CorruptStorageError) as info:
        journal.op_counts()
    assert str(info.value) == f"storage at {store}: counter 'op\ufffd' holds 7 bytes, not 8"


# --- a directory this user may not write ------------------------------------------------------

def _attempt_as_unprivileged(fn: Callable[[], None]) -> str:
    """Run fn in a child process that cannot write the test directories; return what it raised.

    As root, permission bits do not stop us, so the child drops to the 'nobody' user first.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        message = "no error"
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            fn()
        except JournalError as exc:
            message = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:
            message = f"unexpected {type(exc).__name__}: {exc}"
        finally:
            os.write(w, message.encode())
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp root, so an unprivileged user can reach (but not write) it.
    base = Path(tempfile.mkdtemp(prefix="krepis-ro-"))
    base.chmod(0o755)
    yield base
    for dirpath, dirs, _files in os.walk(base):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o755)
    import shutil

    shutil.rmtree(base)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_unwritable_existing_store(readonly_dir: Path) -> None:
    store = readonly_dir / "store"
    make_store(store)
    for p in [store, *store.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o444)
    if os.geteuid() != 0:
        store.chmod(0o555)
    before = tree_snapshot(store)
    message = _attempt_as_unprivileged(lambda: SovereignJournal(store).close())
    assert message.startswith("StorageError"), message
    assert str(store) in message
    assert tree_snapshot(store) == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_unwritable_parent_directory(readonly_dir: Path) -> None:
    parent = readonly_dir / "parent"
    parent.mkdir(mode=0o555)
    parent.chmod(0o555)
    message = _attempt_as_unprivileged(lambda: SovereignJournal(parent / "store").close())
    assert message.startswith("StorageError: cannot create storage directory"), message
    assert str(parent / "store") in message
    assert list(parent.iterdir()) == []
