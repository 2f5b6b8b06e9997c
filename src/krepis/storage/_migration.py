"""``krepis migrate``: convert an LMDB store of storage format 1 (krepis 0.1) or 2 to format 3,
and a PostgreSQL journal of format 1 to format 2.

A migration never leaves a half-converted store: after a crash at any point (SIGKILL included)
the store is either the untouched old store or the complete new one.

* **LMDB, format 1**: the new store is built in ``<store>/.migrate/`` and made durable, then its
  ``data.mdb`` replaces the old one with one atomic ``rename`` (and the directory is fsynced).
  The old ``data.mdb`` is never written. The store must not be open anywhere else meanwhile:
  the migration holds the directory lock and LMDB's exclusive lock on ``lock.mdb``, and refuses
  to start when another process has the store open.
* **LMDB, format 2**: the databases stay; one durable commit sets the version, and the first
  open creates the commit log (``commit.log``) from the store as it is. Same locks.
* **PostgreSQL**: one transaction creates the format-2 tables, copies every row, builds the
  Merkle tree, drops the format-1 tables and sets the format; it commits entirely or not at all.

Entries keep every field and their relative append order (format 1's sequence), and get new
sequence numbers 0, 1, 2, … in that order; counters are copied exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MigrationResult", "Progress"]

Progress = Callable[[int, int], None]  # (entries done, entries in all)

@dataclass(frozen=True)
class MigrationResult:
    """What a migration did. ``from_format == to_format`` means there was nothing to do."""

    location: str
    from_format: int
    to_format: int
    entries: int
    counters: int
