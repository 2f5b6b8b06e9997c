"""The trail's filters, read from a request's query string: the same as ``krepis logs`` (op
names or globs, statuses, request ids, a time range in the CLI's forms) plus a request-id
prefix and a text search, and the budgeted scan that answers a page of them.

Every filter the journal's indexes can answer goes to :meth:`SovereignJournal.iter_logs`; the
rest (several request ids, a prefix, the text search) is checked here entry by entry, over at
most ``budget`` entries per page: a page that has not filled when the budget runs out ends with
a cursor to continue from, so no request scans the whole history.
"""
from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._errors import ValidationError
from .._model import MAX_OP_NAME_BYTES, MAX_REQUEST_ID_BYTES, LogStatus, TransactionLog, check_text, now_ms
from .._time import parse_time

__all__ = ["MAX_SEARCH_CHARS", "Filters", "Page", "parse_filters", "scan_page"]

_GLOB = re.compile(r"[*?\[]")
_STATUSES = {s.value.lower(): s for s in LogStatus}
#: the longest text search
MAX_SEARCH_CHARS = 200
#: values of one repeated filter at most
MAX_VALUES = 20


@dataclass(frozen=True)
class Filters:
    """Which entries: a repeated filter means either-of; different filters must all hold.

    ``ops`` are names or shell-style globs (case-sensitive, as ``krepis logs --op``);
    ``request_ids`` exact ids, or prefixes when ``prefix``; ``search`` a case-insensitive
    substring of the op name, request id or error text; ``since`` inclusive and ``until``
    exclusive, in Unix ms (relative forms read against ``now``)."""

    ops: tuple[str, ...] = ()
    statuses: tuple[LogStatus, ...] = ()
    request_ids: tuple[str, ...] = ()
    prefix: bool = False
    since: int | None = None
    until: int | None = None
    search: str = ""
    now: int = field(default=0, compare=False)

    @property
    def any(self) -> bool:
        """Whether any filter is set."""
        return bool(self.ops or self.statuses or self.request_ids or self.search
                    or self.since is not None or self.until is not None)

    def query_args(self, op_names: Callable[[], list[str]]) -> tuple[dict[str, Any] | None,
                                                                     Callable[[TransactionLog], bool] | None]:
        """The arguments the journal answers from its indexes (``None``: nothing can match) and
        the check left for here (``None``: none). Globs are resolved against ``op_names()``."""
        args: dict[str, Any] = {"since": self.since, "until": self.until}
        if self.ops:
            names = [op for op in self.ops if not _GLOB.search(op)]
            globs = [op for op in self.ops if _GLOB.search(op)]
            if globs:
                match = re.compile("|".join(fnmatch.translate(g) for g in globs)).match
                names += [name for name in op_names() if match(name)]
            if not names:
                return None, None
            args["op_name"] = list(dict.fromkeys(names))
        if self.statuses and len(set(self.statuses)) < len(LogStatus):
            args["status"] = list(dict.fromkeys(self.statuses))
        rest: list[Callable[[TransactionLog], bool]] = []
        if self.request_ids and not self.prefix and len(set(self.request_ids)) == 1:
            args["request_id"] = self.request_ids[0]
        elif self.request_ids:
            rest.append(self._request_check())
        if self.search:
            rest.append(self._search_check())
        if not rest:
            return args, None
        if len(rest) == 1:
            return args, rest[0]
        first, second = rest
        return args, lambda entry: first(entry) and second(entry)

    def _request_check(self) -> Callable[[TransactionLog], bool]:
        if self.prefix:
            prefixes = tuple(self.request_ids)
            return lambda entry: entry.request_id.startswith(prefixes)
        ids = frozenset(self.request_ids)
        return lambda entry: entry.request_id in ids

    def _search_check(self) -> Callable[[TransactionLog], bool]:
        needle = self.search.casefold()

        def check(entry: TransactionLog) -> bool:
            return (needle in entry.op_name.casefold() or needle in entry.request_id.casefold()
                    or (entry.error is not None and needle in entry.error.casefold()))
        return check

    def matcher(self) -> Callable[[TransactionLog], bool]:
        """Every filter checked on one entry (for the live feed, which reads entries in append
        order): the same answer as the journal's indexes plus :meth:`query_args`' check."""
        exact = frozenset(op for op in self.ops if not _GLOB.search(op))
        globs = [op for op in self.ops if _GLOB.search(op)]
        pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None
        statuses = frozenset(self.statuses)
        since, until = self.since, self.until
        request = self._request_check() if self.request_ids else None
        search = self._search_check() if self.search else None

        def check(entry: TransactionLog) -> bool:
            return ((not self.ops or entry.op_name in exact
                     or (pattern is not None and pattern(entry.op_name) is not None))
                    and (not statuses or entry.status in statuses)
                    and (since is None or entry.timestamp >= since)
                    and (until is None or entry.timestamp < until)
                    and (request is None or request(entry))
                    and (search is None or search(entry)))
        return check

    def to_dict(self) -> dict[str, Any]:
        return {"op": list(self.ops), "status": [s.value for s in self.statuses],
                "request_id": list(self.request_ids), "prefix": self.prefix, "since": self.since,
                "until": self.until, "q": self.search, "now": self.now}


