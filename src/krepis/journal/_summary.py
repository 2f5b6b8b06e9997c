"""Summaries of the journal: counts, failure rate and exact duration percentiles per op (and
status), over a time range of the whole history (the summary half of
:class:`~krepis.SovereignJournal`).

**Percentiles are exact**, by the nearest-rank definition: the p-th percentile of n durations
sorted ascending is the one at rank ⌈p·n/100⌉ (1-based) — always a duration some entry has;
computing it from ``krepis export``'s output gives the same number. Durations are the entries'
``duration_us`` (entries without one — ``Started`` entries, as the kernel writes them — count
but have none).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import InvalidTypeError, JournalError, ValidationError
from .._model import LogStatus, TransactionLog, check_op_name
from .._time import TimeLike, parse_time
from ..archive import ArchiveReader
from ..storage import Query, Storage
from ._args import _sequence, _statuses

__all__ = ["SUMMARY_KEYS", "Summary", "SummaryRow", "percentile"]

#: what a summary can group by
SUMMARY_KEYS = ("op", "status")

#: entries read from the engine per scan while summarizing
_CHUNK = 4096

_STARTED, _COMPLETED, _FAILED = LogStatus.Started, LogStatus.Completed, LogStatus.Failed
_STATUS_ORDER = {_STARTED: 0, _COMPLETED: 1, _FAILED: 2}


def percentile(ordered: Sequence[int], p: int) -> int | None:
    """The nearest-rank ``p``-th percentile (0 < p ≤ 100) of ``ordered`` (sorted ascending):
    the value at rank ⌈p·n/100⌉; ``None`` when it is empty."""
    n = len(ordered)
    if n == 0:
        return None
    return ordered[max(1, (p * n + 99) // 100) - 1]


@dataclass(frozen=True, slots=True)
class SummaryRow:
    """One group of a :class:`Summary`: its key (``op_name`` and/or ``status``; ``None`` for a
    key not grouped by), how many entries, of which ``started``/``completed``/``failed``; the
    ``failure_rate`` — failed ÷ (completed + failed), ``None`` when none finished — and, over the
    ``durations`` entries that have a duration, its exact nearest-rank ``p50_us``, ``p95_us``,
    ``p99_us`` and its ``max_us`` in microseconds (``None`` when none has one)."""

    op_name: str | None
    status: LogStatus | None
    entries: int
    started: int
    completed: int
    failed: int
    failure_rate: float | None
    durations: int
    p50_us: int | None
    p95_us: int | None
    p99_us: int | None
    max_us: int | None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the status by its name, keys not grouped by left out."""
        out: dict[str, Any] = {}
        if self.op_name is not None:
            out["op"] = self.op_name
        if self.status is not None:
            out["status"] = self.status.value
        for name in ("entries", "started", "completed", "failed", "failure_rate", "durations", "p50_us",
                     "p95_us", "p99_us", "max_us"):
            out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class Summary:
    """What :meth:`SovereignJournal.summary` found: one row per group (``rows``, ordered by the
    group keys: op name, then status Started, Completed, Failed), the ``total`` over every entry
    summarized, and where those entries were: ``live_entries`` in the store, ``archived_entries``
    in the archive. ``since``/``until`` (Unix ms) are the range asked for."""

    by: tuple[str, ...]
    since: int | None
    until: int | None
    rows: tuple[SummaryRow, ...]
    total: SummaryRow
    live_entries: int
    archived_entries: int

    def to_dict(self) -> dict[str, Any]:
        return {"by": list(self.by), "since": self.since, "until": self.until,
                "rows": [row.to_dict() for row in self.rows], "total": self.total.to_dict(),
                "live_entries": self.live_entries, "archived_entries": self.archived_entries}


class _Group:
    """The running counts of one group."""

    __slots__ = ("completed", "durations", "entries", "failed", "started")

    def __init__(self) -> None:
        self.entries = self.started = self.completed = self.failed = 0
        self.durations: list[int] = []

    def add(self, other: _Group) -> None:
        self.entries += other.entries
        self.started += other.started
        self.completed += other.completed
        self.failed += other.failed
        self.durations += other.durations

    def row(self, op_name: str | None, status: LogStatus | None) -> SummaryRow:
        durations = self.durations
        durations.sort()
        finished = self.completed + self.failed
        return SummaryRow(op_name, status, self.entries, self.started, self.completed, self.failed,
                          None if finished == 0 else self.failed / finished, len(durations),
                          percentile(durations, 50), percentile(durations, 95), percentile(durations, 99),
                          durations[-1] if durations else None)


def check_by(by: object) -> tuple[str, ...]:
    """``by`` as a tuple of :data:`SUMMARY_KEYS` (given as such a sequence, or as text such as
    ``"op,status"``), each at most once."""
    if isinstance(by, str):
        items: Iterable[object] = [part.strip() for part in by.split(",")] if by.strip() else []
    elif isinstance(by, (list, tuple)):
        items = by
    else:
        raise InvalidTypeError(f"by must be a sequence of {' / '.join(SUMMARY_KEYS)} (or their text, "
                               f"'op,status'), got {type(by).__name__}")
    out: list[str] = []
    for item in items:
        if item not in SUMMARY_KEYS:
            raise ValidationError(f"a summary groups by {' and '.join(SUMMARY_KEYS)}; got {item!r:.80}")
        if item in out:
            raise ValidationError(f"by names {item!r} twice")
        out.append(str(item))
    return tuple(out)


