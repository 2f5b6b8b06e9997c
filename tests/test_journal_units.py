"""The journal class (``krepis.journal._journal``) at its edges, on real LMDB stores: the exact
text of each refusal (the path's type, an empty path, a closed or forked journal, a failed
background sync, ``newest_first``, ``order``, ``after``, ``seq``, an entry over the size limit,
retention without an archive) and what it names; the repr; close() under each policy; the trace
``clear_all`` leaves; the chunked scan at its boundaries; cursors; the retention and archive
arguments read from the environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import krepis.journal._fork as fork
import krepis.journal._journal as journal_module
from archivekit import FIRST1, Built, built
from krepis import (
    ClosedError,
    FlushPolicy,
    InvalidTypeError,
    LogStatus,
    RetentionPolicy,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.journal._archived import _SCAN_CHUNK
from krepis.journal._journal import CLEAR_OP, MAX_ENTRY_BYTES, _encode_entry, _retention
from test_journal_commit_units import Gated

__all__ = ["built"]


def log(ts: int, op: str = "op", rid: str = "r", status: LogStatus = LogStatus.Completed) -> TransactionLog:
    return TransactionLog(ts, op, rid, status)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "s", flush="sync") as j:
        yield j


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> list[Gated]:
    made: list[Gated] = []

    def open_gated(location: str, durable: bool = True, create: bool = True) -> Gated:
        made.append(Gated(os.fspath(location)))
        return made[-1]

    monkeypatch.setattr(journal_module, "open_storage", open_gated)
    return made


# -- opening and closing -------------------------------------------------------------------------
def test_the_path_is_checked_first(tmp_path: Path) -> None:
    with pytest.raises(InvalidTypeError) as info:
        SovereignJournal(5)  # type: ignore[arg-type]
    assert str(info.value) == "path must be a str or os.PathLike, got int"
    with pytest.raises(StorageError) as empty:
        SovereignJournal("")
    assert str(empty.value) == "storage path must not be empty" and empty.value.path == ""
    with pytest.raises(StorageError):
        SovereignJournal(Path(""))
    assert repr(SovereignJournal.__new__(SovereignJournal)) == "<SovereignJournal (not opened)>"


def test_the_repr_and_the_properties(tmp_path: Path) -> None:
    journal = SovereignJournal(tmp_path / "s", flush="interval:15ms")
    assert repr(journal) == f"<SovereignJournal {str(tmp_path / 's')!r} flush=interval:15ms open>"
    assert journal.policy == FlushPolicy.interval(15) and journal.path == str(tmp_path / "s")
    assert not journal.closed
    journal.close()
    assert repr(journal) == f"<SovereignJournal {str(tmp_path / 's')!r} flush=interval:15ms closed>"
    assert journal.closed
    journal.close()  # idempotent


def test_a_closed_journal_refuses_every_call_naming_its_path(journal: SovereignJournal) -> None:
    journal.close()
    for call in (lambda: journal.log_transaction(log(1)), journal.flush, journal.op_counts,
                 lambda: journal.record(log(1), increment="x"), lambda: journal.query(),
                 journal.clear_all, lambda: journal.entry(0)):
        with pytest.raises(ClosedError) as info:
            call()
        assert str(info.value) == f"the journal at {journal.path} is closed"


def test_a_journal_of_a_parent_process_refuses_and_close_releases_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gated: list[Gated]) -> None:
    journal = SovereignJournal(tmp_path / "s", flush="interval:10ms")
    [storage] = gated
    journal.increment_op_count("x")
    monkeypatch.setattr(fork, "_fork_generation", fork.generation() + 1)
    with pytest.raises(ClosedError) as info:
        journal.increment_op_count("x")
    assert "was opened in a parent process" in str(info.value)
    syncs = storage.syncs
    journal.close()  # in the child: the parent's store, threads and connections are left alone
    assert journal.closed and storage.syncs == syncs
    assert storage.get_count(b"x") == 1  # still open: the "parent" reads it
    monkeypatch.undo()
    assert journal._syncer is not None
    journal._syncer.stop()
    storage.close()


def test_close_syncs_under_interval_and_reports_a_failed_background_sync(
        tmp_path: Path, gated: list[Gated]) -> None:
    journal = SovereignJournal(tmp_path / "s", flush="interval:3600000ms")  # no sync of its own
    [storage] = gated
    journal.increment_op_count("x")
    assert storage.syncs == 0
    journal.close()
    assert storage.syncs == 1  # close() made it durable
    journal = SovereignJournal(tmp_path / "s2", flush="sync")
    journal.increment_op_count("x")
    journal.close()
    assert gated[1].syncs == 0  # nothing to do under sync


def _failed_sync(journal: SovereignJournal, storage: Gated) -> OSError:
    failure = OSError(5, "Input/output error")
    storage.sync_fail = failure
    assert journal._syncer is not None
    journal._syncer.mark_dirty()
    journal._syncer._thread.join(10)
    assert journal._syncer.error is failure
    return failure


def test_a_failed_background_sync_is_every_later_writes_and_flushs_error(
        tmp_path: Path, gated: list[Gated]) -> None:
    journal = SovereignJournal(tmp_path / "s", flush="interval:1ms")
    [storage] = gated
    failure = _failed_sync(journal, storage)
    for call in (lambda: journal.increment_op_count("x"), journal.flush,
                 lambda: journal.log_transaction(log(1))):
        with pytest.raises(StorageError) as info:
            call()
        assert str(info.value) == f"background sync of {journal.path} failed: [Errno 5] Input/output error"
        assert info.value.path == journal.path and info.value.__cause__ is failure
    assert storage.batches == []  # nothing written after the failure
    assert storage.syncs == 1
    with pytest.raises(StorageError, match=r"^background sync of"):
        journal.close()
    assert journal.closed and storage.syncs == 2  # close() still synced, then reported it


def test_flush_syncs_now(tmp_path: Path, gated: list[Gated]) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:3600000ms") as journal:
        journal.increment_op_count("x")
        journal.flush()
        assert gated[0].syncs == 1


# -- writes --------------------------------------------------------------------------------------
def test_record_and_increment_return_the_new_counts(journal: SovereignJournal) -> None:
    assert journal.record(log(1), increment="a") == 1
    assert journal.record(log(2), increment="a") == 2
    assert journal.record(log(3)) is None
    assert journal.increment_op_count("b") == 1
    assert journal.log_transaction(log(4)) is None  # type: ignore[func-returns-value]
    assert journal.op_counts() == {"a": 2, "b": 1}
    assert journal.journal_count() == 4
    with pytest.raises(ValidationError):
        journal.record(log(5), increment="")
    assert journal.journal_count() == 4  # a bad counter name writes nothing, not even the entry


def test_an_entry_at_the_size_limit_is_taken_and_one_byte_more_refused(journal: SovereignJournal) -> None:
    base = len(_encode_entry(TransactionLog(1, "op", "r", LogStatus.Failed, error="e"))[1]) - 1
    controls, rest = divmod(MAX_ENTRY_BYTES - base, 6)  # a control character is escaped as 6 bytes
    text = "\x01" * controls + "e" * rest
    fits = TransactionLog(1, "op", "r", LogStatus.Failed, error=text)
    assert len(_encode_entry(fits)[1]) == MAX_ENTRY_BYTES == 65535
    journal.log_transaction(fits)
    over = TransactionLog(1, "op", "r", LogStatus.Failed, error=text + "e")
    with pytest.raises(ValidationError) as info:
        journal.log_transaction(over)
    assert str(info.value) == (
        "the entry's canonical JSON is 65536 bytes; the limit is 65535 (a transparency-log entry "
        "bundle's): shorten the error text (control characters are escaped as 6 bytes each)")
    with pytest.raises(InvalidTypeError) as not_a_log:
        journal.log_transaction({"op": 1})  # type: ignore[arg-type]
    assert str(not_a_log.value) == "log must be a TransactionLog, got dict {'op': 1}"
    assert journal.journal_count() == 1


def test_clear_all_leaves_its_trace_and_is_synced_under_interval(tmp_path: Path, gated: list[Gated]) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:3600000ms") as journal:
        for i in range(3):
            journal.record(log(i), increment=f"c{i % 2}")
        journal.clear_all()
        assert gated[0].syncs == 1  # durable at once, whatever the policy
        [trace] = journal.query()
        assert (trace.op_name, trace.status) == (CLEAR_OP, LogStatus.Completed) == ("journal_cleared",
                                                                                     LogStatus.Completed)
        assert trace.request_id == "cleared 3 entries, 2 counters (log 0 ended, log 1 begins)"
        journal.clear_all()
        assert journal.query()[0].request_id == "cleared 1 entries, 0 counters (log 1 ended, log 2 begins)"
    with SovereignJournal(tmp_path / "t", flush="sync") as journal:
        journal.clear_all()
        assert gated[1].syncs == 0  # under sync, the clear was durable when it returned


# -- reads ---------------------------------------------------------------------------------------
def test_the_read_arguments_refused_with_their_texts(journal: SovereignJournal) -> None:
    journal.log_transaction(log(1))
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"newest_first": 1}, InvalidTypeError, "newest_first must be a bool, got int"),
        ({"order": "seq"}, ValidationError, "order must be 'time' or 'append', got 'seq'"),
        ({"after": -1}, ValidationError, "after must be a sequence number >= 0, got -1"),
        ({"after": "3"}, InvalidTypeError, "after must be a TransactionLog or a sequence number, got str"),
        ({"after": True}, InvalidTypeError, "after must be a TransactionLog or a sequence number, got bool"),
        ({"after": log(1)}, ValidationError, "after must be an entry read from a journal (its seq is None)"),
        ({"after": 7}, ValidationError, f"after=7: the journal at {journal.path} has no entry with that "
                                        "seq; in time order the cursor must be an existing entry"),
        ({"limit": -1}, ValidationError, "limit must be >= 0, got -1"),
        ({"since": "garbage"}, ValidationError, "since 'garbage' is not a time;"),
        ({"until": "garbage"}, ValidationError, "until 'garbage' is not a time;"),
        ({"op_name": ["ok", ""]}, ValidationError, "op_name"),
        ({"request_id": 5}, InvalidTypeError, "request_id"),
    ]
    for kwargs, exc, text in cases:
        with pytest.raises(exc) as info:
            journal.query(**kwargs)  # type: ignore[arg-type]
        if text in ("op_name", "request_id") or text.endswith(";"):  # (the model's and time's texts)
            assert str(info.value).startswith(text), kwargs
        else:
            assert str(info.value) == text, kwargs
        with pytest.raises(exc):
            journal.iter_logs(**kwargs)  # type: ignore[arg-type]  # refused when called
    with pytest.raises(InvalidTypeError) as seq:
        journal.entry("1")  # type: ignore[arg-type]
    assert str(seq.value) == "seq must be an int, got str '1'"
    with pytest.raises(KeyError) as missing:
        journal.entry(5)
    assert missing.value.args == (f"the journal at {journal.path} has no entry with seq 5",)
    with pytest.raises(InvalidTypeError) as limit:
        journal.get_recent_logs("2")  # type: ignore[arg-type]
    assert str(limit.value) == "limit must be an int, got str '2'"


def test_cursors_and_either_of_lists(journal: SovereignJournal) -> None:
    for i in range(6):
        journal.log_transaction(log(100 - i, op=f"op{i % 2}", rid=f"r{i}"))
    entries = journal.query(order="append", newest_first=False)
    assert [e.seq for e in entries] == list(range(6))
    assert [e.seq for e in journal.query(order="append", newest_first=False, after=2)] == [3, 4, 5]
    assert [e.seq for e in journal.query(order="append", after=3)] == [2, 1, 0]
    assert [e.seq for e in journal.query(order="append", newest_first=False, after=99)] == []  # past the end
    # in time order, a seq cursor is the entry itself (its timestamp matters)
    assert [e.seq for e in journal.query(after=2)] == [3, 4, 5]
    assert [e.seq for e in journal.query(after=entries[2])] == [3, 4, 5]
    assert [e.seq for e in journal.query(after=0, newest_first=False)] == []
    assert journal.query(op_name=[]) == [] and journal.query(status=()) == []
    assert list(journal.iter_logs(op_name=[])) == []
    assert [e.seq for e in journal.query(op_name=["op1", "op1"], newest_first=False)] == [5, 3, 1]
    assert [e.seq for e in journal.query(op_name="op0", limit=2)] == [0, 2]
    assert journal.get_recent_logs(0) == []
    assert [e.seq for e in journal.get_recent_logs(2)] == [0, 1]


@pytest.mark.parametrize("limit", [None, _SCAN_CHUNK - 1, _SCAN_CHUNK, _SCAN_CHUNK + 1, 2 * _SCAN_CHUNK])
def test_the_scan_in_chunks_returns_exactly_the_matches(tmp_path: Path, limit: int | None) -> None:
    total = 2 * _SCAN_CHUNK + 3
    with SovereignJournal(tmp_path / "s", flush="interval:50ms") as journal:
        for i in range(total):
            journal.log_transaction(log(i, rid=f"r{i}"))
        want = list(range(total))[::-1] if limit is None else list(range(total))[::-1][:limit]
        assert [e.seq for e in journal.query(limit=limit)] == want
        assert [e.seq for e in journal.iter_logs(limit=limit)] == want


def test_a_scan_exactly_one_chunk_long_reads_twice_and_stops(tmp_path: Path, gated: list[Gated]) -> None:
    scans: list[int] = []
    with SovereignJournal(tmp_path / "s", flush="interval:50ms") as journal:
        for i in range(_SCAN_CHUNK):
            journal.log_transaction(log(i))
        storage = gated[0]
        real = storage.scan

        def counting(query: object, *, after: object, limit: int) -> object:
            scans.append(limit)
            return real(query, after=after, limit=limit)  # type: ignore[arg-type]

        storage.scan = counting  # type: ignore[method-assign]
        assert len(journal.query()) == _SCAN_CHUNK
        assert scans == [_SCAN_CHUNK, _SCAN_CHUNK]  # a full chunk: read on; an empty one ends it
        scans.clear()
        assert len(journal.query(limit=_SCAN_CHUNK + 7)) == _SCAN_CHUNK
        assert scans == [_SCAN_CHUNK, 7]
        scans.clear()
        assert len(journal.query(limit=3)) == 3
        assert scans == [3]  # the limit reached: no second read
        scans.clear()
        assert journal.query(limit=0) == []
        assert scans == []


def test_journal_count_live_only_is_checked(journal: SovereignJournal) -> None:
    journal.log_transaction(log(1))
    assert journal.journal_count(live_only=True) == journal.journal_count() == 1
    with pytest.raises(InvalidTypeError, match=r"^live_only must be a bool, got int$"):
        journal.journal_count(live_only=1)  # type: ignore[arg-type]


# -- retention and the archive's arguments -------------------------------------------------------
def test_retention_and_archive_from_arguments_and_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREPIS_RETENTION", raising=False)
    monkeypatch.delenv("KREPIS_ARCHIVE", raising=False)
    assert _retention(None, None) == (None, None)
    assert _retention(" off ", tmp_path / "a") == (None, str(tmp_path / "a"))
    assert _retention("keep-last:5", "~/a") == (RetentionPolicy(keep_last=5), os.path.expanduser("~/a"))
    monkeypatch.setenv("KREPIS_RETENTION", "keep-days:2")
    assert _retention(None, None) == (RetentionPolicy(keep_days=2), None)
    assert _retention("off", None) == (None, None)  # an explicit "off" wins
    monkeypatch.setenv("KREPIS_ARCHIVE", str(tmp_path / "env"))
    assert _retention(None, None) == (RetentionPolicy(keep_days=2), str(tmp_path / "env"))
    assert _retention(None, tmp_path / "arg") == (RetentionPolicy(keep_days=2), str(tmp_path / "arg"))
    monkeypatch.setenv("KREPIS_RETENTION", "sometimes")
    with pytest.raises(ValidationError) as info:
        _retention(None, None)
    assert "'sometimes' (from KREPIS_RETENTION) is not valid" in str(info.value)
    with pytest.raises(ValidationError) as info:
        _retention("sometimes", None)
    assert "'sometimes' is not valid" in str(info.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValidationError) as info:
        _retention("keep-last:5", tmp_path / "file")
    assert str(info.value) == f"the archive directory {tmp_path / 'file'} exists and is not a directory"
    monkeypatch.setenv("KREPIS_ARCHIVE", "")
    monkeypatch.setenv("KREPIS_RETENTION", "")
    assert _retention(None, None) == (None, None)
    with pytest.raises(ValidationError) as info:
        _retention("off", "")
    assert str(info.value) == "archive must not be empty"  # checked even with no policy


def test_retention_without_an_archive_is_refused_naming_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREPIS_ARCHIVE", raising=False)
    store = tmp_path / "s"
    with pytest.raises(ValidationError) as info:
        SovereignJournal(store, retention="keep-last:10")
    assert str(info.value).startswith("retention policy keep-last:10 needs an archive directory: pass "
                                      "archive=DIR or set KREPIS_ARCHIVE (there is no krepis")
    assert str(info.value).endswith(", so it records none)")
    assert not store.exists()  # not made only to refuse the policy
    SovereignJournal(store, flush="sync").close()
    with pytest.raises(ValidationError) as info:
        SovereignJournal(store, retention="keep-last:10")
    assert str(info.value) == ("retention policy keep-last:10 needs an archive directory: pass archive=DIR "
                               f"or set KREPIS_ARCHIVE (the store at {store} records none yet)")
    with pytest.raises(StorageError, match=r"^there is no krepis"):
        SovereignJournal(tmp_path / "none", create=False)  # no policy: the store's own error
    with SovereignJournal(store, retention=RetentionPolicy(keep_last=10, every=3600),
                          archive=tmp_path / "cold") as journal:
        assert journal._retention is not None
        thread = journal._retention._thread  # type: ignore[attr-defined]
    assert journal._retention is None and not thread.is_alive()  # close() stopped it


# -- the whole history (an archived store) -------------------------------------------------------
def test_counts_entries_cursors_and_verify_across_the_archive(built: Built, tmp_path: Path) -> None:
    store, _arch = built.copy(tmp_path)  # (_arch: the archive the store records)
    archived = 3 * 256
    with SovereignJournal(store, create=False, flush="sync") as journal:
        live = len(built.log1) - archived
        assert journal.journal_count() == len(built.log1)
        assert journal.journal_count(live_only=True) == live
        assert journal.entry(FIRST1) == built.log1[0]  # the first archived entry, from the archive
        with pytest.raises(KeyError):
            journal.entry(FIRST1, live_only=True)
        with pytest.raises(KeyError):
            journal.entry(-1)
        assert journal.entry(FIRST1 + archived) == built.log1[archived]  # the first live one
        # a seq cursor in time order is resolved from the archive too
        cursor = journal.entry(FIRST1 + 5)
        after = journal.query(after=FIRST1 + 5, limit=20, newest_first=False)
        assert after == journal.query(after=cursor, limit=20, newest_first=False) and len(after) == 20
        whole = journal.query(newest_first=False)
        assert after == whole[whole.index(cursor) + 1:whole.index(cursor) + 21]  # past the cursor
        assert journal.query(op_name=[]) == journal.query(status=[]) == []  # archived ones too
        with pytest.raises(ValidationError, match=f"^after={FIRST1 + 5}: the journal at "):
            journal.query(after=FIRST1 + 5, live_only=True)
        calls: list[tuple[int, int]] = []
        report = journal.verify(progress=lambda done, total: calls.append((done, total)))
        assert (report.entries, report.archived, report.tree_size) == (live, archived, len(built.log1))
        assert report.archive is not None and report.archive.bundles == 5
        assert calls[:2] == [(0, live + archived), (live, live + archived)]
        assert calls[-1][0] == calls[-1][1] and calls[-1][0] >= live + archived
        assert all(done >= live for done, _ in calls[1:])
        calls.clear()
        report = journal.verify(live_only=True, progress=lambda done, total: calls.append((done, total)))
        assert (report.entries, report.archived, report.archive) == (live, 0, None)
        assert calls == [(0, live), (live, live)]
        assert journal.verify().archived == archived  # no progress asked for: the same check
        assert len(journal.query(live_only=True)) == len(list(journal.iter_logs(live_only=True))) == live
    # the recorded archive moved away: reads of archived entries need the one named
    moved = tmp_path / "moved"
    os.rename(_arch, moved)
    with SovereignJournal(store, create=False, flush="sync") as journal:
        with pytest.raises(StorageError):
            journal.query(order="append", newest_first=False, limit=3)
        first = [e.seq for e in journal.query(order="append", newest_first=False, limit=3, archive=moved)]
        assert first == [e.seq for e in journal.iter_logs(order="append", newest_first=False, limit=3,
                                                          archive=moved)] == [FIRST1, FIRST1 + 1, FIRST1 + 2]


def test_entries_of_a_log_archived_from_seq_0_to_its_end(tmp_path: Path) -> None:
    from test_archive import fill_fast

    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="sync") as journal:
        fill_fast(journal, [log(i, rid=f"r{i}") for i in range(512)])
        assert journal.archive(cold, keep_last=0).bundles == 2  # every entry: the store holds none
        assert journal.live_first_seq() == journal.next_seq() == 512
        assert journal.entry(0).request_id == "r0"  # seq 0 is archived too
        assert journal.entry(511).request_id == "r511"
        for seq in (-1, 512, 10**6):
            with pytest.raises(KeyError):
                journal.entry(seq)
    os.rename(cold, tmp_path / "moved")
    with SovereignJournal(store, create=False, flush="sync") as journal:
        # a seq that was never archived is simply missing: the archive is not looked for
        for seq in (-1, 512, 10**6):
            with pytest.raises(KeyError) as info:
                journal.entry(seq)
            assert info.value.args == (f"the journal at {journal.path} has no entry with seq {seq}",)
        with pytest.raises(StorageError) as missing:
            journal.entry(0)
        assert str(cold) in str(missing.value)
        assert journal.entry(0, archive=tmp_path / "moved").request_id == "r0"
        assert journal.verify(archive=tmp_path / "moved").archived == 512
        with pytest.raises(ValidationError) as both:
            journal.entry(0, archive=tmp_path / "moved", live_only=True)
        assert str(both.value) == "archive= and live_only=True contradict each other: give one of them"
        with pytest.raises(ValidationError, match=r"^archive= and live_only=True contradict"):
            journal.verify(archive=tmp_path / "moved", live_only=True)


def test_verify_progress_of_a_store_without_an_archive(journal: SovereignJournal) -> None:
    for i in range(3):
        journal.log_transaction(log(i))
    calls: list[tuple[int, int]] = []
    report = journal.verify(progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (3, 3)]
    assert (report.entries, report.archived, report.archive) == (3, 0, None)


def test_verify_with_an_archive_named_for_a_log_with_nothing_archived(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    with SovereignJournal(store, create=False, flush="sync") as journal:
        journal.clear_all()  # a new log: the archive holds the earlier ones only
        report = journal.verify(archive=arch)
        assert (report.entries, report.archived) == (1, 0)
        assert report.archive is not None and report.archive.bundles == 5  # the named archive checked
