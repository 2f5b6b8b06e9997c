"""The web console's rows (when the web extra is installed): ``krepis serve`` in its own
process, measured from outside as a browser meets it.

* **Reads**: the server time of the trail's first page, a page from the middle of the history
  (keyset paging), the failed entries and a request's page on the large journal — the
  ``Server-Timing`` the console reports for each answer (what it spent; the client's round trip
  beside it).
* **Live**: 50 viewers hold a live stream each (in a process of their own) while one writer
  appends entries at a steady 5,000 a second; the viewers' lag — from an entry's timestamp to
  the moment its event arrives — and the writer's rate, measured in rounds alone and with the
  viewers, side by side.
"""
from __future__ import annotations

import asyncio
import http.client
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from .._model import LogStatus, TransactionLog
from ..journal import SovereignJournal

__all__ = ["bench_web_live", "bench_web_reads", "web_available"]


def web_available() -> bool:
    """Whether the web extra (Starlette, uvicorn) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("starlette", "uvicorn"))


class _Console:
    """``krepis serve`` on ``path`` in a child process, on a free loopback port."""

    def __init__(self, path: str, max_live: int = 100) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "krepis", "--storage", path, "serve", "--listen", "127.0.0.1:0",
             "--max-live", str(max_live)], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env={k: v for k, v in os.environ.items() if k not in ("KREPIS_STORAGE", "KREPIS_SERVE_TOKEN")})
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "http://" not in line:
            self.close()
            raise RuntimeError(f"krepis serve did not start: {line.strip()}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def get(self, path: str) -> tuple[float, float]:
        """One GET: the server's time (Server-Timing) and the round trip, in ms."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            took = (time.perf_counter() - start) * 1000
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError(f"bench: GET {path} answered {response.status}")
        timing = response.getheader("server-timing", "app;dur=0")
        return float(timing.split("dur=")[1]), took

    def cpu_seconds(self) -> float:
        """The server process's CPU time so far (Linux: /proc)."""
        return _cpu_seconds(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_web_reads(path: str, entries: int, repeat: int = 50) -> list[dict[str, Any]]:
    """The reads rows on the journal at ``path`` (of ``entries`` entries): per page, the median
    and p99 server time and the median round trip over ``repeat`` requests (after 3 unmeasured)."""
    with SovereignJournal(path, create=False, retention="off") as journal:
        middle = journal.entry(max(0, entries // 2))
    rows = [("trail, first page (100 entries)", "/api/trail?limit=100"),
            ("trail, a page from the middle", f"/api/trail?limit=100&after={middle.seq}"),
            ("trail, status=Failed", "/api/trail?limit=100&status=Failed"),
            ("request page", "/api/request?id=" + middle.request_id)]
    console = _Console(path)
    try:
        out = []
        for name, target in rows:
            for _ in range(3):
                console.get(target)
            samples = [console.get(target) for _ in range(repeat)]
            server = sorted(s for s, _ in samples)
            out.append({"name": name, "entries": entries,
                        "server_ms_p50": round(statistics.median(server), 2),
                        "server_ms_p99": round(server[max(0, (99 * len(server) + 99) // 100 - 1)], 2),
                        "round_trip_ms_p50": round(statistics.median(r for _, r in samples), 2)})
        return out
    finally:
        console.close()


def _write(path: str, rate: int, seconds: float) -> float:
    """Append entries at ``rate`` a second for ``seconds``; the rate reached."""
    count = max(1, int(rate * seconds))
    with SovereignJournal(path, flush="interval:10ms", retention="off") as journal:
        start = time.perf_counter()
        for i in range(count):
            due = start + i / rate
            ahead = due - time.perf_counter()
            if ahead > 0.002:
                time.sleep(ahead)
            journal.log_transaction(TransactionLog.now("bench_live", f"live-{i}", LogStatus.Completed,
                                                       duration_us=i % 1000))
        took = time.perf_counter() - start
    return count / took


def bench_web_live(directory: str, *, viewers: int = 50, rate: int = 5000, seconds: float = 3.0,
                   rounds: int = 2) -> dict[str, Any]:
    """The live row: a fresh store in ``directory``, served; ``rounds`` rounds of the writer at
    ``rate`` for ``seconds`` alone, then with ``viewers`` live streams open."""
    path = os.path.join(directory, "live")
    with SovereignJournal(path, retention="off") as journal:
        journal.log_transaction(TransactionLog.now("bench_live", "start", LogStatus.Completed))
    console = _Console(path, max_live=viewers + 10)
    alone: list[float] = []
    together: list[float] = []
    lags: list[float] = []
    received: list[int] = []
    behind = 0
    server_cpu = viewers_cpu = 0.0
    try:
        for _ in range(rounds):
            alone.append(_write(path, rate, seconds))
            watcher = subprocess.Popen(
                [sys.executable, "-c", "from krepis.bench._web import viewers_main; viewers_main()",
                 str(console.port), str(viewers),
                 str(seconds + 10), str(max(1, int(rate * seconds)))],
                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
            assert watcher.stdout is not None
            if watcher.stdout.readline().strip() != "ready":
                watcher.kill()
                raise RuntimeError("bench: the live viewers did not connect")
            before = console.cpu_seconds()
            together.append(_write(path, rate, seconds))
            report = json.loads(watcher.communicate(timeout=seconds + 60)[0])
            server_cpu += console.cpu_seconds() - before
            viewers_cpu += report["cpu_seconds"]
            lags += report["lags_ms"]
            received += report["entries"]
            behind += report["behind"]
    finally:
        console.close()
    lags.sort()
    base, loaded = statistics.median(alone), statistics.median(together)
    return {"viewers": viewers, "rate": rate, "seconds": seconds, "rounds": rounds,
            "writer_alone_per_s": round(base, 1), "writer_with_viewers_per_s": round(loaded, 1),
            "writer_drop_pct": round(max(0.0, (base - loaded) / base * 100), 2) if base else 0.0,
            "lag_ms_p50": round(statistics.median(lags), 1) if lags else None,
            "lag_ms_p99": round(lags[max(0, (99 * len(lags) + 99) // 100 - 1)], 1) if lags else None,
            "lag_ms_max": round(lags[-1], 1) if lags else None,
            "entries_per_viewer_min": min(received) if received else 0,
            "entries_per_round": max(1, int(rate * seconds)), "behind_events": behind,
            "server_cpu_per_round_s": round(server_cpu / rounds, 2),
            "viewers_cpu_per_round_s": round(viewers_cpu / rounds, 2)}


async def _viewer(port: int, until: float, lags: list[float], counts: list[int], behind: list[int],
                  ready: asyncio.Event, connected: list[int], total: int, expected: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /api/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
                 .encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")  # (the body comes chunked)
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n")[0]
        raise RuntimeError(f"bench: the live stream answered {status!r}")
    connected[0] += 1
    if connected[0] == total:
        ready.set()
    buf = b""
    count = 0
    try:
        while time.monotonic() < until and count < expected:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), max(0.01, until - time.monotonic()))
            size = int(size_line.strip(), 16)
            if size == 0:
                break
            buf += await reader.readexactly(size + 2)
            buf = buf[:-2] if buf.endswith(b"\r\n") else buf
            now = time.time() * 1000
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if b"event: behind" in event:
                    behind[0] += 1
                elif b"event: entries" in event:
                    at = event.find(b'"timestamp":')
                    if at >= 0:
                        end = event.find(b",", at)
                        lags.append(now - int(event[at + 12:end]))
                    count += event.count(b'"seq":')
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        counts.append(count)
        writer.close()


async def _viewers(port: int, n: int, seconds: float, expected: int) -> dict[str, Any]:
    """``n`` live streams until each received ``expected`` entries (or ``seconds`` passed)."""
    lags: list[float] = []
    counts: list[int] = []
    behind = [0]
    ready = asyncio.Event()
    connected = [0]
    until = time.monotonic() + seconds
    tasks = [asyncio.ensure_future(_viewer(port, until, lags, counts, behind, ready, connected, n,
                                           expected)) for _ in range(n)]
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.3)  # (the server's feed has looked once since the last one joined)
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    return {"lags_ms": lags, "entries": counts, "behind": behind[0], "cpu_seconds": time.process_time()}


def viewers_main() -> None:
    """The viewers' process (arguments PORT N SECONDS EXPECTED): its report as one JSON line."""
    print(json.dumps(asyncio.run(_viewers(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]),
                                          int(sys.argv[4])))))
