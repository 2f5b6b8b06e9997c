"""Choosing entries: the filter options every reading command shares (op globs, status,
request id, time range, which history: the archive or the live store alone) and the selection
they build."""
from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from .._model import LogStatus, TransactionLog
from ..journal import SovereignJournal
from ._common import (
    _TimeType,
)

_GLOB = re.compile(r"[*?\[]")

@dataclass(frozen=True)
class _Selection:
    """Which entries: every repeated filter means either-of; different filters must all hold.

    ``ops`` are exact names or shell-style globs (``op_*``, ``kernel_[is]*``), matched
    case-sensitively; ``since`` inclusive and ``until`` exclusive, in Unix ms. ``request_ids``
    are exact ids, ``request_globs`` shell-style globs over the request id (either-of with
    ``request_ids``); ``grep`` must find a match in the op name, the request id or the error.
    """

    ops: tuple[str, ...] = ()
    statuses: tuple[LogStatus, ...] = ()
    request_ids: tuple[str, ...] = ()
    since: int | None = None
    until: int | None = None
    archive: str | None = None  # the archive directory to read (None: the store's own)
    live_only: bool = False  # the live store alone
    request_globs: tuple[str, ...] = ()
    grep: re.Pattern[str] | None = None

    @property
    def everything(self) -> bool:
        """No filter, and the journal's own history (a count needs no scan)."""
        filtered = self.ops or self.statuses or self.request_ids or self.request_globs or self.grep
        return not filtered and self.since is None and self.until is None and self.archive is None

    def split(
        self, journal: SovereignJournal
    ) -> tuple[dict[str, Any], Callable[[TransactionLog], bool] | None]:
        """The query the journal answers from its indexes, and the check left to do here (or None).

        Globs are resolved against the op names the journal holds; either-of ops and statuses go
        to the journal as lists; only several request ids (or request-id globs) and ``grep`` are
        checked here, entry by entry.
        """
        args: dict[str, Any] = {"since": self.since, "until": self.until}
        if self.archive is not None:
            args["archive"] = self.archive
        if self.live_only:
            args["live_only"] = True
        if self.ops:
            globs = [op for op in self.ops if _GLOB.search(op)]
            names = [op for op in self.ops if not _GLOB.search(op)]
            if globs:
                pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)).match
                names += [name for name in journal.op_names() if pattern(name)]
            args["op_name"] = list(dict.fromkeys(names))
        if self.statuses and len(set(self.statuses)) < len(LogStatus):
            args["status"] = list(dict.fromkeys(self.statuses))
        request_ids = frozenset(self.request_ids)
        checks: list[Callable[[TransactionLog], bool]] = []
        if len(request_ids) == 1 and not self.request_globs:
            args["request_id"] = self.request_ids[0]
        elif request_ids or self.request_globs:
            checks.append(self._request_check)
        if self.grep is not None:
            checks.append(_grep_check(self.grep))
        if not checks:
            return args, None
        if len(checks) == 1:
            return args, checks[0]
        return args, lambda entry: all(check(entry) for check in checks)

    @functools.cached_property
    def _request_check(self) -> Callable[[TransactionLog], bool]:
        request_ids = frozenset(self.request_ids)
        if not self.request_globs:
            return lambda entry: entry.request_id in request_ids
        glob = re.compile("|".join(fnmatch.translate(g) for g in self.request_globs)).match
        return lambda entry: entry.request_id in request_ids or glob(entry.request_id) is not None

    @functools.cached_property
    def _predicate(self) -> Callable[[TransactionLog], bool]:
        exact = frozenset(op for op in self.ops if not _GLOB.search(op))
        globs = [op for op in self.ops if _GLOB.search(op)]
        pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None
        statuses = frozenset(self.statuses)
        requested = self.request_ids or self.request_globs
        request_check = self._request_check
        grep = None if self.grep is None else _grep_check(self.grep)
        since, until = self.since, self.until

        def check(entry: TransactionLog) -> bool:
            return ((not self.ops or entry.op_name in exact
                     or (pattern is not None and pattern(entry.op_name) is not None))
                    and (not statuses or entry.status in statuses)
                    and (not requested or request_check(entry))
                    and (since is None or entry.timestamp >= since)
                    and (until is None or entry.timestamp < until)
                    and (grep is None or grep(entry)))
        return check

    def matches(self, entry: TransactionLog) -> bool:
        """Every filter, checked on one entry (for entries read without the query)."""
        return self._predicate(entry)

def _grep_check(pattern: re.Pattern[str]) -> Callable[[TransactionLog], bool]:
    search = pattern.search

    def check(entry: TransactionLog) -> bool:
        return (search(entry.op_name) is not None or search(entry.request_id) is not None
                or (entry.error is not None and search(entry.error) is not None))
    return check

