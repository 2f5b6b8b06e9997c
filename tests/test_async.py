"""AsyncSovereignJournal: same API, awaitable; many tasks coalesce into shared commits."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from krepis import (
    AsyncSovereignJournal,
    ClosedError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_every_method(store: Path) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            await journal.log_transaction(TransactionLog(1, "a", "r", LogStatus.Started))
            assert await journal.record(TransactionLog(2, "a", "r", LogStatus.Completed), increment="a") == 1
            assert await journal.record(TransactionLog(3, "b", "r", LogStatus.Completed)) is None
            assert await journal.increment_op_count("a") == 2
            assert await journal.recover_op_count("a") == 2
            assert await journal.op_counts() == {"a": 2}
            assert await journal.journal_count() == 3
            assert [e.timestamp for e in await journal.get_recent_logs(2)] == [3, 2]
            assert [e.timestamp for e in await journal.query(op_name="a", newest_first=False)] == [1, 2]
            await journal.flush()
            await journal.clear_all()
            assert await journal.journal_count() == 1  # the trace of the clear
            await journal.increment_op_count("after_clear")
        assert journal.closed
        await journal.close()  # idempotent
        with pytest.raises(ClosedError):
            await journal.increment_op_count("x")

    run(main())
    with SovereignJournal(store) as journal:
        assert journal.op_counts() == {"after_clear": 1}


@pytest.mark.parametrize("flush", ["sync", "interval:5ms"])
def test_many_tasks_exact_and_coalesced(store: Path, flush: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from krepis.storage.lmdb import LmdbStorage

    commits = 0
    original = LmdbStorage.write_batch

    def counting(self, requests):  # type: ignore[no-untyped-def]
        nonlocal commits
        commits += 1
        return original(self, requests)

    monkeypatch.setattr(LmdbStorage, "write_batch", counting)
    tasks, per_task = 256, 8

    async def main() -> list[int]:
        async with AsyncSovereignJournal(store, flush=flush) as journal:
            async def worker(n: int) -> list[int]:
                return [await journal.record(TransactionLog(i, "op", f"t{n}-{i}", LogStatus.Completed),
                                             increment="op") for i in range(per_task)]  # type: ignore[misc]

            results = await asyncio.gather(*(worker(n) for n in range(tasks)))
            return [v for r in results for v in r]

    values = run(main())
    total = tasks * per_task
    assert sorted(values) == list(range(1, total + 1))  # every caller got its own count
    assert commits < total / 4  # writes of concurrent tasks share transactions
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("op") == total
        assert journal.journal_count() == total


def test_writes_do_not_block_the_event_loop(store: Path) -> None:
    async def main() -> tuple[int, int]:
        async with AsyncSovereignJournal(store) as journal:
            ticks = 0
            stop = False

            async def ticker() -> None:
                nonlocal ticks
                while not stop:
                    ticks += 1
                    await asyncio.sleep(0)

            tick_task = asyncio.create_task(ticker())
            await asyncio.sleep(0)
            start = ticks
            for _ in range(50):  # sequential durable writes: each awaits a commit with fsync
                await journal.increment_op_count("x")
            during = ticks - start
            stop = True
            await tick_task
            return during, await journal.recover_op_count("x")

    during, count = run(main())
    assert count == 50
    # A blocking implementation would never yield to the ticker while writing.
    assert during >= 50


def test_validation_and_sync_journal_share_commits(store: Path) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            with pytest.raises(ValidationError, match="empty"):
                await journal.increment_op_count("")
            with pytest.raises(TypeError, match="TransactionLog"):
                await journal.record("nope")  # type: ignore[arg-type]
            sync = journal.sync_journal
            await journal.increment_op_count("x")
            await asyncio.to_thread(sync.increment_op_count, "x")
            assert await journal.recover_op_count("x") == 2
            assert await journal.journal_count() == 0

    run(main())


def test_one_journal_across_event_loops_and_a_closed_loop(store: Path) -> None:
    journal = AsyncSovereignJournal(store)

    async def write(n: int) -> list[int]:
        return list(await asyncio.gather(*(journal.increment_op_count("x") for _ in range(n))))

    assert sorted(asyncio.run(write(20))) == list(range(1, 21))  # first loop, now closed
    assert sorted(asyncio.run(write(20))) == list(range(21, 41))  # a second loop: still served

    async def abandon() -> None:  # leave writes in flight when the loop ends
        for _ in range(10):
            asyncio.get_running_loop().create_task(journal.increment_op_count("y"))

    asyncio.run(abandon())
    assert sorted(asyncio.run(write(5))) == list(range(41, 46))  # the writer survived

    async def finish() -> int:
        await journal.close()
        return 0

    asyncio.run(finish())
    with SovereignJournal(store) as sync:
        assert sync.recover_op_count("x") == 45
        assert sync.recover_op_count("y") <= 10


def test_the_rest_of_the_api_and_the_flush_policy(store: Path) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(store, flush="interval:7ms") as journal:
            assert str(journal.policy) == "interval:7ms" == str(journal.sync_journal.policy)
            for i in range(5):
                await journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
            sync = journal.sync_journal
            assert await journal.next_seq() == 5
            assert await journal.op_names() == ["op"]
            assert await journal.tree_root() == sync.tree_root()
            assert await journal.tree_root(3) == sync.tree_root(3) != sync.tree_root()
            assert (await journal.inclusion_proof(1, tree_size=3)).tree_size == 3
            assert (await journal.consistency_proof(2, 4)).new_size == 4
            names = {t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
            assert {"krepis-async-writer", "krepis-async-reader"} <= names

    run(main())


def test_a_failed_write_raises_in_the_task_that_awaited_it(store: Path) -> None:
    from test_guarantees import _full_counter, _new_store

    _new_store(store)
    _full_counter(store, "full")

    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            with pytest.raises(StorageError, match="would overflow"):
                await journal.increment_op_count("full")
            assert await journal.increment_op_count("other") == 1  # the journal goes on

    run(main())


def _gated(journal: AsyncSovereignJournal, gate: threading.Event) -> None:
    """Keep the writer thread busy until ``gate`` is set: writes queue up, then go in one batch."""
    journal._writer.submit(gate.wait)


async def _until_queued(journal: AsyncSovereignJournal, n: int) -> None:
    for _ in range(1000):
        if len(journal._queue) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{n} writes never got queued")


def test_one_batch_mixing_entries_counters_and_a_cancelled_write(store: Path) -> None:
    gate = threading.Event()

    async def main() -> None:
        async with AsyncSovereignJournal(store) as journal:
            _gated(journal, gate)
            first = asyncio.create_task(
                journal.log_transaction(TransactionLog(1, "a", "x", LogStatus.Completed)))
            await _until_queued(journal, 1)
            counter = asyncio.create_task(journal.increment_op_count("c"))
            entry = asyncio.create_task(journal.record(TransactionLog(2, "a", "y", LogStatus.Completed),
                                                       increment="a"))
            await _until_queued(journal, 3)
            first.cancel()  # the first of the batch: the writes after it are still answered
            gate.set()
            assert await asyncio.wait_for(counter, 60) == 1
            assert await asyncio.wait_for(entry, 60) == 1
            with pytest.raises(asyncio.CancelledError):
                await first

    try:
        run(main())
    finally:
        gate.set()
    with SovereignJournal(store) as journal:
        assert [e.request_id for e in journal.query(newest_first=False)] == ["x", "y"]
        assert journal.op_counts() == {"a": 1, "c": 1}


def test_close_waits_for_queued_writes(store: Path) -> None:
    gate = threading.Event()

    async def main() -> None:
        journal = AsyncSovereignJournal(store)
        _gated(journal, gate)
        writes = [asyncio.create_task(journal.increment_op_count("q")) for _ in range(3)]
        await _until_queued(journal, 3)
        closing = asyncio.create_task(journal.close())
        await asyncio.sleep(0)
        gate.set()
        assert sorted(await asyncio.gather(*writes)) == [1, 2, 3]
        await closing
        assert journal.closed

    try:
        run(main())
    finally:
        gate.set()
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("q") == 3


def test_a_failed_background_sync_fails_the_next_awaited_write(tmp_path: Path) -> None:
    """flush="interval:…": the background sync's fsync fails with EIO (the power-loss file
    system's armed failure); the write that had returned stands, and the next awaited write —
    and every one after, as with the synchronous journal — raises a StorageError naming it."""
    import os
    import time

    from powerloss.harness import PowerLossMount, fuse_unavailable

    reason = fuse_unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_POWERLOSS") == "1":
            pytest.fail(f"needs the power-loss file system: {reason}")
        pytest.skip(f"needs the power-loss file system: {reason}")

    with PowerLossMount(tmp_path) as plfs:
        store = plfs.mnt / "store"

        async def main() -> None:
            journal = AsyncSovereignJournal(store, flush="interval:100ms")
            for i in range(3):
                await journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")
            await journal.flush()
            # the next write's commit.log record (event 1) returns at once; the background
            # sync's fsync of it (event 2) freezes, then fails with EIO
            plfs.request({"cmd": "arm", "file": "store/commit.log", "events": 2})
            assert await journal.record(TransactionLog(3, "op", "r3", LogStatus.Completed),
                                        increment="op") == 4
            deadline = time.monotonic() + 30
            while plfs.stats()["state"] != "frozen":
                assert time.monotonic() < deadline, "the background sync never flushed"
                await asyncio.sleep(0.01)
            plfs.request({"cmd": "thaw"})
            while journal.sync_journal._syncer is not None and journal.sync_journal._syncer.error is None:
                assert time.monotonic() < deadline, "the failed sync was never noticed"
                await asyncio.sleep(0.01)
            plfs.request({"cmd": "resume"})  # the disk works again: the journal still refuses
            for n in (4, 5):
                with pytest.raises(StorageError, match=r"background sync of .* failed: .*Input/output "
                                                       r"error") as info:
                    await journal.record(TransactionLog(n, "op", f"r{n}", LogStatus.Completed),
                                         increment="op")
                assert info.value.path == str(store)
            with pytest.raises(StorageError, match="background sync"):
                await journal.log_transaction(TransactionLog(6, "op", "r6", LogStatus.Completed))
            with pytest.raises(StorageError):
                await journal.close()

        run(main())
        with SovereignJournal(store) as reopened:  # reopening recovers a consistent store
            assert reopened.journal_count() in (3, 4)
            assert reopened.recover_op_count("op") == reopened.journal_count()
