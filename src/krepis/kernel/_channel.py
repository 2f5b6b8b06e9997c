"""The plane's wire: length-prefixed JSON frames between the host and the Deno process over
its stdin/stdout (op calls, replies, the outcome), with every malformed frame a named
``ProtocolError``."""

from __future__ import annotations

import json
import os
import select
import struct
import time
from collections.abc import Callable
from typing import Any

from ._outcome import (
    MAX_ERROR_TEXT,
    ScriptError,
)

MAGIC = b"KRP1"

MAX_MESSAGE = 16 * 1024 * 1024

_MAX_JSON_DEPTH = 512

_HEADER = struct.Struct(">4sI")

_SPIN_SECONDS = 0.0005

#: ``dispatch(name, args, encode)``: runs op ``name`` and returns ``encode(result)``.
Dispatch = Callable[[str, list[Any], Callable[[Any], bytes]], bytes]

class _Channel:
    """Frames from the script's stdout and replies to its stdin, never blocking past a deadline."""

    def __init__(self, out_fd: int, in_fd: int, deadline: float | None) -> None:
        os.set_blocking(out_fd, False)
        os.set_blocking(in_fd, False)
        self._fd = out_fd
        self._in = in_fd
        self._buf = bytearray()
        self._deadline = deadline

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

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
                ready, _, _ = select.select([self._fd], [], [], self._remaining())
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

    def send(self, data: bytes) -> None:
        """Write ``data`` to the script, waiting for room only until the deadline.

        A script that sends calls without reading the replies fills both pipes; the host then
        waits here, and the timeout ends the run (it never blocks in ``write``).
        """
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return  # Deno is gone; its end of stream tells how
            _, ready, _ = select.select([], [self._in], [], self._remaining())
            if not ready:
                raise TimeoutError

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

def _frame(message: dict[str, Any]) -> bytes:
    body = _encode_json(message).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"the reply is {len(body)} bytes; the limit is {MAX_MESSAGE}")
    return _HEADER.pack(MAGIC, len(body)) + body

def _json_depth_ok(body: bytes) -> bool:
    """Whether JSON text nests at most ``_MAX_JSON_DEPTH`` deep (a cheap pre-check on raw bytes)."""
    if body.count(b"[") + body.count(b"{") <= _MAX_JSON_DEPTH:
        return True
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > _MAX_JSON_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True

def decode_message(body: bytes) -> dict[str, Any]:
    """One message from the script as a dict; anything malformed is a ``ProtocolError``."""
    if not _json_depth_ok(body):
        raise ScriptError(f"malformed message from the script: JSON nested deeper than {_MAX_JSON_DEPTH}",
                          name="ProtocolError")
    try:
        message = json.loads(body.decode("utf-8"))  # (text: no encoding to detect)
    except (ValueError, RecursionError) as exc:
        raise ScriptError(f"malformed message from the script: {str(exc)[:200]}",
                          name="ProtocolError") from None
    if not isinstance(message, dict):
        raise ScriptError(f"malformed message from the script: not an object: {body[:80]!r}",
                          name="ProtocolError")
    return message

def reply_frame(call_id: Any, ok: Any = None, error: BaseException | None = None) -> bytes:
    """The encoded reply to call ``call_id``: its value, or the error the script sees.

    Raises ``ValueError``/``TypeError``/``RecursionError`` if ``ok`` is not JSON that fits in a
    message: the caller decides what that means for the op (it failed).
    """
    if error is not None:
        return _frame({"id": call_id, "error": {"name": type(error).__name__,
                                                "message": str(error)[:MAX_ERROR_TEXT]}})
    if type(ok) is int and type(call_id) is int:  # the common reply (a count): its JSON is its digits
        body = b'{"id":%d,"ok":%d}' % (call_id, ok)
        return _HEADER.pack(MAGIC, len(body)) + body
    return _frame({"id": call_id, "ok": ok})

def dispatch_frame(message: dict[str, Any], dispatch: Dispatch) -> bytes:
    """The reply frame to one call message: ``dispatch``'s frame, or an error frame."""
    call_id = message.get("id")
    if not isinstance(call_id, int) or isinstance(call_id, bool):
        raise ScriptError(f"malformed op call: id {call_id!r:.40} is not an integer", name="ProtocolError")
    name, args = message.get("op"), message.get("args")
    if not isinstance(name, str) or not isinstance(args, list):
        return reply_frame(call_id, error=TypeError("malformed op call"))
    try:
        return dispatch(name, args, lambda value: reply_frame(call_id, ok=value))
    except Exception as exc:
        return reply_frame(call_id, error=exc)
