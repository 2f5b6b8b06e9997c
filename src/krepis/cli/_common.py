"""What every command shares: the ``krepis`` group and its ``--storage`` option, how values from
the journal are made inert for a terminal, quiet exits on a closed pipe, JSON output, and the
option types (time, limit)."""
from __future__ import annotations

import json
import os
import re
import sys
from typing import IO, Any, TextIO, cast

import click
from click.core import ParameterSource
from rich.console import Console

from .._errors import JournalError, StorageError
from .._policy import FlushPolicy
from .._time import parse_time_unnamed
from .._version import __version__
from ..journal import DEFAULT_STORAGE

__all__ = ["cli", "inert"]

# Read-only commands never depend on the write-side KREPIS_FLUSH: they open with this policy.
_READ_POLICY = "sync"

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

def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, in the plural (``many``, else ``word`` + "s") unless it is 1."""
    return f"{count} {word if count == 1 else (many or word + 's')}"

def _inert_tsv(text: str) -> str:
    """Like :func:`inert`, and backslashes doubled, so a tab-separated field is unambiguous."""
    return text if _UNSAFE_TSV.search(text) is None else _UNSAFE_TSV.sub(_escape_char, text)

def _inert_json(line: str) -> str:
    """A JSON text with the characters JSON leaves raw but terminals act on written as ``\\uXXXX``."""
    if _UNSAFE_JSON.search(line) is None:
        return line
    return _UNSAFE_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", line)

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

class _UsageError(click.UsageError):
    """A usage error in one line: ``Error: <what is wrong> (see krepis CMD --help)``."""

    def __init__(self, message: str, ctx: click.Context | None, command_path: str | None) -> None:
        super().__init__(message, ctx)
        self.command_path = command_path

    def show(self, file: IO[Any] | None = None) -> None:
        hint = "" if self.command_path is None else f" (see {self.command_path} --help)"
        out = sys.stderr if file is None else file
        text = f"Error: {self.format_message()}{hint}"
        click.echo(text, file=out, color=None if self.ctx is None else self.ctx.color)


def _one_line(exc: click.UsageError, ctx: click.Context | None) -> _UsageError:
    """``exc`` as a :class:`_UsageError`; ``ctx`` (the group's) names the command when the
    error does not (an option's missing argument)."""
    path = None
    if exc.ctx is not None:
        path = exc.ctx.command_path
    elif ctx is not None:
        path = ctx.command_path + (f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "")
    return _UsageError(inert(exc.format_message()), exc.ctx, path)  # (the text may quote journal data)


def _about_the_store(exc: StorageError, location: str | None) -> bool:
    """Whether ``exc`` is about the storage location (not, say, a backup's destination); when
    that cannot be told (a relative path in a working directory that was deleted), it is."""
    if exc.path is None or location is None:
        return True
    try:
        store, path = os.path.abspath(location), os.path.abspath(exc.path)
    except (TypeError, ValueError, OSError):
        return True
    return path == store or path.startswith(store.rstrip(os.sep) + os.sep)


class _Group(click.Group):
    """Turns expected errors into one line on stderr and a non-zero exit, without a traceback."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _UsageError):
                raise
            raise _one_line(exc, parent) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JournalError as exc:
            message = str(exc)
            obj = ctx.obj or {}
            source = obj.get("storage_source")
            if isinstance(exc, StorageError) and source and _about_the_store(exc, obj.get("storage")):
                message += f" (the storage location comes from {source})"
            raise click.ClickException(inert(message)) from exc
        except click.UsageError as exc:
            if isinstance(exc, _UsageError):
                raise
            raise _one_line(exc, ctx) from None
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
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars (long commands show one on stderr when it is a terminal).")
@click.version_option(__version__, prog_name="krepis")
@click.pass_context
def cli(ctx: click.Context, storage: str, quiet: bool) -> None:
    """krepis — the Sovereign Journal: a durable audit trail and crash-safe op counters."""
    ctx.ensure_object(dict)
    if quiet:
        ctx.obj["quiet"] = True
    source = ctx.get_parameter_source("storage")
    ctx.obj["storage"] = storage
    ctx.obj["storage_source"] = "KREPIS_STORAGE" if source is ParameterSource.ENVIRONMENT else None
    # Given on the command line (before the command): what `bench` may use. KREPIS_STORAGE never is.
    ctx.obj["storage_explicit"] = storage if source is ParameterSource.COMMANDLINE else None

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
