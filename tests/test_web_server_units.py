"""Serving the console (``krepis.web._server``), in-process: the listen address, the loopback
rule and its host names, the token rule, :func:`krepis.web.serve` run in a thread of the test
(its ready line, the hosts it answers, TLS arguments, the access log, the stop), the header
deadline and the half-open bound of its HTTP protocol, the 400 of a request it cannot parse,
and the access log's escaping — on a real store."""
from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")

from krepis._errors import ValidationError
from krepis.web import Limits, create_app
from krepis.web._server import (
    MIN_TOKEN_CHARS,
    Listen,
    _AccessLog,
    _Server,
    check_token,
    log_text,
    parse_listen,
    serve,
)
from webtools import make_console_store

TOKEN = "s3cret-token-for-the-console-1234"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("server") / "storage"
    make_console_store(path, archive=False)
    return path


# -- the listen address ------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:8080", "127.0.0.1", 8080), (":8088", "127.0.0.1", 8088), (" 0.0.0.0:0 ", "0.0.0.0", 0),
    ("[::1]:65535", "::1", 65535), ("localhost:1", "localhost", 1), ("::1:80", "::1", 80),
    ("[::1:80", "[::1", 80), ("::1]:80", "::1]", 80), ("h:00080", "h", 80),
])
def test_a_listen_address(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == Listen(host, port)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", "h:65536", "h:123456", "h:-1", "h:+80", "h:８０",
                                  "h:8a", "h:1.5", "h:000080", "x" * 100])
def test_a_bad_listen_address_is_named(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_listen(text)
    assert str(info.value) == f"listen address {text!r:.80} is not HOST:PORT (e.g. 127.0.0.1:8080)"


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LocalHost", True), ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.com", False), ("localhost.", False),
    ("", False),
])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert Listen(host, 80).loopback is loopback


def test_the_host_names_a_loopback_console_answers() -> None:
    assert Listen("127.0.0.1", 8080).hosts(8080) == ["127.0.0.1:8080", "[::1]:8080", "localhost:8080"]
    assert Listen("LOCALHOST", 0).hosts(5) == ["127.0.0.1:5", "[::1]:5", "localhost:5"]
    assert Listen("127.0.0.2", 0).hosts(81) == ["127.0.0.1:81", "127.0.0.2:81", "[::1]:81", "localhost:81"]
    assert Listen("::1", 80).hosts(80) == ["127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:80", "localhost",
                                           "localhost:80"]


# -- the token rule ----------------------------------------------------------------------------

def test_a_token_of_sixteen_characters_at_least() -> None:
    assert MIN_TOKEN_CHARS == 16
    check_token(Listen("0.0.0.0", 80), "x" * 16)
    check_token(Listen("127.0.0.1", 80), "x" * 16)
    check_token(Listen("127.0.0.1", 80), None)
    with pytest.raises(ValidationError) as info:
        check_token(Listen("127.0.0.1", 80), "x" * 15)
    assert str(info.value) == ("the token from --token is 15 characters; at least 16 (e.g. python3 -c "
                               "'import secrets; print(secrets.token_urlsafe())')")
    with pytest.raises(ValidationError, match=r"^the token from KREPIS_SERVE_TOKEN is 0 characters; "):
        check_token(Listen("0.0.0.0", 80), "", "KREPIS_SERVE_TOKEN")


def test_no_token_only_on_loopback() -> None:
    with pytest.raises(ValidationError) as info:
        check_token(Listen("0.0.0.0", 80), None)
    assert str(info.value) == ("0.0.0.0 is not a loopback address: serving the journal there needs a token "
                               "(--token or KREPIS_SERVE_TOKEN), which every visitor must present")


def test_serve_refuses_before_opening_anything(tmp_path: Path) -> None:
    missing = tmp_path / "no-store"
    with pytest.raises(ValidationError, match=r"^listen address 'nowhere' is not HOST:PORT"):
        serve(missing, "nowhere")
    with pytest.raises(ValidationError, match=r"^0.0.0.0 is not a loopback address"):
        serve(missing, "0.0.0.0:0")
    with pytest.raises(ValidationError, match=r"^the token from --token is 5 characters"):
        serve(missing, "127.0.0.1:0", token="short")
    for cert, key in (("c.pem", None), (None, "k.pem")):
        with pytest.raises(ValidationError) as info:
            serve(missing, "127.0.0.1:0", tls_cert=cert, tls_key=key)
        assert str(info.value) == "give both --tls-cert and --tls-key, or neither"
    assert not missing.exists()


