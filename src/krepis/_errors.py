"""The exception tree of krepis: everything raised on purpose derives from :class:`JournalError`."""

from __future__ import annotations

import os

__all__ = [
    "ClosedError",
    "CorruptStorageError",
    "InvalidTypeError",
    "JournalError",
    "NeedsMigrationError",
    "OpError",
    "StorageError",
    "ValidationError",
]


class JournalError(Exception):
    """Root of every error krepis raises on purpose."""


class ValidationError(JournalError, ValueError):
    """A value given to the public API breaks a rule; nothing was written."""


class InvalidTypeError(JournalError, TypeError):
    """A value given to the public API has the wrong type; nothing was written."""


class StorageError(JournalError):
    """The storage location cannot be used (missing rights, not a store, engine failure).

    ``path`` names the location. The bytes on disk are left as they were.
    """

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


class CorruptStorageError(StorageError):
    """The storage location holds data krepis cannot read; it is never re-initialised."""


class NeedsMigrationError(StorageError):
    """The store was written in an older storage format; ``krepis migrate`` converts it.

    Nothing was changed: krepis never rewrites a store implicitly.
    """


class ClosedError(JournalError):
    """The journal (or kernel) was used after ``close()``, or outside the process that opened it."""


class OpError(JournalError):
    """An op cannot be called: unknown name, duplicate registration, or the kernel is not running."""
