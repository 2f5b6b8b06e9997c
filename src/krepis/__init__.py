"""krepis — the Sovereign Journal: a durable audit trail and crash-safe counters on LMDB.

>>> from krepis import SovereignJournal, TransactionLog, LogStatus
>>> with SovereignJournal("/tmp/krepis-doc") as journal:          # doctest: +SKIP
...     journal.record(TransactionLog.now("op", "req-1", LogStatus.Completed), increment="op")
"""

from __future__ import annotations

from ._errors import (
    ClosedError,
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    NeedsMigrationError,
    OpError,
    StorageError,
    ValidationError,
)
from ._metrics import MetricsCollector, prometheus_text, serve_metrics
from ._model import KernelContext, LogStatus, SovereignStats, TransactionLog
from ._policy import FlushPolicy
from ._version import __version__
from .archive import ArchiveReport, ArchiveVerifyReport, RetentionPolicy
from .journal import (
    DEFAULT_STORAGE,
    AsyncSovereignJournal,
    EntryCounts,
    JournalVerifyReport,
    SovereignJournal,
    Summary,
    SummaryRow,
)
from .journal._backup import backup
from .kernel import Kernel, PermissionPolicy, ScriptError, ScriptInterrupted, ScriptResult
from .storage import BackupResult, restore

__all__ = [
    "DEFAULT_STORAGE",
    "ArchiveReport",
    "ArchiveVerifyReport",
    "AsyncSovereignJournal",
    "BackupResult",
    "ClosedError",
    "CorruptStorageError",
    "EntryCounts",
    "FlushPolicy",
    "InvalidTypeError",
    "JournalError",
    "JournalVerifyReport",
    "Kernel",
    "KernelContext",
    "LogStatus",
    "MetricsCollector",
    "NeedsMigrationError",
    "OpError",
    "PermissionPolicy",
    "RetentionPolicy",
    "ScriptError",
    "ScriptInterrupted",
    "ScriptResult",
    "SovereignJournal",
    "SovereignStats",
    "StorageError",
    "Summary",
    "SummaryRow",
    "TransactionLog",
    "ValidationError",
    "__version__",
    "backup",
    "prometheus_text",
    "restore",
    "serve_metrics",
]
