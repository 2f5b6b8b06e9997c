"""``MANIFEST.json``: reading it (every field checked), writing it (format 2: with its own
checksum and each segment's index checksum). See ``docs/archive.md``.

Guarantees: :func:`parse_manifest` returns a manifest whose every field has the type and range
the format gives it — names that are exactly the names the format derives (so never a path,
``..``, an absolute name or a NUL), segments that follow each other from bundle 0 and add up to
the log's count, one entry per epoch — or raises :class:`CorruptStorageError` naming the file and
the field. A format-2 manifest whose bytes do not match its checksum is refused the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from .._errors import CorruptStorageError
from .._model import MAX_TIMESTAMP
from ._format import _TRAILER, FORMAT, MAX_SEGMENT_BUNDLES, SEGMENT_MAGIC, VERSION, WIDTH, segment_name

MANIFEST = "MANIFEST.json"

#: the versions this krepis reads (it writes :data:`VERSION`)
READABLE = (1, 2)

#: a manifest larger than this is refused (one segment takes ~350 bytes)
MAX_MANIFEST_BYTES = 256 << 20

#: a dictionary file larger than this is refused (krepis trains 16 KiB ones)
MAX_DICT_BYTES = 1 << 20

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_HEX16 = re.compile(r"[0-9a-f]{16}\Z")
_CHECKSUM_HEAD = b'{"checksum":"'
_CHECKSUM_END = len(_CHECKSUM_HEAD) + 64 + 2   # the member and its ','
_MAX_SEQ = 2**63


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r:.40} appears twice in one object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Fields:
    """Checks of one manifest's fields, each failure a CorruptStorageError naming the field."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, field: str, rule: str) -> CorruptStorageError:
        return CorruptStorageError(f"{self.file}: {field} {rule}", self.file)

    def obj(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, not {_kind(value)}")
        return value

    def member(self, obj: dict[str, Any], key: str, field: str) -> Any:
        if key not in obj:
            raise self.fail(f"{field}.{key}" if field else key, "is missing")
        return obj[key]

    def int_(self, obj: dict[str, Any], key: str, field: str, lo: int, hi: int) -> int:
        value = self.member(obj, key, field)
        name = f"{field}.{key}"
        if type(value) is not int:
            raise self.fail(name, f"must be a whole number, not {_kind(value)}")
        if not lo <= value <= hi:
            raise self.fail(name, f"is {_short(value)}; it must be in {lo} … {hi}")
        return value

    def hex_(self, obj: dict[str, Any], key: str, field: str, pattern: re.Pattern[str] = _HEX64) -> str:
        value = self.member(obj, key, field)
        if not isinstance(value, str) or not pattern.match(value):
            raise self.fail(f"{field}.{key}", f"must be {'64' if pattern is _HEX64 else '16'} lowercase hex "
                            f"digits, not {_short(value)}")
        return value


def _kind(value: Any) -> str:
    kinds = {bool: "true/false", str: "a string", list: "a list", dict: "an object", int: "a whole number",
             float: "a number"}
    return "null" if value is None else kinds.get(type(value), "?")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def parse_manifest(raw: bytes, file: str) -> dict[str, Any]:
    """The manifest in ``raw`` (the bytes of ``file``), every field checked."""
    try:
        data = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
        raise CorruptStorageError(f"{file}: not a krepis archive manifest (not JSON: {exc})", file) from None
    f = _Fields(file)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CorruptStorageError(f"{file}: not a krepis archive manifest (no \"format\": \"{FORMAT}\")",
                                  file)
    version = data.get("version")
    if type(version) is not int or version not in READABLE:
        raise CorruptStorageError(f"{file}: archive format version {_short(version)}; this krepis reads "
                                  f"versions {', '.join(map(str, READABLE))}", file)
    if version >= 2:
        if not raw.startswith(_CHECKSUM_HEAD) or raw[_CHECKSUM_END - 2:_CHECKSUM_END] != b'",':
            raise f.fail("checksum", "is missing or not the first member (the manifest was edited)")
        want = raw[len(_CHECKSUM_HEAD):_CHECKSUM_END - 2].decode("ascii", "replace")
        if hashlib.sha256(b"{" + raw[_CHECKSUM_END:]).hexdigest() != want:
            raise CorruptStorageError(f"{file} does not match its checksum: it is damaged or was edited",
                                      file)
    store = f.obj(f.member(data, "store", ""), "store")
    if not isinstance(f.member(store, "location", "store"), str):
        raise f.fail("store.location", "must be a string")
    dictionaries = f.obj(f.member(data, "dictionaries", ""), "dictionaries")
    for ident, meta in dictionaries.items():
        field = f"dictionaries[{_short(ident)}]"
        if not _HEX16.match(ident):
            raise f.fail(field, "is not named by 16 lowercase hex digits")
        f.obj(meta, field)
        if f.member(meta, "file", field) != f"dict-{ident}.zdict":
            raise f.fail(f"{field}.file", f"must be 'dict-{ident}.zdict', not {_short(meta['file'])}")
        if not f.hex_(meta, "sha256", field).startswith(ident):
            raise f.fail(f"{field}.sha256", "must begin with the dictionary's name")
        f.int_(meta, "bytes", field, 1, MAX_DICT_BYTES)
        f.int_(meta, "samples", field, 0, _MAX_SEQ)
        created = f.member(meta, "created", field)
        if type(created) not in (int, float) or not math.isfinite(created):
            raise f.fail(f"{field}.created", f"must be a number, not {_short(created)}")
    logs = f.member(data, "logs", "")
    if not isinstance(logs, list):
        raise f.fail("logs", f"must be a list, not {_kind(logs)}")
    epochs: set[int] = set()
    for n, log in enumerate(logs):
        _check_log(f, f.obj(log, f"logs[{n}]"), f"logs[{n}]", version, dictionaries)
        if log["epoch"] in epochs:
            raise f.fail(f"logs[{n}].epoch", f"is {log['epoch']}, which an earlier log has too")
        epochs.add(log["epoch"])
    return data


def _check_log(f: _Fields, log: dict[str, Any], field: str, version: int,
               dictionaries: dict[str, Any]) -> None:
    epoch = f.int_(log, "epoch", field, 0, _MAX_SEQ - 1)
    first_seq = f.int_(log, "first_seq", field, 0, _MAX_SEQ - 1)
    bundles = f.int_(log, "bundles", field, 0, (_MAX_SEQ - 1 - first_seq) // WIDTH)
    last_hash = f.member(log, "last_hash", field)
    if bundles == 0:
        if last_hash is not None:
            raise f.fail(f"{field}.last_hash", "must be null when no bundle is archived")
    else:
        f.hex_(log, "last_hash", field)
    segments = f.member(log, "segments", field)
    if not isinstance(segments, list):
        raise f.fail(f"{field}.segments", f"must be a list, not {_kind(segments)}")
    expect = 0
    for i, seg in enumerate(segments):
        where = f"{field}.segments[{i}]"
        f.obj(seg, where)
        first = f.int_(seg, "first_bundle", where, 0, bundles)
        if first != expect:
            raise f.fail(f"{where}.first_bundle", f"is {first}; the segments of log {epoch} must follow each "
                         f"other from bundle 0 (expected {expect}): segments overlap or one is missing")
        count = f.int_(seg, "bundles", where, 1, MAX_SEGMENT_BUNDLES)
        name = segment_name(epoch, first)
        if f.member(seg, "file", where) != name:
            raise f.fail(f"{where}.file", f"must be {name!r} (log {epoch}, bundle {first}), not "
                         f"{_short(seg['file'])}")
        f.int_(seg, "bytes", where, len(SEGMENT_MAGIC) + _TRAILER.size, _MAX_SEQ)
        f.hex_(seg, "sha256", where)
        if version >= 2:
            f.hex_(seg, "index_sha256", where)
        ident = f.member(seg, "dictionary", where)
        if ident is not None and (not isinstance(ident, str) or ident not in dictionaries):
            raise f.fail(f"{where}.dictionary", f"is {_short(ident)}, not a dictionary the manifest lists")
        lo = f.int_(seg, "min_ts", where, 0, MAX_TIMESTAMP)
        f.int_(seg, "max_ts", where, lo, MAX_TIMESTAMP)
        expect += count
    if expect != bundles:
        raise f.fail(f"{field}.bundles", f"is {bundles}; its segments hold {expect}")


def new_manifest(location: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "store": {"location": location}, "dictionaries": {},
            "logs": []}


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest's bytes (format :data:`VERSION`): the checksum member first, then the rest as
    compact sorted JSON; the checksum is the sha256 of the bytes without that member."""
    body = dict(manifest)
    body.pop("checksum", None)
    body["version"] = VERSION
    text = json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode("ascii")
    return _CHECKSUM_HEAD + hashlib.sha256(text).hexdigest().encode() + b'",' + text[1:]


def log_of(manifest: dict[str, Any] | None, epoch: int) -> dict[str, Any] | None:
    if manifest is None:
        return None
    for log in manifest["logs"]:
        if log["epoch"] == epoch:
            return log  # type: ignore[no-any-return]
    return None
