"""Serving the console: the listen address, the token rule, and uvicorn.

**Loopback by default; anywhere else only with a token.** On a loopback address (127.0.0.0/8,
``::1``, ``localhost``) without a token the console answers only requests whose ``Host`` is
that address (so a web page elsewhere cannot read it through the visitor's browser by making
its own name resolve to 127.0.0.1). On any other address a token is required — at least 16
characters, from ``--token`` or ``KREPIS_SERVE_TOKEN`` — and is never printed or logged: the
access log (off by default) names the path without its query string.
"""
from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import ValidationError
from ..journal import SovereignJournal
from ._app import SECURITY_HEADERS, ConsoleApp, create_app
from ._views import Limits

__all__ = ["MIN_TOKEN_CHARS", "Listen", "parse_listen", "serve"]

#: the shortest token accepted
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Listen:
    """Where to listen: ``host`` (an IP address or name) and ``port`` (0: any free port)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can connect (127.0.0.0/8, ::1, localhost)."""
        if self.host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def hosts(self, port: int) -> list[str]:
        """The ``Host`` header values a loopback console answers to, on ``port``."""
        names = {f"[{n}]" if ":" in n else n for n in (self.host.lower(), "localhost", "127.0.0.1", "::1")}
        return sorted({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; ``:PORT`` means 127.0.0.1) as a :class:`Listen`."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5 \
            or not 0 <= int(port_text) <= 65535:
        raise ValidationError(f"listen address {text!r:.80} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Listen(host or "127.0.0.1", int(port_text))


def check_token(listen: Listen, token: str | None, source: str = "--token") -> None:
    """Refuse a token too short to be one, and a non-loopback address without one."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ValidationError(
            f"the token from {source} is {len(token)} characters; at least {MIN_TOKEN_CHARS} "
            "(e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')")
    if token is None and not listen.loopback:
        raise ValidationError(
            f"{listen.host} is not a loopback address: serving the journal there needs a token "
            "(--token or KREPIS_SERVE_TOKEN), which every visitor must present")


def serve(
    journal: SovereignJournal | str | os.PathLike[str],
    listen: str = "127.0.0.1:8088",
    *,
    token: str | None = None,
    archive: str | None = None,
    live_only: bool = False,
    limits: Limits | None = None,
    access_log: bool = False,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the console on ``listen`` until interrupted (Ctrl-C, SIGTERM). ``ready(url)`` is
    called once it listens (default: the URL printed on stderr — without the token). Raises
    :class:`ValidationError` for a bad address or token before anything is opened, and
    :class:`~krepis.StorageError` naming the path when the store cannot be read."""
    import uvicorn

    where = parse_listen(listen)
    check_token(where, token)
    if (tls_cert is None) != (tls_key is None):
        raise ValidationError("give both --tls-cert and --tls-key, or neither")
    app = create_app(journal, token=token, archive=archive, live_only=live_only, limits=limits)
    try:
        if token is None:  # loopback: answer to this address's names only (none until the port is known)
            app.allowed_hosts = frozenset(where.hosts(where.port)) if where.port else frozenset()
        limits = app.console.reader.limits
        config = uvicorn.Config(_AccessLog(app) if access_log else app, host=where.host, port=where.port,
                                lifespan="on", access_log=False, log_level="warning", server_header=False,
                                timeout_graceful_shutdown=2, http=protocol(limits.header_seconds,
                                                                           limits.half_open_max),
                                limit_concurrency=None,  # (the application counts requests, not connections)
                                ssl_certfile=tls_cert, ssl_keyfile=tls_key, proxy_headers=False)
        server = _Server(config, app, where, token is None, ready)
        server.run()
    finally:
        app.close()


def protocol(header_seconds: float, half_open_max: int) -> type[Any]:
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on request headers: a connection that
    has not sent a whole request's headers ``header_seconds`` after it opened, or after its
    previous answer ended, is closed — sending slowly (a byte now and then) does not extend it —
    and at most ``half_open_max`` connections wait so at once: past that, the one that has
    waited longest is closed. (uvicorn itself has a keep-alive timeout between requests but
    none on headers.) A request it cannot parse is answered 400 with the console's security
    headers. One class per server: the waiting connections are counted per server."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting: dict[Any, None] = {}  # the connections waiting for headers, oldest first

    class Protocol(H11Protocol):
        _header_timer: Any = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._headers_read()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self._header_timer is not None and self.conn.their_state is not h11.IDLE:
                self._headers_read()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._await_headers()

        def _await_headers(self) -> None:
            self._headers_read()
            self._header_timer = self.loop.call_later(header_seconds, self._too_slow)
            waiting[self] = None
            while len(waiting) > half_open_max:
                next(iter(waiting))._too_slow()

        def _headers_read(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            waiting.pop(self, None)

        def _too_slow(self) -> None:
            self._headers_read()
            if not self.transport.is_closing():
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            """uvicorn's answer to a request it cannot parse, with the console's headers."""
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                       *SECURITY_HEADERS, (b"cache-control", b"no-store")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=msg.encode("ascii", "replace")), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


class _Server:
    """uvicorn's server, with the live streams ended when it is asked to stop, the allowed
    hosts fixed once the port is known, and the ready line."""

    def __init__(self, config: Any, app: ConsoleApp, where: Listen, loopback_only: bool,
                 ready: Callable[[str], None] | None) -> None:
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                app.console.feed.close()
                super().handle_exit(sig, frame)

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                outer._started(self)

        self.server = Server(config)
        self.app, self.where, self.loopback_only, self.ready = app, where, loopback_only, ready

    def _started(self, server: Any) -> None:
        port = self.where.port
        for srv in getattr(server, "servers", []):
            for sock in srv.sockets:
                port = sock.getsockname()[1]
        if self.loopback_only:
            self.app.allowed_hosts = frozenset(self.where.hosts(port))
        scheme = "https" if server.config.ssl_certfile else "http"
        host = f"[{self.where.host}]" if ":" in self.where.host else self.where.host
        url = f"{scheme}://{host}:{port}/"
        (self.ready or _print_ready)(url)

    def run(self) -> None:
        self.server.run()


def _print_ready(url: str) -> None:
    print(f"krepis serve: {url} (read-only; Ctrl-C stops)", file=sys.stderr, flush=True)


def log_text(text: str) -> str:
    """``text`` as one inert run of a log line: every character that is not printable — control
    characters (CR, LF, ESC), format characters such as bidi overrides, line separators — a
    space, and the backslash itself written as a visible escape (``\\x0a``, ``\\u202e``,
    ``\\x20``, ``\\x5c``), so a request cannot add a line, split a field or colour a terminal."""
    out = []
    for char in text:
        if char.isprintable() and char not in " \\":
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return "".join(out)


class _AccessLog:
    """One line per request on stderr: method, path (never the query string: it may hold the
    token; escaped by :func:`log_text`), status, milliseconds."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import time

        start = time.perf_counter()
        status = [0]

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            took = (time.perf_counter() - start) * 1000
            print(f"{log_text(scope['method'])} {log_text(scope['path'])} {status[0]} {took:.1f}ms",
                  file=sys.stderr, flush=True)
