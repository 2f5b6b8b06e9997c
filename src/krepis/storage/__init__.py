"""Storage: the port every engine implements, and the engines (LMDB, PostgreSQL).

The journal validates, encodes and batches; an adapter only stores. See :mod:`._port` for the
interface, ``docs/storage-format.md`` for the on-disk contract, ``tests/storage_conformance.py``
for the rules every engine passes.
"""

from __future__ import annotations

import os

from ._migration import MigrationResult, Progress
from ._port import (
    MAX_SETTING_BYTES,
    SETTINGS,
    LogAudit,
    Order,
    Query,
    Storage,
    TreeHead,
    VerifyReport,
    WriteRequest,
    check_checkpoint,
    check_drop_prefix,
    check_setting,
    decode_setting,
)
from .lmdb import BackupResult, backup, restore

__all__ = [
    "MAX_SETTING_BYTES",
    "SETTINGS",
    "BackupResult",
    "LogAudit",
    "MigrationResult",
    "Order",
    "Progress",
    "Query",
    "Storage",
    "TreeHead",
    "VerifyReport",
    "WriteRequest",
    "backup",
    "check_checkpoint",
    "check_drop_prefix",
    "check_setting",
    "decode_setting",
    "migrate",
    "open_storage",
    "restore",
]

def open_storage(
    location: str | os.PathLike[str], *, durable: bool = True, create: bool = True
) -> Storage:
    """Choose the adapter from the location: a ``postgresql://`` (or ``postgres://``) URL selects
    PostgreSQL, anything else is a directory for LMDB. ``create=False`` refuses to start a new
    store where there is none."""
    from .postgres import is_postgres_url  # (without importing the PostgreSQL driver)

    if is_postgres_url(location):
        from .postgres import PostgresStorage

        return PostgresStorage(str(location), durable=durable, create=create)
    from .lmdb import LmdbStorage

    return LmdbStorage(location, durable=durable, create=create)


def migrate(location: str | os.PathLike[str], *, progress: Progress | None = None) -> MigrationResult:
    """Convert the store at ``location`` to the current storage format (see the module docs)."""
    from .postgres import is_postgres_url  # (without importing the PostgreSQL driver)

    if is_postgres_url(location):
        from .postgres import migrate_postgres

        return migrate_postgres(str(location), progress)
    from .lmdb import migrate_lmdb

    return migrate_lmdb(os.path.abspath(os.path.expanduser(os.fspath(location))), progress)
