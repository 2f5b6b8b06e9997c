"""The console's query parameters (``krepis.web._filters``), called in-process: what each filter
accepts and refuses (the message names the parameter and the rule), what the journal is asked
(:meth:`Filters.query_args`), what is checked entry by entry (``matcher`` and the rest check),
and the budgeted scan of a page (``scan_page``): sizes, budget, deadline, cursors."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from krepis import LogStatus, TransactionLog
from krepis._errors import ValidationError
from krepis.web._filters import MAX_SEARCH_CHARS, Filters, Page, _one, parse_filters, parse_int, scan_page

NOW = 1_780_000_000_000
S, C, F = LogStatus.Started, LogStatus.Completed, LogStatus.Failed


def entry(op: str = "pay", rid: str = "req-1", status: LogStatus = C, ts: int = NOW, error: str | None = None,
          seq: int = 0) -> TransactionLog:
    return TransactionLog(ts, op, rid, status, error=error, seq=seq)


def parse(**params: str | list[str]) -> Filters:
    return parse_filters({k: [v] if isinstance(v, str) else v for k, v in params.items()} | (
        {} if "now" in params else {"now": [str(NOW)]}))


def refused(words: str, **params: str | list[str]) -> None:
    with pytest.raises(ValidationError) as info:
        parse(**params)
    assert str(info.value) == words


def no_names() -> list[str]:
    raise AssertionError("op_names is read only for globs")


# -- parse_filters ---------------------------------------------------------------------------

def test_no_parameters_are_no_filters() -> None:
    filters = parse()
    assert filters == Filters()
    assert filters.now == NOW
    assert not filters.any
    assert filters.to_dict() == {"op": [], "status": [], "request_id": [], "prefix": False, "since": None,
                                 "until": None, "q": "", "now": NOW}


def test_every_parameter_is_read() -> None:
    filters = parse(op=[" pay ", "ship*"], status=["completed", " FAILED "], request_id=[" r1", "r2"],
                    prefix="1", since="1h", until=str(NOW - 5), q="  Card  ")
    assert filters == Filters(("pay", "ship*"), (C, F), (" r1", "r2"), True, NOW - 3_600_000, NOW - 5, "Card")
    assert filters.to_dict() == {"op": ["pay", "ship*"], "status": ["Completed", "Failed"],
                                 "request_id": [" r1", "r2"], "prefix": True, "since": NOW - 3_600_000,
                                 "until": NOW - 5, "q": "Card", "now": NOW}


def test_blank_values_are_left_out() -> None:
    assert parse(op=["", "  "], status=" ", request_id="\t", prefix="", since=" ", until="", q="   ",
                 now=[" "]).any is False
    assert parse(op=["", "a"], status=["", "started"]) == Filters(("a",), (S,))


@pytest.mark.parametrize("value", ["1", "true", "on"])
def test_prefix_is_on_for_its_three_words(value: str) -> None:
    assert parse(prefix=value).prefix is True


@pytest.mark.parametrize("value", ["0", "yes", "True", "2"])
def test_prefix_is_off_for_anything_else(value: str) -> None:
    assert parse(prefix=value).prefix is False


def test_relative_times_are_read_against_now() -> None:
    filters = parse(since="2h", until="1h", now="10000000")
    assert (filters.since, filters.until, filters.now) == (10_000_000 - 7_200_000, 10_000_000 - 3_600_000,
                                                           10_000_000)
    assert parse(since="0", until="0", now="0").since == 0
    top = str(2**63 - 1)
    assert parse(now=top).now == 2**63 - 1
    refused(f"now='{2**63}' is not a whole number in 0 … {2**63 - 1}", now=str(2**63))
    refused("now='-1' is not a whole number in 0 … 9223372036854775807", now="-1")


def test_now_defaults_to_the_current_time() -> None:
    from krepis._model import now_ms
    before = now_ms()
    filters = parse_filters({"since": ["1h"]})
    after = now_ms()
    assert before <= filters.now <= after
    assert filters.since is not None and before - 3_600_000 <= filters.since <= after - 3_600_000


def test_twenty_values_of_a_filter_at_most() -> None:
    assert len(parse(op=[f"op{i}" for i in range(20)]).ops) == 20
    refused("op is given 21 times; at most 20", op=[f"op{i}" for i in range(21)])
    refused("status is given 21 times; at most 20", status=["started"] * 21)
    refused("request_id is given 21 times; at most 20", request_id=["r"] * 21)
    assert len(parse(op=[f"op{i}" for i in range(20)] + [" "] * 5).ops) == 20


@pytest.mark.parametrize("name", ["prefix", "since", "until", "q", "now"])
def test_single_parameters_are_given_once(name: str) -> None:
    refused(f"{name} is given 2 times; once at most", **{name: ["1", "2"]})
    refused(f"{name} is given 3 times; once at most", **{name: ["1", "2", "3"]})
    parse(**{name: ["1", " "]})


def test_a_bad_status_is_named() -> None:
    refused("status='done' is not one of Started, Completed, Failed", status="done")
    refused(f"status={'x' * 40!r} is not one of Started, Completed, Failed", status="x" * 50)


def test_ops_and_request_ids_are_checked_as_the_journal_does() -> None:
    parse(op="o" * 200, request_id="r" * 256)
    with pytest.raises(ValidationError, match=r"^op 'o+…' is 201 bytes of UTF-8; the limit is 200"):
        parse(op="o" * 201)
    with pytest.raises(ValidationError, match=r"^request_id 'r+…' is 257 bytes of UTF-8; the limit is 256"):
        parse(request_id="r" * 257)
    with pytest.raises(ValidationError, match=r"^op .*NUL"):
        parse(op="a\0b")
    with pytest.raises(ValidationError, match=r"^request_id .*NUL"):
        parse(request_id="a\0b")


def test_bad_times_name_their_parameter() -> None:
    with pytest.raises(ValidationError, match=r"^since "):
        parse(since="not a time")
    with pytest.raises(ValidationError, match=r"^until "):
        parse(until="not a time")


def test_the_search_text_is_two_hundred_characters_at_most() -> None:
    assert MAX_SEARCH_CHARS == 200
    assert parse(q="é" * 200).search == "é" * 200
    refused("the search text is 201 characters; at most 200", q="é" * 201)


# -- parse_int and _one ------------------------------------------------------------------------

def test_parse_int_reads_the_range_inclusive() -> None:
    assert parse_int({}, "limit", low=1, high=9) is None
    assert parse_int({"limit": [" "]}, "limit", low=1, high=9, default=4) == 4
    assert parse_int({"limit": ["1"]}, "limit", low=1, high=9, default=4) == 1
    assert parse_int({"limit": [" 9 "]}, "limit", low=1, high=9) == 9
    assert parse_int({"n": ["9" * 19]}, "n", low=0, high=10**19) == 10**19 - 1


@pytest.mark.parametrize("text", ["0", "10", "-1", "+3", "1.0", "1e3", "٣", "²", "0" * 19 + "5", "x" * 60])
def test_parse_int_refuses_naming_the_parameter_and_range(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_int({"limit": [text]}, "limit", low=1, high=9)
    assert str(info.value) == f"limit={text[:40]!r} is not a whole number in 1 … 9"


def test_one_strips_and_refuses_repeats() -> None:
    assert _one({"a": ["  x  "]}, "a") == "x"
    assert _one({"a": ["", " y"]}, "a") == "y"
    assert _one({}, "a") is None
    with pytest.raises(ValidationError, match=r"^a is given 2 times; once at most$"):
        _one({"a": ["x", "y"]}, "a")


# -- Filters.any, query_args, matcher ----------------------------------------------------------

@pytest.mark.parametrize("filters", [Filters(ops=("a",)), Filters(statuses=(S,)), Filters(request_ids=("r",)),
                                     Filters(search="x"), Filters(since=0), Filters(until=0)])
def test_any_filter_is_a_filter(filters: Filters) -> None:
    assert filters.any


def test_prefix_or_now_alone_filter_nothing() -> None:
    assert not Filters(prefix=True, now=5).any
    assert Filters(now=1) == Filters(now=2)


def test_the_journal_is_asked_what_its_indexes_answer() -> None:
    assert Filters().query_args(no_names) == ({"since": None, "until": None}, None)
    assert Filters(since=5, until=9).query_args(no_names) == ({"since": 5, "until": 9}, None)
    assert Filters(ops=("b", "a", "b")).query_args(no_names) == (
        {"since": None, "until": None, "op_name": ["b", "a"]}, None)
    assert Filters(statuses=(F, S, F)).query_args(no_names) == (
        {"since": None, "until": None, "status": [F, S]}, None)
    # every status is no status filter
    assert Filters(statuses=(F, S, C)).query_args(no_names) == ({"since": None, "until": None}, None)
    assert Filters(request_ids=("r", "r")).query_args(no_names) == (
        {"since": None, "until": None, "request_id": "r"}, None)


def test_globs_are_resolved_against_the_op_names() -> None:
    names = ["ship", "pay", "pay.card", "apay", "p?y", "refund", "a[b"]
    args, check = Filters(ops=("pay*", "refund", "s?ip")).query_args(lambda: names)
    assert check is None
    assert args == {"since": None, "until": None, "op_name": ["refund", "ship", "pay", "pay.card"]}
    args, _ = Filters(ops=("[a]pay", "refund")).query_args(lambda: names)
    assert args["op_name"] == ["refund", "apay"]
    args, _ = Filters(ops=("ay*", "pay")).query_args(lambda: names)  # anchored at the start
    assert args["op_name"] == ["pay"]
    args, _ = Filters(ops=("pa",)).query_args(no_names)  # no glob: the name itself, even unknown
    assert args["op_name"] == ["pa"]
    args, _ = Filters(ops=("pay", "pa*")).query_args(lambda: names)  # no repeats
    assert args["op_name"] == ["pay", "pay.card"]


def test_globs_matching_nothing_match_no_entry() -> None:
    assert Filters(ops=("nothing*",)).query_args(lambda: ["pay"]) == (None, None)
    assert Filters(ops=("x?",), search="q").query_args(lambda: []) == (None, None)


def test_what_the_indexes_cannot_answer_is_checked_here() -> None:
    args, check = Filters(request_ids=("r1", "r2")).query_args(no_names)
    assert args == {"since": None, "until": None} and check is not None
    assert check(entry(rid="r2")) and check(entry(rid="r1")) and not check(entry(rid="r3"))
    args, check = Filters(request_ids=("ord-",), prefix=True).query_args(no_names)
    assert args == {"since": None, "until": None} and check is not None
    assert check(entry(rid="ord-7")) and not check(entry(rid="xord-7"))
    args, check = Filters(search="CARD").query_args(no_names)
    assert args == {"since": None, "until": None} and check is not None
    assert check(entry(op="pay.card")) and not check(entry(op="pay"))
    args, check = Filters(ops=("pay",), request_ids=("a", "b"), search="x").query_args(no_names)
    assert args == {"since": None, "until": None, "op_name": ["pay"]} and check is not None
    assert check(entry(rid="a", error="X")) and not check(entry(rid="a"))
    assert not check(entry(rid="c", error="x"))


def test_request_prefixes_and_ids() -> None:
    check = Filters(request_ids=("ab", "cd"), prefix=True).matcher()
    assert [check(entry(rid=r)) for r in ("ab", "abz", "cdz", "zab", "a", "c")] == [True, True, True, False,
                                                                                    False, False]
    check = Filters(request_ids=("ab", "cd")).matcher()
    assert [check(entry(rid=r)) for r in ("ab", "cd", "abz")] == [True, True, False]


def test_the_search_is_a_casefolded_substring_of_op_id_or_error() -> None:
    check = Filters(search="straße").matcher()
    assert check(entry(op="STRASSE-op"))
    assert check(entry(rid="x-Straße"))
    assert check(entry(error="failed on STRASSE"))
    assert not check(entry(error=None))
    assert not check(entry(error="strae"))


def test_the_matcher_checks_every_filter() -> None:
    check = Filters(ops=("pay", "ship*"), statuses=(F,), since=10, until=20, request_ids=("r",),
                    search="oop").matcher()
    good = dict(op="pay", rid="r", status=F, ts=10, error="oops")
    assert check(entry(**good))  # type: ignore[arg-type]
    assert check(entry(**good | {"op": "shipping", "ts": 19}))  # type: ignore[arg-type]
    for change in ({"op": "pa"}, {"op": "xship"}, {"status": C}, {"ts": 9}, {"ts": 20}, {"rid": "r2"},
                   {"error": "nah"}):
        assert not check(entry(**good | change)), change  # type: ignore[arg-type]


def test_the_matcher_without_filters_takes_everything() -> None:
    check = Filters().matcher()
    assert check(entry()) and check(entry(op="x", rid="y", status=S, ts=0))
    assert Filters(ops=("pay",)).matcher()(entry(op="pay"))
    assert not Filters(ops=("pay",)).matcher()(entry(op="ship"))
    assert Filters(ops=("p*",)).matcher()(entry(op="pay"))
    assert not Filters(ops=("p*",)).matcher()(entry(op="ship"))
    assert not Filters(ops=("a*",)).matcher()(entry(op="pay"))
    assert Filters(ops=("a*", "b*")).matcher()(entry(op="b"))
    assert Filters(statuses=(S, C)).matcher()(entry(status=C))
    assert Filters(since=0).matcher()(entry(ts=0))
    assert not Filters(until=0).matcher()(entry(ts=0))


# -- scan_page ---------------------------------------------------------------------------------

def stream(n: int, start: int = 0) -> Iterator[TransactionLog]:
    for seq in range(start, start + n):
        yield entry(rid=f"r{seq}", seq=seq)


def even(e: TransactionLog) -> bool:
    return e.seq is not None and e.seq % 2 == 0


def seqs(page: Page) -> list[int | None]:
    return [e.seq for e in page.entries]


def shape(page: Page) -> tuple[list[int | None], bool, int | None, int, bool]:
    """The page's entries (their seqs), ``more``, ``cursor``, ``scanned`` and ``budget_spent``."""
    return seqs(page), page.more, page.cursor, page.scanned, page.budget_spent


