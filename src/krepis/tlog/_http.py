"""A small HTTP client for talking to witnesses and following logs: one request, bounded in time
and size, whatever the server does.

The deadline is a deadline: a watchdog shuts the socket down when it passes, so a server that
trickles its answer a byte at a time cannot hold the caller longer. The answer is read up to a
limit (more is an error, never a truncation). Redirects are not followed. ``http`` and
``https`` URLs (certificates checked by the system's trust store).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import JournalError

__all__ = ["HTTPError", "Response", "join", "reader", "request"]


class HTTPError(JournalError):
    """The request could not be made or answered in time, or (from :func:`reader`) was answered
    with another status than 200 — then ``status`` is that status. The message names the URL."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes


def _split(url: str) -> tuple[str, str, int | None, str]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HTTPError(f"{url!r:.200} is not an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:
        raise HTTPError(f"{url!r:.200} has a bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme, parts.hostname, port, path


def join(prefix: str, path: str) -> str:
    """``prefix`` (a URL, with or without a trailing slash) followed by ``path`` (``/…``)."""
    return prefix.rstrip("/") + path


def request(url: str, *, method: str = "GET", body: bytes | None = None, timeout: float = 10.0,
            limit: int = 1 << 20, content_type: str = "text/plain; charset=utf-8") -> Response:
    """Send one request and read the whole answer within ``timeout`` seconds (connecting
    included); a 200 answer longer than ``limit`` bytes is an error (of any other answer, the
    first 4 KiB at most are read). A 200 answer is returned only whole: one that ends before
    its ``Content-Length``, or is still arriving at the deadline, is an error, never a shorter
    body. Raises :class:`HTTPError`, whose message names the method and URL (and at most 200
    characters of what a server sent in place of an answer)."""
    scheme, host, port, path = _split(url)
    deadline = time.monotonic() + timeout
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    expired = threading.Event()

    def watchdog() -> None:
        expired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    try:
        headers = {"User-Agent": "krepis", "Accept-Encoding": "identity"}
        if body is not None:
            headers["Content-Type"] = content_type
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        if reply.status != 200:  # an error's text is only read for the message: the start will do
            limit, cut = min(limit, 4096), True
        else:
            cut = False
        length = reply.getheader("Content-Length")
        if not cut and length is not None and length.isdigit() and int(length) > limit:
            raise HTTPError(f"{method} {url}: the answer is {length} bytes, more than the {limit} read")
        chunks: list[bytes] = []
        total = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = reply.read1(65536)
            if not chunk:  # the end, or the watchdog's shutdown, or the server gone mid-answer
                if expired.is_set():
                    raise TimeoutError
                if not cut and length is not None and length.isdigit() and total < int(length):
                    raise HTTPError(f"{method} {url}: the answer ended after {total} of its {length} bytes")
                break
            total += len(chunk)
            if total > limit:
                if cut:
                    chunks.append(chunk[:limit - total])
                    break
                raise HTTPError(f"{method} {url}: the answer is more than the {limit} bytes read")
            chunks.append(chunk)
        return Response(reply.status, reply.getheader("Content-Type") or "", b"".join(chunks))
    except HTTPError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, TimeoutError):
            raise HTTPError(f"{method} {url}: no whole answer within {timeout:.1f} s") from None
        reason = getattr(exc, "strerror", None) or str(exc).strip()[:200] or type(exc).__name__
        raise HTTPError(f"{method} {url}: {reason}") from None
    finally:
        timer.cancel()
        conn.close()


def reader(prefix: str, timeout: float = 30.0) -> Callable[[str, int], bytes]:
    """``read(path, limit)``: the body of ``GET <prefix>/<path>`` (at most ``limit`` bytes) when
    the answer is a 200; anything else raises :class:`HTTPError` naming the URL."""
    _split(prefix)

    def read(rel: str, limit: int) -> bytes:
        url = join(prefix, "/" + rel)
        reply = request(url, timeout=timeout, limit=limit)
        if reply.status != 200:
            said = reply.body[:200].decode("utf-8", "replace").strip().split("\n")[0]
            raise HTTPError(f"GET {url}: {reply.status}" + (f" ({said})" if said else ""), reply.status)
        return reply.body

    return read
