"""The console as an ASGI application (Starlette): the pages' shell and static files, the JSON
reads, the live feed — and the guard in front of them all.

The guard answers before any route: ``live_max`` + 64 requests at once (503 "busy" past
that: a connection still sending its headers is not counted), only ``GET``/``HEAD`` (405
otherwise), no request body (413), a query string of ``max_query`` bytes at most (414), the
``Host`` header among the allowed names when one is set (421: a page of another site that made
its name resolve to this address cannot read the journal), and the access token when one is
set (401). Every response
carries a strict Content-Security-Policy (scripts, styles and connections from this server
only; no inline script or style; Trusted Types required, so no page code can assign markup
from a string), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and ``Cache-Control: no-store``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import html
import json
import os
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import ClosedError, CorruptStorageError, JournalError, StorageError
from ..journal import SovereignJournal
from ._filters import parse_filters
from ._live import Feed, FeedFull
from ._views import Busy, Limits, Reader

__all__ = ["SESSION_COOKIE", "ConsoleApp", "create_app", "session_value"]

STATIC = Path(__file__).resolve().parent / "static"
#: the cookie a visit with the right ``?token=`` sets (an HMAC of the token, never the token)
SESSION_COOKIE = "krepis_session"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
       "require-trusted-types-for 'script'; trusted-types 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
]
_PAGES = ("/", "/request", "/ops", "/counters", "/verify")


def session_value(token: str) -> str:
    """The session cookie's value for ``token``: HMAC-SHA256(token, a fixed label), hex."""
    return hmac.new(token.encode(), b"krepis serve session v1", hashlib.sha256).hexdigest()


def _plain(status: int, text: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> Message:
    return {"type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers]}


class _Guard:
    """The checks every request passes first, and the security headers of every response."""

    def __init__(self, app: ASGIApp, *, token: str | None, allowed_hosts: frozenset[str] | None,
                 max_query: int, max_inflight: int | None = None) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.inflight = 0
        self.token = token.encode() if token is not None else None
        self.session = session_value(token).encode() if token is not None else None
        self.allowed_hosts = allowed_hosts
        self.max_query = max_query

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no WebSocket endpoint
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return

        async def secure_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OURS]
                headers += [*SECURITY_HEADERS, (b"cache-control", b"no-store")]
                message = {**message, "headers": headers}
            await send(message)

        if self.max_inflight is not None and self.inflight >= self.max_inflight:
            text = (f"busy: {self.inflight} requests are being answered, the most at once "
                    "(live streams among them); retry in a moment")
            await secure_send(_plain(503, text, [(b"retry-after", b"1")]))
            await send({"type": "http.response.body", "body": (text + "\n").encode()})
            return
        self.inflight += 1
        try:
            problem = self._check(scope)
            if problem is not None:
                status, text, extra = problem
                await secure_send(_plain(status, text, extra))
                await send({"type": "http.response.body", "body": (text + "\n").encode()})
                return
            redirect = self._token_in_query(scope)
            if redirect is not None:
                await secure_send(redirect)
                await send({"type": "http.response.body", "body": b""})
                return
            await self.app(scope, receive, secure_send)
        finally:
            self.inflight -= 1

    def _check(self, scope: Scope) -> tuple[int, str, list[tuple[bytes, bytes]]] | None:
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope["method"] not in ("GET", "HEAD"):
            return 405, "this console only reads: GET and HEAD", [(b"allow", b"GET, HEAD")]
        length = headers.get(b"content-length", b"0").strip()
        if b"transfer-encoding" in headers or length not in (b"", b"0"):
            return 413, "a request to this console has no body", []
        if len(scope.get("query_string", b"")) > self.max_query:
            return 414, f"the query string is longer than {self.max_query} bytes", []
        if self.allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            if host not in self.allowed_hosts:
                return 421, ("this console answers to " + ", ".join(sorted(self.allowed_hosts))
                             + " only (see docs/web.md: binding and the token)"), []
        if self.token is None or self._authorized(headers):
            return None
        if _query_token(scope) is not None:
            candidate = _query_token(scope)
            assert candidate is not None
            if hmac.compare_digest(candidate.encode(), self.token):
                return None  # (answered with a redirect that sets the cookie)
        return 401, ("this krepis console needs its access token: open it once as "
                     "<address>/?token=<token> (the operator set it with --token or KREPIS_SERVE_TOKEN)"), []

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None and self.session is not None
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.token):
            return True
        for part in headers.get(b"cookie", b"").split(b";"):
            name, _, value = part.strip().partition(b"=")
            if name == SESSION_COOKIE.encode() and hmac.compare_digest(value, self.session):
                return True
        return False

    def _token_in_query(self, scope: Scope) -> Message | None:
        """A visit with the right ``?token=``: a redirect to the same address without it, setting
        the session cookie (so the token stays out of the history and the address bar). The
        address is a path under the console's own prefix, never another site's: leading ``/``
        and ``\\`` collapse to one ``/``, and the rest is percent-encoded. A wrong ``?token=``
        redirects nowhere (a request the cookie lets in is answered as if it were absent)."""
        candidate = _query_token(scope)
        if self.token is None or candidate is None or not hmac.compare_digest(candidate.encode(), self.token):
            return None
        assert self.session is not None
        pairs = [(k, v) for k, v in urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                                            keep_blank_values=True) if k != "token"]
        root = scope.get("root_path", "")  # (a mount's prefix; "path" is the whole path, prefix included)
        location = _local_path(root, scope["path"]) + ("?" + urllib.parse.urlencode(pairs) if pairs else "")
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = (f"{SESSION_COOKIE}={self.session.decode()}; Path={root or '/'}; HttpOnly; "
                  f"SameSite=Strict{secure}")
        return {"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode("latin-1", "replace")),
                            (b"set-cookie", cookie.encode())]}


