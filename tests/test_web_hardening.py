"""The web console's server under attack (``krepis serve``): memory bounded in bytes whatever
the entries hold, no open redirect, no forged access-log line, no store path in an error, a
bounded number of heavy reads, slow and half-open connections timed out and not counted, the
token kept off the command line, uvicorn's own answers with the security headers — on a real
store served by a real uvicorn, with real sockets."""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.web import Limits, create_app
from krepis.web._live import Feed, Subscriber
from test_cli import KREPIS, krepis
from test_web import open_stream, read_events
from webtools import T0, Served, get, get_json, make_console_store, served

TOKEN = "s3cret-token-for-the-console-1234"
EMOJI = "\U0001F600" * 4096  # 16 KiB of UTF-8: the longest error an entry holds
BIG = 700  # entries with such an error: 11 MB as UTF-8 JSON, 34 MB escaped to \\uXXXX


@pytest.fixture(scope="module")
def emoji_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening") / "storage"
    with SovereignJournal(path, flush="interval:20ms") as journal:
        for i in range(BIG):
            journal.log_transaction(TransactionLog(T0 + i, "op_big", f"r{i}", LogStatus.Failed, duration_us=5,
                                                   error=EMOJI))
    return path


# -- 4: the live feed's memory, in bytes ------------------------------------------------------

def test_a_catch_up_is_bounded_in_bytes_and_sent_as_utf8(emoji_store: Path) -> None:
    """A tab asking for everything since seq 0 over 11 MB of entries gets the newest 8 MB at most,
    told what it missed first; the text is UTF-8, not six bytes of escape per UTF-16 unit."""
    with served(create_app(emoji_store)) as server:
        conn, response = open_stream(server, "from=0")
        conn.sock.settimeout(30)
        try:
            events = read_events(response, time.monotonic() + 60)
            name, data = next(e for e in events if e[0] != "message")
            assert name == "behind", name
            behind = json.loads(data)
            assert behind["from"] == 0 and behind["skipped"] == behind["to"] + 1 > 100
            got, size = [], 0
            for name, data in events:
                assert name == "entries"
                size += len(data.encode())
                got += [e["seq"] for e in json.loads(data)]
                if got[-1] == BIG - 1:
                    break
            assert got == list(range(behind["to"] + 1, BIG)) and size <= 8_000_000
            assert EMOJI.encode() in data.encode() and "\\ud83d" not in data
        finally:
            conn.close()


def test_a_queue_is_bounded_in_bytes_and_keeps_the_newest() -> None:
    entries = [TransactionLog(T0, "op", f"r{i}", LogStatus.Failed, error="e" * 1000, seq=i)
               for i in range(30)]
    sub = Subscriber(None, 5000, 0, max_bytes=5000)
    for i in range(0, 30, 3):
        sub.push([(e, e.to_json()) for e in entries[i:i + 3]])
        assert sub.pending_bytes <= 5000
    assert sub.skipped == 27 and sub.skipped_range == (0, 26)
    assert [c.last for c in sub.pending] == [29]
    assert sub.pending_bytes == sum(len(c.event) for c in sub.pending)
    assert sub.pop() is not None and sub.pop() is None and sub.pending_bytes == 0


def test_all_queues_together_are_bounded_in_bytes(emoji_store: Path) -> None:
    """Filtered tabs each hold their own copies: the feed drops the longest queues first."""
    limits = Limits(live_queue_bytes=4_000_000, live_total_bytes=6_000_000)

    async def run() -> list[int]:
        async def run_sync(fn: Any) -> Any:
            return await asyncio.to_thread(fn)

        with SovereignJournal(emoji_store, create=False) as journal:
            feed = Feed(journal, {}, limits, run_sync)
            subs = [await feed.subscribe(lambda e, i=i: e.seq % 3 != i, 0) for i in range(3)]  # type: ignore[misc]
            sizes = [sub.pending_bytes for sub in subs]
            feed.close()
            return sizes
    sizes = asyncio.run(run())
    assert any(sizes) and max(sizes) <= 4_000_000 and sum(sizes) <= 6_000_000


# -- 8: the token's redirect stays on this server ------------------------------------------