def select_entries(journal: SovereignJournal, selection: _Selection, *, newest_first: bool,
                   limit: int | None) -> Iterator[TransactionLog]:
    """Stream the entries of ``selection`` (at most ``limit``), never holding them all.

    Every filter but several request ids at once is answered by the journal's indexes.
    Arguments are validated before the first entry is read. Globs that match no op the journal
    has seen select nothing, yet the history is read as for any query: an archive that cannot
    be read is an error, never an empty answer.
    """
    args, rest = selection.split(journal)
    if rest is None:
        return journal.iter_logs(**args, newest_first=newest_first, limit=limit)
    found = (entry for entry in journal.iter_logs(**args, newest_first=newest_first) if rest(entry))
    if limit is None:
        return found
    return (entry for _, entry in zip(range(limit), found, strict=False))

def _newest_oldest_first(journal: SovereignJournal, selection: _Selection,
                         limit: int | None) -> Iterator[TransactionLog]:
    """The ``limit`` newest matches, oldest first (``git log -n N --reverse``), in flat memory.

    Two streaming passes: newest first to find where the ``limit``-th newest match is, then
    oldest first from there.
    """
    if limit is None:
        yield from select_entries(journal, selection, newest_first=False, limit=None)
        return
    if limit == 0:
        return
    taken, boundary, skip = 0, -1, 0
    for entry in select_entries(journal, selection, newest_first=True, limit=None):
        if taken < limit:
            taken, boundary = taken + 1, entry.timestamp
        elif entry.timestamp == boundary:
            skip += 1  # an older arrival with the boundary's timestamp: not among the newest
        else:
            break
    if taken < limit:
        yield from select_entries(journal, selection, newest_first=False, limit=limit)
        return
    later = dataclasses.replace(selection, since=boundary)
    shown = 0
    for entry in select_entries(journal, later, newest_first=False, limit=None):
        if skip and entry.timestamp == boundary:
            skip -= 1
            continue
        yield entry
        shown += 1
        if shown >= limit:
            return

def _selection(op: tuple[str, ...], status: tuple[str, ...], request_id: tuple[str, ...],
               since: int | None, until: int | None, archive: str | None = None,
               live_only: bool = False, grep: re.Pattern[str] | None = None) -> _Selection:
    _check_history(archive, live_only)
    return _Selection(tuple(op), tuple(LogStatus(s) for s in status), tuple(request_id), since, until,
                      archive, live_only, grep=grep)

def _check_range(since: int | None, until: int | None) -> None:
    """``--since`` must be before ``--until`` (inclusive, exclusive): an empty range is a
    mistake to say, not a silent "nothing"."""
    if since is not None and until is not None and since >= until:
        from ._output import _utc_iso

        raise click.UsageError(f"--since {_utc_iso(since)} is not before --until {_utc_iso(until)}: "
                               "no entry can match (--since is inclusive, --until exclusive)")

def _check_history(archive: str | None, live_only: bool) -> None:
    if archive is not None and live_only:
        raise click.UsageError("--archive and --live-only do not go together")

def _history_options(fn: Any) -> Any:
    """``--archive DIR`` and ``--live-only``: which history a reading command covers (by
    default the whole of it: the live store and the archive the store records)."""
    fn = click.option("--live-only", "live_only", is_flag=True,
                      help="Only the entries still in the live store, not the archived ones.")(fn)
    return click.option("--archive", "archive", metavar="DIR", default=None,
                        help="Read archived entries from DIR rather than from the archive the store "
                             "records (krepis stats shows it).")(fn)

def _filter_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--op", "op", metavar="NAME", multiple=True,
                     help="Only entries of this op; a shell-style glob (op_*) matches several. "
                          "Repeat for either-of."),
        click.option("--status", multiple=True,
                     type=click.Choice([s.value for s in LogStatus], case_sensitive=False),
                     help="Only entries with this status (any case). Repeat for either-of."),
        click.option("--request-id", metavar="ID", multiple=True,
                     help="Only entries of this request: its id, a prefix of it that no other request "
                          "id has (what a narrow terminal shows), or a glob (req-*). Repeat for "
                          "either-of."),
        click.option("--since", metavar="TIME", type=_TimeType(),
                     help="From this time on, inclusive: ISO-8601 (no zone = local time), 1h, 30m, "
                          "2d, '2 hours ago', today, yesterday, now, Unix ms or @SECONDS."),
        click.option("--until", metavar="TIME", type=_TimeType(),
                     help="Before this time (exclusive); the same forms as --since."),
    ]):
        fn = option(fn)
    return fn
