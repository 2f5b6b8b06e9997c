"""The execution plane: JavaScript/TypeScript in a confined Deno process.

The script reaches the host only through kernel ops: the prelude (``prelude.js`` beside this module) gives it
``Krepis.ops.<name>(...)``, which sends a frame on stdout and blocks on stdin for the reply.
This module runs the process and the protocol; the kernel supplies ``dispatch``.

What confines a run (docs/execution-plane.md has the threat model):

* Deno permissions: none, except the exact paths and hosts of the :class:`PermissionPolicy`.
* The module graph: the script is copied into a private directory and run with an import map
  that sends every ``file:`` specifier but the script's own copy to a scheme Deno refuses, so no
  import — static, dynamic, JSON, text, bytes, in a Worker, a ``data:`` or ``blob:`` module —
  reads a file or tells whether one exists. Remote, ``jsr:`` and ``npm:`` modules are off.
* Files: on Linux with Landlock, the kernel lets Deno open only the run's directory, the
  system's share and the granted roots (``_landlock``), so nothing Deno reads on its own — a
  line of a file a source map names, for a Worker's error report — can be a secret. Without
  Landlock, Deno's stderr is not shown at all.
* Resources: a memory cap (V8 heap flag plus ``RLIMIT_DATA``), a wall-clock timeout, an
  optional cap on op calls, no core dumps, a per-file size cap, and a fresh ``DENO_DIR``
  (cache, localStorage) that is deleted with the run.
* Lifetime: on Linux Deno gets a parent-death signal, so it dies with the host process; SIGTERM,
  SIGHUP and SIGINT end the run (Deno killed, the directory removed) before they end the host.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .._errors import InvalidTypeError, JournalError, ValidationError
from . import _landlock
from ._channel import (
    MAX_MESSAGE,
    Dispatch,
    _Channel,
    _frame,
    decode_message,
    dispatch_frame,
)
from ._outcome import (
    MAX_ERROR_TEXT,
    RESERVED_NAMES,
    ScriptError,
    ScriptInterrupted,
    ScriptResult,
)
from ._permissions import PermissionPolicy

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE",
    "PermissionPolicy",
    "ScriptError",
    "ScriptInterrupted",
    "ScriptResult",
    "Sink",
    "deno_binary",
    "run_deno",
]

SCRIPT_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".mts", ".jsx", ".tsx")

#: Seconds a run may take when the caller gives no timeout (``0`` means no limit).
DEFAULT_TIMEOUT = 300.0

#: MiB of memory a run may use when the caller gives no limit: V8 heap and array buffers.
DEFAULT_MEMORY_LIMIT_MB = 512

#: Address space V8 reserves writable at start-up (code range and friends): added to the memory
#: limit for ``RLIMIT_DATA`` so that Deno starts. Most of it never holds data: a run can hold the
#: limit plus about 100 MiB at most.
_DATA_RESERVE_MB = 640

#: The largest file Deno may write (its own caches and localStorage, in the run's directory).
_MAX_FILE_BYTES = 64 * 1024 * 1024

_STDERR_TAIL = 8192

#: Bytes of a run's console output (stderr) forwarded to the host; the rest is dropped.
MAX_STDERR_BYTES = 16 * 1024 * 1024

_DENIED_SCHEME = "krepis-denied"

_WITHHELD_NOTE = (b"[krepis: this system has no Landlock, which keeps Deno from quoting files in its "
                  b"own messages; the script's console output is not shown]\n")

_OOM_MARKERS = (b"out of memory", b"memory allocation of", b"Array buffer allocation failed")

#: How Deno dies when memory runs out: V8's fatal out-of-memory handler traps (SIGTRAP), a
#: failed allocation in Deno's Rust code aborts (SIGABRT). A script cannot die by either
#: without running out of memory (it cannot signal itself: --allow-run is never granted), so a
#: marker on stderr counts only with one of them — printing one and exiting does not.
_OOM_SIGNALS = frozenset({-signal.SIGTRAP, -signal.SIGABRT})

def deno_binary() -> str:
    """The ``deno`` executable: the one the ``deno`` package ships, else one on PATH."""
    try:
        from deno import find_deno_bin

        found = str(find_deno_bin())
        if os.access(found, os.X_OK):
            return found
    except (ImportError, OSError, RuntimeError):
        pass
    on_path = shutil.which("deno")
    if on_path:
        return on_path
    raise JournalError("the deno binary was not found: install krepis with its dependencies "
                       "(pip install krepis brings the 'deno' package)")

def _prelude() -> str:
    return resources.files("krepis.kernel").joinpath("prelude.js").read_text(encoding="utf-8")

class Sink(Protocol):
    """Where a run's console output goes: a binary stream (``sys.stderr.buffer``, ``BytesIO``,
    a file opened ``"wb"``) or anything with these two methods."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

