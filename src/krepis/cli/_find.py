"""Finding a request: ``--request-id`` as an exact id, a unique prefix (what a terminal table
shows, ``ab64ab48…``) or a shell-style glob; ``--grep REGEX`` over the op name, the request id
and the error text."""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Callable
from typing import Any

import click

from ..journal import SovereignJournal
from ._common import inert
from ._select import _GLOB, _Selection, select_entries

__all__: list[str] = []

#: The longest --grep pattern accepted (Python's re has no time bound: a short pattern keeps a
#: mistake cheap to see).
MAX_GREP = 1000

#: How many request ids an ambiguous prefix's error lists.
_LISTED = 5


def _grep_options(fn: Any) -> Any:
    """``--grep REGEX`` and ``--ignore-case``."""
    fn = click.option("-i", "--ignore-case", "ignore_case", is_flag=True,
                      help="--grep ignores letter case.")(fn)
    return click.option("--grep", "grep", metavar="REGEX", default=None,
                        help="Only entries whose op name, request id or error text contains a match of "
                             f"REGEX (Python's re syntax, at most {MAX_GREP} characters).")(fn)


def compile_grep(pattern: str | None, ignore_case: bool) -> re.Pattern[str] | None:
    """``--grep``'s pattern compiled; too long or not a regular expression is a usage error."""
    if pattern is None:
        if ignore_case:
            raise click.UsageError("--ignore-case goes with --grep")
        return None
    if len(pattern) > MAX_GREP:
        raise click.BadParameter(f"the pattern is {len(pattern)} characters long; the limit is {MAX_GREP}",
                                 param_hint="--grep")
    try:
        return re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise click.BadParameter(f"{pattern!r} is not a regular expression: {exc}",
                                 param_hint="--grep") from None


def _history(selection: _Selection) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if selection.archive is not None:
        out["archive"] = selection.archive
    if selection.live_only:
        out["live_only"] = True
    return out


def resolve_requests(journal: SovereignJournal, selection: _Selection, *, globs: bool = True,
                     keep_misses: bool = False,
                     seen: Callable[[int], None] | None = None) -> tuple[_Selection | None, list[str]]:
    """``selection`` with each ``--request-id`` value resolved (None: it can match nothing), and
    what to say on stderr.

    A value that is a request id of the history read is that request (O(log n), an index); else
    one with ``*``, ``?`` or ``[`` is a glob (with ``globs``; else it must be an id or a
    prefix); else it is a prefix, which must begin exactly one request id among the entries the
    other filters select — more is an error listing some. Values that are neither (no id, no
    match) leave the selection and are named in the returned lines — or, with ``keep_misses``
    (following: the request may come), stay in it as an id or a glob. Prefixes and globs are
    resolved by one pass over those entries (the request-id index is keyed by a hash: it cannot
    answer a prefix); ``seen(n)`` is called as it reads. An empty value is a usage error naming
    ``--request-id``.
    """
    if not selection.request_ids:
        return selection, []
    if "" in selection.request_ids:  # (the journal would refuse it naming its argument, not the option)
        raise click.BadParameter("an empty id names no request (an id is 1 to 256 bytes)",
                                 param_hint="--request-id")
    history = _history(selection)
    exact: list[str] = []
    pending: list[str] = []
    for value in dict.fromkeys(selection.request_ids):
        found = next(journal.iter_logs(request_id=value, limit=1, **history), None)
        (exact if found is not None else pending).append(value)
    if not pending:
        return selection, []
    pattern_of = {v: re.compile(fnmatch.translate(v)).match for v in pending if globs and _GLOB.search(v)}
    prefixes = [v for v in pending if v not in pattern_of]
    begun: dict[str, dict[str, None]] = {v: {} for v in prefixes}
    matched: set[str] = set()
    others = dataclasses.replace(selection, request_ids=(), request_globs=(), grep=None)
    read = 0
    for entry in select_entries(journal, others, newest_first=True, limit=None):
        rid = entry.request_id
        for value in prefixes:
            if rid.startswith(value) and len(begun[value]) <= _LISTED:
                begun[value][rid] = None
        for value, match in pattern_of.items():
            if value not in matched and match(rid) is not None:
                matched.add(value)
        read += 1
        if seen is not None and read % 4096 == 0:
            seen(read)
        if len(matched) == len(pattern_of) and all(len(ids) > _LISTED for ids in begun.values()):
            break  # (every prefix is ambiguous already: nothing more to learn)
    for value, ids in begun.items():
        if len(ids) > 1:
            listed = sorted(ids)[:_LISTED]
            more = ", …" if len(ids) > _LISTED else ""
            raise click.BadParameter(
                f"{inert(value)!r} is ambiguous: it begins {', '.join(inert(i) for i in listed)}{more}; "
                "give more of the id", param_hint="--request-id")
    resolved = exact + [next(iter(ids)) if ids else v for v, ids in begun.items() if ids or keep_misses]
    kept_globs = tuple(v for v in pattern_of if v in matched or keep_misses)
    misses = [] if keep_misses else (
        [f"krepis: no request id is or begins with {inert(v)!r}" for v, ids in begun.items() if not ids]
        + [f"krepis: no request id matches {inert(v)!r}" for v in pattern_of if v not in matched])
    if not resolved and not kept_globs:
        return None, misses
    return dataclasses.replace(selection, request_ids=tuple(resolved), request_globs=kept_globs), misses
