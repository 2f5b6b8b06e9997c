"""Both engines accept exactly the same inputs, and one caller's bad input never fails another
caller's write. Run on LMDB and on a real PostgreSQL server alike."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from krepis import (
    CorruptStorageError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis._model import MAX_OP_NAME_BYTES, MAX_REQUEST_ID_BYTES

Opener = Callable[[], SovereignJournal]


@pytest.fixture(params=["lmdb", "postgres"])
def open_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    location = str(tmp_path / "store") if request.param == "lmdb" else request.getfixturevalue("pg_url")
    return lambda: SovereignJournal(location)


# Accepted by both engines and read back unchanged: the edges of the rules.
ACCEPTED = [
    "plain", "with space", "tab\there", "new\nline", "\x01\x1f\x7f", "quote\"back\\slash",
    "'; DROP TABLE krepis_journal; --", "%s %(x)s {}", "ünïcödé", "emoji 🦀", "\uffff\U0010ffff",
    "é" * (MAX_OP_NAME_BYTES // 2),  # exactly the byte limit, in two-byte characters
]
NUL = ["\x00", "a\x00", "\x00b", "mid\x00dle"]


def test_inputs_with_nul_are_refused_alike(open_journal: Opener) -> None:
    with open_journal() as journal:
        for bad in NUL:
            for build in (lambda b: TransactionLog(1, b, "r", LogStatus.Completed),
                          lambda b: TransactionLog(1, "op", b, LogStatus.Completed)):
                with pytest.raises(ValidationError, match=r"NUL character"):
                    build(bad)
            for call in (lambda b: journal.increment_op_count(b),
                         lambda b: journal.record(TransactionLog(1, "op", "r", LogStatus.Started),
                                                  increment=b),
                         lambda b: journal.recover_op_count(b),
                         lambda b: journal.query(request_id=b)):
                with pytest.raises(ValidationError, match=r"NUL character"):
                    call(bad)
        assert journal.journal_count() == 0 and journal.op_counts() == {}
        # in the free-text error field NUL is fine: it is stored JSON-escaped on every engine
        journal.log_transaction(TransactionLog(1, "op", "r", LogStatus.Failed, error="a\x00b"))
        assert journal.query()[0].error == "a\x00b"


def test_the_same_edge_inputs_are_accepted_and_read_back(open_journal: Opener) -> None:
    with open_journal() as journal:
        for i, text in enumerate(ACCEPTED):
            rid = (text * 3)[:MAX_REQUEST_ID_BYTES // 4]
            journal.record(TransactionLog(i, text, rid, LogStatus.Completed, error=text),
                           increment=text)
        logs = journal.query(newest_first=False)
        assert [(log.op_name, log.error) for log in logs] == [(t, t) for t in ACCEPTED]
        assert journal.op_counts() == dict.fromkeys(ACCEPTED, 1)
        for text in ACCEPTED:
            rid = (text * 3)[:MAX_REQUEST_ID_BYTES // 4]
            assert [log.op_name for log in journal.query(request_id=rid)] == [text]


def test_a_bad_write_among_many_concurrent_ones_fails_alone(open_journal: Opener) -> None:
    """The issue's case: 1 bad of 400 concurrent writes used to fail the shared commit."""
    ok: list[int] = []
    refused: list[str] = []
    with open_journal() as journal:
        def work(n: int) -> None:
            for i in range(10):
                try:
                    if n == 7 and i == 5:
                        journal.record(TransactionLog(i, "op", f"bad\x00{n}", LogStatus.Completed),
                                       increment="op")
                    else:
                        journal.record(TransactionLog(i, "op", f"t{n}-{i}", LogStatus.Completed),
                                       increment="op")
                        ok.append(1)
                except JournalError as exc:
                    refused.append(type(exc).__name__)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert refused == ["ValidationError"]
        assert len(ok) == 399
        assert journal.journal_count() == 399 and journal.recover_op_count("op") == 399


class _Sneaky(str):
    """A str subclass that lies about its size and encoding."""

    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return b"x"

    def __len__(self) -> int:
        return 1


def test_str_subclass_cannot_bypass_the_byte_limits(open_journal: Opener) -> None:
    long = _Sneaky("n" * (MAX_OP_NAME_BYTES + 1))
    with pytest.raises(ValidationError, match="the limit is 200"):
        TransactionLog(1, long, "r", LogStatus.Completed)
    with pytest.raises(ValidationError, match="the limit is 256"):
        TransactionLog(1, "op", _Sneaky("r" * (MAX_REQUEST_ID_BYTES + 1)), LogStatus.Completed)
    with open_journal() as journal:
        with pytest.raises(ValidationError, match="the limit is 200"):
            journal.increment_op_count(long)
        log = TransactionLog(1, _Sneaky("op"), _Sneaky("rid"), LogStatus.Completed)
        assert type(log.op_name) is str and type(log.request_id) is str
        journal.record(log, increment=_Sneaky("op"))
        assert journal.query()[0] == TransactionLog(1, "op", "rid", LogStatus.Completed)
        assert journal.op_counts() == {"op": 1}


# --- opening without creating -----------------------------------------------------------------

def _tables(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                            "ORDER BY tablename").fetchall()
    return [r[0] for r in rows]


def test_create_false_never_creates_tables_on_postgres(pg_url: str) -> None:
    import psycopg

    with pytest.raises(StorageError, match="there is no krepis journal"):
        SovereignJournal(pg_url, create=False)
    assert _tables(pg_url) == []
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a half-made schema
        conn.execute("CREATE TABLE krepis_meta (key text PRIMARY KEY, value text NOT NULL)")
        conn.execute("INSERT INTO krepis_meta VALUES ('format', '2')")
    with pytest.raises(CorruptStorageError, match=r"tables are incomplete \(missing: krepis_entries"):
        SovereignJournal(pg_url, create=False)
    assert _tables(pg_url) == ["krepis_meta"]
    with SovereignJournal(pg_url) as journal:  # opening to write completes it
        journal.increment_op_count("op")
    with SovereignJournal(pg_url, create=False) as journal:
        assert journal.recover_op_count("op") == 1
