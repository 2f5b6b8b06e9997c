"""The ``krepis`` command line: run the kernel, inspect and export the journal.

Output guarantees (every command but ``run``'s own messages):

* Everything read from the journal — op names, request ids, error texts, counter names — is
  printed as inert text: never interpreted as Rich markup, and control characters (newlines,
  tabs, ANSI/OSC escape sequences, C1 controls), Unicode bidi controls and line separators are
  shown as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``), so no entry can forge a line, move
  the cursor or retitle the operator's terminal.
* A reader that goes away (``krepis logs | head -1``) ends the command quietly with status 0.
* Expected errors are one line on stderr (``Error: …``) and a non-zero status, never a traceback;
  an error about a value from an environment variable names the variable.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any, TextIO, cast

import click
from click.core import ParameterSource
from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.table import Table

from . import __version__
from ._errors import JournalError, StorageError
from ._model import LogStatus, TransactionLog
from ._policy import FlushPolicy
from ._time import parse_time_unnamed
from .journal import DEFAULT_STORAGE, SovereignJournal
from .kernel import Kernel

__all__ = ["cli", "main"]

_STATUS_COLOR = {"Started": "yellow", "Completed": "green", "Failed": "red"}
# Read-only commands never depend on the write-side KREPIS_FLUSH: they open with this policy.
_READ_POLICY = "sync"


# -- inert text ------------------------------------------------------------------------------

# C0 and C1 controls, DEL, bidi embeddings/overrides/isolates and marks, line/paragraph
# separators, and lone surrogates (not printable; only reachable through JSON escapes).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_UNSAFE_TSV = re.compile(_UNSAFE.pattern[:-1] + "\\\\]")
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def inert(text: str) -> str:
    """``text`` safe to print on a terminal: every control/bidi character as a visible escape."""
    return text if _UNSAFE.search(text) is None else _UNSAFE.sub(_escape_char, text)


def _inert_tsv(text: str) -> str:
    """Like :func:`inert`, and backslashes doubled, so a tab-separated field is unambiguous."""
    return text if _UNSAFE_TSV.search(text) is None else _UNSAFE_TSV.sub(_escape_char, text)


def _inert_json(line: str) -> str:
    """A JSON text with the characters JSON leaves raw but terminals act on written as ``\\uXXXX``."""
    if _UNSAFE_JSON.search(line) is None:
        return line
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


# -- stdout that survives its reader going away ----------------------------------------------

class _PipeGuard:
    """Wraps ``sys.stdout``: once the reader has gone (EPIPE), writes are discarded quietly.

    Commands that stream check :func:`_reader_gone` to stop early; ``run`` carries on (the
    script's work matters more than its chatter) and still exits 0.
    """

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self.gone = False

    def write(self, text: str) -> int:
        if self.gone:
            return len(text)
        try:
            return self._inner.write(text)
        except BrokenPipeError:
            self._reader_went_away()
            return len(text)

    def flush(self) -> None:
        if self.gone:
            return
        try:
            self._inner.flush()
        except BrokenPipeError:
            self._reader_went_away()

    def _reader_went_away(self) -> None:
        self.gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:  # what is still buffered drains into /dev/null instead of failing again at exit
            os.dup2(devnull, self._inner.fileno())
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _guard_stdout() -> None:
    if not isinstance(sys.stdout, _PipeGuard) and sys.stdout is not None:
        sys.stdout = cast(TextIO, _PipeGuard(sys.stdout))


def _reader_gone() -> bool:
    return isinstance(sys.stdout, _PipeGuard) and sys.stdout.gone


class _Group(click.Group):
    """Turns expected errors into one line on stderr and a non-zero exit, without a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JournalError as exc:
            message = str(exc)
            source = (ctx.obj or {}).get("storage_source")
            if isinstance(exc, StorageError) and source:
                message += f" (the storage location comes from {source})"
            raise click.ClickException(inert(message)) from exc
        except click.ClickException as exc:
            exc.message = inert(exc.message)  # type: ignore[misc]  # the text may quote journal data
            raise
        except BrokenPipeError:
            # The reader went away (e.g. `krepis export | head`): stop quietly, successfully.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except OSError as exc:
            text = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
            raise click.ClickException(inert(text)) from exc


def _console() -> Console:
    # Piped output gets wide lines rather than columns folded at 80 characters.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _emit_json(value: Any) -> None:
    click.echo(_inert_json(json.dumps(value, ensure_ascii=False, separators=(",", ":"))))


def _storage(ctx: click.Context) -> str:
    """The storage location in force; a path that is not valid UTF-8 is a one-line error."""
    obj = ctx.find_root().obj
    location = str(obj["storage"])
    try:
        location.encode("utf-8")
    except UnicodeEncodeError:
        where = f" (from {obj['storage_source']})" if obj.get("storage_source") else ""
        raise click.BadParameter(
            f"{os.fsencode(location)!r}{where} is not valid UTF-8; krepis needs a UTF-8 storage path",
            param_hint="--storage") from None
    return location


def _set_storage(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        obj = ctx.find_root().obj
        obj["storage"] = obj["storage_explicit"] = value
        obj["storage_source"] = None


def _storage_option(fn: Any) -> Any:
    """``--storage`` after the command name too (it overrides the group's)."""
    return click.option("--storage", metavar="PATH", default=None, expose_value=False,
                        callback=_set_storage,
                        help="Storage directory or postgresql:// URL (as before the command).")(fn)


def _flush_policy(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check ``--flush`` before anything opens; a bad KREPIS_FLUSH is named as such."""
    if value is None:
        return None
    try:
        FlushPolicy.parse(value)
    except JournalError as exc:
        if ctx.get_parameter_source(param.name or "") is ParameterSource.ENVIRONMENT:
            raise click.BadParameter(f"KREPIS_FLUSH={value!r}: {exc}", ctx, param) from None
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--storage", envvar="KREPIS_STORAGE", default=DEFAULT_STORAGE, show_default=True,
              metavar="PATH", help="Storage directory or postgresql:// URL (env: KREPIS_STORAGE).")
@click.version_option(__version__, prog_name="krepis")
@click.pass_context
def cli(ctx: click.Context, storage: str) -> None:
    """krepis — the Sovereign Journal: a durable audit trail and crash-safe op counters."""
    ctx.ensure_object(dict)
    source = ctx.get_parameter_source("storage")
    ctx.obj["storage"] = storage
    ctx.obj["storage_source"] = "KREPIS_STORAGE" if source is ParameterSource.ENVIRONMENT else None
    # Given on the command line (before the command): what `bench` may use. KREPIS_STORAGE never is.
    ctx.obj["storage_explicit"] = storage if source is ParameterSource.COMMANDLINE else None


class _JsLogHandler(logging.Handler):
    """Shows what scripts log through op_log_from_js, on stderr, as inert text."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"js {record.levelname.lower()}: {inert(record.getMessage())}", err=True)


@cli.command()
@click.argument("script", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="S",
              help="End the script after S seconds (default 300; 0: no limit). Journaled as "
                   "kernel_error Timeout.")
@click.option("--memory-limit", "memory_limit", type=click.IntRange(min=16), default=None,
              metavar="MIB", help="Memory for the script, V8 heap and array buffers, in MiB "
                                  "(default 512). Exceeding it ends the run (MemoryLimit).")
@click.option("--max-ops", "max_ops", type=click.IntRange(min=0), default=None, metavar="N",
              help="End the script at its N+1-th op call (OpLimit; default: no cap).")
@click.option("--allow-read", "allow_read", multiple=True, metavar="PATH",
              help="Let the script read files below PATH: Deno's --allow-read for exactly that "
                   "path (resolved now), and what op_check_permission('read', …) answers. "
                   "Repeatable; default: nothing. Imports stay limited to the script itself.")
@click.option("--allow-write", "allow_write", multiple=True, metavar="PATH",
              help="Let the script write below PATH (Deno's --allow-write for that path; "
                   "op_check_permission('write', …)). Repeatable; default: nothing.")
@click.option("--allow-net", "allow_net", multiple=True, metavar="HOST",
              help="Let the script connect to HOST or HOST:PORT (Deno's --allow-net for it; "
                   "op_check_permission('net', …)). Repeatable; default: nothing.")
@click.option("--flush", "flush", metavar="POLICY", envvar="KREPIS_FLUSH", default="sync",
              show_default=True, callback=_flush_policy, help="sync or interval:Nms (env: KREPIS_FLUSH).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@_storage_option
@click.pass_context
def run(ctx: click.Context, script: str | None, timeout: float | None, memory_limit: int | None,
        max_ops: int | None, allow_read: tuple[str, ...], allow_write: tuple[str, ...],
        allow_net: tuple[str, ...], flush: str, as_json: bool) -> None:
    """Boot the kernel and run SCRIPT (JavaScript/TypeScript) in a sandboxed Deno.

    SCRIPT must have a script suffix (.js, .ts, .mjs, …). It runs with no permissions but the
    --allow-* ones, may import nothing but itself (no other file, not even next to it), and
    is ended at its limits (--timeout, --memory-limit, --max-ops). SIGTERM, SIGHUP or Ctrl-C
    kill it and are journaled. See docs/execution-plane.md.

    Without SCRIPT, runs the built-in bootstrap: it reads the context, logs through
    op_log_from_js, calls op_increment_stats 3 times and checks a read permission. Counters
    carry over between runs: the second run recovers what the first one counted.
    """
    from pathlib import Path

    from .kernel import PermissionPolicy, ScriptError, ScriptInterrupted, resolve_script

    con = _console()
    policy = PermissionPolicy()
    try:
        for path in allow_read:
            policy.allow_read(path)
        for path in allow_write:
            policy.allow_write(path)
        for host in allow_net:
            policy.allow_net(host)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    handler = _JsLogHandler()
    js_log = logging.getLogger("krepis.js")
    js_log.addHandler(handler)
    js_log.setLevel(logging.DEBUG)
    failure: ScriptError | None = None
    interrupted: BaseException | None = None
    target = Path(script) if script else resources.files("krepis.kernel").joinpath("bootstrap.js")
    resolve_script(str(target))  # a bad SCRIPT is an error before the kernel boots
    try:
        with SovereignJournal(_storage(ctx), flush=flush) as journal:
            kernel = Kernel(journal, permissions=policy)
            ops_called: int | None = None
            try:
                with kernel:  # a failing script ends the kernel with kernel_error
                    recovered = kernel.recovered.js_ops_called
                    request_id = kernel.context.request_id
                    if not as_json:
                        con.print(f"[bold]krepis kernel booted[/] storage={journal.path}")
                        con.print(f"  request_id        {request_id}")
                        con.print(f"  recovered         js_ops_called={recovered} "
                                  f"contexts_created={kernel.recovered.contexts_created}")
                        con.print(f"  running           {script or 'built-in bootstrap'}")
                    ops_called = kernel.run_script(
                        str(target), timeout=timeout, memory_limit_mb=memory_limit,
                        max_ops=max_ops, request_id=request_id).ops_called
            except ScriptError as exc:
                failure = exc
            except (ScriptInterrupted, KeyboardInterrupt) as exc:
                interrupted = exc  # Deno is dead and the interruption journaled
            stats = kernel.stats
            entries = journal.journal_count()
    finally:
        js_log.removeHandler(handler)
    if interrupted is not None:
        signum = getattr(interrupted, "signum", 2)
        click.echo(f"Error: interrupted by signal {signum}; the script was killed", err=True)
        sys.exit(128 + signum)
    summary = {
        "ok": failure is None,
        "recovered": recovered,
        "js_ops_called": stats.js_ops_called,
        "contexts_created": stats.contexts_created,
        "journal_entries": entries,
        "request_id": request_id,
        "storage": journal.path,
        "script": script,
        "ops_called": ops_called,
        "error": None if failure is None else str(failure),
        "error_name": None if failure is None else failure.name,
    }
    if as_json:
        _emit_json(summary)
    elif failure is None:
        con.print(f"[bold green]done[/]: js_ops_called {recovered} → {stats.js_ops_called}, "
                  f"{ops_called} op calls, journal entries {entries}")
    if failure is not None:
        raise click.ClickException(f"script failed: {failure}")



# -- time, width and colour helpers -----------------------------------------------------------

class _TimeType(click.ParamType):  # type: ignore[type-arg]
    """ISO-8601 (no zone = local time), relative (1h, '2 hours ago', today), Unix ms or @SECONDS."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time_unnamed(value)
        except JournalError as exc:
            self.fail(str(exc), param, ctx)


class _LimitType(click.ParamType):  # type: ignore[type-arg]
    """A count of entries, or ``all``."""

    name = "N|all"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or isinstance(value, int):
            return value
        text = str(value).strip()
        if text.lower() == "all":
            return None
        if text.isascii() and text.isdigit():
            return int(text)
        self.fail(f"{value!r} is not a number of entries >= 0 or 'all'", param, ctx)


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

    80 columns: local time without the year, op names up to 19 cells, request ids shortened to
    8 (a UUID's first group), status, duration and as much of the error as fits. Wider
    terminals get the year, longer op names and whole request ids.
    """

    def __init__(self, width: int, color: bool) -> None:
        self.with_year = width >= 100
        time_w = 23 if self.with_year else 18
        self.rid_w = 36 if width >= 130 else 8
        self.op_w = max(8, min(40, 19 + max(0, width - 80) // 4))
        fixed = time_w + 1 + self.op_w + 1 + self.rid_w + 1 + 9 + 1 + 7 + 1
        self.error_w = max(0, width - fixed)
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
        if self.rid_w == 8 and _UUID.match(rid):
            rid = rid[:8]
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


# -- writing lines: stdout or a pager ----------------------------------------------------------

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


# -- choosing entries ----------------------------------------------------------------------------

_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class _Selection:
    """Which entries: every repeated filter means either-of; different filters must all hold.

    ``ops`` are exact names or shell-style globs (``op_*``, ``kernel_[is]*``), matched
    case-sensitively; ``since`` inclusive and ``until`` exclusive, in Unix ms.
    """

    ops: tuple[str, ...] = ()
    statuses: tuple[LogStatus, ...] = ()
    request_ids: tuple[str, ...] = ()
    since: int | None = None
    until: int | None = None
    archive: str | None = None  # an archive directory whose entries are included

    @property
    def everything(self) -> bool:
        filtered = self.ops or self.statuses or self.request_ids
        return not filtered and self.since is None and self.until is None and self.archive is None

    def split(
        self, journal: SovereignJournal
    ) -> tuple[dict[str, Any], Callable[[TransactionLog], bool] | None]:
        """The query the journal answers from its indexes, and the check left to do here (or None).

        Globs are resolved against the op names the journal holds; either-of ops and statuses go
        to the journal as lists; only several request ids are checked here, entry by entry.
        """
        args: dict[str, Any] = {"since": self.since, "until": self.until}
        if self.archive is not None:
            args["archive"] = self.archive
        if self.ops:
            globs = [op for op in self.ops if _GLOB.search(op)]
            names = [op for op in self.ops if not _GLOB.search(op)]
            if globs:
                pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)).match
                names += [name for name in journal.op_names() if pattern(name)]
            args["op_name"] = list(dict.fromkeys(names))
        if self.statuses and len(set(self.statuses)) < len(LogStatus):
            args["status"] = list(dict.fromkeys(self.statuses))
        request_ids = frozenset(self.request_ids)
        if len(request_ids) == 1:
            args["request_id"] = self.request_ids[0]
        elif request_ids:
            return args, lambda entry: entry.request_id in request_ids
        return args, None

    @functools.cached_property
    def _predicate(self) -> Callable[[TransactionLog], bool]:
        exact = frozenset(op for op in self.ops if not _GLOB.search(op))
        globs = [op for op in self.ops if _GLOB.search(op)]
        pattern = re.compile("|".join(fnmatch.translate(g) for g in globs)).match if globs else None
        statuses = frozenset(self.statuses)
        request_ids = frozenset(self.request_ids)
        since, until = self.since, self.until

        def check(entry: TransactionLog) -> bool:
            return ((not self.ops or entry.op_name in exact
                     or (pattern is not None and pattern(entry.op_name) is not None))
                    and (not statuses or entry.status in statuses)
                    and (not request_ids or entry.request_id in request_ids)
                    and (since is None or entry.timestamp >= since)
                    and (until is None or entry.timestamp < until))
        return check

    def matches(self, entry: TransactionLog) -> bool:
        """Every filter, checked on one entry (for entries read without the query)."""
        return self._predicate(entry)


def select_entries(journal: SovereignJournal, selection: _Selection, *, newest_first: bool,
                   limit: int | None) -> Iterator[TransactionLog]:
    """Stream the entries of ``selection`` (at most ``limit``), never holding them all.

    Every filter but several request ids at once is answered by the journal's indexes.
    Arguments are validated before the first entry is read.
    """
    args, rest = selection.split(journal)
    if args.get("op_name") == []:
        return iter(())  # globs that match no op the journal has seen
    if rest is None:
        return journal.iter_logs(**args, newest_first=newest_first, limit=limit)
    found = (entry for entry in journal.iter_logs(**args, newest_first=newest_first) if rest(entry))
    if limit is None:
        return found
    return (entry for _, entry in zip(range(limit), found, strict=False))


def _newest_oldest_first(journal: SovereignJournal, selection: _Selection,
                         limit: int | None) -> Iterator[TransactionLog]:
    """The ``limit`` newest matches, oldest first (``git log -n N --reverse``), in flat memory.

    Two streaming passes: newest first to find where the ``limit``-th newest match is, then
    oldest first from there.
    """
    if limit is None:
        yield from select_entries(journal, selection, newest_first=False, limit=None)
        return
    if limit == 0:
        return
    taken, boundary, skip = 0, -1, 0
    for entry in select_entries(journal, selection, newest_first=True, limit=None):
        if taken < limit:
            taken, boundary = taken + 1, entry.timestamp
        elif entry.timestamp == boundary:
            skip += 1  # an older arrival with the boundary's timestamp: not among the newest
        else:
            break
    if taken < limit:
        yield from select_entries(journal, selection, newest_first=False, limit=limit)
        return
    later = _Selection(selection.ops, selection.statuses, selection.request_ids, boundary, selection.until,
                       selection.archive)
    shown = 0
    for entry in select_entries(journal, later, newest_first=False, limit=None):
        if skip and entry.timestamp == boundary:
            skip -= 1
            continue
        yield entry
        shown += 1
        if shown >= limit:
            return


def _selection(op: tuple[str, ...], status: tuple[str, ...], request_id: tuple[str, ...],
               since: int | None, until: int | None, archive: str | None = None) -> _Selection:
    return _Selection(tuple(op), tuple(LogStatus(s) for s in status), tuple(request_id), since, until,
                      archive)


def _archive_option(fn: Any) -> Any:
    return click.option("--archive", "archive", metavar="DIR", default=None,
                        help="Include the entries archived into DIR (krepis archive), with the same "
                             "filters and order.")(fn)


def _filter_options(fn: Any) -> Any:
    for option in reversed([
        click.option("--op", "op", metavar="NAME", multiple=True,
                     help="Only entries of this op; a shell-style glob (op_*) matches several. "
                          "Repeat for either-of."),
        click.option("--status", multiple=True,
                     type=click.Choice([s.value for s in LogStatus], case_sensitive=False),
                     help="Only entries with this status (any case). Repeat for either-of."),
        click.option("--request-id", metavar="ID", multiple=True,
                     help="Only entries of this request. Repeat for either-of."),
        click.option("--since", metavar="TIME", type=_TimeType(),
                     help="From this time on, inclusive: ISO-8601 (no zone = local time), 1h, 30m, "
                          "2d, '2 hours ago', today, yesterday, now, Unix ms or @SECONDS."),
        click.option("--until", metavar="TIME", type=_TimeType(),
                     help="Before this time (exclusive); the same forms as --since."),
    ]):
        fn = option(fn)
    return fn


# -- commands -------------------------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: storage, journal_entries and op_counts (name → value).")
@_storage_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Show every op counter and how many entries the journal holds."""
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        counts = journal.op_counts()
        entries = journal.journal_count()
        path = journal.path
    if as_json:
        _emit_json({"storage": path, "journal_entries": entries, "op_counts": counts})
        return
    summary = f"{entries} journal entries, {len(counts)} counters in {inert(path)}"
    if not counts:
        click.echo(f"no counters yet; {entries} journal entries in {inert(path)}")
        return
    names = sorted(counts)
    if not sys.stdout.isatty():
        _to_stdout(f"{_inert_tsv(name)}\t{counts[name]}" for name in names)
        click.echo(summary, err=True)
        return
    value_w = max(5, *(len(str(v)) for v in counts.values()))
    name_w = min(max(7, *(cell_len(inert(n)) for n in names)), _width() - value_w - 2)
    header = f"{_fit('COUNTER', name_w)}  {'VALUE'.rjust(value_w)}"
    lines = [click.style(header, bold=True) if _use_color() else header]
    lines += [f"{_fit(inert(name), name_w)}  {str(counts[name]).rjust(value_w)}" for name in names]
    _to_stdout([*lines, summary])


def _follow(journal: SovereignJournal, selection: _Selection, limit: int | None,
            render: Callable[[TransactionLog], str]) -> None:
    """Print the last `limit` entries oldest first, then new ones as they are written."""

    def show(entries: Iterable[TransactionLog]) -> None:
        _to_stdout(render(entry) for entry in entries)
        sys.stdout.flush()

    # Follow by sequence number: every entry appended after the start is shown exactly once,
    # whatever its timestamp and however many processes write.
    start = journal.next_seq()
    epoch = journal.tree_head().epoch
    show(e for e in _newest_oldest_first(journal, selection, limit) if (e.seq or 0) < start)
    cursor = start - 1
    try:
        while not _reader_gone():
            time.sleep(0.25)
            head = journal.tree_head()
            if head.epoch != epoch:
                click.echo("(the journal was cleared)", err=True)
                epoch = head.epoch
            if head.first_seq + head.size - 1 > cursor:
                new = journal.iter_logs(order="append", newest_first=False,
                                        after=cursor if cursor >= 0 else None)
                for entry in new:
                    cursor = entry.seq if entry.seq is not None else cursor
                    if selection.matches(entry):
                        show((entry,))
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("-n", "--lines", "--limit", "limit", type=_LimitType(), default="20", show_default=True,
              help="How many entries at most (the newest), or 'all'.")
@click.option("--all", "show_all", is_flag=True, help="Every matching entry (the same as -n all).")
@_filter_options
@click.option("--reverse", is_flag=True,
              help="Oldest first: the same entries (the N newest matches) in the order they were written.")
@click.option("--count", "count_only", is_flag=True,
              help="Print only how many entries match (ignores -n).")
@click.option("-f", "--follow", is_flag=True,
              help="Print the last entries oldest first, then each new one as it is written "
                   "(Ctrl-C stops).")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines: one entry per line, in the stored form.")
@click.option("--no-pager", is_flag=True, help="Never pipe the output through a pager.")
@_archive_option
@_storage_option
@click.pass_context
def logs(ctx: click.Context, limit: int | None, show_all: bool, op: tuple[str, ...],
         status: tuple[str, ...], request_id: tuple[str, ...], since: int | None, until: int | None,
         reverse: bool, count_only: bool, follow: bool, as_json: bool, no_pager: bool,
         archive: str | None) -> None:
    """Show journal entries, newest first, streamed as they are read.

    On a terminal: one line per entry fitted to its width (local time), through
    a pager (KREPIS_PAGER, PAGER or less) when longer than the screen. Piped:
    tab-separated lines (UTC time, op, request id, status, duration in µs,
    error), or JSON Lines with --json. Text from the journal is printed inert:
    control characters and escape sequences appear as visible escapes.
    """
    if show_all:
        limit = None
    if count_only and follow:
        raise click.UsageError("--count and --follow do not go together")
    selection = _selection(op, status, request_id, since, until, archive)
    tty = sys.stdout.isatty()
    columns = _Columns(_width(), _use_color()) if tty and not as_json else None
    render = _json_line if as_json else columns.line if columns is not None else _tsv_line
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        if count_only:
            if selection.everything:
                total = journal.journal_count()
            else:
                total = sum(1 for _ in select_entries(journal, selection, newest_first=False, limit=None))
            click.echo(json.dumps({"count": total}) if as_json else str(total))
            return
        if follow:
            if columns is not None:
                click.echo(columns.header())
            _follow(journal, selection, limit, render)
            return
        if reverse:
            entries = _newest_oldest_first(journal, selection, limit)
        else:
            entries = select_entries(journal, selection, newest_first=True, limit=limit)
        lines: Iterator[str] = (render(entry) for entry in entries)
        if columns is not None:
            lines = _with_header(columns.header(), lines)
        _emit_lines(lines, pager=tty and not no_pager)


def _with_header(header: str, lines: Iterator[str]) -> Iterator[str]:
    first = next(lines, None)
    if first is None:
        yield "-- no entries --"
        return
    yield header
    yield first
    yield from lines


@cli.command()
@_filter_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              default="-", show_default=True, help="File to write (- for stdout).")
@_archive_option
@_storage_option
@click.pass_context
def export(ctx: click.Context, op: tuple[str, ...], status: tuple[str, ...], request_id: tuple[str, ...],
           since: int | None, until: int | None, output: str, archive: str | None) -> None:
    """Export the journal as JSON Lines, oldest first (one entry per line, stored form)."""
    selection = _selection(op, status, request_id, since, until, archive)
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        entries = select_entries(journal, selection, newest_first=False, limit=None)
        if output == "-":  # the stored form; on a terminal, with C1/bidi controls as \\u escapes
            to_text = _json_line if sys.stdout.isatty() else TransactionLog.to_json
            _to_stdout(to_text(entry) for entry in entries)
            return
        with click.open_file(output, "w", encoding="utf-8") as out:
            count = _write_entries(cast(IO[str], out), entries)
    click.echo(f"exported {count} entries to {inert(output)}", err=True)


def _write_entries(out: IO[str], entries: Iterable[TransactionLog]) -> int:
    count = 0
    batch: list[str] = []
    for entry in entries:
        batch.append(entry.to_json())
        count += 1
        if len(batch) >= _BATCH:
            out.write("\n".join(batch) + "\n")
            batch.clear()
    if batch:
        out.write("\n".join(batch) + "\n")
    return count


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_storage_option
@click.pass_context
def clear(ctx: click.Context, yes: bool) -> None:
    """Delete every journal entry and counter (durable; cannot be undone)."""
    path = _storage(ctx)
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("refusing to clear the journal without --yes")
        click.confirm(f"Delete every entry and counter in {inert(os.path.abspath(path))}?", abort=True)
    with SovereignJournal(path, create=False, flush=_READ_POLICY, retention="off") as journal:
        entries = journal.journal_count()
        journal.clear_all()
    click.echo(f"cleared {entries} entries and all counters in {inert(journal.path)}")


@cli.command()
@click.option("--quick", is_flag=True, help="Short rows (0.6 s) and a 100,000-entry large journal.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=None,
              help="Seconds per write row [default: 3, or 0.6 with --quick].")
@click.option("--large", type=click.IntRange(min=1), default=None, metavar="N",
              help="Entries in the large journal of the read rows [default: 1,000,000].")
@click.option("--dir", "directory", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the temporary stores go (default: the current directory's disk).")
@click.option("--storage", "storage", metavar="URL", default=None,
              help="A postgresql:// URL: adds PostgreSQL rows (in a temporary schema, dropped after). "
                   "KREPIS_STORAGE is not used.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
@click.pass_context
def bench(ctx: click.Context, quick: bool, seconds: float | None, large: int | None,
          directory: str | None, storage: str | None, as_json: bool) -> None:
    """Measure krepis against the disk's fsync limit, the spec's design and sqlite3.

    Runs in temporary stores (removed afterwards); KREPIS_STORAGE is ignored. All rows run side
    by side in one run on the same disk; compare the ratios, not the absolute
    numbers, on a shared machine.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._bench import BenchConfig, run_bench

    cfg = BenchConfig.quick(directory) if quick else BenchConfig(directory=directory)
    if seconds is not None:
        cfg.seconds = seconds
    if large is not None:
        cfg.large = large
    from .storage.postgres import is_postgres_url

    # Temporary stores only, unless --storage is given on the command line (before or after
    # `bench`, the same): an exported KREPIS_STORAGE never makes bench touch that database.
    url = storage if storage is not None else ctx.find_root().obj.get("storage_explicit")
    if url is not None:
        if not is_postgres_url(url):
            raise click.BadParameter(f"{inert(url)!r}: only a postgresql:// URL adds rows (the LMDB rows "
                                     "always run, in temporary stores)", param_hint="--storage")
        _check_postgres(url)  # before the LMDB rows: a wrong URL fails at once, in one line
        cfg.postgres_url = url
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("benchmark", total=15 + (3 if cfg.postgres_url else 0))

        def step(label: str, advance: int) -> None:
            progress.update(task, description=label, advance=advance)

        result = run_bench(cfg, step)
    if as_json:
        _emit_json(result)
        return
    con = _console()
    m = result["machine"]
    con.print(f"[bold]krepis bench[/] — {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
              f"LMDB {m['lmdb']}, SQLite {m['sqlite']}")
    table = Table(title="writes (ratio: to the first row)")
    for col, justify in (("", "left"), ("ops/s", "right"), ("p50 µs", "right"), ("p99 µs", "right"),
                         ("ratio", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in result["rows"]:
        table.add_row(row["name"], f"{row['ops_per_s']:,.0f}", f"{row['p50_us']:,.1f}",
                      f"{row['p99_us']:,.1f}", f"{row['ratio']:.2f}×")
    con.print(table)
    r = result["reads"]
    reads = Table(title="reads and size")
    reads.add_column("")
    reads.add_column("value", justify="right")
    reads.add_row("recover_op_count", f"{r['recover_op_count_us']:.2f} µs")
    reads.add_row("get_recent_logs(100)", f"{r['get_recent_logs_100_us']:.1f} µs")
    reads.add_row("journal_count", f"{r['journal_count_us']:.2f} µs")
    reads.add_row(f"open + recover, {r['large_entries']:,} entries", f"{r['open_recover_large_us']:.0f} µs")
    reads.add_row(f"open + recover, {r['small_entries']:,} entries", f"{r['open_recover_small_us']:.0f} µs")
    reads.add_row("bytes on disk per entry (LMDB)", f"{r['bytes_per_entry']:.0f} B")
    reads.add_row("bytes on disk per entry (sqlite3)", f"{r['sqlite_bytes_per_entry']:.0f} B")
    con.print(reads)
    q = result["queries"]
    small, large = q["sizes"]
    queries = Table(title="queries: krepis and sqlite3 (same rows, equivalent indexes), µs per call")
    for col in ("", f"krepis {small:,}", f"krepis {large:,}", f"sqlite3 {large:,}", "ratio"):
        queries.add_column(col, justify="left" if not col else "right")
    for name, big in q[str(large)].items():
        if name == "bytes_per_entry":
            continue
        queries.add_row(name, f"{q[str(small)][name]['krepis_us']:,.1f}", f"{big['krepis_us']:,.1f}",
                        f"{big['sqlite_us']:,.1f}", f"{big['ratio']:.2f}×")
    size = q[str(large)]["bytes_per_entry"]
    queries.add_row("bytes on disk per entry", "", f"{size['krepis']:.0f}", f"{size['sqlite']:.0f}",
                    f"{size['krepis'] / size['sqlite']:.2f}×")
    con.print(queries)
    targets = Table(title="targets")
    for col in ("target", "measured", "goal", "met"):
        targets.add_column(col)
    for t in result["targets"]:
        sign = "≤" if t.get("lower") else "≥"
        goal = f"{t['goal']:,}" if isinstance(t["goal"], int) else str(t["goal"])
        targets.add_row(t["target"], f"{t['measured']:,}{t['unit']}", f"{sign} {goal}{t['unit']}",
                        "[green]yes[/]" if t["met"] else "[red]no[/]")
    con.print(targets)




def _check_postgres(url: str) -> None:
    from .storage.postgres import _url as _pgurl
    from .storage.postgres._store import _first_line, redact

    try:
        import psycopg
    except ImportError:
        raise click.ClickException("PostgreSQL rows need psycopg: pip install 'krepis-journal[postgres]' "
                                   "(or pip install '.[postgres]' in a checkout)") from None
    try:
        params: dict[str, Any] = dict(_pgurl.parse(url).params)  # libpq never sees the URL
    except _pgurl.UrlError as exc:
        raise click.ClickException(f"{exc} ({redact(url)})") from None
    params.setdefault("connect_timeout", "10")
    try:
        psycopg.connect(**params, autocommit=True).close()
    except psycopg.Error as exc:
        raise click.ClickException(
            f"cannot connect to PostgreSQL at {redact(url)}: {_first_line(exc)}") from None


@cli.command()
@click.option("--serve", "serve", metavar="[HOST:]PORT", default=None,
              help="Serve /metrics over HTTP (default host 127.0.0.1) until interrupted.")
@_storage_option
@click.pass_context
def metrics(ctx: click.Context, serve: str | None) -> None:
    """Print the counters and journal size in Prometheus' text format, or serve them."""
    from ._metrics import prometheus_text, serve_metrics

    host, port = "", 0
    if serve is not None:
        host, _, port_text = serve.rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        try:
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{serve!r} is not [HOST:]PORT with PORT 0–65535",
                                     param_hint="--serve") from None
    with SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off") as journal:
        if serve is None:
            click.echo(prometheus_text(journal), nl=False)
            return

        def ready(bound_host: str, bound_port: int) -> None:
            click.echo(f"serving http://{bound_host}:{bound_port}/metrics (Ctrl-C to stop)", err=True)

        server = serve_metrics(journal, host, port, ready=ready)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@_storage_option
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Convert a store written by an older krepis to the current storage format.

    Entries (every field, in their append order) and counters are kept exactly. A crash at any
    point leaves either the old store untouched or the complete new one. Stop every process
    using the store first; a store already in the current format is left as it is.
    """
    from .storage import migrate as run_migration

    location = _storage(ctx)
    if as_json or not sys.stderr.isatty():
        result = run_migration(location)
    else:
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("migrating", total=None)
            result = run_migration(location, progress=lambda done, total: bar.update(
                task, completed=done, total=total))
    if as_json:
        _emit_json({"storage": result.location, "from_format": result.from_format,
                    "to_format": result.to_format, "entries": result.entries,
                    "counters": result.counters})
    elif result.from_format == result.to_format:
        click.echo(f"{result.location} is already in storage format {result.to_format}; nothing to do")
    else:
        click.echo(f"migrated {result.location} from storage format {result.from_format} to "
                   f"{result.to_format}: {result.entries} entries, {result.counters} counters")


from . import _cli_archive, _cli_tlog  # noqa: E402  (register archive; keygen, checkpoint, prove, verify, tlog)

del _cli_tlog, _cli_archive


def main() -> None:
    """Console-script entry point."""
    _guard_stdout()
    cli(prog_name="krepis")


if __name__ == "__main__":  # pragma: no cover
    main()
