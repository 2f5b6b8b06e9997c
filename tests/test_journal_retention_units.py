"""Retention in the background (``krepis.journal._retention``) against a stand-in for the journal
(the ``_Archiver`` protocol: a path and one archive step): each run asks for one archive step with
the policy's limits and the retention minimum of bundles, a failed run is kept and logged and the
next one tries again, ``runs`` counts them, the thread is a named daemon, and ``stop()`` waits for
a run in progress — or, called from the thread itself, ends it without joining itself. The clock
is ticked by the test (``threading.Event`` replaced in the module only)."""

from __future__ import annotations

import logging
import threading
import types
from collections.abc import Callable, Iterator

import pytest

import krepis.journal._retention as retention_module
from krepis import RetentionPolicy
from krepis.archive import RETENTION_MIN_BUNDLES
from krepis.journal._retention import RetentionThread
from test_journal_commit_units import WAIT, Caller, Clock, wait_until

STORE = "/srv/audit store"


class Journal:
    """The journal's side of retention: its path and one archive step, which records its
    arguments and does what ``steps`` says next (raise, call, or return)."""

    path = STORE

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None, float | None, int]] = []
        self.steps: list[BaseException | Callable[[], None]] = []
        self.ended: list[str] = []

    def _archive_step(self, directory: str, *, keep_last: int | None = None,
                      keep_days: float | None = None, min_bundles: int = 1) -> object:
        self.calls.append((directory, keep_last, keep_days, min_bundles))
        step = self.steps.pop(0) if self.steps else None
        if isinstance(step, BaseException):
            raise step
        if step is not None:
            step()
        self.ended.append("step")
        return "report"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Clock]]:
    Clock.made = []
    monkeypatch.setattr(retention_module, "threading", types.SimpleNamespace(
        Event=Clock, Thread=threading.Thread, current_thread=threading.current_thread))

    def made() -> Clock:
        [one] = Clock.made
        wait_until(lambda: len(one.waits) == 1, "the retention thread waits")
        return one

    yield made
    for one in Clock.made:
        one.set()


def _thread() -> threading.Thread:
    [thread] = [t for t in threading.enumerate() if t.name == f"krepis-retention:{STORE}"]
    return thread


def test_each_run_is_one_archive_step_with_the_policys_limits(clock: Callable[[], Clock]) -> None:
    journal = Journal()
    policy = RetentionPolicy(keep_last=1000, every=2.5)
    retention = RetentionThread(journal, policy, "/cold")
    ticks = clock()
    assert (retention.policy, retention.directory) == (policy, "/cold")
    assert (retention.runs, retention.error) == (0, None)
    assert ticks.waits == [2.5]  # every policy.every seconds
    thread = _thread()
    assert thread.daemon
    assert journal.calls == []  # nothing before the first interval
    ticks.tick()
    assert journal.calls == [("/cold", 1000, None, RETENTION_MIN_BUNDLES)]
    assert retention.runs == 1 and retention.error is None
    ticks.tick()
    assert journal.calls == [("/cold", 1000, None, RETENTION_MIN_BUNDLES)] * 2
    assert retention.runs == 2
    assert ticks.waits == [2.5] * 3
    retention.stop()
    assert not thread.is_alive()
    assert retention.runs == 2


def test_a_keep_days_policy_passes_its_days(clock: Callable[[], Clock]) -> None:
    journal = Journal()
    retention = RetentionThread(journal, RetentionPolicy(keep_days=1.5, every=60), "/cold")
    ticks = clock()
    assert ticks.waits == [60]
    ticks.tick()
    assert journal.calls == [("/cold", None, 1.5, RETENTION_MIN_BUNDLES)]
    retention.stop()


def test_a_failed_run_is_kept_and_logged_and_the_next_run_tries_again(
        clock: Callable[[], Clock], caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    failure = OSError(28, "No space left on device")
    journal.steps = [failure, failure]
    retention = RetentionThread(journal, RetentionPolicy(keep_last=5, every=1), "/cold")
    ticks = clock()
    with caplog.at_level(logging.WARNING, logger="krepis.retention"):
        ticks.tick()
        assert retention.error is failure and retention.runs == 1
        ticks.tick()
        assert retention.error is failure and retention.runs == 2
        ticks.tick()
    assert retention.error is None and retention.runs == 3  # a good run clears the error
    assert len(journal.calls) == 3
    records = [r for r in caplog.records if r.name == "krepis.retention"]
    assert [r.levelno for r in records] == [logging.WARNING] * 2
    assert [r.getMessage() for r in records] == [
        f"retention run on {STORE} failed: [Errno 28] No space left on device"] * 2
    retention.stop()
    assert retention.error is None


def test_stop_waits_for_a_run_in_progress(clock: Callable[[], Clock]) -> None:
    journal = Journal()
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        assert release.wait(WAIT)

    journal.steps = [slow]
    retention = RetentionThread(journal, RetentionPolicy(keep_last=5, every=1), "/cold")
    ticks = clock()
    thread = _thread()
    ticks.pass_one()  # the run starts and holds
    assert entered.wait(WAIT)
    order: list[str] = journal.ended

    def stop() -> None:
        retention.stop()
        order.append("stop returned")

    stopper = Caller(stop)
    wait_until(ticks.is_set, "stop() asked the thread to end")
    release.set()
    stopper.outcome()
    assert order == ["step", "stop returned"]  # the run ended before stop() returned
    assert not thread.is_alive()
    assert retention.runs == 1 and retention.error is None


def test_stop_from_the_retention_thread_itself_ends_it(clock: Callable[[], Clock]) -> None:
    journal = Journal()
    holder: list[RetentionThread] = []
    journal.steps = [lambda: holder[0].stop()]  # (as a journal closed by its own retention run)
    retention = RetentionThread(journal, RetentionPolicy(keep_last=5, every=1), "/cold")
    holder.append(retention)
    ticks = clock()
    thread = _thread()
    ticks.pass_one()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert retention.error is None  # it did not try to join itself
    assert retention.runs == 1 and journal.ended == ["step"]
    retention.stop()  # and stopping it again from outside returns at once
