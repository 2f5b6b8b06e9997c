"""The journal: :class:`SovereignJournal` (validate, encode, group-commit, read) and its asyncio
twin, over the storage port; retention runs beside it."""

from __future__ import annotations

from ._archived import EntryCounts
from ._async import AsyncSovereignJournal
from ._journal import CLEAR_OP, DEFAULT_STORAGE, MAX_ENTRY_BYTES, JournalVerifyReport, SovereignJournal
from ._summary import Summary, SummaryRow

__all__ = ["CLEAR_OP", "DEFAULT_STORAGE", "MAX_ENTRY_BYTES", "AsyncSovereignJournal", "EntryCounts",
           "JournalVerifyReport", "SovereignJournal", "Summary", "SummaryRow"]