# -- serve, in a thread ------------------------------------------------------------------------

class Running:
    def __init__(self, url: str, server: _Server) -> None:
        self.url = url
        self.server = server
        self.port = int(url.rsplit(":", 1)[1].rstrip("/"))


@contextmanager
def serving(store: Path, listen: str = "127.0.0.1:0", *, ready: bool = True,
            **kwargs: Any) -> Iterator[Running]:
    """``serve`` in a thread until the test is done; stopped as a signal stops it."""
    made: list[_Server] = []
    urls: list[str] = []
    run = _Server.run

    def recording_run(self: _Server) -> None:
        made.append(self)
        run(self)

    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve(store, listen, ready=urls.append if ready else None, **kwargs)
        except BaseException as exc:
            errors.append(exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_Server, "run", recording_run)
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not (made and made[0].server.started) and not errors:
            assert thread.is_alive() and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.01)
    if errors:
        raise errors[0]
    if not ready:
        sock = made[0].server.servers[0].sockets[0]
        urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}/")
    try:
        assert len(urls) == 1
        yield Running(urls[0], made[0])
    finally:
        made[0].server.handle_exit(2, None)
        thread.join(30)
        assert not thread.is_alive()


def http_get(port: int, target: str = "/api/counters", headers: dict[str, str] | None = None,
             host: str = "127.0.0.1") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def raw(port: int, data: bytes = b"", timeout: float = 30) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if data:
        sock.sendall(data)
    return sock


