"""``krepis run``: boot the kernel and run a script (or the built-in bootstrap) in the Deno plane."""
from __future__ import annotations

import logging
import os
import sys
from importlib import resources

import click

from ..journal import SovereignJournal
from ..kernel import Kernel
from ._common import (
    _console,
    _emit_json,
    _flush_policy,
    _storage,
    _storage_option,
    cli,
    inert,
    plural,
)


class _Stderr:
    """This process's stderr during a run, for the script's console output and its log lines.

    A closed or failing stderr (``krepis run 2>&1 | head -1``) never ends the script: at the
    first error, fd 2 is pointed at ``/dev/null`` (so nothing written later, at exit included,
    fails again) and output is dropped from then on.
    """

    def __init__(self) -> None:
        self.gone = False

    def write(self, data: bytes) -> int:
        """Binary writes: the script's console output (``run_script(stderr=…)``)."""
        if not self.gone:
            try:
                sys.stderr.flush()  # keep the order of text already written
                sys.stderr.buffer.write(data)
            except (OSError, ValueError, AttributeError):
                self._went_away()
        return len(data)

    def flush(self) -> None:
        if not self.gone:
            try:
                sys.stderr.buffer.flush()
            except (OSError, ValueError, AttributeError):
                self._went_away()

    def echo(self, text: str) -> None:
        if not self.gone:
            try:
                click.echo(text, err=True)
            except (OSError, ValueError):
                self._went_away()

    def _went_away(self) -> None:
        self.gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 2)
            finally:
                os.close(devnull)
        except OSError:
            pass


class _JsLogHandler(logging.Handler):
    """Shows what scripts log through op_log_from_js, on stderr, as inert text — and never fails
    the op because stderr is closed."""

    def __init__(self, out: _Stderr) -> None:
        super().__init__()
        self.out = out

    def emit(self, record: logging.LogRecord) -> None:
        self.out.echo(f"js {record.levelname.lower()}: {inert(record.getMessage())}")

#: The longest script ``krepis run -`` reads from stdin.
MAX_STDIN_SCRIPT = 64 << 20


def _inline_source(script: str | None, code: str | None) -> str | None:
    """The source of ``run -`` (stdin) or ``--eval CODE``, as the kernel takes source text
    (never a path: it holds a newline); None for a script file or the bootstrap."""
    if code is not None and script is not None:
        raise click.UsageError("give SCRIPT or --eval CODE, not both")
    if script == "-":
        raw = sys.stdin.buffer.read(MAX_STDIN_SCRIPT + 1)
        if len(raw) > MAX_STDIN_SCRIPT:
            raise click.BadParameter(f"the script on stdin is longer than {MAX_STDIN_SCRIPT >> 20} MiB",
                                     param_hint="SCRIPT")
        code = raw.decode("utf-8", "replace").removeprefix("\ufeff")
    if code is None:
        return None
    if not code.strip():
        raise click.BadParameter("the script is empty", param_hint="--eval" if script is None else "SCRIPT")
    return code if "\n" in code else code + "\n"


@cli.command()
@click.argument("script", required=False, type=click.Path(dir_okay=False, exists=True, allow_dash=True))
@click.option("--eval", "code", metavar="CODE", default=None,
              help="Run CODE (JavaScript/TypeScript source) instead of a script file.")
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
def run(ctx: click.Context, script: str | None, code: str | None, timeout: float | None,
        memory_limit: int | None,
        max_ops: int | None, allow_read: tuple[str, ...], allow_write: tuple[str, ...],
        allow_net: tuple[str, ...], flush: str, as_json: bool) -> None:
    """Run a script in the sandbox (or the built-in bootstrap).

    Boots the kernel and runs SCRIPT (JavaScript/TypeScript) in a sandboxed Deno: a file, - for
    the source on stdin, or the source given with --eval CODE.

    A SCRIPT file must have a script suffix (.js, .ts, .mjs, …). It runs with no permissions but the
    --allow-* ones, may import nothing but itself (no other file, not even next to it), and
    is ended at its limits (--timeout, --memory-limit, --max-ops). SIGTERM, SIGHUP or Ctrl-C
    kill it and are journaled. See docs/execution-plane.md.

    Without SCRIPT, runs the built-in bootstrap: it reads the context, logs through
    op_log_from_js, calls op_increment_stats 3 times and checks a read permission. Counters
    carry over between runs: the second run recovers what the first one counted.
    """
    from pathlib import Path

    from ..kernel import PermissionPolicy, ScriptError, ScriptInterrupted, resolve_script

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
    err = _Stderr()
    handler = _JsLogHandler(err)
    js_log = logging.getLogger("krepis.js")
    js_log.addHandler(handler)
    js_log.setLevel(logging.DEBUG)
    failure: ScriptError | None = None
    interrupted: BaseException | None = None
    source = _inline_source(script, code)
    shown = "--eval" if code is not None else script
    target: str = source if source is not None else str(
        Path(script) if script else resources.files("krepis.kernel").joinpath("bootstrap.js"))
    resolve_script(target)  # a bad SCRIPT is an error before the kernel boots
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
                        running = "stdin" if shown == "-" else shown or "built-in bootstrap"
                        con.print(f"  running           {inert(running)}", markup=False)
                    ops_called = kernel.run_script(
                        target, timeout=timeout, memory_limit_mb=memory_limit,
                        max_ops=max_ops, request_id=request_id,
                        stderr=err).ops_called
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
        err.echo(f"Error: interrupted by signal {signum}; the script was killed")
        sys.exit(128 + signum)
    summary = {
        "ok": failure is None,
        "recovered": recovered,
        "js_ops_called": stats.js_ops_called,
        "contexts_created": stats.contexts_created,
        "journal_entries": entries,
        "request_id": request_id,
        "storage": journal.path,
        "script": shown,
        "ops_called": ops_called,
        "error": None if failure is None else str(failure),
        "error_name": None if failure is None else failure.name,
    }
    if as_json:
        _emit_json(summary)
    elif failure is None:
        con.print(f"[bold green]done[/]: js_ops_called {recovered} → {stats.js_ops_called}, "
                  f"{plural(ops_called or 0, 'op call')}, journal entries {entries}")
    if failure is not None:
        if err.gone:  # nobody reads stderr any more: the status says it
            sys.exit(1)
        raise click.ClickException(f"script failed: {failure}")
