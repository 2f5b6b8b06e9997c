"""The LMDB engine: the default, one environment per store directory (format in
``docs/storage-format.md``)."""

from __future__ import annotations

from ._backup import BackupResult, backup, restore
from ._compact import CompactResult, DiskUse, compact, disk_use
from ._env import open_in_this_process
from ._layout import FORMAT_VERSION
from ._migrate import migrate_lmdb
from ._store import LmdbStorage

__all__ = ["FORMAT_VERSION", "BackupResult", "CompactResult", "DiskUse", "LmdbStorage", "backup", "compact",
           "disk_use", "migrate_lmdb", "open_in_this_process", "restore"]
