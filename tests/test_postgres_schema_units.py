"""The helpers of ``storage/postgres/_schema``: the libpq parameters a URL gives (with krepis's
defaults), the redacted location, which errors leave a write's outcome unknown, and the one
line of an engine's message krepis shows. Pure functions: no server needed."""

from __future__ import annotations

from krepis.storage.postgres._schema import _connection_lost, _first_line, _params, redact
from krepis.storage.postgres._url import parse


def test_params_add_krepis_defaults_and_keep_what_the_url_says() -> None:
    assert _params("postgresql://u:Qs-schema-pw@h:7/db") == {
        "user": "u", "password": "Qs-schema-pw", "host": "h", "port": "7", "dbname": "db",
        "connect_timeout": "10", "application_name": "krepis"}
    assert _params("postgresql://h/db?connect_timeout=3&application_name=mine") == {
        "host": "h", "dbname": "db", "connect_timeout": "3", "application_name": "mine"}
    assert _params("postgresql://h/db?connect_timeout=&application_name=") == {
        "host": "h", "dbname": "db", "connect_timeout": "", "application_name": ""}
    assert parse("postgresql://h/db").params == {"host": "h", "dbname": "db"}  # the parse is not changed


def test_redact_is_the_url_without_its_password() -> None:
    assert redact("postgresql://u:Qs-redact-pw@h:7/db?sslmode=require") == "postgresql://u@h:7/db"
    assert redact("postgresql://u:pw@host name/db") == "postgresql://(unparsable URL)"


def test_only_a_lost_connection_leaves_the_outcome_unknown() -> None:
    class Failure(Exception):
        def __init__(self, sqlstate: str | None) -> None:
            self.sqlstate = sqlstate

    for state in (None, "08000", "08006", "57P01", "57P02", "57P03", "57P05"):
        assert _connection_lost(Failure(state)) is True, state
    for state in ("", "0", "80000", "57014", "57000", "5P7", "40001", "55P03", "23505", "XX000", "P0001"):
        assert _connection_lost(Failure(state)) is False, state
    assert _connection_lost(ValueError("no sqlstate attribute")) is True


def test_first_line_is_stripped_scrubbed_and_never_empty() -> None:
    parse("postgresql://u:Qs-first-line@h/db")
    assert _first_line(RuntimeError("  \n  FATAL: Qs-first-line refused\nDETAIL: more")) == (
        "FATAL: *** refused")
    assert _first_line(RuntimeError("only line")) == "only line"
    assert _first_line(RuntimeError(" \n\t ")) == "RuntimeError"
    assert _first_line(KeyError()) == "KeyError"
