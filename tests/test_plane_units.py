"""The execution plane's pure functions, exactly: net targets, permission roots and checks,
script decoding, and the text of a script's error. (The tests that start Deno are in
test_plane*.py; these pin the messages and edge cases those cannot reach cheaply.)"""

from __future__ import annotations

import ctypes
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from krepis import InvalidTypeError, ValidationError
from krepis.kernel import PermissionPolicy
from krepis.kernel import _channel as wire
from krepis.kernel import _plane as plane
from krepis.kernel._outcome import MAX_ERROR_TEXT
from krepis.kernel._permissions import _split_host
from krepis.kernel._plane import _decode_script, _readable, _script_error


@pytest.mark.parametrize(("entry", "expected"), [
    ("example.com", ("example.com", None)),
    (" Example.COM:443 ", ("example.com", 443)),
    ("h:1", ("h", 1)),
    ("h:65535", ("h", 65535)),
    ("[::1]", ("[::1]", None)),
    ("[::1]:80", ("[::1]", 80)),
])
def test_net_targets(entry: str, expected: tuple[str, int | None]) -> None:
    assert _split_host(entry) == expected


@pytest.mark.parametrize(("entry", "reason"), [
    ("[::1", "unclosed '[' in an IPv6 address"),
    ("[::1]x", "expected ':port' after ']'"),
    ("[::1]]", "expected ':port' after ']'"),
    ("[::1]:", "port '' is not a number in 1…65535"),
    ("[nothost]", "'nothost' is not an IPv6 address"),
    ("a:b:c", "write an IPv6 address as [addr] or [addr]:port"),
    ("bad host!", "'bad host!' is not a host name or address"),
    ("h:0", "port '0' is not a number in 1…65535"),
    ("h:65536", "port '65536' is not a number in 1…65535"),
    ("h:x", "port 'x' is not a number in 1…65535"),
])
def test_bad_net_targets_are_named(entry: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _split_host(entry)
    assert str(caught.value) == f"net target {entry!r}: {reason}"


def test_a_net_target_must_be_a_string() -> None:
    with pytest.raises(InvalidTypeError) as caught:
        PermissionPolicy().allow_net(5)  # type: ignore[arg-type]
    assert str(caught.value) == "a net target must be a str, got int"


@pytest.mark.parametrize(("root", "error", "message"), [
    (5, InvalidTypeError, "permission root must be a path, got int"),
    ("", ValidationError, "permission root '' is not a usable path"),
    ("/tmp/a\x00b", ValidationError, "permission root '/tmp/a\\x00b' is not a usable path"),
    ("/tmp/a,b", ValidationError, "permission root '/tmp/a,b' contains ',', which Deno's permission "
                                  "lists cannot hold"),
    ("/", ValidationError, "permission root '/' resolves to '/', which would grant every path"),
])
def test_bad_permission_roots_are_named(root: object, error: type[Exception], message: str) -> None:
    policy = PermissionPolicy()
    with pytest.raises(error) as caught:
        policy.allow_read(root)  # type: ignore[arg-type]
    assert str(caught.value) == message
    assert policy.read == []


def test_a_root_that_resolves_elsewhere_later_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "a")
    policy = PermissionPolicy(read=[str(link)])
    link.unlink()
    link.symlink_to(tmp_path / "b")
    with pytest.raises(ValidationError) as caught:
        policy.allow_read(link)
    assert str(caught.value) == (f"permission root {str(link)!r} now resolves to {str(tmp_path / 'b')!r}, "
                                 f"not {str(tmp_path / 'a')!r} as when it was granted")
    assert not policy.check("read", str(tmp_path / "b" / "f"))  # the moved root grants nothing


def test_a_root_ending_in_a_space_grants_only_itself(tmp_path: Path) -> None:
    (tmp_path / "data ").mkdir()
    (tmp_path / "data").mkdir()
    policy = PermissionPolicy(read=[str(tmp_path / "data ")])
    assert policy.check("read", str(tmp_path / "data " / "f"))
    assert not policy.check("read", str(tmp_path / "data" / "f"))