def _drain(stream: BinaryIO, sink: Sink | None, tail: bytearray) -> None:
    """Forward the script's stderr to ``sink``, at most :data:`MAX_STDERR_BYTES` of it; keep
    reading (so Deno never blocks on it) and keep the last bytes in ``tail``."""
    left = MAX_STDERR_BYTES
    while chunk := stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16):
        tail += chunk
        del tail[:-_STDERR_TAIL]
        if sink is not None:
            try:
                sink.write(chunk[:left])
                left -= min(left, len(chunk))
                if not left:
                    sink.write(f"\n[krepis: the script's output was cut at {MAX_STDERR_BYTES} bytes]\n"
                               .encode())
                    sink.flush()
                    sink = None
                    continue
                sink.flush()
            except (OSError, ValueError):
                sink = None

def resolve_script(script: str | os.PathLike[str]) -> tuple[Path | None, str | None]:
    """(path, None) for a script file, (None, source) for source code.

    A ``PathLike`` is a path: it must be a file with a script suffix (``.js``, ``.ts``, …). A
    one-line ``str`` ending in a script suffix is a path too (it must exist); a one-line ``str``
    naming an existing file without such a suffix is refused rather than run as code. Any other
    ``str`` is source code.
    """
    if isinstance(script, str) and "\n" not in script and not script.strip().endswith(SCRIPT_SUFFIXES):
        try:
            names_file = os.path.isfile(os.path.expanduser(script.strip()))
        except (OSError, ValueError):
            names_file = False
        if names_file:
            raise ValidationError(f"script {script!r} is a file without a script suffix "
                                  f"({', '.join(SCRIPT_SUFFIXES)}); rename it, or pass its text")
    if isinstance(script, os.PathLike) or (
        isinstance(script, str) and "\n" not in script and script.strip().endswith(SCRIPT_SUFFIXES)
    ):
        text = os.fspath(script)
        if not isinstance(text, str):
            raise InvalidTypeError(f"script path must be a str path, got {type(text).__name__}")
        path = Path(text.strip()).expanduser()
        if not path.is_file():
            raise ValidationError(f"script {text!r} does not exist or is not a file")
        if not path.name.endswith(SCRIPT_SUFFIXES):
            raise ValidationError(f"script {text!r} has no script suffix ({', '.join(SCRIPT_SUFFIXES)})")
        return path.resolve(), None
    if isinstance(script, str):
        if not script.strip():
            raise ValidationError("script source is empty")
        return None, script
    raise InvalidTypeError(f"script must be a path or source code, got {type(script).__name__}")

_INTERRUPTS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

class _InterruptState:
    """Shared by the handlers of :func:`interruptible` (main thread only)."""

    def __init__(self) -> None:
        self.active = False
        self.fired = False
        self.shielded = 0
        self.pending: int | None = None

_INT = _InterruptState()

def _interruption(signum: int) -> BaseException:
    """The exception a signal becomes; it carries ``signum`` (an op's own ``KeyboardInterrupt``
    does not), so what is journaled can tell the two apart."""
    if signum != signal.SIGINT:
        return ScriptInterrupted(signum)
    exc = KeyboardInterrupt()
    exc.signum = signum  # type: ignore[attr-defined]
    return exc

