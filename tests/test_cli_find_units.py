"""``krepis.cli._find`` in-process, on real stores: ``--grep``'s pattern (its limit, letter case,
a bad pattern, ``--ignore-case`` alone) with each message word for word, and ``--request-id``
resolved — an exact id by the index (in the archive the store records, one given elsewhere, or
the live store alone), a unique prefix, an ambiguous one listing at most five ids, a glob, a
miss said in one line, the misses kept when following, ``seen`` called every 4096 entries read
and the scan stopped once nothing more can be learnt."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli._find import MAX_GREP, _grep_options, _history, compile_grep, resolve_requests
from krepis.cli._select import _Selection

T0 = 1_700_000_000_000
RIDS = ["abc-1", "abc-2", "uniq-77", "hostile\x1b[2Jid", *(f"six-{i}" for i in range(6)),
        *(f"five-{i}" for i in range(5)), "glob-x", "other"]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "s", flush="interval:1000ms", retention="off") as j:
        for i, rid in enumerate(RIDS):
            j.log_transaction(TransactionLog(T0 + i, "op_read" if i % 2 else "op_write", rid,
                                             LogStatus.Completed))
        j.flush()
        yield j


def _resolve(journal: SovereignJournal, *values: str,
             **kwargs: object) -> tuple[_Selection | None, list[str]]:
    return resolve_requests(journal, _Selection(request_ids=values), **kwargs)  # type: ignore[arg-type]


# -- --grep ---------------------------------------------------------------------------------------

def test_no_grep() -> None:
    assert compile_grep(None, False) is None
    with pytest.raises(click.UsageError) as raised:
        compile_grep(None, True)
    assert raised.value.message == "--ignore-case goes with --grep"


def test_grep_compiled_with_and_without_letter_case() -> None:
    plain = compile_grep("Disk", False)
    assert plain is not None and plain.flags == re.compile("Disk").flags
    assert plain.search("DiskFull") and not plain.search("diskfull")
    folded = compile_grep("Disk", True)
    assert folded is not None and folded.flags == re.compile("Disk", re.IGNORECASE).flags
    assert folded.search("diskfull")


def test_grep_pattern_length_limit() -> None:
    assert MAX_GREP == 1000
    assert compile_grep("a" * 1000, False) is not None
    with pytest.raises(click.BadParameter) as raised:
        compile_grep("a" * 1001, False)
    assert raised.value.format_message() == (
        "Invalid value for --grep: the pattern is 1001 characters long; the limit is 1000")


def test_grep_not_a_regular_expression() -> None:
    with pytest.raises(click.BadParameter) as raised:
        compile_grep("a(b", True)
    assert raised.value.format_message() == (
        "Invalid value for --grep: 'a(b' is not a regular expression: missing ), unterminated subpattern "
        "at position 1")
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_grep_options() -> None:
    @click.command()
    @_grep_options
    def probe(grep: str | None, ignore_case: bool) -> None:
        click.echo(f"{grep!r} {ignore_case!r}")

    names = [p.name for p in probe.params]
    assert names == ["grep", "ignore_case"]
    grep, ignore = probe.params
    assert isinstance(grep, click.Option) and grep.opts == ["--grep"] and grep.metavar == "REGEX"
    assert grep.default is None
    assert grep.help == ("Only entries whose op name, request id or error text contains a match of REGEX "
                         "(Python's re syntax, at most 1000 characters).")
    assert isinstance(ignore, click.Option) and ignore.opts == ["-i", "--ignore-case"]
    assert ignore.is_flag and ignore.help == "--grep ignores letter case."
    from click.testing import CliRunner
    assert CliRunner().invoke(probe, ["--grep", "x", "--ignore-case"]).output == "'x' True\n"
    assert CliRunner().invoke(probe, ["-i"]).output == "None True\n"
    assert CliRunner().invoke(probe, []).output == "None False\n"


# -- the history read ------------------------------------------------------------------------------

def test_history_arguments() -> None:
    assert _history(_Selection()) == {}
    assert _history(_Selection(archive="/a")) == {"archive": "/a"}
    assert _history(_Selection(live_only=True)) == {"live_only": True}


# -- --request-id ------------------------------------------------------------------------------------

def test_no_request_id_is_the_selection_itself(journal: SovereignJournal) -> None:
    selection = _Selection(ops=("op_read",))
    assert resolve_requests(journal, selection) == (selection, [])
    assert resolve_requests(journal, selection)[0] is selection


def test_exact_ids_leave_the_selection_as_it_is(journal: SovereignJournal) -> None:
    selection = _Selection(request_ids=("abc-1", "uniq-77"))
    found, misses = resolve_requests(journal, selection)
    assert found is selection and misses == []


def test_a_unique_prefix_is_its_request(journal: SovereignJournal) -> None:
    found, misses = _resolve(journal, "uniq", "abc-1", "uniq")
    assert found == _Selection(request_ids=("abc-1", "uniq-77")) and misses == []
    found, misses = _resolve(journal, "hostile")
    assert found == _Selection(request_ids=("hostile\x1b[2Jid",)) and misses == []


def test_a_prefix_is_looked_for_among_the_other_filters_matches(journal: SovereignJournal) -> None:
    # abc-1 is an op_write, abc-2 an op_read: among op_read entries "abc" is unique
    found, _ = resolve_requests(journal, _Selection(ops=("op_read",), request_ids=("abc",)))
    assert found == _Selection(ops=("op_read",), request_ids=("abc-2",))
    # --grep is not a filter of the request ids: it still applies to the entries shown
    grep = re.compile("^nothing$")
    found, _ = resolve_requests(journal, _Selection(request_ids=("uniq",), grep=grep))
    assert found == _Selection(request_ids=("uniq-77",), grep=grep)
    found, misses = resolve_requests(journal, _Selection(request_ids=("uniq",), since=T0 + 3))
    assert found is None and misses == ["krepis: no request id is or begins with 'uniq'"]


def test_an_ambiguous_prefix_lists_the_ids_it_begins(journal: SovereignJournal) -> None:
    with pytest.raises(click.BadParameter) as raised:
        _resolve(journal, "abc")
    assert raised.value.format_message() == (
        "Invalid value for --request-id: 'abc' is ambiguous: it begins abc-1, abc-2; give more of the id")
    with pytest.raises(click.BadParameter) as raised:
        _resolve(journal, "five-")
    assert raised.value.format_message() == (
        "Invalid value for --request-id: 'five-' is ambiguous: it begins five-0, five-1, five-2, five-3, "
        "five-4; give more of the id")
    with pytest.raises(click.BadParameter) as raised:
        _resolve(journal, "six-")
    assert raised.value.format_message() == (
        "Invalid value for --request-id: 'six-' is ambiguous: it begins six-0, six-1, six-2, six-3, "
        "six-4, …; give more of the id")
    found, _ = _resolve(journal, "o", "uniq")
    assert found == _Selection(request_ids=("other", "uniq-77"))


def test_an_ambiguous_prefix_is_shown_inert(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:1000ms") as journal:
        for i, rid in enumerate(["x\x1b[1", "x\x1b[2"]):
            journal.log_transaction(TransactionLog(T0 + i, "op", rid, LogStatus.Completed))
        with pytest.raises(click.BadParameter) as raised:
            _resolve(journal, "x\x1b")
    assert raised.value.format_message() == (
        "Invalid value for --request-id: 'x\\\\x1b' is ambiguous: it begins x\\x1b[1, x\\x1b[2; "
        "give more of the id")


def test_globs(journal: SovereignJournal) -> None:
    found, misses = _resolve(journal, "glob-*", "u?iq-7[0-9]", "none-*")
    assert found == _Selection(request_ids=(), request_globs=("glob-*", "u?iq-7[0-9]"))
    assert misses == ["krepis: no request id matches 'none-*'"]
    # without globs, a * is part of a prefix
    found, misses = _resolve(journal, "glob-*", globs=False)
    assert found is None and misses == ["krepis: no request id is or begins with 'glob-*'"]
    found, misses = _resolve(journal, "glob-*", "abc-1", "zz?")
    assert found == _Selection(request_ids=("abc-1",), request_globs=("glob-*",))
    assert misses == ["krepis: no request id matches 'zz?'"]


def test_misses_are_said_once_each_in_one_line(journal: SovereignJournal) -> None:
    found, misses = _resolve(journal, "nope\x1b", "no*pe", "nope\x1b", "abc-1")
    assert found == _Selection(request_ids=("abc-1",))
    assert misses == ["krepis: no request id is or begins with 'nope\\\\x1b'",
                      "krepis: no request id matches 'no*pe'"]
    found, misses = _resolve(journal, "nope", "no*pe")
    assert found is None and misses == ["krepis: no request id is or begins with 'nope'",
                                        "krepis: no request id matches 'no*pe'"]


def test_keep_misses_keeps_them_in_the_selection(journal: SovereignJournal) -> None:
    found, misses = _resolve(journal, "nope", "no*pe", "uniq", "glob-*", keep_misses=True)
    assert found == _Selection(request_ids=("nope", "uniq-77"), request_globs=("no*pe", "glob-*"))
    assert misses == []
    found, misses = _resolve(journal, "nope", keep_misses=True)
    assert found == _Selection(request_ids=("nope",)) and misses == []
    found, misses = _resolve(journal, "no*", keep_misses=True)
    assert found == _Selection(request_globs=("no*",)) and misses == []


@pytest.fixture
def many(tmp_path: Path) -> Iterator[SovereignJournal]:
    """8,200 entries: r-0 … r-8199, then amb-1 … amb-7 newest of all."""
    with SovereignJournal(tmp_path / "many", flush="interval:1000ms", retention="off") as j:
        for i in range(8200):
            j.log_transaction(TransactionLog(T0 + i, "op", f"r-{i}", LogStatus.Completed))
        for i in range(1, 8):
            j.log_transaction(TransactionLog(T0 + 9000 + i, "op", f"amb-{i}", LogStatus.Completed))
        j.flush()
        yield j


def test_seen_every_4096_entries_read(many: SovereignJournal) -> None:
    seen: list[int] = []
    found, _ = _resolve(many, "r-0", seen=seen.append)  # unique (r-0 is exact: the index answers)
    assert found == _Selection(request_ids=("r-0",)) and seen == []
    found, _ = _resolve(many, "r-819", globs=True, seen=seen.append)
    assert found is not None and seen == []  # r-819 is an id itself
    found, _ = _resolve(many, "r-8199", "r-81*", seen=seen.append)
    assert found == _Selection(request_ids=("r-8199",), request_globs=("r-81*",)) and seen == []
    found, _ = _resolve(many, "r-00", "zz*", seen=seen.append)  # no id begins r-00: a whole pass
    assert found is None and seen == [4096, 8192]
    seen.clear()
    for last, calls in ((4095, []), (4096, [4096])):  # a pass over exactly 4,095 or 4,096 entries
        found, _ = resolve_requests(many, _Selection(request_ids=("zz",), until=T0 + last), seen=seen.append)
        assert found is None and seen == calls


def test_the_scan_stops_once_every_prefix_is_ambiguous(many: SovereignJournal) -> None:
    seen: list[int] = []
    with pytest.raises(click.BadParameter):
        _resolve(many, "amb-", seen=seen.append)
    assert seen == []  # six amb- ids are read first (newest first): nothing more to learn
    with pytest.raises(click.BadParameter):
        _resolve(many, "amb-", "r-1*", seen=seen.append)
    assert seen == [4096]  # read on until the glob matched r-1999, the 6,208th entry read
    seen.clear()
    with pytest.raises(click.BadParameter):
        _resolve(many, "amb-", "amb-?", seen=seen.append)
    assert seen == []


def test_exact_ids_are_looked_up_in_the_history_read(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as journal:
        for i in range(300):
            rid = "lone-5" if i == 5 else f"req-{i:03}"
            journal.log_transaction(TransactionLog(T0 + i, "op", rid, LogStatus.Completed))
        journal.archive(arch, keep_last=44)
    moved = tmp_path / "moved"
    with SovereignJournal(store, create=False, flush="interval:1000ms", retention="off") as journal:
        assert journal.journal_count(live_only=True) == 44
        archived = _Selection(request_ids=("req-010",))
        found, misses = resolve_requests(journal, archived)
        assert found is archived and misses == []
        found, misses = resolve_requests(journal, _Selection(request_ids=("req-010",), live_only=True))
        assert found is None and misses == ["krepis: no request id is or begins with 'req-010'"]
        shutil.move(str(arch), str(moved))
        elsewhere = _Selection(request_ids=("req-010",), archive=str(moved))
        found, misses = resolve_requests(journal, elsewhere)
        assert found is elsewhere and misses == []
        found, _ = resolve_requests(journal, _Selection(request_ids=("lone",), archive=str(moved)))
        assert found is not None and found.request_ids == ("lone-5",)


def test_an_empty_request_id_is_a_usage_error(journal: SovereignJournal, tmp_path: Path) -> None:
    """Named as the option, before the journal is asked (which would say ``request_id``)."""
    with pytest.raises(click.BadParameter) as raised:
        _resolve(journal, "abc-1", "")
    assert raised.value.format_message() == (
        "Invalid value for --request-id: an empty id names no request (an id is 1 to 256 bytes)")
    from click.testing import CliRunner

    from krepis.cli import cli
    result = CliRunner().invoke(cli, ["--storage", str(journal.path), "logs", "--request-id", ""])
    assert (result.exit_code, result.stdout) == (2, "")
    assert result.stderr.startswith("Error: Invalid value for --request-id: an empty id names no request")
