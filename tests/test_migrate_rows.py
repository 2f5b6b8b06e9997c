"""``krepis migrate`` checks every format-1 row by the rules of a write: a malformed row stops the
migration with an error naming it (its format-1 sequence number) and nothing changes; a valid
row in a non-canonical JSON form is carried with every field and stored canonically, so the
new journal passes ``verify()`` and every reading command works on it."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import lmdb
import pytest

from krepis import CorruptStorageError, LogStatus, NeedsMigrationError, SovereignJournal, TransactionLog
from krepis.storage import migrate

from format1 import PG_SCHEMA_1

GOOD = [TransactionLog(10 + i, "op", f"r{i}", LogStatus.Completed, duration_us=i) for i in range(6)]


def _row(**fields: Any) -> dict[str, Any]:
    return {"timestamp": 13, "op_name": "op", "request_id": "bad", "status": "Completed", **fields}


def _json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


#: (what, the value of format-1 entry 4, what the error says)
HOSTILE: list[tuple[str, bytes, str]] = [
    ("timestamp 2**63", _json(_row(timestamp=2**63)), r"timestamp 9223372036854775808 is outside"),
    ("negative timestamp", _json(_row(timestamp=-1)), r"timestamp -1 is outside"),
    ("timestamp text", _json(_row(timestamp="13")), r"timestamp must be an int"),
    ("timestamp float", _json(_row(timestamp=13.0)), r"timestamp must be an int"),
    ("duration 2**63", _json(_row(duration_us=2**63)), r"duration_us 9223372036854775808 is outside"),
    ("duration NaN", _json(_row()).replace(b"}", b',"duration_us":NaN}'), r"NaN is not a JSON number"),
    ("duration true", _json(_row(duration_us=True)), r"duration_us must be an int"),
    ("empty error", _json(_row(error="")), r"error must not be empty"),
    ("error too long", _json(_row(error="e" * 16385)), r"error .* is 16385 bytes of UTF-8; the limit"),
    ("empty op name", _json(_row(op_name="")), r"op_name must not be empty"),
    ("300-byte op name", _json(_row(op_name="o" * 300)), r"op_name .* is 300 bytes of UTF-8; the"),
    ("NUL in op name", _json(_row(op_name="a\0b")), r"op_name .* contains a NUL character"),
    ("lone surrogate", _json(_row(op_name="a")).replace(b'"a"', b'"a\\ud800"'), r"op_name .* UTF-8"),
    ("empty request id", _json(_row(request_id="")), r"request_id must not be empty"),
    ("257-byte request id", _json(_row(request_id="q" * 257)), r"request_id .* is 257 bytes"),
    ("NUL in request id", _json(_row(request_id="x\0")), r"request_id .* contains a NUL character"),
    ("unknown status", _json(_row(status="Done")), r"status 'Done' is not Started, Completed or Failed"),
    ("no status", _json({"timestamp": 13, "op_name": "op", "request_id": "bad"}), r"it has no status"),
    ("extra field", _json(_row(tenant="t1")), r"field\(s\) 'tenant', which a TransactionLog does not have"),
    ("field twice", _json(_row()).replace(b'{"timestamp":13', b'{"timestamp":13,"timestamp":14'),
     r"field 'timestamp' appears twice"),
    ("invalid UTF-8", _json(_row(op_name="o")).replace(b'"o"', b'"\xffo"'), r"not valid UTF-8 \(byte 2"),
    ("not an object", b"[13]", r"it is a JSON array, not an object"),
    ("not JSON", b'{"timestamp":13,', r"it is not valid JSON"),
]


def _write_format1(path: Path, values: list[bytes], counters: list[tuple[bytes, bytes]],
                   keys: dict[int, bytes] | None = None) -> None:
    """A format-1 store holding these raw values at sequence numbers 1, 2, … (keys made from
    the value where it parses, or given)."""
    path.mkdir(mode=0o700)
    env = lmdb.open(str(path), map_size=1 << 26, max_dbs=8)
    try:
        with env.begin(write=True) as txn:
            journal = env.open_db(b"journal", txn=txn)
            stats = env.open_db(b"stats", txn=txn)
            meta = env.open_db(b"meta", txn=txn)
            for seq, value in enumerate(values, 1):
                key = (keys or {}).get(seq)
                if key is None:
                    try:
                        d = json.loads(value)
                        ts, rid = int(d["timestamp"]), str(d["request_id"]).encode("utf-8", "surrogatepass")
                    except (ValueError, TypeError, KeyError):
                        ts, rid = 13, b"bad"
                    key = b"%019d:%020d:%b" % (max(ts, 0), seq, rid)
                txn.put(key, value, db=journal)
            for key, value in counters:
                txn.put(key, value, db=stats)
            txn.put(b"format", b"1", db=meta)
            txn.put(b"seq", struct.pack("<Q", len(values)), db=meta)
    finally:
        env.close()
    (path / "lock.mdb").unlink()


def _values(hostile: bytes) -> list[bytes]:
    good = [g.to_json().encode() for g in GOOD]
    return [*good[:3], hostile, *good[3:]]


def _refused(store: Path, match: str) -> None:
    digest = hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest()
    with pytest.raises(CorruptStorageError, match=match):
        migrate(store)
    assert hashlib.sha256((store / "data.mdb").read_bytes()).hexdigest() == digest
    assert not (store / ".migrate").exists() and not (store / "commit.log").exists()
    with pytest.raises(NeedsMigrationError):
        SovereignJournal(store, create=False)


@pytest.mark.parametrize(("what", "value", "says"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_malformed_format1_entry_is_refused_naming_it(tmp_path: Path, what: str, value: bytes,
                                                        says: str) -> None:
    store = tmp_path / "store"
    _write_format1(store, _values(value), [(b"op_count:op", struct.pack("<Q", 6))])
    _refused(store, rf"format-1 entry 4 \(its sequence number\) is not a valid TransactionLog: .*{says}")


COUNTERS: list[tuple[str, tuple[bytes, bytes], str]] = [
    ("invalid UTF-8 name", (b"op_count:\xff\xfe", struct.pack("<Q", 1)), r"is not valid UTF-8"),
    ("empty name", (b"op_count:", struct.pack("<Q", 1)), r"must not be empty"),
    ("NUL in name", (b"op_count:a\0b", struct.pack("<Q", 1)), r"contains a NUL character"),
    ("300-byte name", (b"op_count:" + b"n" * 300, struct.pack("<Q", 1)), r"is 300 bytes of UTF-8"),
    ("4-byte value", (b"op_count:op2", struct.pack("<I", 1)), r"'op2' holds 4 bytes, not 8"),
    ("not a counter", (b"other:x", struct.pack("<Q", 1)), r"does not start with op_count:"),
]


@pytest.mark.parametrize(("what", "counter", "says"), COUNTERS, ids=[c[0] for c in COUNTERS])
def test_a_malformed_format1_counter_is_refused_naming_it(tmp_path: Path, what: str,
                                                          counter: tuple[bytes, bytes], says: str) -> None:
    store = tmp_path / "store"
    _write_format1(store, [g.to_json().encode() for g in GOOD], [counter])
    _refused(store, rf"format-1 counter .*{says}")


def test_a_key_that_disagrees_with_its_entry_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _write_format1(store, [g.to_json().encode() for g in GOOD], [],
                   keys={2: b"%019d:%020d:%b" % (999, 2, b"r1")})
    _refused(store, r"format-1 entry 2 .* its key says timestamp 999 and request id b'r1', its value 11")


@pytest.mark.parametrize(("key", "says"), [
    (b"0000000000000000011:99999999999999999999:r1", r"sequence number 99999999999999999999, past 2\*\*64-1"),
    (b"0000000000000000011:0000000000000000000x:r1", r"malformed format-1 key"),
    (b"0000000000000000011:+0000000000000000002:r1", r"malformed format-1 key"),
    (b"short", r"malformed format-1 key"),
])
def test_a_malformed_format1_key_is_refused_naming_it(tmp_path: Path, key: bytes, says: str) -> None:
    store = tmp_path / "store"
    _write_format1(store, [g.to_json().encode() for g in GOOD], [], keys={2: key})
    _refused(store, says)


#: valid entries whose JSON is not the canonical form, each with the entry it holds
CARRIED: list[tuple[bytes, TransactionLog]] = [
    (b'{ "timestamp": 20, "op_name": "sp", "request_id": "a", "status": "Started" }',
     TransactionLog(20, "sp", "a", LogStatus.Started)),
    (b'{"status":"Failed","error":"x","request_id":"b","op_name":"order","timestamp":21}',
     TransactionLog(21, "order", "b", LogStatus.Failed, error="x")),
    (b'{"timestamp":22,"op_name":"caf\\u00e9","request_id":"\\u65e5","status":"Completed"}',
     TransactionLog(22, "café", "日", LogStatus.Completed)),
    (b'{"timestamp":23,"op_name":"n","request_id":"c","status":"Completed","duration_us":null,'
     b'"error":null}', TransactionLog(23, "n", "c", LogStatus.Completed)),
    (b'{"timestamp":24,"op_name":"e","request_id":"d","status":"Failed","error":"nul \\u0000 ok"}',
     TransactionLog(24, "e", "d", LogStatus.Failed, error="nul \0 ok")),
]


def _check_carried(location: str | Path) -> None:
    want = GOOD + [log for _, log in CARRIED]
    with SovereignJournal(location, create=False) as journal:
        report = journal.verify()
        assert report.entries == report.tree_size == len(want)
        assert journal.query(order="append", newest_first=False) == want
        assert journal.op_counts() == {"op": 6, "café": 2}
        assert journal.tree_head().root == report.root
    for args in (["stats"], ["logs", "--all"], ["export"], ["verify"]):
        done = subprocess.run([sys.executable, "-m", "krepis", "--storage", str(location), *args],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, (args, done.stderr)


def test_valid_entries_in_a_non_canonical_form_are_carried_exactly(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _write_format1(store, [g.to_json().encode() for g in GOOD] + [raw for raw, _ in CARRIED],
                   [(b"op_count:op", struct.pack("<Q", 6)), ("op_count:café".encode(), struct.pack("<Q", 2))])
    assert migrate(store).entries == len(GOOD) + len(CARRIED)
    _check_carried(store)


def test_the_cli_names_the_bad_row_without_a_traceback(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _write_format1(store, _values(_json(_row(op_name="o" * 300))), [])
    done = subprocess.run([sys.executable, "-m", "krepis", "migrate", "--storage", str(store)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "format-1 entry 4 (its sequence number)" in done.stderr and "the limit is 200" in done.stderr
    assert "nothing was changed" in done.stderr


# --- PostgreSQL -------------------------------------------------------------------------------

def _pg_rows(pg_url: str, entries: list[bytes], counters: dict[str, int]) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(PG_SCHEMA_1)
        with conn.cursor() as cur:
            for raw in entries:
                try:
                    d = json.loads(raw)
                    ts, rid = int(d["timestamp"]), str(d["request_id"])
                except (ValueError, TypeError, KeyError):
                    ts, rid = 13, "bad"
                cur.execute("INSERT INTO krepis_journal (timestamp, request_id, entry) VALUES (%s, %s, %s)",
                            (min(max(ts, 0), 2**63 - 1), rid.replace("\0", ""),
                             raw.decode("utf-8", "replace")))
            cur.executemany("INSERT INTO krepis_stats VALUES (%s, %s)", list(counters.items()))
        conn.execute("INSERT INTO krepis_state VALUES ('entries', %s)", (len(entries),))


def test_postgres_carries_non_canonical_entries_and_passes_verify(pg_url: str) -> None:
    _pg_rows(pg_url, [g.to_json().encode() for g in GOOD] + [raw for raw, _ in CARRIED],
             {"op": 6, "café": 2})
    result = migrate(pg_url)
    assert (result.entries, result.counters) == (len(GOOD) + len(CARRIED), 2)
    _check_carried(pg_url)


PG_HOSTILE = [h for h in HOSTILE if h[0] in {
    "timestamp 2**63", "duration 2**63", "empty error", "empty op name", "300-byte op name",
    "NUL in op name", "lone surrogate", "unknown status", "extra field", "field twice", "not JSON"}]


@pytest.mark.parametrize(("what", "value", "says"), PG_HOSTILE, ids=[h[0] for h in PG_HOSTILE])
def test_postgres_refuses_a_malformed_entry_naming_it(pg_url: str, what: str, value: bytes,
                                                      says: str) -> None:
    import psycopg

    _pg_rows(pg_url, _values(value), {"op": 6})
    with pytest.raises(CorruptStorageError, match=rf"format-1 entry 4 \(its sequence number\) is not "
                                                  rf"a valid TransactionLog: .*{says}.*nothing was changed"):
        migrate(pg_url)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM krepis_meta WHERE key = 'format'").fetchone() == ("1",)
        assert conn.execute("SELECT count(*) FROM krepis_journal").fetchone() == (7,)
        assert conn.execute("SELECT to_regclass('krepis_entries')").fetchone() == (None,)


@pytest.mark.parametrize(("name", "says"), [("", "must not be empty"), ("n" * 201, "is 201 bytes")])
def test_postgres_refuses_a_malformed_counter_naming_it(pg_url: str, name: str, says: str) -> None:
    _pg_rows(pg_url, [g.to_json().encode() for g in GOOD], {name: 1})
    with pytest.raises(CorruptStorageError, match=rf"format-1 counter .*{says}"):
        migrate(pg_url)