@contextlib.contextmanager
def interruptible(signals: tuple[int, ...] = _INTERRUPTS) -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`ScriptInterrupted`, SIGINT into ``KeyboardInterrupt``,
    inside the block (``signals``: which of them; default all three).

    Only in the main thread (the only one Python runs handlers in) and only for signals whose
    handler is the default one (a handler the application installed is left alone). Only the
    first signal counts; later ones are ignored until the block ends. A signal that arrives
    inside a :func:`shielded` section is raised when the section ends, so setting up and
    cleaning up (killing Deno, removing its directory, journaling) always run whole.
    Nested use is a no-op.
    """
    if threading.current_thread() is not threading.main_thread() or _INT.active:
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if _INT.fired:
            return
        _INT.fired = True
        if _INT.shielded:
            _INT.pending = signum
            return
        raise _interruption(signum)

    previous: dict[int, Any] = {}
    _INT.active, _INT.fired, _INT.shielded, _INT.pending = True, False, 0, None
    try:
        for signum in signals:
            if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)
        _INT.active = False
    if _INT.pending is not None:  # left over from a shielded section that ended in an error
        signum, _INT.pending = _INT.pending, None
        raise _interruption(signum)

@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A section no interruption breaks into: a signal that arrives inside it (under
    :func:`interruptible`) is raised when the section ends normally.

    Only the main thread's sections count (handlers run there alone): another thread's section
    neither delays the main thread's interruption nor receives it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _INT.shielded += 1
    try:
        yield
    finally:
        _INT.shielded -= 1
    if not _INT.shielded and _INT.pending is not None:
        signum, _INT.pending = _INT.pending, None
        raise _interruption(signum)

def _child_setup(memory_mb: int | None, parent: int,
                 confinement: _landlock.Confinement | None = None) -> Callable[[], None]:
    """What runs in the child between fork and exec: limits, the parent-death signal and, with
    ``confinement``, the Landlock rules (last: nothing after them needs a file)."""
    prctl: Any = None
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
        if prctl is None:
            raise JournalError("cannot set a parent-death signal for Deno (prctl unavailable); "
                               "refusing to run a script that could outlive this process")
    def lowered(kind: int, value: int) -> tuple[int, int]:
        hard = resource.getrlimit(kind)[1]  # never above what this process may use itself
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        return value, value

    fsize = lowered(resource.RLIMIT_FSIZE, _MAX_FILE_BYTES)
    data = None if memory_mb is None else lowered(resource.RLIMIT_DATA,
                                                  (memory_mb + _DATA_RESERVE_MB) * 1024 * 1024)

    def setup() -> None:
        if prctl is not None:
            if prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
                os._exit(126)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(125)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, fsize)
        if data is not None:
            resource.setrlimit(resource.RLIMIT_DATA, data)
        if confinement is not None:
            _landlock.restrict(confinement)  # raises (Popen then fails) rather than run unconfined

    return setup

def _check_limits(timeout: float | None, memory_mb: int | None,
                  max_ops: int | None) -> tuple[float | None, int]:
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidTypeError(f"timeout must be a number of seconds or None, got "
                               f"{type(timeout).__name__} {timeout!r:.80}")
    if not 0 <= timeout < float("inf"):  # also refuses NaN
        raise ValidationError(f"timeout must be a finite number of seconds >= 0 (0: none), got {timeout!r}")
    if memory_mb is None:
        memory_mb = DEFAULT_MEMORY_LIMIT_MB
    if type(memory_mb) is not int or memory_mb < 16:
        raise ValidationError(f"memory_limit_mb must be an int >= 16 (MiB), got {memory_mb!r}")
    if max_ops is not None and (type(max_ops) is not int or max_ops < 0):
        raise ValidationError(f"max_ops must be an int >= 0 or None, got {max_ops!r}")
    return (float(timeout) or None), memory_mb

# Deno reads an external source map named in a file module's magic comment with no permission
# check, and shows its "sources" in stack traces: only inline (data:) source maps are kept.
_SOURCE_MAP = re.compile(r"sourceMappingURL(\s*+=\s*+)(?!data:)")

def _decode_script(raw: bytes) -> str:
    """The script's text as Deno would decode it (a UTF-16 BOM, else UTF-8)."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16", "replace")
    return raw.decode("utf-8", "replace").removeprefix("\ufeff")

def _import_map(urls: list[str]) -> str:
    imports = {url: url for url in urls}
    # Every other file: URL without a host (relative, absolute, file://localhost/) goes to a
    # scheme Deno cannot load. ("file://" parses as "file:///": a URL with another host is out of
    # any prefix's reach — Deno makes no path of it, and _readable says it was refused.)
    imports["file://"] = f"{_DENIED_SCHEME}://"
    imports["file:///"] = f"{_DENIED_SCHEME}:///"
    return json.dumps({"imports": imports})

