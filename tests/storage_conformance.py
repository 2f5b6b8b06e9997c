"""The storage port's contract, written once; each adapter's test module subclasses it.

A subclass provides a ``make_storage`` fixture returning a factory ``() -> Storage`` that opens
the SAME location each time it is called (so reopening can be tested).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from hashlib import sha256

import pytest

from krepis import ClosedError, LogStatus, TransactionLog
from krepis._model import encode_log
from krepis.storage import Query, Storage, WriteRequest

Factory = Callable[[], Storage]
S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed


def entry(ts: int, rid: str, n: int, op: str = "op", status: LogStatus = C,
          error: str | None = None) -> tuple[TransactionLog, bytes]:
    log = TransactionLog(ts, op, rid, status, duration_us=n, error=error)
    return (log, encode_log(log))


def ns(logs: list[TransactionLog]) -> list[int | None]:
    return [log.duration_us for log in logs]


def scan_all(storage: Storage, query: Query, page: int = 1000) -> list[TransactionLog]:
    out: list[TransactionLog] = []
    after = None
    while True:
        got = storage.scan(query, after=after, limit=page)
        out += got
        if len(got) < page:
            return out
        after = got[-1]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle tree hash, by its recursive definition."""
    if not leaves:
        return sha256(b"").digest()
    if len(leaves) == 1:
        return sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


ALL = Query()


def _one() -> tuple[TransactionLog, bytes]:
    return entry(1, "r", 1)


#: Every storage operation, with what its error message says it was doing.
OPERATIONS: list[tuple[str, Callable[[Storage], object]]] = [
    ("reading a counter", lambda s: s.get_count(b"x")),
    ("reading counters", lambda s: s.get_counts()),
    ("counting entries", lambda s: s.entry_count()),
    ("reading the sequence", lambda s: s.next_seq()),
    ("reading the tree", lambda s: s.tree_head()),
    ("reading op names", lambda s: s.op_names()),
    ("reading the journal", lambda s: s.get_entry(0)),
    ("reading the journal", lambda s: s.scan(Query(), after=None, limit=5)),
    ("reading the journal", lambda s: s.scan(Query(order="append"), after=None, limit=5)),
    ("reading the journal", lambda s: s.leaf_hashes(0, 0, 1)),
    ("storing a checkpoint", lambda s: s.add_checkpoint(0, 1, "example.com/log", "note")),
    ("reading checkpoints", lambda s: s.checkpoints()),
    ("reading the tree", lambda s: s.tree_node(0, 0)),
    ("reading the tree", lambda s: s.live_first_seq()),
    ("clearing", lambda s: s.clear()),
    ("syncing", lambda s: s.sync()),
    ("removing archived entries", lambda s: s.drop_prefix(0, 1)),
    ("writing", lambda s: s.write_batch([WriteRequest([_one()], [b"x"])])),
    ("writing", lambda s: s.write_batch([WriteRequest([], [b"x"])])),  # counters only: one statement
    ("verifying", lambda s: s.verify()),
    ("reading a setting", lambda s: s.get_setting("archive")),
    ("storing a setting", lambda s: s.set_setting("archive", "/srv/archive")),
]


