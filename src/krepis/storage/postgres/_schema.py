"""The PostgreSQL journal's tables and statements (format in ``docs/storage-format.md``), and
the small helpers around a connection: URL parameters, password redaction, lost connections."""

from __future__ import annotations

from typing import Any

from . import _url as _pgurl

__all__ = ["FORMAT_VERSION", "SCHEMA", "redact"]

FORMAT_VERSION = 2

_LOCK_ID = 0x6B726570  # advisory lock serializing schema creation ("krep")

_CONNECT_TIMEOUT = 10

_TABLES = ("krepis_entries", "krepis_log", "krepis_tree", "krepis_checkpoints", "krepis_ops",
           "krepis_stats")

_POOL_MAX = 8

SCHEMA = """
CREATE TABLE IF NOT EXISTS krepis_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS krepis_entries (
    seq bigint PRIMARY KEY CHECK (seq >= 0),
    timestamp bigint NOT NULL CHECK (timestamp >= 0),
    op_name text NOT NULL,
    request_id text NOT NULL,
    status smallint NOT NULL CHECK (status BETWEEN 1 AND 3),
    duration_us bigint CHECK (duration_us >= 0),
    error bytea,
    leaf bytea NOT NULL CHECK (length(leaf) = 32)
);
CREATE INDEX IF NOT EXISTS krepis_entries_time ON krepis_entries (timestamp, seq);
CREATE INDEX IF NOT EXISTS krepis_entries_request ON krepis_entries (request_id, status, timestamp, seq);
CREATE INDEX IF NOT EXISTS krepis_entries_op ON krepis_entries (op_name, status, timestamp, seq);
CREATE INDEX IF NOT EXISTS krepis_entries_status ON krepis_entries (status, timestamp, seq);
CREATE TABLE IF NOT EXISTS krepis_log (
    id int PRIMARY KEY CHECK (id = 1),
    next_seq bigint NOT NULL,
    first_seq bigint NOT NULL,
    epoch bigint NOT NULL,
    frontier bytea NOT NULL,
    entries bigint NOT NULL
);
INSERT INTO krepis_log VALUES (1, 0, 0, 0, '', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS krepis_tree (
    level smallint NOT NULL,
    idx bigint NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE IF NOT EXISTS krepis_checkpoints (
    epoch bigint NOT NULL,
    size bigint NOT NULL,
    origin text NOT NULL,
    note text NOT NULL,
    PRIMARY KEY (epoch, size, origin)
);
CREATE TABLE IF NOT EXISTS krepis_ops (
    name text PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS krepis_stats (
    name text PRIMARY KEY,
    value bigint NOT NULL CHECK (value >= 0)
);
"""

_LOCK_LOG = "SELECT next_seq, first_seq, epoch, frontier FROM krepis_log WHERE id = 1 FOR UPDATE"

_APPEND = """
WITH new_entries AS (
    INSERT INTO krepis_entries (seq, timestamp, op_name, request_id, status, duration_us, error, leaf)
    SELECT * FROM unnest(%(seq)s::bigint[], %(ts)s::bigint[], %(op)s::text[], %(rid)s::text[],
                         %(st)s::smallint[], %(dur)s::bigint[], %(err)s::bytea[], %(leaf)s::bytea[])
), nodes AS (
    INSERT INTO krepis_tree (level, idx, hash)
    SELECT * FROM unnest(%(nl)s::smallint[], %(ni)s::bigint[], %(nh)s::bytea[])
)
UPDATE krepis_log SET next_seq = %(next)s, frontier = %(frontier)s, entries = entries + %(n)s
WHERE id = 1
"""

_BUMP = """
INSERT INTO krepis_stats (name, value)
SELECT name, k FROM unnest(%(names)s::text[], %(ks)s::bigint[]) AS c(name, k) ORDER BY name
ON CONFLICT (name) DO UPDATE SET value = krepis_stats.value + EXCLUDED.value
RETURNING name, value
"""

_COLUMNS = "seq, timestamp, op_name, request_id, status, duration_us, error"

# Distinct op names in O(ops × log n): hop through the op index instead of reading it all.
_OP_NAMES = """
WITH RECURSIVE ops(name) AS (
    (SELECT op_name FROM krepis_entries ORDER BY op_name LIMIT 1)
    UNION ALL
    SELECT (SELECT op_name FROM krepis_entries WHERE op_name > ops.name ORDER BY op_name LIMIT 1)
    FROM ops WHERE ops.name IS NOT NULL
)
SELECT name FROM ops WHERE name IS NOT NULL
"""

def redact(url: str) -> str:
    """The URL without its password, for messages and ``journal.path`` (see ``_pgurl``)."""
    return _pgurl.redact(url)

def _params(url: str) -> dict[str, Any]:
    """libpq keyword parameters parsed by ``_pgurl`` (libpq never parses the URL itself)."""
    params: dict[str, Any] = dict(_pgurl.parse(url).params)
    params.setdefault("connect_timeout", str(_CONNECT_TIMEOUT))
    params.setdefault("application_name", "krepis")
    return params

def _connection_lost(exc: Any) -> bool:
    """The connection failed (no SQLSTATE: the client lost it; class 08: connection exception;
    57P: the server is shutting the session down), so a COMMIT may or may not have happened.
    Any other error was the server's answer to a statement: its transaction was rolled back."""
    state = getattr(exc, "sqlstate", None)
    return state is None or state.startswith(("08", "57P"))

def _first_line(exc: BaseException) -> str:
    """The first line of an engine's message, with every known password removed."""
    text = _pgurl.scrub(str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0]