def test_check_answers_and_refuses_exactly(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    policy = PermissionPolicy(read=[str(root)], net=["example.com:443", "[::1]"])
    assert policy.check("read", str(root)) and policy.check("read", str(root / "x" / "y"))
    assert not policy.check("read", str(tmp_path / "data2"))  # a sibling sharing the prefix
    assert not policy.check("write", str(root / "x"))
    for target in ("", str(root / "a\x00b")):  # never a grant, never an error
        assert policy.check("read", target) is False
    assert policy.check("net", "EXAMPLE.com:443") and not policy.check("net", "example.com:80")
    assert policy.check("net", "[::1]:5") and not policy.check("net", "example.org")
    for args in ((5, "/x"), ("read", 5)):
        with pytest.raises(InvalidTypeError) as caught:
            policy.check(*args)  # type: ignore[arg-type]
        assert str(caught.value) == "op_check_permission(permission, target) takes two strings"
    with pytest.raises(ValidationError, match=r"^unknown permission 'env'; use 'read', 'write' or 'net'$"):
        policy.check("env", "/x")
    with pytest.raises(ValidationError,
                       match=r"^path 'x' is relative; op_check_permission takes an absolute path$"):
        policy.check("read", "x")


def test_scripts_decode_as_deno_decodes_them() -> None:
    assert _decode_script("\ufeffa = 1\ufeff".encode()) == "a = 1\ufeff"  # only a leading BOM goes
    assert _decode_script(b"\xff\xfe" + "é".encode("utf-16-le")) == "é"
    assert _decode_script(b"\xfe\xff" + "é".encode("utf-16-be")) == "é"
    assert _decode_script(b"a\xffb") == "a\ufffdb"  # invalid bytes become U+FFFD, never an error
    assert _decode_script(b"\xff\xfe" + "é".encode("utf-16-le") + b"\x00") == "é\ufffd"


URLS = ("file:///run/x/script.js", "file:///run/x/prelude.js", "job.js")


def test_deno_texts_are_made_readable() -> None:
    denied = ('Unsupported scheme "krepis-denied" for module "krepis-denied:///etc/passwd". Supported '
              'schemes:\n - "blob"\n - "data"')
    assert _readable(denied, *URLS) == ('import of "file:///etc/passwd" refused: a script can '
                                                "import only itself (and data:/blob: modules)")
    for kind in ("read", "write", "net"):
        assert _readable(f"run again with the --allow-{kind} flag", *URLS) == (
            f"grant it with PermissionPolicy / krepis run --allow-{kind}")
    assert _readable("run again with the --allow-env flag", *URLS) == ("krepis never grants "
                                                                        "--allow-env")
    assert _readable("at file:///run/x/script.js:1:2 from file:///run/x/prelude.js", *URLS) == (
        "at job.js:1:2 from krepis:prelude")


def test_a_script_error_keeps_16_kib_of_text_and_a_name() -> None:
    long = "x" * (MAX_ERROR_TEXT + 10)
    error = _script_error({"name": "Error", "message": long, "stack": long}, *URLS, 64)
    assert str(error) == "Error: " + "x" * (MAX_ERROR_TEXT + 1)  # the journal cuts it to 16 KiB
    assert error.stack == "x" * (MAX_ERROR_TEXT + 1)
    assert error.name == "Error"
    for outcome in ({"message": "m"}, {"name": 5, "message": "m"}, {"name": "", "message": "m"}):
        error = _script_error(outcome, *URLS, 64)
        assert (error.name, str(error)) == ("Error", "Error: m")
    error = _script_error({"name": "Timeout", "message": "m"}, *URLS, 64)
    assert (error.name, str(error)) == ("Error", "Error: Timeout: m")  # a script cannot pose as a limit


def test_an_interruption_names_its_signal() -> None:
    assert str(plane.ScriptInterrupted(signal.SIGTERM)) == "interrupted by SIGTERM"
    assert plane.ScriptInterrupted(signal.SIGHUP).signum == signal.SIGHUP


def test_relative_roots_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    policy = PermissionPolicy(write=["out"])
    assert policy.write == [os.path.join(str(tmp_path), "out")]


def test_a_script_error_says_where_and_drops_the_repeated_location() -> None:
    stack = "Error: boom\n    at job.js:3:5\n    at job.js:9:1"
    error = _script_error({"name": "Error", "message": "boom\n    at job.js:3:5", "stack": stack}, *URLS, 64)
    assert (str(error), error.location, error.stack) == ("Error: boom (at job.js:3:5)", "job.js:3:5", stack)
    cases = [("", "Error: "), ("at first", "Error: at first"), ("a\nb", "Error: a\nb"),
             ("a\nb\n  at c", "Error: a\nb"), ("TypeError: x", "Error: TypeError: x")]
    for message, expected in cases:
        error = _script_error({"name": "Error", "message": message}, *URLS, 64)
        assert (str(error), error.location) == (expected, None), message
    assert str(_script_error({"name": "Error"}, *URLS, 64)) == "Error: "
    error = _script_error({"name": "TypeError", "message": "TypeError: x"}, *URLS, 64)
    assert str(error) == "TypeError: x"  # the name is not said twice


def test_running_out_of_memory_is_a_memory_limit_error() -> None:
    """MemoryLimit only when the prelude vouched for the allocation failure (the run's token):
    the same text without it is the RangeError it is."""
    outcome = {"name": "RangeError", "message": "Array buffer allocation failed", "stack": "RangeError: x"}
    error = _script_error(outcome, *URLS, 64, True)
    assert (error.name, str(error), error.stack) == (
        "MemoryLimit", "the script ran out of its memory limit of 64 MiB (RangeError: Array buffer "
        "allocation failed)", "RangeError: x")
    assert _script_error(outcome, *URLS, 64).name == "RangeError"
    assert _script_error({**outcome, "name": "TypeError"}, *URLS, 64, True).name == "TypeError"


def test_a_policy_as_a_dict(tmp_path: Path) -> None:
    policy = PermissionPolicy(read=[str(tmp_path)], net=["example.com:443"])
    policy.allow_write(tmp_path / "out")
    assert policy.to_dict() == {"read": [str(tmp_path)], "write": [str(tmp_path / "out")],
                                "net": ["example.com:443"]}
    copy = policy.to_dict()
    copy["read"].append("/elsewhere")  # a copy: changing it changes nothing in the policy
    assert policy.read == [str(tmp_path)]


# --- the message layer: nesting pre-check, frames, malformed calls ----------------------------

_DEPTH = wire._MAX_JSON_DEPTH


@pytest.mark.parametrize(("body", "ok"), [
    (b"[" * _DEPTH + b"]" * _DEPTH, True),                  # at the limit (few brackets: the fast path)
    (b"[" * (_DEPTH + 1) + b"]" * (_DEPTH + 1), False),
    (b"{" * (_DEPTH + 1) + b"}" * (_DEPTH + 1), False),    # objects count as arrays do
    (b'{"a":' * (_DEPTH + 1) + b"1" + b"}" * (_DEPTH + 1), False),
    # more brackets than the limit, nested no deeper than it: the byte scan decides
    (b"[" * (_DEPTH - 1) + b"[],[]" + b"]" * (_DEPTH - 1), True),
    (b"[" + b"[]," * (_DEPTH + 5) + b"[]]", True),         # siblings close what they open
    (b"{" + b'"k":{},' * (_DEPTH + 5) + b'"z":{}}', True),
    (b'["' + b"[" * (_DEPTH + 5) + b'"]', True),           # brackets inside a string are text
    (b'["\\"' + b"[{" * (_DEPTH + 5) + b'"]', True),       # an escaped quote does not end it
    (b'["\\\\"' + b"[" * (_DEPTH + 1) + b"]" * (_DEPTH + 1) + b"]", False),  # an escaped backslash does
])
def test_the_nesting_pre_check_counts_only_open_brackets_outside_strings(body: bytes, ok: bool) -> None:
    assert wire._json_depth_ok(body) is ok


def _unframe(frame: bytes) -> dict[str, object]:

    magic, length = struct.unpack(">4sI", frame[:8])
    assert magic == wire.MAGIC and length == len(frame) - 8
    decoded: dict[str, object] = json.loads(frame[8:])
    return decoded


def test_a_reply_of_exactly_the_message_limit_is_sent_and_one_byte_more_is_refused() -> None:
    overhead = len(b'{"id":1,"ok":""}')
    fits = wire._frame({"id": 1, "ok": "x" * (wire.MAX_MESSAGE - overhead)})
    assert len(fits) == 8 + wire.MAX_MESSAGE
    with pytest.raises(ValueError, match=rf"^the reply is {wire.MAX_MESSAGE + 1} bytes; the limit is "
                                         rf"{wire.MAX_MESSAGE}$"):
        wire._frame({"id": 1, "ok": "x" * (wire.MAX_MESSAGE - overhead + 1)})


@pytest.mark.parametrize("message", [{"id": 3, "op": 5, "args": []}, {"id": 3, "op": "x", "args": {}},
                                     {"id": 3, "args": []}, {"id": 3, "op": "x"}])
def test_a_malformed_op_call_is_answered_with_a_type_error(message: dict[str, object]) -> None:
    def dispatch(name: str, args: list[object], encode):  # type: ignore[no-untyped-def]
        raise AssertionError("a malformed call reaches no op")

    assert _unframe(wire.dispatch_frame(message, dispatch)) == {
        "id": 3, "error": {"name": "TypeError", "message": "malformed op call"}}


def test_a_message_that_is_not_an_object_is_named_with_its_first_80_bytes() -> None:
    body = b"[" + b"1," * 60 + b"1]"
    with pytest.raises(plane.ScriptError) as caught:
        wire.decode_message(body)
    assert str(caught.value) == f"malformed message from the script: not an object: {body[:80]!r}"
    assert caught.value.name == "ProtocolError"


def test_a_script_error_is_named_error_unless_told() -> None:
    error = plane.ScriptError("m")
    assert (error.name, error.stack, error.location, str(error)) == ("Error", None, None, "m")


def test_waiting_for_deno_ends_at_the_deadline() -> None:

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(TimeoutError):
            plane._wait(proc, time.monotonic() + 0.2)
        with pytest.raises(TimeoutError):
            plane._wait(proc, time.monotonic() - 5)  # already past: a last look, not a wait
    finally:
        proc.kill()
        assert plane._wait(proc, None) == -signal.SIGKILL


def test_the_deno_binary_is_the_packaged_one_else_the_one_on_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deno  # the package krepis depends on

    packaged = str(deno.find_deno_bin())
    assert plane.deno_binary() == packaged
    on_path = tmp_path / "deno"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert plane.deno_binary() == packaged  # the package's first
    monkeypatch.setattr(deno, "find_deno_bin", lambda: tmp_path / "missing")
    assert plane.deno_binary() == str(on_path)
    on_path.unlink()
    with pytest.raises(plane.JournalError, match=r"^the deno binary was not found: install krepis "
                                                 r"with its dependencies \(pip install krepis brings "
                                                 r"the 'deno' package\)$"):
        plane.deno_binary()


# --- the channel: frames read from a real pipe ------------------------------------------------

@pytest.fixture
def channel():  # type: ignore[no-untyped-def]
    """A channel reading the read end of a pipe (the script's stdout) and the write end to
    feed it; replies go to a second pipe."""
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    feed = os.fdopen(out_w, "wb", buffering=0)
    made: list[wire._Channel] = []

    def make(deadline: float | None = None) -> wire._Channel:
        made.append(wire._Channel(out_r, in_w, deadline))
        return made[0]

    yield make, feed
    if not feed.closed:
        feed.close()
    for fd in (out_r, in_r, in_w):
        os.close(fd)


def _header(length: int, magic: bytes = b"KRP1") -> bytes:

    return struct.pack(">4sI", magic, length)


def _later(seconds: float, *actions) -> threading.Thread:  # type: ignore[no-untyped-def]

    def run() -> None:
        time.sleep(seconds)
        for action in actions:
            action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_frame_arriving_in_parts_is_read_whole(channel) -> None:  # type: ignore[no-untyped-def]
    make, feed = channel
    chan = make()
    feed.write(_header(10) + b"01234")
    thread = _later(0.2, lambda: feed.write(b"56789" + _header(2)), lambda: feed.write(b"ab"), feed.close)
    try:
        assert chan.frame() == b"0123456789"
        assert chan.frame() == b"ab"
        assert chan.frame() is None  # a clean end
    finally:
        thread.join()


def test_a_frame_of_exactly_the_message_limit_is_read(channel) -> None:  # type: ignore[no-untyped-def]
    make, feed = channel
    chan = make()
    thread = _later(0, lambda: feed.write(_header(wire.MAX_MESSAGE) + b"x" * wire.MAX_MESSAGE), feed.close)
    try:
        assert chan.frame() == b"x" * wire.MAX_MESSAGE
    finally:
        thread.join()


@pytest.mark.parametrize(("data", "message"), [
    (b"KRP", "the script's output ended inside a message: b'KRP'"),
    (_header(10) + b"0123", "the script's output ended inside a message"),
    (b"hello from console.log\n",
     "malformed message from the script (stdout is reserved for the kernel protocol; use "
     "console.log): b'hello from console.log\\n'"),
    (_header(0, b"KRP2") + b"x" * 50, "malformed message from the script (stdout is reserved for the "
                                      "kernel protocol; use console.log): b'KRP2\\x00\\x00\\x00\\x00"
                                      + "x" * 32 + "'"),
    (_header(wire.MAX_MESSAGE + 1), f"message of {wire.MAX_MESSAGE + 1} bytes exceeds the "
                                     f"{wire.MAX_MESSAGE}-byte limit"),
], ids=["cut-header", "cut-body", "console", "magic", "too-long"])
def test_a_broken_frame_is_a_protocol_error(channel, data: bytes, message: str) -> None:  # type: ignore[no-untyped-def]
    make, feed = channel
    chan = make()
    feed.write(data)
    feed.close()
    with pytest.raises(plane.ScriptError) as caught:
        chan.frame()
    assert (caught.value.name, str(caught.value)) == ("ProtocolError", message)


def test_a_channel_waits_for_a_frame_only_until_its_deadline(channel) -> None:  # type: ignore[no-untyped-def]

    make, feed = channel
    chan = make(time.monotonic() + 0.2)
    feed.write(_header(4) + b"ab")
    with pytest.raises(TimeoutError):
        chan.frame()


def test_a_reply_larger_than_the_pipe_is_sent_whole_as_the_script_reads() -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    data = os.urandom(1 << 20)  # 16 pipe buffers
    received = bytearray()

    def read_slowly() -> None:
        time.sleep(0.2)  # the pipe fills first: the host must wait for room, not give up
        while chunk := os.read(in_r, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        wire._Channel(out_r, in_w, time.monotonic() + 30).send(data)
    finally:
        os.close(in_w)
        reader.join(30)
        for fd in (out_r, out_w, in_r):
            os.close(fd)
    assert bytes(received) == data


def test_a_script_that_never_reads_its_replies_ends_the_send_at_the_deadline() -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    try:
        with pytest.raises(TimeoutError):
            wire._Channel(out_r, in_w, time.monotonic() + 0.3).send(b"x" * (1 << 20))
        os.close(in_r)  # the script is gone: what is left is dropped, its end of stream tells how
        in_r = -1
        wire._Channel(out_r, in_w, time.monotonic() + 0.3).send(b"y" * 10)
    finally:
        for fd in (out_r, out_w, in_r, in_w):
            if fd >= 0:
                os.close(fd)


# --- the child's set-up between fork and exec -----------------------------------------------------

def test_without_prctl_no_script_runs(monkeypatch: pytest.MonkeyPatch) -> None:

    def no_libc(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    with pytest.raises(plane.JournalError) as caught:
        plane._child_setup(64, os.getpid())
    assert str(caught.value) == ("cannot set a parent-death signal for Deno (prctl unavailable); "
                                 "refusing to run a script that could outlive this process")


def test_the_child_limits_never_exceed_this_process_hard_limits() -> None:
    """Run in a forked child, as subprocess runs it: the file-size and data limits are krepis's,
    lowered to the hard limits the child inherits (raising them would fail)."""

    data_hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    data = (64 + plane._DATA_RESERVE_MB) << 20
    if data_hard != resource.RLIM_INFINITY:
        data = min(data, data_hard)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # below krepis's file limit
            plane._child_setup(64, os.getppid())()
            ok = (resource.getrlimit(resource.RLIMIT_FSIZE) == (4096, 4096)
                  and resource.getrlimit(resource.RLIMIT_DATA) == (data, data)
                  and resource.getrlimit(resource.RLIMIT_CORE) == (0, 0))
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_console_output_is_forwarded_as_it_comes_not_at_the_end() -> None:
    read_end, write_end = os.pipe()
    stream = os.fdopen(read_end, "rb")
    sink, tail = io.BytesIO(), bytearray()
    thread = threading.Thread(target=plane._drain, args=(stream, sink, tail))
    thread.start()
    try:
        os.write(write_end, b"first line\n")
        deadline = time.monotonic() + 10
        while sink.getvalue() != b"first line\n" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sink.getvalue() == b"first line\n"  # while the script still runs (its stderr is open)
        os.write(write_end, b"second\n")
    finally:
        os.close(write_end)
        thread.join(10)
        stream.close()
    assert sink.getvalue() == b"first line\nsecond\n" and bytes(tail) == b"first line\nsecond\n"


# --- what run_deno refuses before it starts Deno ------------------------------------------------

def _no_dispatch(name: str, args: list[object], encode):  # type: ignore[no-untyped-def]
    raise AssertionError("no op runs")


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"timeout": True}, InvalidTypeError, "timeout must be a number of seconds or None, got bool True"),
    ({"timeout": "5"}, InvalidTypeError, "timeout must be a number of seconds or None, got str '5'"),
    ({"timeout": float("nan")}, ValidationError,
     "timeout must be a finite number of seconds >= 0 (0: none), got nan"),
    ({"timeout": float("inf")}, ValidationError,
     "timeout must be a finite number of seconds >= 0 (0: none), got inf"),
    ({"timeout": -0.5}, ValidationError,
     "timeout must be a finite number of seconds >= 0 (0: none), got -0.5"),
    ({"memory_limit_mb": 15}, ValidationError, "memory_limit_mb must be an int >= 16 (MiB), got 15"),
    ({"max_ops": -1}, ValidationError, "max_ops must be an int >= 0 or None, got -1"),
    ({"permissions": {"read": []}}, InvalidTypeError, "permissions must be a PermissionPolicy, got dict"),
])
def test_run_deno_refuses_bad_limits_before_starting_deno(kwargs: dict[str, object], error: type[Exception],
                                                         message: str) -> None:
    with pytest.raises(error) as caught:
        plane.run_deno("Krepis.ops.never();", _no_dispatch, **kwargs)  # type: ignore[arg-type]
    assert type(caught.value) is error and str(caught.value) == message


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/x.js"


