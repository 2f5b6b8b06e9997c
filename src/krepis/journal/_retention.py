"""Retention in the background: a thread that archives a journal's oldest entries by a
:class:`~krepis.RetentionPolicy`."""

from __future__ import annotations

import threading
from typing import Protocol

from ..archive import RETENTION_MIN_BUNDLES, RetentionPolicy


class _Archiver(Protocol):
    """What retention needs of a journal: its path, and one archive step."""

    @property
    def path(self) -> str: ...

    def _archive_step(self, directory: str, *, keep_last: int | None = None,
                      keep_days: float | None = None, min_bundles: int = 1) -> object: ...

__all__ = ["RetentionThread"]


class RetentionThread:
    """Applies a retention policy every ``policy.every`` seconds until stopped. A failed run is
    logged (``krepis.retention``) and kept in :attr:`error`; the next run tries again."""

    def __init__(self, journal: _Archiver, policy: RetentionPolicy, directory: str) -> None:
        self._journal, self.policy, self.directory = journal, policy, directory
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.runs = 0
        self._thread = threading.Thread(target=self._run, name=f"krepis-retention:{journal.path}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import logging

        log = logging.getLogger("krepis.retention")
        while not self._stop.wait(self.policy.every):
            try:
                self._journal._archive_step(self.directory, keep_last=self.policy.keep_last,
                                            keep_days=self.policy.keep_days,
                                            min_bundles=RETENTION_MIN_BUNDLES)
                self.error = None
            except BaseException as exc:  # kept and logged; the journal keeps working
                self.error = exc
                log.warning("retention run on %s failed: %s", self._journal.path, exc)
            self.runs += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