def _values(params: Mapping[str, Sequence[str]], name: str) -> list[str]:
    values = [v for v in params.get(name, ()) if v.strip()]
    if len(values) > MAX_VALUES:
        raise ValidationError(f"{name} is given {len(values)} times; at most {MAX_VALUES}")
    return values


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v for v in params.get(name, ()) if v.strip()]
    if len(values) > 1:
        raise ValidationError(f"{name} is given {len(values)} times; once at most")
    return values[0].strip() if values else None


def parse_int(params: Mapping[str, Sequence[str]], name: str, *, low: int, high: int,
              default: int | None = None) -> int | None:
    """The integer parameter ``name`` in ``low … high`` (``default`` when absent)."""
    text = _one(params, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or not low <= int(text) <= high:
        raise ValidationError(f"{name}={text[:40]!r} is not a whole number in {low} … {high}")
    return int(text)


def parse_filters(params: Mapping[str, Sequence[str]]) -> Filters:
    """The filters of a query string (each name mapped to its values, in order): ``op``,
    ``status``, ``request_id`` (repeatable), ``prefix`` (``1``: request ids are prefixes),
    ``since``, ``until`` (the CLI's forms: ISO-8601, ``1h``, ``yesterday``, Unix ms, …), ``q``
    and ``now`` (Unix ms that relative times are read against; default: the current time).
    Raises :class:`ValidationError` naming the parameter and the rule."""
    ops = [v.strip() for v in _values(params, "op")]
    for op in ops:
        check_text("op", op, MAX_OP_NAME_BYTES)
    statuses = []
    for value in _values(params, "status"):
        status = _STATUSES.get(value.strip().lower())
        if status is None:
            raise ValidationError(f"status={value[:40]!r} is not one of Started, Completed, Failed")
        statuses.append(status)
    request_ids = _values(params, "request_id")
    for rid in request_ids:
        check_text("request_id", rid, MAX_REQUEST_ID_BYTES)
    prefix = _one(params, "prefix") in ("1", "true", "on")
    now = parse_int(params, "now", low=0, high=2**63 - 1)
    now = now_ms() if now is None else now
    times: dict[str, int | None] = {}
    for name in ("since", "until"):
        text = _one(params, name)
        times[name] = None if text is None else parse_time(text, param=name, now_ms=now)
    search = _one(params, "q") or ""
    if len(search) > MAX_SEARCH_CHARS:
        raise ValidationError(f"the search text is {len(search)} characters; at most {MAX_SEARCH_CHARS}")
    return Filters(tuple(ops), tuple(statuses), tuple(request_ids), prefix, times["since"],
                   times["until"], search, now)


@dataclass
class Page:
    """One page of the trail: ``entries`` (at most the page size), ``more`` when older (or, for
    a page towards newer entries, newer) matches may follow, ``cursor`` the seq to continue
    after (the last entry looked at — a match or not), and ``scanned``: entries looked at."""

    entries: list[TransactionLog]
    more: bool
    cursor: int | None
    scanned: int
    budget_spent: bool = False


def scan_page(entries: Iterator[TransactionLog], check: Callable[[TransactionLog], bool] | None,
              size: int, budget: int, deadline: float | None = None) -> Page:
    """Take up to ``size`` entries of ``entries`` that pass ``check``, looking at ``budget``
    entries at most (and, with a ``deadline`` on ``time.monotonic()``, no longer than that); one
    more match than ``size`` tells that more follow."""
    out: list[TransactionLog] = []
    scanned = 0
    last: TransactionLog | None = None
    for entry in entries:
        if check is None or check(entry):
            if len(out) == size:
                return Page(out, True, out[-1].seq, scanned)
            out.append(entry)
        scanned += 1
        last = entry
        if scanned >= budget or (deadline is not None and scanned % 256 == 0 and time.monotonic() > deadline):
            if len(out) == size:  # full, and whether more match is not known: say there may be
                return Page(out, True, out[-1].seq, scanned)
            return Page(out, True, last.seq, scanned, budget_spent=True)
    return Page(out, False, None, scanned)
