"""Data model shared by every layer: log entries, statuses, stats, the kernel context.

This module imports nothing else from krepis except the errors, so every layer may import it.
"""

from __future__ import annotations

import enum
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidTypeError, ValidationError

__all__ = [
    "MAX_ERROR_BYTES",
    "MAX_OP_NAME_BYTES",
    "MAX_REQUEST_ID_BYTES",
    "MAX_TIMESTAMP",
    "KernelContext",
    "LogStatus",
    "SovereignStats",
    "TransactionLog",
    "now_ms",
]

MAX_OP_NAME_BYTES = 200
MAX_REQUEST_ID_BYTES = 256
MAX_TIMESTAMP = 2**63 - 1
MAX_ERROR_BYTES = 16 * 1024


def now_ms() -> int:
    """The current Unix time in whole milliseconds."""
    return time.time_ns() // 1_000_000


class LogStatus(str, enum.Enum):
    """The state of an operation; serialized as exactly ``"Started"``, ``"Completed"`` or ``"Failed"``."""

    Started = "Started"
    Completed = "Completed"
    Failed = "Failed"

    def __str__(self) -> str:
        return self.value


def _shorten(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[:limit] + "…"


def check_text(what: str, value: object, max_bytes: int, *, nul: bool = False) -> bytes:
    """Validate a 1..max_bytes UTF-8 string field and return its encoding.

    A NUL character is refused unless ``nul=True``: every engine must accept exactly the same
    names and ids, and PostgreSQL's ``text`` cannot hold NUL. A ``str`` subclass is measured and
    encoded as the plain string it holds (its own ``encode``/``__len__`` are never called).
    """
    if type(value) is str and value.isascii() and 0 < len(value) <= max_bytes and (
            nul or "\0" not in value):
        return value.encode("ascii")  # the common case, checked cheaply
    if not isinstance(value, str):
        raise InvalidTypeError(f"{what} must be a str, got {type(value).__name__} {value!r:.80}")
    value = str.__str__(value)  # the plain str inside a subclass
    try:
        raw = str.encode(value, "utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{what} {_shorten(value)!r} is not valid UTF-8: {exc.reason}") from None
    if not nul and "\0" in value:
        raise ValidationError(
            f"{what} {_shorten(value)!r} contains a NUL character (\\x00), which no storage "
            "engine accepts in names and ids")
    if not raw:
        raise ValidationError(f"{what} must not be empty (1–{max_bytes} bytes of UTF-8)")
    if len(raw) > max_bytes:
        raise ValidationError(
            f"{what} {_shorten(value)!r} is {len(raw)} bytes of UTF-8; the limit is {max_bytes}"
        )
    return raw


def check_op_name(value: object) -> bytes:
    """Validate an op name (1–200 bytes of UTF-8) and return its encoding."""
    return check_text("op_name", value, MAX_OP_NAME_BYTES)


def check_timestamp(value: object) -> int:
    if type(value) is not int:  # bool is an int subclass and is refused too
        raise InvalidTypeError(
            f"timestamp must be an int (Unix milliseconds), got {type(value).__name__} {value!r:.80}"
        )
    if value < 0 or value > MAX_TIMESTAMP:
        raise ValidationError(f"timestamp {value} is outside 0 … 2**63-1 (Unix milliseconds)")
    return value


def check_limit(value: object, what: str = "limit") -> int:
    if type(value) is not int:
        raise InvalidTypeError(f"{what} must be an int, got {type(value).__name__} {value!r:.80}")
    if value < 0:
        raise ValidationError(f"{what} must be >= 0, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class TransactionLog:
    """One journal entry: what happened (``op_name``), when (``timestamp``, Unix ms), for which request.

    Immutable. Every field is validated on construction, so an instance that exists is always
    writable:

    * ``timestamp``: an ``int`` in ``0 … 2**63-1``;
    * ``op_name``: 1–200 bytes of UTF-8; ``request_id``: 1–256 bytes of UTF-8; neither may
      contain NUL (no engine stores it in a name or id, so every engine refuses it alike);
    * ``status``: a :class:`LogStatus`;
    * optional ``duration_us`` (int >= 0) and ``error`` (str, at most 16 KiB); they are stored
      only when set.

    ``seq`` is set on entries read back from a journal: the entry's store-wide sequence number,
    its position in append order (0 for the first entry ever appended; never reused). It is not
    part of the entry's data (not in :meth:`to_json`, ignored by ``==``) and is ignored on write.
    """

    timestamp: int
    op_name: str
    request_id: str
    status: LogStatus
    duration_us: int | None = None
    error: str | None = None
    seq: int | None = field(default=None, compare=False, kw_only=True)

    def __post_init__(self) -> None:
        ts, op, rid = self.timestamp, self.op_name, self.request_id
        if not (type(ts) is int and 0 <= ts <= MAX_TIMESTAMP):
            check_timestamp(ts)
        if not (type(op) is str and op.isascii() and 0 < len(op) <= MAX_OP_NAME_BYTES
                and "\0" not in op):
            check_op_name(op)
            if type(op) is not str:  # keep the plain string: a subclass could re-encode itself
                object.__setattr__(self, "op_name", str.__str__(op))
        if not (type(rid) is str and rid.isascii() and 0 < len(rid) <= MAX_REQUEST_ID_BYTES
                and "\0" not in rid):
            check_text("request_id", rid, MAX_REQUEST_ID_BYTES)
            if type(rid) is not str:
                object.__setattr__(self, "request_id", str.__str__(rid))
        if not isinstance(self.status, LogStatus):
            raise InvalidTypeError(
                f"status must be a LogStatus (Started, Completed or Failed), got "
                f"{type(self.status).__name__} {self.status!r:.80}; use e.g. LogStatus.Completed"
            )
        if self.duration_us is not None:
            if type(self.duration_us) is not int:
                raise InvalidTypeError(
                    f"duration_us must be an int or None, got {type(self.duration_us).__name__}"
                )
            if not 0 <= self.duration_us <= MAX_TIMESTAMP:
                raise ValidationError(f"duration_us {self.duration_us} is outside 0 … 2**63-1")
        if self.error is not None:
            check_text("error", self.error, MAX_ERROR_BYTES, nul=True)  # stored JSON-escaped
            if type(self.error) is not str:
                object.__setattr__(self, "error", str.__str__(self.error))

    @classmethod
    def now(
        cls,
        op_name: str,
        request_id: str,
        status: LogStatus,
        *,
        duration_us: int | None = None,
        error: str | None = None,
    ) -> TransactionLog:
        """An entry stamped with the current time."""
        return cls(now_ms(), op_name, request_id, status, duration_us, error)

    def to_json(self) -> str:
        """The stored form: compact JSON, fields in spec order, optional fields only when set.

        ``{"timestamp":1234567890,"op_name":"test_op","request_id":"req-001","status":"Completed"}``
        """
        return encode_log(self).decode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-ready dict with the same keys as :meth:`to_json`."""
        out: dict[str, Any] = {
            "timestamp": self.timestamp,
            "op_name": self.op_name,
            "request_id": self.request_id,
            "status": self.status.value,
        }
        if self.duration_us is not None:
            out["duration_us"] = self.duration_us
        if self.error is not None:
            out["error"] = self.error
        return out


_json_string = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_needs_escape = re.compile(r'[\x00-\x1f"\\]').search


def _dumps(text: str) -> str:
    """A JSON string literal as serde_json writes it (UTF-8 kept, control characters escaped)."""
    if _needs_escape(text) is None:
        return '"' + text + '"'
    return _json_string(text)


def encode_log(log: TransactionLog) -> bytes:
    """Serialize as serde_json would: compact, spec field order, non-ASCII kept as UTF-8."""
    text = '{"timestamp":%d,"op_name":%s,"request_id":%s,"status":"%s"' % (
        log.timestamp,
        _dumps(log.op_name),
        _dumps(log.request_id),
        log.status.value,
    )
    if log.duration_us is not None:
        text += ',"duration_us":%d' % log.duration_us
    if log.error is not None:
        text += ',"error":' + _dumps(log.error)
    return (text + "}").encode("utf-8")


_STATUS = {s.value: s for s in LogStatus}
_new = object.__new__
# Slot descriptors of the frozen dataclass: the fastest way to fill a new instance.
_set_ts = TransactionLog.__dict__["timestamp"].__set__
_set_op = TransactionLog.__dict__["op_name"].__set__
_set_rid = TransactionLog.__dict__["request_id"].__set__
_set_status = TransactionLog.__dict__["status"].__set__
_set_duration = TransactionLog.__dict__["duration_us"].__set__
_set_error = TransactionLog.__dict__["error"].__set__
_set_seq = TransactionLog.__dict__["seq"].__set__


def _from_dict(d: dict[str, Any]) -> TransactionLog:
    log = _new(TransactionLog)
    ts, op, rid = d["timestamp"], d["op_name"], d["request_id"]
    if type(ts) is not int or type(op) is not str or type(rid) is not str:
        raise TypeError("a field has the wrong type")
    _set_ts(log, ts)
    _set_op(log, op)
    _set_rid(log, rid)
    _set_status(log, _STATUS[d["status"]])
    _set_duration(log, d.get("duration_us"))
    _set_error(log, d.get("error"))
    _set_seq(log, None)
    return log


def make_log(
    timestamp: int,
    op_name: str,
    request_id: str,
    status: LogStatus,
    duration_us: int | None,
    error: str | None,
    seq: int | None,
) -> TransactionLog:
    """Build an entry from stored fields without validating them again (the storage decoders
    check what they read)."""
    log = _new(TransactionLog)
    _set_ts(log, timestamp)
    _set_op(log, op_name)
    _set_rid(log, request_id)
    _set_status(log, status)
    _set_duration(log, duration_us)
    _set_error(log, error)
    _set_seq(log, seq)
    return log


def decode_log(raw: bytes) -> TransactionLog:
    """Parse a stored value. Raises ``ValueError``/``KeyError``/``TypeError`` on malformed input.

    Stored values were validated when written, so fields are not validated again here.
    """
    return _from_dict(json.loads(raw))


def decode_logs(raws: list[bytes]) -> list[TransactionLog]:
    """Parse many stored values with one JSON parse (several times faster than one by one).

    Raises like :func:`decode_log`; the caller finds the bad value by decoding one by one.
    """
    return [_from_dict(d) for d in json.loads(b"[" + b",".join(raws) + b"]")]


@dataclass
class SovereignStats:
    """The kernel's counters, restored from storage at boot and updated only after durable writes."""

    js_ops_called: int = 0
    contexts_created: int = 0


@dataclass(frozen=True)
class KernelContext:
    """The request context a kernel creates at boot; every entry it journals carries ``request_id``."""

    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    tenant_id: str = "default"
    priority: int = 0
    is_turbo_mode: bool = False
    trace_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    timestamp: int = field(default_factory=now_ms)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy of the context."""
        return {
            "request_id": self.request_id,
            "tenant_id": self.tenant_id,
            "priority": self.priority,
            "is_turbo_mode": self.is_turbo_mode,
            "trace_id": self.trace_id,
            "timestamp": self.timestamp,
            "metadata": dict(self.metadata),
        }
