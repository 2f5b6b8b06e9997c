"""Unit tests of kernel/_outcome: what a caller reads from a failed, interrupted or finished run."""

from __future__ import annotations

import pickle
import signal

import pytest

from krepis import JournalError, ScriptError, ScriptInterrupted, ScriptResult


def test_script_error_keeps_its_message_and_every_field() -> None:
    error = ScriptError("boom at line 3", name="TypeError", stack="TypeError: boom\n    at main.js:3:7",
                        location="/tmp/main.js:3:7")
    assert isinstance(error, JournalError)
    assert str(error) == "boom at line 3"
    assert error.args == ("boom at line 3",)
    assert error.name == "TypeError"
    assert error.stack == "TypeError: boom\n    at main.js:3:7"
    assert error.location == "/tmp/main.js:3:7"


def test_script_error_defaults_to_a_plain_error_without_stack_or_location() -> None:
    error = ScriptError("it failed")
    assert str(error) == "it failed"
    assert error.name == "Error"
    assert error.stack is None
    assert error.location is None


def test_script_error_is_caught_as_a_journal_error() -> None:
    with pytest.raises(JournalError, match=r"\Aout of time\Z"):
        raise ScriptError("out of time", name="Timeout")


@pytest.mark.parametrize("signum, name", [(signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP"),
                                          (signal.SIGINT, "SIGINT")])
def test_script_interrupted_names_its_signal(signum: int, name: str) -> None:
    interrupted = ScriptInterrupted(int(signum))
    assert interrupted.signum == int(signum)
    assert str(interrupted) == f"interrupted by {name}"
    assert interrupted.args == (f"interrupted by {name}",)


def test_script_interrupted_is_not_swallowed_by_except_exception() -> None:
    assert not issubclass(ScriptInterrupted, Exception)
    with pytest.raises(ScriptInterrupted):
        try:
            raise ScriptInterrupted(int(signal.SIGTERM))
        except Exception:  # the point: it does not catch a request to stop
            pytest.fail("except Exception caught ScriptInterrupted")


def test_script_interrupted_refuses_a_number_that_is_no_signal() -> None:
    with pytest.raises(ValueError):
        ScriptInterrupted(100_000)


def test_script_result_fields_and_defaults() -> None:
    result = ScriptResult(ops_called=3, duration_ms=1.5)
    assert (result.ops_called, result.duration_ms, result.exit_code, result.request_id) == (3, 1.5, 0, None)
    assert ScriptResult(1, 2.0, 4, "req-1") == ScriptResult(ops_called=1, duration_ms=2.0, exit_code=4,
                                                           request_id="req-1")
    with pytest.raises(AttributeError):
        result.ops_called = 4  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(result)) == result