class _SummaryMethods:
    """:meth:`summary`."""

    if TYPE_CHECKING:  # provided by SovereignJournal or the other mixins
        @property
        def path(self) -> str:
            raise NotImplementedError

        def _live(self) -> Storage:
            raise NotImplementedError

        def _history_reader(self, storage: Storage, archive: str | os.PathLike[str] | None,
                            live_only: bool, head: Any = None) -> ArchiveReader | None:
            raise NotImplementedError

    def summary(
        self,
        by: Sequence[str] | str = ("op",),
        *,
        since: TimeLike | None = None,
        until: TimeLike | None = None,
        op_name: str | Sequence[str] | None = None,
        status: LogStatus | str | Sequence[LogStatus | str] | None = None,
        archive: str | os.PathLike[str] | None = None,
        live_only: bool = False,
    ) -> Summary:
        """Counts, failure rate and duration percentiles per group of entries — "which ops
        failed most since yesterday, and how slow is each?" — over the whole history (live and
        archived; ``live_only=True``: the store alone; ``archive`` as in :meth:`query`).

        ``by``: ``("op",)`` (default), ``("status",)``, ``("op", "status")`` or ``()`` (one
        group), or that text (``"op,status"``). ``since`` (inclusive) and ``until`` (exclusive)
        bound the timestamps, in the forms :meth:`query` takes; ``op_name`` and ``status``
        filter as there. Returns a :class:`Summary` whose rows carry exact nearest-rank
        percentiles (see the module). Reads each entry in range once — through the time or op
        index of the store when a range or filter is given, and only the archived bundles whose
        time range overlaps — and keeps one duration per entry in memory while it runs.
        Archiving meanwhile (another process) raises :class:`JournalError`: summarize again."""
        keys = check_by(by)
        lo = None if since is None else parse_time(since, param="since")
        hi = None if until is None else parse_time(until, param="until")
        ops: tuple[str, ...] | None = None
        if op_name is not None:
            names = (op_name,) if isinstance(op_name, str) else tuple(_sequence("op_name", op_name))
            for name in names:
                check_op_name(name)
            ops = tuple(dict.fromkeys(names))
        statuses = None if status is None else _statuses(status)
        storage = self._live()
        reader = self._history_reader(storage, archive, live_only)
        groups: dict[Any, _Group] = {}
        live_first = storage.live_first_seq()
        counted = [0, 0]
        if ops != () and statuses != ():
            if reader is not None:
                query = Query(since=lo, until=hi, op_names=ops, statuses=statuses, order="append",
                              newest_first=False)
                counted[1] = _tally(groups, keys, reader.iterate(query, None, live_first))
            indexed = lo is not None or hi is not None or ops is not None or statuses is not None
            query = Query(since=lo, until=hi, op_names=ops, statuses=statuses,
                          order="time" if indexed else "append", newest_first=False)
            counted[0] = _tally(groups, keys, _scan(storage, query))
            if reader is not None and storage.live_first_seq() != live_first:
                raise JournalError(f"entries of the journal at {self.path} were archived while it was "
                                   "being summarized; summarize again")
        rows = []
        total = _Group()
        for key in sorted(groups, key=_sort_key(keys)):
            group = groups[key]
            named = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
            rows.append(group.row(named.get("op"), named.get("status")))
            total.add(group)
        return Summary(keys, lo, hi, tuple(rows), total.row(None, None), counted[0], counted[1])


def _scan(storage: Storage, query: Query) -> Iterable[TransactionLog]:
    after: TransactionLog | None = None
    while True:
        logs = storage.scan(query, after=after, limit=_CHUNK)
        yield from logs
        if len(logs) < _CHUNK:
            return
        after = logs[-1]


def _tally(groups: dict[Any, _Group], keys: tuple[str, ...], logs: Iterable[TransactionLog]) -> int:
    """Add ``logs`` to their groups; return how many there were. (The loop is the summary's hot
    path: one dict lookup, one counter and at most one append per entry.)"""
    n = 0
    # per group: [started, completed, failed] and the durations, keyed as ``groups`` will be
    counts: dict[Any, tuple[list[int], list[int]]] = {}
    get = counts.get
    index = {_STARTED: 0, _COMPLETED: 1, _FAILED: 2}
    by_op, by_status, op_status = keys == ("op",), keys == ("status",), keys == ("op", "status")
    for log in logs:
        if by_op:
            key: Any = log.op_name
        elif op_status:
            key = (log.op_name, log.status)
        elif by_status:
            key = log.status
        elif keys:
            key = (log.status, log.op_name)  # ("status", "op")
        else:
            key = ()
        found = get(key)
        if found is None:
            found = counts[key] = ([0, 0, 0], [])
        found[0][index[log.status]] += 1
        duration = log.duration_us
        if duration is not None:
            found[1].append(duration)
        n += 1
    for key, (by, durations) in counts.items():
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group()
        group.entries += by[0] + by[1] + by[2]
        group.started += by[0]
        group.completed += by[1]
        group.failed += by[2]
        group.durations += durations
    return n


def _sort_key(keys: tuple[str, ...]) -> Any:
    def order(key: Any) -> Any:
        parts = key if isinstance(key, tuple) else (key,)
        return tuple(_STATUS_ORDER[p] if k == "status" else p for k, p in zip(keys, parts, strict=True))
    return order


