"""``MANIFEST.json`` (``krepis.archive._manifest``) rule by rule: every field docs/archive.md
defines, at and past its limits — each refusal a ``CorruptStorageError`` whose text names the
file, the field and the rule — and the bytes written (checked against the format's own
definition of the checksum)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from krepis import CorruptStorageError
from krepis.archive._manifest import encode_manifest, log_of, new_manifest, parse_manifest
from test_archive_safety import seal

FILE = "/srv/cold/MANIFEST.json"
D = "0123456789abcdef"
MAX = 2**63 - 1


def good() -> dict[str, Any]:
    return {
        "format": "krepis-archive", "version": 2, "store": {"location": "/srv/s"},
        "dictionaries": {D: {"file": f"dict-{D}.zdict", "sha256": D + "0" * 48, "bytes": 16384,
                             "created": 1767225600.5, "samples": 16384}},
        "logs": [
            {"epoch": 0, "first_seq": 0, "bundles": 3, "last_hash": "ab" * 32, "segments": [
                {"file": "log000000-000000000000.kseg", "first_bundle": 0, "bundles": 2, "bytes": 1000,
                 "sha256": "cd" * 32, "index_sha256": "ef" * 32, "dictionary": D, "min_ts": 5, "max_ts": 10},
                {"file": "log000000-000000000002.kseg", "first_bundle": 2, "bundles": 1, "bytes": 28,
                 "sha256": "12" * 32, "index_sha256": "34" * 32, "dictionary": None, "min_ts": 7,
                 "max_ts": 7}]},
            {"epoch": 3, "first_seq": 1000, "bundles": 0, "last_hash": None, "segments": []}]}


def parse(data: dict[str, Any], sealed: bool = True) -> dict[str, Any]:
    """The manifest parsed, without its checksum member."""
    parsed = parse_manifest(seal(data, sealed), FILE)
    if sealed:
        assert len(parsed.pop("checksum")) == 64
    return parsed


def short(value: object) -> str:
    """How a message shows a value: its repr, cut to 60 characters and '…'."""
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def refused(raw: bytes, message: str) -> None:
    with pytest.raises(CorruptStorageError) as info:
        parse_manifest(raw, FILE)
    assert str(info.value) == message
    assert info.value.path == FILE


def test_a_good_manifest_is_returned_as_it_is() -> None:
    assert parse(good()) == good()
    v1 = good()
    v1["version"] = 1
    for log in v1["logs"]:
        for seg in log["segments"]:
            del seg["index_sha256"]
    assert parse(v1, sealed=False) == v1  # format 1: no checksum, no index checksums
    assert parse(v1, sealed=True)["version"] == 1


# -- the file as a whole ------------------------------------------------------------------------
@pytest.mark.parametrize("raw,why", [
    (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b'{"a":1,"a":2}', "the key 'a' appears twice in one object"),
    (b'{"s":{"' + b"k" * 50 + b'":1,"' + b"k" * 50 + b'":2}}',
     "the key 'kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk appears twice in one object"),
    (b'{"x":NaN}', "NaN is not a JSON number"),
    (b'{"x":-Infinity}', "-Infinity is not a JSON number"),
    (b'{"x":Infinity}', "Infinity is not a JSON number"),
])
def test_what_is_not_json_is_refused(raw: bytes, why: str) -> None:
    refused(raw, f"{FILE}: not a krepis archive manifest (not JSON: {why})")


def test_bytes_that_are_not_utf8_or_nest_too_deep_are_refused() -> None:
    for raw in (b'{"x":"\xff"}', b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises(CorruptStorageError) as info:
            parse_manifest(raw, FILE)
        assert str(info.value).startswith(f"{FILE}: not a krepis archive manifest (not JSON: ")
        assert info.value.path == FILE


@pytest.mark.parametrize("raw", [b"[]", b'"krepis-archive"', b"{}", b'{"format":"krepis-archiv"}',
                                 b'{"format":null}'])
def test_what_is_not_an_archive_manifest_is_refused(raw: bytes) -> None:
    refused(raw, f'{FILE}: not a krepis archive manifest (no "format": "krepis-archive")')


@pytest.mark.parametrize("version,shown", [(3, "3"), (0, "0"), ("2", "'2'"), (True, "True"), (2.0, "2.0"),
                                           (None, "None")])
def test_a_version_this_krepis_does_not_read_is_refused(version: object, shown: str) -> None:
    data = good()
    data["version"] = version
    refused(seal(data, False), f"{FILE}: archive format version {shown}; this krepis reads versions 1, 2")
    del data["version"]
    refused(seal(data, False), f"{FILE}: archive format version None; this krepis reads versions 1, 2")


def test_format_2_without_its_checksum_first_is_refused() -> None:
    body = seal(good(), sealed=False)
    sealed = seal(good())
    moved = json.loads(sealed)
    for raw in (body, b'{"checksum":"' + b"0" * 63 + b'","a":1,' + body[1:],
                b'{"checksum":"' + b"0" * 65 + b'",' + body[1:],
                b'{"checksum":"' + b"0" * 64 + b'"  ,' + body[1:],
                json.dumps({"a": 1, **moved}, separators=(",", ":")).encode()):
        refused(raw, f"{FILE}: checksum is missing or not the first member (the manifest was edited)")


def test_format_2_not_matching_its_checksum_is_refused() -> None:
    sealed = seal(good())
    for raw in (sealed.replace(b'"/srv/s"', b'"/srv/t"'),                       # the body edited
                sealed[:13] + (b"0" if sealed[13:14] != b"0" else b"1") + sealed[14:],  # the checksum
                sealed[:13] + sealed[13:77].upper() + sealed[77:],              # (in upper case)
                sealed[:13] + "é".encode() + sealed[15:]):                      # (not ASCII)
        refused(raw, f"{FILE} does not match its checksum: it is damaged or was edited")


# -- the fields ---------------------------------------------------------------------------------
def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A change at ``path`` (dots and [n]; value ``...``: delete it)."""
    def change(data: dict[str, Any]) -> None:
        keys: list[Any] = []
        for part in path.replace("[", ".[").split("."):
            keys.append(int(part[1:-1]) if part.startswith("[") else part)
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        if value is ...:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return change


