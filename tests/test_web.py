"""The web console's server (``krepis serve``, ``krepis.web``) over HTTP, without a browser: the
reads give what the journal and ``krepis logs`` give, bad input is a 400 naming the value, the
guard refuses what the console does not serve, the token is required and never echoed, the live
feed delivers new entries and tells a slow tab it fell behind — on a real store, served by a
real uvicorn. The pages themselves are tested in a browser (``test_web_browser.py``)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import leaf_hash, open_checkpoint, verify_consistency, verify_inclusion
from krepis.web import Limits, create_app, parse_listen
from krepis.web._live import Subscriber
from test_cli import KREPIS, krepis
from webtools import ARCHIVED, ENTRIES, T0, Served, get, get_json, make_console_store, served

from conftest import tree_snapshot

TOKEN = "s3cret-token-for-the-console-1234"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("web") / "storage"
    key = make_console_store(path)
    return path, key


@pytest.fixture(scope="module")
def console(store: tuple[Path, object]) -> Iterator[Served]:
    with served(create_app(store[0], limits=Limits(page_max=500))) as server:
        yield server


def pages(server: Served, params: list[tuple[str, str]], size: int) -> list[dict[str, object]]:
    """Every entry of the trail with these filters, page by page (older links)."""
    out: list[dict[str, object]] = []
    cursor = None
    for _ in range(1000):
        query = [*params, ("limit", str(size))] + ([("after", str(cursor))] if cursor is not None else [])
        page = get_json(server, "api/trail", query)
        out += page["entries"]
        cursor = page["older"]
        if cursor is None:
            return out
    raise AssertionError("paging never ended")


def cli_entries(path: Path, *args: str) -> list[dict[str, object]]:
    proc = krepis("--storage", str(path), "logs", "--json", "-n", "all", *args, cwd=path.parent)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def fields(entries: list[dict[str, object]]) -> list[dict[str, object]]:
    return [{k: v for k, v in e.items() if k != "seq"} for e in entries]


FILTERS = [
    [],
    [("op", "op_c*")],
    [("status", "failed")],
    [("op", "op_refund"), ("op", "kernel_*"), ("status", "Completed"), ("status", "Failed")],
    [("request_id", "req-0100")],
    [("request_id", "req-0100"), ("request_id", "req-0300")],
    [("since", str(T0 + 2_000_000)), ("until", str(T0 + 9_000_000))],
    [("op", "op_login"), ("since", "2026-01-31T12:30:00Z")],
]


@pytest.mark.parametrize("params", FILTERS, ids=lambda p: "&".join(f"{k}={v}" for k, v in p) or "all")
def test_the_trail_pages_through_what_krepis_logs_prints(console: Served, store: tuple[Path, object],
                                                        params: list[tuple[str, str]]) -> None:
    """Newest first, page by page across the archive's boundary: the same entries as the CLI."""
    cli_args = [a for k, v in params for a in (f"--{k.replace('_', '-')}", v)]
    expected = cli_entries(store[0], *cli_args)
    assert expected
    assert pages(console, params, 37) == expected  # (krepis logs --json gives each entry's seq too)


def test_paging_by_seq_reaches_archived_entries_and_back(console: Served) -> None:
    everything = pages(console, [], 100)
    assert len(everything) == ENTRIES and everything[-1]["seq"] == 0  # archived ones included
    second = get_json(console, "api/trail", {"limit": 100, "after": everything[99]["seq"]})
    assert second["entries"] == everything[100:200]
    back = get_json(console, "api/trail", {"limit": 100, "before": second["newer"]})
    assert back["entries"] == everything[:100] and back["newer"] is None
    assert back["older"] == everything[99]["seq"]