def run_deno(
    script: str | os.PathLike[str],
    dispatch: Dispatch,
    *,
    timeout: float | None = None,
    memory_limit_mb: int | None = None,
    max_ops: int | None = None,
    permissions: PermissionPolicy | None = None,
    stderr: Sink | None = None,
) -> ScriptResult:
    """Run ``script`` in a confined Deno (see the module docstring), serving its op calls.

    ``dispatch(name, args, encode)`` runs one op and returns ``encode(value)``, the reply frame
    (``encode`` raises if the value is not JSON, so the op can be journaled as failed); its
    exception is thrown inside JS as an ``Error`` with the same name and message.

    ``timeout``: seconds (default :data:`DEFAULT_TIMEOUT`, ``0`` for none);
    ``memory_limit_mb``: default :data:`DEFAULT_MEMORY_LIMIT_MB`; ``max_ops``: op calls per run
    (``None``: no cap); ``permissions``: what Deno is granted (default: nothing).

    Raises :class:`ScriptError` when the script fails in any way, with ``name`` ``"Timeout"``,
    ``"MemoryLimit"`` or ``"OpLimit"`` for a limit, :class:`ScriptInterrupted` on SIGTERM or
    SIGHUP and ``KeyboardInterrupt`` on SIGINT (see :func:`interruptible`). Deno is always
    killed and reaped and its directory removed.
    """
    limit_s, memory_mb = _check_limits(timeout, memory_limit_mb, max_ops)
    if permissions is not None and not isinstance(permissions, PermissionPolicy):
        raise InvalidTypeError(f"permissions must be a PermissionPolicy, got {type(permissions).__name__}")
    path, source = resolve_script(script)
    shown = str(path) if path is not None else "<inline>"
    sink: Sink | None = stderr if stderr is not None else getattr(sys.stderr, "buffer", None)
    policy = permissions if permissions is not None else PermissionPolicy()
    grants = policy.deno_flags()
    roots = (policy.roots("read"), policy.roots("write"))
    started = time.monotonic()
    deadline = None if limit_s is None else started + limit_s
    with interruptible():
        tmp: str | None = None
        try:
            with shielded():
                tmp = tempfile.mkdtemp(prefix="krepis-js-")
            return _run_in(Path(tmp), path, source, shown, dispatch, sink, grants, roots, started,
                           deadline, limit_s, memory_mb, max_ops)
        finally:
            with shielded():
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)