FIELD_CASES: list[tuple[str, object, str]] = [
    ("store", ..., "store is missing"),
    ("store", [], "store must be an object, not a list"),
    ("store", "/srv/s", "store must be an object, not a string"),
    ("store.location", ..., "store.location is missing"),
    ("store.location", 5, "store.location must be a string"),
    ("store.location", None, "store.location must be a string"),
    ("dictionaries", ..., "dictionaries is missing"),
    ("dictionaries", [], "dictionaries must be an object, not a list"),
    ("dictionaries", None, "dictionaries must be an object, not null"),
    (f"dictionaries.{D}", 5, f"dictionaries['{D}'] must be an object, not a whole number"),
    (f"dictionaries.{D}", 5.5, f"dictionaries['{D}'] must be an object, not a number"),
    (f"dictionaries.{D}", True, f"dictionaries['{D}'] must be an object, not true/false"),
    (f"dictionaries.{D}.file", ..., f"dictionaries['{D}'].file is missing"),
    (f"dictionaries.{D}.file", "dict-0000000000000000.zdict",
     f"dictionaries['{D}'].file must be 'dict-{D}.zdict', not 'dict-0000000000000000.zdict'"),
    (f"dictionaries.{D}.file", "../" * 30 + "x",
     f"dictionaries['{D}'].file must be 'dict-{D}.zdict', not " + short("../" * 30 + "x")),
    (f"dictionaries.{D}.sha256", ..., f"dictionaries['{D}'].sha256 is missing"),
    (f"dictionaries.{D}.sha256", D.upper() + "0" * 48,
     f"dictionaries['{D}'].sha256 must be 64 lowercase hex digits, not " + short(D.upper() + "0" * 48)),
    (f"dictionaries.{D}.sha256", D + "0" * 47,
     f"dictionaries['{D}'].sha256 must be 64 lowercase hex digits, not " + short(D + "0" * 47)),
    (f"dictionaries.{D}.sha256", D + "0" * 48 + "\n",
     f"dictionaries['{D}'].sha256 must be 64 lowercase hex digits, not " + short(D + "0" * 48 + "\n")),
    (f"dictionaries.{D}.sha256", 5, f"dictionaries['{D}'].sha256 must be 64 lowercase hex digits, not 5"),
    (f"dictionaries.{D}.sha256", "f" * 64,
     f"dictionaries['{D}'].sha256 must begin with the dictionary's name"),
    (f"dictionaries.{D}.bytes", 0, f"dictionaries['{D}'].bytes is 0; it must be in 1 … 1048576"),
    (f"dictionaries.{D}.bytes", 1048577, f"dictionaries['{D}'].bytes is 1048577; it must be in 1 … 1048576"),
    (f"dictionaries.{D}.bytes", 16384.0, f"dictionaries['{D}'].bytes must be a whole number, not a number"),
    (f"dictionaries.{D}.bytes", False, f"dictionaries['{D}'].bytes must be a whole number, not true/false"),
    (f"dictionaries.{D}.bytes", "1", f"dictionaries['{D}'].bytes must be a whole number, not a string"),
    (f"dictionaries.{D}.bytes", None, f"dictionaries['{D}'].bytes must be a whole number, not null"),
    (f"dictionaries.{D}.bytes", [], f"dictionaries['{D}'].bytes must be a whole number, not a list"),
    (f"dictionaries.{D}.bytes", {}, f"dictionaries['{D}'].bytes must be a whole number, not an object"),
    (f"dictionaries.{D}.bytes", ..., f"dictionaries['{D}'].bytes is missing"),
    (f"dictionaries.{D}.samples", -1, f"dictionaries['{D}'].samples is -1; it must be in 0 … {2**63}"),
    (f"dictionaries.{D}.samples", 2**63 + 1,
     f"dictionaries['{D}'].samples is {2**63 + 1}; it must be in 0 … {2**63}"),
    (f"dictionaries.{D}.created", ..., f"dictionaries['{D}'].created is missing"),
    (f"dictionaries.{D}.created", "today", f"dictionaries['{D}'].created must be a number, not 'today'"),
    (f"dictionaries.{D}.created", True, f"dictionaries['{D}'].created must be a number, not True"),
    (f"dictionaries.{D}.created", None, f"dictionaries['{D}'].created must be a number, not None"),
    ("logs", ..., "logs is missing"),
    ("logs", {}, "logs must be a list, not an object"),
    ("logs[0]", [], "logs[0] must be an object, not a list"),
    ("logs[1]", None, "logs[1] must be an object, not null"),
    ("logs[1].epoch", 0, "logs[1].epoch is 0, which an earlier log has too"),
    ("logs[0].epoch", -1, f"logs[0].epoch is -1; it must be in 0 … {MAX}"),
    ("logs[1].epoch", MAX + 1, f"logs[1].epoch is {MAX + 1}; it must be in 0 … {MAX}"),
    ("logs[0].epoch", ..., "logs[0].epoch is missing"),
    ("logs[1].first_seq", MAX + 1, f"logs[1].first_seq is {MAX + 1}; it must be in 0 … {MAX}"),
    ("logs[1].first_seq", -1, f"logs[1].first_seq is -1; it must be in 0 … {MAX}"),
    ("logs[1].bundles", -1, f"logs[1].bundles is -1; it must be in 0 … {(MAX - 1000) // 256}"),
    ("logs[0].bundles", 4, "logs[0].bundles is 4; its segments hold 3"),
    ("logs[0].bundles", 1, "logs[0].segments[1].first_bundle is 2; it must be in 0 … 1"),
    ("logs[0].bundles", ..., "logs[0].bundles is missing"),
    ("logs[0].last_hash", None, "logs[0].last_hash must be 64 lowercase hex digits, not None"),
    ("logs[0].last_hash", "AB" * 32,
     "logs[0].last_hash must be 64 lowercase hex digits, not " + short("AB" * 32)),
    ("logs[0].last_hash", ..., "logs[0].last_hash is missing"),
    ("logs[1].last_hash", "ab" * 32, "logs[1].last_hash must be null when no bundle is archived"),
    ("logs[1].last_hash", ..., "logs[1].last_hash is missing"),
    ("logs[0].segments", ..., "logs[0].segments is missing"),
    ("logs[0].segments", {}, "logs[0].segments must be a list, not an object"),
    ("logs[0].segments[0]", "x", "logs[0].segments[0] must be an object, not a string"),
    ("logs[0].segments[0].first_bundle", ..., "logs[0].segments[0].first_bundle is missing"),
    ("logs[0].segments[0].first_bundle", 1,
     "logs[0].segments[0].first_bundle is 1; the segments of log 0 must follow each other from bundle 0 "
     "(expected 0): segments overlap or one is missing"),
    ("logs[0].segments[1].first_bundle", 1,
     "logs[0].segments[1].first_bundle is 1; the segments of log 0 must follow each other from bundle 0 "
     "(expected 2): segments overlap or one is missing"),
    ("logs[0].segments[1].first_bundle", 4, "logs[0].segments[1].first_bundle is 4; it must be in 0 … 3"),
    ("logs[0].segments[0].bundles", 0, "logs[0].segments[0].bundles is 0; it must be in 1 … 4096"),
    ("logs[0].segments[0].bundles", 4097, "logs[0].segments[0].bundles is 4097; it must be in 1 … 4096"),
    ("logs[0].segments[0].file", ..., "logs[0].segments[0].file is missing"),
    ("logs[0].segments[1].file", "log000000-000000000001.kseg",
     "logs[0].segments[1].file must be 'log000000-000000000002.kseg' (log 0, bundle 2), not "
     "'log000000-000000000001.kseg'"),
    ("logs[0].segments[0].file", "log00000-000000000000.kseg",
     "logs[0].segments[0].file must be 'log000000-000000000000.kseg' (log 0, bundle 0), not "
     "'log00000-000000000000.kseg'"),
    ("logs[0].segments[0].file", None,
     "logs[0].segments[0].file must be 'log000000-000000000000.kseg' (log 0, bundle 0), not None"),
    ("logs[0].segments[1].bytes", 27, f"logs[0].segments[1].bytes is 27; it must be in 28 … {2**63}"),
    ("logs[0].segments[1].bytes", 2**63 + 1,
     f"logs[0].segments[1].bytes is {2**63 + 1}; it must be in 28 … {2**63}"),
    ("logs[0].segments[0].sha256", ..., "logs[0].segments[0].sha256 is missing"),
    ("logs[0].segments[0].sha256", "x",
     "logs[0].segments[0].sha256 must be 64 lowercase hex digits, not 'x'"),
    ("logs[0].segments[0].index_sha256", ..., "logs[0].segments[0].index_sha256 is missing"),
    ("logs[0].segments[0].index_sha256", "y",
     "logs[0].segments[0].index_sha256 must be 64 lowercase hex digits, not 'y'"),
    ("logs[0].segments[0].dictionary", ..., "logs[0].segments[0].dictionary is missing"),
    ("logs[0].segments[0].dictionary", "fedcba9876543210",
     "logs[0].segments[0].dictionary is 'fedcba9876543210', not a dictionary the manifest lists"),
    ("logs[0].segments[0].dictionary", 5,
     "logs[0].segments[0].dictionary is 5, not a dictionary the manifest lists"),
    ("logs[0].segments[0].dictionary", [D],
     f"logs[0].segments[0].dictionary is ['{D}'], not a dictionary the "
     "manifest lists"),
    ("logs[0].segments[0].min_ts", -1, f"logs[0].segments[0].min_ts is -1; it must be in 0 … {MAX}"),
    ("logs[0].segments[0].min_ts", ..., "logs[0].segments[0].min_ts is missing"),
    ("logs[0].segments[0].max_ts", 4, f"logs[0].segments[0].max_ts is 4; it must be in 5 … {MAX}"),
    ("logs[0].segments[0].max_ts", MAX + 1,
     f"logs[0].segments[0].max_ts is {MAX + 1}; it must be in 5 … {MAX}"),
    ("logs[0].segments[0].max_ts", ..., "logs[0].segments[0].max_ts is missing"),
]


