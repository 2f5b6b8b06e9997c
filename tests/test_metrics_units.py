"""``krepis._metrics`` (the Prometheus exposition) line by line on real journals: the exact text
(every HELP and TYPE line, label escaping, bucket bounds and their edges, the families present
only when they apply), the collector's counting across appends, archiving and clears (each entry
once; ``live_only`` leaving archived entries out), the sizes it adds up, and the metrics server's
answers (200, HEAD, 404, 503 with the reason, a port in use named)."""

from __future__ import annotations

import errno
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis._metrics import (
    CONTENT_TYPE,
    MetricsCollector,
    _directory_bytes,
    _store_bytes,
    prometheus_text,
    serve_metrics,
)
from test_archive import fill_fast

ODD = 'a"b\\c\nd'  # an op name needing every escape
ODD_LABEL = 'a\\"b\\\\c\\nd'


def _store_size(store: Path) -> int:
    return sum(os.path.getsize(store / f) for f in ("data.mdb", "commit.log"))


def _bucket_lines(op: str, cumulative: list[int], count: int) -> list[str]:
    les = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
           "0.25", "0.5", "1", "2.5", "5", "10"]
    assert len(cumulative) == len(les)
    return ([f'krepis_op_duration_seconds_bucket{{op="{op}",le="{le}"}} {n}'
             for le, n in zip(les, cumulative, strict=True)]
            + [f'krepis_op_duration_seconds_bucket{{op="{op}",le="+Inf"}} {count}'])


def _head(counters: list[str], total: int, live: int, archived: int) -> list[str]:
    return [
        "# HELP krepis_op_count_total Durable op counter op_count:{op} of the krepis journal.",
        "# TYPE krepis_op_count_total counter",
        *counters,
        "# HELP krepis_journal_entries Entries of the krepis journal's current log, live and archived.",
        "# TYPE krepis_journal_entries gauge",
        f"krepis_journal_entries {total}",
        "# HELP krepis_journal_live_entries Entries in the journal's live store.",
        "# TYPE krepis_journal_live_entries gauge",
        f"krepis_journal_live_entries {live}",
        "# HELP krepis_journal_archived_entries Entries of the journal's current log in its archive.",
        "# TYPE krepis_journal_archived_entries gauge",
        f"krepis_journal_archived_entries {archived}",
    ]


def _last(ts: str) -> list[str]:
    return ["# HELP krepis_journal_last_entry_timestamp_seconds Timestamp of the entry appended last "
            "(Unix seconds).",
            "# TYPE krepis_journal_last_entry_timestamp_seconds gauge",
            f"krepis_journal_last_entry_timestamp_seconds {ts}"]


def _store(size: int) -> list[str]:
    return ["# HELP krepis_store_bytes Bytes of the store's data files (data.mdb, commit.log).",
            "# TYPE krepis_store_bytes gauge",
            f"krepis_store_bytes {size}"]


ENTRIES_HEAD = ["# HELP krepis_op_entries_total Entries of the journal's current log (live and archived), "
                "by op and status.",
                "# TYPE krepis_op_entries_total counter"]
FAILURES_HEAD = ["# HELP krepis_op_failures_total Failed entries of the journal's current log, by op.",
                 "# TYPE krepis_op_failures_total counter"]