def request(server: Served, target: str,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET of ``target`` exactly as given (no quoting)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hardening-small") / "storage"
    make_console_store(path, archive=False)
    return path


@pytest.mark.parametrize(("target", "location"), [
    ("//evil.example/", "/evil.example/"), ("/%2F%2Fevil.example/", "/evil.example/"),
    ("/%5Cevil.example/", "/evil.example/"), ("/%5C%5C/%2Fevil.example/x", "/evil.example/x"),
    ("/ops", "/ops"), ("/a%0D%0AX-Evil:%201", "/a%0D%0AX-Evil:%201"),
])
def test_the_token_redirect_never_leaves_the_server(small_store: Path, target: str, location: str) -> None:
    with served(create_app(small_store, token=TOKEN)) as server:
        code, headers, _ = request(server, f"{target}?token={TOKEN}&since=1h")
        assert code == 303 and headers["location"] == location + "?since=1h"
        assert "x-evil" not in headers


def test_under_a_prefix_the_redirect_stays_under_it(small_store: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    console = create_app(small_store, token=TOKEN)
    parent = Starlette(routes=[Mount("/audit", console)])
    parent.close = console.close  # type: ignore[attr-defined]  # (what Served stops)
    with served(parent) as server:
        code, headers, _ = request(server, f"/audit//evil.example/?token={TOKEN}")
        assert code == 303 and headers["location"] == "/audit/evil.example/"


def test_a_wrong_token_in_the_query_redirects_nowhere(small_store: Path) -> None:
    with served(create_app(small_store, token=TOKEN)) as server:
        code, headers, _ = request(server, f"/ops?token={TOKEN}")
        cookie = headers["set-cookie"].split(";")[0]
        code, headers, _ = request(server, "//evil.example/?token=garbage", {"Cookie": cookie})
        assert code != 303 and "location" not in headers and "set-cookie" not in headers
        code, headers, _ = request(server, "/api/counters?token=garbage", {"Cookie": cookie})
        assert code == 200 and "set-cookie" not in headers
        assert request(server, "/api/counters?token=garbage")[0] == 401


# -- 7: the access log ------------------------------------------------------------------------

def test_the_access_log_writes_one_inert_line_per_request(small_store: Path,
                                                          capfd: pytest.CaptureFixture[str]) -> None:
    """A path with CR, LF, an escape sequence, spaces or a bidi override cannot forge a line,
    split the fields or reach the terminal: each is written as a visible escape."""
    from krepis.web._server import _AccessLog

    app = create_app(small_store)
    logged = _AccessLog(app)
    logged.close = app.close  # type: ignore[attr-defined]  # (what Served stops)
    with served(logged) as server:
        capfd.readouterr()
        request(server, "/x%0AGET%20/api/counters%20200%201.0ms%0D%1B%5B31mRED")
        request(server, "/a%E2%80%AEb%5Cc")
        err = ""
        deadline = time.monotonic() + 10  # (a line is written once its response has been sent)
        while err.count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            err += capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("GET /x\\x0aGET\\x20/api/counters\\x20200\\x201.0ms\\x0d\\x1b[31mRED 404 ")
    assert lines[1].startswith("GET /a\\u202eb\\x5cc 404 ")
    assert "\x1b" not in err and "\r" not in err and "\u202e" not in err


# -- 12: error messages name the parameter given, never a path of the server's ----------------

@pytest.mark.parametrize(("target", "params", "status", "starts"), [
    ("api/trail", {"before": str(2**63 - 1)}, 400, "before=9223372036854775807"),
    ("api/trail", {"after": "99999999"}, 400, "after=99999999"),
    ("api/request", {"id": "req-0001", "after": "99999999"}, 400, "after=99999999"),
    ("api/leaf", {"seq": "99999999"}, 404, "entry 99999999"),
    ("api/proof/inclusion", {"seq": "3", "size": "99999999"}, 400, ""),
    ("api/proof/consistency", {"old": "99999998", "new": "99999999"}, 400, ""),
])
def test_errors_name_the_parameter_given_and_no_path(small_store: Path, target: str, params: dict[str, str],
                                                     status: int, starts: str) -> None:
    with served(create_app(small_store)) as server:
        error = get_json(server, target, params, status=status)["error"]
    assert error.startswith(starts), error
    for path in (str(small_store), str(small_store.resolve()), str(small_store.parent)):
        assert path not in error, error


# -- 6: heavy reads are budgeted and bounded; the live feed has a thread of its own ----------

def test_the_summary_is_the_journals_and_budgeted(small_store: Path) -> None:
    with SovereignJournal(small_store, create=False) as journal:
        expected = journal.summary(("op",)).to_dict()
    with served(create_app(small_store)) as server:
        answer = get_json(server, "api/summary")
    assert {k: v for k, v in answer.items() if k != "filters"} == expected
    with served(create_app(small_store, limits=Limits(summary_max=100, series_max=100))) as server:
        for target in ("api/summary", "api/series"):
            assert "more than 100 entries" in get_json(server, target, status=400)["error"]
        assert get_json(server, "api/summary", {"since": str(T0 + 680 * 20_000)})["total"]["entries"] == 20
    with served(create_app(small_store, limits=Limits(heavy_seconds=1e-9))) as server:
        for target in ("api/summary", "api/series"):
            code, headers, body = get(server, target)
            assert code == 503 and headers["retry-after"] and b"retry" in body and b"shorter window" in body


def test_heavy_reads_at_once_are_bounded(small_store: Path) -> None:
    """With ``heavy`` summaries or plots running, another is a 503 "busy" to retry; the trail,
    the counters and the rest are answered as ever."""
    app = create_app(small_store)  # (two at once)
    with served(app) as server:
        app.console.heavy_running = 2  # (two are running)
        for target in ("api/summary", "api/series"):
            code, headers, body = get(server, target)
            assert code == 503 and headers["retry-after"] == "1" and b"busy" in body
        assert get(server, "api/trail", {"limit": 5})[0] == 200
        app.console.heavy_running = 1
        assert get(server, "api/summary")[0] == 200 and app.console.heavy_running == 1


def test_the_live_feed_does_not_wait_for_busy_readers(tmp_path: Path) -> None:
    """Every reader thread held (slow summaries, say): a live tab still gets new entries."""
    path = tmp_path / "storage"
    make_console_store(path, archive=False)
    app = create_app(path, limits=Limits(readers=2))
    with served(app) as server:
        start = get_json(server, "api/trail", {"limit": 1})["next_seq"]
        conn, response = open_stream(server, f"from={start}")
        conn.sock.settimeout(15)
        release = threading.Event()
        limiter = app.console.limiter

        async def hold() -> None:
            borrowers = [object(), object()]
            for borrower in borrowers:
                await limiter.acquire_on_behalf_of(borrower)
            try:
                while not release.is_set():
                    await asyncio.sleep(0.01)
            finally:
                for borrower in borrowers:
                    limiter.release_on_behalf_of(borrower)
        loop = app.console.feed._loop
        assert loop is not None
        held = asyncio.run_coroutine_threadsafe(hold(), loop)
        try:
            deadline = time.monotonic() + 10
            while limiter.borrowed_tokens < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert limiter.borrowed_tokens == 2
            with SovereignJournal(path) as journal:
                journal.log_transaction(TransactionLog.now("while_busy", "r-1", LogStatus.Completed))
            events = read_events(response, time.monotonic() + 10)
            _name, data = next(e for e in events if e[0] == "entries")
            assert [e["op_name"] for e in json.loads(data)] == ["while_busy"]
        finally:
            release.set()
            held.result(10)
            conn.close()


# -- 5: connections that do not send their headers ------------------------------------------

@contextmanager
def serve_process(store: Path, limits: str = "") -> Iterator[int]:
    """``krepis.web.serve`` in a process of its own (as ``krepis serve`` runs it) with
    ``Limits(<limits>)``; yields its port, and stops it with SIGINT."""
    code = ("import sys; from krepis.web import Limits, serve; "
            f"serve(sys.argv[1], '127.0.0.1:0', limits=Limits({limits}))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("krepis serve: http://127.0.0.1:"), line
        yield int(line.split(":")[3].split("/")[0])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def raw(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (within its timeout); what it sent first is read."""
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answer(port: int, target: str = "/api/counters") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", target)
        return conn.getresponse().status
    finally:
        conn.close()


def test_half_open_connections_lock_nobody_out(small_store: Path) -> None:
    """120 connections that sent a request line and a header, then nothing — more than the
    requests answered at once (live_max + 64 = 66 here): a whole request is still answered."""
    with serve_process(small_store, "live_max=2") as port:
        idle = [raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(120)]
        try:
            assert answer(port) == 200
        finally:
            for sock in idle:
                sock.close()


def test_half_open_connections_are_closed_after_header_seconds(small_store: Path) -> None:
    with serve_process(small_store, "header_seconds=1.0") as port:
        idle = [raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(20)] + [raw(port)]
        try:
            assert all(closed_by_server(sock) for sock in idle)
        finally:
            for sock in idle:
                sock.close()


def test_a_trickle_of_header_bytes_does_not_keep_a_connection(small_store: Path) -> None:
    """A byte every 0.1 s: the deadline is on the whole headers, not on silence."""
    with serve_process(small_store, "header_seconds=1.0") as port:
        sock = raw(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.settimeout(0.1)
        try:
            for _ in range(300):  # 30 s at most
                try:
                    sock.sendall(b"a")
                    if sock.recv(65536) == b"":
                        break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            else:
                raise AssertionError("the server kept a connection that never finished its headers")
        finally:
            sock.close()


def test_past_the_half_open_bound_the_oldest_is_closed(small_store: Path) -> None:
    with serve_process(small_store, "half_open_max=5, header_seconds=60.0") as port:
        idle = [raw(port, b"GET / HTTP/1.1\r\n") for _ in range(5)]
        try:
            time.sleep(0.2)
            newer = raw(port, b"GET / HTTP/1.1\r\n")
            assert closed_by_server(idle[0])
            assert answer(port) == 200  # (it closed the next oldest meanwhile)
            newer.settimeout(0.5)
            assert not closed_by_server(newer)
        finally:
            for sock in [*idle, newer]:
                sock.close()


# -- 13: the token off the command line -------------------------------------------------------

def cli_serve(store: Path, cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """``krepis serve --listen 0.0.0.0:0 ARGS`` until it is ready: the port (0: it exited) and
    its stderr (to the ready line, or all of it)."""
    full_env = {**{k: v for k, v in os.environ.items() if k not in ("KREPIS_STORAGE", "KREPIS_SERVE_TOKEN")},
                **(env or {})}
    assert KREPIS
    proc = subprocess.Popen([KREPIS, "--storage", str(store), "serve", "--listen", "0.0.0.0:0", *args],
                            cwd=cwd, env=full_env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = ""
    try:
        for line in proc.stderr:
            err += line
            if line.startswith("krepis serve: http://"):
                port = int(line.split(":")[3].split("/")[0])
                server = Served.__new__(Served)
                server.port = port
                assert get(server, "api/counters", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
                return port, err
        return 0, err
    finally:
        proc.send_signal(signal.SIGINT)
        err += proc.communicate(timeout=30)[1]


def test_the_token_from_a_file(small_store: Path, tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    path.chmod(0o600)
    port, err = cli_serve(small_store, tmp_path, "--token-file", str(path))
    assert port and "warning" not in err and TOKEN not in err


@pytest.mark.parametrize(("make", "words"), [
    ("0644", "by group or others (mode 0644); chmod 600"), ("0620", "by group or others"),
    ("link", "symbolic link"), ("dir", "not a regular file"), ("empty", "empty"),
    ("missing", "cannot be read"),
])
def test_a_token_file_is_refused_unless_private(small_store: Path, tmp_path: Path, make: str,
                                                words: str) -> None:
    real = tmp_path / "real"
    real.write_text(TOKEN)
    real.chmod(0o600)
    path = tmp_path / "token"
    if make == "link":
        path.symlink_to(real)
    elif make == "dir":
        path.mkdir()
    elif make == "empty":
        path.write_text(" \n")
        path.chmod(0o600)
    elif make != "missing":
        path.write_text(TOKEN)
        path.chmod(int(make, 8))
    proc = krepis("--storage", str(small_store), "serve", "--listen", "0.0.0.0:0", "--token-file", str(path),
                  cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and str(path) in proc.stderr and words in proc.stderr, proc.stderr
    assert TOKEN not in proc.stderr


def test_a_token_on_the_command_line_is_warned_about(small_store: Path, tmp_path: Path) -> None:
    port, err = cli_serve(small_store, tmp_path, "--token", TOKEN)
    assert port and "process list" in err and "--token-file" in err and "KREPIS_SERVE_TOKEN" in err
    assert TOKEN not in err
    port, err = cli_serve(small_store, tmp_path, env={"KREPIS_SERVE_TOKEN": TOKEN})
    assert port and "warning" not in err
    file = tmp_path / "t"
    file.write_text(TOKEN)
    file.chmod(0o600)
    proc = krepis("--storage", str(small_store), "serve", "--token", TOKEN, "--token-file", str(file),
                  cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "not both" in proc.stderr and TOKEN not in proc.stderr


# -- 11: the server's own answers carry the security headers ----------------------------------

SECURITY = {"content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options"}


def head_of(data: bytes) -> tuple[int, dict[str, str]]:
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), {k.strip().lower(): v.strip() for k, _, v in
                                      (line.partition(":") for line in lines[1:])}


def test_a_request_the_server_cannot_parse_gets_the_security_headers(small_store: Path) -> None:
    with serve_process(small_store) as port:
        for junk in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                     b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000):  # (headers past h11's 16 KiB)
            sock = raw(port, junk)
            data = b""
            try:
                while chunk := sock.recv(65536):
                    data += chunk
            except ConnectionResetError:
                pass
            finally:
                sock.close()
            status, headers = head_of(data)
            assert status == 400 and SECURITY <= set(headers), data[:300]
            assert headers["x-frame-options"] == "DENY"


def test_busy_answers_carry_the_security_headers(small_store: Path) -> None:
    app = create_app(small_store)
    with served(app) as server:
        assert app.max_inflight == 164
        app.inflight = 164
        code, headers, body = get(server, "api/trail")
        app.inflight = 0
        assert code == 503 and b"busy" in body and headers["retry-after"] == "1"
        assert SECURITY <= set(headers)