def test_what_counts_as_a_script_path_and_what_is_refused(tmp_path: Path) -> None:
    suffixes = ", ".join(plane.SCRIPT_SUFFIXES)
    notes = tmp_path / "notes"
    notes.write_text("1")
    cases: list[tuple[object, type[Exception], str]] = [
        (str(notes), ValidationError,
         f"script {str(notes)!r} is a file without a script suffix ({suffixes}); "
         "rename it, or pass its text"),
        (notes, ValidationError, f"script {str(notes)!r} has no script suffix ({suffixes})"),
        (tmp_path / "missing.js", ValidationError,
         f"script {str(tmp_path / 'missing.js')!r} does not exist or is not a file"),
        (_BytesPath(), InvalidTypeError, "script path must be a str path, got bytes"),
        ("  \t ", ValidationError, "script source is empty"),
        (b"1", InvalidTypeError, "script must be a path or source code, got bytes"),
    ]
    for script, error, message in cases:
        with pytest.raises(error) as caught:
            plane.resolve_script(script)  # type: ignore[arg-type]
        assert type(caught.value) is error and str(caught.value) == message, script
    assert plane.resolve_script("notes") == (None, "notes")  # not a file here: source code
    assert plane.resolve_script("a\0b") == (None, "a\0b")


@pytest.mark.parametrize("kind", ["read", "write", "net"])
def test_a_permission_list_must_be_a_list(kind: str) -> None:
    for value, name in (("/tmp", "str"), ((), "tuple"), (b"x", "bytes")):
        with pytest.raises(InvalidTypeError) as caught:
            PermissionPolicy(**{kind: value})  # type: ignore[arg-type]
        assert str(caught.value) == f"PermissionPolicy({kind}=...) takes a list, got {name}"


