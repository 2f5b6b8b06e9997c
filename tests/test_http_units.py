"""The witness and monitor HTTP client (``krepis.tlog._http``) against a real socket server in a
thread that answers each connection with scripted bytes (or silence, or a close): the request
sent (method, path, headers, body), the answer read (whole, cut, or refused over its limit),
and each failure's exact message naming the URL."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from krepis import JournalError
from krepis.tlog._http import HTTPError, Response, join, reader, request

Action = Callable[[socket.socket], None]


def answer(status: str, body: bytes = b"", headers: tuple[str, ...] | None = None) -> Action:
    """Send ``HTTP/1.1 STATUS`` with the headers (by default a Content-Length) and the body."""
    heads = (f"Content-Length: {len(body)}",) if headers is None else headers

    def act(conn: socket.socket) -> None:
        conn.sendall(f"HTTP/1.1 {status}\r\n".encode() + "".join(h + "\r\n" for h in heads).encode()
                     + b"Connection: close\r\n\r\n" + body)
    return act


@dataclass
class Server:
    url: str
    actions: list[Action]
    requests: list[bytes] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


@contextlib.contextmanager
def server(*actions: Action) -> Iterator[Server]:
    listener = socket.create_server(("127.0.0.1", 0))
    srv = Server(f"http://127.0.0.1:{listener.getsockname()[1]}", list(actions))

    def serve() -> None:
        while srv.actions:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                srv.requests.append(_read_request(conn))
                srv.actions.pop(0)(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        listener.close()
        thread.join(timeout=10)


def _headers(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


# -- URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://", "https:///path", "example.com/x",
                                 "file:///etc/passwd"])
def test_only_http_and_https_urls_with_a_host_are_accepted(url: str) -> None:
    with pytest.raises(HTTPError) as info:
        request(url)
    assert str(info.value) == f"{url!r} is not an http:// or https:// URL"
    assert isinstance(info.value, JournalError) and info.value.status is None
    with pytest.raises(HTTPError) as info:
        reader(url)  # refused when the reader is made, before any request
    assert str(info.value) == f"{url!r} is not an http:// or https:// URL"


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/", "http://127.0.0.1:port/"])
def test_a_bad_port_is_refused_by_name(url: str) -> None:
    with pytest.raises(HTTPError) as info:
        request(url)
    assert str(info.value) == f"{url!r} has a bad port"


def test_a_long_url_is_shown_cut_to_200_characters() -> None:
    url = "ftp://" + "a" * 300
    with pytest.raises(HTTPError) as info:
        request(url)
    assert str(info.value) == f"{repr(url)[:200]} is not an http:// or https:// URL"
    url = "http://" + "a" * 300 + ":x/"
    with pytest.raises(HTTPError) as info:
        request(url)
    assert str(info.value) == f"{repr(url)[:200]} has a bad port"


def test_join_puts_one_slash_between_prefix_and_path() -> None:
    assert join("http://h/w", "/add-checkpoint") == "http://h/w/add-checkpoint"
    assert join("http://h/w//", "/add-checkpoint") == "http://h/w/add-checkpoint"
    assert join("http://h", "/checkpoint") == "http://h/checkpoint"
    assert join("http://h/BOX", "/a") == "http://h/BOX/a"  # only slashes are taken off


# -- the request sent ------------------------------------------------------------------------

def test_a_get_sends_the_path_and_query_with_its_headers_and_no_content_type() -> None:
    with server(answer("200 OK", b"hi", ("Content-Length: 2", "Content-Type: text/plain")),
                answer("200 OK", b"")) as srv:
        got = request(srv.url + "/a/b?x=1&y=2")
        assert got == Response(200, "text/plain", b"hi")
        got = request(srv.url)  # no path: "/"
        assert got == Response(200, "", b"")  # no Content-Type header: ""
    line, headers, body = _headers(srv.requests[0])
    assert line == "GET /a/b?x=1&y=2 HTTP/1.1"
    assert headers["user-agent"] == "krepis" and headers["accept-encoding"] == "identity"
    assert "content-type" not in headers and body == b""
    assert sorted(headers) == ["accept-encoding", "host", "user-agent"]  # nothing else
    assert _headers(srv.requests[1])[0] == "GET / HTTP/1.1"


def test_a_post_sends_its_body_with_its_content_type() -> None:
    with server(answer("200 OK", b"ok"), answer("200 OK", b"ok")) as srv:
        request(srv.url + "/add", method="POST", body=b"old 0\n\nnote")
        request(srv.url + "/add", method="POST", body=b"{}", content_type="application/json")
    line, headers, body = _headers(srv.requests[0])
    assert line == "POST /add HTTP/1.1" and body == b"old 0\n\nnote"
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["user-agent"] == "krepis" and headers["accept-encoding"] == "identity"
    assert sorted(headers) == ["accept-encoding", "content-length", "content-type", "host", "user-agent"]
    assert _headers(srv.requests[1])[1]["content-type"] == "application/json"


def test_https_is_spoken_to_an_https_url() -> None:
    # a plain-HTTP server does not complete a TLS handshake: the request fails, never reaching it
    # as a plain request
    with server(answer("200 OK", b"plain")) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url.replace("http://", "https://") + "/x", timeout=1.0)
    assert str(info.value).startswith(f"GET {srv.url.replace('http://', 'https://')}/x: ")
    assert srv.requests[0][:2] == b"\x16\x03"  # a TLS handshake record, on the URL's port


# -- the answer read -------------------------------------------------------------------------

def test_a_200_up_to_the_limit_is_read_whole() -> None:
    with server(answer("200 OK", b"x" * 100), answer("200 OK", b"y" * 100, ())) as srv:
        assert request(srv.url, limit=100).body == b"x" * 100
        assert request(srv.url, limit=100).body == b"y" * 100  # no Content-Length: read to the close


def test_a_200_over_the_limit_is_refused_by_its_length_before_it_is_read() -> None:
    with server(answer("200 OK", b"x" * 101)) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/big", limit=100)
    assert str(info.value) == f"GET {srv.url}/big: the answer is 101 bytes, more than the 100 read"
    assert info.value.status is None


def test_a_200_over_the_limit_without_a_length_is_refused_once_read_past_it() -> None:
    with server(answer("200 OK", b"x" * 101, ()), answer("200 OK", b"x" * 200_000, ())) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/big", method="POST", body=b"", limit=100)
        assert str(info.value) == f"POST {srv.url}/big: the answer is more than the 100 bytes read"
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/big", limit=150_000)
        assert str(info.value) == f"GET {srv.url}/big: the answer is more than the 150000 bytes read"


def test_a_length_that_is_not_a_number_does_not_stop_the_limit() -> None:
    with server(answer("200 OK", b"x" * 10, ("Content-Length: ten",)),
                answer("200 OK", b"x" * 101, ("Content-Length: 1e2",))) as srv:
        assert request(srv.url, limit=10).body == b"x" * 10
        with pytest.raises(HTTPError) as info:
            request(srv.url, limit=100)
        assert str(info.value) == f"GET {srv.url}: the answer is more than the 100 bytes read"


def test_of_any_other_answer_the_first_4_kib_at_most_are_read() -> None:
    long = bytes(range(256)) * 40  # 10,240 bytes
    with server(answer("404 Not Found", long), answer("500 Oops", long, ()),
                answer("409 Conflict", b"12345678901", ("Content-Type: text/x.tlog.size",)),
                answer("404 Not Found", long[:4096])) as srv:
        got = request(srv.url)
        assert got.status == 404 and got.body == long[:4096]  # a Content-Length over it is no error
        got = request(srv.url)
        assert got.status == 500 and got.body == long[:4096]
        got = request(srv.url, limit=10)  # or the limit, when smaller
        assert got == Response(409, "text/x.tlog.size", b"1234567890")
        assert request(srv.url).body == long[:4096]


def test_a_chunk_that_crosses_the_cut_keeps_the_bytes_before_it() -> None:
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n" + b"a" * 4000)
        srv.release.wait(0.2)  # (a second read: 4,000 bytes then 200 more)
        conn.sendall(b"b" * 200)

    with server(trickle) as srv:
        got = request(srv.url)
    assert got.body == b"a" * 4000 + b"b" * 96


# -- failures --------------------------------------------------------------------------------

def test_a_server_that_holds_its_answer_is_given_up_at_the_deadline() -> None:
    def hold(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        srv.release.wait(30)

    def silent(conn: socket.socket) -> None:
        srv.release.wait(30)

    with server(hold, silent) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/slow", timeout=0.3)
        assert str(info.value) == f"GET {srv.url}/slow: no whole answer within 0.3 s"
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/silent", method="POST", body=b"x", timeout=0.25)
        assert str(info.value) == f"POST {srv.url}/silent: no whole answer within 0.2 s"


def test_a_server_that_trickles_its_answer_is_given_up_at_the_deadline() -> None:
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.02):
            try:
                conn.sendall(b"x")
            except OSError:
                return

    with server(trickle) as srv:
        try:
            with pytest.raises(HTTPError) as info:
                request(srv.url, timeout=0.5)
        finally:
            stop.set()
    assert str(info.value) == f"GET {srv.url}: no whole answer within 0.5 s"


def test_a_refused_connection_is_named_with_its_reason() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/checkpoint"
        with pytest.raises(HTTPError) as info:
            request(url)
    finally:
        sock.close()
    assert str(info.value) == f"GET {url}: Connection refused"


def test_a_server_that_closes_without_answering_or_answers_garbage_is_named() -> None:
    def close(conn: socket.socket) -> None:
        pass

    def garbage(conn: socket.socket) -> None:
        conn.sendall(b"NONSENSE\r\n\r\n")

    def long_garbage(conn: socket.socket) -> None:
        conn.sendall(b"N" * 300 + b"\r\n\r\n")

    with server(close, garbage, long_garbage) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/a")
        assert str(info.value) == f"GET {srv.url}/a: Remote end closed connection without response"
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/b")
        assert str(info.value) == f"GET {srv.url}/b: NONSENSE"  # (the line's end not kept)
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/c")
        assert str(info.value) == f"GET {srv.url}/c: {'N' * 200}"


def test_a_failure_without_text_is_named_by_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    def fail(self: http.client.HTTPConnection, *args: object, **kwargs: object) -> None:
        raise http.client.HTTPException()

    monkeypatch.setattr(http.client.HTTPConnection, "request", fail)
    with pytest.raises(HTTPError) as info:
        request("http://127.0.0.1:1/x")
    assert str(info.value) == "GET http://127.0.0.1:1/x: HTTPException"


# -- reader ----------------------------------------------------------------------------------

def test_the_reader_gets_paths_under_its_prefix_within_a_limit() -> None:
    with server(answer("200 OK", b"note"), answer("200 OK", b"x" * 11)) as srv:
        read = reader(srv.url + "/log/", timeout=5.0)
        assert read("checkpoint", 4) == b"note"
        with pytest.raises(HTTPError) as info:
            read("tile/0/000", 10)
    assert str(info.value) == f"GET {srv.url}/log/tile/0/000: the answer is 11 bytes, more than the 10 read"
    assert _headers(srv.requests[0])[0] == "GET /log/checkpoint HTTP/1.1"


def test_the_reader_refuses_any_other_answer_naming_its_status_and_first_line() -> None:
    with server(answer("404 Not Found", b"  no such tile\nsecond line\n"),
                answer("410 Gone"),
                answer("500 Oops", b"e" * 300),
                answer("302 Found", b"", ("Location: http://elsewhere/", "Content-Length: 0"))) as srv:
        read = reader(srv.url)
        with pytest.raises(HTTPError) as info:
            read("a", 100)
        assert str(info.value) == f"GET {srv.url}/a: 404 (no such tile)" and info.value.status == 404
        with pytest.raises(HTTPError) as info:
            read("b", 100)
        assert str(info.value) == f"GET {srv.url}/b: 410" and info.value.status == 410
        with pytest.raises(HTTPError) as info:
            read("c", 1000)
        assert str(info.value) == f"GET {srv.url}/c: 500 ({'e' * 200})" and info.value.status == 500
        with pytest.raises(HTTPError) as info:
            read("d", 100)  # a redirect is not followed
        assert str(info.value) == f"GET {srv.url}/d: 302" and info.value.status == 302


def test_an_answer_that_ends_before_its_length_is_an_error_not_a_short_body() -> None:
    def short(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)

    with server(short) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url + "/tile")
    assert str(info.value) == f"GET {srv.url}/tile: the answer ended after 50 of its 100 bytes"


def test_the_reader_shows_an_answer_that_is_not_utf8_with_replacement_characters() -> None:
    with server(answer("404 Not Found", b"\xff no \xe2\x80 tile"),
                answer("500 Oops", b"\xe2\x80\x94" * 100)) as srv:
        read = reader(srv.url)
        with pytest.raises(HTTPError) as info:
            read("a", 100)
        assert str(info.value) == f"GET {srv.url}/a: 404 (\ufffd no \ufffd tile)"
        with pytest.raises(HTTPError) as info:
            read("b", 1000)  # the first 200 bytes: 66 dashes and the start of one more
        assert str(info.value) == f"GET {srv.url}/b: 500 ({'—' * 66}\ufffd)"


def test_the_reader_s_timeout_is_its_own_30_s_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    def no_answer(self: http.client.HTTPConnection) -> None:
        raise TimeoutError  # (as the socket does when the timeout passes)

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", no_answer)
    with server(answer("200 OK"), answer("200 OK")) as srv:
        with pytest.raises(HTTPError) as info:
            reader(srv.url)("checkpoint", 100)
        assert str(info.value) == f"GET {srv.url}/checkpoint: no whole answer within 30.0 s"
        with pytest.raises(HTTPError) as info:
            reader(srv.url, timeout=2.5)("checkpoint", 100)
        assert str(info.value) == f"GET {srv.url}/checkpoint: no whole answer within 2.5 s"


def test_a_request_s_timeout_is_10_s_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    def no_answer(self: http.client.HTTPConnection) -> None:
        raise TimeoutError

    monkeypatch.setattr(http.client.HTTPConnection, "getresponse", no_answer)
    with server(answer("200 OK")) as srv:
        with pytest.raises(HTTPError) as info:
            request(srv.url)
    assert str(info.value) == f"GET {srv.url}: no whole answer within 10.0 s"


def test_a_connection_that_is_not_accepted_in_time_is_given_up_at_the_deadline() -> None:
    # a listener whose queue of one is full: the kernel drops the next connection's SYN, so
    # connect() waits (the SYN is sent again after 1 s, 3 s, …); only the socket's own timeout
    # ends that wait — the watchdog has no socket to shut down before it is connected. Two
    # seconds on, the listener accepts the connection and holds it, answering nothing for 20 s:
    # a request still waiting then would wait that long.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    done = threading.Event()

    def late() -> None:
        if done.wait(2.0):
            return
        listener.settimeout(10)
        try:
            listener.accept()[0].close()  # the filler, queued first
            conn, _ = listener.accept()  # the request, once its SYN is sent again
        except OSError:
            return
        with conn:
            done.wait(20)

    thread = threading.Thread(target=late, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/checkpoint"
    started = time.monotonic()
    try:
        with pytest.raises(HTTPError) as info:
            request(url, timeout=0.3)
        assert time.monotonic() - started < 10  # (a bound that holds on any machine, not a speed)
    finally:
        done.set()
        filler.close()
        thread.join(timeout=30)
        listener.close()
    assert str(info.value) == f"GET {url}: no whole answer within 0.3 s"


def test_a_server_that_trickles_its_headers_is_given_up_at_the_deadline() -> None:
    stop = threading.Event()

    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(80):  # a header every 0.25 s for 20 s (fewer than the 100 allowed), then the end
            if stop.wait(0.25):
                return
            try:
                conn.sendall(b"X-Slow: 1\r\n")
            except OSError:
                return
        conn.sendall(b"Content-Length: 0\r\n\r\n")

    with server(trickle) as srv:
        started = time.monotonic()
        try:
            with pytest.raises(HTTPError) as info:
                request(srv.url, timeout=0.5)
            assert time.monotonic() - started < 10  # (a bound that holds on any machine, not a speed)
        finally:
            stop.set()
    assert str(info.value) == f"GET {srv.url}: no whole answer within 0.5 s"
