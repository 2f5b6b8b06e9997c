from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from krepis import (
    InvalidTypeError,
    Kernel,
    LogStatus,
    OpError,
    SovereignJournal,
    SovereignStats,
    ValidationError,
)


def entries(store: Path) -> list[tuple[str, LogStatus]]:
    with SovereignJournal(store) as journal:
        return [(e.op_name, e.status) for e in journal.query(newest_first=False)]


def test_kernel_restart_recovery(store: Path) -> None:
    """The spec's test: 5 increments, restart, 3 more → 8."""
    with Kernel(store) as kernel:
        for _ in range(5):
            kernel.increment_stats()
        assert kernel.stats.js_ops_called == 5
    with Kernel(store) as kernel:
        assert kernel.stats.js_ops_called == 5
        assert kernel.recovered == SovereignStats(js_ops_called=5, contexts_created=1)
        results = [kernel.increment_stats() for _ in range(3)]
        assert results == [6, 7, 8]
        assert kernel.stats == SovereignStats(js_ops_called=8, contexts_created=2)


def test_boot_and_shutdown_are_journaled_under_the_context_request_id(store: Path) -> None:
    with Kernel(store, tenant_id="acme", priority=3, is_turbo_mode=True, metadata={"k": "v"}) as kernel:
        ctx = kernel.context
        assert uuid.UUID(ctx.request_id).version == 4
        assert (ctx.tenant_id, ctx.priority, ctx.is_turbo_mode, ctx.metadata) == ("acme", 3, True, {"k": "v"})
        assert ctx.trace_id and ctx.timestamp > 0
        assert kernel.stats.contexts_created == 1
        kernel.increment_stats()
    with SovereignJournal(store) as journal:
        logs = journal.query(newest_first=False)
        assert [(e.op_name, e.status) for e in logs] == [
            ("kernel_init", LogStatus.Started),
            ("op_increment_stats", LogStatus.Completed),
            ("kernel_shutdown", LogStatus.Completed),
        ]
        assert {e.request_id for e in logs} == {ctx.request_id}
        assert logs[-1].duration_us is not None
        assert journal.op_counts() == {"contexts_created": 1, "js_ops_called": 1}


def test_exception_journals_kernel_error_and_propagates(store: Path) -> None:
    with pytest.raises(ZeroDivisionError), Kernel(store) as kernel:
        kernel.increment_stats()
        1 / 0  # noqa: B018
    with SovereignJournal(store) as journal:
        last = journal.get_recent_logs(1)[0]
        assert (last.op_name, last.status) == ("kernel_error", LogStatus.Failed)
        assert last.error == "ZeroDivisionError: division by zero"
        assert journal.recover_op_count("js_ops_called") == 1


def test_python_ops_are_counted_and_journaled(store: Path) -> None:
    kernel = Kernel(store)

    @kernel.op("add")
    def add(a: int, b: int = 0) -> int:
        return a + b

    @kernel.op("explode")
    def explode() -> None:
        raise KeyError("missing")

    with kernel:
        assert kernel.call("add", 2, b=3) == 5
        assert kernel.call("add", 1) == 1
        with pytest.raises(KeyError) as info:
            kernel.call("explode")
        assert info.value.args == ("missing",)  # the op's own exception, unchanged
        assert kernel.call("op_increment_stats") == 1
        with pytest.raises(OpError, match="unknown op 'nope'"):
            kernel.call("nope")
        assert kernel.ops == ["add", "explode", "op_check_permission", "op_get_context",
                              "op_increment_stats", "op_log_from_js"]
    with SovereignJournal(store) as journal:
        assert journal.recover_op_count("add") == 2
        assert journal.recover_op_count("explode") == 1
        assert journal.recover_op_count("nope") == 0
        ops = journal.query(op_name="add", newest_first=False)
        assert [e.status for e in ops] == [LogStatus.Started, LogStatus.Completed] * 2
        assert all(e.duration_us is not None for e in ops if e.status is LogStatus.Completed)
        failed = journal.query(op_name="explode", status=LogStatus.Failed)
        assert len(failed) == 1 and failed[0].error == "KeyError: 'missing'"


def test_op_registration_rules(store: Path) -> None:
    kernel = Kernel(store)
    with pytest.raises(ValidationError, match="identifier"):
        kernel.op("bad name")
    with pytest.raises(ValidationError, match="empty"):
        kernel.op("")
    with pytest.raises(OpError, match="already registered"):
        kernel.op("op_increment_stats")
    kernel.op("ok")(lambda: 1)
    with pytest.raises(OpError, match="already registered"):
        kernel.op("ok")
    with pytest.raises(InvalidTypeError, match="callable"):
        kernel.op("thing")(42)  # type: ignore[arg-type]


