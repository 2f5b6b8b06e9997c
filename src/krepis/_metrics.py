"""Prometheus metrics: the journal's counters, size, and per-op statuses and durations, in the
text exposition format.

The per-op series cover the current log's whole history — live and archived entries, as every
read does — and are kept by a :class:`MetricsCollector` that reads each entry once: the first
collection reads the history, every later one only the entries appended since (by sequence
number). A clear starts them again (a counter reset, as Prometheus expects of counters).
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable

from .journal import SovereignJournal

__all__ = ["BUCKETS_US", "CONTENT_TYPE", "MetricsCollector", "prometheus_text", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: the upper bounds of the duration histogram's buckets, in microseconds (100 µs … 10 s)
BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
              1_000_000, 2_500_000, 5_000_000, 10_000_000)

_STATUSES = ("Started", "Completed", "Failed")

#: the store's files whose sizes krepis_store_bytes adds up (LMDB)
_STORE_FILES = ("data.mdb", "commit.log")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


class _OpSeries:
    """One op's running numbers: entries per status, and the duration histogram."""

    __slots__ = ("buckets", "count", "statuses", "sum_us")

    def __init__(self) -> None:
        self.statuses = [0, 0, 0]
        self.buckets = [0] * len(BUCKETS_US)  # (not cumulative here: per bucket)
        self.count = 0
        self.sum_us = 0


class MetricsCollector:
    """The history-derived series of one journal (see the module): per op, entries by status,
    failures and a duration histogram; and the timestamp of the entry appended last.

    :meth:`update` reads the entries appended since the last call, in append order, and counts
    each exactly once: progress is kept entry by entry, so a read cut short (an error, a slow
    client gone) is continued by the next call. Not thread-safe: callers serialize (as
    :func:`serve_metrics` does).

    ``live_only=True``: the entries of the live store alone — the archive is never read; entries
    archived before they were counted are left out."""

    def __init__(self, *, live_only: bool = False) -> None:
        self.live_only = live_only
        self._epoch: int | None = None
        self._next = 0  # the sequence number of the next entry to count
        self._ops: dict[str, _OpSeries] = {}
        self.last_timestamp: int | None = None

    def update(self, journal: SovereignJournal) -> None:
        """Count the entries appended since the last call (after a clear: the new log's)."""
        import bisect

        head = journal.tree_head()
        if head.epoch != self._epoch:
            self._epoch, self._next, self._ops, self.last_timestamp = head.epoch, head.first_seq, {}, None
        end = head.first_seq + head.size
        if self.live_only:
            self._next = max(self._next, journal.live_first_seq())
        for live_only in (True,) if self.live_only else (True, False):
            if self._next >= end:
                return
            # the live store alone when it holds everything still to count; archived meanwhile
            # (the first entry read is not the next one): again, with the archive
            if live_only and journal.live_first_seq() > self._next:
                if self.live_only:
                    self._next = journal.live_first_seq()  # (archived meanwhile: left out)
                else:
                    continue
            logs = journal.iter_logs(order="append", newest_first=False, limit=end - self._next,
                                     after=self._next - 1 if self._next > 0 else None, live_only=live_only)
            ops, bounds = self._ops, BUCKETS_US
            for log in logs:
                if log.seq != self._next:
                    break
                series = ops.get(log.op_name)
                if series is None:
                    series = ops[log.op_name] = _OpSeries()
                series.statuses[_STATUSES.index(log.status.value)] += 1
                if log.duration_us is not None:
                    at = bisect.bisect_left(bounds, log.duration_us)
                    if at < len(bounds):
                        series.buckets[at] += 1
                    series.count += 1
                    series.sum_us += log.duration_us
                self.last_timestamp = log.timestamp
                self._next += 1

    def lines(self) -> list[str]:
        """The per-op families, in the text format."""
        names = sorted(self._ops)
        out = ["# HELP krepis_op_entries_total Entries of the journal's current log (live and archived), "
               "by op and status.",
               "# TYPE krepis_op_entries_total counter"]
        for name in names:
            for status, n in zip(_STATUSES, self._ops[name].statuses, strict=True):
                if n:
                    out.append(f'krepis_op_entries_total{{op="{_label(name)}",status="{status}"}} {n}')
        out += ["# HELP krepis_op_failures_total Failed entries of the journal's current log, by op.",
                "# TYPE krepis_op_failures_total counter"]
        out += [f'krepis_op_failures_total{{op="{_label(name)}"}} {self._ops[name].statuses[2]}'
                for name in names]
        out += ["# HELP krepis_op_duration_seconds The duration_us of the current log's entries that have "
                "one, by op.",
                "# TYPE krepis_op_duration_seconds histogram"]
        for name in names:
            series, op = self._ops[name], _label(name)
            if not series.count:
                continue
            running = 0
            for bound, n in zip(BUCKETS_US, series.buckets, strict=True):
                running += n
                out.append(f'krepis_op_duration_seconds_bucket{{op="{op}",le="{bound / 1e6:g}"}} {running}')
            out.append(f'krepis_op_duration_seconds_bucket{{op="{op}",le="+Inf"}} {series.count}')
            out.append(f'krepis_op_duration_seconds_sum{{op="{op}"}} {_number(series.sum_us / 1e6)}')
            out.append(f'krepis_op_duration_seconds_count{{op="{op}"}} {series.count}')
        return out


