"""How writes reach the storage: group commit (many callers, one storage call) and the
background sync of interval policies."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from .._errors import JournalError
from ..storage import Storage, WriteRequest


class _Pending:
    """A write waiting for a commit; filled in by whichever thread leads that commit."""

    __slots__ = ("done", "error", "lead", "request", "result", "wakeup")

    def __init__(self, request: WriteRequest) -> None:
        self.request = request
        self.result: list[int] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.lead = False  # set when the waiter is handed leadership instead of a result
        self.wakeup: threading.Lock | None = None  # held while its owner sleeps

class _GroupCommit:
    """Leader/follower group commit with hand-off.

    A caller queues its request. If no commit is running it becomes the leader: it takes every
    queued request and applies them in ONE storage transaction, wakes exactly the callers that
    transaction served, and hands leadership to a caller still queued (if any) before returning.
    Callers arriving during a commit sleep on their own lock — no thundering herd — and are
    served together by the next leader. Nobody returns before the transaction holding its own
    request has committed.
    """

    def __init__(self, storage: Storage, on_commit: Callable[[], None] | None = None) -> None:
        self._storage = storage
        self._on_commit = on_commit
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leader: _Pending | None = None  # the last item of the leading caller's run, if any
        self._batch: list[_Pending] | None = None  # the requests the leader took, until served
        self._last_batch = 1

    @property
    def _leading(self) -> bool:
        """Whether a caller leads a commit now."""
        return self._leader is not None

    def submit(self, request: WriteRequest) -> list[int]:
        item = _Pending(request)
        self.run([item])
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def run(self, items: list[_Pending]) -> None:
        """Commit ``items`` (with whatever else is queued); return when all of them are done.

        An exception that interrupts the caller here (``KeyboardInterrupt`` in the main thread)
        never leaves the others stuck: a sleeping caller withdraws its items still queued; a
        leader hands the lead on, and every caller of the transaction it was leading is woken,
        served if its result was in, else with a :class:`JournalError` saying the write may or
        may not be stored."""
        last = items[-1]  # items enter the queue together, so one transaction takes them all
        batch: list[_Pending] | None = None
        with self._lock:
            self._queue.extend(items)
            lead = self._leader is None
            if lead:
                self._leader = last
                if self._last_batch <= 1:  # a lone writer takes the queue at once
                    self._batch = batch = self._queue
                    self._queue = []
            else:
                wakeup = last.wakeup = threading.Lock()
                wakeup.acquire()
        if not lead:
            try:
                wakeup.acquire()  # released by a leader: either we are done, or we lead now
            except BaseException as exc:
                self._abandon(items, last, exc)
                raise
            if last.done:
                return
            assert last.lead
        try:
            self._lead(batch, last)
        except BaseException as exc:
            self._abandon(items, last, exc)
            raise

    def _lead(self, batch: list[_Pending] | None, last: _Pending) -> None:
        while True:
            if batch is None:
                # Callers served by the previous commit are often still on their way back
                # (they need the GIL). When it served many, yield a moment so this commit can
                # take them too, instead of committing almost alone.
                for _ in range(_GATHER_YIELDS):
                    if len(self._queue) * 2 > self._last_batch:
                        break
                    time.sleep(0)
                with self._lock:
                    self._batch = batch = self._queue
                    self._queue = []
            self._last_batch = len(batch)
            self._apply(batch)
            for pending in batch:
                pending.done = True
                if pending.wakeup is not None and pending is not last:
                    pending.wakeup.release()
            self._batch = None
            if last.done:
                break
            batch = None
        with self._lock:  # hand leadership over, or give it up
            self._hand_over()

    def _hand_over(self) -> None:
        """Wake the owner of the last queued run to lead, or give the lead up (``_lock`` held)."""
        if self._queue:
            successor = self._queue[-1]  # the last item of a run, whose owner is asleep
            successor.lead = True
            assert successor.wakeup is not None
            successor.wakeup.release()
            self._leader = successor
        else:
            self._leader = None

    def _abandon(self, items: list[_Pending], last: _Pending, exc: BaseException) -> None:
        """The caller of ``items`` leaves, interrupted by ``exc``: keep the others going."""
        with self._lock:
            batch = self._batch if self._leader is last else None
            mine = {id(p) for p in items} | {id(p) for p in batch or ()}
            self._queue = [p for p in self._queue if id(p) not in mine]  # never to be written
            for pending in batch or ():
                if not pending.done:
                    if pending.result is None and pending.error is None:
                        pending.error = JournalError(
                            f"the commit writing this request was interrupted ({type(exc).__name__}): "
                            "it may or may not be stored")
                    pending.done = True
                if pending.wakeup is not None and pending is not last:
                    with contextlib.suppress(RuntimeError):  # (woken already, and not asleep again)
                        pending.wakeup.release()
            if self._leader is last:  # still this caller's to pass on
                self._batch = None
                self._hand_over()

    def _apply(self, batch: list[_Pending]) -> None:
        try:
            results = self._storage.write_batch([p.request for p in batch])
        except BaseException as exc:  # every waiter of this transaction learns it failed
            for pending in batch:
                pending.error = exc
            return
        if self._on_commit is not None:
            self._on_commit()
        for pending, result in zip(batch, results, strict=True):
            pending.result = result

class _Syncer:
    """Background durability for ``interval`` policies: syncs within N ms of a commit."""

    def __init__(self, storage: Storage, interval_ms: int) -> None:
        self._storage = storage
        self._interval = interval_ms / 1000
        self._stop = threading.Event()
        self._dirty = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"krepis-sync:{storage.location}",
                                        daemon=True)
        self._thread.start()

    def mark_dirty(self) -> None:
        self._dirty = True

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._dirty:
                self._dirty = False  # a commit landing during sync() sets it again
                try:
                    self._storage.sync()
                except BaseException as exc:
                    self.error = exc
                    return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

_GATHER_YIELDS = 3
