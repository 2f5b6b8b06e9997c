"""The Kernel: boots from the journal, owns a request context, runs journaled ops."""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
import logging
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import InvalidTypeError, OpError, ValidationError
from .._model import (
    MAX_ERROR_BYTES,
    KernelContext,
    LogStatus,
    SovereignStats,
    TransactionLog,
    check_op_name,
)
from .._policy import FlushPolicy
from ..archive import RetentionPolicy
from ..journal import DEFAULT_STORAGE, SovereignJournal
from ._outcome import RESERVED_NAMES, ScriptResult
from ._permissions import PermissionPolicy
from ._plane import interruptible, shielded

if TYPE_CHECKING:
    from ._plane import Sink

__all__ = ["Kernel", "error_text"]

F = TypeVar("F", bound=Callable[..., Any])
_OP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
JS_OPS_COUNTER = "js_ops_called"
CONTEXTS_COUNTER = "contexts_created"
BUILTIN_OPS = frozenset({"op_increment_stats", "op_get_context", "op_log_from_js", "op_check_permission"})
_JS_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                  "warning": logging.WARNING, "error": logging.ERROR}
js_logger = logging.getLogger("krepis.js")
#: The request id of the script run this thread is serving (None outside ``run_script``).
_run_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("krepis_run_request_id",
                                                                             default=None)