def _store_bytes(path: str) -> int | None:
    """The sizes of an LMDB store's data files; ``None`` for a store that is not a directory."""
    if not os.path.isdir(path):
        return None
    total = 0
    for name in _STORE_FILES:
        try:
            total += os.stat(os.path.join(path, name), follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def _directory_bytes(path: str) -> int:
    total = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


def prometheus_text(journal: SovereignJournal, collector: MetricsCollector | None = None, *,
                    live_only: bool = False) -> str:
    """The journal's metrics, read now:

    * every counter as ``krepis_op_count_total{op="…"}``;
    * ``krepis_journal_entries`` (the current log's entries, live and archived),
      ``krepis_journal_live_entries``, ``krepis_journal_archived_entries``;
    * ``krepis_journal_last_entry_timestamp_seconds``: the timestamp of the entry appended last;
    * ``krepis_store_bytes`` (LMDB: ``data.mdb`` and ``commit.log``; absent for PostgreSQL) and
      ``krepis_archive_bytes`` (the archive directory's files, when entries are archived);
    * per op: ``krepis_op_entries_total{op,status}``, ``krepis_op_failures_total{op}`` and the
      histogram ``krepis_op_duration_seconds{op}`` (buckets :data:`BUCKETS_US`) — from
      ``collector`` (updated now; a new one reads the whole history, O(n)).

    Counters end in ``_total`` as the exposition conventions require; label values are escaped
    (backslash, double quote, newline) so any op name yields a valid exposition. An archive the
    history needs and cannot have is an error naming it, as for every read.

    ``live_only=True`` never reads the archive (it may be missing): the per-op series count the
    live store's entries alone (a collector given must be made with ``live_only=True``), there
    is no ``krepis_archive_bytes``; the entry counts, from the store's records, stay.
    """
    collector = MetricsCollector(live_only=live_only) if collector is None else collector
    if collector.live_only != live_only:
        raise ValueError(f"the collector is made with live_only={collector.live_only}, the text is asked "
                         f"with live_only={live_only}")
    archive = None if live_only else journal.check_archive()
    counts = journal.op_counts()
    where = journal.entry_counts()
    collector.update(journal)
    lines = [
        "# HELP krepis_op_count_total Durable op counter op_count:{op} of the krepis journal.",
        "# TYPE krepis_op_count_total counter",
        *(f'krepis_op_count_total{{op="{_label(name)}"}} {value}' for name, value in sorted(counts.items())),
        "# HELP krepis_journal_entries Entries of the krepis journal's current log, live and archived.",
        "# TYPE krepis_journal_entries gauge",
        f"krepis_journal_entries {where.total}",
        "# HELP krepis_journal_live_entries Entries in the journal's live store.",
        "# TYPE krepis_journal_live_entries gauge",
        f"krepis_journal_live_entries {where.live}",
        "# HELP krepis_journal_archived_entries Entries of the journal's current log in its archive.",
        "# TYPE krepis_journal_archived_entries gauge",
        f"krepis_journal_archived_entries {where.archived}",
    ]
    if collector.last_timestamp is not None:
        lines += ["# HELP krepis_journal_last_entry_timestamp_seconds Timestamp of the entry appended last "
                  "(Unix seconds).",
                  "# TYPE krepis_journal_last_entry_timestamp_seconds gauge",
                  f"krepis_journal_last_entry_timestamp_seconds {_number(collector.last_timestamp / 1000)}"]
    size = _store_bytes(journal.path)
    if size is not None:
        lines += ["# HELP krepis_store_bytes Bytes of the store's data files (data.mdb, commit.log).",
                  "# TYPE krepis_store_bytes gauge",
                  f"krepis_store_bytes {size}"]
    if archive is not None:
        lines += ["# HELP krepis_archive_bytes Bytes of the files in the journal's archive directory.",
                  "# TYPE krepis_archive_bytes gauge",
                  f"krepis_archive_bytes {_directory_bytes(archive)}"]
    lines += collector.lines()
    return "\n".join(lines) + "\n"


def serve_metrics(
    journal: SovereignJournal,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    ready: Callable[[str, int], None] | None = None,
    live_only: bool = False,
) -> http.server.ThreadingHTTPServer:
    """Serve ``/metrics`` until the returned server is shut down; each scrape reads afresh.

    Runs the server in a daemon thread and returns it; ``ready(host, port)`` is called with the
    bound address (useful with ``port=0``). ``GET`` and ``HEAD /metrics`` are answered; a port
    that cannot be bound raises ``OSError`` naming ``host:port``. The per-op series are kept
    between scrapes (a scrape reads only the entries appended since the last); reading the
    history they start from begins at once, in the background. ``live_only``: as for
    :func:`prometheus_text`.
    """
    lock = threading.Lock()
    collector = MetricsCollector(live_only=live_only)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._respond(with_body=True)

        def do_HEAD(self) -> None:
            self._respond(with_body=False)

        def _respond(self, *, with_body: bool) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404, "only /metrics is served")
                return
            try:
                with lock:
                    body = prometheus_text(journal, collector, live_only=live_only).encode("utf-8")
                status, ctype = 200, CONTENT_TYPE
            except Exception as exc:  # the reason in the body: it may hold any character
                body = f"journal unavailable: {exc}\n".encode("utf-8", "replace")
                status, ctype = 503, "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # quiet
            return

    try:
        server = http.server.ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:  # e.g. "address already in use": say which address
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    server.daemon_threads = True

    def warm() -> None:
        try:
            with lock:
                collector.update(journal)
        except Exception:  # a scrape reports it (503, naming the problem)
            pass

    threading.Thread(target=warm, name="krepis-metrics-warm", daemon=True).start()
    threading.Thread(target=server.serve_forever, name="krepis-metrics", daemon=True).start()
    if ready is not None:
        bound_host, bound_port = server.server_address[:2]
        ready(str(bound_host), int(bound_port))
    return server