def test_a_page_ends_where_the_entries_end() -> None:
    page = scan_page(stream(3), None, 5, 100)
    assert shape(page) == ([0, 1, 2], False, None, 3, False)
    page = scan_page(stream(0), None, 5, 100)
    assert shape(page) == ([], False, None, 0, False)


def test_one_more_match_tells_that_more_follow() -> None:
    page = scan_page(stream(10), None, 3, 100)
    assert shape(page) == ([0, 1, 2], True, 2, 3, False)
    page = scan_page(stream(3), None, 3, 100)  # exactly full, nothing after
    assert shape(page) == ([0, 1, 2], False, None, 3, False)
    page = scan_page(stream(20), even, 3, 100)
    assert shape(page) == ([0, 2, 4], True, 4, 6, False)


def test_the_budget_ends_a_page_with_a_cursor_to_continue() -> None:
    page = scan_page(stream(20), even, 5, 4)
    assert shape(page) == ([0, 2], True, 3, 4, True)
    page = scan_page(stream(20, start=4), even, 5, 4)
    assert (seqs(page), page.cursor) == ([4, 6], 7)
    page = scan_page(stream(4), even, 5, 4)  # the budget runs out on the last entry: still a cursor
    assert shape(page) == ([0, 2], True, 3, 4, True)
    page = scan_page(stream(20), lambda e: False, 5, 1)
    assert shape(page) == ([], True, 0, 1, True)


