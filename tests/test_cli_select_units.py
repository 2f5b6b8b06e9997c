"""``krepis.cli._select`` in-process, on a real store: when a selection is "everything", the
query it hands the journal (exactly) and the check left to do here, each filter of ``matches``
at its edges (``since`` inclusive, ``until`` exclusive, globs, the error text searched only when
there is one), streaming with a limit, the N newest matches oldest first (ties at the boundary,
an entry written between the two passes), the usage errors word for word, and the options the
reading commands share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.cli._select import (
    _check_history,
    _check_range,
    _filter_options,
    _grep_check,
    _history_options,
    _newest_oldest_first,
    _Selection,
    _selection,
    select_entries,
)

T0 = 1_700_000_000_000
C, F, S = LogStatus.Completed, LogStatus.Failed, LogStatus.Started

#: (timestamp offset, op, request id, status, error) — seq is the position in this list
ROWS = [
    (0, "kernel_init", "req-1", S, None),
    (1, "op_read", "req-1", C, None),
    (2, "op_write", "req-2", F, "DiskFull: no space"),
    (3, "kernel_stop", "abc-9", C, None),
    (3, "op_read", "req-3", C, None),
    (3, "op_write", "req-3", F, "Timeout"),
    (4, "op_read", "zz", C, None),
    (5, "other", "req-4", S, None),
]


def _entry(i: int) -> TransactionLog:
    dt, op, rid, status, error = ROWS[i]
    return TransactionLog(T0 + dt, op, rid, status, duration_us=i, error=error)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "s", flush="interval:1000ms", retention="off") as j:
        for i in range(len(ROWS)):
            j.log_transaction(_entry(i))
        j.flush()
        yield j


def _seqs(entries: Any) -> list[int]:
    return [e.seq for e in entries]


def _e(op: str = "op", rid: str = "r", status: LogStatus = C, ts: int = T0,
       error: str | None = None) -> TransactionLog:
    return TransactionLog(ts, op, rid, status, error=error)


# -- everything ---------------------------------------------------------------------------------

def test_everything_only_without_any_filter_and_on_the_stores_own_history() -> None:
    assert _Selection().everything
    assert _Selection(live_only=True).everything  # the live store's count needs no scan either
    for changed in (dict(ops=("a",)), dict(statuses=(C,)), dict(request_ids=("r",)),
                    dict(request_globs=("r*",)), dict(grep=re.compile("x")), dict(since=0), dict(until=5),
                    dict(archive="/a")):
        assert not _Selection(**changed).everything, changed  # type: ignore[arg-type]


# -- split: the query and the check left --------------------------------------------------------

def test_split_without_filters_is_the_time_range_alone(journal: SovereignJournal) -> None:
    assert _Selection().split(journal) == ({"since": None, "until": None}, None)
    assert _Selection(since=5, until=9).split(journal) == ({"since": 5, "until": 9}, None)
    none = {"since": None, "until": None}
    assert _Selection(archive="/arch").split(journal) == ({**none, "archive": "/arch"}, None)
    assert _Selection(live_only=True).split(journal) == ({**none, "live_only": True}, None)


def test_split_resolves_globs_against_the_op_names_held(journal: SovereignJournal) -> None:
    args, rest = _Selection(ops=("other", "kernel_*", "op_[w]*", "op_write")).split(journal)
    assert rest is None
    # exact names first (once each), then every name a glob matches, in op_names() order
    assert args["op_name"] == ["other", "op_write", "kernel_init", "kernel_stop"]
    args, _ = _Selection(ops=("nothing_*",)).split(journal)
    assert args["op_name"] == []
    args, _ = _Selection(ops=("op_?ead",)).split(journal)
    assert args["op_name"] == ["op_read"]
    args, _ = _Selection(ops=("op_read", "op_read")).split(journal)
    assert args["op_name"] == ["op_read"]


def test_split_hands_a_strict_subset_of_statuses_once_each(journal: SovereignJournal) -> None:
    args, rest = _Selection(statuses=(F, C, F)).split(journal)
    assert args == {"since": None, "until": None, "status": [F, C]} and rest is None
    args, _ = _Selection(statuses=(S, C, F)).split(journal)
    assert "status" not in args  # every status: no filter at all
    args, _ = _Selection(statuses=(S,)).split(journal)
    assert args["status"] == [S]


def test_split_one_request_id_goes_to_the_index(journal: SovereignJournal) -> None:
    assert _Selection(request_ids=("req-3",)).split(journal) == (
        {"since": None, "until": None, "request_id": "req-3"}, None)
    assert _Selection(request_ids=("req-3", "req-3")).split(journal)[0]["request_id"] == "req-3"


def test_split_several_request_ids_or_globs_are_checked_here(journal: SovereignJournal) -> None:
    for selection in (_Selection(request_ids=("req-1", "zz")), _Selection(request_globs=("req-*",)),
                      _Selection(request_ids=("zz",), request_globs=("abc*",))):
        args, rest = selection.split(journal)
        assert args == {"since": None, "until": None}
        assert rest is selection._request_check


def test_split_grep_alone_and_with_requests(journal: SovereignJournal) -> None:
    args, rest = _Selection(grep=re.compile("Disk")).split(journal)
    assert args == {"since": None, "until": None} and rest is not None
    assert rest(_e(error="DiskFull")) and not rest(_e())
    selection = _Selection(request_ids=("a", "b"), grep=re.compile("write"))
    args, rest = selection.split(journal)
    assert args == {"since": None, "until": None} and rest is not None
    assert rest(_e(op="op_write", rid="a"))
    assert not rest(_e(op="op_read", rid="a"))  # both checks must hold
    assert not rest(_e(op="op_write", rid="c"))


def test_the_request_check() -> None:
    only_ids = _Selection(request_ids=("a", "b"))._request_check
    assert only_ids(_e(rid="a")) and only_ids(_e(rid="b")) and not only_ids(_e(rid="a*"))
    assert not only_ids(_e(rid="ab"))
    with_globs = _Selection(request_ids=("exact",), request_globs=("req-*", "x?z"))._request_check
    assert with_globs(_e(rid="exact")) and with_globs(_e(rid="req-9")) and with_globs(_e(rid="xyz"))
    assert not with_globs(_e(rid="exact2")) and not with_globs(_e(rid="areq-9"))
    assert not with_globs(_e(rid="xz"))


# -- matches: each filter -----------------------------------------------------------------------

def test_matches_every_entry_without_filters() -> None:
    assert _Selection().matches(_e())


def test_matches_ops_exact_and_globs() -> None:
    exact = _Selection(ops=("op_read",))
    assert exact.matches(_e(op="op_read")) and not exact.matches(_e(op="op_reader"))
    globbed = _Selection(ops=("kernel_*", "op_[w]rite"))
    assert globbed.matches(_e(op="kernel_x")) and globbed.matches(_e(op="op_write"))
    assert not globbed.matches(_e(op="op_read")) and not globbed.matches(_e(op="xkernel_x"))
    both = _Selection(ops=("a", "b*"))
    assert both.matches(_e(op="a")) and both.matches(_e(op="bb")) and not both.matches(_e(op="c"))


def test_matches_statuses_and_requests() -> None:
    statuses = _Selection(statuses=(F, S))
    assert statuses.matches(_e(status=F)) and statuses.matches(_e(status=S))
    assert not statuses.matches(_e(status=C))
    ids = _Selection(request_ids=("a",))
    assert ids.matches(_e(rid="a")) and not ids.matches(_e(rid="b"))
    globs = _Selection(request_globs=("a*",))
    assert globs.matches(_e(rid="ab")) and not globs.matches(_e(rid="b"))


def test_matches_since_inclusive_until_exclusive() -> None:
    window = _Selection(since=T0 + 10, until=T0 + 20)
    assert [window.matches(_e(ts=T0 + d)) for d in (9, 10, 19, 20)] == [False, True, True, False]
    assert _Selection(since=T0).matches(_e(ts=T0 + 10**6))
    assert _Selection(until=T0 + 1).matches(_e(ts=0))


def test_matches_grep_and_all_filters_together() -> None:
    grep = _Selection(grep=re.compile("Full"))
    assert grep.matches(_e(error="DiskFull")) and not grep.matches(_e()) and not grep.matches(_e(error="x"))
    everything = _Selection(ops=("op_*",), statuses=(F,), request_ids=("r",), since=T0, until=T0 + 5,
                            grep=re.compile("Disk"))
    good = dict(op="op_w", rid="r", status=F, ts=T0 + 1, error="Disk")
    assert everything.matches(_e(**good))  # type: ignore[arg-type]
    for key, bad in (("op", "x"), ("rid", "s"), ("status", C), ("ts", T0 + 5), ("error", "Full")):
        assert not everything.matches(_e(**{**good, key: bad})), key  # type: ignore[arg-type]


def test_grep_searches_the_op_the_request_id_and_the_error() -> None:
    check = _grep_check(re.compile("needle"))
    assert check(_e(op="a_needle")) and check(_e(rid="needle-1")) and check(_e(error="a needle here"))
    assert not check(_e()) and not check(_e(error="hay"))
    assert _grep_check(re.compile("^$|x"))(_e(op="op", rid="r", error=None)) is False


# -- streaming ----------------------------------------------------------------------------------

def test_select_entries_newest_first_with_a_limit(journal: SovereignJournal) -> None:
    assert _seqs(select_entries(journal, _Selection(), newest_first=True, limit=3)) == [7, 6, 5]
    assert _seqs(select_entries(journal, _Selection(), newest_first=False, limit=2)) == [0, 1]
    assert _seqs(select_entries(journal, _Selection(ops=("op_read",)), newest_first=True,
                                limit=None)) == [6, 4, 1]


def test_select_entries_of_globs_matching_no_op_is_empty(journal: SovereignJournal) -> None:
    assert list(select_entries(journal, _Selection(ops=("nope*",)), newest_first=True, limit=None)) == []


def test_globs_matching_no_op_still_read_the_archive(tmp_path: Path) -> None:
    """A glob no op matches is no reason to skip the archive's check: an archive that moved is an
    error naming it, as for an exact op name, never a silent "nothing"."""
    store, arch = tmp_path / "s", tmp_path / "arch"
    with SovereignJournal(store, flush="interval:1000ms", retention="off") as j:
        for i in range(300):
            j.log_transaction(TransactionLog(T0 + i, "op", f"r{i}", C))
        j.archive(arch, keep_last=10)
    arch.rename(tmp_path / "moved")
    with SovereignJournal(store, create=False, retention="off") as j:
        for ops in (("nope",), ("nope*",)):
            with pytest.raises(StorageError, match=f"in its archive at {arch}, which cannot be read"):
                list(select_entries(j, _Selection(ops=ops), newest_first=True, limit=None))
        assert list(select_entries(j, _Selection(ops=("nope*",), live_only=True), newest_first=True,
                                   limit=None)) == []


def test_select_entries_checked_here_keep_the_limit(journal: SovereignJournal) -> None:
    several = _Selection(request_ids=("req-1", "req-3"))
    assert _seqs(select_entries(journal, several, newest_first=True, limit=None)) == [5, 4, 1, 0]
    assert _seqs(select_entries(journal, several, newest_first=True, limit=3)) == [5, 4, 1]
    assert _seqs(select_entries(journal, several, newest_first=False, limit=1)) == [0]
    assert list(select_entries(journal, several, newest_first=False, limit=0)) == []
    grep = _Selection(grep=re.compile("^op_"))
    assert _seqs(select_entries(journal, grep, newest_first=True, limit=2)) == [6, 5]
    # the other filters still go to the journal
    narrowed = _Selection(ops=("op_write",), request_ids=("req-1", "req-3"), until=T0 + 4)
    assert _seqs(select_entries(journal, narrowed, newest_first=True, limit=None)) == [5]


def test_newest_oldest_first(journal: SovereignJournal) -> None:
    every = _Selection()
    assert _seqs(_newest_oldest_first(journal, every, None)) == list(range(8))
    assert list(_newest_oldest_first(journal, every, 0)) == []
    assert _seqs(_newest_oldest_first(journal, every, 1)) == [7]
    assert _seqs(_newest_oldest_first(journal, every, 2)) == [6, 7]
    # the boundary inside three entries of one timestamp: the older arrivals are left out
    assert _seqs(_newest_oldest_first(journal, every, 3)) == [5, 6, 7]
    assert _seqs(_newest_oldest_first(journal, every, 4)) == [4, 5, 6, 7]
    assert _seqs(_newest_oldest_first(journal, every, 5)) == [3, 4, 5, 6, 7]
    assert _seqs(_newest_oldest_first(journal, every, 6)) == [2, 3, 4, 5, 6, 7]
    assert _seqs(_newest_oldest_first(journal, every, 100)) == list(range(8))  # fewer than asked
    reads = _Selection(ops=("op_read",))
    assert _seqs(_newest_oldest_first(journal, reads, 2)) == [4, 6]
    assert _seqs(_newest_oldest_first(journal, reads, 3)) == [1, 4, 6]
    several = _Selection(request_ids=("req-3", "abc-9"))  # all three at one timestamp
    assert _seqs(_newest_oldest_first(journal, several, 2)) == [4, 5]
    assert _seqs(_newest_oldest_first(journal, several, 3)) == [3, 4, 5]


class _WritesBetweenPasses:
    """The real journal, with one entry appended just before the second pass starts (as another
    process may do): what is shown stays the ``limit`` entries the first pass chose."""

    def __init__(self, journal: SovereignJournal, late: int = 1) -> None:
        self._journal, self._calls, self._late = journal, 0, late

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    def iter_logs(self, **kwargs: Any) -> Iterator[TransactionLog]:
        self._calls += 1
        if self._calls == 2:
            for i in range(self._late):
                self._journal.log_transaction(TransactionLog(T0 + 100 + i, "late", "late", C))
            self._journal.flush()
        return self._journal.iter_logs(**kwargs)


def test_newest_oldest_first_shows_no_more_than_the_limit_when_written_meanwhile(
        journal: SovereignJournal) -> None:
    shown = list(_newest_oldest_first(_WritesBetweenPasses(journal), _Selection(), 2))  # type: ignore[arg-type]
    assert _seqs(shown) == [6, 7]


def test_fewer_matches_than_the_limit_then_more_written_before_the_second_pass(
        journal: SovereignJournal) -> None:
    """Eight matches for a limit of 9: the second pass shows at most 9 though two were written."""
    shown = list(_newest_oldest_first(_WritesBetweenPasses(journal, late=2), _Selection(), 9))  # type: ignore[arg-type]
    assert _seqs(shown) == list(range(9))


# -- building a selection; usage errors ---------------------------------------------------------

def test_selection_from_the_options() -> None:
    grep = re.compile("x")
    built = _selection(("a", "b*"), ("Failed", "Started"), ("r1",), 5, 9, "/arch", False, grep)
    assert built == _Selection(("a", "b*"), (F, S), ("r1",), 5, 9, "/arch", False, grep=grep)
    assert built.statuses == (F, S) and built.archive == "/arch" and built.grep is grep
    live = _selection((), (), (), None, None, None, True)
    assert live == _Selection(live_only=True) and live.grep is None
    assert _selection((), (), (), None, None) == _Selection()


def test_archive_and_live_only_do_not_go_together() -> None:
    with pytest.raises(click.UsageError) as raised:
        _selection((), (), (), None, None, "/arch", True)
    assert raised.value.message == "--archive and --live-only do not go together"
    _check_history("/arch", False)
    _check_history(None, True)


def test_since_must_be_before_until() -> None:
    with pytest.raises(click.UsageError) as raised:
        _check_range(T0, T0)
    assert raised.value.message == ("--since 2023-11-14T22:13:20.000Z is not before --until "
                                    "2023-11-14T22:13:20.000Z: no entry can match (--since is inclusive, "
                                    "--until exclusive)")
    with pytest.raises(click.UsageError):
        _check_range(T0 + 1, T0)
    _check_range(T0, T0 + 1)
    _check_range(None, T0)
    _check_range(T0, None)


# -- the shared options -------------------------------------------------------------------------

def _probe() -> click.Command:
    """A command with the shared options, built when the test runs (the options are made by
    calling the decorators: a command built at import would not show a change made later)."""
    @click.command()
    @_filter_options
    @_history_options
    def probe(**kwargs: Any) -> None:
        click.echo(repr(sorted(kwargs.items())))
    return probe


def test_the_shared_options() -> None:
    probe = _probe()
    params = {p.name: p for p in probe.params}
    assert [p.name for p in probe.params] == ["op", "status", "request_id", "since", "until", "archive",
                                               "live_only"]
    op, status, rid = params["op"], params["status"], params["request_id"]
    since, until, archive, live = params["since"], params["until"], params["archive"], params["live_only"]
    assert isinstance(op, click.Option) and op.opts == ["--op"] and op.multiple and op.metavar == "NAME"
    assert op.help == ("Only entries of this op; a shell-style glob (op_*) matches several. "
                       "Repeat for either-of.")
    assert isinstance(status, click.Option) and status.opts == ["--status"] and status.multiple
    assert isinstance(status.type, click.Choice)
    assert list(status.type.choices) == ["Started", "Completed", "Failed"] and not status.type.case_sensitive
    assert status.help == "Only entries with this status (any case). Repeat for either-of."
    assert isinstance(rid, click.Option) and rid.opts == ["--request-id"] and rid.multiple
    assert rid.metavar == "ID"
    assert rid.help == ("Only entries of this request: its id, a prefix of it that no other request id has "
                        "(what a narrow terminal shows), or a glob (req-*). Repeat for either-of.")
    assert isinstance(since, click.Option) and since.opts == ["--since"] and since.metavar == "TIME"
    assert since.help == ("From this time on, inclusive: ISO-8601 (no zone = local time), 1h, 30m, 2d, "
                          "'2 hours ago', today, yesterday, now, Unix ms or @SECONDS.")
    assert isinstance(until, click.Option) and until.opts == ["--until"] and until.metavar == "TIME"
    assert until.help == "Before this time (exclusive); the same forms as --since."
    assert isinstance(archive, click.Option) and archive.opts == ["--archive"] and archive.metavar == "DIR"
    assert archive.default is None
    assert archive.help == ("Read archived entries from DIR rather than from the archive the store records "
                            "(krepis stats shows it).")
    assert isinstance(live, click.Option) and live.opts == ["--live-only"] and live.is_flag
    assert live.help == "Only the entries still in the live store, not the archived ones."


def test_the_shared_options_parse() -> None:
    probe = _probe()
    result = CliRunner().invoke(probe, ["--op", "a", "--op", "b*", "--status", "failed", "--request-id", "r",
                                         "--since", str(T0), "--until", "@1700000001", "--archive", "/x",
                                         "--live-only"])
    assert result.exit_code == 0, result.output
    assert result.output == repr(sorted({
        "op": ("a", "b*"), "status": ("Failed",), "request_id": ("r",), "since": T0, "until": T0 + 1000,
        "archive": "/x", "live_only": True}.items())) + "\n"
    result = CliRunner().invoke(probe, [])
    assert result.output == repr(sorted({
        "op": (), "status": (), "request_id": (), "since": None, "until": None, "archive": None,
        "live_only": False}.items())) + "\n"
