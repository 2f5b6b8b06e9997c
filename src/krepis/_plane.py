"""The execution plane: JavaScript/TypeScript in a Deno process with no permissions.

The script reaches the host only through kernel ops: the prelude (``_js/prelude.js``) gives it
``Krepis.ops.<name>(...)``, which sends a frame on stdout and blocks on stdin for the reply.
This module runs the process and the protocol; the kernel supplies ``dispatch``.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

from ._errors import InvalidTypeError, JournalError, ValidationError

__all__ = [
    "MAX_MESSAGE",
    "PermissionPolicy",
    "ScriptError",
    "ScriptResult",
    "deno_binary",
    "run_deno",
]

MAGIC = b"KRP1"
MAX_MESSAGE = 16 * 1024 * 1024
SCRIPT_SUFFIXES = (".js", ".mjs", ".cjs", ".ts", ".mts", ".jsx", ".tsx")
_HEADER = struct.Struct(">4sI")
_STDERR_TAIL = 8192
_SPIN_SECONDS = 0.0005


class ScriptError(JournalError):
    """A script failed: it threw, did not parse, timed out, broke the protocol, or Deno died.

    ``name`` is the JS error's name (``"SyntaxError"``, ``"TypeError"``, …, or ``"Timeout"``,
    ``"ProtocolError"``, ``"DenoExited"``); ``stack`` the JS stack when there is one.
    """

    def __init__(self, message: str, *, name: str = "Error", stack: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.stack = stack


@dataclass(frozen=True)
class ScriptResult:
    """What a successful run did."""

    ops_called: int
    duration_ms: float
    exit_code: int = 0


def _as_root(path: str | os.PathLike[str]) -> str:
    real = os.path.realpath(os.fspath(path))
    return real if real.endswith(os.sep) else real + os.sep


@dataclass
class PermissionPolicy:
    """What ``op_check_permission(permission, path)`` answers.

    ``read`` is allowed under the ``read`` roots (default ``/tmp/krepis/``); ``write`` under the
    ``write`` roots; ``net`` for the listed hosts (``host`` or ``host:port``). Everything else is
    denied. Paths are resolved (``..`` and symlinks) before they are compared, so
    ``/tmp/krepis/../../etc`` is not under ``/tmp/krepis/``.
    """

    read: list[str] = field(default_factory=lambda: ["/tmp/krepis/"])
    write: list[str] = field(default_factory=list)
    net: list[str] = field(default_factory=list)

    def allow_read(self, path: str | os.PathLike[str]) -> None:
        self.read.append(os.fspath(path))

    def allow_write(self, path: str | os.PathLike[str]) -> None:
        self.write.append(os.fspath(path))

    def allow_net(self, host: str) -> None:
        self.net.append(host)

    def check(self, permission: str, target: str) -> bool:
        if not isinstance(permission, str) or not isinstance(target, str):
            raise InvalidTypeError("op_check_permission(permission, path) takes two strings")
        if permission == "net":
            host = target.rsplit(":", 1)[0] if target.count(":") == 1 else target
            return target in self.net or host in self.net
        if permission not in ("read", "write"):
            raise ValidationError(f"unknown permission {permission!r}; use 'read', 'write' or 'net'")
        if not target or "\x00" in target:
            return False
        resolved = _as_root(target)
        roots = self.read if permission == "read" else self.write
        return any(resolved.startswith(_as_root(root)) for root in roots)

    def to_dict(self) -> dict[str, list[str]]:
        return {"read": list(self.read), "write": list(self.write), "net": list(self.net)}


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
    return resources.files("krepis").joinpath("_js/prelude.js").read_text(encoding="utf-8")


class _Reader:
    """Frames from the script's stdout, with a deadline."""

    def __init__(self, fd: int, deadline: float | None) -> None:
        os.set_blocking(fd, False)
        self._fd = fd
        self._buf = bytearray()
        self._deadline = deadline

    def _fill(self, need: int) -> bool:
        while len(self._buf) < need:
            # A script calling ops in a loop answers within microseconds: poll briefly before
            # sleeping in select(), since waking a sleeping process costs far more than that.
            chunk = None
            spin_until = time.perf_counter() + _SPIN_SECONDS
            while True:
                try:
                    chunk = os.read(self._fd, 1 << 16)
                    break
                except BlockingIOError:
                    if time.perf_counter() >= spin_until:
                        break
            if chunk is None:
                timeout = None if self._deadline is None else self._deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    raise TimeoutError
                ready, _, _ = select.select([self._fd], [], [], timeout)
                if not ready:
                    raise TimeoutError
                try:
                    chunk = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    continue
            if not chunk:
                return False
            self._buf += chunk
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TimeoutError
        return True

    def frame(self) -> bytes | None:
        """The next frame's body, or None at a clean end of stream."""
        if not self._fill(_HEADER.size):
            if self._buf:
                raise ScriptError(f"the script's output ended inside a message: {bytes(self._buf[:80])!r}",
                                  name="ProtocolError")
            return None
        magic, length = _HEADER.unpack_from(self._buf)
        if magic != MAGIC:
            raise ScriptError(
                "malformed message from the script (stdout is reserved for the kernel protocol; "
                f"use console.log): {bytes(self._buf[:40])!r}", name="ProtocolError")
        if length > MAX_MESSAGE:
            raise ScriptError(f"message of {length} bytes exceeds the {MAX_MESSAGE}-byte limit",
                              name="ProtocolError")
        if not self._fill(_HEADER.size + length):
            raise ScriptError("the script's output ended inside a message", name="ProtocolError")
        body = bytes(self._buf[_HEADER.size:_HEADER.size + length])
        del self._buf[:_HEADER.size + length]
        return body


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def _frame(message: dict[str, Any]) -> bytes:
    body = _encode_json(message).encode()
    return _HEADER.pack(MAGIC, len(body)) + body


