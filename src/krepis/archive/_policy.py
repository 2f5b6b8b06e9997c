"""What archiving reports, and when it runs: retention policies and the ``before`` /
``keep_last`` / ``keep_days`` selectors."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from .._errors import InvalidTypeError, ValidationError
from ._format import _DAY_MS


@dataclass(frozen=True)
class ArchiveReport:
    """What :meth:`SovereignJournal.archive` did.

    ``entries``/``bundles``/``segments``/``bytes`` were archived (written) by this call;
    ``live_first_seq`` is the oldest entry the store still holds; ``archived_entries`` how many
    entries of the current log the archive holds in all; ``completed_previous`` is true when
    the call finished the removal of a run that crashed after its archive was durable."""

    directory: str
    epoch: int
    entries: int
    bundles: int
    segments: int
    bytes: int
    live_first_seq: int
    archived_entries: int
    completed_previous: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

@dataclass(frozen=True)
class ArchiveVerifyReport:
    """What :func:`verify_archive` checked: every segment's checksum, every bundle's entries
    against its recorded hash and (for the current log) the tree's stored node."""

    directory: str
    segments: int
    bundles: int
    entries: int

_POLICY = re.compile(r"(keep-last|keep-days):([0-9]+(?:\.[0-9]+)?)(?:,every:([0-9]+(?:\.[0-9]+)?)s)?\Z")

@dataclass(frozen=True)
class RetentionPolicy:
    """When a journal archives its oldest entries on its own, in the background.

    ``keep_last=N``: keep the newest N entries (at least; whole bundles move); ``keep_days=D``:
    keep entries younger than D days. ``every`` seconds between runs (default 60). Text form:
    ``"keep-last:1000000"``, ``"keep-days:30"``, optionally ``",every:300s"``.
    """

    keep_last: int | None = None
    keep_days: float | None = None
    every: float = 60.0

    def __post_init__(self) -> None:
        if (self.keep_last is None) == (self.keep_days is None):
            raise ValidationError("a retention policy needs exactly one of keep_last and keep_days")
        if self.keep_last is not None and (type(self.keep_last) is not int or self.keep_last < 0):
            raise ValidationError(f"keep_last must be an int >= 0, got {self.keep_last!r:.40}")
        if self.keep_days is not None and (isinstance(self.keep_days, bool) or not isinstance(
                self.keep_days, (int, float)) or not 0 <= self.keep_days <= 1_000_000):
            raise ValidationError(f"keep_days must be a number of days in 0 … 1000000, got "
                                  f"{self.keep_days!r:.40}")
        if isinstance(self.every, bool) or not isinstance(self.every, (int, float)) \
                or not 0.01 <= self.every <= 86_400:
            raise ValidationError(f"retention interval must be 0.01 … 86400 seconds, got {self.every!r:.40}")

    @classmethod
    def parse(cls, value: str | RetentionPolicy, source: str = "") -> RetentionPolicy:
        """A policy, or its text (``keep-last:N`` / ``keep-days:D`` [``,every:Ss``])."""
        if isinstance(value, RetentionPolicy):
            return value
        if not isinstance(value, str):
            raise InvalidTypeError(f"retention must be a RetentionPolicy or its text, got "
                                   f"{type(value).__name__}")
        match = _POLICY.match(value.strip())
        if match is None:
            raise ValidationError(f"retention policy {value!r:.80}{source} is not valid; use "
                                  "'keep-last:N' or 'keep-days:D', optionally followed by ',every:Ss'")
        kind, amount, every = match.groups()
        try:
            if kind == "keep-last":
                if "." in amount:
                    raise ValidationError("keep-last takes a whole number of entries")
                return cls(keep_last=int(amount), every=float(every) if every else 60.0)
            return cls(keep_days=float(amount), every=float(every) if every else 60.0)
        except ValidationError as exc:
            raise ValidationError(f"retention policy {value!r:.80}{source}: {exc}") from None

    def __str__(self) -> str:
        kind = f"keep-last:{self.keep_last}" if self.keep_last is not None else \
            f"keep-days:{self.keep_days:g}"
        return kind if self.every == 60.0 else f"{kind},every:{self.every:g}s"

def parse_before(before: object, keep_days: object, keep_last: object) -> tuple[int | None, int | None]:
    """Check the selector (exactly one of ``before``, ``keep_days``, ``keep_last``) and return
    ``(before in Unix ms or None, keep_last or None)``."""
    from .._time import parse_time

    given = [name for name, value in (("before", before), ("keep_last", keep_last), ("keep_days", keep_days))
             if value is not None]
    if len(given) != 1:
        raise ValidationError("archive needs exactly one of before, keep_last and keep_days"
                              + (f" (got {', '.join(given)})" if given else ""))
    if keep_last is not None:
        if type(keep_last) is not int:
            raise InvalidTypeError(f"keep_last must be an int, got {type(keep_last).__name__}")
        if keep_last < 0:
            raise ValidationError(f"keep_last must be >= 0, got {keep_last}")
        return None, keep_last
    if keep_days is not None:
        if isinstance(keep_days, bool) or not isinstance(keep_days, (int, float)):
            raise InvalidTypeError(f"keep_days must be a number, got {type(keep_days).__name__}")
        if not 0 <= keep_days <= 1_000_000:
            raise ValidationError(f"keep_days must be in 0 … 1000000, got {keep_days}")
        from .._model import now_ms

        return max(0, now_ms() - int(keep_days * _DAY_MS)), None
    return parse_time(before, param="before"), None
