"""The HTTP server of ``krepis tlog serve``: C2SP tlog-tiles paths straight from a store, bounded
in connections, threads and time.

One thread owns every socket (a selector): it accepts, reads requests and writes responses
without ever blocking, so an idle or slow client costs a descriptor and a few bytes, not a
thread. A fixed pool of workers computes the responses. At most ``max_connections`` are open —
when a new one arrives at the cap the oldest is closed, so idle connections cannot starve real
clients — and each has ``timeout`` seconds to send its request and as long again to take its
response. Every request gets an HTTP/1.0 answer and the connection closes; errors are plain
text with an ASCII status line, never a traceback.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import CorruptStorageError, JournalError, StorageError, ValidationError
from ..tlog._note import parse_checkpoint
from ..tlog._tiles import WIDTH, bundle_bytes, parse_tile_path, tile_bytes

__all__ = ["Reply", "TileServer", "tile_responder"]

#: the largest request head read (request line and headers)
MAX_REQUEST = 16 * 1024
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
            422: "Unprocessable Entity", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Reply:
    """A response: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str = _TEXT
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def text(cls, status: int, message: str) -> Reply:
        return cls(status, (message.rstrip("\n") + "\n").encode("utf-8"))

    def encode(self, head_only: bool = False) -> bytes:
        """The bytes on the wire; the status line and headers are ASCII whatever the body."""
        lines = [f"HTTP/1.0 {self.status} {_REASONS.get(self.status, 'Error')}",
                 f"Content-Type: {self.content_type}", f"Content-Length: {len(self.body)}",
                 "Connection: close", *(f"{k}: {v}" for k, v in self.headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii", "replace")
        return head if head_only else head + self.body


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    opened: float
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    state: str = "read"  # read → work → write, or closed


class TileServer:
    """Serve ``respond(path)`` for every GET (and HEAD) at ``address`` — and, given ``post``,
    ``post(path, body)`` for every POST with a ``Content-Length`` body of at most ``max_body``
    bytes (413 beyond, 411 without one), read within the same ``timeout``; see the module docs."""

    def __init__(self, address: tuple[str, int], respond: Callable[[str], Reply], *, workers: int = 4,
                 max_connections: int = 256, timeout: float = 10.0,
                 log: Callable[[str], None] | None = None,
                 post: Callable[[str, bytes], Reply] | None = None, max_body: int = 0) -> None:
        if workers < 1 or max_connections < 1 or not timeout > 0 or max_body < 0:
            raise ValueError("workers and max_connections must be >= 1, timeout > 0, max_body >= 0")
        self._respond, self._max, self._timeout = respond, max_connections, timeout
        self._post, self._max_body = post, max_body
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.create_server(address, family=family, backlog=128)
        self._listener.setblocking(False)
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: dict[_Conn, None] = {}  # in the order they were opened
        self._jobs: queue.Queue[tuple[_Conn, str, bool, bytes | None] | None] = queue.Queue()
        self._done: collections.deque[tuple[_Conn, bytes]] = collections.deque()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._work, name=f"krepis-tiles-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._workers:
            t.start()

    # -- the socket thread ---------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or an exception, e.g. KeyboardInterrupt); then close."""
        try:
            while not self._stop.is_set():
                for key, mask in self._sel.select(timeout=self._next_wait()):
                    if key.data == "accept":
                        self._accept()
                    elif key.data == "wake":
                        self._wake()
                    elif mask & selectors.EVENT_READ:
                        self._read(key.data)
                    elif mask & selectors.EVENT_WRITE:
                        self._write(key.data)
                self._expire()
        finally:
            self._close_all()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` (from another thread)."""
        self._stop.set()
        self._poke()

    def _next_wait(self) -> float:
        deadlines = [c.deadline for c in self._conns if c.state != "work"]
        return 0.5 if not deadlines else max(0.0, min(0.5, min(deadlines) - time.monotonic()))

    def _accept(self) -> None:
        while True:
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the oldest connection makes room
                if self._conns:
                    self._close(next(iter(self._conns)))
                    continue
                self._log(f"krepis tlog serve: cannot accept a connection: {exc.strerror or exc}")
                time.sleep(0.05)  # (nothing to free: do not spin on a listener that stays ready)
                return
            while len(self._conns) >= self._max:  # the oldest makes room: idle ones cannot starve
                self._close(next(iter(self._conns)))
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Conn(sock, now, now + self._timeout)
            self._conns[conn] = None
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.buf.find(b"\n\n")
        if end > MAX_REQUEST or (end < 0 and len(conn.buf) > MAX_REQUEST) \
                or len(conn.buf) > MAX_REQUEST + self._max_body + 4:
            self._reply(conn, Reply.text(431, f"the request is longer than {MAX_REQUEST} bytes"))
            return
        if end < 0:
            return
        line = bytes(conn.buf[:conn.buf.find(b"\n")]).rstrip(b"\r")
        parts = line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1].startswith(b"/"):
            self._reply(conn, Reply.text(400, "a request is: GET /path HTTP/1.1"))
            return
        method = parts[0]
        allowed = "GET, HEAD" if self._post is None else "GET, HEAD, POST"
        if method not in (b"GET", b"HEAD") and (method != b"POST" or self._post is None):
            self._reply(conn, Reply(405, f"only {allowed}\n".encode(), headers=(("Allow", allowed),)),
                        method == b"HEAD")
            return
        body = None
        if method == b"POST":
            body = self._body(conn, end)
            if body is None:
                return
        path = parts[1].split(b"?", 1)[0].split(b"#", 1)[0].decode("latin-1")
        conn.state = "work"
        self._sel.unregister(conn.sock)
        self._jobs.put((conn, path, method == b"HEAD", body))

    def _body(self, conn: _Conn, end: int) -> bytes | None:
        """A POST's whole body once it is all there; ``None`` while it is not (or when the
        request was answered with an error)."""
        head = bytes(conn.buf[:end]).decode("latin-1").split("\n")[1:]
        fields: dict[str, str] = {}
        for line in head:
            name, colon, value = line.partition(":")
            if colon:
                fields[name.strip().lower()] = value.strip()
        if "transfer-encoding" in fields:
            self._reply(conn, Reply.text(411, "send the body with a Content-Length, not a Transfer-Encoding"))
            return None
        length = fields.get("content-length")
        if length is None or not length.isascii() or not length.isdigit() or len(length) > 12:
            self._reply(conn, Reply.text(411, "a POST needs a Content-Length"))
            return None
        if int(length) > self._max_body:
            self._reply(conn, Reply.text(413, f"the body is {length} bytes, more than the {self._max_body} "
                                              "this server reads"))
            return None
        start = end + (4 if conn.buf[end:end + 4] == b"\r\n\r\n" else 2)
        if len(conn.buf) < start + int(length):
            return None
        return bytes(conn.buf[start:start + int(length)])

    def _reply(self, conn: _Conn, reply: Reply, head_only: bool = False) -> None:
        """Start writing ``reply`` (the socket thread only)."""
        if conn.state == "closed":
            return
        if conn.state == "read":
            self._sel.unregister(conn.sock)
        conn.state, conn.out = "write", memoryview(reply.encode(head_only))
        conn.deadline = time.monotonic() + self._timeout
        self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away (EPIPE, ECONNRESET): nothing to tell anyone
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self._close(conn)

    def _wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            conn, data = self._done.popleft()
            if conn.state == "work":
                conn.state, conn.out = "write", memoryview(data)
                conn.deadline = time.monotonic() + self._timeout
                self._sel.register(conn.sock, selectors.EVENT_WRITE, conn)
                self._write(conn)

    def _expire(self) -> None:
        """Past its deadline, a connection that sent part of a request gets a 408; one that sent
        nothing, or does not take its response, is closed. (A worker's time is not limited.)"""
        now = time.monotonic()
        for conn in [c for c in self._conns if c.deadline <= now and c.state != "work"]:
            if conn.state == "read" and conn.buf:
                self._reply(conn, Reply.text(408, f"no whole request within {self._timeout:g} s"))
            else:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.state == "closed":
            return
        # (registered or not, whatever its state says: a Ctrl-C between a state change and the
        # selector's may leave them apart, and closing everything must still succeed)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.state = "closed"
        self._conns.pop(conn, None)
        try:
            conn.sock.close()
        except OSError:
            pass

    def _close_all(self) -> None:
        for conn in list(self._conns):
            self._close(conn)
        for _ in self._workers:
            self._jobs.put(None)
        self._sel.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _poke(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or closed
            pass

    # -- the workers ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, path, head_only, body = job
            try:
                reply = self._respond(path) if body is None or self._post is None else self._post(path, body)
            except Exception as exc:  # a bug: one line on stderr, a 500 to the client
                self._log(f"krepis tlog serve: {path[:200]!r}: {type(exc).__name__}: {exc}")
                reply = Reply.text(500, "internal error")
            self._done.append((conn, reply.encode(head_only)))
            self._poke()


def tile_responder(journal: Any, archive: str | os.PathLike[str] | None = None,
                   live_only: bool = False) -> Callable[[str], Reply]:
    """What ``krepis tlog serve`` answers, from a :class:`~krepis.SovereignJournal`: ``/checkpoint``
    (the latest kept for the current log) and every tile and entry bundle of its tree (archived
    ones read from the journal's archive, or ``archive``; ``live_only``: none); 404 with a
    plain-text reason for anything else, 500 for damage, 503 when the archive cannot be read."""
    lock = threading.Lock()

    def respond(path: str) -> Reply:
        with lock:
            try:
                return _respond(path)
            except ValidationError as exc:  # e.g. archived entries and no archive: not here
                return Reply.text(404, str(exc))
            except CorruptStorageError as exc:
                return Reply.text(500, str(exc))
            except StorageError as exc:  # e.g. the archive moved away: not a shorter tree, an error
                return Reply.text(503, str(exc))
            except JournalError as exc:  # e.g. cleared while the tile was read
                return Reply.text(503, f"{exc}; try again")

    def _respond(path: str) -> Reply:
        note = journal.latest_checkpoint()
        if note is None:
            return Reply.text(404, "the journal has no checkpoint of its current log yet: sign one with "
                                   "krepis checkpoint --key FILE")
        if path == "/checkpoint":
            return Reply(200, note.encode("utf-8"), _TEXT, (("Cache-Control", "no-cache"),))
        try:
            level, index, width = parse_tile_path(path)
        except ValueError:
            return Reply.text(404, "not found: the paths are /checkpoint, /tile/<L>/<N>[.p/<W>] and "
                                   "/tile/entries/<N>[.p/<W>]")
        size = parse_checkpoint(note[:note.rfind("\n\n") + 1]).size
        count = size if level == "entries" else size >> (8 * int(level))
        if (index + 1) * WIDTH > count and (width == WIDTH or index * WIDTH + width > count):
            return Reply.text(404, f"not found: the tree of the latest checkpoint has {size} entries")
        reader, entries = journal.tile_sources(archive, live_only=live_only)
        if level == "entries":
            body = bundle_bytes(index, width, entries)
        else:
            body = tile_bytes(int(level), index, width, reader.node)
        return Reply(200, body, "application/octet-stream")

    return respond