def _run_in(tmp: Path, path: Path | None, source: str | None, shown: str,
            dispatch: Dispatch, sink: Sink | None, grants: list[str],
            roots: tuple[list[str], list[str]], started: float, deadline: float | None,
            limit_s: float | None, memory_mb: int, max_ops: int | None) -> ScriptResult:
    code_dir = tmp / "code"
    code_dir.mkdir()
    if path is not None:
        # a plain name (its suffix tells Deno the language): URLs need no escaping to match
        copy = code_dir / ("script" + next(x for x in SCRIPT_SUFFIXES if path.name.endswith(x)))
        text = _decode_script(path.read_bytes())  # the script as it is now, in a directory only we write
    else:
        copy = code_dir / "inline.ts"
        text = source or ""
    copy.write_text(_SOURCE_MAP.sub(r"krepisIgnoredSourceMap\1", text), encoding="utf-8")
    prelude_dir = tmp / "prelude"  # apart from the script, whatever the script's name
    prelude_dir.mkdir()
    main = prelude_dir / "main.js"
    script_url = copy.as_uri()
    main.write_text(
        _prelude()
        .replace("__KREPIS_SCRIPT_URL__", json.dumps(script_url))
        .replace("__KREPIS_MAX_MESSAGE__", str(MAX_MESSAGE))
        .replace("__KREPIS_MAX_ERROR_TEXT__", str(MAX_ERROR_TEXT)),
        encoding="utf-8")
    import_map = tmp / "import_map.json"
    import_map.write_text(_import_map([script_url, main.as_uri()]), encoding="utf-8")
    deno_dir = tmp / "deno"
    deno_dir.mkdir()
    env = {"DENO_DIR": str(deno_dir), "HOME": str(tmp), "TMPDIR": str(tmp), "PATH": "/usr/bin:/bin",
           "DENO_NO_UPDATE_CHECK": "1", "DENO_NO_PROMPT": "1", "DENO_NO_PACKAGE_JSON": "1", "NO_COLOR": "1"}
    deno = deno_binary()
    confinement = (_landlock.Confinement.for_run(str(tmp), deno, *roots)
                   if _landlock.abi_version() else None)
    if confinement is None and sink is not None:
        # Without Landlock nothing stops Deno from quoting a file in its own messages on stderr
        # (a Worker's error report shows a line of any file a source map names): none is shown.
        with contextlib.suppress(OSError, ValueError):
            sink.write(_WITHHELD_NOTE)
            sink.flush()
        sink = None
    cmd = [deno, "run", "--no-prompt", "--no-config", "--no-lock", "--no-remote", "--no-npm",
           "--quiet", f"--import-map={import_map}", f"--v8-flags=--max-old-space-size={memory_mb}",
           *grants, str(main)]
    setup = _child_setup(memory_mb, os.getpid(), confinement)
    tail = bytearray()
    calls = 0
    token = secrets.token_hex(16)  # vouches for the prelude's out-of-memory report
    out_of_memory = False
    outcome: dict[str, Any] | None = None
    proc: subprocess.Popen[bytes] | None = None
    drain: threading.Thread | None = None
    try:
        with shielded():  # an interruption waits until Deno is ours to kill
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, env=env, cwd=tmp, start_new_session=True,
                                        preexec_fn=setup)
            except subprocess.SubprocessError as exc:  # the child's setup raised (Landlock)
                raise JournalError(f"could not start Deno confined (Landlock ABI "
                                   f"{_landlock.abi_version()}): {exc}") from None
            assert proc.stdin and proc.stdout and proc.stderr
            drain = threading.Thread(target=_drain, args=(proc.stderr, sink, tail), daemon=True)
            drain.start()
        channel = _Channel(proc.stdout.fileno(), proc.stdin.fileno(), deadline)
        try:
            channel.send(_frame({"token": token}))  # the prelude reads it before the script runs
            while True:
                body = channel.frame()
                if body is None:
                    break
                message = decode_message(body)
                if "id" in message:
                    calls += 1
                    if max_ops is not None and calls > max_ops:
                        raise ScriptError(f"the script exceeded its limit of {max_ops} op calls and "
                                          "was killed", name="OpLimit")
                    channel.send(dispatch_frame(message, dispatch))
                elif message.get("t") in ("done", "error"):
                    if outcome is None or outcome.get("t") != "error":  # an error is not undone
                        outcome = message
                elif message.get("t") == "memory" and outcome is None and isinstance(
                        message.get("token"), str) and hmac.compare_digest(
                            message["token"].encode("utf-8", "replace"), token.encode()):
                    out_of_memory = True  # the next error is an allocation that failed at the cap
                else:
                    raise ScriptError(f"unexpected message from the script: {body[:80]!r}",
                                      name="ProtocolError")
            code = _wait(proc, deadline)
        except TimeoutError:
            raise ScriptError(f"the script timed out after {limit_s:g} s and was killed",
                              name="Timeout") from None
    finally:
        with shielded():
            if proc is not None:
                _kill(proc)
                if drain is not None:
                    drain.join(timeout=5)
                for pipe in (proc.stdin, proc.stdout, proc.stderr):
                    if pipe is not None:
                        with contextlib.suppress(OSError):
                            pipe.close()
    elapsed = (time.monotonic() - started) * 1000
    stderr_tail = bytes(tail)
    if outcome is not None and outcome.get("t") == "error":
        raise _script_error(outcome, script_url, main.as_uri(), shown, memory_mb, out_of_memory)
    if outcome is None or code != 0:
        if code in _OOM_SIGNALS and any(marker in stderr_tail for marker in _OOM_MARKERS):
            raise ScriptError(f"the script ran out of its memory limit of {memory_mb} MiB and was ended",
                              name="MemoryLimit")
        detail = stderr_tail.decode("utf-8", "replace").strip().splitlines()
        last = detail[-1][:500] if detail else "no output"
        if confinement is None:
            last = "its output is not shown (no Landlock)"
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ScriptError(f"Deno {how} before the script finished: {last}", name="DenoExited")
    return ScriptResult(ops_called=calls, duration_ms=elapsed, exit_code=code)