def test_a_page_full_when_the_budget_runs_out_may_have_more() -> None:
    page = scan_page(stream(20), None, 4, 4)
    assert shape(page) == ([0, 1, 2, 3], True, 3, 4, False)
    page = scan_page(stream(20), even, 2, 3)
    assert shape(page) == ([0, 2], True, 2, 3, False)


def test_a_passed_deadline_ends_the_scan_every_256_entries() -> None:
    page = scan_page(stream(1000), lambda e: False, 5, 10_000, deadline=0.0)
    assert shape(page) == ([], True, 255, 256, True)
    page = scan_page(stream(1000), lambda e: e.seq == 7, 5, 10_000, deadline=0.0)
    assert (seqs(page), page.cursor, page.scanned) == ([7], 255, 256)
    page = scan_page(stream(1000), lambda e: False, 5, 10_000, deadline=float("inf"))
    assert (page.more, page.cursor, page.scanned, page.budget_spent) == (False, None, 1000, False)
    page = scan_page(stream(1000), lambda e: False, 5, 10_000)
    assert (page.more, page.scanned) == (False, 1000)


def test_the_page_default_is_not_spent() -> None:
    assert Page([], False, None, 0).budget_spent is False


def test_the_glob_characters() -> None:
    names = ["a*", "a?", "a", "aa", "a]", "a.b", "a+", "ab"]
    for op, glob in (("a*", True), ("a?", True), ("[a]", True), ("a]", False), ("a.b", False), ("a+", False)):
        args, _ = Filters(ops=(op,)).query_args(lambda: names)
        assert args is not None
        assert (args["op_name"] != [op]) == glob, op
