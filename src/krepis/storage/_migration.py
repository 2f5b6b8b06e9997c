"""``krepis migrate``: convert an LMDB store of storage format 1 (krepis 0.1), 2 or 3 to the
current format (4), and a PostgreSQL journal of format 1 to format 2.

A migration never leaves a half-converted store: after a crash at any point (SIGKILL included)
the store is either the untouched old store or the complete new one.

* **LMDB, format 1**: the new store is built in ``<store>/.migrate/`` and made durable, then its
  ``data.mdb`` replaces the old one with one atomic ``rename`` (and the directory is fsynced).
  The old ``data.mdb`` is never written. The store must not be open anywhere else meanwhile:
  the migration holds the directory lock and LMDB's exclusive lock on ``lock.mdb``, and refuses
  to start when another process has the store open.
* **LMDB, format 2**: the databases stay; one durable commit sets the version, and the first
  open creates the commit log (``commit.log``) from the store as it is. Same locks.
* **LMDB, format 3**: the databases stay too; a store closed cleanly gets the version in one
  durable commit and its old commit log removed; a store whose writer died is recovered as
  format 3 recovers, on a copy that is verified, made durable and renamed over ``data.mdb``
  (``storage/lmdb/_migrate3.py``). Same locks.
* **PostgreSQL**: one transaction creates the format-2 tables, copies every row, builds the
  Merkle tree, drops the format-1 tables and sets the format; it commits entirely or not at all.

Entries keep every field and their relative append order (format 1's sequence), and get new
sequence numbers 0, 1, 2, … in that order; counters are copied exactly.

**Every row is checked by the rules of a write** before anything is swapped in: an entry must be
a JSON object of exactly the fields of a ``TransactionLog`` (no field twice, none unknown) whose
values pass its validation (``timestamp`` and ``duration_us`` in 0 … 2**63-1, ``op_name`` 1–200
bytes and ``request_id`` 1–256 bytes of UTF-8 without NUL, a known ``status``, a non-empty
``error`` of at most 16 KiB), and must agree with the columns or key format 1 stored beside it; a
counter name is an op name. An entry whose JSON is not in the canonical form (spaces, another
key order, escaped characters) is carried with every field as it is and stored in canonical form, the
form the Merkle tree hashes. Anything else stops the migration with a
:class:`~krepis.CorruptStorageError` naming the row (its format-1 sequence number, or the counter)
and what is wrong, and nothing is changed. The new store is made durable and passes ``verify()``
(and holds exactly the entries and counters read) before it replaces the old one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import JournalError
from .._model import LogStatus, TransactionLog, check_op_name

__all__ = ["MigrationResult", "Progress", "counter_name", "format1_entry"]

Progress = Callable[[int, int], None]  # (entries done, entries in all)

@dataclass(frozen=True)
class MigrationResult:
    """What a migration did. ``from_format == to_format`` means there was nothing to do."""

    location: str
    from_format: int
    to_format: int
    entries: int
    counters: int


_FIELDS = ("timestamp", "op_name", "request_id", "status", "duration_us", "error")

_REQUIRED = frozenset(_FIELDS[:4])

_STATUSES = {s.value: s for s in LogStatus}

# what else json.loads can return
_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"field {key!r:.40} appears twice")
        out[key] = value
    return out


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def format1_entry(raw: bytes | str) -> TransactionLog:
    """The entry a format-1 row holds, checked by the rules of a write; a ``ValueError`` saying
    what is wrong otherwise (never anything else)."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"it is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except RecursionError:
        raise ValueError("it is not JSON (nested too deeply)") from None
    except ValueError as exc:
        raise ValueError(f"it is not valid JSON ({exc})") from None
    if type(value) is not dict:
        raise ValueError(f"it is a JSON {_JSON_KIND[type(value)]}, not an object")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ValueError(f"it has the field(s) {', '.join(repr(k)[:60] for k in unknown[:3])}, which "
                         "a TransactionLog does not have (they would be lost)")
    missing = [k for k in _FIELDS if k in _REQUIRED and k not in value]
    if missing:
        raise ValueError(f"it has no {', '.join(missing)}")
    status = value["status"]
    if type(status) is not str or status not in _STATUSES:
        raise ValueError(f"its status {status!r:.60} is not Started, Completed or Failed")
    try:
        return TransactionLog(value["timestamp"], value["op_name"], value["request_id"],
                              _STATUSES[status], value.get("duration_us"), value.get("error"))
    except JournalError as exc:  # ValidationError, InvalidTypeError
        raise ValueError(str(exc)) from None


def counter_name(raw: bytes | str) -> str:
    """A format-1 counter's name, checked as an op name (1–200 bytes of UTF-8, no NUL); a
    ``ValueError`` saying what is wrong otherwise."""
    try:
        name = raw if isinstance(raw, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"its name {raw!r:.60} is not valid UTF-8 (byte {exc.start})") from None
    try:
        check_op_name(name)
    except JournalError as exc:
        raise ValueError(str(exc).replace("op_name", "its name", 1)) from None
    return name