DURATION_HEAD = ["# HELP krepis_op_duration_seconds The duration_us of the current log's entries that have "
                 "one, by op.",
                 "# TYPE krepis_op_duration_seconds histogram"]


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def test_an_empty_journal(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        text = prometheus_text(journal)
        assert text == _text(_head([], 0, 0, 0) + _store(_store_size(tmp_path / "s"))
                             + ENTRIES_HEAD + FAILURES_HEAD + DURATION_HEAD)


def test_the_exact_exposition(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with SovereignJournal(store) as journal:
        journal.increment_op_count(ODD)
        journal.increment_op_count("zz")
        journal.increment_op_count("zz")
        journal.log_transaction(TransactionLog(1500, ODD, "r", LogStatus.Started))
        journal.log_transaction(TransactionLog(1600, ODD, "r", LogStatus.Started))
        for ts, status, duration in [(2000, LogStatus.Failed, 100), (2001, LogStatus.Completed, 101),
                                     (2002, LogStatus.Completed, 10_000_000),
                                     (2003, LogStatus.Failed, 10_000_001), (2004, LogStatus.Started, None),
                                     (2005, LogStatus.Completed, 0), (3001, LogStatus.Completed, 2_500)]:
            journal.log_transaction(TransactionLog(ts, "op", "r", status, duration_us=duration))
        text = prometheus_text(journal)
        size = _store_size(store)
    expected = (
        _head([f'krepis_op_count_total{{op="{ODD_LABEL}"}} 1', 'krepis_op_count_total{op="zz"} 2'], 9, 9, 0)
        + _last("3.001") + _store(size) + ENTRIES_HEAD
        + [f'krepis_op_entries_total{{op="{ODD_LABEL}",status="Started"}} 2',
           'krepis_op_entries_total{op="op",status="Started"} 1',
           'krepis_op_entries_total{op="op",status="Completed"} 4',
           'krepis_op_entries_total{op="op",status="Failed"} 2']
        + FAILURES_HEAD
        + [f'krepis_op_failures_total{{op="{ODD_LABEL}"}} 0', 'krepis_op_failures_total{op="op"} 2']
        + DURATION_HEAD
        # 0 and 100 in the first bucket (le is inclusive), 101 in the second, 2500 at its bound,
        # 10 s in the last, 10 s + 1 µs only in +Inf
        + _bucket_lines("op", [2, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5], 6)
        + ['krepis_op_duration_seconds_sum{op="op"} 20.002702',
           'krepis_op_duration_seconds_count{op="op"} 6'])
    assert text.splitlines() == expected
    assert text == _text(expected)


def test_a_whole_second_timestamp_and_sum_print_as_floats(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        journal.log_transaction(TransactionLog(2000, "op", "r", LogStatus.Completed, duration_us=1_000_000))
        text = prometheus_text(journal)
    assert "krepis_journal_last_entry_timestamp_seconds 2.0\n" in text
    assert 'krepis_op_duration_seconds_sum{op="op"} 1.0\n' in text


def _logs(n: int, start: int = 0, op: str = "op") -> list[TransactionLog]:
    return [TransactionLog(1000 + i, op, f"r{i}", LogStatus.Failed if i % 3 == 0 else LogStatus.Completed,
                           duration_us=i) for i in range(start, start + n)]


def _failures(text: str) -> dict[str, int]:
    prefix = 'krepis_op_failures_total{op="'
    return {line[len(prefix):].split('"')[0]: int(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def _count(text: str, op: str = "op") -> int:
    line = f'krepis_op_duration_seconds_count{{op="{op}"}} '
    found = [x for x in text.splitlines() if x.startswith(line)]
    return int(found[0][len(line):]) if found else 0


def test_an_archived_journal_counts_the_whole_history_and_the_archive_files(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, _logs(600))
        journal.archive(cold, keep_last=0)
        text = prometheus_text(journal)
        live = prometheus_text(journal, live_only=True)
        size = _store_size(store)
    files = sum(f.stat().st_size for f in cold.iterdir() if f.is_file())
    assert _count(text) == 600 and _failures(text) == {"op": 200}
    assert text.startswith(_text(
        _head(['krepis_op_count_total{op="op"} 600'], 600, 88, 512) + _last("1.599") + _store(size)
        + ["# HELP krepis_archive_bytes Bytes of the files in the journal's archive directory.",
           "# TYPE krepis_archive_bytes gauge",
           f"krepis_archive_bytes {files}"] + ENTRIES_HEAD))
    # live only: the live store's 88 entries, no archive size, the counts from the records stay
    assert _count(live) == 88 and "krepis_archive_bytes" not in live
    assert "krepis_journal_archived_entries 512\n" in live
    cold.rename(tmp_path / "moved")  # an archive that cannot be read: live_only never reads it
    with SovereignJournal(store) as journal:
        assert prometheus_text(journal, live_only=True) == live


def test_a_collector_made_for_the_other_mode_is_refused(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        with pytest.raises(ValueError) as info:
            prometheus_text(journal, MetricsCollector(live_only=True))
        assert str(info.value) == ("the collector is made with live_only=True, the text is asked with "
                                   "live_only=False")
        with pytest.raises(ValueError,
                           match="made with live_only=False, the text is asked with live_only=True"):
            prometheus_text(journal, MetricsCollector(), live_only=True)
        assert MetricsCollector().live_only is False


def test_the_collector_counts_each_entry_once_from_one_on(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        collector = MetricsCollector()
        fill_fast(journal, _logs(1))
        collector.update(journal)
        assert _count(_text(collector.lines())) == 1 and collector.last_timestamp == 1000
        collector.update(journal)  # nothing new
        assert _count(_text(collector.lines())) == 1
        fill_fast(journal, _logs(2, start=1))
        collector.update(journal)
        assert _count(_text(collector.lines())) == 3 and collector.last_timestamp == 1002
        assert _failures(_text(collector.lines())) == {"op": 1}


def test_entries_archived_between_updates_are_read_from_the_archive(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        collector, live_only = MetricsCollector(), MetricsCollector(live_only=True)
        fill_fast(journal, _logs(10))
        collector.update(journal)
        live_only.update(journal)
        fill_fast(journal, _logs(590, start=10))
        journal.archive(tmp_path / "cold", keep_last=0)  # 10 … 511 archived before they were counted
        assert journal.live_first_seq() == 512
        collector.update(journal)
        live_only.update(journal)
        assert _count(_text(collector.lines())) == 600
        assert _failures(_text(collector.lines())) == {"op": 200}
        assert collector.last_timestamp == live_only.last_timestamp == 1599
        # live only: the first 10 and the 88 still live; the archived ones left out
        assert _count(_text(live_only.lines())) == 98
        fill_fast(journal, _logs(1, start=600))
        live_only.update(journal)
        collector.update(journal)
        assert (_count(_text(live_only.lines())), _count(_text(collector.lines()))) == (99, 601)


def test_a_live_only_collector_starts_at_the_live_store(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        journal.archive(tmp_path / "cold", keep_last=0)
        collector = MetricsCollector(live_only=True)
        collector.update(journal)
        assert _count(_text(collector.lines())) == 44 and collector.last_timestamp == 1299


def test_a_clear_starts_the_series_again(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        collector = MetricsCollector()
        fill_fast(journal, _logs(4))
        assert _count(prometheus_text(journal, collector)) == 4
        journal.clear_all()  # the new log's first entry (seq 4) says so
        cleared = journal.query()[0]
        text = prometheus_text(journal, collector)
        assert collector.last_timestamp == cleared.timestamp
        assert _count(text) == 0 and _failures(text) == {"journal_cleared": 0}
        assert 'krepis_op_entries_total{op="journal_cleared",status="Completed"} 1\n' in text
        fill_fast(journal, _logs(2, start=6, op="other"))
        text = prometheus_text(journal, collector)
        assert _count(text, "other") == 2 and _failures(text) == {"journal_cleared": 0, "other": 1}
        assert "krepis_journal_last_entry_timestamp_seconds 1.007\n" in text


def test_store_bytes_adds_the_two_files_only(tmp_path: Path) -> None:
    assert _store_bytes(str(tmp_path / "missing")) is None
    (tmp_path / "file").write_bytes(b"x")
    assert _store_bytes(str(tmp_path / "file")) is None
    d = tmp_path / "d"
    d.mkdir()
    assert _store_bytes(str(d)) == 0
    (d / "commit.log").write_bytes(b"x" * 7)
    assert _store_bytes(str(d)) == 7
    (d / "data.mdb").write_bytes(b"x" * 100)
    (d / "lock.mdb").write_bytes(b"x" * 1000)
    assert _store_bytes(str(d)) == 107
    (d / "commit.log").unlink()
    (d / "commit.log").symlink_to(d / "lock.mdb")
    assert _store_bytes(str(d)) == 100 + os.lstat(d / "commit.log").st_size


def test_directory_bytes_adds_the_regular_files_only(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 3)
    (tmp_path / "b").write_bytes(b"x" * 5)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_bytes(b"x" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "sub" / "c")
    assert _directory_bytes(str(tmp_path)) == 8


# -- the server ---------------------------------------------------------------------------------

def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_server_answers_get_and_head_on_metrics_only(tmp_path: Path) -> None:
    bound: list[tuple[str, int]] = []
    with SovereignJournal(tmp_path / "s") as journal:
        journal.log_transaction(TransactionLog(1000, "op", "r", LogStatus.Completed, duration_us=5))
        server = serve_metrics(journal, port=0, ready=lambda host, port: bound.append((host, port)))
        try:
            assert server.daemon_threads is True
            assert bound == [("127.0.0.1", server.server_address[1])]
            assert any(t.name == "krepis-metrics" for t in threading.enumerate())
            base = f"http://127.0.0.1:{bound[0][1]}"
            status, headers, body = _get(base + "/metrics")
            assert (status, headers["Content-Type"]) == (200, CONTENT_TYPE)
            assert body == prometheus_text(journal).encode() and headers["Content-Length"] == str(len(body))
            journal.log_transaction(TransactionLog(2000, "op", "r", LogStatus.Completed, duration_us=5))
            status, headers, body = _get(base + "/metrics?x=1")
            assert status == 200 and _count(body.decode()) == 2  # each entry counted once
            status, headers, head = _get(base + "/metrics", "HEAD")
            assert (status, head) == (200, b"") and int(headers["Content-Length"]) == len(body)
            status, _, body = _get(base + "/other")
            assert status == 404 and b"only /metrics is served" in body
            status, _, body = _get(base + "/metrics/x")
            assert status == 404
        finally:
            server.shutdown()
            server.server_close()


def test_the_server_says_why_the_journal_is_unavailable(tmp_path: Path) -> None:
    journal = SovereignJournal(tmp_path / "s")
    server = serve_metrics(journal, port=0)
    try:
        journal.close()
        status, headers, body = _get(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        assert (status, headers["Content-Type"]) == (503, "text/plain; charset=utf-8")
        assert body.startswith(b"journal unavailable: ") and body.endswith(b"\n")
        assert str(tmp_path / "s").encode() in body and headers["Content-Length"] == str(len(body))
        status, headers, body = _get(f"http://127.0.0.1:{server.server_address[1]}/metrics", "HEAD")
        assert (status, body) == (503, b"")
    finally:
        server.shutdown()
        server.server_close()


def test_the_server_live_only_never_reads_the_archive(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        journal.archive(cold, keep_last=0)
    cold.rename(tmp_path / "moved")
    with SovereignJournal(store) as journal:
        for live_only, want in ((True, 200), (False, 503)):
            server = serve_metrics(journal, port=0, live_only=live_only)
            try:
                status, _, body = _get(f"http://127.0.0.1:{server.server_address[1]}/metrics")
                assert status == want, body
                if live_only:
                    assert _count(body.decode()) == 44
                else:
                    assert str(cold).encode() in body
            finally:
                server.shutdown()
                server.server_close()


def test_a_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken, SovereignJournal(tmp_path / "s") as journal:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as info:
            serve_metrics(journal, "127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        assert str(info.value) == f"[Errno {errno.EADDRINUSE}] cannot serve metrics on 127.0.0.1:{port}: " \
                                  f"{os.strerror(errno.EADDRINUSE)}"


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_head_sends_no_body_and_a_query_string_is_cut_at_its_first_mark(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        journal.log_transaction(TransactionLog(1000, "op", "r", LogStatus.Completed))
        server = serve_metrics(journal, port=0)
        try:
            port = server.server_address[1]
            answer = _raw(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.0 200 ") and body == b""
            answer = _raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert answer.partition(b"\r\n\r\n")[2] == prometheus_text(journal).encode()
            assert _get(f"http://127.0.0.1:{port}/metrics?a=1?b=2")[0] == 200
            assert _get(f"http://127.0.0.1:{port}/metricsx?a")[0] == 404
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
            except urllib.error.HTTPError as exc:
                assert (exc.code, exc.reason) == (404, "only /metrics is served")
            else:
                raise AssertionError("no 404")
        finally:
            server.shutdown()
            server.server_close()


def test_an_unavailable_reason_that_is_not_utf8_is_still_sent(tmp_path: Path) -> None:
    store = tmp_path / os.fsdecode(b"s\xff")  # the reason names the path: a lone surrogate in it
    journal = SovereignJournal(store)
    server = serve_metrics(journal, port=0)
    try:
        journal.close()
        status, _, body = _get(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        assert status == 503 and body.startswith(b"journal unavailable: ")
        assert str(tmp_path).encode() + b"/s?" in body
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_port_and_mode(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        journal.archive(cold, keep_last=0)
    cold.rename(tmp_path / "moved")
    with SovereignJournal(store) as journal:
        bound: list[tuple[str, int]] = []
        try:
            server = serve_metrics(journal, ready=lambda host, port: bound.append((host, port)))
        except OSError as exc:  # the default port taken on this machine: the message names it
            assert "cannot serve metrics on 127.0.0.1:9464: " in str(exc)
        else:
            try:
                assert bound == [("127.0.0.1", 9464)]
                status, _, body = _get("http://127.0.0.1:9464/metrics")
                assert status == 503 and str(cold).encode() in body  # not live only: reads the archive
            finally:
                server.shutdown()
                server.server_close()


def test_the_server_keeps_its_series_between_scrapes_and_warms_them_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self)
        real_start(self)

    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        monkeypatch.setattr(threading.Thread, "start", start)
        server = serve_metrics(journal, port=0, live_only=True)
        monkeypatch.undo()
        try:
            threads = {t.name: t for t in started}
            assert set(threads) == {"krepis-metrics-warm", "krepis-metrics"}
            assert threads["krepis-metrics-warm"].daemon and threads["krepis-metrics"].daemon
            threads["krepis-metrics-warm"].join()
            # counted while live by the warm-up, then archived: a live-only series keeps them
            journal.archive(tmp_path / "cold", keep_last=0)
            fill_fast(journal, _logs(1, start=300))
            status, _, body = _get(f"http://127.0.0.1:{server.server_address[1]}/metrics")
            assert status == 200 and _count(body.decode()) == 301
            assert _count(prometheus_text(journal, live_only=True)) == 45  # a new series: live only
        finally:
            server.shutdown()
            server.server_close()


class _Meanwhile:
    """A real journal whose first ``iter_logs`` call is preceded by ``action`` (an archive run or
    an append between the collector's reading of the tree head and its read of the entries: a
    race, made to happen at that exact point)."""

    def __init__(self, journal: SovereignJournal, action: Any) -> None:
        self._journal, self._action = journal, action

    def __getattr__(self, name: str) -> Any:
        return getattr(self._journal, name)

    def iter_logs(self, **kwargs: Any) -> Any:
        if self._action is not None:
            action, self._action = self._action, None
            action()
        return self._journal.iter_logs(**kwargs)


def test_entries_archived_during_a_read_are_read_again_with_the_archive(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        collector = MetricsCollector()
        collector.update(_Meanwhile(journal, lambda: journal.archive(tmp_path / "cold", keep_last=0)))
        assert journal.live_first_seq() == 256
        assert _count(_text(collector.lines())) == 300 and collector.last_timestamp == 1299


def test_a_live_only_collector_never_reads_what_was_archived_during_a_read(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        collector = MetricsCollector(live_only=True)
        collector.update(_Meanwhile(journal, lambda: journal.archive(tmp_path / "cold", keep_last=0)))
        assert _count(_text(collector.lines())) == 0  # nothing this time: the archive is never read
        collector.update(journal)
        assert _count(_text(collector.lines())) == 44  # the live store's, from where it starts


def test_entries_appended_during_a_read_wait_for_the_next(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s") as journal:
        fill_fast(journal, _logs(3))
        collector = MetricsCollector()
        collector.update(_Meanwhile(journal, lambda: fill_fast(journal, _logs(1, start=3))))
        # the tree head read first said 3: the fourth is not counted yet, then once
        assert _count(_text(collector.lines())) == 3 and collector.last_timestamp == 1002
        collector.update(journal)
        assert _count(_text(collector.lines())) == 4 and collector.last_timestamp == 1003
        collector.update(journal)
        assert _count(_text(collector.lines())) == 4
        fill_fast(journal, _logs(1, start=4))
        collector.update(_Meanwhile(journal, lambda: fill_fast(journal, _logs(2, start=5))))
        assert _count(_text(collector.lines())) == 5 and collector.last_timestamp == 1004
        collector.update(journal)
        assert _count(_text(collector.lines())) == 7


def test_a_collector_at_the_live_stores_first_entry_needs_no_archive(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, _logs(256))
        collector = MetricsCollector()
        collector.update(journal)
        fill_fast(journal, _logs(44, start=256))
        journal.archive(cold, keep_last=0)
        assert journal.live_first_seq() == 256
        cold.rename(tmp_path / "moved")
        collector.update(journal)
        assert _count(_text(collector.lines())) == 300


def test_counting_the_new_entries_needs_no_archive(tmp_path: Path) -> None:
    store, cold = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, _logs(300))
        collector = MetricsCollector()
        collector.update(journal)
        journal.archive(cold, keep_last=0)
        cold.rename(tmp_path / "moved")
        fill_fast(journal, _logs(1, start=300))
        collector.update(journal)  # the live store holds every entry still to count
        assert _count(_text(collector.lines())) == 301
        collector.update(journal)
        assert _count(_text(collector.lines())) == 301
