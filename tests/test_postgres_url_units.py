"""``storage/postgres/_url``, rule by rule: how a ``postgresql://`` URL is split (the ``@`` that
ends the user information, hosts and ports, the database, libpq's query keywords), the exact
refusals (never quoting the URL), the redacted form, ``build``, and the scrubbing of every
remembered password from texts and log records. Pure functions: no server needed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis.storage.postgres import _url as _pgurl
from krepis.storage.postgres._url import UrlError, build, is_postgres_url, parse, redact, scrub

NOT_SHOWN = "invalid PostgreSQL URL (not shown, it may contain a password): "
UNKNOWN_KEY = (NOT_SHOWN + "a query parameter is not one of libpq's connection keywords (such as sslmode, "
               "connect_timeout, application_name)")
NO_HOST = (NOT_SHOWN + "no valid host part after the '@'; expected postgresql://user:password@host:port/"
           "dbname?key=value")
AT_IN_QUERY = NOT_SHOWN + "an '@' in a query value must be percent-encoded (%40)"
AMBIGUOUS = ("ambiguous PostgreSQL URL (not shown, it may contain a password): it can be read with more "
             "than one host; percent-encode '@' in the password (%40) and in query values")


@pytest.fixture(autouse=True)
def _no_secret_or_filter_yet() -> Iterator[None]:
    """Each test starts with no remembered secret and no filter on psycopg's loggers (an earlier
    test, or an earlier run in the same process, must not make its checks pass), and leaves both
    as it found them."""
    loggers = [logging.getLogger(name) for name in ("psycopg", "psycopg.pool")]
    had = [_pgurl._FILTER in logger.filters for logger in loggers]
    with _pgurl._secrets_lock:
        saved = set(_pgurl._secrets)
        _pgurl._secrets.clear()
    for logger in loggers:
        logger.removeFilter(_pgurl._FILTER)
    yield
    with _pgurl._secrets_lock:
        _pgurl._secrets.clear()
        _pgurl._secrets.update(saved)
    for logger, filtered in zip(loggers, had, strict=True):
        logger.removeFilter(_pgurl._FILTER)
        if filtered:
            logger.addFilter(_pgurl._FILTER)


def _refused(url: str) -> str:
    with pytest.raises(UrlError) as caught:
        parse(url)
    return str(caught.value)


def test_is_postgres_url_takes_both_schemes_and_only_strings() -> None:
    assert is_postgres_url("postgresql://h/db") and is_postgres_url("postgres://h/db")
    for other in ("postgresql:/h", "postgres:/h", "Postgresql://h", "/srv/postgresql://h", "",
                  b"postgresql://h", Path("postgresql://h"), None):
        assert not is_postgres_url(other), other


def test_a_url_of_another_scheme_is_refused() -> None:
    for url in ("mysql://h/db", "postgresql:/h/db", "/srv/krepis"):
        assert _refused(url) == "not a postgresql:// URL"


@pytest.mark.parametrize(("url", "params", "redacted"), [
    ("postgresql://h", {"host": "h"}, "postgresql://h:5432/"),
    ("postgres://h", {"host": "h"}, "postgresql://h:5432/"),
    ("postgresql://", {}, "postgresql://localhost:5432/"),
    ("postgresql:///db", {"dbname": "db"}, "postgresql://localhost:5432/db"),
    ("postgresql://h?", {"host": "h"}, "postgresql://h:5432/"),
    ("postgresql://h/", {"host": "h"}, "postgresql://h:5432/"),
    ("postgresql://user@h:7/db", {"user": "user", "host": "h", "port": "7", "dbname": "db"},
     "postgresql://user@h:7/db"),
    # an empty user information: no user, no password
    ("postgresql://@h/db", {"host": "h", "dbname": "db"}, "postgresql://h:5432/db"),
    # an upper-case X, as any letter, is a user name like another
    ("postgresql://Xavier@XHOST/X", {"user": "Xavier", "host": "XHOST", "dbname": "X"},
     "postgresql://Xavier@XHOST:5432/X"),
    ("postgresql://:pw-one@h/db", {"password": "pw-one", "host": "h", "dbname": "db"}, "postgresql://h:5432/db"),
    ("postgresql://u:@h/db", {"user": "u", "password": "", "host": "h", "dbname": "db"},
     "postgresql://u@h:5432/db"),
    # percent-decoding of every part; a '%' that starts no escape is kept
    ("postgresql://us%40er:p%2Fw%zz@h%41st:5/d%20b", {"user": "us@er", "password": "p/w%zz", "host": "hAst",
                                                      "port": "5", "dbname": "d b"},
     "postgresql://us%40er@hAst:5/d%20b"),
    # a '/' decoded in a user name, host or database is percent-encoded again when shown
    ("postgresql://u%2F1@h%2F2/d%2F3", {"user": "u/1", "host": "h/2", "dbname": "d/3"},
     "postgresql://u%2F1@h%2F2:5432/d%2F3"),
    # several hosts, each with or without its port
    ("postgresql://a:1,b:2/db", {"host": "a,b", "port": "1,2", "dbname": "db"}, "postgresql://a:1,b:2/db"),
    ("postgresql://a,b/db", {"host": "a,b", "dbname": "db"}, "postgresql://a:5432,b:5432/db"),
    # a host without its port is shown with the default port libpq uses for it, never as "a:"
    ("postgresql://a,b:7/db", {"host": "a,b", "port": ",7", "dbname": "db"}, "postgresql://a:5432,b:7/db"),
    ("postgresql://a:,b:7/db", {"host": "a,b", "port": ",7", "dbname": "db"}, "postgresql://a:5432,b:7/db"),
    ("postgresql://a:7,b/db", {"host": "a,b", "port": "7,", "dbname": "db"}, "postgresql://a:7,b:5432/db"),
    ("postgresql://:5433/db", {"port": "5433", "dbname": "db"}, "postgresql://localhost:5433/db"),
    ("postgresql://:5433,:5434/db", {"port": "5433,5434", "dbname": "db"}, "postgresql://localhost:5433/db"),
    # IPv6 in brackets, with a zone, with and without a port
    ("postgresql://[::1]:5/db", {"host": "::1", "port": "5", "dbname": "db"}, "postgresql://[::1]:5/db"),
    ("postgresql://[::1]/db", {"host": "::1", "dbname": "db"}, "postgresql://[::1]:5432/db"),
    ("postgresql://[fe80::1%25eth0]:6,h/db", {"host": "fe80::1%eth0,h", "port": "6,", "dbname": "db"},
     "postgresql://[fe80::1%eth0]:6,h:5432/db"),
    # libpq's keywords in the query, decoded; the longest keyword that fits is read
    ("postgresql://h/db?sslmode=require&application_name=a%20b&hostaddr=1.2.3.4",
     {"host": "h", "dbname": "db", "sslmode": "require", "application_name": "a b", "hostaddr": "1.2.3.4"},
     "postgresql://h:5432/db"),
    # a value may hold '=': the key ends at the first one
    ("postgresql://h/db?options=-c%20a=b=c", {"host": "h", "dbname": "db", "options": "-c a=b=c"},
     "postgresql://h:5432/db"),
    ("postgresql://h/db?options=&connect_timeout=3", {"host": "h", "dbname": "db", "options": "",
                                                      "connect_timeout": "3"}, "postgresql://h:5432/db"),
])
def test_parse_reads_each_part(url: str, params: dict[str, str], redacted: str) -> None:
    parsed = parse(url)
    assert parsed.params == params
    assert parsed.redacted == redacted == redact(url)
    assert repr(parsed) == f"ParsedUrl({redacted!r})"


def test_the_at_that_ends_the_user_information() -> None:
    # with a ':' the user information may hold '@' (the last '@' a host part follows ends it)
    assert parse("postgresql://u:p@ss@h/db").params["password"] == "p@ss"
    assert parse("postgresql://u:p@@h/db").params["password"] == "p@"
    assert parse("postgresql://u:@@h/db").params["password"] == "@"
    assert parse("postgresql://u:p/a?b@h/db").params["password"] == "p/a?b"
    # an '@' that cannot end it (no ':' before it, a '/' in it) is passed over, not the end of the search
    assert parse("postgresql://u/x@y:pw@h/db").params == {"user": "u/x@y", "password": "pw", "host": "h",
                                                         "dbname": "db"}
    # without one, '@', '/' or '?' cannot be in a user name: no reading, so refused
    for url in ("postgresql://u@ser@h/db", "postgresql://u/x@h/db", "postgresql://u?x@h/db"):
        assert _refused(url) == NO_HOST, url
    # two readings: refused rather than guessed, naming neither
    for url in ("postgresql://u:x@y/z?sslmode=disable@h/db", "postgresql://u:pw@h1?application_name=x@h2"):
        assert _refused(url) == AMBIGUOUS, url


def test_an_unparsable_url_names_the_likely_fault_and_never_a_part() -> None:
    cases = {
        "postgresql://h/db?nosuchkey=1": UNKNOWN_KEY,
        "postgresql://[::1]/db?nosuchkey=1": UNKNOWN_KEY,
        "postgresql://u:pw@h/db?sslmode=disable&nosuchkey=1": UNKNOWN_KEY,
        "postgresql://u:pw@[::1]/db?nosuchkey=1": UNKNOWN_KEY,
        "postgresql://h/db?XX=1": UNKNOWN_KEY,  # a keyword is one of libpq's, exactly
        "postgresql://h/db?SSLMODE=disable": UNKNOWN_KEY,
        "postgresql://host name/db": NO_HOST,
        "postgresql://u:pw@host name/db": NO_HOST,
        "postgresql://h/db?sslmode": NO_HOST,
        "postgresql://h:port/db": NO_HOST,
        "postgresql://h/db@x": NO_HOST,
        "postgresql://[::1/db": NO_HOST,
        "postgresql://h/db?sslmode=a&": NO_HOST,
        "postgresql://h/db?=1": NO_HOST,
        # an '@' in a query value of a URL without user information: said so, not "no host part"
        "postgresql://h/db?application_name=a@b": AT_IN_QUERY,
        "postgresql://h?sslmode=require&password=x@y/z": AT_IN_QUERY,
        "postgresql://h/db?nosuchkey=a@b": UNKNOWN_KEY,
        "postgresql://[ff00]/db?nosuchkey=a@b": UNKNOWN_KEY,  # read from the first character, not the second
        "postgresql://[ff00/db?sslmode=disable": NO_HOST,  # not read from the second character
        "postgresql://h/db?application_name=a@b c@": AT_IN_QUERY,
    }
    for url, message in cases.items():
        assert _refused(url) == message, url
        assert redact(url) == "postgresql://(unparsable URL)"


def test_every_libpq_keyword_is_accepted_and_only_those() -> None:
    keywords = sorted(_pgurl._KEYWORDS)
    assert len(keywords) == 44 and "host" in keywords and "max_protocol_version" in keywords
    for key in keywords:
        assert parse(f"postgresql://h/db?{key}=v").params[key] == "v", key
        assert parse(f"postgresql://h/db?sslmode=a&{key}=v").params[key] == "v", key
    for key in ("XX", "", "hosts", "ssl", "password_"):
        assert _refused(f"postgresql://h/db?{key}=v") in (UNKNOWN_KEY, NO_HOST), key


def test_passwords_are_scrubbed_from_any_text_longest_first() -> None:
    parse("postgresql://u:Qz-longer-secret@h/db")
    parse("postgresql://u:Qz-longer@h/db")
    assert scrub("a Qz-longer-secret b Qz-longer c") == "a *** b *** c"
    # both the text as typed and as decoded are remembered
    parse("postgresql://u:Qv%40typed@h/db")
    assert scrub("Qv%40typed and Qv@typed") == "*** and ***"
    # query values of password= and sslpassword= too, and no other key's
    parse("postgresql://h/db?password=Qw-query%21&sslpassword=Qk-ssl&application_name=Qa-app")
    assert scrub("Qw-query%21 Qw-query! Qk-ssl Qa-app") == "*** *** *** Qa-app"
    assert scrub("nothing here") == "nothing here"
    # the password of the user information and those of the query, all of them
    parse("postgresql://u:Qp-userinfo@h/db?sslpassword=Qs-sslpw&password=Qq-querypw")
    assert scrub("Qp-userinfo Qs-sslpw Qq-querypw") == "*** *** ***"
    # by length, not by letter: the longer secret that holds a shorter one is replaced whole
    parse("postgresql://u:Qy-inner@h/db")
    parse("postgresql://u:AQy-inner-outer@h/db")
    assert scrub("[AQy-inner-outer] [Qy-inner]") == "[***] [***]"


def test_a_secret_shorter_than_three_characters_is_not_scrubbed() -> None:
    parse("postgresql://u:q7@h/db")
    assert scrub("xq7x") == "xq7x"
    parse("postgresql://u:Zq7@h/db")
    assert scrub("xZq7x") == "x***x"


def test_a_refused_url_remembers_no_secret() -> None:
    with pytest.raises(UrlError):
        parse("postgresql://u:Qr-refused@host name/db")
    assert scrub("Qr-refused") == "Qr-refused"


@pytest.mark.parametrize(("params", "url"), [
    ({}, "postgresql:///"),
    ({"password": "x"}, "postgresql://:x@/"),
    ({"user": "u"}, "postgresql://u@/"),
    ({"user": "u @", "password": "p/w:%", "host": "h", "port": "1", "dbname": "d b",
      "sslmode": "require", "application_name": "a&b=c"},
     "postgresql://u%20%40:p%2Fw%3A%25@h:1/d%20b?sslmode=require&application_name=a%26b%3Dc"),
    ({"host": "a,b", "port": "5"}, "postgresql://a:5,b:5/"),
    ({"host": "a,b", "port": "5,6"}, "postgresql://a:5,b:6/"),
    ({"host": "::1,h/x", "port": "1,"}, "postgresql://[::1]:1,h%2Fx/"),
    ({"port": "7"}, "postgresql://:7/"),
    # a '/' in any part is percent-encoded too (quote() would keep it by default)
    ({"user": "u/1", "password": "p/2", "host": "h/3", "dbname": "d/4", "options": "o/5"},
     "postgresql://u%2F1:p%2F2@h%2F3/d%2F4?options=o%2F5"),
])
def test_build_percent_encodes_every_part(params: dict[str, str], url: str) -> None:
    before = dict(params)
    assert build(params) == url
    assert params == before  # the caller's dictionary is not emptied
    # read back the same, but for the one port given to several hosts, now given to each
    assert parse(url).params == ({**params, "port": "5,5"} if params.get("host") == "a,b" and
                                  params.get("port") == "5" else params)


def test_the_log_filter_scrubs_psycopg_records_and_drops_none() -> None:
    parse("postgresql://u:Qf-filtered@h/db")
    _pgurl.install_log_filter()
    _pgurl.install_log_filter()  # idempotent
    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    grab = Grab(level=logging.DEBUG)
    loggers = [logging.getLogger(name) for name in ("psycopg", "psycopg.pool")]
    saved = [(logger.level, logger.disabled, logger.propagate) for logger in loggers]
    for logger in loggers:
        assert logger.filters.count(_pgurl._FILTER) == 1, logger.name
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    loggers[1].propagate = True  # psycopg.pool's records reach the handler of psycopg
    loggers[0].addHandler(grab)
    try:
        loggers[0].info("connecting with %s to %s", "Qf-filtered", "h")
        loggers[1].info("plain %s", "text")
    finally:
        loggers[0].removeHandler(grab)
        for logger, (level, disabled, propagate) in zip(loggers, saved, strict=True):
            logger.setLevel(level)
            logger.disabled = disabled
            logger.propagate = propagate
    assert [(r.name, r.getMessage()) for r in records] == [
        ("psycopg", "connecting with *** to h"), ("psycopg.pool", "plain text")]
    scrubbed, plain = records
    assert (scrubbed.msg, scrubbed.args) == ("connecting with *** to h", None)
    assert (plain.msg, plain.args) == ("plain %s", ("text",))  # left as it was


def test_the_filter_itself_keeps_every_record() -> None:
    record = logging.LogRecord("psycopg", logging.INFO, __file__, 1, "Qf-filtered in %s", ("x",), None)
    parse("postgresql://u:Qf-filtered@h/db")
    assert _pgurl._FILTER.filter(record) is True
    assert (record.msg, record.args) == ("*** in x", None)
    other = logging.LogRecord("psycopg", logging.INFO, __file__, 1, "%s", ("fine",), None)
    assert _pgurl._FILTER.filter(other) is True and (other.msg, other.args) == ("%s", ("fine",))
