from __future__ import annotations

import os
from pathlib import Path

import pytest

from krepis import (
    ClosedError,
    InvalidTypeError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.journal import CLEAR_OP

from conftest import tree_snapshot

S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed


def log(ts: int, op: str = "op", rid: str = "req", status: LogStatus = C) -> TransactionLog:
    return TransactionLog(ts, op, rid, status)


# --- the spec's own tests, translated --------------------------------------------------------

def test_journal_persistence(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.log_transaction(TransactionLog(1234567890, "test_op", "req-001", LogStatus.Completed))
        assert journal.journal_count() == 1
    with SovereignJournal(store) as journal:
        assert journal.journal_count() == 1
        assert journal.get_recent_logs(10) == [
            TransactionLog(1234567890, "test_op", "req-001", LogStatus.Completed)]


def test_op_count_persistence(store: Path) -> None:
    with SovereignJournal(store) as journal:
        assert [journal.increment_op_count("test_counter") for _ in range(5)] == [1, 2, 3, 4, 5]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("test_counter") == 5
        assert journal.increment_op_count("test_counter") == 6


# --- every public method -----------------------------------------------------------------------

def test_recover_unknown_counter_is_zero(store: Path) -> None:
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("never") == 0
        assert journal.op_counts() == {}


def test_record_appends_and_counts_in_one_call(store: Path) -> None:
    with SovereignJournal(store) as journal:
        assert journal.record(log(1, "a"), increment="a") == 1
        assert journal.record(log(2, "a"), increment="a") == 2
        assert journal.record(log(3, "b")) is None
        assert journal.journal_count() == 3
        assert journal.op_counts() == {"a": 2}


def test_get_recent_logs_newest_first_numeric_then_arrival(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.log_transaction(log(1000, "first"))
        journal.log_transaction(log(999, "earlier"))
        journal.log_transaction(log(1000, "second"))
        journal.log_transaction(log(10_000, "latest"))
        assert [e.op_name for e in journal.get_recent_logs(10)] == ["latest", "second", "first", "earlier"]
        assert [e.op_name for e in journal.get_recent_logs(2)] == ["latest", "second"]
        assert journal.get_recent_logs(0) == []


def test_started_and_completed_in_same_millisecond_both_kept(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.log_transaction(log(42, "op", "req-1", S))
        journal.log_transaction(log(42, "op", "req-1", C))
        journal.log_transaction(log(42, "op", "req-1", C))
        assert journal.journal_count() == 3
        assert [e.status for e in journal.get_recent_logs(5)] == [C, C, S]


def test_query_filters(store: Path) -> None:
    with SovereignJournal(store) as journal:
        for ts in range(30):
            journal.log_transaction(log(ts, f"op{ts % 3}", f"r{ts % 2}", [S, C, F][ts % 3]))
        assert [e.timestamp for e in journal.query(op_name="op1")] == list(range(28, 0, -3))
        assert all(e.request_id == "r1" for e in journal.query(request_id="r1"))
        assert len(journal.query(request_id="r1")) == 15
        assert [e.timestamp for e in journal.query(status=F, limit=2)] == [29, 26]
        assert [e.timestamp for e in journal.query(since=10, until=13)] == [12, 11, 10]
        assert [e.timestamp for e in journal.query(since=10, until=13, newest_first=False)] == [10, 11, 12]
        got = journal.query(op_name="op0", request_id="r0", since=5, newest_first=False)
        assert [e.timestamp for e in got] == [6, 12, 18, 24]
        assert journal.query(op_name="nope") == []
        assert journal.query(limit=0) == []


def test_iter_logs_streams_past_chunk_boundaries(store: Path) -> None:
    with SovereignJournal(store) as journal:
        for start in range(0, 1300, 100):
            journal._write([(log(ts), log(ts).to_json().encode()) for ts in range(start, start + 100)], ())
        assert journal.journal_count() == 1300
        assert [e.timestamp for e in journal.iter_logs(newest_first=False)] == list(range(1300))
        assert [e.timestamp for e in journal.iter_logs(limit=600)] == list(range(1299, 699, -1))
        odd = [e.timestamp for e in journal.iter_logs(op_name="op", limit=700, newest_first=False)]
        assert odd == list(range(700))


def test_clear_all_is_durable_and_keeps_store_usable(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.record(log(1), increment="op")
        journal.record(log(1), increment="op2")
        journal.clear_all()
        # only the trace of the clear is left, as the new log's first entry
        [trace] = journal.query()
        assert (trace.op_name, trace.status, trace.seq) == (CLEAR_OP, LogStatus.Completed, 2)
        assert trace.request_id == "cleared 2 entries, 2 counters (log 0 ended, log 1 begins)"
        assert journal.op_counts() == {}
        assert journal.record(log(2), increment="op") == 1
    with SovereignJournal(store) as journal:
        assert journal.journal_count() == 2
        assert journal.get_recent_logs(5) == [log(2), trace] if log(2).timestamp > trace.timestamp \
            else [trace, log(2)]
        head = journal.tree_head()
        assert (head.size, head.first_seq, head.epoch) == (2, 2, 1)
        journal.verify()


def test_default_location_and_directory_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with SovereignJournal() as journal:
        journal.increment_op_count("x")
        assert journal.path == str(tmp_path / ".krepis" / "storage")
    assert (tmp_path / ".krepis" / "storage" / "data.mdb").is_file()
    assert (os.stat(tmp_path / ".krepis" / "storage").st_mode & 0o777) == 0o700


def test_closed_journal_refuses_use(store: Path) -> None:
    journal = SovereignJournal(store)
    journal.close()
    journal.close()
    assert journal.closed
    for call in (lambda: journal.journal_count(), lambda: journal.increment_op_count("x"),
                 lambda: journal.log_transaction(log(1)), lambda: journal.get_recent_logs(1)):
        with pytest.raises(ClosedError, match="closed"):
            call()


def test_two_journals_on_one_store_in_one_process(store: Path) -> None:
    a, b = SovereignJournal(store), SovereignJournal(store)
    try:
        a.increment_op_count("x")
        assert b.increment_op_count("x") == 2
        a.close()
        assert b.recover_op_count("x") == 2
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_store_open_across_fork_is_refused_in_the_child_and_parent_unharmed(store: Path) -> None:
    journal = SovereignJournal(store)
    journal.increment_op_count("x")
    reader = journal._storage._env.begin()  # type: ignore[attr-defined]  # a live parent reader
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 9
        try:
            try:
                journal.increment_op_count("x")
                code = 1
            except ClosedError:
                try:
                    SovereignJournal(store)
                    code = 2
                except StorageError as exc:
                    code = 0 if "forked" in str(exc) and str(store) in str(exc) else 3
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"\x00"
    os.waitpid(pid, 0)
    readers = journal._storage._env.readers()  # type: ignore[attr-defined]
    assert str(os.getpid()) in readers  # the child did not clear the parent's reader slot
    reader.abort()
    assert journal.increment_op_count("x") == 2  # the parent's handle still works
    journal.close()


# --- bad input: a clear error, and nothing written ---------------------------------------------

BAD_CALLS = [
    ("log_transaction", lambda j: j.log_transaction({"timestamp": 1}), InvalidTypeError, "TransactionLog"),
    ("log_transaction", lambda j: j.log_transaction(None), InvalidTypeError, "TransactionLog"),
    ("record", lambda j: j.record("x", increment="a"), InvalidTypeError, "TransactionLog"),
    ("record", lambda j: j.record(log(1), increment=""), ValidationError, "empty"),
    ("record", lambda j: j.record(log(1), increment="x" * 201), ValidationError, "limit is 200"),
    ("record", lambda j: j.record(log(1), increment=7), InvalidTypeError, "op_name must be a str"),
    ("increment_op_count", lambda j: j.increment_op_count(""), ValidationError, "empty"),
    ("increment_op_count", lambda j: j.increment_op_count(None), InvalidTypeError, "must be a str"),
    ("increment_op_count", lambda j: j.increment_op_count("é" * 101), ValidationError, "202 bytes"),
    ("recover_op_count", lambda j: j.recover_op_count(""), ValidationError, "empty"),
    ("get_recent_logs", lambda j: j.get_recent_logs(-1), ValidationError, "limit must be >= 0, got -1"),
    ("get_recent_logs", lambda j: j.get_recent_logs(1.5), InvalidTypeError, "limit must be an int"),
    ("query", lambda j: j.query(status="Done"), ValidationError, "Started, Completed, Failed; got 'Done'"),
    ("query", lambda j: j.query(status=3), InvalidTypeError, "status must be a str or a sequence"),
    ("query", lambda j: j.query(op_name=["a", ""]), ValidationError, "empty"),
    ("query", lambda j: j.query(order="random"), ValidationError, "order must be 'time' or 'append'"),
    ("query", lambda j: j.query(after=-1), ValidationError, "after must be a sequence number >= 0"),
    ("query", lambda j: j.query(after=99), ValidationError, "no entry with that seq"),
    ("query", lambda j: j.query(after=log(1)), ValidationError, "its seq is None"),
    ("query", lambda j: j.query(newest_first=1), InvalidTypeError, "newest_first must be a bool"),
    ("entry", lambda j: j.entry("0"), InvalidTypeError, "seq must be an int"),
    ("query", lambda j: j.query(since=-5), ValidationError, "outside"),
    ("query", lambda j: j.query(limit=-1), ValidationError, "limit"),
    ("query", lambda j: j.query(request_id=""), ValidationError, "empty"),
]


@pytest.mark.parametrize(("name", "call", "exc", "words"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_raises_and_writes_nothing(store: Path, name: str, call, exc: type, words: str) -> None:  # type: ignore[no-untyped-def]
    with SovereignJournal(store) as journal:
        journal.record(log(1), increment="op")
        journal._storage.checkpoint()  # (data.mdb up to date: only a bad call could change it now)
        before = tree_snapshot(store)
        with pytest.raises(exc, match=words) as info:
            call(journal)
        assert isinstance(info.value, JournalError)
        assert journal.journal_count() == 1
        assert journal.op_counts() == {"op": 1}
    after = tree_snapshot(store)
    assert after["data.mdb"] == before["data.mdb"]
    assert after["commit.log"] == before["commit.log"]


def test_bad_path_type(tmp_path: Path) -> None:
    with pytest.raises(InvalidTypeError, match="path must be"):
        SovereignJournal(42)  # type: ignore[arg-type]


def test_create_false_refuses_to_start_a_store(store: Path) -> None:
    with pytest.raises(StorageError, match=f"there is no krepis store at {store}"):
        SovereignJournal(store, create=False)
    assert not store.exists()
    SovereignJournal(store).close()
    with SovereignJournal(store, create=False) as journal:  # an existing store opens as usual
        assert journal.journal_count() == 0


# --- query arguments, each one reaching the engine (found by mutation testing) ----------------

def test_iter_logs_and_query_apply_the_same_filters(store: Path) -> None:
    with SovereignJournal(store) as journal:
        for ts in range(30):
            journal.log_transaction(log(ts, f"op{ts % 3}", f"r{ts % 2}", [S, C, F][ts % 3]))
        middle = journal.entry(12)
        cases = [dict(op_name="op1"), dict(request_id="r1"), dict(status="failed"), dict(since=10),
                 dict(until=5), dict(after=middle), dict(after=12), dict(limit=3, newest_first=False),
                 dict(order="append", after=20, newest_first=False),
                 dict(op_name=["op0", "op2"], status=[C, "STARTED"], since=3, until=25)]
        for filters in cases:
            streamed = [e.seq for e in journal.iter_logs(**filters)]  # type: ignore[arg-type]
            assert streamed == [e.seq for e in journal.query(**filters)], filters  # type: ignore[arg-type]
            assert 0 < len(streamed) < 30, filters
        assert [e.seq for e in journal.query(after=middle, limit=3)] == [11, 10, 9]
        assert [e.seq for e in journal.query(order="append", after=0, newest_first=False, limit=2)] == [1, 2]
        assert [e.seq for e in journal.query(order="append", after=3)] == [2, 1, 0]
        assert journal.query(op_name=[]) == [] and journal.query(status=[]) == []


def test_a_query_longer_than_one_chunk_returns_everything(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal._write([(log(ts), log(ts).to_json().encode()) for ts in range(1100)], ())
        assert [e.timestamp for e in journal.query(newest_first=False)] == list(range(1100))
        assert len(journal.query(limit=1030)) == 1030


@pytest.mark.parametrize("status", ["failed", "FAILED", "Failed", "fAiLeD", F, ["failed"], ("FAILED", F)])
def test_status_names_in_any_case(store: Path, status: object) -> None:
    with SovereignJournal(store) as journal:
        journal.log_transaction(log(1, status=C))
        journal.log_transaction(log(2, status=F))
        assert [e.timestamp for e in journal.query(status=status)] == [2]  # type: ignore[arg-type]


def test_query_argument_errors_name_the_value(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.log_transaction(log(1))
        with pytest.raises(InvalidTypeError, match="status must be a str or a sequence of str, got int"):
            journal.query(status=5)  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match="op_name must be a str or a sequence of str, got dict"):
            journal.query(op_name={"a": 1})  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="status must be a LogStatus or one of Started, Completed, "
                                                  "Failed; got 'done'"):
            journal.query(status="done")
        with pytest.raises(ValidationError, match=r"after must be a sequence number >= 0, got -1"):
            journal.query(after=-1)
        with pytest.raises(InvalidTypeError, match="after must be a TransactionLog or a sequence number, "
                                                   "got str"):
            journal.query(after="0")  # type: ignore[arg-type]
        with pytest.raises(ValidationError,
                           match=r"after must be an entry read from a journal \(its seq is None\)"):
            journal.query(after=log(1))
        with pytest.raises(ValidationError, match=r"after=7: the journal at .* has no entry with that seq"):
            journal.query(after=7)
        with pytest.raises(InvalidTypeError, match="seq must be an int, got str '0'"):
            journal.entry("0")  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match=r"seq must be an int, got float 0\.0"):
            journal.inclusion_proof(0.0)  # type: ignore[arg-type]
        with pytest.raises(KeyError, match="has no entry with seq 5"):
            journal.entry(5)


def test_repr_and_a_syncer_that_never_keeps_the_process_alive(store: Path) -> None:
    journal = SovereignJournal(store, flush="interval:50ms")
    assert repr(journal) == f"<SovereignJournal {str(store)!r} flush=interval:50ms open>"
    syncer = journal._syncer
    assert syncer is not None and syncer._thread.daemon  # a journal left open never blocks exit
    journal.close()
    assert repr(journal) == f"<SovereignJournal {str(store)!r} flush=interval:50ms closed>"
    unopened = SovereignJournal.__new__(SovereignJournal)
    assert repr(unopened) == "<SovereignJournal (not opened)>"


def test_the_longest_exportable_entry_is_accepted_and_one_byte_more_refused(store: Path) -> None:
    from krepis._model import encode_log

    def entry(extra: int) -> TransactionLog:
        base = TransactionLog(1, "op", "r", F, error="\x01" * 10000)
        size = len(encode_log(base))
        return TransactionLog(1, "op", "r", F, error="\x01" * 10000 + "a" * (65535 - size + extra))

    assert len(encode_log(entry(0))) == 65535
    with SovereignJournal(store) as journal:
        journal.log_transaction(entry(0))
        with pytest.raises(ValidationError, match=r"^the entry's canonical JSON is 65536 bytes; the limit is "
                                                  r"65535 \(a transparency-log entry bundle's\): shorten the "
                                                  r"error text \(control characters are escaped as 6 bytes "
                                                  r"each\)$"):
            journal.log_transaction(entry(1))
        with pytest.raises(InvalidTypeError, match=r"^log must be a TransactionLog, got str 'x'$"):
            journal.log_transaction("x")  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"in time order the cursor must be an existing entry$"):
            journal.query(after=9)
        assert journal.journal_count() == 1


def test_each_bad_argument_is_named(store: Path) -> None:
    with pytest.raises(StorageError, match=r"^storage path must not be empty$") as empty:
        SovereignJournal("")
    assert empty.value.path == ""
    with pytest.raises(InvalidTypeError, match=r"^path must be a str or os\.PathLike, got int$"):
        SovereignJournal(5)  # type: ignore[arg-type]
    with SovereignJournal(store) as journal:
        with pytest.raises(ValidationError, match=r"^request_id must not be empty"):
            journal.query(request_id="")
        for param in ("since", "until"):
            with pytest.raises(ValidationError, match=rf"^{param} 'whenever' is not a time"):
                journal.query(**{param: "whenever"})  # type: ignore[arg-type]
        with pytest.raises(InvalidTypeError, match=r"^newest_first must be a bool, got int$"):
            journal.query(newest_first=1)  # type: ignore[arg-type]


def test_concurrent_writers_share_one_commit(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While one commit runs, callers queue and sleep; the next leader commits them together."""
    import threading

    from krepis.storage.lmdb import LmdbStorage

    gate = threading.Event()
    batches: list[int] = []

    class Gated(LmdbStorage):
        def write_batch(self, requests):  # type: ignore[no-untyped-def]
            batches.append(len(requests))
            if len(batches) == 1:
                gate.wait(60)
            return super().write_batch(requests)

    monkeypatch.setattr("krepis.journal._journal.open_storage",
                        lambda loc, durable=True, create=True: Gated(loc, durable=durable, create=create))
    with SovereignJournal(store) as journal:
        threads = [threading.Thread(target=journal.increment_op_count, args=("c",)) for _ in range(6)]
        threads[0].start()
        while not batches:
            threads[0].join(0.001)
        for t in threads[1:]:
            t.start()
        try:
            for _ in range(60_000):
                if len(journal._commit._queue) == 5:
                    break
                threads[0].join(0.001)
            assert len(journal._commit._queue) == 5, "the callers did not wait for the running commit"
        finally:
            gate.set()
        for t in threads:
            t.join()
        assert batches == [1, 5] and journal.recover_op_count("c") == 6
