"""AsyncSovereignJournal: the journal for asyncio, with writes of many tasks coalesced."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

from .._model import TransactionLog, check_op_name
from .._policy import FlushPolicy
from ..archive import ArchiveReport, ArchiveVerifyReport, RetentionPolicy
from ..storage import TreeHead, WriteRequest
from ..tlog._note import Signer
from ..tlog._reader import ConsistencyProof, InclusionProof
from . import _fork
from ._archived import EntryCounts
from ._commit import _Pending
from ._journal import DEFAULT_STORAGE, JournalVerifyReport, SovereignJournal, _encode_entry
from ._summary import Summary

__all__ = ["AsyncSovereignJournal"]

T = TypeVar("T")
_Item = tuple[_Pending, "asyncio.Future[list[int]]"]


class AsyncSovereignJournal:
    """The :class:`SovereignJournal` API for asyncio: every method is awaitable, same names.

    Writes never block the event loop. Writes of concurrent tasks are queued and handed to one
    writer thread, which commits everything queued at that moment in ONE transaction, together
    with any synchronous callers of the same journal (group commit). Under ``flush="sync"`` an
    awaited write returns only after its own data is durable. Cancelling a task that awaits a
    write does not undo the write once it was queued.

    Reads run in a worker thread. Construct it inside or outside a running loop; use it with
    ``async with`` or ``await journal.close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_STORAGE,
        *,
        flush: str | FlushPolicy | None = None,
        retention: str | RetentionPolicy | None = None,
        archive: str | os.PathLike[str] | None = None,
    ) -> None:
        self._journal = SovereignJournal(path, flush=flush, retention=retention, archive=archive)
        self._lock = threading.Lock()
        self._queue: list[_Item] = []
        self._draining = False
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="krepis-async-writer")
        self._readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="krepis-async-reader")

    @property
    def sync_journal(self) -> SovereignJournal:
        """The underlying synchronous journal (same store, same commits)."""
        return self._journal

    @property
    def path(self) -> str:
        return self._journal.path

    @property
    def policy(self) -> FlushPolicy:
        return self._journal.policy

    @property
    def closed(self) -> bool:
        return self._journal.closed

    # -- writes ----------------------------------------------------------------------------
    def _submit(self, request: WriteRequest) -> asyncio.Future[list[int]]:
        self._journal._live()
        self._journal._check_syncer()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._queue.append((_Pending(request), future))
            start = not self._draining
            self._draining = True
        if start:
            self._writer.submit(self._drain)
        return future

    def _drain(self) -> None:
        """Writer thread: commit whatever is queued, batch after batch, until the queue is empty."""
        try:
            while True:
                with self._lock:
                    batch, self._queue = self._queue, []
                    if not batch:
                        self._draining = False
                        return
                self._journal._commit.run([pending for pending, _ in batch])
                by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
                for item in batch:
                    by_loop.setdefault(item[1].get_loop(), []).append(item)
                for loop, items in by_loop.items():
                    try:
                        loop.call_soon_threadsafe(_deliver, items)
                    except RuntimeError:  # that loop is closed; nobody is waiting any more
                        pass
        except BaseException:
            with self._lock:
                self._draining = False
            raise

    async def log_transaction(self, log: TransactionLog) -> None:
        """Append one entry (durably under ``sync``)."""
        await self._submit(WriteRequest([_encode_entry(log)], ()))

    async def record(self, log: TransactionLog, *, increment: str | None = None) -> int | None:
        """Append ``log`` and bump ``increment`` in ONE atomic transaction; the new count or None."""
        entry = _encode_entry(log)
        if increment is None:
            await self._submit(WriteRequest([entry], ()))
            return None
        return (await self._submit(WriteRequest([entry], (check_op_name(increment),))))[0]

    async def increment_op_count(self, op_name: str) -> int:
        """Atomically add one to ``op_count:{op_name}``; the new value."""
        return (await self._submit(WriteRequest((), (check_op_name(op_name),))))[0]

    async def clear_all(self) -> None:
        await self._read(self._journal.clear_all)

    async def flush(self) -> None:
        await self._read(self._journal.flush)

    # -- reads -----------------------------------------------------------------------------
    async def _read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._journal._live()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    async def recover_op_count(self, op_name: str) -> int:
        check_op_name(op_name)
        return await self._read(self._journal.recover_op_count, op_name)

    async def op_counts(self) -> dict[str, int]:
        return await self._read(self._journal.op_counts)

    async def journal_count(self, *, live_only: bool = False) -> int:
        return await self._read(self._journal.journal_count, live_only=live_only)

    async def entry_counts(self) -> EntryCounts:
        """:meth:`SovereignJournal.entry_counts`: how many entries are live, archived, in all."""
        return await self._read(self._journal.entry_counts)

    async def summary(self, by: Sequence[str] | str = ("op",), **filters: Any) -> Summary:
        """:meth:`SovereignJournal.summary` with the same arguments, in a worker thread."""
        return await self._read(self._journal.summary, by, **filters)

    async def get_archive_dir(self) -> str | None:
        return await self._read(self._journal.get_archive_dir)

    async def set_archive_dir(self, directory: str | os.PathLike[str]) -> str:
        """:meth:`SovereignJournal.set_archive_dir`, in a worker thread."""
        return await self._read(self._journal.set_archive_dir, directory)

    async def check_archive(self, archive: str | os.PathLike[str] | None = None) -> str | None:
        return await self._read(self._journal.check_archive, archive)

    async def get_recent_logs(self, limit: int) -> list[TransactionLog]:
        return await self._read(self._journal.get_recent_logs, limit)

    async def query(self, **filters: Any) -> list[TransactionLog]:
        """:meth:`SovereignJournal.query` with the same keyword arguments, in a worker thread."""
        return await self._read(self._journal.query, **filters)

    async def entry(self, seq: int, **history: Any) -> TransactionLog:
        """:meth:`SovereignJournal.entry` (``archive=``, ``live_only=`` as there)."""
        return await self._read(self._journal.entry, seq, **history)

    async def next_seq(self) -> int:
        return await self._read(self._journal.next_seq)

    async def op_names(self) -> list[str]:
        return await self._read(self._journal.op_names)

    async def tree_head(self) -> TreeHead:
        return await self._read(self._journal.tree_head)

    async def tree_root(self, size: int | None = None, **history: Any) -> bytes:
        return await self._read(self._journal.tree_root, size, **history)

    async def inclusion_proof(self, seq: int, *, tree_size: int | None = None,
                              **history: Any) -> InclusionProof:
        return await self._read(self._journal.inclusion_proof, seq, tree_size=tree_size, **history)

    async def consistency_proof(self, old_size: int, new_size: int | None = None,
                                **history: Any) -> ConsistencyProof:
        return await self._read(self._journal.consistency_proof, old_size, new_size, **history)

    async def verify(self, **history: Any) -> JournalVerifyReport:
        """:meth:`SovereignJournal.verify` (``archive=``, ``live_only=`` as there)."""
        return await self._read(self._journal.verify, **history)

    async def archive(
        self, directory: str | os.PathLike[str] | None = None, **selector: Any
    ) -> ArchiveReport:
        """:meth:`SovereignJournal.archive`, in a worker thread."""
        return await self._read(self._journal.archive, directory, **selector)

    async def verify_archive(
        self, directory: str | os.PathLike[str] | None = None
    ) -> ArchiveVerifyReport:
        """:meth:`SovereignJournal.verify_archive`, in a worker thread."""
        return await self._read(self._journal.verify_archive, directory)

    async def sign_checkpoint(self, signer: Signer | str) -> str:
        """:meth:`SovereignJournal.sign_checkpoint`, in the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self._journal.sign_checkpoint, signer)

    async def checkpoints(self) -> list[tuple[int, str]]:
        return await self._read(self._journal.checkpoints)

    # -- lifecycle -------------------------------------------------------------------------
    async def close(self) -> None:
        """Wait for queued writes, make everything durable, release the store. Idempotent."""
        if self._journal.closed:
            return
        if self._journal._generation != _fork.generation():
            self._journal.close()  # forked child: the writer thread is the parent's; just let go
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._journal.close)
        self._writer.shutdown(wait=False)
        self._readers.shutdown(wait=False)

    async def __aenter__(self) -> AsyncSovereignJournal:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncSovereignJournal {self.path!r} flush={self.policy}>"


def _deliver(batch: Sequence[_Item]) -> None:
    for pending, future in batch:
        if future.done():  # cancelled while waiting; the write itself stands
            continue
        if pending.error is not None:
            future.set_exception(pending.error)
        else:
            assert pending.result is not None
            future.set_result(pending.result)
