"""Checks of the arguments the journal's reads share (either-of lists, statuses)."""

from __future__ import annotations

from .._errors import InvalidTypeError, ValidationError
from .._model import LogStatus


def _sequence(what: str, value: object) -> list[str]:
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    raise InvalidTypeError(f"{what} must be a str or a sequence of str, got {type(value).__name__}")


def _statuses(value: object) -> tuple[LogStatus, ...]:
    items = [value] if isinstance(value, (str, LogStatus)) else _sequence("status", value)
    out: list[LogStatus] = []
    for item in items:
        if isinstance(item, LogStatus):
            out.append(item)
        elif isinstance(item, str) and item.lower() in _STATUS_NAMES:
            out.append(_STATUS_NAMES[item.lower()])
        else:
            raise ValidationError(
                f"status must be a LogStatus or one of Started, Completed, Failed; got {item!r:.80}")
    return tuple(dict.fromkeys(out))


_STATUS_NAMES = {s.value.lower(): s for s in LogStatus}