def test_kernel_not_running(store: Path) -> None:
    kernel = Kernel(store)
    with pytest.raises(OpError, match="not running"):
        kernel.increment_stats()
    with pytest.raises(OpError, match="not running"):
        _ = kernel.context
    kernel.boot()
    with pytest.raises(OpError, match="already running"):
        kernel.boot()
    kernel.shutdown()
    assert not kernel.running
    with pytest.raises(OpError, match="not running"):
        kernel.shutdown()


def test_kernel_on_a_journal_it_does_not_own(store: Path) -> None:
    with SovereignJournal(store) as journal:
        with Kernel(journal) as kernel:
            kernel.increment_stats()
        assert not journal.closed  # the caller's journal stays open
        assert journal.journal_count() == 3


def test_memory_changes_only_after_a_successful_write(store: Path) -> None:
    journal = SovereignJournal(store)
    kernel = Kernel(journal).boot()
    kernel.increment_stats()
    journal.close()  # the next write cannot succeed
    with pytest.raises(Exception, match="closed"):
        kernel.increment_stats()
    assert kernel.stats.js_ops_called == 1


def test_bad_kernel_arguments() -> None:
    with pytest.raises(InvalidTypeError, match="storage must be"):
        Kernel(3.5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="tenant_id"):
        Kernel("x", tenant_id="")
    with pytest.raises(InvalidTypeError, match="priority"):
        Kernel("x", priority="high")  # type: ignore[arg-type]


# --- messages, durations and edges found by mutation testing ----------------------------------

def test_op_registration_messages(store: Path) -> None:
    kernel = Kernel(store)
    with pytest.raises(ValidationError, match="must be an identifier: letters, digits and _, not starting "
                                              "with a digit"):
        kernel.op("1st")
    with pytest.raises(OpError, match=r"^op 'op_get_context' is already registered \(built in\)$"):
        kernel.op("op_get_context")
    kernel.op("mine")(lambda: 1)
    with pytest.raises(OpError, match=r"^op 'mine' is already registered$"):
        kernel.op("mine")
    with pytest.raises(InvalidTypeError, match="op 'thing' must be callable, got int"):
        kernel.op("thing")(42)  # type: ignore[arg-type]

    async def coroutine() -> int:
        return 1

    async def generator():  # type: ignore[no-untyped-def]
        yield 1

    class AsyncCallable:
        async def __call__(self) -> int:
            return 1

    for fn in (coroutine, generator, AsyncCallable()):
        with pytest.raises(InvalidTypeError,
                           match=r"is an async function; ops are synchronous \(a script's call blocks until "
                                 r"the reply\) — register a plain function, e\.g\. one that runs the "
                                 r"coroutine with asyncio\.run\(\)"):
            kernel.op("later")(fn)


def test_call_errors_and_builtins(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Kernel(store) as kernel:
        for args, kwargs in (((1,), {}), ((), {"x": 1})):
            with pytest.raises(InvalidTypeError, match=r"^op_increment_stats takes no arguments$"):
                kernel.call("op_increment_stats", *args, **kwargs)
        with pytest.raises(OpError, match=r"^unknown op 'nope'; registered ops: op_check_permission, "
                                          r"op_get_context, op_increment_stats, op_log_from_js$"):
            kernel.call("nope")
        for level in ("verbose", 5):
            with pytest.raises(ValidationError, match=f"^log level {level!r} is not one of info, warn, "
                                                      "error, debug$"):
                kernel.call("op_log_from_js", level, "x")
        with caplog.at_level("DEBUG", logger="krepis.js"):
            kernel.call("op_log_from_js", "WARN", "100% done")
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "100% done")]
        assert kernel.stats.js_ops_called == 0


def test_durations_are_microseconds_of_the_op(store: Path) -> None:
    import time

    kernel = Kernel(store)

    @kernel.op("nap")
    def nap(fail: bool) -> None:
        time.sleep(0.02)
        if fail:
            raise RuntimeError("woke up badly")

    with kernel:
        kernel.call("nap", False)
        with pytest.raises(RuntimeError):
            kernel.call("nap", True)
        done = kernel.journal.query(op_name="nap", status="completed")[0]
        failed = kernel.journal.query(op_name="nap", status="failed")[0]
    for entry in (done, failed):
        assert entry.duration_us is not None
        assert 20_000 <= entry.duration_us < 3_600_000_000  # at least the nap, in microseconds
    assert failed.error == "RuntimeError: woke up badly"


def test_an_op_returning_a_coroutine_fails_and_the_coroutine_is_closed(store: Path) -> None:
    import gc
    import warnings

    kernel = Kernel(store)

    async def work() -> int:
        return 1

    @kernel.op("sneaky")
    def sneaky():  # type: ignore[no-untyped-def]
        return work()

    with kernel, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(OpError, match=r"^op 'sneaky' returned coroutine, an awaitable: ops must return "
                                          r"their result, not a coroutine$"):
            kernel.call("sneaky")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_error_text_forms() -> None:
    from krepis import ScriptError
    from krepis.kernel._kernel import error_text, signal_name

    assert error_text(ScriptError("SyntaxError: bad token", name="SyntaxError")) == "SyntaxError: bad token"
    assert error_text(ScriptError("")) == "ScriptError"
    assert error_text(ValueError("\ud800 lone")) == "ValueError: ? lone"  # never fails to encode
    assert signal_name(15) == "SIGTERM" and signal_name(999) == "signal 999"


