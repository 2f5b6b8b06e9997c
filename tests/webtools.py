"""Shared by the web console's tests: a store with realistic and hostile entries (part of it
archived, a signed checkpoint), a console served by a real uvicorn in a thread, and plain
HTTP requests to it."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import Signer, generate_signer

T0 = 1_769_860_800_000  # 2026-01-31T12:00:00Z
OPS = ("op_charge", "op_refund", "op_login", "kernel_init")
#: journal texts that would run as script if any reached the page as markup or a URL
HOSTILE_OP = "<script>window.__pwned=1;alert(1)</script>"
HOSTILE_RID = "\"><img src=x onerror=\"window.__pwned=2;alert(2)\">"
HOSTILE_ERROR = "javascript:window.__pwned=3 <svg onload=\"window.__pwned=4\"></svg> \"onerror=alert(3)"
ENTRIES = 700
ARCHIVED = 512  # two bundles of 256 moved into the archive


def console_entries(n: int = ENTRIES) -> list[TransactionLog]:
    """Requests of two entries each (Started, then Completed or — one in seven — Failed), 20 s
    apart, four ops; a few hostile texts among them."""
    out: list[TransactionLog] = []
    for i in range(n):
        pair = i // 2
        op = OPS[pair % len(OPS)]
        rid = f"req-{pair:04d}"
        ts = T0 + i * 20_000
        if i % 2 == 0:
            out.append(TransactionLog(ts, op, rid, LogStatus.Started))
        elif pair % 7 == 3:
            out.append(TransactionLog(ts, op, rid, LogStatus.Failed, duration_us=1000 + pair * 37 % 5000,
                                      error=f"TimeoutError: upstream {pair} did not answer"))
        else:
            out.append(TransactionLog(ts, op, rid, LogStatus.Completed, duration_us=500 + pair * 53 % 9000))
    for k, i in enumerate(range(600, n, 25)):  # hostile texts in the live part
        out[i] = TransactionLog(out[i].timestamp, HOSTILE_OP if k % 2 else out[i].op_name,
                                HOSTILE_RID if k % 3 == 0 else out[i].request_id, LogStatus.Failed,
                                duration_us=7, error=HOSTILE_ERROR + ("y" * 16_000 if k == 1 else "x" * k))
    return out


def make_console_store(path: Path, key: Signer | None = None,
                       entries: list[TransactionLog] | None = None, archive: bool = True) -> Signer:
    """Write the entries (each counted under its op), the kernel's two counters, archive the
    first 512 into ``path``'s sibling ``archive`` directory, and sign a checkpoint."""
    key = key or generate_signer("example.com/journal")
    with SovereignJournal(path) as journal:
        for entry in entries if entries is not None else console_entries():
            journal.record(entry, increment=entry.op_name if len(entry.op_name) < 40 else "hostile")
        for _ in range(3):
            journal.increment_op_count("js_ops_called")
        journal.increment_op_count("contexts_created")
        if archive:
            journal.archive(path.parent / "archive", keep_last=journal.journal_count() - ARCHIVED)
        journal.sign_checkpoint(key)
    return key


class Served:
    """A console served by uvicorn in a thread; ``url`` ends with a slash."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the console did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.app.close()
        self.server.should_exit = True
        self.thread.join(30)


@contextmanager
def served(app: Any) -> Iterator[Served]:
    server = Served(app)
    try:
        yield server
    finally:
        server.stop()


def get(server: Served, path: str, params: dict[str, Any] | list[tuple[str, Any]] | None = None, *,
        method: str = "GET", headers: dict[str, str] | None = None,
        body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request; the status, the headers (lower-case names) and the body."""
    query = urllib.parse.urlencode(params or {}, doseq=True)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, "/" + path + ("?" + query if query else ""), body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def get_json(server: Served, path: str, params: Any = None, status: int = 200) -> Any:
    code, _headers, body = get(server, path, params)
    assert code == status, (code, body[:500])
    return json.loads(body)
