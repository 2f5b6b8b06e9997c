"""Prometheus metrics: the journal's counters and size in the text exposition format."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable

from .journal import SovereignJournal

__all__ = ["CONTENT_TYPE", "prometheus_text", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def prometheus_text(journal: SovereignJournal) -> str:
    """Every counter as ``krepis_op_count_total{op="…"}`` and the entry count, read now.

    Counter names end in ``_total`` as the exposition conventions require; label values are
    escaped (backslash, double quote, newline) so any op name yields a valid exposition.
    """
    counts = journal.op_counts()
    entries = journal.journal_count()
    lines = [
        "# HELP krepis_op_count_total Durable op counter op_count:{op} of the krepis journal.",
        "# TYPE krepis_op_count_total counter",
        *(f'krepis_op_count_total{{op="{_label(name)}"}} {value}' for name, value in sorted(counts.items())),
        "# HELP krepis_journal_entries Entries in the krepis journal.",
        "# TYPE krepis_journal_entries gauge",
        f"krepis_journal_entries {entries}",
    ]
    return "\n".join(lines) + "\n"


def serve_metrics(
    journal: SovereignJournal,
    host: str = "127.0.0.1",
    port: int = 9464,
    *,
    ready: Callable[[str, int], None] | None = None,
) -> http.server.ThreadingHTTPServer:
    """Serve ``/metrics`` until the returned server is shut down; each scrape reads afresh.

    Runs the server in a daemon thread and returns it; ``ready(host, port)`` is called with the
    bound address (useful with ``port=0``). ``GET`` and ``HEAD /metrics`` are answered; a port
    that cannot be bound raises ``OSError`` naming ``host:port``.
    """
    lock = threading.Lock()

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
                    body = prometheus_text(journal).encode("utf-8")
            except Exception as exc:
                self.send_error(503, f"journal unavailable: {exc}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
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
    threading.Thread(target=server.serve_forever, name="krepis-metrics", daemon=True).start()
    if ready is not None:
        bound_host, bound_port = server.server_address[:2]
        ready(str(bound_host), int(bound_port))
    return server