def test_prefix_and_text_search_and_their_budget(store: tuple[Path, object]) -> None:
    """Entry-by-entry filters look at `scan_budget` entries per page at most and say where to
    go on; following the cursor finds exactly the matches."""
    with SovereignJournal(store[0], create=False) as journal:
        everything = journal.query()
    wanted = [e for e in everything if e.request_id.startswith("req-01") and e.error is not None
              and "upstream" in e.error.lower()]
    assert 5 < len(wanted) < 100
    with served(create_app(store[0], limits=Limits(scan_budget=50))) as server:
        found: list[dict[str, object]] = []
        cursor = None
        budget_pages = 0
        while True:
            params = [("request_id", "req-01"), ("prefix", "1"), ("q", "UPSTREAM"), ("limit", "4")]
            page = get_json(server, "api/trail", params + ([("after", cursor)] if cursor is not None else []))
            assert page["scanned"] <= 50
            budget_pages += page["budget_spent"]
            found += page["entries"]
            cursor = page["older"]
            if cursor is None:
                break
    assert budget_pages > 0
    assert [e["seq"] for e in found] == [e.seq for e in wanted]


@pytest.mark.parametrize(("params", "words"), [
    ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"status": "Done"}, "status"),
    ({"since": "the day before"}, "since"), ({"after": "-1"}, "after"),
    ({"after": "5", "before": "9"}, "before"),
    ({"after": "99999999"}, "99999999"), ({"op": "x" * 201}, "op"), ({"q": "q" * 201}, "search"),
    ({"request_id": "a\x00b"}, "NUL"),
])
def test_bad_input_is_a_400_naming_it(console: Served, params: dict[str, str], words: str) -> None:
    answer = get_json(console, "api/trail", params, status=400)
    assert words in answer["error"]


def test_a_request_is_every_entry_of_its_id_oldest_first(console: Served, store: tuple[Path, object]) -> None:
    with SovereignJournal(store[0], create=False) as journal:
        expected = journal.query(request_id="req-0003", newest_first=False)
    answer = get_json(console, "api/request", {"id": "req-0003"})
    assert fields(answer["entries"]) == [e.to_dict() for e in expected] and len(expected) == 2
    assert answer["statuses"] == {"Started": 1, "Completed": 0, "Failed": 1}
    assert get_json(console, "api/request", {}, status=400)["error"].startswith("id")


def test_the_ops_summary_is_the_journals(console: Served, store: tuple[Path, object]) -> None:
    since = T0 + 3_000_000
    with SovereignJournal(store[0], create=False) as journal:
        expected = journal.summary(("op",), since=since).to_dict()
    answer = get_json(console, "api/summary", {"since": since})
    assert answer["rows"] == expected["rows"] and answer["total"] == expected["total"]


