"""The PostgreSQL engine: one journal shared by several machines (format in
``docs/storage-format.md``). Importing this package does not import the driver (psycopg): the
adapter module is loaded on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._url import is_postgres_url

if TYPE_CHECKING:
    from ._migrate import migrate_postgres
    from ._store import PostgresStorage

__all__ = ["PostgresStorage", "is_postgres_url", "migrate_postgres"]


def __getattr__(name: str) -> Any:
    if name == "PostgresStorage":
        from ._store import PostgresStorage

        return PostgresStorage
    if name == "migrate_postgres":
        from ._migrate import migrate_postgres

        return migrate_postgres
    raise AttributeError(name)