@pytest.mark.parametrize("path,value,message", FIELD_CASES,
                         ids=[f"{p}={str(v)[:20]}" for p, v, _ in FIELD_CASES])
def test_every_field_breaking_its_rule_is_named(path: str, value: object, message: str) -> None:
    data = good()
    _set(path, value)(data)
    refused(seal(data), f"{FILE}: {message}")


def test_a_dictionary_not_named_by_16_hex_digits_is_refused() -> None:
    for ident in ("0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", "x" * 70):
        data = good()
        data["dictionaries"] = {ident: data["dictionaries"][D]}
        data["logs"][0]["segments"][0]["dictionary"] = None
        shown = repr(ident) if len(repr(ident)) <= 60 else repr(ident)[:60] + "…"
        refused(seal(data), f"{FILE}: dictionaries[{shown}] is not named by 16 lowercase hex digits")


@pytest.mark.parametrize("text,shown", [("1e400", "inf"), ("-1e400", "-inf")])
def test_a_creation_time_that_is_not_finite_is_refused(text: str, shown: str) -> None:
    """JSON has no infinity, but a number too large for a float reads as one."""
    body = json.dumps(good(), separators=(",", ":"), sort_keys=True).encode()
    body = body.replace(b'"created":1767225600.5', b'"created":' + text.encode())
    raw = b'{"checksum":"' + hashlib.sha256(body).hexdigest().encode() + b'",' + body[1:]
    refused(raw, f"{FILE}: dictionaries['{D}'].created must be a number, not {shown}")