def test_the_series_counts_every_entry_in_its_bucket(console: Served, store: tuple[Path, object]) -> None:
    with SovereignJournal(store[0], create=False) as journal:
        everything = journal.query(op_name="op_refund")
    for bucket, width in (("minute", 60_000), ("hour", 3_600_000)):
        series = get_json(console, "api/series", {"op": "op_refund", "bucket": bucket})
        assert series["bucket_ms"] == width and series["entries"] == len(everything)
        by: dict[int, list[TransactionLog]] = {}
        for e in everything:
            by.setdefault(e.timestamp - e.timestamp % width, []).append(e)
        got = {p["t"]: p for p in series["points"] if p["entries"]}
        assert set(got) == set(by)
        for t, entries in by.items():
            durations = sorted(e.duration_us for e in entries if e.duration_us is not None)
            assert got[t]["entries"] == len(entries)
            assert got[t]["failed"] == sum(e.status is LogStatus.Failed for e in entries)
            if durations:
                assert got[t]["p99_us"] == durations[max(1, (99 * len(durations) + 99) // 100) - 1]
    assert "bucket=minute gives more than" in get_json(
        console, "api/series", {"bucket": "minute", "since": "0", "until": str(T0 + 400 * 86_400_000)},
        status=400)["error"]


def test_counters_and_the_kernels_stats(console: Served, store: tuple[Path, object]) -> None:
    with SovereignJournal(store[0], create=False) as journal:
        counts = journal.op_counts()
    answer = get_json(console, "api/counters")
    assert {c["name"]: c["value"] for c in answer["counters"]} == counts
    assert answer["kernel"] == {"js_ops_called": 3, "contexts_created": 1}
    assert answer["entries"]["archived"] == ARCHIVED and answer["journal_count"] == ENTRIES


def test_leaves_and_proofs_verify_against_the_signed_checkpoint(console: Served,
                                                                store: tuple[Path, object]) -> None:
    key = store[1]
    code, _, note = get(console, "api/checkpoint")
    assert code == 200
    checkpoint = open_checkpoint(note.decode(), [key.verifier()])  # type: ignore[attr-defined]
    for seq in (0, 300, ARCHIVED, ENTRIES - 1):  # archived and live
        code, headers, leaf = get(console, "api/leaf", {"seq": seq})
        assert code == 200 and headers["content-type"] == "application/octet-stream"
        proof = get_json(console, "api/proof/inclusion", {"seq": seq, "size": checkpoint.size})
        path = [base64.b64decode(h) for h in proof["path"]]
        assert verify_inclusion(leaf_hash(leaf), proof["index"], checkpoint.size, path, checkpoint.root)
    with SovereignJournal(store[0], create=False) as journal:
        old_root = journal.tree_root(100)
    proof = get_json(console, "api/proof/consistency", {"old": 100, "new": checkpoint.size})
    assert verify_consistency(100, checkpoint.size, old_root, checkpoint.root,
                              [base64.b64decode(h) for h in proof["path"]])
    assert get_json(console, "api/leaf", {"seq": 10**6}, status=404)["error"]


HEADERS = {"content-security-policy", "x-content-type-options", "referrer-policy", "x-frame-options"}


@pytest.mark.parametrize("path", ["", "ops", "static/app.js", "api/trail", "nowhere", "static/../../x"])
def test_every_response_carries_the_security_headers(console: Served, path: str) -> None:
    _code, headers, _body = get(console, path)
    assert HEADERS <= set(headers)
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


def test_the_guard_refuses_what_the_console_does_not_serve(console: Served) -> None:
    assert get(console, "api/trail", method="POST", body=b"")[0] == 405
    assert get(console, "api/trail", method="DELETE")[0] == 405
    assert get(console, "api/trail", method="GET", body=b"x" * 10, headers={"Content-Length": "10"})[0] == 413
    assert get(console, "api/trail", {"q": "x" * 5000})[0] == 414


def test_a_loopback_console_answers_its_own_host_names_only(store: tuple[Path, object]) -> None:
    app = create_app(store[0])
    with served(app) as server:
        app.allowed_hosts = frozenset(parse_listen(f"127.0.0.1:{server.port}").hosts(server.port))
        assert get(server, "api/counters")[0] == 200
        assert get(server, "api/counters", headers={"Host": f"localhost:{server.port}"})[0] == 200
        code, _h, body = get(server, "api/counters", headers={"Host": f"attacker.example:{server.port}"})
        assert code == 421 and b"answers to" in body


def test_the_token_is_required_and_never_echoed(store: tuple[Path, object]) -> None:
    with served(create_app(store[0], token=TOKEN)) as server:
        code, headers, body = get(server, "api/counters")
        assert code == 401 and b"token" in body
        assert get(server, "api/counters", {"token": "wrong-" + TOKEN})[0] == 401
        code, headers, body = get(server, "ops", {"token": TOKEN, "since": "1h"})
        assert code == 303 and headers["location"] == "/ops?since=1h"
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
        for response in (headers, body):
            assert TOKEN not in str(response)
        code, _h, body = get(server, "api/counters", headers={"Cookie": cookie})
        assert code == 200 and TOKEN.encode() not in body
        assert get(server, "api/counters", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert get(server, "api/counters", headers={"Cookie": cookie + "0"})[0] == 401
        assert get(server, "api/counters", headers={"Authorization": "Bearer " + TOKEN[:-1]})[0] == 401


def _at_rest(root: Path) -> dict[str, bytes]:
    """Every file's bytes but ``commit.state``: like LMDB's lock table, the state processes share
    in memory while the store is open (docs/storage-format.md), remade by the first one to open."""
    return {k: v for k, v in tree_snapshot(root).items() if not k.endswith("commit.state")}


def test_nothing_the_console_serves_changes_the_store(tmp_path: Path) -> None:
    path = tmp_path / "storage"
    make_console_store(path)
    before = _at_rest(tmp_path)
    with served(create_app(path)) as server:
        for target, params in [("", {}), ("api/trail", {"q": "x"}), ("api/request", {"id": "req-0001"}),
                               ("api/summary", {}), ("api/series", {}), ("api/counters", {}),
                               ("api/checkpoint", {}), ("api/leaf", {"seq": 3}),
                               ("api/proof/inclusion", {"seq": 3, "size": 10}),
                               ("api/proof/consistency", {"old": 3, "new": 10})]:
            assert get(server, target, params)[0] == 200, target
    assert _at_rest(tmp_path) == before


def read_events(response: http.client.HTTPResponse, until: float) -> Iterator[tuple[str, str]]:
    """Server-sent events (name, data) of a streaming response, until the deadline."""
    buf = b""
    while time.monotonic() < until:
        try:
            chunk = response.read1(65536)
        except TimeoutError:  # nothing for the socket's whole timeout: the stream says no more
            return
        if not chunk:
            return
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            name, data = "message", ""
            for line in block.decode().split("\n"):
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
            if data:
                yield name, data


def open_stream(server: Served, query: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=0.5)
    conn.request("GET", f"/api/live?{query}", headers={"Accept": "text/event-stream"})
    conn.sock.settimeout(10)  # (a read that times out cannot be continued: one generous timeout)
    response = conn.getresponse()
    return conn, response


def test_the_live_feed_sends_new_matching_entries(tmp_path: Path) -> None:
    path = tmp_path / "storage"
    make_console_store(path, archive=False)
    with served(create_app(path)) as server:
        start = get_json(server, "api/trail", {"limit": 1})["next_seq"]
        conn, response = open_stream(server, f"from={start}&op=wanted*")
        try:
            assert response.status == 200
            assert response.getheader("content-type", "").startswith("text/event-stream")
            with SovereignJournal(path) as journal:
                journal.log_transaction(TransactionLog.now("other", "r-1", LogStatus.Completed))
                journal.log_transaction(TransactionLog.now("wanted_op", "r-2", LogStatus.Completed))
            events = read_events(response, time.monotonic() + 10)
            _name, data = next(e for e in events if e[0] == "entries")
            assert [(e["op_name"], e["seq"]) for e in json.loads(data)] == [("wanted_op", start + 1)]
        finally:
            conn.close()


def test_a_tab_that_falls_behind_is_told_what_it_missed() -> None:
    entries = [TransactionLog(T0, "op", f"r{i}", LogStatus.Completed, seq=i) for i in range(10)]
    sub = Subscriber(None, 3, 2)
    sub.push([(e, e.to_json()) for e in entries[:6]])  # 2…5: four for a queue of three
    sub.push([(e, e.to_json()) for e in entries[6:8]])  # 6, 7: what waits (3…5) is dropped
    sent, skipped, span = sub.take()
    assert skipped == 4 and span == (2, 5)  # the newest kept
    assert [(c.first, c.last, c.count) for c in sent] == [(6, 7, 2)]
    assert sent[0].event.startswith(b"id: 7\nevent: entries\ndata: [{")
    assert sub.take()[1:] == (0, None)
    sub.push([(e, e.to_json()) for e in entries[8:]])
    assert [c.last for c in sub.take()[0]] == [9]


def test_live_connections_are_bounded(store: tuple[Path, object]) -> None:
    with served(create_app(store[0], limits=Limits(live_max=2))) as server:
        streams = [open_stream(server, "") for _ in range(2)]
        try:
            assert [response.status for _conn, response in streams] == [200, 200]
            deadline = time.monotonic() + 10
            while server.app.console.feed.count < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            code, _h, body = get(server, "api/live")
            assert code == 503 and b"live connections" in body
        finally:
            for conn, _response in streams:
                conn.close()


def test_cli_serve_refuses_an_open_address_without_a_token(store: tuple[Path, object],
                                                           tmp_path: Path) -> None:
    proc = krepis("--storage", str(store[0]), "serve", "--listen", "0.0.0.0:0", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "needs a token" in proc.stderr
    proc = krepis("--storage", str(store[0]), "serve", "--listen", "0.0.0.0:0", cwd=tmp_path, ok=False,
                  env={"KREPIS_SERVE_TOKEN": "short"})
    assert proc.returncode == 2 and "KREPIS_SERVE_TOKEN" in proc.stderr and "short" not in proc.stderr
    proc = krepis("--storage", str(tmp_path / "none"), "serve", "--listen", "127.0.0.1:0", cwd=tmp_path,
                  ok=False)
    assert proc.returncode == 1 and str(tmp_path / "none") in proc.stderr


def test_cli_serve_serves_until_interrupted_and_never_prints_the_token(store: tuple[Path, object],
                                                                      tmp_path: Path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}, "KREPIS_SERVE_TOKEN": TOKEN}
    assert KREPIS
    proc = subprocess.Popen([KREPIS, "--storage", str(store[0]), "serve", "--listen", "0.0.0.0:0",
                             "--access-log"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("krepis serve: http://0.0.0.0:"), line
        port = int(line.split(":")[3].split("/")[0])
        server = Served.__new__(Served)
        server.port = port
        assert get(server, "api/counters", {"token": TOKEN})[0] == 303
        assert get(server, "api/counters", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert TOKEN not in line + err and "GET /api/counters 303" in err


def test_cli_serve_without_the_extra_says_how_to_install_it(store: tuple[Path, object],
                                                            tmp_path: Path) -> None:
    code = ("import sys; sys.modules['starlette'] = None; from krepis.cli import main; "
            "sys.argv = ['krepis', '--storage', sys.argv[1], 'serve']; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(store[0])], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode == 1 and "pip install 'krepis-journal[web]'" in proc.stderr


def test_mounted_under_a_prefix_the_console_links_and_redirects_within_it(store: tuple[Path, object]) -> None:
    """``create_app`` mounted in an application of one's own: the shell's links, the token's
    redirect and the cookie's path all stay under the mount's prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    console = create_app(store[0], token=TOKEN)
    parent = Starlette(routes=[Mount("/audit", console)])
    parent.close = console.close  # type: ignore[attr-defined]  # (what Served stops)
    with served(parent) as server:
        code, headers, _ = get(server, "audit/ops", {"token": TOKEN, "since": "1h"})
        assert code == 303 and headers["location"] == "/audit/ops?since=1h"
        assert "Path=/audit;" in headers["set-cookie"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        code, _, body = get(server, "audit/ops", headers=auth)
        assert code == 200 and b'src="/audit/static/app.js"' in body and b'href="/audit/ops"' in body
        assert get(server, "audit/static/app.js", headers=auth)[0] == 200
        assert get(server, "audit/api/counters", headers=auth)[0] == 200
        assert get(server, "ops", headers=auth)[0] == 404


def test_the_bench_rows_measure_a_served_console(store: tuple[Path, object], tmp_path: Path) -> None:
    """``krepis bench``'s web rows, small: page server times from Server-Timing, and live viewers
    that each receive every entry written while they watch, with their lag."""
    from krepis.bench._targets import web_targets
    from krepis.bench._web import bench_web_live, bench_web_reads

    reads = bench_web_reads(str(store[0]), ENTRIES, repeat=3)
    assert reads[0]["name"] == "trail, first page (100 entries)"
    assert all(0 < r["server_ms_p50"] <= r["server_ms_p99"] for r in reads)
    live = bench_web_live(str(tmp_path), viewers=3, rate=300, seconds=0.5, rounds=1)
    assert live["entries_per_viewer_min"] == live["entries_per_round"] == 150
    assert live["lag_ms_p50"] is not None and live["behind_events"] == 0
    targets = web_targets({"reads": reads, "live": live})
    assert [t["key"] for t in targets] == ["web_page_0", "web_page_1", "web_page_2", "web_page_3",
                                           "web_live_lag", "web_live_writer"]
