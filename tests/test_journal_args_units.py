"""The checks of the arguments the journal's reads share (``krepis.journal._args``): either-of
lists and statuses, what each accepts (any letter case, duplicates folded in first-seen order) and
the exact text of each refusal — directly, and through ``query`` and ``summary``."""

from __future__ import annotations

from pathlib import Path

import pytest

from krepis import InvalidTypeError, LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis.journal._args import _sequence, _statuses


@pytest.mark.parametrize("value", [["a", "b"], ("a", "b")])
def test_sequence_accepts_lists_and_tuples_in_order(value: object) -> None:
    assert _sequence("op_name", value) == ["a", "b"]


def test_sequence_keeps_every_item_of_a_set() -> None:
    assert sorted(_sequence("op_name", {"b", "a"})) == ["a", "b"]
    assert sorted(_sequence("op_name", frozenset({"b", "a"}))) == ["a", "b"]
    assert _sequence("op_name", []) == []


@pytest.mark.parametrize(("value", "name"), [(5, "int"), (b"op", "bytes"), (None, "NoneType"),
                                             ({"a": 1}, "dict"), ({"a": 1}.keys(), "dict_keys")])
def test_sequence_refuses_anything_else_naming_the_argument_and_type(value: object, name: str) -> None:
    with pytest.raises(InvalidTypeError) as info:
        _sequence("op_name", value)
    assert str(info.value) == f"op_name must be a str or a sequence of str, got {name}"


def test_statuses_accept_members_and_names_in_any_case() -> None:
    assert _statuses(LogStatus.Failed) == (LogStatus.Failed,)
    assert _statuses("completed") == (LogStatus.Completed,)
    assert _statuses("COMPLETED") == (LogStatus.Completed,)
    assert _statuses("Started") == (LogStatus.Started,)
    assert _statuses(["failed", LogStatus.Started]) == (LogStatus.Failed, LogStatus.Started)
    assert _statuses(("Failed", "FAILED", LogStatus.Failed, "started")) == (LogStatus.Failed,
                                                                             LogStatus.Started)
    assert _statuses(frozenset({LogStatus.Completed})) == (LogStatus.Completed,)
    assert _statuses([]) == ()


@pytest.mark.parametrize(("value", "shown"), [
    ("done", "'done'"),
    (["Completed", "nope"], "'nope'"),
    ([1], "1"),
    (["x" * 100], "'" + "x" * 79),  # cut at 80 characters
    ([" completed"], "' completed'"),
])
def test_statuses_refuse_other_names_with_the_choices(value: object, shown: str) -> None:
    with pytest.raises(ValidationError) as info:
        _statuses(value)
    assert str(info.value) == f"status must be a LogStatus or one of Started, Completed, Failed; got {shown}"


def test_statuses_of_a_wrong_type_name_the_status_argument() -> None:
    with pytest.raises(InvalidTypeError) as info:
        _statuses(3)
    assert str(info.value) == "status must be a str or a sequence of str, got int"


def test_the_checks_through_query_and_summary(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="sync") as journal:
        journal.log_transaction(TransactionLog(1, "a", "r1", LogStatus.Completed))
        journal.log_transaction(TransactionLog(2, "b", "r2", LogStatus.Failed))
        assert [e.request_id for e in journal.query(status="FAILED")] == ["r2"]
        assert [e.request_id for e in journal.query(op_name=("a", "b"), newest_first=False)] == ["r1", "r2"]
        with pytest.raises(InvalidTypeError, match=r"^op_name must be a str or a sequence of str, got int$"):
            journal.query(op_name=7)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match=r"^status must be a LogStatus or one of"):
            journal.summary(status="gone")
