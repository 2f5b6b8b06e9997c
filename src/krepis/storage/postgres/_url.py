"""``postgresql://`` URLs: parsed here, never by libpq, so that a password is never shown.

Guarantees (tested with a corpus of passwords in ``tests/test_safety_secrets.py``):

* A password may hold any character, percent-encoded or not — ``%``, ``/``, ``?``, ``#``, ``:``,
  ``@``, spaces. The user information ends at the ``@`` after which a valid host list follows
  (``host[:port][,host[:port]…]``, then ``/dbname`` without ``@``, then ``?key=value&…`` with
  libpq's keywords); ``%XX`` is decoded, any other ``%`` is kept as it is. If two ``@`` qualify
  (a password like ``x@y/z?sslmode=disable``), the URL is refused as ambiguous rather than
  guessed, so no part of a password is ever taken for a host name and sent to DNS.
* The connection goes to libpq as keyword parameters, not as a URL.
* :func:`redact` gives ``postgresql://user@host:port/dbname`` — no password, no query; a host
  given without a port is shown with libpq's default, 5432.
* Every password (and ``password=``/``sslpassword=`` query value) parsed in this process is
  remembered, and :func:`scrub` removes each from any text: krepis passes every message that
  comes from libpq or psycopg through it, and a logging filter does the same for psycopg's log
  records. Secrets shorter than 3 characters are not scrubbed (they would garble every message
  and protect nothing).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

__all__ = ["ParsedUrl", "UrlError", "build", "is_postgres_url", "parse", "redact", "scrub"]

SCHEMES = ("postgresql://", "postgres://")

# libpq's connection keywords (PostgreSQL 17); a query key must be one of them.
_KEYWORDS = frozenset("""
host hostaddr port dbname user password passfile require_auth channel_binding connect_timeout
client_encoding options application_name fallback_application_name keepalives keepalives_idle
keepalives_interval keepalives_count tcp_user_timeout replication gssencmode sslmode
sslnegotiation requiressl sslcompression sslcert sslkey sslcertmode sslpassword sslrootcert sslcrl
sslcrldir sslsni requirepeer ssl_min_protocol_version ssl_max_protocol_version krbsrvname gsslib
gssdelegation service target_session_attrs load_balance_hosts min_protocol_version
max_protocol_version
""".split())
_SECRET_KEYS = ("password", "sslpassword")

_HOST = r"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9._~-]+)?\]|[A-Za-z0-9._~%-]*)(?::[0-9]*)?"
_KEY = "(?:" + "|".join(sorted(_KEYWORDS, key=len, reverse=True)) + ")"
@functools.cache
def _rest() -> re.Pattern[str]:
    """The URL's part after the credentials (compiled on first use: opening an LMDB store, which
    only asks whether a location is a URL, need not pay for it)."""
    return re.compile(
        rf"(?P<hosts>{_HOST}(?:,{_HOST})*)"
        r"(?:/(?P<db>[^?@]*))?"
        rf"(?:\?(?P<query>{_KEY}=[^&]*(?:&{_KEY}=[^&]*)*)?)?\Z")


@functools.cache
def _rest_any_key() -> re.Pattern[str]:
    """:func:`_rest` with any query key: tells an unknown parameter name from a bad host part."""
    return re.compile(_rest().pattern.replace(_KEY, "[^&=]+"))


def _refuse_unparsable(rest: str, starts: list[int]) -> UrlError:
    """The error for a URL no reading of which parses; it names the likely fault, never a part.
    ``starts``: where a host part may begin after an ``@`` that can end the user information."""
    if _rest().match(rest):  # it parses without user information: its '@' are in query values
        return UrlError("invalid PostgreSQL URL (not shown, it may contain a password): an '@' in "
                        "a query value must be percent-encoded (%40)")
    if any(_rest_any_key().match(rest, start) for start in (0, *starts)):
        return UrlError("invalid PostgreSQL URL (not shown, it may contain a password): a query "
                        "parameter is not one of libpq's connection keywords (such as sslmode, "
                        "connect_timeout, application_name)")
    return UrlError("invalid PostgreSQL URL (not shown, it may contain a password): no valid "
                    "host part after the '@'; expected postgresql://user:password@host:port/"
                    "dbname?key=value")


_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_MIN_SECRET = 3


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


@dataclass(frozen=True)
class ParsedUrl:
    """A parsed URL. ``params`` are libpq keywords (the password among them); the repr hides it."""

    params: dict[str, str] = field(repr=False)
    redacted: str

    def __repr__(self) -> str:
        return f"ParsedUrl({self.redacted!r})"


class UrlError(ValueError):
    """The URL cannot be parsed. The message never quotes the URL (it may hold a password)."""


def _remember(*secrets: str) -> None:
    with _secrets_lock:
        for s in secrets:
            if len(s) >= _MIN_SECRET:
                _secrets.add(s)


def scrub(text: str) -> str:
    """``text`` with every password this process has parsed replaced by ``***``."""
    if not _secrets:
        return text
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return text


def _split_userinfo(rest: str) -> tuple[str | None, re.Match[str]]:
    """Find where the user information ends. Every ``@`` after which a valid host part follows
    is a candidate, unless what precedes it cannot be user information (no ``:`` introducing a
    password, yet ``@``, ``/`` or ``?`` in it). One candidate: taken. Several: the URL is
    ambiguous and refused (fail closed: guessing could send part of a password to a host)."""
    if "@" not in rest:
        m = _rest().match(rest)
        if m is None:
            raise _refuse_unparsable(rest, [0])
        return None, m
    found: list[tuple[str, re.Match[str]]] = []
    candidates: list[int] = []
    at = -1
    while (at := rest.find("@", at + 1)) != -1:
        userinfo = rest[:at]
        if ":" not in userinfo and any(c in userinfo for c in "@/?"):
            continue
        candidates.append(at + 1)
        m = _rest().match(rest, at + 1)
        if m is not None:
            found.append((userinfo, m))
    if len(found) == 1:
        return found[0]
    if found:
        raise UrlError("ambiguous PostgreSQL URL (not shown, it may contain a password): it can "
                       "be read with more than one host; percent-encode '@' in the password "
                       "(%40) and in query values")
    raise _refuse_unparsable(rest, candidates)


def _host_port(item: str) -> tuple[str, str]:
    if item.startswith("["):
        end = item.index("]")
        host, tail = item[1:end], item[end + 1:]
        host = unquote(host)
    else:
        host, _, port = item.partition(":")
        return unquote(host), port
    return host, tail[1:] if tail.startswith(":") else ""


def parse(url: str) -> ParsedUrl:
    """Parse a ``postgresql://`` URL; raise :class:`UrlError` (without the URL) if it is invalid."""
    scheme = next((s for s in SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise UrlError("not a postgresql:// URL")
    userinfo, m = _split_userinfo(url[len(scheme):])
    params: dict[str, str] = {}
    raw_secrets: list[str] = []
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if user:
            params["user"] = unquote(user)
        if colon:
            params["password"] = unquote(password)
            raw_secrets += [password, params["password"]]
    pairs = [_host_port(item) for item in m["hosts"].split(",")]
    if any(h for h, _ in pairs):
        params["host"] = ",".join(h for h, _ in pairs)
    if any(p for _, p in pairs):
        params["port"] = ",".join(p for _, p in pairs)
    if m["db"]:
        params["dbname"] = unquote(m["db"])
    for item in (m["query"] or "").split("&") if m["query"] else ():
        key, _, value = item.partition("=")
        params[key] = unquote(value)
        if key in _SECRET_KEYS:
            raw_secrets += [value, params[key]]
    _remember(*raw_secrets)
    return ParsedUrl(params, _redacted(params))


def _redacted(params: dict[str, str]) -> str:
    hosts = (params.get("host") or "localhost").split(",")
    ports = [port or "5432" for port in (params.get("port") or "").split(",")]  # "" is the default
    if len(ports) != len(hosts):
        ports = [ports[0]] * len(hosts)
    shown = ",".join(f"[{h}]:{p}" if ":" in h else f"{quote(h, safe='')}:{p}"
                     for h, p in zip(hosts, ports, strict=True))
    user = params.get("user")
    db = params.get("dbname") or ""
    return f"postgresql://{quote(user, safe='') + '@' if user else ''}{shown}/{quote(db, safe='')}"


def redact(url: str) -> str:
    """The URL without its password (or a placeholder if it cannot be parsed)."""
    try:
        return parse(url).redacted
    except UrlError:
        return "postgresql://(unparsable URL)"


def build(params: dict[str, str]) -> str:
    """A canonical URL for ``params``, every part percent-encoded (for handing on)."""
    p = dict(params)
    auth = ""
    if "user" in p or "password" in p:
        auth = quote(p.pop("user", ""), safe="")
        if "password" in p:
            auth += ":" + quote(p.pop("password"), safe="")
        auth += "@"
    hosts = p.pop("host", "").split(",")
    ports = p.pop("port", "").split(",")
    if len(ports) != len(hosts):
        ports = [ports[0]] * len(hosts)
    hostlist = ",".join((f"[{h}]" if ":" in h else quote(h, safe="")) + (f":{pt}" if pt else "")
                        for h, pt in zip(hosts, ports, strict=True))
    db = quote(p.pop("dbname", ""), safe="")
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in p.items())
    return f"postgresql://{auth}{hostlist}/{db}" + (f"?{query}" if query else "")


class _ScrubFilter(logging.Filter):
    """Removes remembered passwords from psycopg's log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            text = record.getMessage()
            clean = scrub(text)
            if clean != text:
                record.msg, record.args = clean, None
        return True


_FILTER = _ScrubFilter()


def install_log_filter() -> None:
    """Scrub psycopg's and psycopg_pool's log records (idempotent)."""
    for name in ("psycopg", "psycopg.pool"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
