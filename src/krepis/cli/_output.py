"""How entries are shown: columns fitted to the terminal, TSV and JSON lines, times and
durations, and the pager."""
from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import click
from rich.cells import cell_len, set_cell_size

from .._model import TransactionLog
from ._common import (
    _inert_json,
    _inert_tsv,
    _reader_gone,
    inert,
)

_STATUS_COLOR = {"Started": "yellow", "Completed": "green", "Failed": "red"}

class _SecondCache:
    """Formats the whole-second part of a timestamp once per second (rows come in time order)."""

    def __init__(self, fmt: Callable[[int], str]) -> None:
        self._fmt = fmt
        self._second: int | None = None
        self._text = ""

    def __call__(self, ms: int) -> str:
        second = ms // 1000
        if second != self._second:
            self._second, self._text = second, self._fmt(second)
        return self._text

def _utc_second(second: int) -> str:
    try:
        return dt.datetime.fromtimestamp(second, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    except (OverflowError, ValueError, OSError):
        return f"@{second}."

def _local_second(second: int, with_year: bool) -> str:
    try:
        moment = time.localtime(second)
    except (OverflowError, ValueError, OSError):
        return f"@{second}."
    return time.strftime("%Y-%m-%d %H:%M:%S." if with_year else "%m-%d %H:%M:%S.", moment)

_utc_prefix = _SecondCache(_utc_second)

def _utc_iso(ms: int) -> str:
    """``2026-01-31T12:00:00.250Z``: the unambiguous form for plain (piped) output."""
    return f"{_utc_prefix(ms)}{ms % 1000:03d}Z"

def _duration(us: int | None) -> str:
    if us is None:
        return ""
    if us < 1000:
        return f"{us}µs"
    if us < 1_000_000:
        return f"{us / 1000:.1f}ms"
    if us < 100_000_000:
        return f"{us / 1_000_000:.2f}s"
    return f"{us // 1_000_000}s"

def _fit(text: str, width: int) -> str:
    """``text`` padded or cut (with …) to exactly ``width`` terminal cells."""
    if width <= 0:
        return ""
    if text.isascii():
        return text.ljust(width) if len(text) <= width else text[:width - 1] + "…"
    if cell_len(text) <= width:
        return set_cell_size(text, width)
    return set_cell_size(text, width - 1) + "…"

def _crop(text: str, width: int) -> str:
    """``text`` cut (with …) to at most ``width`` cells, not padded."""
    if (len(text) <= width if text.isascii() else cell_len(text) <= width):
        return text
    return _fit(text, width)

def _use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"

def _width() -> int:
    return max(40, shutil.get_terminal_size((80, 24)).columns)

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

class _Columns:
    """Entries as one terminal line each, fitted to ``width`` columns: never wraps.

    No value is ever cut silently: what does not fit its column ends in ``…``. The request id
    keeps priority over the op name: it is shown whole (36 cells, a UUID) as soon as the line
    leaves op names 16 cells and errors 12; narrower, a UUID shows its first group and ``…``
    (``ab64ab48…``) and another id its first 11 characters and ``…`` — either is a prefix
    ``--request-id`` finds the request by. 80 columns: local time without the year, op names
    up to 16 cells; wider terminals get the year, longer op names (up to 40) and longer errors.
    Given a ``sample`` (the entries shown first), the op and request-id columns are no wider
    than those entries need and errors get the rest; a later, longer value ends in ``…``.
    """

    def __init__(self, width: int, color: bool, sample: Sequence[TransactionLog] = ()) -> None:
        self.with_year = width >= 100
        time_w = 23 if self.with_year else 18
        rest = width - (time_w + 9 + 7 + 6)  # for the op, the request id and the error
        self.rid_w = 36 if rest >= 36 + 16 + 12 else 12
        if sample:  # the entries shown first: columns no wider than they need, the rest to errors
            need = max(_cells(inert(e.request_id)) for e in sample)
            if need <= self.rid_w:
                self.rid_w = max(7, need)
        left = rest - self.rid_w
        self.op_w = max(8, min(40, left - max(12, left // 3)))
        if sample:
            self.op_w = max(8, min(self.op_w, max(_cells(inert(e.op_name)) for e in sample)))
        self.error_w = max(0, left - self.op_w)
        self.time_w = time_w
        self.color = color
        self._time = _SecondCache(lambda second: _local_second(second, self.with_year))

    def header(self) -> str:
        text = " ".join((_fit("TIME", self.time_w), _fit("OP", self.op_w), _fit("REQUEST", self.rid_w),
                         _fit("STATUS", 9), "TOOK".rjust(7), "ERROR" if self.error_w >= 5 else ""))
        text = text.rstrip()
        return click.style(text, bold=True) if self.color else text

    def line(self, entry: TransactionLog) -> str:
        rid = entry.request_id
        if self.rid_w < 36 and _UUID.match(rid):
            rid = rid[:8] + "…"  # (a UUID's first group: unique enough to search by)
        status = entry.status.value.ljust(9)
        if self.color:
            status = click.style(status, fg=_STATUS_COLOR[entry.status.value])
        ts = entry.timestamp
        text = (f"{self._time(ts)}{ts % 1000:03d} {_fit(inert(entry.op_name), self.op_w)} "
                f"{_fit(inert(rid), self.rid_w)} {status} {_duration(entry.duration_us).rjust(7)}")
        if entry.error and self.error_w:
            text += " " + _crop(inert(entry.error), self.error_w)
        return text.rstrip()

def _tsv_line(entry: TransactionLog) -> str:
    """Tab-separated: UTC time, op, request id, status, duration in µs, error (escaped, one line)."""
    return "\t".join((
        _utc_iso(entry.timestamp), _inert_tsv(entry.op_name), _inert_tsv(entry.request_id),
        entry.status.value, "" if entry.duration_us is None else str(entry.duration_us),
        "" if entry.error is None else _inert_tsv(entry.error),
    ))

def _json_line(entry: TransactionLog) -> str:
    return _inert_json(entry.to_json())

#: The header line of ``--format csv``.
_CSV_HEADER = "seq,time,op_name,request_id,status,duration_us,error"

def _csv_field(text: str) -> str:
    text = _inert_tsv(text)  # (no newline, tab or control character is left to quote)
    return f'"{text.replace(chr(34), chr(34) * 2)}"' if ("," in text or '"' in text) else text

def _csv_line(entry: TransactionLog) -> str:
    """RFC 4180: seq, UTC time, op, request id, status, duration in µs, error (escaped as in TSV)."""
    return ",".join((
        "" if entry.seq is None else str(entry.seq), _utc_iso(entry.timestamp), _csv_field(entry.op_name),
        _csv_field(entry.request_id), entry.status.value,
        "" if entry.duration_us is None else str(entry.duration_us),
        "" if entry.error is None else _csv_field(entry.error),
    ))

#: What ``--format`` takes (``json`` is ``jsonl``'s other name).
FORMATS = ("table", "tsv", "jsonl", "json", "csv")

def _format_option(*flags: str, help: str) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """``--format table|tsv|jsonl|csv`` under ``flags`` (``-o`` too for ``logs``)."""
    return click.option(*flags, "fmt", type=click.Choice(FORMATS, case_sensitive=False), default=None,
                        metavar="table|tsv|jsonl|csv", help=help)

def _cells(text: str) -> int:
    return len(text) if text.isascii() else cell_len(text)

def _renderer(fmt: str, *, color: bool,
              sample: Sequence[TransactionLog] = ()) -> tuple[str | None, Callable[[TransactionLog], str]]:
    """The header line (or None) and the line of each entry, for ``fmt`` (a ``--format`` value).

    ``table`` is fitted to the terminal (or ``COLUMNS``, or 80 columns when there is none), its
    op and request-id columns to the ``sample`` entries (those shown first) when given.
    """
    fmt = fmt.lower()
    if fmt == "table":
        columns = _Columns(_width(), color, sample)
        return columns.header(), columns.line
    if fmt == "csv":
        return _CSV_HEADER, _csv_line
    if fmt in ("jsonl", "json"):
        return None, _json_seq_line
    return None, _tsv_line

def _headed(header: str | None, lines: Iterator[str]) -> Iterator[str]:
    if header is not None:
        yield header
    yield from lines

def _with_seq(entry: TransactionLog) -> str:
    """The stored form with the entry's sequence number in front: ``{"seq":41,"timestamp":…}``.
    Without its ``"seq":N,`` the line is the stored form byte for byte (what the tree hashes)."""
    text = entry.to_json()
    return text if entry.seq is None else f'{{"seq":{entry.seq},{text[1:]}'

def _json_seq_line(entry: TransactionLog) -> str:
    """:func:`_with_seq`, with what terminals act on written as ``\\uXXXX``."""
    return _inert_json(_with_seq(entry))

_BATCH = 512

def _to_stdout(lines: Iterable[str]) -> None:
    """Write ``lines`` in batches; stop as soon as the reader has gone."""
    batch: list[str] = []
    out = sys.stdout
    for line in lines:
        batch.append(line)
        if len(batch) >= _BATCH:
            out.write("\n".join(batch) + "\n")
            batch.clear()
            if _reader_gone():
                return
    if batch:
        out.write("\n".join(batch) + "\n")
    out.flush()

def _pager_command() -> list[str] | None:
    """``KREPIS_PAGER``, else ``PAGER``, else ``less`` — or None when none is usable."""
    raw = os.environ.get("KREPIS_PAGER", os.environ.get("PAGER", "less")).strip()
    if not raw or raw == "cat":
        return None
    try:
        argv = shlex.split(raw)
    except ValueError:
        return None
    return argv if argv and shutil.which(argv[0]) else None

def _to_pager(argv: list[str], lines: Iterable[str]) -> None:
    env = dict(os.environ)
    env.setdefault("LESS", "FRSX")  # quit if one screen, keep colours, chop long lines, no clear
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, env=env, encoding="utf-8", errors="replace")
    except OSError:
        _to_stdout(lines)
        return
    assert proc.stdin is not None
    batch: list[str] = []
    try:
        for line in lines:
            batch.append(line)
            if len(batch) >= _BATCH:
                proc.stdin.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            proc.stdin.write("\n".join(batch) + "\n")
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the pager was quit before the end
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        while True:
            try:
                proc.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C belongs to the pager
                continue

def _emit_lines(lines: Iterator[str], *, pager: bool) -> None:
    """Print ``lines``; on a terminal, through a pager once they are longer than the screen."""
    if pager:
        rows = shutil.get_terminal_size((80, 24)).lines
        head: list[str] = []
        for line in lines:
            head.append(line)
            if len(head) >= rows:  # longer than the screen (keeping a line for the prompt)
                break
        else:
            _to_stdout(head)
            return
        rest = _chain(head, lines)
        argv = _pager_command()
        if argv is not None:
            _to_pager(argv, rest)
            return
        lines = rest
    _to_stdout(lines)

def _chain(first: list[str], rest: Iterator[str]) -> Iterator[str]:
    yield from first
    yield from rest

def _with_header(header: str, lines: Iterator[str]) -> Iterator[str]:
    first = next(lines, None)
    if first is None:
        yield "-- no entries --"
        return
    yield header
    yield first
    yield from lines
