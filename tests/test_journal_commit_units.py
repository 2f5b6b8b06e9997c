"""How writes reach the storage (``krepis.journal._commit``), one piece at a time, on a real LMDB
store: the group commit (one transaction for the callers queued together, each caller served by
the transaction holding its own request, leadership handed to a caller still asleep, a failed
transaction reported to every caller in it, the yields that let a large batch's callers come back)
and the interval syncer (a sync only after a commit, every ``interval`` seconds, a failure kept and
the thread ended). Waits are on conditions, never on timing; the syncer's clock is ticked by the
test (``threading.Event`` replaced in the module only)."""

from __future__ import annotations

import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import krepis.journal._commit as commit_module
from krepis import ClosedError, JournalError, LogStatus, TransactionLog
from krepis._model import encode_log
from krepis.journal._commit import _GroupCommit, _Pending, _Syncer
from krepis.storage import WriteRequest
from krepis.storage.lmdb import LmdbStorage

WAIT = 10.0  # seconds before a wait on a condition gives up (only a broken commit takes that long)


class Gated(LmdbStorage):
    """The real LMDB adapter; records the size of each ``write_batch`` and, while ``gate`` is
    clear, holds each one at its start. The next of ``fails`` is raised instead of writing;
    ``syncs`` counts ``sync()`` calls, ``sync_fail`` is raised by the next one, and
    ``during_sync`` runs inside the next one."""

    def __init__(self, location: str) -> None:
        super().__init__(location, durable=True, create=True)
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fails: list[BaseException] = []
        self.syncs = 0
        self.sync_fail: BaseException | None = None
        self.during_sync: Callable[[], None] | None = None

    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        self.batches.append(len(requests))
        assert self.gate.wait(WAIT)
        if self.fails:
            raise self.fails.pop(0)
        return super().write_batch(requests)

    def sync(self) -> None:
        self.syncs += 1
        if self.during_sync is not None:
            during, self.during_sync = self.during_sync, None
            during()
        if self.sync_fail is not None:
            exc, self.sync_fail = self.sync_fail, None
            raise exc
        super().sync()


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Gated]:
    s = Gated(str(tmp_path / "store"))
    yield s
    s.gate.set()
    s.close()


def counter(name: bytes = b"x") -> WriteRequest:
    return WriteRequest((), (name,))


def entry(seq: int) -> WriteRequest:
    log = TransactionLog(seq, "op", f"r{seq}", LogStatus.Completed)
    return WriteRequest([(log, encode_log(log))], ())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.001)


