"""Flush policies: when a write is on stable storage relative to when the call returns."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ._errors import InvalidTypeError, ValidationError

__all__ = ["MAX_INTERVAL_MS", "FlushPolicy"]

MAX_INTERVAL_MS = 3_600_000
_INTERVAL = re.compile(r"interval:(\d+)ms\Z")


@dataclass(frozen=True, slots=True)
class FlushPolicy:
    """When writes reach stable storage.

    * ``FlushPolicy.sync()`` — ``"sync"`` (default): a call returns only after its own data is
      durable. Concurrent callers share commits (group commit).
    * ``FlushPolicy.interval(ms=10)`` — ``"interval:10ms"``: a call returns once its transaction
      is committed to the engine (it survives a crash of the process); a background sync makes it
      durable within ``ms`` milliseconds. A machine crash or power loss may lose the writes of
      that last window, and only those: the store opens intact at an earlier commit, counters
      and entries agreeing. ``flush()`` and ``close()`` make everything durable.
    """

    interval_ms: int | None = None

    @classmethod
    def sync(cls) -> FlushPolicy:
        return cls(None)

    @classmethod
    def interval(cls, ms: int = 10) -> FlushPolicy:
        if type(ms) is not int:
            raise InvalidTypeError(f"flush interval must be an int of milliseconds, got {type(ms).__name__}")
        if not 1 <= ms <= MAX_INTERVAL_MS:
            raise ValidationError(f"flush interval {ms}ms is outside 1 … {MAX_INTERVAL_MS}ms")
        return cls(ms)

    @property
    def durable(self) -> bool:
        """True when every call returns only after its data is durable."""
        return self.interval_ms is None

    @classmethod
    def parse(cls, value: str | FlushPolicy | None) -> FlushPolicy:
        """Accept a policy, ``"sync"``, ``"interval:Nms"``, or ``None`` (``KREPIS_FLUSH``, else sync)."""
        if isinstance(value, FlushPolicy):
            return value
        if value is None:
            value = os.environ.get("KREPIS_FLUSH") or "sync"
            source = " (from KREPIS_FLUSH)" if os.environ.get("KREPIS_FLUSH") else ""
        else:
            source = ""
        if not isinstance(value, str):
            raise InvalidTypeError(
                f"flush must be 'sync', 'interval:Nms' or a FlushPolicy, got {type(value).__name__}")
        text = value.strip()
        if text == "sync":
            return cls.sync()
        match = _INTERVAL.match(text)
        if match:
            ms = int(match.group(1))
            if not 1 <= ms <= MAX_INTERVAL_MS:
                raise ValidationError(
                    f"flush policy {value!r}{source}: interval {ms}ms is outside 1 … {MAX_INTERVAL_MS}ms")
            return cls(ms)
        raise ValidationError(
            f"flush policy {value!r}{source} is not valid; use 'sync' or 'interval:Nms' "
            f"(N from 1 to {MAX_INTERVAL_MS})")

    def __str__(self) -> str:
        return "sync" if self.interval_ms is None else f"interval:{self.interval_ms}ms"