_OURS = {k for k, _ in SECURITY_HEADERS} | {b"cache-control"}


def _local_path(root: str, path: str) -> str:
    """``path`` as an absolute path on this server under the mount prefix ``root``: never a
    scheme-relative (``//host``) or absolute URL, whatever slashes and backslashes it starts
    with; percent-encoded (no control character or space reaches the ``Location`` header)."""
    rest = path[len(root):] if root and path.startswith(root) else path
    rest = rest.lstrip("/\\")
    prefix = "/" + root.strip("/\\") if root.strip("/\\") else ""
    return urllib.parse.quote(f"{prefix}/{rest}", safe="/-._~!$&'()*+,;=:@")


def _query_token(scope: Scope) -> str | None:
    query = scope.get("query_string", b"")
    if b"token=" not in query:
        return None
    values = urllib.parse.parse_qs(query.decode("latin-1")).get("token")
    return values[0] if values else None


class _Console:
    """The routes' state: the journal's reads, the thread limiter and the live feed."""

    def __init__(self, journal: SovereignJournal, reader: Reader, owned: bool) -> None:
        self.journal = journal
        self.reader = reader
        self.owned = owned
        self.limiter = anyio.CapacityLimiter(reader.limits.readers)
        self.heavy_running = 0
        # the live feed reads in a thread of its own: busy readers never hold up the live tabs
        self.feed_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="krepis-live")
        self.feed = Feed(journal, reader.history, reader.limits, self.run_feed)
        self.shell = (STATIC / "index.html").read_text(encoding="utf-8")
        self.hidden = _hidden_paths(journal, reader)

    def error(self, status: int, message: str, start: float) -> Response:
        """An error answer whose message names no path of the server's (the store's, the
        archive's: they become ``<store>``, ``<archive>``); a 5xx's whole message goes to stderr
        for the operator."""
        if status >= 500:
            print(f"krepis serve: {status}: {message}", file=sys.stderr, flush=True)
        for path, name in self.hidden:
            message = message.replace(path, name)
        return _error(status, message, start)

    def close(self) -> None:
        """End the live streams, let the feed's thread go, close the journal if opened here."""
        self.feed.close()
        self.feed_thread.shutdown(wait=False)
        if self.owned:
            self.journal.close()

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    async def run_feed(self, fn: Callable[[], Any]) -> Any:
        try:
            future = asyncio.get_running_loop().run_in_executor(self.feed_thread, fn)
        except RuntimeError:  # (the thread was let go: the console is closing)
            raise ClosedError("the console is closed") from None
        return await future

    async def heavy(self, fn: Callable[[], Any]) -> Response:
        """:meth:`answer` for a read that may take long (a summary, a plot): ``heavy`` of them
        at once at most, so the reader threads stay free for the rest; another is a 503 "busy"
        with ``Retry-After``."""
        most = self.reader.limits.heavy
        if self.heavy_running >= most:
            answer = self.error(503, f"busy: {most} summaries or plots are being computed, the most at once; "
                                "retry in a moment", time.perf_counter())
            answer.headers["retry-after"] = "1"
            return answer
        self.heavy_running += 1
        try:
            return await self.answer(fn)
        finally:
            self.heavy_running -= 1

    async def answer(self, fn: Callable[[], Any]) -> Response:
        """``fn()`` in a reader thread as JSON; a bad value is a 400 naming it, a missing entry a
        404, damage a 500, an unreadable store or archive a 503 — never a traceback."""
        start = time.perf_counter()
        try:
            value = await self.run(fn)
        except (ValueError, TypeError) as exc:  # ValidationError, InvalidTypeError among them
            return self.error(400, str(exc), start)
        except Busy as exc:
            answer = self.error(503, str(exc), start)
            answer.headers["retry-after"] = "5"
            return answer
        except KeyError as exc:
            return self.error(404, str(exc.args[0]) if exc.args else "not found", start)
        except CorruptStorageError as exc:
            return self.error(500, str(exc), start)
        except StorageError as exc:
            return self.error(503, str(exc), start)
        except JournalError as exc:  # e.g. cleared or archived during the read: try again
            return self.error(503, f"{exc}; try again", start)
        if isinstance(value, Response):
            value.headers["server-timing"] = _timing(start)
            return value
        body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        return Response(body, media_type="application/json", headers={"server-timing": _timing(start)})


