"""What each page reads, as JSON-ready values: the trail (a page of entries), one request, the
ops summary and its series over time, the counters, and the verifiable log's checkpoint, leaves
and proofs. Plain functions of an open :class:`~krepis.SovereignJournal`; they never write.

Every read covers the history the console was opened on (the live store and the archive the
store records, another ``archive`` directory, or the live store alone) and is bounded: a page
holds at most :attr:`Limits.page_max` entries and looks at :attr:`Limits.scan_budget` entries at
most, a series at most :attr:`Limits.series_max` entries.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import ValidationError
from .._model import MAX_REQUEST_ID_BYTES, LogStatus, TransactionLog, check_text, now_ms
from ..journal import SovereignJournal, Summary, SummaryRow
from ..kernel import CONTEXTS_COUNTER, JS_OPS_COUNTER
from ._filters import Filters, Page, _one, parse_filters, parse_int, scan_page

__all__ = ["Busy", "Limits", "Reader", "entry_dict", "percentile"]

_MAX_SEQ = 2**63 - 1
#: bucket widths a series may use, in ms (auto picks the narrowest that fits)
BUCKETS = {"minute": 60_000, "5min": 300_000, "15min": 900_000, "hour": 3_600_000, "6hour": 21_600_000,
           "day": 86_400_000, "week": 604_800_000}


@dataclass(frozen=True)
class Limits:
    """The console's bounds: ``page_size`` entries on a trail page by default and ``page_max``
    at most; ``scan_budget`` entries looked at per page when a filter is checked entry by entry
    (and ``scan_seconds`` of it); ``request_max`` entries of one request per page;
    ``series_max`` entries behind one plot and ``series_buckets`` points in it; ``summary_max``
    entries behind one ops summary; ``heavy_seconds`` of reading for one summary or plot, and
    ``heavy`` of them at once (more are answered "busy", to retry); ``live_max``
    live connections at once, each with a queue of ``live_backlog`` entries and
    ``live_queue_bytes`` bytes, all queues together ``live_total_bytes`` (a client further
    behind has its queue dropped and is told so); ``live_poll`` seconds between looks for new
    entries; ``readers`` threads reading the journal at once; ``max_query`` bytes of a query
    string. Served by :func:`krepis.web.serve`: ``header_seconds`` for a connection to send a
    request's headers (from when it opens, or its previous answer ends) before it is closed,
    and ``half_open_max`` connections doing so at once (past it the oldest is closed); requests
    past their headers: ``live_max`` + 64 at once (more are answered 503)."""

    page_size: int = 100
    page_max: int = 500
    scan_budget: int = 200_000
    scan_seconds: float = 2.0
    request_max: int = 1000
    series_max: int = 2_000_000
    series_buckets: int = 1500
    summary_max: int = 2_000_000
    heavy_seconds: float = 10.0
    heavy: int = 2
    live_max: int = 100
    live_backlog: int = 5000
    live_queue_bytes: int = 8_000_000
    live_total_bytes: int = 64_000_000
    live_poll: float = 0.1
    readers: int = 4
    max_query: int = 4096
    header_seconds: float = 10.0
    half_open_max: int = 256

    def __post_init__(self) -> None:
        for name in ("page_size", "page_max", "scan_budget", "request_max", "series_max", "series_buckets",
                     "summary_max", "heavy", "live_max", "live_backlog", "live_queue_bytes",
                     "live_total_bytes", "readers", "max_query", "half_open_max"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValidationError(f"limit {name} must be an int >= 1, got {value!r}")
        for name in ("scan_seconds", "heavy_seconds", "live_poll", "header_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValidationError(f"limit {name} must be a number > 0, got {value!r}")
        if self.page_size > self.page_max:
            raise ValidationError(f"page_size {self.page_size} is above page_max {self.page_max}")


class Busy(Exception):
    """The server cannot answer this now (too many heavy reads at once, or one ran out of time):
    a 503 whose message says why and what to do."""


def entry_dict(entry: TransactionLog) -> dict[str, Any]:
    """An entry as the pages read it: its stored fields and its ``seq``."""
    out = entry.to_dict()
    out["seq"] = entry.seq
    return out


def _order(args: Mapping[str, Any]) -> str:
    """The cheapest order to read every entry the arguments select: by time through an index
    when they filter, in append order when they do not."""
    return "time" if any(v is not None for v in args.values()) else "append"


def _row(op: str | None, counts: list[int], durations: list[int]) -> SummaryRow:
    """A summary row from [started, completed, failed] and the durations, as the journal's."""
    durations.sort()
    started, completed, failed = counts
    finished = completed + failed
    return SummaryRow(op, None, started + completed + failed, started, completed, failed,
                      None if finished == 0 else failed / finished, len(durations),
                      percentile(durations, 50), percentile(durations, 95), percentile(durations, 99),
                      durations[-1] if durations else None)


