"""The exception tree (``krepis._errors``): what each error is also (so ``except ValueError`` and
``except TypeError`` catch bad input), and a storage error's ``path`` as a plain string."""

from __future__ import annotations

from pathlib import Path

import pytest

import krepis
from krepis import (
    ClosedError,
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    NeedsMigrationError,
    OpError,
    StorageError,
    ValidationError,
)


@pytest.mark.parametrize(("error", "bases"), [
    (ValidationError, (JournalError, ValueError)), (InvalidTypeError, (JournalError, TypeError)),
    (StorageError, (JournalError,)), (CorruptStorageError, (StorageError,)),
    (NeedsMigrationError, (StorageError,)), (ClosedError, (JournalError,)), (OpError, (JournalError,)),
])
def test_each_error_is_what_its_callers_catch(error: type[Exception], bases: tuple[type, ...]) -> None:
    assert error.__bases__ == bases
    assert issubclass(error, JournalError) and getattr(krepis, error.__name__) is error


@pytest.mark.parametrize("error", [StorageError, CorruptStorageError, NeedsMigrationError])
def test_a_storage_error_names_its_path_as_a_string(error: type[StorageError]) -> None:
    exc = error("the message", Path("/srv/store"))
    assert (str(exc), exc.path, exc.args) == ("the message", "/srv/store", ("the message",))
    assert error("m", "/a").path == "/a"
    assert error("m").path is None and error("m", None).path is None
