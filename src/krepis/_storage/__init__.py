"""The storage port: the small interface every engine implements.

The journal validates, encodes and batches; an adapter only stores. One call,
:meth:`Storage.write_batch`, applies a list of write requests in ONE atomic transaction.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EntryFilter", "Storage", "WriteRequest", "open_storage"]


@dataclass(slots=True)
class WriteRequest:
    """One caller's atomic unit: entries to append and counters to bump by one each.

    ``entries`` holds ``(timestamp, request_id_utf8, value_json_utf8)`` tuples;
    ``increments`` holds counter names (UTF-8, without the ``op_count:`` prefix).
    """

    entries: Sequence[tuple[int, bytes, bytes]]
    increments: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """What a scan returns. ``since`` is inclusive, ``until`` exclusive (Unix ms)."""

    since: int | None = None
    until: int | None = None
    request_id: bytes | None = None


class Storage(abc.ABC):
    """An engine holding the journal (ordered entries) and the counters.

    Guarantees every adapter gives (checked by the shared conformance suite in ``tests/``):

    * ``write_batch`` is atomic: all requests of a batch are stored, or none is.
    * Entries are ordered by (timestamp, arrival); no entry ever replaces another.
    * With ``durable=True`` a write returns only after its data is on stable storage.
    """

    location: str

    @abc.abstractmethod
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        """Apply every request in one transaction; return, per request, its counters' new values."""

    @abc.abstractmethod
    def get_count(self, name: bytes) -> int:
        """One counter's value; 0 when it was never incremented."""

    @abc.abstractmethod
    def get_counts(self) -> dict[str, int]:
        """Every counter, by name."""

    @abc.abstractmethod
    def entry_count(self) -> int:
        """How many entries the journal holds, without scanning them."""

    @abc.abstractmethod
    def scan(
        self, flt: EntryFilter, *, newest_first: bool, after: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` ``(position, value)`` pairs in order, starting past position ``after``.

        ``position`` is opaque; passing the last one back as ``after`` resumes the scan.
        """

    @abc.abstractmethod
    def clear(self) -> None:
        """Remove every entry and counter, durably. The store stays usable."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every committed write durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine. Idempotent."""


def open_storage(
    location: str | os.PathLike[str], *, durable: bool = True, create: bool = True
) -> Storage:
    """Choose the adapter from the location: a ``postgresql://`` (or ``postgres://``) URL selects
    PostgreSQL, anything else is a directory for LMDB. ``create=False`` refuses to start a new
    store where there is none."""
    from .postgres import is_postgres_url

    if is_postgres_url(location):
        from .postgres import PostgresStorage

        return PostgresStorage(str(location), durable=durable, create=create)
    from .lmdb import LmdbStorage

    return LmdbStorage(location, durable=durable, create=create)