def percentile(ordered: Sequence[int], p: int) -> int | None:
    """The nearest-rank ``p``-th percentile of ``ordered`` (sorted ascending), as
    :meth:`SovereignJournal.summary` computes it: the value at rank ⌈p·n/100⌉."""
    n = len(ordered)
    return None if n == 0 else ordered[max(1, (p * n + 99) // 100) - 1]


Params = Mapping[str, Sequence[str]]


class Reader:
    """The pages' reads from ``journal`` over one history (``archive``/``live_only`` as the
    journal's reads take them), bounded by ``limits``."""

    def __init__(self, journal: SovereignJournal, *, archive: str | None = None, live_only: bool = False,
                 limits: Limits | None = None) -> None:
        self.journal = journal
        self.limits = limits or Limits()
        self.history: dict[str, Any] = {"live_only": True} if live_only else {}
        if archive is not None:
            self.history["archive"] = archive

    # -- the trail -------------------------------------------------------------------------
    def trail(self, params: Params) -> dict[str, Any]:
        """A page of the trail, newest first: the first page, the page of entries older than
        ``after`` (a seq), or of those newer than ``before``. Also ``next_seq``, read before the
        page (what the live feed starts from), and the filters as read."""
        filters = parse_filters(params)
        size = parse_int(params, "limit", low=1, high=self.limits.page_max, default=self.limits.page_size)
        assert size is not None
        after = parse_int(params, "after", low=0, high=_MAX_SEQ)
        before = parse_int(params, "before", low=0, high=_MAX_SEQ)
        if after is not None and before is not None:
            raise ValidationError("give after (older entries) or before (newer entries), not both")
        next_seq = self.journal.next_seq()
        args, check = filters.query_args(self.journal.op_names)
        towards_newer = before is not None
        if before is not None:
            self._check_cursor("before", before)
        elif after is not None:
            self._check_cursor("after", after)
        if args is None:
            page = Page([], False, None, 0)
        else:
            limit = None if check is not None else size + 1
            entries = self.journal.iter_logs(**args, **self.history, newest_first=not towards_newer,
                                             after=before if towards_newer else after, limit=limit)
            deadline = time.monotonic() + self.limits.scan_seconds
            page = scan_page(entries, check, size, self.limits.scan_budget, deadline)
        shown = list(reversed(page.entries)) if towards_newer else page.entries
        older: int | None
        newer: int | None
        if towards_newer:
            newer = page.cursor if page.more else None
            older = shown[-1].seq if shown else before
        else:
            older = page.cursor if page.more else None
            newer = shown[0].seq if shown and after is not None else None
        return {"entries": [entry_dict(e) for e in shown], "older": older, "newer": newer,
                "scanned": page.scanned, "budget_spent": page.budget_spent, "next_seq": next_seq,
                "limit": size, "filters": filters.to_dict()}

    def _check_cursor(self, name: str, seq: int) -> None:
        """A page's cursor must be an entry of this history: else a :class:`ValidationError`
        naming the parameter as given."""
        try:
            self.journal.entry(seq, **self.history)
        except KeyError:
            raise ValidationError(f"{name}={seq}: no entry has that seq (a page's cursor is the seq of "
                                  "an entry it showed)") from None

    # -- one request -----------------------------------------------------------------------
    def request(self, params: Params) -> dict[str, Any]:
        """Every entry of one request (``id``), oldest first, ``request_max`` at a time (``after``
        a seq to continue), with the request's span and its entries per status."""
        ids = params.get("id", ())
        if len(ids) != 1:
            raise ValidationError("id (the request id) is required, once")
        rid = ids[0]  # as given: an id may start or end with a space
        check_text("id", rid, MAX_REQUEST_ID_BYTES)
        after = parse_int(params, "after", low=0, high=_MAX_SEQ)
        if after is not None:
            self._check_cursor("after", after)
        size = self.limits.request_max
        logs = self.journal.query(request_id=rid, newest_first=False, after=after, limit=size + 1,
                                  **self.history)
        more = len(logs) > size
        logs = logs[:size]
        statuses = {s.value: 0 for s in LogStatus}
        for log in logs:
            statuses[log.status.value] += 1
        return {"request_id": rid, "entries": [entry_dict(e) for e in logs],
                "more": more, "after": logs[-1].seq if more else None, "statuses": statuses}

    # -- ops -------------------------------------------------------------------------------
    def _ops_filters(self, params: Params) -> tuple[Filters, dict[str, Any] | None]:
        filters = parse_filters(params)
        if filters.request_ids or filters.search:
            raise ValidationError("the ops page filters by op, status and time only")
        args, _check = filters.query_args(self.journal.op_names)
        return filters, args

    def summary(self, params: Params) -> dict[str, Any]:
        """Per op: entries, started/completed/failed, failure rate and duration percentiles
        over the window (``since``/``until``) — what :meth:`SovereignJournal.summary` gives,
        within a budget: more than ``summary_max`` entries in the window is a
        :class:`ValidationError`, more than ``heavy_seconds`` of reading :class:`Busy`."""
        filters, args = self._ops_filters(params)
        if args is None:
            return {"rows": [], "total": None, "filters": filters.to_dict()}
        live_first = self.journal.entry_counts().live_first_seq
        groups: dict[str, tuple[list[int], list[int]]] = {}
        index = {LogStatus.Started: 0, LogStatus.Completed: 1, LogStatus.Failed: 2}
        seen = archived = 0
        for entry in self._budgeted(self.journal.iter_logs(**args, **self.history, newest_first=False,
                                                           order=_order(args)),
                                    self.limits.summary_max, "summary"):
            seen += 1
            if entry.seq is not None and entry.seq < live_first:
                archived += 1
            found = groups.get(entry.op_name)
            if found is None:
                found = groups[entry.op_name] = ([0, 0, 0], [])
            found[0][index[entry.status]] += 1
            if entry.duration_us is not None:
                found[1].append(entry.duration_us)
        rows = [_row(name, *groups[name]) for name in sorted(groups)]
        total = _row(None, [sum(g[0][i] for g in groups.values()) for i in range(3)],
                     [d for g in groups.values() for d in g[1]])
        out = Summary(("op",), filters.since, filters.until, tuple(rows), total, seen - archived,
                      archived).to_dict()
        out["filters"] = filters.to_dict()
        return out

    def _budgeted(self, entries: Iterator[TransactionLog], most: int, what: str) -> Iterator[TransactionLog]:
        """``entries``, refused past ``most`` of them (a :class:`ValidationError`: the window is
        too wide) or ``heavy_seconds`` (:class:`Busy`)."""
        deadline = time.monotonic() + self.limits.heavy_seconds
        try:
            for n, entry in enumerate(entries, 1):
                if n > most:
                    raise ValidationError(f"the window holds more than {most:,} entries, the most one {what} "
                                          "reads: choose a shorter window or one op")
                if n % 256 == 0 and time.monotonic() > deadline:
                    raise Busy(f"the {what} read {n:,} entries in {self.limits.heavy_seconds:g} s, the most "
                               "it may take, and was stopped: choose a shorter window or one op, or retry "
                               "when the server is less busy")
                yield entry
        finally:
            close = getattr(entries, "close", None)
            if close is not None:
                close()

    def series(self, params: Params) -> dict[str, Any]:
        """Entries, failures and duration percentiles (p50, p95, p99) per time bucket over the
        window (``since``/``until``; ``bucket``: minute, hour, … or auto), for every op or those
        of ``op``. Buckets are aligned to UTC and every bucket of the window is listed."""
        filters, args = self._ops_filters(params)
        asked = _one(params, "bucket") or "auto"
        if asked != "auto" and asked not in BUCKETS:
            raise ValidationError(f"bucket={asked[:20]!r} is not one of auto, {', '.join(BUCKETS)}")
        if args is None:
            return {"bucket": None, "bucket_ms": None, "start": None, "points": [], "entries": 0,
                    "filters": filters.to_dict()}
        lo, hi = filters.since, filters.until
        if lo is None:  # from the oldest entry that matches
            first = self.journal.query(**args, **self.history, newest_first=False, limit=1)
            lo = first[0].timestamp if first else None
        if hi is None:  # to now when the window starts at a time, else to the newest match
            last = self.journal.query(**args, **self.history, newest_first=True, limit=1)
            newest = last[0].timestamp + 1 if last else filters.now
            hi = newest if filters.since is None else max(filters.now, newest)
        if lo is None or hi <= lo:
            return {"bucket": None, "bucket_ms": None, "start": None, "points": [], "entries": 0,
                    "filters": filters.to_dict()}
        name, width = self._bucket(asked, lo, hi)
        start = lo - lo % width
        count = (hi - 1 - start) // width + 1
        counts = [0] * count
        failed = [0] * count
        durations: list[list[int]] = [[] for _ in range(count)]
        seen = 0
        for entry in self._budgeted(self.journal.iter_logs(**args, **self.history, newest_first=False),
                                    self.limits.series_max, "plot"):
            seen += 1
            n = (entry.timestamp - start) // width
            counts[n] += 1
            if entry.status is LogStatus.Failed:
                failed[n] += 1
            if entry.duration_us is not None:
                durations[n].append(entry.duration_us)
        out = []
        for n in range(count):
            ordered = sorted(durations[n])
            out.append({"t": start + n * width, "entries": counts[n], "failed": failed[n],
                        "p50_us": percentile(ordered, 50), "p95_us": percentile(ordered, 95),
                        "p99_us": percentile(ordered, 99)})
        return {"bucket": name, "bucket_ms": width, "start": start, "end": hi, "points": out, "entries": seen,
                "filters": filters.to_dict()}

    def _bucket(self, asked: str, lo: int, hi: int) -> tuple[str, int]:
        most = self.limits.series_buckets
        if asked != "auto":
            width = BUCKETS[asked]
            if (hi - lo) // width + 2 > most:
                raise ValidationError(f"bucket={asked} gives more than {most} points over this window: "
                                      "choose a wider bucket or a shorter window")
            return asked, width
        for name, width in BUCKETS.items():  # (narrowest first) at most 300 points where possible
            if (hi - lo) // width + 2 <= min(300, most):
                return name, width
        width = BUCKETS["week"]
        if (hi - lo) // width + 2 > most:
            raise ValidationError(f"the window spans more than {most} weeks: choose a shorter one")
        return "week", width

    # -- counters --------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Every persistent counter, the kernel's stats among them, and the store's entry counts
        and tree head."""
        counts = self.journal.op_counts()
        head = self.journal.tree_head()
        live_only = bool(self.history.get("live_only"))
        try:
            entries: dict[str, Any] | None = self.journal.entry_counts().to_dict()
        except ValidationError:
            entries = None
        return {"counters": [{"name": k, "value": counts[k]} for k in sorted(counts)],
                "kernel": {JS_OPS_COUNTER: counts.get(JS_OPS_COUNTER, 0),
                           CONTEXTS_COUNTER: counts.get(CONTEXTS_COUNTER, 0)},
                "entries": entries, "journal_count": self.journal.journal_count(live_only=live_only),
                "next_seq": self.journal.next_seq(), "location": self.journal.path,
                "archive": self.journal.get_archive_dir(), "live_only": live_only,
                "tree": {"size": head.size, "first_seq": head.first_seq, "epoch": head.epoch,
                         "root": base64.b64encode(head.root).decode()}, "now": now_ms()}

    # -- the verifiable log ----------------------------------------------------------------
    def checkpoint(self) -> str | None:
        """The latest signed checkpoint of the current log (the note, as signed), or ``None``."""
        return self.journal.latest_checkpoint()

    def leaf(self, params: Params) -> tuple[int, bytes]:
        """Entry ``seq``'s leaf index and leaf data: its canonical bytes, as the tree hashed them."""
        seq = parse_int(params, "seq", low=0, high=_MAX_SEQ)
        if seq is None:
            raise ValidationError("seq is required")
        reader, entries = self.journal.tile_sources(self.history.get("archive"),
                                                    live_only=bool(self.history.get("live_only")))
        index = seq - reader.head.first_seq
        if not 0 <= index < reader.head.size:
            raise KeyError(f"entry {seq} is not in the current log (entries {reader.head.first_seq}…"
                           f"{reader.head.first_seq + reader.head.size - 1})")
        return index, entries(index, 1)[0]

    def inclusion(self, params: Params) -> dict[str, Any]:
        """The audit path of entry ``seq`` in the tree of ``size`` leaves (no root: the page takes
        the root from the signed checkpoint)."""
        seq = parse_int(params, "seq", low=0, high=_MAX_SEQ)
        size = parse_int(params, "size", low=0, high=_MAX_SEQ)
        if seq is None or size is None:
            raise ValidationError("seq and size are required")
        proof = self.journal.inclusion_proof(seq, tree_size=size, **self.history)
        return {"seq": proof.seq, "index": proof.index, "tree_size": proof.tree_size,
                "path": [base64.b64encode(h).decode() for h in proof.path]}

    def consistency(self, params: Params) -> dict[str, Any]:
        """The consistency proof from the tree of ``old`` leaves to the tree of ``new`` leaves (no
        roots: the page has both from signed checkpoints)."""
        old = parse_int(params, "old", low=0, high=_MAX_SEQ)
        new = parse_int(params, "new", low=0, high=_MAX_SEQ)
        if old is None or new is None:
            raise ValidationError("old and new are required")
        proof = self.journal.consistency_proof(old, new, **self.history)
        return {"old_size": proof.old_size, "new_size": proof.new_size,
                "path": [base64.b64encode(h).decode() for h in proof.path]}