def test_fields_at_their_limits_are_accepted() -> None:
    data = good()
    data["dictionaries"][D].update(bytes=1 << 20, samples=2**63, created=0)
    data["logs"][1].update(epoch=MAX, first_seq=MAX - 256, bundles=1, last_hash="00" * 32, segments=[
        {"file": f"log{MAX:06d}-000000000000.kseg", "first_bundle": 0, "bundles": 1, "bytes": 2**63,
         "sha256": "00" * 32, "index_sha256": "00" * 32, "dictionary": None, "min_ts": 0, "max_ts": MAX}])
    data["logs"][0]["segments"][1].update(min_ts=0, max_ts=0)
    data["logs"][0]["segments"].append({
        "file": "log000000-000000000003.kseg", "first_bundle": 3, "bundles": 4096, "bytes": 28,
        "sha256": "00" * 32, "index_sha256": "00" * 32, "dictionary": None, "min_ts": MAX, "max_ts": MAX})
    data["logs"][0]["bundles"] = 3 + 4096
    assert parse(data) == data
    data["logs"][1]["first_seq"] = MAX - 255
    refused(seal(data), f"{FILE}: logs[1].bundles is 1; it must be in 0 … 0")


def test_the_first_field_breaking_a_rule_is_the_one_named() -> None:
    """(Checked in the order the format lists them: a message never names a later field.)"""
    data = good()
    data["store"] = None
    data["logs"] = None
    refused(seal(data), f"{FILE}: store must be an object, not null")


