"""The asyncio journal (``krepis.journal._async``) at its edges: ONE writer thread (writes queued
behind a busy writer wait for it; a close queued behind writes runs after them), one drain asked
for per batch of queued writes and asked again once the queue ran dry, a write after a drain that
failed unexpectedly still served, a failed background sync reported by the next awaited write,
close in a forked child without the parent's writer thread, close not waiting for reads in
flight, the repr, and every read handing its arguments to the synchronous journal (on an archived
store whose archive moved, so the default answers differ from the asked-for ones)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import krepis.journal._async as async_module
import krepis.journal._fork as fork
from archivekit import FIRST1, Built, built
from krepis import AsyncSovereignJournal, SovereignJournal, StorageError
from krepis.tlog._note import generate_signer
from test_journal_commit_units import WAIT, Gated

__all__ = ["built"]


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _names() -> set[str]:
    return {t.name for t in threading.enumerate()}


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


def _busy_writer(journal: AsyncSovereignJournal, gate: threading.Event) -> None:
    """Hold the writer thread until ``gate`` is set."""
    journal._writer.submit(gate.wait, WAIT)


def test_one_writer_thread_and_one_drain_per_batch(tmp_path: Path) -> None:
    gate = threading.Event()

    async def main() -> None:
        async with AsyncSovereignJournal(tmp_path / "s", flush="sync") as journal:
            assert repr(journal) == f"<AsyncSovereignJournal {str(tmp_path / 's')!r} flush=sync>"
            _busy_writer(journal, gate)
            submitted: list[object] = []
            real = journal._writer.submit

            def counting(fn: Callable[..., Any], /, *args: Any) -> Any:
                submitted.append(fn)
                return real(fn, *args)

            journal._writer.submit = counting  # type: ignore[method-assign]
            tasks = [asyncio.create_task(journal.increment_op_count("x")) for _ in range(5)]
            await _until(lambda: len(journal._queue) == 5, "five writes are queued")
            assert len(submitted) == 1  # the first write asked for a drain; the others joined it
            # the writer is busy: no second writer thread took the drain
            assert "krepis-async-writer_0" in _names() and "krepis-async-writer_1" not in _names()
            closing = asyncio.create_task(journal.close())
            await asyncio.sleep(0)
            assert len(submitted) == 2  # close() queued behind the drain, in the same thread
            assert "krepis-async-writer_1" not in _names() and not journal.closed
            gate.set()
            assert sorted(await asyncio.wait_for(asyncio.gather(*tasks), WAIT)) == [1, 2, 3, 4, 5]
            await asyncio.wait_for(closing, WAIT)
            assert journal.closed

    try:
        run(main())
    finally:
        gate.set()
    with SovereignJournal(tmp_path / "s") as journal:
        assert journal.recover_op_count("x") == 5


def test_a_drain_is_asked_for_again_once_the_queue_ran_dry(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(tmp_path / "s", flush="sync") as journal:
            for n in range(1, 4):  # each write alone: the drain before it ended with an empty queue
                assert await asyncio.wait_for(journal.increment_op_count("x"), WAIT) == n
                await _until(lambda: not journal._draining, "the drain ended")
            assert await journal.op_counts() == {"x": 3}

    run(main())


def test_a_write_after_a_drain_that_failed_is_served(tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncSovereignJournal(tmp_path / "s", flush="sync") as journal:
            loop = asyncio.get_running_loop()
            real = loop.call_soon_threadsafe
            failed: list[object] = []

            def failing(callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
                if callback is async_module._deliver and not failed:
                    failed.append(args)
                    raise MemoryError("injected")
                return real(callback, *args, **kw)

            loop.call_soon_threadsafe = failing  # type: ignore[method-assign]
            lost = asyncio.create_task(journal.increment_op_count("x"))
            await _until(lambda: bool(failed) and not journal._draining, "the drain failed and ended")
            assert await asyncio.wait_for(journal.increment_op_count("x"), WAIT) == 2
            lost.cancel()
            loop.call_soon_threadsafe = real  # type: ignore[method-assign]

    run(main())


@pytest.fixture
def gated(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Gated]]:
    """Journals opened meanwhile use the real LMDB adapter with failures to inject (``Gated``)."""
    import krepis.storage as port

    made: list[Gated] = []

    def open_gated(location: str, durable: bool = True, create: bool = True) -> Gated:
        made.append(Gated(os.fspath(location)))
        return made[-1]

    monkeypatch.setattr("krepis.journal._journal.open_storage", open_gated)
    assert port.open_storage is not open_gated
    yield made


def test_a_failed_background_sync_is_reported_by_the_next_awaited_write(
        tmp_path: Path, gated: list[Gated]) -> None:
    async def main() -> None:
        journal = AsyncSovereignJournal(tmp_path / "s", flush="interval:1ms")
        [storage] = gated
        failure = OSError(5, "Input/output error")
        storage.sync_fail = failure
        assert await journal.increment_op_count("x") == 1  # returned before the sync
        syncer = journal.sync_journal._syncer
        assert syncer is not None
        await _until(lambda: syncer.error is not None, "the background sync failed")
        for _ in range(2):  # the next write, and every one after
            with pytest.raises(StorageError) as info:
                await journal.increment_op_count("x")
            assert str(info.value) == (f"background sync of {tmp_path / 's'} failed: "
                                       "[Errno 5] Input/output error")
            assert info.value.path == str(tmp_path / "s")
            assert info.value.__cause__ is failure
        assert storage.batches == [1]  # the refused writes never reached the store
        with pytest.raises(StorageError, match="background sync"):
            await journal.close()
        assert journal.closed

    run(main())


def test_close_in_a_forked_child_does_not_use_the_parents_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()

    async def main() -> None:
        journal = AsyncSovereignJournal(tmp_path / "s", flush="sync")
        await journal.increment_op_count("x")
        _busy_writer(journal, gate)  # (in a real child the writer thread does not exist)
        monkeypatch.setattr(fork, "_fork_generation", fork.generation() + 1)
        await asyncio.wait_for(journal.close(), WAIT)
        assert journal.closed
        await journal.close()  # idempotent
        monkeypatch.undo()
        gate.set()
        journal.sync_journal._storage.close()  # (the "parent's" store, for this test's cleanup)
        journal._writer.shutdown()
        journal._readers.shutdown()

    try:
        run(main())
    finally:
        gate.set()


def test_close_does_not_wait_for_reads_in_flight(tmp_path: Path) -> None:
    release = threading.Event()
    finished: list[bool] = []

    def slow_read() -> None:
        release.wait(WAIT)
        finished.append(True)

    async def main() -> None:
        journal = AsyncSovereignJournal(tmp_path / "s", flush="sync")
        journal._readers.submit(slow_read)
        await asyncio.wait_for(journal.close(), WAIT)
        assert finished == []  # close() returned while the read was still running
        release.set()

    try:
        run(main())
    finally:
        release.set()


def test_every_read_hands_its_arguments_over(built: Built, tmp_path: Path) -> None:
    store, arch = built.copy(tmp_path)
    moved = tmp_path / "moved"
    signer = generate_signer("example.com/async")

    async def main() -> None:
        async with AsyncSovereignJournal(store, flush="sync") as journal:
            sync = journal.sync_journal
            live = await journal.journal_count(live_only=True)
            assert live == sync.journal_count(live_only=True) < await journal.journal_count()
            assert await journal.entry_counts() == sync.entry_counts()
            assert (await journal.verify(live_only=True)).archived == 0
            assert (await journal.verify()).archived == 3 * 256
            assert await journal.check_archive() == str(arch)
            assert (await journal.verify_archive()).bundles == (await journal.verify_archive(arch)).bundles
            by_status = await journal.summary("status", op_name=built.log1[0].op_name)
            assert by_status == sync.summary("status", op_name=built.log1[0].op_name)
            assert by_status != await journal.summary()
            assert await journal.entry(FIRST1 + 1) == built.log1[1]
            with pytest.raises(KeyError):
                await journal.entry(FIRST1 + 1, live_only=True)
            assert await journal.tree_head() == sync.tree_head()
            root_100 = await journal.tree_root(100)
            assert root_100 == sync.tree_root(100) != await journal.tree_root()
            os.rename(arch, moved)  # the recorded archive is gone; the moved one is named
            assert await journal.get_archive_dir() == str(arch)
            assert await journal.check_archive(moved) == str(moved)
            assert (await journal.verify_archive(moved)).bundles == 5
            assert await journal.entry(FIRST1 + 1, archive=moved) == built.log1[1]
            assert await journal.tree_root(100, archive=moved) == root_100
            proof = await journal.inclusion_proof(FIRST1 + 1, tree_size=100, archive=moved)
            assert proof == sync.inclusion_proof(FIRST1 + 1, tree_size=100, archive=moved)
            assert (await journal.consistency_proof(100, 300, archive=moved)).new_size == 300
            assert (await journal.verify(archive=moved)).archived == 3 * 256
            with pytest.raises(StorageError):
                await journal.check_archive()
            assert await journal.set_archive_dir(moved) == str(moved)
            assert await journal.get_archive_dir() == str(moved)
            report = await journal.archive(moved, keep_last=len(built.log1) - 4 * 256)
            assert report.bundles == 1
            assert (await journal.entry_counts()).archived == 4 * 256
            assert await journal.checkpoints() == []
            note = await journal.sign_checkpoint(signer)
            assert await journal.checkpoints() == sync.checkpoints() != []
            assert note.startswith("example.com/async\n")
            assert await journal.get_recent_logs(2) == sync.get_recent_logs(2)
            assert len(await journal.get_recent_logs(2)) == 2

    run(main())


def test_reads_and_writes_of_a_closed_journal_are_refused_before_any_thread(tmp_path: Path) -> None:
    from krepis import ClosedError

    async def main() -> None:
        journal = AsyncSovereignJournal(tmp_path / "s", flush="sync")
        await journal.close()
        for call in (journal.op_counts(), journal.increment_op_count("x"), journal.recover_op_count("x")):
            with pytest.raises(ClosedError, match="is closed"):
                await call
        with pytest.raises(ValueError):
            await journal.recover_op_count("")  # the name is checked first

    run(main())


def test_archive_takes_its_directory_and_checkpoints_are_signed_in_the_writer_thread(tmp_path: Path) -> None:
    from krepis import LogStatus, TransactionLog
    from test_archive import fill_fast

    signer = generate_signer("example.com/async")

    async def main() -> None:
        async with AsyncSovereignJournal(tmp_path / "s", flush="sync") as journal:
            fill_fast(journal.sync_journal, [TransactionLog(i, "op", f"r{i}", LogStatus.Completed)
                                             for i in range(300)])
            # the store records no archive yet: the directory given is the only one there is
            report = await journal.archive(tmp_path / "cold", keep_last=10)
            assert report.bundles == 1 and await journal.get_archive_dir() == str(tmp_path / "cold")
            threads: list[str] = []
            real = journal.sync_journal.sign_checkpoint

            def signing(s: Any) -> str:
                threads.append(threading.current_thread().name)
                return real(s)

            journal.sync_journal.sign_checkpoint = signing  # type: ignore[method-assign]
            note = await journal.sign_checkpoint(signer)
            assert note.startswith("example.com/async\n300\n")
            assert threads == ["krepis-async-writer_0"]  # behind the writes queued before it

    run(main())
