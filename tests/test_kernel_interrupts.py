"""An op that is interrupted — it raises KeyboardInterrupt or SystemExit, or a signal lands while
it is journaled — ends Failed with the error text before the exception goes on; from
``kernel.call`` and from a script alike."""

from __future__ import annotations

import io
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from krepis import Kernel, LogStatus, SovereignJournal, TransactionLog


def entries(store: Path) -> list[tuple[str, LogStatus, str | None]]:
    with SovereignJournal(store) as journal:
        return [(e.op_name, e.status, e.error) for e in journal.query(newest_first=False)]


def op_entries(store: Path, name: str) -> list[tuple[LogStatus, str | None]]:
    return [(status, error) for op, status, error in entries(store) if op == name]


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's own SIGINT handler, as in a plain program (whatever the test runner set)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


RAISED: list[tuple[str, Callable[[], BaseException], str]] = [
    ("keyboard-interrupt", lambda: KeyboardInterrupt("stop now"), "KeyboardInterrupt: stop now"),
    ("system-exit", lambda: SystemExit(3), "SystemExit: 3"),
]


@pytest.mark.parametrize(("make", "text"), [r[1:] for r in RAISED], ids=[r[0] for r in RAISED])
def test_an_op_raising_an_interruption_through_call_is_failed(store: Path, make: Callable[[], BaseException],
                                                               text: str) -> None:
    raised = make()
    kernel = Kernel(store)

    @kernel.op("stop")
    def stop() -> None:
        raise raised

    with pytest.raises(type(raised)) as info, kernel:
        kernel.call("stop")
    assert info.value is raised  # propagated unchanged
    assert op_entries(store, "stop") == [(LogStatus.Started, None), (LogStatus.Failed, text)]
    assert entries(store)[-1] == ("kernel_error", LogStatus.Failed, text)


@pytest.mark.parametrize(("make", "text"), [r[1:] for r in RAISED], ids=[r[0] for r in RAISED])
def test_an_op_raising_an_interruption_in_a_script_is_failed(store: Path, make: Callable[[], BaseException],
                                                              text: str) -> None:
    raised = make()
    kernel = Kernel(store)
    kernel.op("stop")(lambda: (_ for _ in ()).throw(raised))
    with pytest.raises(type(raised)) as info:
        with kernel:
            kernel.run_script("Krepis.ops.op_increment_stats(); Krepis.ops.stop(); "
                              "Krepis.ops.op_increment_stats();", stderr=io.BytesIO())
    assert info.value is raised
    assert op_entries(store, "stop") == [(LogStatus.Started, None), (LogStatus.Failed, text)]
    errors = op_entries(store, "kernel_error")
    # journaled once, by the run, and saying what happened: an op raised it, no signal came
    assert errors == [(LogStatus.Failed, f"Interrupted: an op raised {text}; the script was killed")]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("js_ops_called") == 1


def signal_when_started_is_written(op: str) -> Callable[[FrameType, str, Any], Any]:
    """A tracer that raises SIGINT in this process the moment ``SovereignJournal.record`` has
    written op's Started entry (after the commit, before the kernel goes on): the worst moment."""
    record = SovereignJournal.record.__code__

    def local(frame: FrameType, event: str, _arg: Any) -> Any:
        if event == "return":
            log = frame.f_locals.get("log")
            if isinstance(log, TransactionLog) and log.op_name == op and log.status is LogStatus.Started:
                sys.settrace(None)
                signal.raise_signal(signal.SIGINT)  # its handler runs now, in this frame
        return local

    def tracer(frame: FrameType, event: str, _arg: Any) -> Any:
        return local if event == "call" and frame.f_code is record else None

    return tracer


@pytest.mark.parametrize("via", ["call", "script"])
def test_sigint_right_after_started_is_written_still_ends_failed(store: Path, via: str,
                                                                  default_sigint: None) -> None:
    assert threading.current_thread() is threading.main_thread()
    kernel = Kernel(store)
    ran: list[int] = []
    kernel.op("work")(lambda: ran.append(1))
    with pytest.raises(KeyboardInterrupt), kernel:
        sys.settrace(signal_when_started_is_written("work"))
        try:
            if via == "call":
                kernel.call("work")
            else:
                kernel.run_script("Krepis.ops.work();", stderr=io.BytesIO())
        finally:
            sys.settrace(None)
    statuses = [status for status, _error in op_entries(store, "work")]
    assert statuses == [LogStatus.Started, LogStatus.Failed]  # never Started alone
    assert op_entries(store, "work")[1][1] == "KeyboardInterrupt"
    assert ran == []  # the interruption came before the op's function
    if via == "script":
        assert op_entries(store, "kernel_error") == [
            (LogStatus.Failed, "Interrupted: the host received SIGINT; the script was killed")]


def test_a_shielded_section_of_another_thread_neither_delays_nor_steals_an_interruption(
        default_sigint: None) -> None:
    """The deferral belongs to the main thread: a worker thread journaling meanwhile gets no
    KeyboardInterrupt meant for it, and the main thread gets its own at once."""
    import krepis.kernel._plane as plane

    inside, release = threading.Event(), threading.Event()
    caught: list[BaseException] = []

    def worker() -> None:
        try:
            with plane.shielded():
                inside.set()
                release.wait(30)
        except BaseException as exc:  # what the worker must not receive
            caught.append(exc)

    thread = threading.Thread(target=worker)
    after_signal: list[int] = []
    try:
        with pytest.raises(KeyboardInterrupt), plane.interruptible():
            thread.start()  # a run in the main thread, a journaling thread beside it
            assert inside.wait(30)
            signal.raise_signal(signal.SIGINT)
            after_signal.append(1)  # not reached: the main thread is interrupted at once
            release.set()
            thread.join(30)  # (were it deferred, the worker's section end would raise it there)
    finally:
        release.set()
        thread.join(30)
    assert after_signal == [] and caught == []