def _hidden_paths(journal: SovereignJournal, reader: Reader) -> list[tuple[str, str]]:
    """The server's paths an error message must not show, longest first, with what stands for
    each: the store's location and the archive directories (as given and resolved)."""
    pairs: dict[str, str] = {}
    archives = [reader.history.get("archive")]
    try:
        archives.append(journal.get_archive_dir())
    except JournalError:
        pass
    for location, name in [(journal.path, "<store>"), *((a, "<archive>") for a in archives)]:
        if not location:
            continue
        text = str(location)
        pairs.setdefault(text, name)
        if "://" not in text:
            pairs.setdefault(os.path.realpath(text), name)
            pairs.setdefault(os.path.abspath(text), name)
    return sorted(((k, v) for k, v in pairs.items() if len(k) > 1), key=lambda kv: -len(kv[0]))


def _timing(start: float) -> str:
    return f"app;dur={(time.perf_counter() - start) * 1000:.2f}"


def _error(status: int, message: str, start: float) -> Response:
    return JSONResponse({"error": message}, status, headers={"server-timing": _timing(start)})


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


def _routes(console: _Console) -> list[Route | Mount]:
    reader = console.reader

    async def page(request: Request) -> Response:
        root = html.escape(request.scope.get("root_path", "").rstrip("/") + "/", quote=True)
        return Response(console.shell.replace("{root}", root), media_type="text/html; charset=utf-8")

    def json_route(path: str, method: Callable[..., Any], heavy: bool = False) -> Route:
        async def endpoint(request: Request) -> Response:
            run = console.heavy if heavy else console.answer
            return await run(partial(method, _params(request)))
        return Route(path, endpoint, methods=["GET", "HEAD"])

    async def counters(_request: Request) -> Response:
        return await console.answer(reader.counters)

    async def checkpoint(_request: Request) -> Response:
        def read() -> Response:
            note = reader.checkpoint()
            if note is None:
                raise KeyError("the journal has no signed checkpoint of its current log yet: sign one with "
                               "krepis checkpoint --key FILE")
            return Response(note.encode("utf-8"), media_type="text/plain; charset=utf-8")
        return await console.answer(read)

    async def leaf(request: Request) -> Response:
        def read() -> Response:
            index, data = reader.leaf(_params(request))
            return Response(data, media_type="application/octet-stream",
                            headers={"x-krepis-leaf-index": str(index)})
        return await console.answer(read)

    async def live(request: Request) -> Response:
        start = time.perf_counter()
        params = _params(request)
        try:
            filters = parse_filters(params)
            begin = _start(params, request.headers.get("last-event-id"))
        except (ValueError, TypeError) as exc:
            return console.error(400, str(exc), start)
        check = filters.matcher() if filters.any else None
        try:
            sub = await console.feed.subscribe(check, begin)
        except FeedFull as exc:
            return _error(503, str(exc), start)
        except JournalError as exc:
            return console.error(503, str(exc), start)
        return StreamingResponse(console.feed.stream(sub, request.is_disconnected),
                                 media_type="text/event-stream",
                                 headers={"x-accel-buffering": "no", "server-timing": _timing(start)})

    routes: list[Route | Mount] = [Route(p, page, methods=["GET", "HEAD"]) for p in _PAGES]
    routes += [
        json_route("/api/trail", reader.trail),
        json_route("/api/request", reader.request),
        json_route("/api/summary", reader.summary, heavy=True),
        json_route("/api/series", reader.series, heavy=True),
        json_route("/api/proof/inclusion", reader.inclusion),
        json_route("/api/proof/consistency", reader.consistency),
        Route("/api/counters", counters, methods=["GET", "HEAD"]),
        Route("/api/checkpoint", checkpoint, methods=["GET", "HEAD"]),
        Route("/api/leaf", leaf, methods=["GET", "HEAD"]),
        Route("/api/live", live, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return routes


def _start(params: dict[str, list[str]], last_event_id: str | None) -> int | None:
    """Where a live stream starts: after the last event a reconnecting tab saw, else ``from``."""
    if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit() \
            and len(last_event_id) < 19:
        return int(last_event_id) + 1
    values = params.get("from", [])
    if not values:
        return None
    text = values[0]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValueError(f"from={text[:40]!r} is not a sequence number")
    return int(text)


def create_app(
    journal: SovereignJournal | str | os.PathLike[str],
    *,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = None,
    archive: str | None = None,
    live_only: bool = False,
    limits: Limits | None = None,
) -> ConsoleApp:
    """The read-only console as an ASGI application, to run with any ASGI server or mount in
    an application (``app.mount("/audit", create_app(journal, token=...))``).

    ``journal`` is an open :class:`~krepis.SovereignJournal` (it stays the caller's: never
    closed here) or a storage location, opened now without creating anything (closed when
    the application's lifespan ends). ``token``: every request must carry it (a bearer header,
    or the session cookie a first ``?token=`` visit sets); ``allowed_hosts``: the ``Host``
    header values answered (e.g. ``["127.0.0.1:8080", "localhost:8080"]``; ``None``: any).
    ``archive``/``live_only`` choose the history read, as in :meth:`SovereignJournal.query`.
    Nothing in the application writes to the journal.
    """
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("token must be a non-empty str")
    owned = not isinstance(journal, SovereignJournal)
    if isinstance(journal, SovereignJournal):
        opened = journal
    else:
        opened = SovereignJournal(journal, create=False, flush="sync", retention="off")
    try:
        reader = Reader(opened, archive=archive, live_only=live_only, limits=limits)
        if not live_only:  # a missing archive, or another store's, is refused now, not per request
            opened.check_archive(archive)
        console = _Console(opened, reader, owned)
    except BaseException:
        if owned:
            opened.close()
        raise

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            console.close()

    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app = Starlette(routes=_routes(console), lifespan=lifespan)
    return ConsoleApp(app, console, token=token, allowed_hosts=hosts, max_query=reader.limits.max_query,
                      max_inflight=reader.limits.live_max + 64)


class ConsoleApp(_Guard):
    """The console's ASGI application (what :func:`create_app` returns): the guard in front of
    the routes. :meth:`close` ends the live streams (and closes the journal it opened)."""

    def __init__(self, app: ASGIApp, console: _Console, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.console = console

    @property
    def journal(self) -> SovereignJournal:
        return self.console.journal

    def close(self) -> None:
        """End every live stream; close the journal if the application opened it. Idempotent."""
        self.console.close()