def read_all(sock: socket.socket) -> bytes | None:
    """What the server sent until it closed ``sock``; ``None`` if it kept it open (the timeout)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        return data
    except ConnectionResetError:
        return data
    except TimeoutError:
        return None


def test_serve_on_loopback_answers_its_own_names_only(store: Path) -> None:
    with serving(store) as running:
        assert running.url == f"http://127.0.0.1:{running.port}/"
        assert running.server.app.allowed_hosts == frozenset(Listen("127.0.0.1", 0).hosts(running.port))
        assert http_get(running.port)[0] == 200
        code, body = http_get(running.port, headers={"Host": f"evil.example:{running.port}"})
        assert code == 421 and f"localhost:{running.port}" in body.decode()


def test_serve_on_a_fixed_port_answers_its_names_from_the_start(store: Path) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with serving(store, f"localhost:{port}") as running:
        assert running.url == f"http://localhost:{port}/"
        assert running.server.app.allowed_hosts == frozenset(Listen("localhost", port).hosts(port))


def test_serve_with_a_token_answers_any_host_that_presents_it(store: Path) -> None:
    with serving(store, token=TOKEN) as running:
        assert running.server.app.allowed_hosts is None
        assert http_get(running.port, headers={"Host": "evil.example"})[0] == 401
        assert http_get(running.port, headers={"Host": "evil.example",
                                               "Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert TOKEN not in running.url


def test_serve_on_ipv6_loopback(store: Path) -> None:
    with serving(store, "[::1]:0") as running:
        assert running.url == f"http://[::1]:{running.port}/"
        assert http_get(running.port, host="::1", headers={"Host": f"[::1]:{running.port}"})[0] == 200


def test_the_ready_line_by_default(store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    with serving(store, ready=False) as running:
        err = capfd.readouterr().err
        assert err == f"krepis serve: http://127.0.0.1:{running.port}/ (read-only; Ctrl-C stops)\n"


def test_serve_with_the_access_log(store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with serving(store, access_log=True) as running:
        capfd.readouterr()
        http_get(running.port, "/api/counters?token=secret")
        err = ""
        deadline = time.monotonic() + 10
        while "\n" not in err and time.monotonic() < deadline:
            time.sleep(0.01)
            err += capfd.readouterr().err
    assert err.startswith("GET /api/counters 200 ") and err.endswith("ms\n") and "secret" not in err
    with serving(store) as running:
        capfd.readouterr()
        http_get(running.port, "/api/counters")
        time.sleep(0.2)
        assert capfd.readouterr().err == ""


def test_serve_uses_the_limits_given(store: Path) -> None:
    with serving(store, limits=Limits(page_size=7, page_max=7)) as running:
        assert running.server.app.console.reader.limits.page_max == 7
        code, body = http_get(running.port, "/api/trail?limit=8")
        assert code == 400 and b"1 \xe2\x80\xa6 7" in body


def test_stopping_ends_the_live_streams_first(store: Path) -> None:
    with serving(store) as running:
        feed = running.server.app.console.feed
        assert not feed._closed
        running.server.server.handle_exit(2, None)
        assert feed._closed


def test_serve_refuses_half_given_tls_before_opening(store: Path) -> None:
    with pytest.raises(ValidationError, match=r"^give both --tls-cert and --tls-key, or neither$"):
        serve(store, "127.0.0.1:0", tls_key="k.pem")


def test_serve_closes_the_journal_it_opened(store: Path) -> None:
    with serving(store) as running:
        console = running.server.app.console
    assert console.journal.closed


# -- the protocol: header deadline, half-open bound, unparseable requests ---------------------

def test_a_connection_without_its_headers_is_closed_after_header_seconds(store: Path) -> None:
    with serving(store, limits=Limits(header_seconds=0.2)) as running:
        silent = raw(running.port)
        partial = raw(running.port, b"GET / HTTP/1.1\r\nHost: x\r\n")
        assert read_all(silent) == b"" and read_all(partial) == b""
        assert http_get(running.port)[0] == 200


def test_after_an_answer_the_next_headers_have_their_deadline(store: Path) -> None:
    with serving(store, limits=Limits(header_seconds=0.3)) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        try:
            conn.request("GET", "/api/counters", headers={"Host": f"127.0.0.1:{running.port}"})
            response = conn.getresponse()
            assert response.status == 200 and response.getheader("connection") != "close"
            response.read()
            assert conn.sock is not None
            conn.sock.settimeout(3.0)  # (uvicorn's own keep-alive timeout, 5 s, would close it later)
            assert read_all(conn.sock) == b""  # closed, idle after its answer
        finally:
            conn.close()


def test_a_request_whose_headers_are_read_is_not_cut_by_the_deadline(store: Path) -> None:
    """A live stream outlasts header_seconds: the deadline is on the headers only."""
    with serving(store, limits=Limits(header_seconds=0.2, live_poll=0.05)) as running:
        sock = raw(running.port, f"GET /api/live?from=0 HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n"
                                 "Accept: text/event-stream\r\n\r\n".encode(), timeout=1.0)
        try:
            data = b""
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                assert chunk, "the server closed a stream whose headers it had read"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
        finally:
            sock.close()


def test_past_the_half_open_bound_the_oldest_waiting_is_closed(store: Path) -> None:
    with serving(store, limits=Limits(half_open_max=2, header_seconds=60.0)) as running:
        first = raw(running.port, b"GET / HTTP/1.1\r\n")
        second = raw(running.port, b"GET / HTTP/1.1\r\n", timeout=0.5)
        time.sleep(0.2)
        assert read_all(second) is None  # two wait: none is closed
        third = raw(running.port, b"GET / HTTP/1.1\r\n")
        assert read_all(first) == b""
        second.settimeout(0.5)
        assert read_all(second) is None
        for sock in (first, second, third):
            sock.close()


def test_closed_connections_leave_the_waiting_list(store: Path) -> None:
    with serving(store, limits=Limits(half_open_max=2, header_seconds=60.0)) as running:
        gone = [raw(running.port, b"GET / HTTP/1.1\r\n") for _ in range(2)]
        for sock in gone:
            sock.close()
        time.sleep(0.2)
        kept = [raw(running.port, b"GET / HTTP/1.1\r\n", timeout=0.5) for _ in range(2)]
        time.sleep(0.2)
        assert [read_all(sock) for sock in kept] == [None, None]
        for sock in kept:
            sock.close()


def test_an_unparseable_request_gets_400_with_the_security_headers(store: Path) -> None:
    from krepis.web._app import SECURITY_HEADERS

    with serving(store) as running:
        sock = raw(running.port, b"GARBAGE\r\n\r\n")
        data = read_all(sock)
        sock.close()
    assert data is not None
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    assert lines[1:] == [b"content-type: text/plain; charset=utf-8",
                         *(name + b": " + value for name, value in SECURITY_HEADERS),
                         b"cache-control: no-store", b"Connection: close"]
    assert body == b"Invalid HTTP request received."


# -- the access log ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "logged"), [
    ("/api/trail", "/api/trail"), ("aXb", "aXb"), ("a b", "a\\x20b"), ("a\\b", "a\\x5cb"),
    ("\n\r\x1b\x00", "\\x0a\\x0d\\x1b\\x00"),
    ("\x7f\xa0é", "\\x7f\\xa0é"), ("\u202e\u2028", "\\u202e\\u2028"), ("\U000e0041😀", "\\U000e0041😀"),
    ("\ufeff", "\\ufeff"), ("\xad", "\\xad"), ("\uffff", "\\uffff"), ("\U00010000", "\U00010000"),
    ("\U0010ffff", "\\U0010ffff"), ("\xff", "ÿ"), ("\u0100", "Ā"),
])
def test_log_text_escapes_what_is_not_printable(text: str, logged: str) -> None:
    assert log_text(text) == logged


def test_the_access_log_line(store: Path, capfd: pytest.CaptureFixture[str]) -> None:
    app = create_app(store)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/api/counters", "raw_path": b"/api/counters",
             "query_string": b"token=zzz", "headers": [(b"host", b"127.0.0.1:1")], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2), "root_path": ""}
    try:
        capfd.readouterr()
        asyncio.run(_AccessLog(app)(scope, receive, send))
        err = capfd.readouterr().err
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
        assert err.startswith("GET /api/counters 200 ") and err.endswith("ms\n") and "zzz" not in err
        took = err.split()[-1]
        assert took[:-2].replace(".", "", 1).isdigit() and len(took.split(".")[1]) == 3
        passed: list[Any] = []

        async def other(scope: Any, receive: Any, send: Any) -> None:
            passed.append(scope["type"])

        asyncio.run(_AccessLog(other)({"type": "lifespan"}, receive, send))
        assert passed == ["lifespan"] and capfd.readouterr().err == ""

        async def failing(scope: Any, receive: Any, send: Any) -> None:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            asyncio.run(_AccessLog(failing)(scope | {"method": "HEAD", "path": "/x y"}, receive, send))
        assert capfd.readouterr().err.startswith("HEAD /x\\x20y 0 ")
    finally:
        app.close()


def test_the_server_names_no_software(store: Path) -> None:
    with serving(store) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        try:
            conn.request("GET", "/api/counters")
            response = conn.getresponse()
            response.read()
            assert response.status == 200 and response.getheader("server") is None
        finally:
            conn.close()


def self_signed(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_serve_over_tls(store: Path, tmp_path: Path) -> None:
    import ssl

    cert, key = self_signed(tmp_path)
    with serving(store, tls_cert=cert, tls_key=key) as running:
        assert running.url == f"https://127.0.0.1:{running.port}/"
        context = ssl.create_default_context(cafile=cert)
        conn = http.client.HTTPSConnection("127.0.0.1", running.port, timeout=30, context=context)
        try:
            conn.request("GET", "/api/counters")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


def test_forwarded_headers_are_not_believed(store: Path) -> None:
    """The server is reached directly: a client's X-Forwarded-Proto does not make its plain-HTTP
    session cookie a Secure one (nor any other forwarded header change what it is)."""
    with serving(store, token=TOKEN) as running:
        conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        try:
            conn.request("GET", f"/ops?token={TOKEN}", headers={"X-Forwarded-Proto": "https",
                                                                "X-Forwarded-For": "10.1.2.3"})
            response = conn.getresponse()
            response.read()
            cookie = response.getheader("set-cookie")
            assert cookie is not None and "Secure" not in cookie
        finally:
            conn.close()


def test_the_access_log_hands_on_what_it_was_given(monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """Other scopes (lifespan) untouched; an HTTP request's receive and send reach the app (send
    through the watch of the status); the time taken in milliseconds, on a clock the test moves."""
    import time as time_module

    received: list[Any] = []
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"hello", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    asyncio.run(_AccessLog(echo)({"type": "lifespan"}, receive, send))
    assert received[-1]["body"] == b"hello" and [m["type"] for m in sent] == ["http.response.start",
                                                                               "http.response.body"]
    assert capfd.readouterr().err == ""
    ticks = iter([10.0, 11.0])
    monkeypatch.setattr(time_module, "perf_counter", lambda: next(ticks, 11.0))
    asyncio.run(_AccessLog(echo)({"type": "http", "method": "POST", "path": "/p"}, receive, send))
    monkeypatch.undo()
    assert received[-1]["body"] == b"hello" and sent[-2]["status"] == 201
    assert capfd.readouterr().err == "POST /p 201 1000.0ms\n"


def test_a_request_body_in_two_parts_then_the_next_request(store: Path) -> None:
    """The headers read, the body comes later (the deadline was cancelled with the headers), and
    the next request on the connection is answered."""
    with serving(store) as running:
        host = f"Host: 127.0.0.1:{running.port}\r\n".encode()
        sock = raw(running.port, b"GET /api/counters HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\n")
        try:
            time.sleep(0.2)
            sock.sendall(b"hel")
            time.sleep(0.2)
            sock.sendall(b"lo" + b"GET /api/counters HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
            data = read_all(sock)
        finally:
            sock.close()
        assert data is not None and data.startswith(b"HTTP/1.1 413 ") and data.count(b"HTTP/1.1 200 OK") == 1


def test_a_body_still_coming_after_the_answer_is_not_waiting_for_headers(store: Path) -> None:
    with serving(store, limits=Limits(header_seconds=0.2)) as running:
        host = f"Host: 127.0.0.1:{running.port}\r\n".encode()
        sock = raw(running.port, b"GET /api/counters HTTP/1.1\r\n" + host + b"Content-Length: 5\r\n\r\nhe",
                   timeout=0.1)
        try:
            data = b""
            deadline = time.monotonic() + 1.2  # six times header_seconds
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                assert chunk, "closed while the body was still coming"
                data += chunk
            assert data.startswith(b"HTTP/1.1 413 ")  # answered (a body is refused), and kept open
        finally:
            sock.close()


def configured(store: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> _Server:
    """The server ``serve`` would run, made but not started."""
    made: list[_Server] = []
    monkeypatch.setattr(_Server, "run", lambda self: made.append(self))
    serve(store, "127.0.0.1:0", **kwargs)
    monkeypatch.undo()
    return made[0]


def test_what_serve_hands_uvicorn(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = configured(store, monkeypatch)
    config = server.server.config
    assert config.app is server.app and server.app.console.reader.history == {}
    assert (config.lifespan, config.access_log, config.log_level, config.server_header,
            config.proxy_headers) == ("on", False, "warning", False, False)
    assert (config.timeout_graceful_shutdown, config.limit_concurrency) == (2, None)
    assert server.app.console.journal.closed  # (closed by serve when the server ends)
    logged = configured(store, monkeypatch, access_log=True)
    assert isinstance(logged.server.config.app, _AccessLog) and logged.server.config.app.app is logged.app
    archived = tmp_path / "storage"
    make_console_store(archived)
    archive = str(tmp_path / "archive")
    history = configured(archived, monkeypatch, archive=archive).app.console.reader.history
    assert history == {"archive": archive}
    assert configured(store, monkeypatch, live_only=True).app.console.reader.history == {"live_only": True}


def test_serve_listens_on_port_8088_of_loopback_by_default(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"^give both --tls-cert and --tls-key, or neither$"):
        serve(tmp_path / "no-store", tls_cert="c.pem")  # (the default address was read: no error about it)
    import inspect
    assert inspect.signature(serve).parameters["listen"].default == "127.0.0.1:8088"