# -- writing ------------------------------------------------------------------------------------
def test_a_manifest_is_written_as_the_format_defines() -> None:
    data = good()
    data["store"]["location"] = "/srv/journal-ü"
    raw = encode_manifest(data)
    assert raw == seal(data)
    assert raw.isascii() and b"\\u00fc" in raw
    assert parse_manifest(raw, FILE) == {**data, "checksum": raw[13:77].decode()}
    assert data == {**good(), "store": {"location": "/srv/journal-ü"}}  # (the caller's dict untouched)


def test_a_manifest_read_is_written_back_as_the_current_version() -> None:
    data = parse(good())
    data["checksum"] = "stale"  # (a member a reader might have kept) is not written
    v1 = copy.deepcopy(good())
    v1["version"] = 1
    assert encode_manifest(data) == seal(good())
    assert encode_manifest(v1) == seal(good())


def test_a_new_manifest_and_the_log_of_an_epoch() -> None:
    assert new_manifest("/srv/s") == {"format": "krepis-archive", "version": 2,
                                      "store": {"location": "/srv/s"}, "dictionaries": {}, "logs": []}
    data = good()
    assert log_of(data, 3) is data["logs"][1] and log_of(data, 0) is data["logs"][0]
    assert log_of(data, 1) is None and log_of(None, 0) is None
    raw = encode_manifest(new_manifest("/srv/s"))
    assert parse_manifest(raw, FILE) == {**new_manifest("/srv/s"), "checksum": raw[13:77].decode()}


def test_a_value_is_shown_whole_up_to_60_characters_and_cut_after() -> None:
    """The limit exactly: a repr of 60 characters is shown as it is, one of 61 is cut to its
    first 60 and '…' (the messages spelled out, not computed by the rule they check)."""
    seg = "logs[0].segments[1].file must be 'log000000-000000000002.kseg' (log 0, bundle 2), not "
    for value, shown in (("y" * 58, "'" + "y" * 58 + "'"), ("y" * 59, "'" + "y" * 59 + "…")):
        data = good()
        data["logs"][0]["segments"][1]["file"] = value
        refused(seal(data), f"{FILE}: {seg}{shown}")