@pytest.mark.parametrize("name", ["URIError", "TypeError"])
def test_a_hosted_file_url_is_said_refused_as_an_import_but_not_in_a_fetch_error(name: str) -> None:
    """``fetch()`` of a file URL fails with a URIError: it is no import, so its text is kept;
    any other error naming such a URL is about an import, said as refused (message and stack)."""
    said = "Invalid file path.\nSpecifier: file://host/etc/passwd"
    error = _script_error({"t": "error", "name": name, "message": said,
                           "stack": f"{name}: {said}\n    at {URLS[0]}:1:1"}, *URLS, 64)
    refused = ('import of "file://host/etc/passwd" refused: a script can import only itself '
               '(and data:/blob: modules)')
    shown = said if name == "URIError" else refused
    assert str(error) == f"{name}: {shown} (at job.js:1:1)"
    assert error.stack == f"{name}: {shown}\n    at job.js:1:1"


def test_a_text_is_about_an_import_unless_told() -> None:
    hosted = 'Import "file://host:1/x.js" not a dependency and not in import map from "file:///a"'
    refused = ('import of "file://host:1/x.js" refused: a script can import only itself '
               '(and data:/blob: modules)')
    assert _readable(hosted, *URLS) == refused
    assert _readable(hosted, *URLS, imports=False) == hosted


