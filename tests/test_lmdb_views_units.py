"""The LMDB store's reads over LMDB plus the commit log's tail (``storage/lmdb/_views``): every
read combines one LMDB snapshot with the tail's records LMDB has not applied yet.

Real stores on disk, with the background applier kept from starting, so each test decides which
writes LMDB holds and which wait in the tail. Failures of LMDB itself are injected by handing the
store a thin wrapper of its real environment whose transactions raise a real ``lmdb`` error
(every value read still comes from LMDB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import ClosedError, CorruptStorageError, LogStatus, StorageError, TransactionLog
from krepis._model import encode_log, make_log
from krepis.storage import Query, WriteRequest
from krepis.storage.lmdb import LmdbStorage, _store
from krepis.storage.lmdb._apply import apply_tail
from krepis.tlog._merkle import append_leaf, root_from_frontier
from rawlmdb import edit

S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed
N = 60


@pytest.fixture(autouse=True)
def _no_applier(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes wait in the tail until a test applies them."""
    monkeypatch.setattr(_store, "start_applier", lambda shared: None)


def _log(n: int) -> TransactionLog:
    """Entry n: its timestamp a permutation of 0…59 (time order is not append order), ops a/b/c
    in turn, request ids r0…r4, statuses in runs of three, its duration n (to recognise it)."""
    return TransactionLog((n * 37) % N, "abc"[n % 3], f"r{n % 5}", (S, C, F)[(n // 3) % 3], duration_us=n)


def _write(s: LmdbStorage, logs: list[TransactionLog], *, counted: bool = True) -> None:
    s.write_batch([WriteRequest([(log, encode_log(log))], [log.op_name.encode()] if counted else [])
                   for log in logs])


def _apply(s: LmdbStorage) -> None:
    with s._shared.writer_lock():
        apply_tail(s._shared)


def _tail_seqs(s: LmdbStorage) -> list[int]:
    return [log.seq for record in s._shared.tail.records for log in record.logs()]  # type: ignore[misc]


@pytest.fixture
def split(tmp_path: Path) -> Iterator[LmdbStorage]:
    """60 entries: 0…29 applied to LMDB, 30…59 in the tail, in records of 1, 2, 3, 4 … entries."""
    s = LmdbStorage(tmp_path / "split")
    try:
        _write(s, [_log(n) for n in range(30)])
        _apply(s)
        n = 30
        size = 1
        while n < N:
            _write(s, [_log(k) for k in range(n, min(N, n + size))])  # one record per write_batch
            n += size
            size += 1
        assert _tail_seqs(s) == list(range(30, N))
        yield s
    finally:
        s.close()


@pytest.fixture
def tail_only(tmp_path: Path) -> Iterator[LmdbStorage]:
    """60 entries, every one in the tail (three records)."""
    s = LmdbStorage(tmp_path / "tail")
    try:
        for part in range(3):
            _write(s, [_log(n) for n in range(part * 20, part * 20 + 20)])
        assert _tail_seqs(s) == list(range(N))
        yield s
    finally:
        s.close()


def _key(query: Query) -> Callable[[TransactionLog], tuple[int, ...]]:
    if query.order == "append":
        return lambda log: (log.seq or 0,)
    return lambda log: (log.timestamp, log.seq or 0)


def _expected(query: Query, after: TransactionLog | None, limit: int) -> list[int]:
    key = _key(query)
    logs = [make_log(x.timestamp, x.op_name, x.request_id, x.status, x.duration_us, x.error, n)
            for n, x in enumerate(_log(n) for n in range(N))]
    found = [log for log in logs if query.matches(log)]
    if after is not None and after.seq is not None:
        bound = key(after)
        found = [log for log in found if (key(log) < bound if query.newest_first else key(log) > bound)]
    found.sort(key=key, reverse=query.newest_first)
    return [log.seq for log in found[:limit]]  # type: ignore[misc]


def _seqs(logs: list[TransactionLog]) -> list[int]:
    assert all(log.duration_us == log.seq for log in logs)  # each entry read back whole
    return [log.seq for log in logs]  # type: ignore[misc]


QUERIES = [
    Query(), Query(since=10, until=40), Query(statuses=(S, F)), Query(op_names=("b", "never", "c")),
    Query(request_id="r2"), Query(request_id="r3", op_names=("a",), statuses=(C, F)),
    Query(order="append"), Query(order="append", op_names=("c",)), Query(order="append", since=30),
]


@pytest.mark.parametrize("which", ["split", "tail_only"])
def test_scans_page_through_lmdb_and_the_tail_in_order(which: str, request: pytest.FixtureRequest) -> None:
    s: LmdbStorage = request.getfixturevalue(which)
    for base in QUERIES:
        for desc in (True, False):
            query = Query(since=base.since, until=base.until, request_id=base.request_id,
                          op_names=base.op_names, statuses=base.statuses, newest_first=desc, order=base.order)
            want = _expected(query, None, N)
            for page in (1, 2, 7, N):
                got: list[int] = []
                after = None
                while True:
                    chunk = s.scan(query, after=after, limit=page)
                    assert _seqs(chunk) == _expected(query, after, page), (query, page, after)
                    got += _seqs(chunk)
                    if len(chunk) < page:
                        break
                    after = chunk[-1]
                assert got == want, (query, page)


def test_a_cursor_without_a_seq_starts_from_the_first_entry_in_order(split: LmdbStorage) -> None:
    unnumbered = TransactionLog(30, "a", "r", C)
    for query in (Query(), Query(newest_first=False), Query(order="append"),
                  Query(order="append", newest_first=False)):
        assert _seqs(split.scan(query, after=unnumbered, limit=5)) == _expected(query, None, 5)


@pytest.mark.parametrize("limit", [0, -1])
def test_a_scan_of_no_entries_returns_none(split: LmdbStorage, limit: int) -> None:
    for query in (Query(), Query(order="append"), Query(newest_first=False)):
        assert split.scan(query, after=None, limit=limit) == []


def test_entries_are_read_from_lmdb_and_from_every_tail_record(split: LmdbStorage) -> None:
    for seq in range(N):
        got = split.get_entry(seq)
        assert got is not None and got.seq == seq and got == make_log(
            _log(seq).timestamp, _log(seq).op_name, _log(seq).request_id, _log(seq).status, seq, None, seq)
    for seq in (N, N + 1, 2**64 - 1, 2**64, -1, -(2**64)):
        assert split.get_entry(seq) is None


def test_entries_are_read_from_lmdb_alone(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    try:
        _write(s, [_log(n) for n in range(3)])
        _apply(s)
        assert _tail_seqs(s) == []
        assert [s.get_entry(n).duration_us for n in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
        assert s.get_entry(3) is None and s.get_entry(2**64 - 1) is None
    finally:
        s.close()


def test_counts_and_the_sequence_add_the_tail_to_lmdb(split: LmdbStorage, tail_only: LmdbStorage) -> None:
    for s in (split, tail_only):
        assert s.entry_count() == N
        assert s.next_seq() == N
        assert s.get_counts() == {"a": 20, "b": 20, "c": 20}
        assert [s.get_count(name) for name in (b"a", b"b", b"c", b"never")] == [20, 20, 20, 0]
        assert s.op_names() == ["a", "b", "c"]
        assert s.live_first_seq() == 0
    _apply(split)
    assert (split.entry_count(), split.next_seq(), split.get_counts()) == (N, N, {"a": 20, "b": 20, "c": 20})


def test_a_counter_is_lmdb_s_value_plus_the_tail_s_increments_and_is_kept(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    try:
        s.write_batch([WriteRequest([], [b"x", b"x", b"y"])])
        _apply(s)
        s.write_batch([WriteRequest([], [b"x"]), WriteRequest([], [b"z"])])
        assert s.get_count(b"x") == 3 and s.get_count(b"y") == 1 and s.get_count(b"z") == 1
        assert s._shared.tail.counters[b"x"] == 3  # kept: the next read needs no LMDB
        s.write_batch([WriteRequest([], [b"x"])])
        assert s.get_count(b"x") == 4
        assert s.get_counts() == {"x": 4, "y": 1, "z": 1}
    finally:
        s.close()


def test_only_counter_keys_of_the_stats_table_are_counters(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    s.write_batch([WriteRequest([], [b"x"])])
    s.close()
    edit(tmp_path / "store", lambda txn, db: (txn.put(b"a-key", b"\0" * 8, db=db(b"stats")),
                                              txn.put(b"zz-key", b"\0" * 8, db=db(b"stats"))))
    s = LmdbStorage(tmp_path / "store")
    try:
        assert s.get_counts() == {"x": 1}
    finally:
        s.close()


def test_only_name_keys_of_the_op_table_are_op_names(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    _write(s, [_log(0), _log(1)])
    s.close()
    edit(tmp_path / "store", lambda txn, db: (txn.put(b"m-key", b"\0" * 4, db=db(b"ops")),
                                              txn.put(b"o-key", b"\0" * 4, db=db(b"ops"))))
    s = LmdbStorage(tmp_path / "store")
    try:
        assert s.op_names() == ["a", "b"]
        _write(s, [_log(2)])  # "c" in the tail only
        assert s.op_names() == ["a", "b", "c"]
    finally:
        s.close()


def _refused(location: Path, read: Callable[[LmdbStorage], object], message: str) -> None:
    s = LmdbStorage(location)
    try:
        with pytest.raises(CorruptStorageError) as info:
            read(s)
        assert str(info.value) == f"storage at {location}: {message}"
        assert info.value.path == str(location)
    finally:
        s.close()


def test_a_counter_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    s.close()
    edit(tmp_path / "store", lambda txn, db: txn.put(b"op_count:\xff", b"\0" * 8, db=db(b"stats")))
    _refused(tmp_path / "store", lambda s: s.get_counts(),
             "malformed counter name: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")


def test_an_op_name_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    s.close()
    edit(tmp_path / "store", lambda txn, db: txn.put(b"n\xff", b"\0" * 4, db=db(b"ops")))
    _refused(tmp_path / "store", lambda s: s.op_names(),
             "malformed op table: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte")


# -- the tree ---------------------------------------------------------------------------------------

def _root(logs: list[TransactionLog]) -> tuple[int, bytes]:
    frontier: list[bytes] = []
    size = 0
    for log in logs:
        size = append_leaf(frontier, size, sha256(b"\x00" + encode_log(log)).digest())
    return size, root_from_frontier(frontier)


def test_the_tree_head_and_verify_count_the_tail(split: LmdbStorage, tail_only: LmdbStorage) -> None:
    size, root = _root([_log(n) for n in range(N)])
    for s in (split, tail_only):
        head = s.tree_head()
        assert (head.size, head.root, head.first_seq, head.epoch) == (size, root, 0, 0)
        report = s.verify()
        assert (report.entries, report.tree_size, report.root, report.tree_nodes) == (N, N, root, 0)


def test_verify_counts_the_stored_subtrees_the_tail_completes(tmp_path: Path) -> None:
    """Every 256 leaves make a stored subtree of height 8, every 65,536 one of height 16: the
    count is the same whether the last entry waits in the tail or LMDB holds it."""
    s = LmdbStorage(tmp_path / "store")
    try:
        logs = [TransactionLog(n, "op", "r", C) for n in range(2**16 + 1)]
        for start in range(0, 2**16, 4096):
            s.write_batch([WriteRequest([(log, encode_log(log)) for log in logs[start:start + 4096]], [])])
            _apply(s)
        s.write_batch([WriteRequest([(logs[-1], encode_log(logs[-1]))], [])])
        assert _tail_seqs(s) == [2**16]
        size, root = _root(logs)
        pending = s.verify()
        assert (pending.entries, pending.tree_size, pending.root, pending.tree_nodes) == \
            (size, size, root, 256 + 1)
        _apply(s)
        assert s.verify() == pending
    finally:
        s.close()


def test_verify_names_a_tail_record_that_does_not_continue_lmdb(split: LmdbStorage) -> None:
    record = split._shared.tail.records[1]
    record.first_seq = 40  # (catching up refuses such a record from another process first)
    with pytest.raises(CorruptStorageError) as info:
        split.verify()
    assert str(info.value) == (f"storage at {split.location}: the commit log's record at {record.position} "
                               "begins at seq 40, not at 31")
    assert info.value.path == split.location


def test_a_stored_subtree_the_tail_completes_is_stored_by_applying_it(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    try:
        logs = [TransactionLog(n, "op", "r", C) for n in range(300)]
        s.write_batch([WriteRequest([(log, encode_log(log)) for log in logs[:200]], [])])
        _apply(s)
        s.write_batch([WriteRequest([(log, encode_log(log)) for log in logs[200:]], [])])
        assert _tail_seqs(s) == list(range(200, 300))
        node = s.tree_node(8, 0)
        assert node == _subtree(logs[:256]) and type(node) is bytes
        assert _tail_seqs(s) == []  # applied to find it
        assert s.tree_node(8, 0) == node and s.tree_node(8, 1) is None and s.tree_node(16, 0) is None
    finally:
        s.close()


def _subtree(logs: list[TransactionLog]) -> bytes:
    return _root(logs)[1]


def test_leaf_hashes_come_from_lmdb_and_every_tail_record(split: LmdbStorage) -> None:
    leaves = [sha256(b"\x00" + encode_log(_log(n))).digest() for n in range(N)]
    for start, count in ((0, N), (0, 30), (29, 2), (30, 30), (31, 5), (33, 20), (59, 1), (10, 45), (5, 0)):
        assert split.leaf_hashes(0, start, count) == leaves[start:start + count], (start, count)
    assert split.leaf_hashes(0, 3, -1) == []
    for start, count, missing in ((0, N + 1, N), (58, 3, N), (N, 1, N), (70, 2, 70)):
        with pytest.raises(CorruptStorageError) as info:
            split.leaf_hashes(0, start, count)
        assert str(info.value) == f"storage at {split.location}: entry {missing} is missing"
        assert info.value.path == split.location


def test_leaf_hashes_count_from_the_log_s_first_seq(tmp_path: Path) -> None:
    s = LmdbStorage(tmp_path / "store")
    try:
        _write(s, [_log(n) for n in range(3)])
        s.clear()  # the new log begins at seq 3
        _write(s, [_log(n) for n in range(3, 8)])
        _apply(s)
        _write(s, [_log(n) for n in range(8, 10)])
        leaves = [sha256(b"\x00" + encode_log(_log(n))).digest() for n in range(3, 10)]
        assert s.leaf_hashes(3, 0, 7) == leaves
        assert s.leaf_hashes(3, 4, 3) == leaves[4:]
        assert s.tree_head().size == 7 and s.tree_head().first_seq == 3
    finally:
        s.close()


@pytest.mark.parametrize("gone", [0, 7, 29])
def test_leaf_hashes_name_an_entry_missing_from_lmdb(tmp_path: Path, gone: int) -> None:
    s = LmdbStorage(tmp_path / "store")
    _write(s, [_log(n) for n in range(30)])
    s.close()
    edit(tmp_path / "store", lambda txn, db: txn.delete(gone.to_bytes(8, "big"), db=db(b"entries")))
    _refused(tmp_path / "store", lambda s: s.leaf_hashes(0, 0, 30), f"entry {gone} is missing")
    if gone:
        s = LmdbStorage(tmp_path / "store")
        try:
            assert len(s.leaf_hashes(0, 0, gone)) == gone  # the entries before it are there
        finally:
            s.close()


# -- a snapshot older than the tail, and the log pointer -------------------------------------------

class _Env:
    """The store's real LMDB environment; ``begin`` hands out the queued transactions first."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.queued: list[Any] = []

    def begin(self, **kwargs: Any) -> Any:
        return self.queued.pop(0) if self.queued else self.env.begin(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


SNAPSHOT_READS: list[tuple[str, Callable[[LmdbStorage], object], object]] = [
    ("entry_count", lambda s: s.entry_count(), N),
    ("next_seq", lambda s: s.next_seq(), N),
    ("scan", lambda s: len(s.scan(Query(), after=None, limit=100)), N),
    ("get_entry", lambda s: s.get_entry(45).seq, 45),  # type: ignore[union-attr]
    ("get_counts", lambda s: s.get_counts(), {"a": 20, "b": 20, "c": 20}),
    ("tree_head", lambda s: s.tree_head().size, N),
]


@pytest.mark.parametrize(("name", "read", "want"), SNAPSHOT_READS, ids=[r[0] for r in SNAPSHOT_READS])
def test_a_snapshot_older_than_the_tail_is_taken_again(split: LmdbStorage, name: str,
                                                       read: Callable[[LmdbStorage], object],
                                                       want: object) -> None:
    """The applier may apply (and drop from the tail) records between a read's look at the tail
    and its LMDB snapshot: the read takes a newer snapshot rather than missing them."""
    env = _Env(split._env)
    split._env = env
    stale = split._shared.env.begin()  # before the records of seqs 30… are applied
    _apply(split)
    env.queued.append(stale)
    assert read(split) == want
    assert env.queued == []


def test_a_log_pointer_that_went_back_is_named(split: LmdbStorage) -> None:
    """LMDB's pointer behind the position up to which this process saw LMDB apply the log:
    data.mdb went back under a running process (a snapshot from before the apply stands for it)."""
    env = _Env(split._env)
    split._env = env
    stale = split._shared.env.begin()
    before = split._shared.tail.base
    _apply(split)
    env.queued.append(stale)
    with pytest.raises(CorruptStorageError) as info:
        split.get_count(b"never-read")
    assert str(info.value) == (f"storage at {split.location}: LMDB's commit-log pointer went back "
                               f"({before} < {split._shared.tail.base})")
    assert info.value.path == split.location


# -- failures of LMDB itself, named with the store and what was being done -------------------------

class _FailingTxn:
    """A real read transaction that fails every read but the commit-log pointer's."""

    def __init__(self, txn: Any) -> None:
        self.txn = txn
        self.aborted = False

    def get(self, key: bytes, **kwargs: Any) -> Any:
        if key == b"log":
            return self.txn.get(key, **kwargs)
        raise lmdb.ReadersFullError("injected")

    def cursor(self, **kwargs: Any) -> Any:
        raise lmdb.ReadersFullError("injected")

    def stat(self, db: Any) -> Any:
        raise lmdb.ReadersFullError("injected")

    def abort(self) -> None:
        self.aborted = True
        self.txn.abort()

    def __enter__(self) -> _FailingTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


class _FailingEnv(_Env):
    def __init__(self, env: Any, *, at_begin: bool) -> None:
        super().__init__(env)
        self.at_begin = at_begin
        self.txns: list[_FailingTxn] = []

    def begin(self, **kwargs: Any) -> Any:
        if self.at_begin:
            raise lmdb.ReadersFullError("injected")
        self.txns.append(_FailingTxn(self.env.begin(**kwargs)))
        return self.txns[-1]


READS: list[tuple[str, Callable[[LmdbStorage], object], str]] = [
    ("get_count", lambda s: s.get_count(b"never-read"), "reading a counter"),
    ("get_counts", lambda s: s.get_counts(), "reading counters"),
    ("entry_count", lambda s: s.entry_count(), "counting entries"),
    ("next_seq", lambda s: s.next_seq(), "reading the sequence"),
    ("live_first_seq", lambda s: s.live_first_seq(), "reading the tree"),
    ("op_names", lambda s: s.op_names(), "reading op names"),
    ("get_entry", lambda s: s.get_entry(3), "reading the journal"),
    ("scan", lambda s: s.scan(Query(), after=None, limit=5), "reading the journal"),
    ("scan append", lambda s: s.scan(Query(order="append"), after=None, limit=5), "reading the journal"),
    ("tree_head", lambda s: s.tree_head(), "reading the tree"),
    ("tree_node", lambda s: s.tree_node(8, 0), "reading the tree"),
    ("leaf_hashes", lambda s: s.leaf_hashes(0, 0, 5), "reading the journal"),
    ("checkpoints", lambda s: s.checkpoints(), "reading checkpoints"),
    ("verify", lambda s: s.verify(), "verifying"),
]


@pytest.mark.parametrize("at_begin", [True, False], ids=["at the snapshot", "inside it"])
@pytest.mark.parametrize(("name", "read", "doing"), READS, ids=[r[0] for r in READS])
def test_an_lmdb_failure_of_a_read_names_the_store_and_the_read(
        tmp_path: Path, name: str, read: Callable[[LmdbStorage], object], doing: str, at_begin: bool) -> None:
    s = LmdbStorage(tmp_path / "store")
    try:
        _write(s, [_log(n) for n in range(10)])
        _apply(s)  # LMDB holds them: every read goes to LMDB
        env = _FailingEnv(s._env, at_begin=at_begin)
        s._env = env
        with pytest.raises(StorageError) as info:
            read(s)
        assert str(info.value) == f"storage at {s.location} failed while {doing}: injected"
        assert info.value.path == s.location
        assert all(txn.aborted for txn in env.txns)  # no snapshot left open
        s._env = env.env
        assert s.entry_count() == 10  # the store reads on
    finally:
        s.close()


def test_a_failure_to_apply_the_log_names_the_store(split: LmdbStorage,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shared = split._shared
    real = shared.env
    shared.env = _FailingEnv(real, at_begin=True)
    try:
        with pytest.raises(StorageError) as info:
            split.tree_node(8, 0)  # missing, and the tail may complete it: LMDB must apply first
        assert str(info.value) == \
            f"storage at {split.location} failed while applying the commit log: injected"
        assert info.value.path == split.location
    finally:
        shared.env = real
    import fcntl

    def no_lock(fd: int, op: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    with pytest.raises(StorageError) as info:
        split.checkpoint()
    monkeypatch.undo()
    assert str(info.value) == (f"storage at {split.location} failed while applying the commit log: "
                               "[Errno 28] No space left on device")
    assert info.value.path == split.location


def test_applying_clears_an_earlier_passing_failure_of_the_applier(split: LmdbStorage) -> None:
    split._shared.apply_error = OSError(28, "No space left on device")
    split.checkpoint()
    assert split._shared.apply_error is None and _tail_seqs(split) == []


@pytest.mark.parametrize(("name", "read", "doing"), READS, ids=[r[0] for r in READS])
def test_a_closed_store_refuses_every_read(tmp_path: Path, name: str, read: Callable[[LmdbStorage], object],
                                           doing: str) -> None:
    s = LmdbStorage(tmp_path / "store")
    _write(s, [_log(n) for n in range(3)])
    other = LmdbStorage(tmp_path / "store")  # keeps the environment open
    try:
        s.close()
        with pytest.raises(ClosedError) as info:
            read(s)
        assert str(info.value) == f"the journal at {s.location} is closed"
    finally:
        other.close()