_DENIED = re.compile(r'Unsupported scheme "' + _DENIED_SCHEME + r'" for module "' + _DENIED_SCHEME
                     + r':([^"]*)"\.(?: Supported schemes:(?:\s*- "[a-z]+")*)?')

# A file: URL with a host (file://HOST/…) is out of the import map's reach (its keys are
# prefixes, and "file://" means "file:///"): Deno refuses to make a path of it, or takes it for
# an unmapped bare name (with a port or user). Either way nothing is loaded; said as a refusal.
_HOSTED = re.compile(r'(?:Could not convert URL to file path\.|Invalid file path\.)\s*'
                     r'(?:URL|Specifier): (file:[^\s"]*)')
_UNMAPPED = re.compile(r'Import "(file:[^"]*)" not a dependency and not in import map from "[^"]*"')

_REFUSED = 'import of "{}" refused: a script can import only itself (and data:/blob: modules)'

_HINT = re.compile(r"run again with the --allow-([a-z-]+) flag")

def _readable(text: str, script_url: str, prelude_url: str, shown: str, imports: bool = True) -> str:
    """Deno's text with the private copy's URL replaced by the script's path, and a refused
    import said as such (``imports``: the text is about an import, not ``fetch``)."""
    text = _DENIED.sub(lambda m: _REFUSED.format(f"file:{m.group(1)}"), text)
    if imports:
        text = _UNMAPPED.sub(lambda m: _REFUSED.format(m.group(1)), _HOSTED.sub(
            lambda m: _REFUSED.format(m.group(1)), text))
    text = _HINT.sub(lambda m: (f"grant it with PermissionPolicy / krepis run --allow-{m.group(1)}"
                                if m.group(1) in ("read", "write", "net")
                                else f"krepis never grants --allow-{m.group(1)}"), text)
    return text.replace(script_url, shown).replace(prelude_url, "krepis:prelude")

def _script_error(outcome: dict[str, Any], script_url: str, prelude_url: str, shown: str,
                  memory_mb: int, out_of_memory: bool = False) -> ScriptError:
    """The ScriptError of an error message; ``out_of_memory``: the prelude vouched (with the
    run's token) that it is an allocation V8 refused at the cap — only then ``MemoryLimit``."""
    def text(key: str, default: str) -> str:
        value = outcome.get(key)
        return (value if isinstance(value, str) else default)[:MAX_ERROR_TEXT + 1]

    name = text("name", "Error") or "Error"
    imports = name != "URIError"  # fetch() of a file URL is not an import
    message = _readable(text("message", ""), script_url, prelude_url, shown, imports)
    if name in RESERVED_NAMES:  # a script cannot pass its failure off as a limit
        name, message = "Error", f"{name}: {message}"
    raw_stack = outcome.get("stack")
    stack = (_readable(raw_stack[:MAX_ERROR_TEXT + 1], script_url, prelude_url, shown, imports)
             if isinstance(raw_stack, str) else None)
    if out_of_memory and name == "RangeError":
        return ScriptError(f"the script ran out of its memory limit of {memory_mb} MiB "
                           f"(RangeError: {message})", name="MemoryLimit", stack=stack)
    location = None
    at_script = re.compile(re.escape(shown) + r":(\d+):(\d+)")
    for line in (stack or "").splitlines()[1:]:
        found = at_script.search(line)
        if found:
            location = f"{shown}:{found.group(1)}:{found.group(2)}"
            break
    lines = message.splitlines() or [""]
    while len(lines) > 1 and lines[-1].strip().startswith("at "):
        lines.pop()  # Deno repeats the location inside some messages; it is added once below
    message = "\n".join(lines)
    head = message if message.startswith(name) else f"{name}: {message}"
    return ScriptError(head + (f" (at {location})" if location else ""), name=name, stack=stack,
                       location=location)

def _wait(proc: subprocess.Popen[bytes], deadline: float | None) -> int:
    remaining = None if deadline is None else max(0.001, deadline - time.monotonic())
    try:
        return proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        raise TimeoutError from None

def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
    proc.wait()