def test_waiting_for_deno_to_exit_takes_the_time_left_at_least_a_millisecond(
        monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    asked: list[float | None] = []
    real_wait = proc.wait

    def wait(timeout: float | None = None) -> int:
        asked.append(timeout)
        return real_wait(timeout=0.001 if timeout is not None else None)

    try:
        monkeypatch.setattr(proc, "wait", wait)
        monkeypatch.setattr(time, "monotonic", lambda: 100.0)
        for deadline in (100.25, 99.0, 100.0):
            with pytest.raises(TimeoutError):
                plane._wait(proc, deadline)
        assert asked == [0.25, 0.001, 0.001]
    finally:
        proc.kill()
        real_wait()


def test_the_import_map_maps_the_script_and_prelude_to_themselves_and_every_other_file_url_away() -> None:
    urls = ["file:///run/x/code/script.ts", "file:///run/x/prelude/main.js"]
    assert json.loads(plane._import_map(urls)) == {"imports": {
        urls[0]: urls[0], urls[1]: urls[1],
        "file://": "krepis-denied://", "file:///": "krepis-denied:///"}}


def test_the_prelude_is_read_as_utf8_whatever_the_locale() -> None:
    """The prelude holds non-ASCII text (the "…" of a cut error): read under an ASCII locale it
    is the same text. (The child runs this process's code: PYTHONPATH is kept.)"""
    assert "\u2026" in plane._prelude()
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = ("import locale, sys; from krepis.kernel._plane import _prelude; "
            "sys.exit(0 if locale.getpreferredencoding(False) != 'UTF-8' and '\\u2026' in _prelude() else 3)")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_inline_source_is_typescript() -> None:
    def dispatch(name: str, args: list[object], encode):  # type: ignore[no-untyped-def]
        raise AssertionError("no op is called")

    result = plane.run_deno("const n: number = 2;\ninterface P { x: number }\nconst p: P = { x: n };\n",
                            dispatch, stderr=io.BytesIO())
    assert (result.exit_code, result.ops_called) == (0, 0)
