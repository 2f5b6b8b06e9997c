"""The helpers every part of the LMDB adapter shares (``krepis.storage.lmdb._layout``): how LMDB
and OS errors become the journal's errors (texts and paths), the index streams of one key
within bounds, in both directions, on a real LMDB environment."""

from __future__ import annotations

import errno
import itertools
import struct
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from krepis import ClosedError, CorruptStorageError, JournalError, StorageError
from krepis.storage.lmdb._layout import (
    _MAP_SIZE,
    _closed_error,
    _dup_stream,
    _forked_error,
    _next16,
    _os_error,
    _relabel,
    _wrap,
)

PATH = "/srv/store"


# --- errors -------------------------------------------------------------------------------------

def test_a_journal_error_passes_through_as_it_is() -> None:
    exc = StorageError("already ours", "/elsewhere")
    assert _wrap(exc, PATH, "reading") is exc


@pytest.mark.parametrize("kind", [lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError,
                                  lmdb.VersionMismatchError, lmdb.BadChecksumError, lmdb.PanicError])
def test_lmdb_damage_is_a_corrupt_storage_error_naming_the_store(kind: type[lmdb.Error]) -> None:
    wrapped = _wrap(kind("the detail"), PATH, "reading entries")
    assert type(wrapped) is CorruptStorageError
    assert str(wrapped) == (f"storage at {PATH} is corrupted or not an LMDB store (reading entries): "
                            "the detail")
    assert wrapped.path == PATH


def test_a_full_map_names_the_map_size_and_what_was_being_done() -> None:
    wrapped = _wrap(lmdb.MapFullError("full"), PATH, "writing")
    assert type(wrapped) is StorageError
    assert str(wrapped) == f"storage at {PATH} is full (LMDB map size {_MAP_SIZE} bytes) while writing"
    assert wrapped.path == PATH
    assert _MAP_SIZE == 1 << 40  # a 64-bit build


@pytest.mark.parametrize("exc", [lmdb.ReadersFullError("no reader slot"), OSError(5, "I/O error"),
                                 RuntimeError("odd")])
def test_any_other_failure_is_a_storage_error_saying_what_failed(exc: BaseException) -> None:
    wrapped = _wrap(exc, PATH, "applying")
    assert type(wrapped) is StorageError
    assert str(wrapped) == f"storage at {PATH} failed while applying: {exc}"
    assert wrapped.path == PATH


def test_closed_and_forked_journals_say_which() -> None:
    closed, forked = _closed_error(PATH), _forked_error(PATH)
    assert type(closed) is ClosedError and type(forked) is ClosedError
    assert str(closed) == f"the journal at {PATH} is closed"
    assert str(forked) == (f"the journal at {PATH} was opened in a parent process; open a new one "
                           "after fork()")
    assert isinstance(closed, JournalError)


def test_an_lmdb_error_names_the_store_not_the_descriptor_path() -> None:
    exc = lmdb.InvalidError("/proc/self/fd/7: MDB_INVALID: File is not an LMDB file")
    relabelled = _relabel(exc, "/proc/self/fd/7", PATH)
    assert type(relabelled) is lmdb.InvalidError
    assert str(relabelled) == f"{PATH}: MDB_INVALID: File is not an LMDB file"
    assert _relabel(exc, PATH, PATH) is exc  # opened by its own path: nothing to replace
    other = lmdb.InvalidError("no path in here")
    assert _relabel(other, "/proc/self/fd/7", PATH) is other


def test_os_errors_of_an_open_name_the_store() -> None:
    rofs = _os_error(OSError(errno.EROFS, "Read-only file system"), PATH)
    assert (type(rofs), str(rofs), rofs.path) == (
        StorageError, f"storage at {PATH} is on a read-only file system", PATH)
    denied = _os_error(OSError(errno.EACCES, "Permission denied"), PATH)
    assert (str(denied), denied.path) == (f"cannot open storage at {PATH}: Permission denied", PATH)
    bare = _os_error(OSError("no errno"), PATH)  # no strerror: the exception's own text
    assert str(bare) == f"cannot open storage at {PATH}: no errno"


# --- keys ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "after"), [
    (bytes(16), bytes(15) + b"\x01"),
    (bytes(15) + b"\xff", bytes(14) + b"\x01\x00"),
    (b"\x00" + b"\xff" * 15, b"\x01" + bytes(15)),
    (b"\xff" * 16, b"\xff" * 16),  # the largest key: nothing is greater, so itself
])
def test_the_next_16_byte_key(key: bytes, after: bytes) -> None:
    assert _next16(key) == after


# --- index streams -------------------------------------------------------------------------------

_TS_SEQ = struct.Struct(">QQ")
VALUES = [_TS_SEQ.pack(ts, seq) for seq, ts in enumerate((10, 20, 20, 30, 50), start=1)]


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[lmdb.Environment, object]]:
    """A dupsort database: key b"t" holds VALUES; its neighbours b"s" and b"u" hold others that
    must never leak into b"t"'s stream; b"q" is empty territory before them."""
    path: Path = tmp_path_factory.mktemp("layout")
    env = lmdb.open(str(path), max_dbs=2, map_size=1 << 20)
    db = env.open_db(b"index", dupsort=True)
    with env.begin(write=True, db=db) as txn:
        for v in VALUES:
            txn.put(b"t", v, dupdata=True)
        txn.put(b"s", _TS_SEQ.pack(1, 100), dupdata=True)
        txn.put(b"s", _TS_SEQ.pack(99, 101), dupdata=True)
        txn.put(b"u", _TS_SEQ.pack(1, 200), dupdata=True)
        txn.put(b"u", _TS_SEQ.pack(99, 201), dupdata=True)
    yield env, db
    env.close()


BOUNDS = [None, _TS_SEQ.pack(0, 0), VALUES[0], _TS_SEQ.pack(20, 0), VALUES[2],
          _TS_SEQ.pack(25, 0), VALUES[4], _TS_SEQ.pack(60, 0)]


@pytest.mark.parametrize("desc", [False, True])
def test_a_stream_is_exactly_the_keys_values_within_lo_and_hi(
        index: tuple[lmdb.Environment, object], desc: bool) -> None:
    env, db = index
    with env.begin(db=db) as txn:
        for lo, hi in itertools.product(BOUNDS, BOUNDS):
            want = [v for v in VALUES if (lo is None or v >= lo) and (hi is None or v < hi)]
            got = list(_dup_stream(txn.cursor(db=db), b"t", lo, hi, desc))
            assert got == (want[::-1] if desc else want), (lo, hi, desc)


@pytest.mark.parametrize("desc", [False, True])
@pytest.mark.parametrize("key", [b"q", b"ta", b"v"])
def test_a_key_with_no_values_streams_nothing(index: tuple[lmdb.Environment, object], desc: bool,
                                              key: bytes) -> None:
    env, db = index
    with env.begin(db=db) as txn:
        for lo, hi in itertools.product(BOUNDS, BOUNDS):
            assert list(_dup_stream(txn.cursor(db=db), key, lo, hi, desc)) == []