class StorageConformance:
    @pytest.fixture
    def storage(self, make_storage: Factory):  # type: ignore[no-untyped-def]
        s = make_storage()
        yield s
        s.close()

    def test_a_closed_storage_says_so_for_every_operation(self, make_storage: Factory) -> None:
        storage = make_storage()
        storage.close()
        for doing, call in OPERATIONS:
            with pytest.raises(ClosedError) as caught:
                call(storage)
            assert str(caught.value) == f"the journal at {storage.location} is closed", doing
        storage.close()  # a second close does nothing

    def test_empty(self, storage: Storage) -> None:
        assert storage.entry_count() == 0
        assert storage.get_count(b"x") == 0
        assert storage.get_counts() == {}
        assert storage.scan(ALL, after=None, limit=10) == []
        assert storage.next_seq() == 0
        assert storage.get_entry(0) is None
        head = storage.tree_head()
        assert (head.size, head.root, head.first_seq, head.epoch) == (0, sha256(b"").digest(), 0, 0)
        assert storage.op_names() == []

    def test_batch_returns_counts_per_request_in_order(self, storage: Storage) -> None:
        res = storage.write_batch([
            WriteRequest([entry(1, "a", 1)], [b"x"]),
            WriteRequest([], [b"x", b"y"]),
            WriteRequest([entry(2, "b", 2)], []),
            WriteRequest([], [b"x"]),
        ])
        assert res == [[1], [2, 1], [], [3]]
        assert storage.get_count(b"x") == 3
        assert storage.get_counts() == {"x": 3, "y": 1}
        assert storage.entry_count() == 2

    def test_sequence_numbers_are_append_order_from_zero(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest([entry(9, "a", 0), entry(3, "b", 1)], [])])
        storage.write_batch([WriteRequest([entry(5, "c", 2)], [])])
        assert storage.next_seq() == 3
        for seq in range(3):
            got = storage.get_entry(seq)
            assert got is not None and got.seq == seq and got.duration_us == seq
        assert storage.get_entry(3) is None
        assert [log.seq for log in storage.scan(Query(order="append", newest_first=False),
                                                after=None, limit=10)] == [0, 1, 2]
        assert [log.seq for log in storage.scan(Query(order="append"), after=None, limit=10)] == [2, 1, 0]
        # paging on from either end finds nothing more
        down, up = Query(order="append"), Query(order="append", newest_first=False)
        newest_first = storage.scan(down, after=None, limit=10)
        assert storage.scan(down, after=newest_first[-1], limit=10) == []
        assert [log.seq for log in storage.scan(down, after=newest_first[0], limit=10)] == [1, 0]
        assert storage.scan(up, after=storage.scan(up, after=None, limit=10)[-1], limit=10) == []

    def test_entries_round_trip_every_field(self, storage: Storage) -> None:
        logs = [
            TransactionLog(2**63 - 1, "ö" * 100, "ü" * 128, S),
            TransactionLog(0, "x", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", F, duration_us=2**63 - 1,
                           error="e" * 16 * 1024),
            TransactionLog(7, "x", "1B4E28BA-2FA1-11D2-883F-0016D3CCA427", C, duration_us=0,
                           error="\x01\n\u2028"),
            TransactionLog(7, "x", "r", C, duration_us=2**32),
            TransactionLog(7, "x", "r", C, duration_us=2**32 - 1),
        ]
        storage.write_batch([WriteRequest([(log, encode_log(log)) for log in logs], [])])
        back = [storage.get_entry(i) for i in range(len(logs))]
        assert back == logs
        assert [encode_log(b) for b in back if b is not None] == [encode_log(log) for log in logs]

    def test_same_timestamp_and_request_id_never_overwrite(self, storage: Storage) -> None:
        for n in range(5):
            storage.write_batch([WriteRequest([entry(7, "same", n)], [])])
        storage.write_batch([WriteRequest([entry(7, "same", 5), entry(7, "same", 6)], [])])
        assert storage.entry_count() == 7
        assert ns(storage.scan(Query(newest_first=False), after=None, limit=100)) == list(range(7))
        assert ns(storage.scan(Query(request_id="same", newest_first=False), after=None, limit=100)) \
            == list(range(7))

    def test_order_is_numeric_time_then_arrival(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest([entry(1000, "r", 1)], [])])
        storage.write_batch([WriteRequest([entry(999, "r", 2)], [])])
        storage.write_batch([WriteRequest([entry(1000, "r", 3)], [])])
        storage.write_batch([WriteRequest([entry(2**63 - 1, "r", 4), entry(0, "r", 5)], [])])
        oldest = ns(storage.scan(Query(newest_first=False), after=None, limit=100))
        assert oldest == [5, 2, 1, 3, 4]
        assert ns(storage.scan(ALL, after=None, limit=100)) == oldest[::-1]

    def test_scan_resumes_after_an_entry_in_every_order(self, storage: Storage) -> None:
        batch = [entry(t // 2, "r", t, status=(S, C)[t % 2]) for t in range(10)]
        storage.write_batch([WriteRequest(batch, [])])
        for order in ("time", "append"):
            for newest_first in (True, False):
                for q in (Query(order=order, newest_first=newest_first),  # type: ignore[arg-type]
                          Query(order=order, newest_first=newest_first,  # type: ignore[arg-type]
                                request_id="r", statuses=(S, C))):
                    seen: list[int | None] = []
                    after = None
                    while True:
                        rows = storage.scan(q, after=after, limit=3)
                        seen += ns(rows)
                        if len(rows) < 3:
                            break
                        after = rows[-1]
                    expected = list(range(10))
                    assert seen == (expected[::-1] if newest_first else expected), (order, q)

    def test_time_range_and_request_id(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest(
            [entry(t, "even" if t % 2 == 0 else "odd", t) for t in range(20)], [])])
        rng = Query(since=5, until=10, newest_first=False)
        assert ns(storage.scan(rng, after=None, limit=100)) == list(range(5, 10))
        rng = Query(since=5, until=10)
        assert ns(storage.scan(rng, after=None, limit=100)) == list(range(9, 4, -1))
        odd = Query(since=5, until=10, request_id="odd")
        assert ns(storage.scan(odd, after=None, limit=2)) == [9, 7]
        # until is exclusive down to the first entry (timestamp 0, seq 0)
        assert storage.scan(Query(until=0), after=None, limit=9) == []
        assert ns(storage.scan(Query(since=0, until=1), after=None, limit=9)) == [0]
        # request_id matches exactly, not as a prefix or suffix
        assert storage.scan(Query(request_id="dd"), after=None, limit=9) == []
        assert storage.scan(Query(request_id="odd "), after=None, limit=9) == []

    def test_every_filter_combination_matches_a_reference(self, storage: Storage) -> None:
        """Random entries and random queries, checked against filtering and sorting in Python."""
        rnd = random.Random(6962)
        ops = ["charge", "refund", "rare", "op ü"]
        rids = [f"req-{i}" for i in range(12)] + ["1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
        written: list[TransactionLog] = []
        for _ in range(8):
            batch = [entry(rnd.randrange(0, 60), rnd.choice(rids), len(written) + i,
                           op=rnd.choice(ops), status=rnd.choice((S, C, C, F)))
                     for i in range(rnd.randrange(1, 40))]
            storage.write_batch([WriteRequest(batch, [])])
            written += [log for log, _ in batch]
        for seq, log in enumerate(written):
            object.__setattr__(log, "seq", seq)
        assert storage.op_names() == sorted(ops)
        for _ in range(150):
            q = Query(
                since=rnd.choice([None, rnd.randrange(0, 60)]),
                until=rnd.choice([None, rnd.randrange(0, 70)]),
                request_id=rnd.choice([None, None, rnd.choice(rids), "nobody"]),
                op_names=rnd.choice([None, (rnd.choice(ops),), tuple(rnd.sample(ops, 2)), ("never",)]),
                statuses=rnd.choice([None, (rnd.choice((S, C, F)),), (S, F)]),
                newest_first=rnd.random() < 0.5,
                order=rnd.choice(["time", "time", "append"]),  # type: ignore[arg-type]
            )
            want = [log for log in written if q.matches(log)]
            key = (lambda g: g.seq) if q.order == "append" else (lambda g: (g.timestamp, g.seq))
            want.sort(key=key, reverse=q.newest_first)  # type: ignore[arg-type,return-value]
            page = rnd.choice([1, 2, 7, 1000])
            got = scan_all(storage, q, page)
            assert [g.seq for g in got] == [w.seq for w in want], q
            assert got == want

    def test_tree_head_is_the_rfc6962_hash_of_the_entries_in_append_order(self, storage: Storage) -> None:
        leaves: list[bytes] = []
        for n in (1, 2, 5, 1, 300, 3):
            batch = [entry(n * 1000 - i, f"r{i}", i) for i in range(n)]
            storage.write_batch([WriteRequest(batch[: n // 2], []), WriteRequest(batch[n // 2:], [])])
            leaves += [canonical for _, canonical in batch]
            head = storage.tree_head()
            assert (head.size, head.first_seq) == (len(leaves), 0)
            assert head.root == mth(leaves)

    def test_reopen_keeps_everything(self, make_storage: Factory) -> None:
        s = make_storage()
        s.write_batch([WriteRequest([entry(1, "a", 1)], [b"x"])])
        root = s.tree_head().root
        s.close()
        s = make_storage()
        try:
            assert s.entry_count() == 1
            assert s.get_count(b"x") == 1
            assert s.tree_head().root == root
            # The sequence continues: a new entry with the same key parts is added, not replaced.
            s.write_batch([WriteRequest([entry(1, "a", 2)], [b"x"])])
            assert s.entry_count() == 2
            assert s.get_count(b"x") == 2
            assert ns(s.scan(Query(order="append", newest_first=False), after=None, limit=5)) == [1, 2]
        finally:
            s.close()

    def test_clear_ends_the_log_durably_and_the_store_stays_usable(self, make_storage: Factory) -> None:
        s = make_storage()
        s.write_batch([WriteRequest([entry(1, "a", 1), entry(2, "a", 2)], [b"x"])])
        s.clear()
        assert s.entry_count() == 0
        assert s.get_counts() == {}
        assert s.scan(Query(request_id="a"), after=None, limit=5) == []
        head = s.tree_head()
        assert (head.size, head.first_seq, head.epoch) == (0, 2, 1)
        new = entry(1, "a", 3)
        s.write_batch([WriteRequest([new], [b"x"])])
        s.close()
        s = make_storage()
        try:
            assert s.entry_count() == 1
            assert s.get_count(b"x") == 1
            assert s.get_entry(0) is None  # sequence numbers are never reused
            got = s.get_entry(2)
            assert got is not None and got.duration_us == 3
            head = s.tree_head()
            assert (head.size, head.first_seq, head.epoch, head.root) == (1, 2, 1, mth([new[1]]))
        finally:
            s.close()

    def test_threads_share_exact_counters(self, storage: Storage) -> None:
        def work() -> None:
            for i in range(50):
                storage.write_batch([WriteRequest([entry(i, "t", i)], [b"c"])])

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert storage.get_count(b"c") == 200
        assert storage.entry_count() == 200
        assert storage.next_seq() == 200
        assert storage.tree_head().size == 200

    def test_sync_and_close_keep_the_data(self, make_storage: Factory) -> None:
        s = make_storage()
        s.write_batch([WriteRequest([entry(1, "a", 1)], [b"x"])])
        s.sync()
        s.close()
        s.close()  # idempotent
        s = make_storage()
        try:
            assert s.get_count(b"x") == 1 and s.entry_count() == 1
        finally:
            s.close()

    def test_verify_checks_every_entry_and_the_tree(self, storage: Storage) -> None:
        report = storage.verify()
        assert (report.entries, report.tree_size, report.root) == (0, 0, sha256(b"").digest())
        leaves: list[bytes] = []
        for n in (1, 300, 2, 255):
            batch = [entry(n + i, f"r{i % 7}", i, op=f"op{i % 3}", status=(S, C, F)[i % 3]) for i in range(n)]
            storage.write_batch([WriteRequest(batch, [b"x"])])
            leaves += [canonical for _, canonical in batch]
        report = storage.verify()
        assert (report.entries, report.tree_size) == (558, 558)
        assert report.root == mth(leaves) == storage.tree_head().root
        assert report.tree_nodes == 2  # two complete tiles of 256 leaves
        storage.clear()
        storage.write_batch([WriteRequest([entry(1, "a", 1)], [])])
        assert storage.verify().entries == 1

    def test_edges_of_a_log_that_does_not_start_at_seq_0(self, storage: Storage) -> None:
        """After a clear the log starts at seq 3 in epoch 1: sizes, leaf positions and the archived
        prefix are counted from there, not from 0; out-of-range lookups find nothing."""
        from krepis import ValidationError

        storage.write_batch([WriteRequest([entry(i, "old", i) for i in range(3)], [b"x"])])
        storage.clear()
        batch = [entry(10 + i, f"n{i}", i) for i in range(5)]  # seqs 3..7 of log 1
        storage.write_batch([WriteRequest(batch, [b"x"])])
        leaves = [sha256(b"\x00" + canonical).digest() for _, canonical in batch]
        assert storage.leaf_hashes(3, 0, 1) == leaves[:1]
        assert storage.leaf_hashes(3, 1, 4) == leaves[1:]
        assert storage.leaf_hashes(3, 2, 0) == []
        for seq in (-1, 2**63, 2**64):
            assert storage.get_entry(seq) is None
        assert storage.tree_node(0, 10**6) is None
        for order in ("time", "append"):  # an empty choice matches nothing
            assert storage.scan(Query(op_names=(), order=order), after=None, limit=5) == []
            assert storage.scan(Query(statuses=(), order=order), after=None, limit=5) == []
            assert storage.scan(Query(order=order), after=None, limit=0) == []
        with pytest.raises(ValidationError):
            storage.add_checkpoint(1, 6, "example.com/log", "note")  # the log holds 5 entries
        storage.add_checkpoint(1, 5, "example.com/log", "note")
        assert storage.checkpoints() == [(1, 5, "example.com/log", "note")]
        storage.add_checkpoint(1, 5, "example.com/log", "note, cosigned")  # the same tree again: replaced
        assert storage.checkpoints() == [(1, 5, "example.com/log", "note, cosigned")]
        assert storage.drop_prefix(1, 5) == 2 and storage.live_first_seq() == 5
        assert storage.drop_prefix(1, 7) == 2 and storage.live_first_seq() == 7
        assert storage.entry_count() == 1 and [log.seq for log in scan_all(storage, ALL)] == [7]

    def test_drop_prefix_removes_entries_and_keeps_tree_and_counters(self, storage: Storage) -> None:
        from krepis import ValidationError

        batch = [entry(1000 - i % 50, f"r{i}", i, op=f"op{i % 3}", status=(S, C, F)[i % 3])
                 for i in range(600)]
        storage.write_batch([WriteRequest(batch, [b"x"])])
        head, node, counts = storage.tree_head(), storage.tree_node(8, 0), storage.get_counts()
        assert storage.live_first_seq() == 0
        for bad_epoch, upto in ((1, 512), (0, 601)):
            with pytest.raises(ValidationError):
                storage.drop_prefix(bad_epoch, upto)
            assert storage.entry_count() == 600 and storage.live_first_seq() == 0
        assert storage.drop_prefix(0, 512) == 512
        assert storage.live_first_seq() == 512
        assert storage.drop_prefix(0, 512) == 0 and storage.drop_prefix(0, 256) == 0  # reruns: no-ops
        assert storage.entry_count() == 88
        assert storage.get_entry(0) is None and storage.get_entry(512) is not None
        assert (storage.tree_head(), storage.tree_node(8, 0), storage.get_counts()) == (head, node, counts)
        for q in (ALL, Query(newest_first=False), Query(order="append"), Query(request_id="r3"),
                  Query(op_names=("op1",)), Query(statuses=(F,)), Query(since=960, until=1000)):
            got = scan_all(storage, q)
            if q.request_id == "r3":  # an archived entry's request id: nothing live
                assert got == []
            else:
                assert got and all((log.seq or 0) >= 512 for log in got)
        assert len(scan_all(storage, ALL)) == 88
        assert storage.verify().entries == 88
        assert "op0" in storage.op_names()
        storage.write_batch([WriteRequest([entry(5, "after", 0)], [b"x"])])
        assert storage.next_seq() == 601 and storage.verify().entries == 89
        storage.clear()
        assert storage.live_first_seq() == storage.tree_head().first_seq == 601

    def test_settings_are_kept_durably_beside_the_data(self, make_storage: Factory) -> None:
        """A setting reads back in another instance after a reopen, is replaced or removed in
        one step, survives a clear and changes nothing else (the sequence, the tree, counters)."""
        s = make_storage()
        try:
            assert s.get_setting("archive") is None
            s.write_batch([WriteRequest([entry(1, "a", 1)], [b"x"])])
            head, counts = s.tree_head(), s.get_counts()
            s.set_setting("archive", "/srv/cold ö")
            assert s.get_setting("archive") == "/srv/cold ö"
            assert (s.tree_head(), s.get_counts(), s.next_seq(), s.entry_count()) == (head, counts, 1, 1)
            other = make_storage()  # another instance (on LMDB: sharing the environment)
            try:
                assert other.get_setting("archive") == "/srv/cold ö"
                other.set_setting("archive", "/srv/warm")
            finally:
                other.close()
            assert s.get_setting("archive") == "/srv/warm"
            s.write_batch([WriteRequest([entry(2, "b", 2)], [b"x"])])  # writes go on around it
        finally:
            s.close()
        s = make_storage()
        try:
            assert s.get_setting("archive") == "/srv/warm" and s.entry_count() == 2
            s.clear()
            assert s.get_setting("archive") == "/srv/warm"  # a clear keeps settings
            s.set_setting("archive", None)
            assert s.get_setting("archive") is None
            s.set_setting("archive", None)  # removing what is not there: nothing to do
            assert s.verify().entries == 0
        finally:
            s.close()

    def test_a_bad_setting_is_refused_and_changes_nothing(self, storage: Storage) -> None:
        from krepis import InvalidTypeError, ValidationError
        from krepis.storage import MAX_SETTING_BYTES

        storage.set_setting("archive", "/kept")
        for name, value, error, words in (
                ("format", "9", ValidationError, "'format' is not a setting a store keeps"),
                ("live", None, ValidationError, "'live' is not a setting"),
                ("", "x", ValidationError, "is not a setting"),
                (b"archive", "x", InvalidTypeError, "name must be a str"),
                ("archive", "", ValidationError, "must be 1 … 4096 bytes"),
                ("archive", "a\0b", ValidationError, "with a NUL"),
                ("archive", "x" * (MAX_SETTING_BYTES + 1), ValidationError, "got 4097 bytes"),
                ("archive", "\ud800", ValidationError, "lone surrogate"),
                ("archive", b"/x", InvalidTypeError, "must be a str or None")):
            with pytest.raises(error, match=words):
                storage.set_setting(name, value)  # type: ignore[arg-type]
            assert storage.get_setting("archive") == "/kept"
        with pytest.raises(ValidationError, match="'seq' is not a setting"):
            storage.get_setting("seq")
        storage.set_setting("archive", "é" * (MAX_SETTING_BYTES // 2))  # 4096 bytes: the longest
        assert storage.get_setting("archive") == "é" * (MAX_SETTING_BYTES // 2)
