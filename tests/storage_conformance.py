"""The storage port's contract, written once; each adapter's test module subclasses it.

A subclass provides a ``make_storage`` fixture returning a factory ``() -> Storage`` that opens
the SAME location each time it is called (so reopening can be tested).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from krepis._storage import EntryFilter, Storage, WriteRequest

Factory = Callable[[], Storage]


def entry(ts: int, rid: str, n: int) -> tuple[int, bytes, bytes]:
    return (ts, rid.encode(), b'{"n":%d}' % n)


def values(rows: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [v for _, v in rows]


ALL = EntryFilter()


class StorageConformance:
    @pytest.fixture
    def storage(self, make_storage: Factory):  # type: ignore[no-untyped-def]
        s = make_storage()
        yield s
        s.close()

    def test_empty(self, storage: Storage) -> None:
        assert storage.entry_count() == 0
        assert storage.get_count(b"x") == 0
        assert storage.get_counts() == {}
        assert storage.scan(ALL, newest_first=True, after=None, limit=10) == []

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

    def test_same_timestamp_and_request_id_never_overwrite(self, storage: Storage) -> None:
        for n in range(5):
            storage.write_batch([WriteRequest([entry(7, "same", n)], [])])
        storage.write_batch([WriteRequest([entry(7, "same", 5), entry(7, "same", 6)], [])])
        assert storage.entry_count() == 7
        rows = storage.scan(ALL, newest_first=False, after=None, limit=100)
        assert values(rows) == [b'{"n":%d}' % n for n in range(7)]

    def test_order_is_numeric_time_then_arrival(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest([entry(1000, "r", 1)], [])])
        storage.write_batch([WriteRequest([entry(999, "r", 2)], [])])
        storage.write_batch([WriteRequest([entry(1000, "r", 3)], [])])
        storage.write_batch([WriteRequest([entry(2**63 - 1, "r", 4), entry(0, "r", 5)], [])])
        oldest = values(storage.scan(ALL, newest_first=False, after=None, limit=100))
        assert oldest == [b'{"n":5}', b'{"n":2}', b'{"n":1}', b'{"n":3}', b'{"n":4}']
        newest = values(storage.scan(ALL, newest_first=True, after=None, limit=100))
        assert newest == oldest[::-1]

    def test_scan_resumes_after_position_both_directions(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest([entry(t, "r", t) for t in range(10)], [])])
        for newest_first in (True, False):
            seen: list[bytes] = []
            after = None
            while True:
                rows = storage.scan(ALL, newest_first=newest_first, after=after, limit=3)
                seen += values(rows)
                if len(rows) < 3:
                    break
                after = rows[-1][0]
            expected = [b'{"n":%d}' % t for t in range(10)]
            assert seen == (expected[::-1] if newest_first else expected)

    def test_scan_time_range_and_request_id(self, storage: Storage) -> None:
        storage.write_batch([WriteRequest(
            [entry(t, "even" if t % 2 == 0 else "odd", t) for t in range(20)], [])])
        rng = EntryFilter(since=5, until=10)
        got = values(storage.scan(rng, newest_first=False, after=None, limit=100))
        assert got == [b'{"n":%d}' % t for t in range(5, 10)]
        got = values(storage.scan(rng, newest_first=True, after=None, limit=100))
        assert got == [b'{"n":%d}' % t for t in range(9, 4, -1)]
        odd = EntryFilter(since=5, until=10, request_id=b"odd")
        assert values(storage.scan(odd, newest_first=True, after=None, limit=2)) == [b'{"n":9}', b'{"n":7}']
        # request_id matches exactly, not as a prefix or suffix
        assert storage.scan(EntryFilter(request_id=b"dd"), newest_first=True, after=None, limit=9) == []

    def test_reopen_keeps_everything(self, make_storage: Factory) -> None:
        s = make_storage()
        s.write_batch([WriteRequest([entry(1, "a", 1)], [b"x"])])
        s.close()
        s = make_storage()
        try:
            assert s.entry_count() == 1
            assert s.get_count(b"x") == 1
            # The sequence continues: a new entry with the same key parts is added, not replaced.
            s.write_batch([WriteRequest([entry(1, "a", 2)], [b"x"])])
            assert s.entry_count() == 2
            assert s.get_count(b"x") == 2
        finally:
            s.close()

    def test_clear_is_durable_and_store_stays_usable(self, make_storage: Factory) -> None:
        s = make_storage()
        s.write_batch([WriteRequest([entry(1, "a", 1)], [b"x"])])
        s.clear()
        assert s.entry_count() == 0
        assert s.get_counts() == {}
        s.write_batch([WriteRequest([entry(1, "a", 2)], [b"x"])])
        s.close()
        s = make_storage()
        try:
            assert s.entry_count() == 1
            assert s.get_count(b"x") == 1
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

    def test_sync_and_close_are_safe(self, make_storage: Factory) -> None:
        s = make_storage()
        s.sync()
        s.close()
        s.close()  # idempotent