class Caller(threading.Thread):
    """A thread that calls ``fn`` once and keeps its result or exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:
            self.error = exc

    def outcome(self) -> Any:
        self.join(WAIT)
        assert not self.is_alive(), "the call never returned"
        if self.error is not None:
            raise self.error
        return self.result


def queued(commit: _GroupCommit) -> int:
    return len(commit._queue)


# -- the group commit ----------------------------------------------------------------------------
def test_a_lone_caller_commits_alone_at_once_and_gets_its_own_result(
        storage: Gated, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(commit_module, "time", types.SimpleNamespace(sleep=sleeps.append))
    commits: list[int] = []
    commit = _GroupCommit(storage, lambda: commits.append(len(storage.batches)))
    assert commit.submit(counter()) == [1]
    assert commit.submit(entry(1)) == []
    assert commit.submit(counter()) == [2]
    assert commit.submit(counter(b"y")) == [1]
    assert storage.batches == [1, 1, 1, 1]
    assert commits == [1, 2, 3, 4]  # after each commit, before its caller returned
    assert sleeps == []  # after a batch of one, nobody is waited for
    assert storage.entry_count() == 1


def test_a_run_of_several_items_is_one_transaction_and_each_gets_its_result(storage: Gated) -> None:
    commit = _GroupCommit(storage)
    items = [_Pending(counter()), _Pending(entry(1)), _Pending(counter()), _Pending(counter(b"z"))]
    commit.run(items)
    assert storage.batches == [4]
    assert [p.result for p in items] == [[1], [], [2], [1]]
    assert all(p.done and p.error is None and not p.lead for p in items)
    assert commit.submit(counter()) == [3]  # and the commit is free for the next caller


def test_callers_arriving_during_a_commit_are_served_together_by_one_transaction(storage: Gated) -> None:
    commits: list[int] = []
    commit = _GroupCommit(storage, lambda: commits.append(len(storage.batches)))
    storage.gate.clear()
    leader = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 1, "the leader is inside its transaction")
    followers = [Caller(lambda: commit.submit(counter())) for _ in range(3)]
    wait_until(lambda: queued(commit) == 3, "three callers are queued")
    assert storage.batches == [1]  # they sleep: none of them started a transaction of its own
    assert commits == []
    assert all(f.is_alive() for f in followers)
    storage.gate.set()
    assert leader.outcome() == [1]
    assert sorted(f.outcome()[0] for f in followers) == [2, 3, 4]
    assert storage.batches == [1, 3]
    assert commits == [1, 2]
    assert not commit._leading and queued(commit) == 0
    assert commit.submit(counter()) == [5]  # nothing was left holding the lead


def test_leadership_goes_to_the_last_item_of_a_queued_run(storage: Gated) -> None:
    # A run of several items (the asyncio writer's) sleeps on its LAST item's lock only: the leader
    # must hand over to that item, and the new leader wake no one of its own run.
    commit = _GroupCommit(storage)
    storage.gate.clear()
    leader = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 1, "the leader is inside its transaction")
    items = [_Pending(counter()), _Pending(entry(1)), _Pending(counter())]
    run = Caller(lambda: commit.run(items))
    wait_until(lambda: queued(commit) == 3, "the run is queued")
    assert items[-1].wakeup is not None and items[0].wakeup is None and items[1].wakeup is None
    storage.gate.set()
    assert leader.outcome() == [1]
    run.outcome()
    assert [p.result for p in items] == [[2], [], [3]]
    assert items[-1].lead and not items[0].lead
    assert storage.batches == [1, 3]
    assert commit.submit(counter()) == [4]


def test_a_failed_transaction_is_every_callers_error_and_the_commit_goes_on(storage: Gated) -> None:
    commits: list[int] = []
    commit = _GroupCommit(storage, lambda: commits.append(1))
    failure = OSError(5, "injected write failure")
    storage.fails = [failure]
    with pytest.raises(OSError) as raised:
        commit.submit(counter())
    assert raised.value is failure
    assert commits == []  # on_commit only after a commit
    # a run's items all learn it, with no result
    storage.fails = [failure]
    items = [_Pending(counter()), _Pending(counter())]
    commit.run(items)
    assert [p.error for p in items] == [failure, failure]
    assert [p.result for p in items] == [None, None]
    assert all(p.done for p in items)
    # followers of a failed transaction learn it too; then the commit works again
    storage.gate.clear()
    storage.fails = [failure, failure]  # the leader's transaction and the followers'
    leader = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 3, "the leader is inside its transaction")
    followers = [Caller(lambda: commit.submit(counter())) for _ in range(2)]
    wait_until(lambda: queued(commit) == 2, "two callers are queued")
    storage.gate.set()
    for caller in [leader, *followers]:
        with pytest.raises(OSError) as raised:
            caller.outcome()
        assert raised.value is failure
    assert storage.batches == [1, 2, 1, 2]
    assert commits == []
    assert commit.submit(counter()) == [1]
    assert commits == [1]


def test_a_leader_interrupted_after_its_commit_wakes_its_callers_and_hands_the_lead_on(
        storage: Gated) -> None:
    """Ctrl-C reaching the leading caller between its transaction's commit and the hand-out of
    results: the callers it served are woken (the outcome unknown to them: a JournalError), the
    lead goes on to a queued caller, and later writes are served. Without this, every later write
    of the process waited for ever."""
    interrupts = [KeyboardInterrupt()]

    def on_commit() -> None:
        if len(storage.batches) == 2 and interrupts:  # in the second transaction's leader
            raise interrupts.pop()

    commit = _GroupCommit(storage, on_commit)
    storage.gate.clear()
    first = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 1, "the first leader is inside its transaction")
    served = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: queued(commit) == 1, "a caller is queued")
    leads = Caller(lambda: commit.submit(counter()))  # the last queued: it leads the next commit
    wait_until(lambda: queued(commit) == 2, "two callers are queued")
    storage.gate.set()
    assert first.outcome() == [1]
    with pytest.raises(KeyboardInterrupt):
        leads.outcome()
    with pytest.raises(JournalError) as info:
        served.outcome()
    assert type(info.value) is JournalError
    assert str(info.value) == ("the commit writing this request was interrupted (KeyboardInterrupt): it "
                               "may or may not be stored")
    assert storage.batches == [1, 2]
    assert commit.submit(counter()) == [4]  # (both were stored: it committed)
    assert not commit._leading and queued(commit) == 0


def test_a_first_leader_interrupted_after_its_commit_hands_the_lead_to_the_callers_queued(
        storage: Gated) -> None:
    """The same for a caller that took the lead itself (no one handed it over): interrupted after
    its own commit, it hands the lead to the callers queued meanwhile, who are then served."""
    interrupts = [KeyboardInterrupt()]

    def on_commit() -> None:
        if interrupts:
            raise interrupts.pop()

    commit = _GroupCommit(storage, on_commit)
    storage.gate.clear()
    first = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 1, "the first leader is inside its transaction")
    queued_callers = [Caller(lambda: commit.submit(counter())) for _ in range(2)]
    wait_until(lambda: queued(commit) == 2, "two callers are queued")
    storage.gate.set()
    with pytest.raises(KeyboardInterrupt):
        first.outcome()
    assert sorted(c.outcome()[0] for c in queued_callers) == [2, 3]
    assert storage.batches == [1, 2] and not commit._leading


def test_an_interrupted_leader_fails_only_the_requests_not_served_and_withdraws_those_still_queued(
        storage: Gated) -> None:
    """``_abandon`` on the state an interrupt can leave: the leader had taken the queue as its batch
    but not yet emptied the queue (the batch list still is the queue), and one request of it had its
    result handed out. That one keeps its result; the others learn the outcome is unknown; none stays
    queued to be written again; each sleeper is woken; the lead is given up."""
    commit = _GroupCommit(storage)
    own, served, unknown = _Pending(counter()), _Pending(counter()), _Pending(counter())
    for pending in (served, unknown):
        pending.wakeup = threading.Lock()
        pending.wakeup.acquire()
    served.result = [7]
    commit._queue = commit._batch = [served, unknown, own]
    commit._leader = own  # (it leads)
    commit._abandon([own], own, KeyboardInterrupt())
    assert commit._queue == [] and commit._batch is None
    assert (served.done, served.result, served.error) == (True, [7], None)
    assert unknown.done and unknown.result is None and isinstance(unknown.error, JournalError)
    assert not served.wakeup.locked() and not unknown.wakeup.locked()  # woken
    assert not commit._leading and commit._leader is None
    assert commit.submit(counter()) == [1]  # (nothing above was written)


class _InterruptedLock:
    """A lock whose blocking wait is interrupted (as by Ctrl-C) for the first caller to sleep."""

    interrupted: ClassVar[list[bool]] = []

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.locked() and not self.interrupted:
            self.interrupted.append(True)
            raise KeyboardInterrupt
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()


def test_a_caller_interrupted_while_asleep_withdraws_its_request_and_the_lead_is_not_lost(
        storage: Gated, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = _GroupCommit(storage)
    _InterruptedLock.interrupted = []
    monkeypatch.setattr(commit_module, "threading", types.SimpleNamespace(Lock=_InterruptedLock))
    storage.gate.clear()
    leader = Caller(lambda: commit.submit(counter()))
    wait_until(lambda: len(storage.batches) == 1, "the leader is inside its transaction")
    left = Caller(lambda: commit.submit(counter(b"left")))
    with pytest.raises(KeyboardInterrupt):
        left.outcome()
    assert queued(commit) == 0  # withdrawn: never to be written
    storage.gate.set()
    assert leader.outcome() == [1]
    assert not commit._leading
    assert Caller(lambda: commit.submit(counter())).outcome() == [2]  # the lead was not handed to it
    assert storage.batches == [1, 1]
    assert storage.get_count(b"left") == 0


def test_a_closed_store_is_the_callers_error(storage: Gated) -> None:
    commit = _GroupCommit(storage)
    storage.close()
    with pytest.raises(ClosedError, match=r"^the journal at .* is closed$"):
        commit.submit(counter())


def _arrivals(commit: _GroupCommit, arrivals: int, callers: list[Caller]) -> Callable[[float], None]:
    """A ``time.sleep`` for the commit module: each of the first ``arrivals`` calls starts a caller
    and returns once it is queued (a caller arriving while the leader yields)."""

    def sleep(seconds: float) -> None:
        assert seconds == 0
        sleeps.append(seconds)
        if len(callers) < arrivals:
            before = queued(commit)
            callers.append(Caller(lambda: commit.submit(counter())))
            wait_until(lambda: queued(commit) == before + 1, "the arriving caller is queued")

    sleeps: list[float] = []
    sleep.calls = sleeps  # type: ignore[attr-defined]
    return sleep


def test_after_a_large_batch_the_leader_yields_until_half_of_its_callers_are_back(
        storage: Gated, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = _GroupCommit(storage)
    commit.run([_Pending(counter()) for _ in range(4)])  # a batch of 4
    callers: list[Caller] = []
    sleep = _arrivals(commit, 2, callers)
    monkeypatch.setattr(commit_module, "time", types.SimpleNamespace(sleep=sleep))
    # one caller, then one more at each yield: with 3 queued (more than half of 4) it commits
    assert commit.submit(counter()) in ([5], [6], [7])
    assert sleep.calls == [0, 0]  # type: ignore[attr-defined]
    assert storage.batches == [4, 3]
    assert sorted([*(c.outcome()[0] for c in callers)]) in ([5, 6], [5, 7], [6, 7])


def test_the_leader_yields_three_times_at_most_then_commits_what_is_queued(
        storage: Gated, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = _GroupCommit(storage)
    commit.run([_Pending(counter()) for _ in range(2)])  # a batch of 2: more than one caller
    callers: list[Caller] = []
    sleep = _arrivals(commit, 0, callers)
    monkeypatch.setattr(commit_module, "time", types.SimpleNamespace(sleep=sleep))
    assert commit.submit(counter()) == [3]  # nobody came back: it commits alone
    assert sleep.calls == [0, 0, 0]  # type: ignore[attr-defined]
    assert storage.batches == [2, 1]
    assert commit.submit(counter()) == [4]  # after a batch of one, at once
    assert sleep.calls == [0, 0, 0]  # type: ignore[attr-defined]


# -- the interval syncer -------------------------------------------------------------------------
class Clock:
    """Stands for ``threading.Event`` in the commit module: ``wait(timeout)`` records its timeout
    and returns when the test calls :meth:`tick` (False) or the event is set (True)."""

    made: ClassVar[list[Clock]] = []

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._set = False
        self._ticks = 0
        self.waits: list[float | None] = []
        Clock.made.append(self)

    def set(self) -> None:
        with self._cond:
            self._set = True
            self._cond.notify_all()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            self.waits.append(timeout)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._set or self._ticks > 0)
            if self._set:
                return True
            self._ticks -= 1
            return False

    def pass_one(self) -> None:
        """One interval passes; returns at once."""
        with self._cond:
            self._ticks += 1
            self._cond.notify_all()

    def tick(self) -> None:
        """One interval passes; returns when the thread is waiting for the next one."""
        with self._cond:
            waits = len(self.waits)
            self._ticks += 1
            self._cond.notify_all()
            assert self._cond.wait_for(lambda: len(self.waits) > waits, WAIT), "the syncer never waited again"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[], Clock]:
    Clock.made = []
    monkeypatch.setattr(commit_module, "threading", types.SimpleNamespace(
        Event=Clock, Thread=threading.Thread, Lock=threading.Lock, current_thread=threading.current_thread))

    def made() -> Clock:
        [one] = Clock.made
        wait_until(lambda: len(one.waits) == 1, "the syncer waits")
        return one

    return made


def _sync_thread(storage: Gated) -> threading.Thread:
    [thread] = [t for t in threading.enumerate() if t.name == f"krepis-sync:{storage.location}"]
    return thread


def test_the_syncer_syncs_each_interval_only_after_a_commit(
        storage: Gated, clock: Callable[[], Clock]) -> None:
    syncer = _Syncer(storage, 20)
    ticks = clock()
    assert ticks.waits == [0.02]  # the interval, in seconds
    thread = _sync_thread(storage)
    assert thread.daemon  # a journal left open never keeps the process from exiting
    ticks.tick()
    assert storage.syncs == 0  # nothing committed, nothing to sync
    syncer.mark_dirty()
    ticks.tick()
    assert storage.syncs == 1
    ticks.tick()
    assert storage.syncs == 1  # synced: clean again
    # a commit landing during a sync marks the store dirty again: synced at the next interval
    syncer.mark_dirty()
    storage.during_sync = syncer.mark_dirty
    ticks.tick()
    assert storage.syncs == 2
    ticks.tick()
    assert storage.syncs == 3
    ticks.tick()
    assert storage.syncs == 3
    assert ticks.waits == [0.02] * 7
    syncer.stop()
    assert not thread.is_alive()  # stop() returns once the thread has ended
    assert syncer.error is None
    assert storage.syncs == 3


def test_a_failed_sync_is_kept_and_ends_the_syncer(storage: Gated, clock: Callable[[], Clock]) -> None:
    syncer = _Syncer(storage, 5)
    ticks = clock()
    assert ticks.waits == [0.005]
    thread = _sync_thread(storage)
    failure = OSError(5, "injected sync failure")
    storage.sync_fail = failure
    syncer.mark_dirty()
    ticks.pass_one()
    thread.join(WAIT)
    assert not thread.is_alive()  # no more syncs after a failure: the next write reports it
    assert syncer.error is failure
    assert storage.syncs == 1
    syncer.stop()
    assert syncer.error is failure


def test_a_commit_marks_the_syncer_dirty_through_on_commit(
        storage: Gated, clock: Callable[[], Clock]) -> None:
    syncer = _Syncer(storage, 1)
    ticks = clock()
    commit = _GroupCommit(storage, syncer.mark_dirty)
    ticks.tick()
    assert storage.syncs == 0
    storage.fails = [OSError(5, "injected")]
    with pytest.raises(OSError):
        commit.submit(counter())
    ticks.tick()
    assert storage.syncs == 0  # a failed transaction wrote nothing to sync
    commit.submit(counter())
    ticks.tick()
    assert storage.syncs == 1
    syncer.stop()
