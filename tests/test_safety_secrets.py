"""A PostgreSQL password never shows: not in errors, reprs, paths, log records or `bench --json`,
whatever characters it holds — and an unescaped one still connects, with no part of it taken for a
host name. Against a real server, whose role ``krepis_pw`` authenticates with SCRAM."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import quote

import pytest

import pg
from krepis import SovereignJournal, StorageError
from krepis.storage.postgres import _url as _pgurl
from krepis.storage.postgres._schema import redact

PASSWORDS = [
    "pa%ss-word", "pa/ss/word", "pa ss word", "pa@ss@word", "pa:ss:word", "pa?ss?word",
    "pa#ss#word", "p&ss=word;", "p@ss/w?rd#1:%", "ünï@cödé/%zz", "quo'te\"word", "back\\slash",
    "@@@@@@", "ends-with@", "@starts", "100%", "h@127.0.0.1:5432", "x@y/z?sslmode=disable",
    "a,b@c,d", "[::1]@]",
]
# Unescaped, these read as two different URLs; krepis refuses to guess (encoded, they work).
AMBIGUOUS = {"x@y/z?sslmode=disable"}
USER = "krepis_pw"
ORIGINAL = "right-password"  # the fixture's password for the role; restored afterwards


def _has_escape(pw: str) -> bool:
    return re.search(r"%[0-9A-Fa-f]{2}", pw) is not None


@pytest.fixture
def set_password(pg_cluster):  # type: ignore[no-untyped-def]
    import psycopg
    from psycopg import sql

    def setter(pw: str) -> None:
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(USER), sql.Literal(pw)))

    yield setter
    setter(ORIGINAL)


@pytest.fixture
def every_log_record() -> Iterator[list[str]]:
    records: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Grab(level=logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)
    root.setLevel(old)


def assert_hidden(pw: str, *texts: object) -> None:
    for text in texts:
        assert pw not in str(text), f"password {pw!r} shown in: {text}"


def test_parsing_takes_any_password_and_redacts_it() -> None:
    for pw in PASSWORDS:
        for shown in ([pw] if not _has_escape(pw) else []) + [quote(pw, safe="")]:
            url = f"postgresql://{USER}:{shown}@db.example:6543,[::1]:7/the_db?sslmode=disable"
            if shown in AMBIGUOUS:
                with pytest.raises(_pgurl.UrlError, match="ambiguous") as info:
                    _pgurl.parse(url)
                assert_hidden(pw, info.value, redact(url))
                continue
            parsed = _pgurl.parse(url)
            assert parsed.params["password"] == pw
            assert parsed.params["host"] == "db.example,::1", pw  # nothing of it taken for a host
            assert parsed.params["port"] == "6543,7" and parsed.params["dbname"] == "the_db"
            assert parsed.redacted == redact(url) == f"postgresql://{USER}@db.example:6543,[::1]:7/the_db"
            assert_hidden(pw, parsed, repr(parsed), parsed.redacted)
            assert _pgurl.parse(_pgurl.build(parsed.params)).params == parsed.params


def test_unparsable_url_is_refused_without_quoting_it() -> None:
    for url in ("postgresql://user:sec/ret-pass@host name/db", "postgresql://user:sec ret-pass@host:port",
                "postgresql://host/db?nosuchkey=sec-ret-pass"):
        with pytest.raises(StorageError) as info:
            SovereignJournal(url)
        assert_hidden("sec", info.value, repr(info.value), info.value.path)
        assert "postgresql://(unparsable URL)" in str(info.value)


def test_an_unparsable_url_error_names_the_fault_without_quoting_it() -> None:
    unknown_key = "a query parameter is not one of libpq's connection keywords"
    cases = {
        "postgresql://host/db?nosuchkey=1": unknown_key,
        "postgresql://user:sec-ret@host/db?sslmode=disable&nosuchkey=1": unknown_key,
        "postgresql://user:sec-ret@host name/db": "no valid host part after the '@'",
        "postgresql://host name/db": "no valid host part after the '@'",
        "postgresql://user:sec-ret@host/db?sslmode": "no valid host part after the '@'",
    }
    for url, fault in cases.items():
        with pytest.raises(_pgurl.UrlError) as info:
            _pgurl.parse(url)
        assert fault in str(info.value), url
        assert "sec-ret" not in str(info.value) and "nosuchkey" not in str(info.value)


@pytest.mark.parametrize("pw", PASSWORDS)
def test_password_never_shown_and_unescaped_password_connects(
        pw: str, pg_cluster, pg_url: str, set_password, every_log_record: list[str]) -> None:  # type: ignore[no-untyped-def]
    set_password(pw)
    db = pg_url.rsplit("/", 1)[1]
    base = f"127.0.0.1:{pg_cluster.port}/{db}"
    forms = [quote(pw, safe="")] + ([pw] if not _has_escape(pw) and pw not in AMBIGUOUS else [])
    for shown in forms:
        with SovereignJournal(f"postgresql://{USER}:{shown}@{base}") as journal:
            journal.increment_op_count("op")
            assert_hidden(pw, journal.path, repr(journal))
        # a wrong password: refused by the server, and neither password is in the error
        wrong = "not-" + pw
        with pytest.raises(StorageError, match="password authentication failed") as info:
            SovereignJournal(f"postgresql://{USER}:{wrong if shown == pw else quote(wrong, safe='')}@{base}")
        assert_hidden(pw, info.value, repr(info.value), info.value.path)
        # nobody listening: the connection error does not show it either
        closed = pg.free_port()
        with pytest.raises(StorageError, match="cannot connect") as info:
            SovereignJournal(f"postgresql://{USER}:{shown}@127.0.0.1:{closed}/{db}?connect_timeout=3")
        assert_hidden(pw, info.value, repr(info.value), info.value.path)
    assert_hidden(pw, *every_log_record)


def test_bench_json_does_not_print_the_password(pg_cluster, pg_url: str, set_password, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pw = "p@ss/w?rd#1:% secret"
    set_password(pw)
    db = pg_url.rsplit("/", 1)[1]
    url = f"postgresql://{USER}:{pw}@127.0.0.1:{pg_cluster.port}/{db}"
    krepis = shutil.which("krepis", path=os.path.dirname(sys.executable))
    assert krepis
    proc = subprocess.run([krepis, "bench", "--seconds", "0.05", "--large", "2000", "--storage", url,
                           "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_hidden(pw, proc.stdout, proc.stderr)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["config"]["postgres_url"] == f"postgresql://{USER}@127.0.0.1:{pg_cluster.port}/{db}"
    assert any(row["name"].startswith("PostgreSQL") for row in report["rows"])