def _is_coroutine_function(fn: object) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__ too
    return any(inspect.iscoroutinefunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def error_text(exc: BaseException) -> str:
    """``"TypeName: message"`` (a script's own error text for a ScriptError, named by the
    limit that ended it — ``"OpLimit: …"``), cut to fit."""
    if getattr(exc, "stack", False) is not False and str(exc):  # ScriptError: "SyntaxError: …"
        text = str(exc)
        name = getattr(exc, "name", None)
        if name in RESERVED_NAMES and not text.startswith(f"{name}:"):
            text = f"{name}: {text}"
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    raw = text.encode("utf-8", "replace")
    if len(raw) > MAX_ERROR_BYTES:
        text = raw[: MAX_ERROR_BYTES - 3].decode("utf-8", "ignore") + "…"
    return text.encode("utf-8", "replace").decode("utf-8")


class Kernel:
    """The Krepis kernel.

    ``with Kernel(storage) as kernel:`` boots: opens the journal (or uses the
    :class:`SovereignJournal` passed as ``storage``), restores :attr:`stats` from the stored
    counters, creates :attr:`context`, and journals ``kernel_init`` ``Started`` while counting
    ``contexts_created`` in the same transaction. Leaving the block journals
    ``kernel_shutdown`` ``Completed`` — or ``kernel_error`` ``Failed`` with the error text when
    an exception escapes, which is then re-raised.

    In-memory :attr:`stats` change only after the write that backs them is durable.
    """

    def __init__(
        self,
        storage: str | os.PathLike[str] | SovereignJournal = DEFAULT_STORAGE,
        *,
        tenant_id: str = "default",
        priority: int = 0,
        is_turbo_mode: bool = False,
        trace_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        flush: str | FlushPolicy | None = None,
        permissions: PermissionPolicy | None = None,
        retention: str | RetentionPolicy | None = None,
        archive: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(storage, (str, os.PathLike, SovereignJournal)):
            raise InvalidTypeError(
                f"storage must be a path or a SovereignJournal, got {type(storage).__name__}")
        if not isinstance(tenant_id, str) or not tenant_id:
            raise ValidationError(f"tenant_id must be a non-empty str, got {tenant_id!r:.80}")
        if type(priority) is not int:
            raise InvalidTypeError(f"priority must be an int, got {type(priority).__name__}")
        if trace_id is not None and (not isinstance(trace_id, str) or not trace_id):
            raise ValidationError(f"trace_id must be a non-empty str, got {trace_id!r:.80}")
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidTypeError(f"metadata must be a dict, got {type(metadata).__name__}")
        if isinstance(storage, SovereignJournal) and flush is not None:
            raise ValidationError("flush applies when the kernel opens the journal; set it on the "
                                  "SovereignJournal you pass instead")
        if isinstance(storage, SovereignJournal) and (retention is not None or archive is not None):
            raise ValidationError("retention and archive apply when the kernel opens the journal; set "
                                  "them on the SovereignJournal you pass instead")
        self._retention, self._archive = retention, archive
        self._flush = None if flush is None else FlushPolicy.parse(flush)
        self._storage = storage
        self._context_args: dict[str, Any] = {
            "tenant_id": tenant_id,
            "priority": priority,
            "is_turbo_mode": bool(is_turbo_mode),
            "metadata": dict(metadata or {}),
        }
        if trace_id is not None:
            self._context_args["trace_id"] = trace_id
        if permissions is not None and not isinstance(permissions, PermissionPolicy):
            raise InvalidTypeError(
                f"permissions must be a PermissionPolicy, got {type(permissions).__name__}")
        #: What ``op_check_permission`` answers; change it with ``allow_read()`` and friends.
        self.permissions = permissions if permissions is not None else PermissionPolicy()
        self._ops: dict[str, Callable[..., Any]] = {
            "op_get_context": self._op_get_context,
            "op_log_from_js": self._op_log_from_js,
            "op_check_permission": self._op_check_permission,
        }
        self._journal: SovereignJournal | None = None
        self._owns_journal = False
        self._context: KernelContext | None = None
        self.stats = SovereignStats()
        # increments in flight, and the newest count any of them returned since there were none
        # (a count returned later may be older: see increment_stats)
        self._counting = threading.Lock()
        self._in_flight = 0
        self._newest = 0
        #: The stats as recovered from storage at boot, before this kernel changed them.
        self.recovered = SovereignStats()
        self._booted_at = 0.0

    # -- state -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._context is not None

    @property
    def journal(self) -> SovereignJournal:
        self._require_running()
        assert self._journal is not None
        return self._journal

    @property
    def context(self) -> KernelContext:
        self._require_running()
        assert self._context is not None
        return self._context

    def _require_running(self) -> None:
        if self._context is None:
            raise OpError("the kernel is not running; use `with Kernel(...) as kernel:` or boot()")

    # -- lifecycle -------------------------------------------------------------------------
    def boot(self) -> Kernel:
        """Open the journal, recover stats, create the context, journal ``kernel_init``."""
        if self._context is not None:
            raise OpError("the kernel is already running")
        if isinstance(self._storage, SovereignJournal):
            journal, self._owns_journal = self._storage, False
        else:
            journal, self._owns_journal = SovereignJournal(self._storage, flush=self._flush,
                                                                retention=self._retention,
                                                                archive=self._archive), True
        try:
            recovered = SovereignStats(
                js_ops_called=journal.recover_op_count(JS_OPS_COUNTER),
                contexts_created=journal.recover_op_count(CONTEXTS_COUNTER),
            )
            context = KernelContext(**self._context_args)
            created = journal.record(
                TransactionLog.now("kernel_init", context.request_id, LogStatus.Started),
                increment=CONTEXTS_COUNTER,
            )
            assert created is not None
        except BaseException:
            if self._owns_journal:
                journal.close()
            raise
        self._journal = journal
        self.recovered = recovered
        self.stats = dataclasses.replace(recovered, contexts_created=created)
        self._context = context
        self._booted_at = time.perf_counter()
        return self

    def shutdown(self, error: BaseException | None = None) -> None:
        """Journal ``kernel_shutdown`` (or ``kernel_error`` with ``error``) and release the journal."""
        self._require_running()
        assert self._journal is not None and self._context is not None
        journal, context = self._journal, self._context
        try:
            uptime = int((time.perf_counter() - self._booted_at) * 1_000_000)
            if error is None:
                journal.log_transaction(TransactionLog.now(
                    "kernel_shutdown", context.request_id, LogStatus.Completed, duration_us=uptime))
            elif not getattr(error, "journaled", False):  # a failed script journaled it already
                journal.log_transaction(TransactionLog.now(
                    "kernel_error", context.request_id, LogStatus.Failed, duration_us=uptime,
                    error=error_text(error)))
        finally:
            self._context = None
            self._journal = None
            if self._owns_journal:
                journal.close()

    def __enter__(self) -> Kernel:
        return self.boot()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.shutdown()
            return
        try:
            self.shutdown(exc)
        except Exception as journal_exc:  # keep the original error; say the journal failed too
            if hasattr(exc, "add_note"):
                exc.add_note(f"krepis: journaling kernel_error failed as well: {journal_exc}")

    # -- ops -------------------------------------------------------------------------------
    def increment_stats(self) -> int:
        """The spec's ``op_increment_stats``: durably journal it and bump ``js_ops_called``.

        One atomic write of an ``op_increment_stats`` ``Completed`` entry plus the counter;
        :attr:`stats` changes only after it succeeded. Returns the new count.

        Threads incrementing at once may get their counts back in another order than the store
        gave them: while any increment is in flight :attr:`stats` shows the largest count
        returned so far, so once they are all done it is the stored counter, never an older
        value a slower thread returned last.
        """
        context = self.context
        with self._counting:
            self._in_flight += 1
        count: int | None = None
        try:
            count = self.journal.record(
                TransactionLog.now("op_increment_stats", _run_request_id.get() or context.request_id,
                                   LogStatus.Completed),
                increment=JS_OPS_COUNTER,
            )
            assert count is not None
        finally:
            with self._counting:
                self._in_flight -= 1
                if count is not None:
                    self._newest = max(self._newest, count)
                    self.stats.js_ops_called = self._newest
                if not self._in_flight:
                    self._newest = 0  # the next increments may follow a clear_all()
        return count

    def op(self, name: str) -> Callable[[F], F]:
        """Register a Python function as the op ``name`` (a Python identifier, at most 200 bytes)."""
        check_op_name(name)
        if not _OP_NAME.match(name):
            raise ValidationError(
                f"op name {name!r} must be an identifier: letters, digits and _, not starting "
                "with a digit")
        if name in BUILTIN_OPS or name in self._ops:
            raise OpError(f"op {name!r} is already registered" +
                          (" (built in)" if name in BUILTIN_OPS else ""))

        def register(fn: F) -> F:
            if not callable(fn):
                raise InvalidTypeError(f"op {name!r} must be callable, got {type(fn).__name__}")
            if _is_coroutine_function(fn):
                raise InvalidTypeError(
                    f"op {name!r} is an async function; ops are synchronous (a script's call "
                    "blocks until the reply) — register a plain function, e.g. one that runs "
                    "the coroutine with asyncio.run()")
            self._ops[name] = fn
            return fn

        return register

    @property
    def ops(self) -> list[str]:
        """The names of every op this kernel can run, built-in ones included."""
        return sorted(BUILTIN_OPS | self._ops.keys())

    # -- built-in ops for scripts -------------------------------------------------------------
    def _op_get_context(self) -> dict[str, Any]:
        context = self.context.to_dict()
        run_id = _run_request_id.get()
        if run_id is not None:
            context["request_id"] = run_id
        return context

    def _op_log_from_js(self, level: str, message: str) -> None:
        if not isinstance(level, str) or level.lower() not in _JS_LOG_LEVELS:
            raise ValidationError(f"log level {level!r} is not one of info, warn, error, debug")
        js_logger.log(_JS_LOG_LEVELS[level.lower()], "%s", message)

    def _op_check_permission(self, permission: str, path: str) -> bool:
        return self.permissions.check(permission, path)

    def run_script(
        self,
        script: str | os.PathLike[str],
        *,
        timeout: float | None = None,
        memory_limit_mb: int | None = None,
        max_ops: int | None = None,
        request_id: str | None = None,
        stderr: Sink | None = None,
    ) -> ScriptResult:
        """Run a JavaScript/TypeScript file (or source code) in the confined Deno plane.

        The script calls ops as ``Krepis.ops.<name>(...)``: the built-ins and every
        ``@kernel.op``, each counted and journaled as by :meth:`call`. Deno gets exactly the
        permissions of :attr:`permissions` (none by default) and its module graph is the script
        alone (docs/execution-plane.md). Its console output goes to ``stderr`` (default: this
        process's).

        Each run has its own request id (``request_id``, default a fresh uuid4): every entry the
        run journals carries it, ``op_get_context()`` returns it, and :class:`ScriptResult`
        reports it. Limits: ``timeout`` seconds (default ``krepis._plane.DEFAULT_TIMEOUT``,
        ``0`` for none), ``memory_limit_mb`` (default ``DEFAULT_MEMORY_LIMIT_MB``), ``max_ops``
        op calls (default no cap).

        On failure — syntax error, uncaught exception or rejection, a limit hit (``Timeout``,
        ``MemoryLimit``, ``OpLimit``), Deno dying, a broken protocol — ``kernel_error``
        ``Failed`` is journaled once with the error text and :class:`ScriptError` is raised; on
        SIGTERM/SIGHUP/SIGINT (main thread) Deno is killed, ``kernel_error`` ``Failed`` with
        ``Interrupted`` is journaled and :class:`ScriptInterrupted` (``KeyboardInterrupt`` for
        SIGINT) propagates. The ops the script completed before stay counted and journaled.
        """
        from ._outcome import ScriptError, ScriptInterrupted
        from ._plane import run_deno

        journal = self.journal
        self._require_running()
        if request_id is None:
            request_id = str(uuid.uuid4())
        TransactionLog(0, "kernel_error", request_id, LogStatus.Failed)  # validates request_id

        def dispatch(name: str, args: list[Any], encode: Callable[[Any], bytes]) -> bytes:
            if name not in BUILTIN_OPS and name not in self._ops:
                raise OpError(f"unknown op {name!r}; available: {', '.join(self.ops)}")
            frame: list[bytes] = []
            self._call(name, args, {}, lambda value: frame.append(encode(value)))
            return frame[0]

        token = _run_request_id.set(request_id)
        try:
            with interruptible():
                try:
                    result = run_deno(script, dispatch, timeout=timeout, memory_limit_mb=memory_limit_mb,
                                      max_ops=max_ops, permissions=self.permissions, stderr=stderr)
                except (ScriptError, ScriptInterrupted, KeyboardInterrupt, SystemExit) as exc:
                    signum = getattr(exc, "signum", None)
                    if isinstance(exc, ScriptError):
                        text = error_text(exc)
                    elif signum is not None:
                        text = f"Interrupted: the host received {signal_name(signum)}; the script was killed"
                    else:  # an op raised it (and was journaled Failed with it)
                        text = f"Interrupted: an op raised {error_text(exc)}; the script was killed"
                    with shielded():  # a signal now waits until the failure is journaled
                        journal.log_transaction(TransactionLog.now(
                            "kernel_error", request_id, LogStatus.Failed, error=text))
                        exc.journaled = True  # type: ignore[union-attr]
                    raise
        finally:
            _run_request_id.reset(token)
        return dataclasses.replace(result, request_id=request_id)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run op ``name``: counted in ``op_count:{name}`` and journaled as it happens.

        ``Started`` is written together with the count before the op runs; then ``Completed``
        (with ``duration_us``) or ``Failed`` (with the error text). The op's own exception
        propagates unchanged — ``KeyboardInterrupt`` and ``SystemExit`` too, after ``Failed``.
        In the main thread a SIGINT that lands while these entries are written waits until the
        write is done, so an op is never left ``Started`` alone. An op that returns a coroutine
        or other awaitable is ``Failed`` (``OpError``): its work never ran, so ``Completed``
        would be a lie.
        """
        return self._call(name, args, kwargs, None)

    def _call(self, name: str, args: Any, kwargs: dict[str, Any],
              deliver: Callable[[Any], None] | None) -> Any:
        """:meth:`call`, with ``deliver(result)`` run before ``Completed`` is journaled: if it
        raises (the result cannot reach the script), the op is ``Failed`` with that reason."""
        if name == "op_increment_stats":
            if args or kwargs:
                raise InvalidTypeError("op_increment_stats takes no arguments")
            count = self.increment_stats()
            if deliver is not None:
                deliver(count)
            return count
        fn = self._ops.get(name)
        if fn is None:
            raise OpError(f"unknown op {name!r}; registered ops: {', '.join(self.ops)}")
        context, journal = self.context, self.journal
        rid = _run_request_id.get() or context.request_id
        # Ctrl-C (SIGINT) during the op's own journaling waits until that write is done: an op
        # journaled Started always ends Failed or Completed. (In a script run, SIGTERM and SIGHUP
        # too: the run's handlers are already in place.) The op itself stays interruptible.
        with interruptible((signal.SIGINT,)):
            return self._journaled(name, fn, args, kwargs, deliver, journal, rid)

    def _journaled(self, name: str, fn: Callable[..., Any], args: Any, kwargs: dict[str, Any],
                   deliver: Callable[[Any], None] | None, journal: SovereignJournal, rid: str) -> Any:
        """Run ``fn`` between its ``Started`` and its ``Failed``/``Completed`` entry."""
        written = False
        started = 0.0
        try:
            with shielded():  # a signal now is raised when Started is written: inside this try
                journal.record(TransactionLog.now(name, rid, LogStatus.Started), increment=name)
                written = True
                started = time.perf_counter()
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                if inspect.iscoroutine(result):
                    result.close()  # never awaited: close it rather than leak a warning
                raise OpError(f"op {name!r} returned {type(result).__name__}, an awaitable: ops must "
                              "return their result, not a coroutine")
            if deliver is not None:
                try:
                    deliver(result)
                except (TypeError, ValueError, RecursionError) as exc:
                    raise OpError(f"op {name!r} returned a value that is not JSON: "
                                  f"{type(exc).__name__}: {str(exc)[:300]}") from None
        except BaseException as exc:  # KeyboardInterrupt and SystemExit too: Failed, then re-raised
            if not written:
                raise
            elapsed = int((time.perf_counter() - started) * 1_000_000)
            with shielded():
                journal.log_transaction(TransactionLog.now(
                    name, rid, LogStatus.Failed, duration_us=elapsed, error=error_text(exc)))
            raise
        elapsed = int((time.perf_counter() - started) * 1_000_000)
        with shielded():
            journal.log_transaction(
                TransactionLog.now(name, rid, LogStatus.Completed, duration_us=elapsed))
        return result

    def __repr__(self) -> str:
        state = f"running request_id={self._context.request_id}" if self._context else "stopped"
        return f"<Kernel {state} stats={self.stats}>"
