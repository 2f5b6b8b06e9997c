"""Reading points in time the way people write them, as Unix milliseconds.

One parser serves the CLI (``--since``/``--until``) and the Python API
(``SovereignJournal.query(since=…, until=…)``), so both accept the same forms:

* ``int`` — Unix milliseconds, exactly (the stored unit; never reinterpreted);
* ``datetime`` — with a zone it is exact; without one it is **local time** (as
  :meth:`datetime.timestamp` reads it);
* ISO-8601 text — ``2026-01-31``, ``2026-01-31T12:00``, ``2026-01-31 12:00:00.250``,
  ``2026-01-31T12:00:00Z``, ``…+02:00``; without a zone it is **local time**, as
  ``journalctl --since`` reads it;
* relative text — ``now``, ``today``, ``yesterday``, ``tomorrow`` (local midnight), ``1h``,
  ``30m``, ``2d``, ``90s``, ``1w``, ``1h30m``, ``'2 hours ago'``, ``'-15min'`` (all in the past);
* Unix milliseconds as digits — ``1767225600000``; ``@SECONDS`` (GNU ``date`` style) for Unix
  seconds;
* ``float`` — Unix milliseconds (rounded down).

A digit string or float that is clearly Unix **seconds** (10–11 digits: a time between 2001 and
5138 in seconds, but only January 1970–March 1973 in milliseconds) is an error that says so and
shows both readings, never silently matched as milliseconds. Every error is a
:class:`~krepis.ValidationError` (a ``ValueError``) or :class:`~krepis.InvalidTypeError` (a
``TypeError``) that names the parameter and the value.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time

from ._errors import InvalidTypeError, ValidationError
from ._model import MAX_TIMESTAMP

__all__ = ["TimeLike", "parse_time"]

TimeLike = int | float | dt.datetime | str

# Numbers in [1e9, 1e11) read as milliseconds fall in 1970-01-12 … 1973-03-03, as seconds in
# 2001-09-09 … 5138: a journal written by this software holds nothing at the former.
_SECONDS_LOW = 1_000_000_000
_SECONDS_HIGH = 100_000_000_000

_ISO = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"(?:[Tt ](?P<h>[0-9]{2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?:[.,](?P<frac>[0-9]{1,9}))?)?)?"
    r"\s*(?P<zone>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?",
    re.ASCII,
)
_UNITS_MS = {
    "ms": 1, "msec": 1, "msecs": 1, "millisecond": 1, "milliseconds": 1,
    "s": 1000, "sec": 1000, "secs": 1000, "second": 1000, "seconds": 1000,
    "m": 60_000, "min": 60_000, "mins": 60_000, "minute": 60_000, "minutes": 60_000,
    "h": 3_600_000, "hr": 3_600_000, "hrs": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
    "w": 604_800_000, "week": 604_800_000, "weeks": 604_800_000,
}
_PART = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]+)", re.ASCII)
_FORMS = ("use ISO-8601 (2026-01-31T12:00:00Z; no zone = local time), a relative time "
          "(1h, 30m, 2d, '2 hours ago', today, yesterday, now), Unix milliseconds, or @SECONDS")


class _Unreadable(ValidationError):
    """Why a value is not a time (without the parameter's name)."""


def parse_time(value: object, *, param: str, now_ms: int | None = None) -> int:
    """``value`` as Unix milliseconds in ``0 … 2**63-1``; see the module docstring for the forms.

    ``param`` names the parameter in error messages (``"since"``, ``"--until"``). ``now_ms``
    fixes "now" for relative forms (default: the current time).
    """
    try:
        return parse_time_unnamed(value, now_ms=now_ms)
    except InvalidTypeError as exc:
        raise InvalidTypeError(f"{param} {exc}") from None
    except _Unreadable as exc:
        raise ValidationError(f"{param} {exc}") from None


def parse_time_unnamed(value: object, *, now_ms: int | None = None) -> int:
    """Like :func:`parse_time`; errors start with the value (for callers adding their own name)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, dt.datetime)):
        raise InvalidTypeError(
            f"must be an int (Unix ms), float, datetime or str, got {type(value).__name__} {value!r:.80}")
    if isinstance(value, int):
        return _in_range(value, repr(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Unreadable(f"{value!r} is not a finite number of Unix milliseconds")
        _refuse_seconds(value, repr(value))
        return _in_range(math.floor(value), repr(value))
    if isinstance(value, dt.datetime):
        return _in_range(_datetime_ms(value), repr(value))
    return _parse_text(value, now_ms)


def _in_range(ms: int, shown: str) -> int:
    if not 0 <= ms <= MAX_TIMESTAMP:
        raise _Unreadable(f"{shown} is outside 0 … 2**63-1 (Unix milliseconds: 1970 and later)")
    return ms


def _refuse_seconds(number: float, shown: str) -> None:
    if _SECONDS_LOW <= number < _SECONDS_HIGH:
        as_seconds = dt.datetime.fromtimestamp(number, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        raise _Unreadable(
            f"{shown} looks like Unix seconds ({as_seconds}); as milliseconds it would be in 1970. "
            f"Give milliseconds ({int(number) * 1000}) or @{int(number)} for seconds")


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _datetime_ms(moment: dt.datetime) -> int:
    try:
        if moment.tzinfo is None or moment.utcoffset() is None:
            moment = moment.astimezone()  # a naive datetime is local time
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    except (OverflowError, OSError, ValueError) as exc:
        raise _Unreadable(f"{moment.isoformat()!r} cannot be converted to Unix time ({exc})") from None


def _parse_text(value: str, now_ms: int | None) -> int:
    text = value.strip()
    shown = repr(value) if len(value) <= 80 else repr(value[:80]) + "…"
    if not text:
        raise _Unreadable(f"{shown} is empty; {_FORMS}")
    if text.isascii() and text.isdigit():
        number = int(text)
        _refuse_seconds(number, shown)
        return _in_range(number, shown)
    if text.startswith("@") and text[1:].isascii() and text[1:].isdigit():
        return _in_range(int(text[1:]) * 1000, shown)
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    lowered = text.lower()
    if lowered == "now":
        return now
    if lowered in ("today", "yesterday", "tomorrow"):
        day = dt.datetime.fromtimestamp(now / 1000).date()
        day += dt.timedelta(days={"today": 0, "yesterday": -1, "tomorrow": 1}[lowered])
        return _in_range(_datetime_ms(dt.datetime.combine(day, dt.time())), shown)
    relative = _relative(lowered)
    if relative is not None:
        return _in_range(now - relative, shown)
    match = _ISO.fullmatch(text)
    if match is None:
        raise _Unreadable(f"{shown} is not a time; {_FORMS}")
    return _in_range(_iso_ms(match, shown), shown)


def _relative(text: str) -> int | None:
    """Milliseconds back from now for '1h', '1h30m', '2 hours ago', '-15min'; None if not relative."""
    body = text
    if body.endswith(" ago"):
        body = body[:-4]
    elif body.startswith("-"):
        body = body[1:]
    position, total = 0, 0.0
    while position < len(body):
        part = _PART.match(body, position)
        if part is None or part.group(2) not in _UNITS_MS:
            return None
        total += float(part.group(1)) * _UNITS_MS[part.group(2)]
        position = part.end()
    if position == 0:
        return None
    return int(total)


def _iso_ms(match: re.Match[str], shown: str) -> int:
    g = match.groupdict()
    frac = (g["frac"] or "0")[:6].ljust(6, "0")
    zone = g["zone"]
    tz: dt.tzinfo | None = None
    if zone is not None:
        if zone in "Zz":
            tz = dt.timezone.utc
        else:
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:] or 0)
            if hours > 23 or minutes > 59:
                raise _Unreadable(f"{shown}: the offset {zone} is not a valid UTC offset")
            sign = 1 if zone[0] == "+" else -1
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    try:
        moment = dt.datetime(int(g["y"]), int(g["mo"]), int(g["d"]), int(g["h"] or 0), int(g["mi"] or 0),
                             int(g["s"] or 0), int(frac), tzinfo=tz)
    except ValueError as exc:
        raise _Unreadable(f"{shown} is not a valid date/time ({exc})") from None
    return _datetime_ms(moment)
