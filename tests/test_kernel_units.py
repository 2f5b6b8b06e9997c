"""Unit tests of kernel/_kernel: error texts, what boot hands the journal, the counters behind
``stats``, the built-in ops called in-process, and what ``run_script`` hands Deno and journals
(a few real Deno runs)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest

from krepis import (
    Kernel,
    LogStatus,
    PermissionPolicy,
    ScriptError,
    SovereignJournal,
    TransactionLog,
)
from krepis._model import MAX_ERROR_BYTES
from krepis.kernel import _kernel
from krepis.kernel._kernel import error_text


def _entries(kernel: Kernel) -> list[TransactionLog]:
    return sorted(kernel.journal.get_recent_logs(100), key=lambda e: e.seq)


# -- error_text ----------------------------------------------------------------------------------

def test_a_kernel_limit_names_itself_once_and_a_script_error_keeps_its_own_text() -> None:
    assert error_text(ScriptError("out of time", name="Timeout")) == "Timeout: out of time"
    assert error_text(ScriptError("OpLimit: 3 calls", name="OpLimit")) == "OpLimit: 3 calls"
    assert error_text(ScriptError("Timeout after 5 s", name="Timeout")) == "Timeout: Timeout after 5 s"
    assert error_text(ScriptError("TypeError: x is null", name="TypeError")) == "TypeError: x is null"
    assert error_text(ScriptError("boom", name="TypeError")) == "boom"  # not a kernel name: as thrown


def test_a_cut_error_text_never_splits_a_character() -> None:
    text = error_text(ValueError("é" * MAX_ERROR_BYTES))  # "ValueError: " + 2-byte characters
    raw = text.encode()
    assert text.endswith("é…") and len(raw) <= MAX_ERROR_BYTES
    assert text == "ValueError: " + "é" * ((MAX_ERROR_BYTES - 3 - 12) // 2) + "…"


# -- boot, shutdown ------------------------------------------------------------------------------

def test_boot_hands_retention_and_archive_to_the_journal_it_opens(
        store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KREPIS_RETENTION", raising=False)
    monkeypatch.delenv("KREPIS_ARCHIVE", raising=False)
    with Kernel(store, retention="keep-last:512", archive=tmp_path / "archive") as kernel:
        assert kernel.journal.retention is not None
        assert kernel.journal._archive_dir == str(tmp_path / "archive")


def test_when_journaling_the_error_fails_too_the_original_error_carries_a_note(store: Path) -> None:
    journal = SovereignJournal(store)
    with pytest.raises(ValueError, match=r"^the script's own error") as caught:
        with Kernel(journal):
            journal.close()  # the journal is gone when the block's error is to be journaled
            raise ValueError("the script's own error")
    assert str(caught.value) == "the script's own error"
    assert caught.value.__notes__ == [f"krepis: journaling kernel_error failed as well: the journal at "
                                      f"{journal.path} is closed"]


# -- stats mirror the stored counter -------------------------------------------------------------

def test_after_clear_all_the_stats_follow_the_counter_from_1_again(store: Path) -> None:
    with Kernel(store) as kernel:
        for _ in range(3):
            kernel.increment_stats()
        assert kernel.stats.js_ops_called == 3
        kernel.journal.clear_all()
        assert kernel.increment_stats() == 1
        assert kernel.stats.js_ops_called == 1
        assert kernel.increment_stats() == 2 and kernel.stats.js_ops_called == 2


# -- built-in ops, in-process --------------------------------------------------------------------

def test_op_get_context_is_the_context_with_the_run_s_request_id(store: Path) -> None:
    with Kernel(store, tenant_id="acme") as kernel:
        assert kernel.call("op_get_context") == kernel.context.to_dict()
        token = _kernel._run_request_id.set("run-7")
        try:
            got = kernel.call("op_get_context")
        finally:
            _kernel._run_request_id.reset(token)
        assert got == {**kernel.context.to_dict(), "request_id": "run-7"}
        assert got["tenant_id"] == "acme"


def test_op_check_permission_answers_from_the_kernel_s_policy(store: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with Kernel(store, permissions=PermissionPolicy(read=[str(tmp_path / "data")])) as kernel:
        assert kernel.call("op_check_permission", "read", str(tmp_path / "data" / "f")) is True
        assert kernel.call("op_check_permission", "write", str(tmp_path / "data" / "f")) is False
        assert kernel.call("op_check_permission", "read", str(tmp_path / "elsewhere")) is False


def test_a_failed_started_write_is_raised_alone_and_runs_nothing(store: Path) -> None:
    ran = []
    journal = SovereignJournal(store)
    kernel = Kernel(journal).boot()
    kernel.op("work")(lambda: ran.append(1))
    journal.close()
    with pytest.raises(Exception) as caught:
        kernel.call("work")
    assert caught.value.__context__ is None  # no second write (Failed) was attempted
    assert ran == []


# -- run_script ----------------------------------------------------------------------------------

def test_a_run_reports_and_journals_its_own_request_id(store: Path) -> None:
    with Kernel(store) as kernel:
        first = kernel.run_script("Krepis.ops.op_increment_stats();")
        second = kernel.run_script("Krepis.ops.op_increment_stats();", request_id="mine-1")
        assert second.request_id == "mine-1"
        assert first.request_id is not None and str(uuid.UUID(first.request_id)) == first.request_id
        ops = [e for e in _entries(kernel) if e.op_name == "op_increment_stats"]
        assert [e.request_id for e in ops] == [first.request_id, "mine-1"]


def test_a_script_gets_its_op_results_and_its_request_id(store: Path) -> None:
    with Kernel(store) as kernel:
        kernel.op("double")(lambda n: n * 2)
        result = kernel.run_script(
            'const n = Krepis.ops.op_increment_stats();'
            'if (n !== 1) throw new Error("count " + n);'
            'const d = Krepis.ops.double(21);'
            'if (d !== 42) throw new Error("double " + d);'
            'const id = Krepis.ops.op_get_context().request_id;'
            'if (id !== "run-x") throw new Error("id " + id);', request_id="run-x")
        assert result.ops_called == 3


def test_run_script_hands_deno_its_limits_permissions_and_sink(store: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("granted")
    out = io.BytesIO()
    with Kernel(store, permissions=PermissionPolicy(read=[str(tmp_path / "data")])) as kernel:
        kernel.run_script(f'console.log(Deno.readTextFileSync({str(tmp_path / "data" / "f.txt")!r}));',
                          stderr=out)
        assert b"granted" in out.getvalue()
        with pytest.raises(ScriptError) as caught:
            kernel.run_script("Krepis.ops.op_increment_stats();", max_ops=0, stderr=io.BytesIO())
        assert caught.value.name == "OpLimit"
        with pytest.raises(ValueError, match=r"^timeout must be a finite number of seconds >= 0"):
            kernel.run_script("1", timeout=-1)
        with pytest.raises(ValueError, match=r"^memory_limit_mb must be an int >= 16"):
            kernel.run_script("1", memory_limit_mb=15)
        assert kernel.stats.js_ops_called == 0


def test_a_failed_run_journals_its_error_text(store: Path) -> None:
    with Kernel(store) as kernel:
        with pytest.raises(ScriptError):
            kernel.run_script('throw new TypeError("no such thing");', request_id="bad-run",
                              stderr=io.BytesIO())
        failed = [e for e in _entries(kernel) if e.request_id == "bad-run"]
        assert [(e.op_name, e.status) for e in failed] == [("kernel_error", LogStatus.Failed)]
        assert failed[0].error is not None and failed[0].error.startswith("TypeError: no such thing")


def test_an_error_with_a_stack_but_no_name_keeps_its_text() -> None:
    class Traced(Exception):
        stack = "at somewhere"

    assert error_text(Traced("it broke")) == "it broke"


def test_a_script_s_log_text_is_an_argument_never_a_format_string(
        store: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Kernel(store) as kernel, caplog.at_level("DEBUG", logger="krepis.js"):
        kernel.call("op_log_from_js", "WARN", "100% done %d %s")
    [record] = [r for r in caplog.records if r.name == "krepis.js"]
    assert (record.levelname, record.msg, record.args) == ("WARNING", "%s", ("100% done %d %s",))
    assert record.getMessage() == "100% done %d %s"
