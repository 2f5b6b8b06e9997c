"""The HTTP server under ``krepis tlog serve`` and ``krepis witness serve`` (``TileServer``) and
the tile responder, in this process: every byte of a reply's head, each refusal of a request
word for word, POST bodies read by their ``Content-Length`` and nothing else, the bounds on
connections and time, a worker's failure, and the answers of ``tile_responder`` for each kind of
path, archived bundles and damage."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import rawlmdb
from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli._tlog_serve import MAX_REQUEST, Reply, TileServer, tile_responder
from krepis.tlog._note import generate_signer

SIGNER = generate_signer("example.com/serve-units")


# -- Reply ----------------------------------------------------------------------------------------

def test_a_reply_head_is_exactly_this() -> None:
    assert Reply(200, b"abc").encode() == (
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
    conflict = Reply(409, b"7\n", "text/x.tlog.size", (("Allow", "POST"), ("X-A", "b")))
    assert conflict.encode(head_only=True) == (
        b"HTTP/1.0 409 Conflict\r\nContent-Type: text/x.tlog.size\r\nContent-Length: 2\r\n"
        b"Connection: close\r\nAllow: POST\r\nX-A: b\r\n\r\n")
    assert Reply(599, b"").encode().startswith(b"HTTP/1.0 599 Error\r\n")
    named = Reply(200, "é".encode(), headers=(("X-Name", "é…"),))
    assert named.encode().endswith(b"X-Name: ??\r\n\r\n\xc3\xa9")
    reasons = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
               408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
               422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
               500: "Internal Server Error", 503: "Service Unavailable"}  # (RFC 9110, RFC 6585)
    for status, reason in reasons.items():
        assert Reply(status, b"").encode().split(b"\r\n")[0] == f"HTTP/1.0 {status} {reason}".encode()


def test_a_text_reply_ends_in_exactly_one_newline() -> None:
    assert Reply.text(404, "gone").body == b"gone\n"
    assert Reply.text(404, "gone\n\n").body == b"gone\n"
    assert Reply.text(404, "\n  gone  ").body == b"\n  gone  \n"
    assert Reply.text(404, "…").body == "…\n".encode()
    assert Reply.text(404, "x").content_type == "text/plain; charset=utf-8"


def test_a_server_is_refused_impossible_bounds() -> None:
    for kwargs in ({"workers": 0}, {"max_connections": 0}, {"timeout": 0}, {"timeout": float("nan")},
                   {"max_body": -1}):
        with pytest.raises(ValueError) as info:
            TileServer(("127.0.0.1", 0), lambda path: Reply(200, b""), **kwargs)  # type: ignore[arg-type]
        assert str(info.value) == "workers and max_connections must be >= 1, timeout > 0, max_body >= 0"


# -- the server -----------------------------------------------------------------------------------

class _Running:
    """A TileServer in a thread, answering GETs with the path it was asked and POSTs with the body."""

    def __init__(self, **kwargs: object) -> None:
        self.paths: list[str] = []
        self.log: list[str] = []
        respond = kwargs.pop("respond", None) or self._echo
        self.server = TileServer(kwargs.pop("address", ("127.0.0.1", 0)), respond,  # type: ignore[arg-type]
                                 log=self.log.append, **kwargs)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _echo(self, path: str) -> Reply:
        self.paths.append(path)
        return Reply(200, path.encode(), "text/x-path")

    def ask(self, request: bytes, *, pause: float = 0.0) -> bytes:
        """Send ``request`` (in two parts ``pause`` seconds apart, when given); return all the answer."""
        with socket.create_connection(self.server.address[:2], timeout=30) as s:
            if pause:
                s.sendall(request[:len(request) // 2])
                time.sleep(pause)
                s.sendall(request[len(request) // 2:])
            else:
                s.sendall(request)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=30)


@pytest.fixture
def running() -> Iterator[Callable[..., _Running]]:
    started: list[_Running] = []

    def start(**kwargs: object) -> _Running:
        started.append(_Running(**kwargs))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "the server did not get there in 30 s"
        time.sleep(0.01)


def _body(reply: bytes) -> bytes:
    return reply.split(b"\r\n\r\n", 1)[1]


def test_get_and_head_answer_the_path_without_its_query_or_fragment(running: Callable[..., _Running]) -> None:
    r = running()
    reply = r.ask(b"GET /tile/0/000?x=1#frag HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply == (b"HTTP/1.0 200 OK\r\nContent-Type: text/x-path\r\nContent-Length: 11\r\n"
                     b"Connection: close\r\n\r\n/tile/0/000")
    head = r.ask(b"HEAD /a#b HTTP/1.0\r\n\r\n")
    assert head == (b"HTTP/1.0 200 OK\r\nContent-Type: text/x-path\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\n")
    assert r.ask(b"GET /caf\xe9 HTTP/1.1\n\n").endswith(b"\r\n\r\n/caf\xc3\xa9")  # (latin-1, then UTF-8)
    assert r.paths == ["/tile/0/000", "/a", "/caf\xe9"]


def test_malformed_and_unknown_requests_are_refused_word_for_word(running: Callable[..., _Running]) -> None:
    r = running()
    for request in (b"GET\r\n\r\n", b"GET /x\r\n\r\n", b"GET x HTTP/1.1\r\n\r\n", b"GET /x FTP/1.1\r\n\r\n",
                    b"GET /x HTTP/1.1 extra\r\n\r\n"):
        assert r.ask(request) == (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                  b"Content-Length: 33\r\nConnection: close\r\n\r\n"
                                  b"a request is: GET /path HTTP/1.1\n"), request
    reply = r.ask(b"DELETE /x HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 405 Method Not Allowed\r\n") and b"\r\nAllow: GET, HEAD\r\n" in reply
    assert _body(reply) == b"only GET, HEAD\n"
    assert _body(r.ask(b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")) == b"only GET, HEAD\n"
    long = r.ask(b"GET /x HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST + b"\r\n\r\n")
    assert long.startswith(b"HTTP/1.0 431 ") and _body(long) == b"the request is longer than 16384 bytes\n"
    endless = r.ask(b"GET /" + b"a" * (MAX_REQUEST + 10))  # no end of head at all
    assert endless.startswith(b"HTTP/1.0 431 ")
    assert r.paths == []
    at_limit = r.ask(b"GET /x HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST - 22) + b"\r\n\r\n")  # head of 16,384
    assert at_limit.startswith(b"HTTP/1.0 200 OK")


def test_post_bodies_are_read_by_their_length(running: Callable[..., _Running]) -> None:
    bodies: list[tuple[str, bytes]] = []

    def post(path: str, body: bytes) -> Reply:
        bodies.append((path, body))
        return Reply(200, b"got " + body)

    r = running(post=post, max_body=100)
    assert _body(r.ask(b"POST /add-checkpoint?x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")) == b"got hello"
    assert _body(r.ask(b"POST /p HTTP/1.1\nCONTENT-LENGTH:3\n\nabcEXTRA")) == b"got abc"  # after \n\n
    assert _body(r.ask(b"POST /p HTTP/1.1\r\ncontent-length: 000000000004\r\n\r\nwxyz")) == b"got wxyz"
    assert _body(r.ask(b"POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"b" * 100,
                       pause=0.2)) == b"got " + b"b" * 100  # (in two parts)
    assert bodies == [("/add-checkpoint", b"hello"), ("/p", b"abc"), ("/p", b"wxyz"), ("/p", b"b" * 100)]
    refused = {
        b"Transfer-Encoding: chunked\r\nContent-Length: 3": (
            411, b"send the body with a Content-Length, not a Transfer-Encoding\n"),
        b"Transfer-Encoding: a:b": (411, b"send the body with a Content-Length, not a Transfer-Encoding\n"),
        b"X-Length: 3": (411, b"a POST needs a Content-Length\n"),
        b"Content-Length: 3a": (411, b"a POST needs a Content-Length\n"),
        b"Content-Length: -3": (411, b"a POST needs a Content-Length\n"),
        "Content-Length: \u0663".encode(): (411, b"a POST needs a Content-Length\n"),  # an Arabic-Indic 3
        b"Content-Length: 0000000000003": (411, b"a POST needs a Content-Length\n"),  # 13 digits
        b"Content-Length: 101": (413, b"the body is 101 bytes, more than the 100 this server reads\n"),
    }
    for head, (status, text) in refused.items():
        reply = r.ask(b"POST /p HTTP/1.1\r\n" + head + b"\r\n\r\nabc")
        assert reply.startswith(f"HTTP/1.0 {status} ".encode()) and _body(reply) == text, head
    assert len(bodies) == 4
    allowed = r.ask(b"DELETE /x HTTP/1.1\r\n\r\n")
    assert b"\r\nAllow: GET, HEAD, POST\r\n" in allowed and _body(allowed) == b"only GET, HEAD, POST\n"


def test_a_worker_that_fails_is_a_500_and_one_line(running: Callable[..., _Running]) -> None:
    def respond(path: str) -> Reply:
        raise RuntimeError("boom")

    r = running(respond=respond)
    reply = r.ask(b"GET /" + b"p" * 300 + b" HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 500 Internal Server Error\r\n") and _body(reply) == b"internal error\n"
    assert r.log == [f"krepis tlog serve: {('/' + 'p' * 199)!r}: RuntimeError: boom"]
    assert r.ask(b"GET /x HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.0 500 ")  # and it keeps serving


def test_a_slow_request_gets_408_and_a_silent_one_is_closed(running: Callable[..., _Running]) -> None:
    r = running(timeout=0.3)
    with socket.create_connection(r.server.address, timeout=30) as s:
        s.sendall(b"GET /x HTTP/1.1\r\n")
        reply = s.recv(1000)
    assert reply.startswith(b"HTTP/1.0 408 Request Timeout\r\n")
    assert _body(reply) == b"no whole request within 0.3 s\n"
    with socket.create_connection(r.server.address, timeout=30) as s:
        assert s.recv(100) == b""


def test_a_big_response_is_written_to_a_client_that_reads_late(running: Callable[..., _Running]) -> None:
    """4 MB do not fit in the socket's buffers: the rest is written as the client reads, within
    the timeout counted from when the response was ready."""
    data = bytes(range(256)) * (16 * 1024)
    r = running(respond=lambda path: Reply(200, data, "application/octet-stream"), timeout=2.0)
    with socket.create_connection(r.server.address, timeout=30) as s:
        s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        time.sleep(0.5)
        out = b""
        while chunk := s.recv(1 << 20):
            out += chunk
    assert _body(out) == data


def test_at_the_cap_the_oldest_connection_makes_room(running: Callable[..., _Running]) -> None:
    r = running(max_connections=2)
    first = socket.create_connection(r.server.address, timeout=30)
    second = socket.create_connection(r.server.address, timeout=30)
    try:
        second.sendall(b"GET /two")
        _until(lambda: len(r.server._conns) == 2)
        assert _body(r.ask(b"GET /three HTTP/1.1\r\n\r\n")) == b"/three"
        assert first.recv(10) == b""  # the oldest was closed
        second.sendall(b" HTTP/1.1\r\n\r\n")
        assert _body(second.recv(1000)) == b"/two"
    finally:
        first.close()
        second.close()


class _Listener:
    """A listening socket whose accept() fails ``failures`` times with ``errno.EMFILE`` first."""

    def __init__(self, real: socket.socket, failures: int) -> None:
        self.real, self.failures = real, failures

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self.real.accept()

    def close(self) -> None:
        self.real.close()


def test_out_of_descriptors_the_oldest_connection_is_closed_or_it_is_said(
        running: Callable[..., _Running]) -> None:
    r = running()
    idle = socket.create_connection(r.server.address, timeout=30)
    _until(lambda: len(r.server._conns) == 1)  # (accepted)
    r.server._listener = _Listener(r.server._listener, 1)  # type: ignore[assignment]
    try:
        assert _body(r.ask(b"GET /a HTTP/1.1\r\n\r\n")) == b"/a"
        assert idle.recv(10) == b""  # closed to make room
    finally:
        idle.close()
    assert r.log == []
    r.server._listener.failures = 1  # type: ignore[attr-defined]
    assert _body(r.ask(b"GET /b HTTP/1.1\r\n\r\n")) == b"/b"  # nothing to close: said, then accepted
    assert r.log == ["krepis tlog serve: cannot accept a connection: Too many open files"]


def test_an_ipv6_address_is_served(running: Callable[..., _Running]) -> None:
    r = running(address=("::1", 0))
    with socket.create_connection(r.server.address, timeout=30) as s:
        s.sendall(b"GET /six HTTP/1.1\r\n\r\n")
        assert _body(s.recv(1000)) == b"/six"


def test_shutdown_closes_the_listener(running: Callable[..., _Running]) -> None:
    r = running()
    address = r.server.address
    r.stop()
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()


# -- the tile responder ---------------------------------------------------------------------------

def _fill(journal: SovereignJournal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))


def test_the_tile_responder_answers_each_kind_of_path(tmp_path: Path) -> None:
    store, tiles = tmp_path / "store", tmp_path / "tiles"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        respond = tile_responder(journal)
        none = respond("/checkpoint")
        assert (none.status, none.body) == (404, b"the journal has no checkpoint of its current log yet: "
                                                 b"sign one with krepis checkpoint --key FILE\n")
        _fill(journal, 600)
        journal.export_tiles(tiles, SIGNER)
        _fill(journal, 10, start=600)  # not in the checkpoint
        note = respond("/checkpoint")
        assert (note.status, note.body, note.content_type, note.headers) == (
            200, (tiles / "checkpoint").read_bytes(), "text/plain; charset=utf-8",
            (("Cache-Control", "no-cache"),))
        for rel in ("tile/0/000", "tile/0/001", "tile/0/002.p/88", "tile/1/000.p/2", "tile/entries/000",
                    "tile/entries/002.p/88", "tile/entries/002.p/1", "tile/0/002.p/5"):
            got = respond("/" + rel)
            want = (tiles / rel).read_bytes() if (tiles / rel).exists() else None
            assert got.status == 200 and got.content_type == "application/octet-stream", rel
            assert want is None or got.body == want, rel
        for rel in ("/tile/0/003", "/tile/0/002", "/tile/0/002.p/89", "/tile/1/000", "/tile/1/001.p/1",
                    "/tile/2/000.p/1", "/tile/entries/002.p/89", "/tile/entries/003.p/1"):
            got = respond(rel)
            assert (got.status, got.body) == (
                404, b"not found: the tree of the latest checkpoint has 600 entries\n"), rel
        for rel in ("/", "/tile", "/tile/0/000/", "/tile/x/000", "/checkpoint/"):
            got = respond(rel)
            assert (got.status, got.body) == (404, b"not found: the paths are /checkpoint, /tile/<L>/<N>"
                                                   b"[.p/<W>] and /tile/entries/<N>[.p/<W>]\n"), rel


def test_archived_bundles_are_served_from_the_archive_unless_live_only(tmp_path: Path) -> None:
    store, arch, tiles = tmp_path / "store", tmp_path / "archive", tmp_path / "tiles"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        _fill(journal, 600)
        journal.export_tiles(tiles, SIGNER)
        journal.archive(arch, keep_last=0)
        assert tile_responder(journal)("/tile/entries/000").body == (tiles / "tile/entries/000").read_bytes()
        live = tile_responder(journal, live_only=True)("/tile/entries/001")
        assert live.status == 404 and live.body.decode().startswith("entries 256…511 of the journal at ")
        assert tile_responder(journal, live_only=True)("/tile/entries/002.p/88").status == 200
    arch.rename(tmp_path / "moved")
    with SovereignJournal(store) as journal:
        gone = tile_responder(journal)("/tile/entries/000")
        assert gone.status == 503 and str(arch) in gone.body.decode()
        moved = tile_responder(journal, tmp_path / "moved")("/tile/entries/001")
        assert moved.body == (tiles / "tile/entries/001").read_bytes()


def test_a_tree_of_whole_tiles_serves_its_last_full_tile(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "store", flush="interval:20ms") as journal:
        _fill(journal, 512)
        journal.export_tiles(tmp_path / "tiles", SIGNER)
        respond = tile_responder(journal)
        for rel in ("tile/0/001", "tile/entries/001", "tile/1/000.p/2"):
            got = respond("/" + rel)
            assert (got.status, got.body) == (200, (tmp_path / "tiles" / rel).read_bytes()), rel
        assert respond("/tile/0/002.p/1").status == 404


def test_damage_is_a_500_and_a_clear_meanwhile_a_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        _fill(journal, 300)
        journal.sign_checkpoint(SIGNER)
    rawlmdb.edit(store, lambda txn, db: txn.delete((5).to_bytes(8, "big"), db=db(b"entries")))
    with SovereignJournal(store) as journal:
        got = tile_responder(journal)("/tile/entries/000")
        assert (got.status, got.body) == (500, f"storage at {journal.path}: entries 0…255 are not all "
                                               "there\n".encode())
    with SovereignJournal(tmp_path / "other", flush="interval:20ms") as journal:
        _fill(journal, 300)
        journal.sign_checkpoint(SIGNER)
        sources = journal.tile_sources

        def cleared(*args: object, **kwargs: object) -> object:
            found = sources(*args, **kwargs)  # type: ignore[arg-type]
            journal.clear_all()
            return found

        monkeypatch.setattr(journal, "tile_sources", cleared)
        got = tile_responder(journal)("/tile/0/000")
        assert got.status == 503 and got.body.endswith(b"; try again\n")
        assert b"cleared" in got.body


def test_a_text_reply_keeps_its_other_trailing_characters() -> None:
    assert Reply.text(404, "tail X\nX\n").body == b"tail X\nX\n"


def test_a_request_line_is_split_on_single_spaces_only(running: Callable[..., _Running]) -> None:
    r = running(timeout=2.0)
    for request in (b"GET  /x HTTP/1.1\r\n\r\n", b"GET\t/x HTTP/1.1\r\n\r\n", b"GET /x HTTP/1.1 \r\n\r\n",
                    b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n"):
        assert _body(r.ask(request)) == b"a request is: GET /path HTTP/1.1\n", request
    reply = r.ask(b"\rGET /x HTTP/1.1\r\n\r\n")  # (the method is "\rGET")
    assert reply.startswith(b"HTTP/1.0 405 ")
    assert r.paths == []


def test_a_head_may_end_at_the_limit_and_not_past_it(running: Callable[..., _Running]) -> None:
    r = running()
    line = b"GET /x HTTP/1.1\r\nX: "
    assert _body(r.ask(line + b"a" * (MAX_REQUEST - len(line)) + b"\r\n\r\n")) == b"/x"  # ends at 16,384
    assert r.ask(line + b"a" * (MAX_REQUEST - len(line) + 1) + b"\r\n\r\n").startswith(b"HTTP/1.0 431 ")


def test_a_post_body_may_hold_blank_lines(running: Callable[..., _Running]) -> None:
    r = running(post=lambda path, body: Reply(200, body), max_body=100)
    for sep in (b"\r\n\r\n", b"\n\n"):
        body = b"old 8" + sep + b"note" + sep
        reply = r.ask(b"POST /p HTTP/1.1" + sep[:len(sep) // 2] + b"Content-Length: "
                      + str(len(body)).encode() + sep + body)
        assert _body(reply) == body, sep


def test_a_client_that_does_not_read_holds_up_no_other(running: Callable[..., _Running]) -> None:
    """Sockets are non-blocking: a response larger than the buffers waits for its reader while
    the server answers everyone else."""
    data = b"x" * (16 << 20)
    r = running(respond=lambda path: Reply(200, data if path == "/big" else b"small"), timeout=20.0)
    with socket.create_connection(r.server.address, timeout=30) as slow:
        slow.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        time.sleep(0.3)  # (its response is being written, and stalls)
        with socket.create_connection(r.server.address, timeout=10) as other:
            other.sendall(b"GET /other HTTP/1.1\r\n\r\n")
            reply = b""
            while chunk := other.recv(1000):
                reply += chunk
            assert _body(reply) == b"small"
        got = 0
        while chunk := slow.recv(1 << 20):
            got += len(chunk)
        assert got > len(data)


def test_a_request_longer_than_a_head_and_the_largest_body_is_refused(
        running: Callable[..., _Running]) -> None:
    """A POST whose bytes, once its body is whole, run past 16 KiB + the largest body + the blank
    line (a client that sent more than its Content-Length) is a 431; up to that, the body is
    read and the rest ignored."""
    r = running(post=lambda path, body: Reply(200, b"got %d" % len(body)), max_body=100)
    start = b"POST /p HTTP/1.1\r\nContent-Length: 100\r\nX: "
    head = start + b"a" * (MAX_REQUEST - 10 - len(start)) + b"\r\n\r\n"  # ends 10 bytes before the limit
    for excess, status in ((10, b"200"), (11, b"431")):
        total = len(head) + 100 + excess
        with socket.create_connection(r.server.address, timeout=30) as s:
            s.sendall(head + b"b" * 10)
            _until(lambda: any(len(c.buf) == len(head) + 10 for c in list(r.server._conns)))
            s.sendall(b"b" * 90 + b"c" * excess)  # (one segment on the loopback)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
        assert total == MAX_REQUEST + 100 + 4 + (excess - 10)
        assert out.startswith(b"HTTP/1.0 " + status + b" "), (excess, out[:100])


def test_a_worker_has_all_the_time_it_needs(running: Callable[..., _Running]) -> None:
    """The timeout bounds the client (its request, its reading), never the work: a response that
    takes longer than it is still sent."""
    def slow(path: str) -> Reply:
        time.sleep(0.8)
        return Reply(200, b"late but whole")

    r = running(respond=slow, timeout=0.3)
    assert _body(r.ask(b"GET /slow HTTP/1.1\r\n\r\n")) == b"late but whole"


def test_the_path_ends_at_the_first_question_mark_or_hash(running: Callable[..., _Running]) -> None:
    r = running()
    for target, path in ((b"/a?b?c", b"/a"), (b"/a#b#c", b"/a"), (b"/a#b?c", b"/a"), (b"/a?b#c", b"/a"),
                         (b"/?", b"/")):
        assert _body(r.ask(b"GET " + target + b" HTTP/1.1\r\n\r\n")) == path, target


def test_a_head_past_the_limit_is_refused_by_a_server_that_reads_bodies(
        running: Callable[..., _Running]) -> None:
    r = running(post=lambda path, body: Reply(200, body), max_body=100)
    line = b"GET /x HTTP/1.1\r\nX: "
    assert _body(r.ask(line + b"a" * (MAX_REQUEST - len(line)) + b"\r\n\r\n")) == b"/x"
    assert r.ask(line + b"a" * (MAX_REQUEST - len(line) + 1) + b"\r\n\r\n").startswith(b"HTTP/1.0 431 ")