def test_kernel_repr(store: Path) -> None:
    kernel = Kernel(store)
    assert repr(kernel) == f"<Kernel stopped stats={SovereignStats()}>"
    with kernel:
        assert repr(kernel).startswith(f"<Kernel running request_id={kernel.context.request_id} stats=")


def test_a_result_that_is_not_json_fails_the_op_with_the_reason(store: Path) -> None:
    import json

    kernel = Kernel(store)
    odd = type("Odd" + "d" * 400, (), {})

    @kernel.op("make")
    def make() -> object:
        return odd()

    def deliver(value: object) -> None:
        json.dumps(value)

    with kernel:
        with pytest.raises(OpError) as info:
            kernel._call("make", [], {}, deliver)
        failed = kernel.journal.query(op_name="make", status="failed")[0]
    reason = "Object of type Odd" + "d" * 400 + " is not JSON serializable"
    assert str(info.value) == f"op 'make' returned a value that is not JSON: TypeError: {reason[:300]}"
    assert failed.error == f"OpError: {info.value}"


def test_kernel_defaults_options_and_argument_errors(store: Path) -> None:
    from krepis import PermissionPolicy

    with Kernel(store) as kernel:
        context = kernel.context
        assert (context.tenant_id, context.priority, context.is_turbo_mode) == ("default", 0, False)
        with pytest.raises(OpError, match=r"^the kernel is already running$"):
            kernel.boot()
    with Kernel(store, trace_id="trace-1", flush="interval:9ms") as kernel:
        assert kernel.context.trace_id == "trace-1"
        assert str(kernel.journal.policy) == "interval:9ms"
    with pytest.raises(OpError, match=r"^the kernel is not running; use `with Kernel\(\.\.\.\) as kernel:` "
                                      r"or boot\(\)$"):
        kernel.call("op_get_context")
    for kwargs, exc, message in [
        ({"storage": 5}, InvalidTypeError, r"^storage must be a path or a SovereignJournal, got int$"),
        ({"priority": "1"}, InvalidTypeError, r"^priority must be an int, got str$"),
        ({"trace_id": ""}, ValidationError, r"^trace_id must be a non-empty str, got ''$"),
        ({"trace_id": 7}, ValidationError, r"^trace_id must be a non-empty str, got 7$"),
        ({"metadata": []}, InvalidTypeError, r"^metadata must be a dict, got list$"),
        ({"permissions": {}}, InvalidTypeError, r"^permissions must be a PermissionPolicy, got dict$"),
    ]:
        with pytest.raises(exc, match=message):
            Kernel(**{"storage": store, **kwargs})  # type: ignore[arg-type]
    Kernel(store, trace_id="t", permissions=PermissionPolicy())
    with SovereignJournal(store) as journal:
        with pytest.raises(ValidationError, match=r"^flush applies when the kernel opens the journal; set it "
                                                  r"on the SovereignJournal you pass instead$"):
            Kernel(journal, flush="sync")


def test_shutdown_and_error_entries_carry_the_uptime(store: Path) -> None:
    import time

    with Kernel(store):
        time.sleep(0.02)
    with pytest.raises(KeyError), Kernel(store):
        time.sleep(0.02)
        raise KeyError("gone")
    with SovereignJournal(store) as journal:
        shutdown = journal.query(op_name="kernel_shutdown")[0]
        error = journal.query(op_name="kernel_error")[0]
    for entry in (shutdown, error):
        assert entry.duration_us is not None and 20_000 <= entry.duration_us < 3_600_000_000
    assert error.error == "KeyError: 'gone'"


def test_error_text_cut_exactly_at_the_limit() -> None:
    from krepis.kernel._kernel import error_text

    exact = "x" * (16 * 1024 - len("ValueError: "))
    assert error_text(ValueError(exact)) == f"ValueError: {exact}"  # 16 KiB: kept whole
    cut = error_text(ValueError(exact + "y"))
    assert len(cut.encode()) == 16 * 1024 and cut.endswith("x…")


def test_the_journal_a_kernel_opened_is_closed_at_shutdown(store: Path) -> None:
    with Kernel(store) as kernel:
        journal = kernel.journal
        assert not journal.closed
    assert journal.closed


def test_a_script_calling_an_unknown_op_is_told_which_exist(store: Path) -> None:
    kernel = Kernel(store)
    said: list[str] = []

    @kernel.op("report")
    def report(text: str) -> None:
        said.append(text)

    with kernel:
        kernel.run_script("try { Krepis.ops.nope(); } catch (e) { Krepis.ops.report(e.message); }")
    assert said == ["unknown op 'nope'; available: op_check_permission, op_get_context, "
                    "op_increment_stats, op_log_from_js, report"]