def _drain(stream: BinaryIO, sink: BinaryIO | None, tail: bytearray) -> None:
    while chunk := stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16):
        tail += chunk
        del tail[:-_STDERR_TAIL]
        if sink is not None:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sink = None


def resolve_script(script: str | os.PathLike[str]) -> tuple[Path | None, str | None]:
    """(path, None) for a script file, (None, source) for source code.

    A ``PathLike``, or a one-line ``str`` ending in a script suffix, is a path (it must exist);
    any other ``str`` is source code.
    """
    if isinstance(script, os.PathLike) or (
        isinstance(script, str) and "\n" not in script and script.strip().endswith(SCRIPT_SUFFIXES)
    ):
        path = Path(os.fspath(script)).expanduser()
        if not path.is_file():
            raise ValidationError(f"script {os.fspath(script)!r} does not exist or is not a file")
        return path.resolve(), None
    if isinstance(script, str):
        if not script.strip():
            raise ValidationError("script source is empty")
        return None, script
    raise InvalidTypeError(f"script must be a path or source code, got {type(script).__name__}")


def run_deno(
    script: str | os.PathLike[str],
    dispatch: Callable[[str, list[Any]], Any],
    *,
    timeout: float | None = None,
    stderr: BinaryIO | None = None,
) -> ScriptResult:
    """Run ``script`` in ``deno run --no-prompt`` with no permissions, serving its op calls.

    ``dispatch(name, args)`` runs one op and returns a JSON value or raises; its exception is
    thrown inside JS as an ``Error`` with the same message. Raises :class:`ScriptError` when the
    script fails in any way; the Deno process is always reaped.
    """
    if timeout is not None:
        if type(timeout) not in (int, float):  # bool (an int subclass) is refused too
            raise InvalidTypeError(f"timeout must be a number of seconds or None, got "
                                   f"{type(timeout).__name__} {timeout!r:.80}")
        if not 0 < timeout < float("inf"):  # also refuses NaN
            raise ValidationError(f"timeout must be a positive, finite number of seconds, got {timeout!r}")
    path, source = resolve_script(script)
    sink = stderr if stderr is not None else getattr(sys.stderr, "buffer", None)
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    with tempfile.TemporaryDirectory(prefix="krepis-js-") as tmp:
        if path is None:
            path = Path(tmp) / "inline.ts"
            path.write_text(source or "", encoding="utf-8")
        main = Path(tmp) / "main.js"
        main.write_text(
            _prelude()
            .replace("__KREPIS_SCRIPT_URL__", json.dumps(path.as_uri()))
            .replace("__KREPIS_MAX_MESSAGE__", str(MAX_MESSAGE)),
            encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DENO_") or k == "DENO_DIR"}
        env.update(DENO_NO_UPDATE_CHECK="1", NO_COLOR="1", DENO_NO_PROMPT="1")
        cmd = [deno_binary(), "run", "--no-prompt", "--no-config", "--no-lock", "--no-remote",
               "--no-npm", "--quiet", str(main)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, cwd=tmp)
        assert proc.stdin and proc.stdout and proc.stderr
        tail = bytearray()
        drain = threading.Thread(target=_drain, args=(proc.stderr, sink, tail), daemon=True)
        drain.start()
        calls = 0
        try:
            reader = _Reader(proc.stdout.fileno(), deadline)
            stdin_fd = proc.stdin.fileno()
            outcome: dict[str, Any] | None = None
            while True:
                try:
                    body = reader.frame()
                except TimeoutError:
                    raise ScriptError(f"the script timed out after {timeout:g} s and was killed",
                                      name="Timeout") from None
                if body is None:
                    break
                try:
                    message = json.loads(body)
                    if not isinstance(message, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    raise ScriptError(f"malformed message from the script: {exc}",
                                      name="ProtocolError") from None
                if "id" in message:
                    calls += 1
                    reply = memoryview(_reply(message, dispatch))
                    try:
                        while reply:
                            reply = reply[os.write(stdin_fd, reply):]
                    except BrokenPipeError:
                        pass  # Deno is gone; its end of stream tells how
                elif message.get("t") in ("done", "error"):
                    outcome = message
                else:
                    raise ScriptError(f"unexpected message from the script: {body[:80]!r}",
                                      name="ProtocolError")
            code = _wait(proc, deadline, timeout)
        except BaseException:
            _kill(proc)
            raise
        finally:
            _kill(proc)
            drain.join(timeout=5)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    pipe.close()
                except OSError:
                    pass
    elapsed = (time.monotonic() - started) * 1000
    if outcome is not None and outcome.get("t") == "error":
        name = str(outcome.get("name") or "Error")
        message = str(outcome.get("message") or "")
        text = message if message.startswith(name) else f"{name}: {message}"
        raise ScriptError(text, name=name, stack=outcome.get("stack"))
    if outcome is None or code != 0:
        detail = bytes(tail).decode("utf-8", "replace").strip().splitlines()
        last = detail[-1] if detail else "no output"
        how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ScriptError(f"Deno {how} before the script finished: {last}", name="DenoExited")
    return ScriptResult(ops_called=calls, duration_ms=elapsed, exit_code=code)


def _reply(message: dict[str, Any], dispatch: Callable[[str, list[Any]], Any]) -> bytes:
    call_id = message.get("id")
    name, args = message.get("op"), message.get("args")
    if not isinstance(name, str) or not isinstance(args, list):
        return _frame({"id": call_id, "error": {"name": "TypeError", "message": "malformed op call"}})
    try:
        value = dispatch(name, args)
    except Exception as exc:
        return _frame({"id": call_id, "error": {"name": type(exc).__name__, "message": str(exc)}})
    try:
        return _frame({"id": call_id, "ok": value})
    except (TypeError, ValueError) as exc:
        return _frame({"id": call_id, "error": {
            "name": "TypeError", "message": f"op {name!r} returned a value that is not JSON: {exc}"}})


def _wait(proc: subprocess.Popen[bytes], deadline: float | None, timeout: float | None) -> int:
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return proc.wait(timeout=remaining if remaining is None else max(remaining, 0.001))
    except subprocess.TimeoutExpired:
        raise ScriptError(f"the script timed out after {timeout:g} s and was killed",
                          name="Timeout") from None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
