"""Unit tests of kernel/_landlock: the rules of a run, the rights each ABI handles, and the real
confinement — applied in a forked child of the test process (as between fork and exec), which
then reports what it could open."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from krepis.kernel import _landlock as landlock

needs_landlock = pytest.mark.skipif(not landlock.abi_version(), reason="this kernel has no Landlock")


def _in_child(body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``body`` in a forked child and return what it reports (or the error it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            try:
                report = body()
            except landlock.LandlockError as exc:
                report = {"error": str(exc), "errno": exc.errno}
            os.write(write_end, json.dumps(report).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 1 << 16):
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result: dict[str, Any] = json.loads(data)
    return result


def _call_restrict_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Call :func:`landlock.restrict` in this process too (it refuses at once without Landlock):
    mutmut runs a mutant's tests by what they call in-process, and the confinement itself runs
    in the forked child."""
    with monkeypatch.context() as patch:
        patch.setattr(landlock, "_version", 0)
        with pytest.raises(landlock.LandlockError):
            landlock.restrict(landlock.Confinement(()))


def _can_read(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        return False
    return True


def _can_write(path: Path) -> bool:
    try:
        with open(path, "ab") as f:
            f.write(b"x")
    except PermissionError:
        return False
    return True


def _can_list(path: Path) -> bool:
    try:
        os.listdir(path)
    except PermissionError:
        return False
    return True


def test_the_rules_of_a_run() -> None:
    rules = landlock.Confinement.for_run("/run/priv", "/opt/deno", ["/data/a", "/data/b"], ["/out"]).rules
    read, run = landlock.READ, landlock.RUN
    assert rules == (
        ("/run/priv", landlock.ALL), ("/opt/deno", run), ("/dev/null", read | landlock.WRITE_FILE),
        *[(p, run) for p in ("/lib", "/lib32", "/lib64", "/usr/lib", "/usr/lib32", "/usr/lib64",
                             "/usr/local/lib")],
        *[(p, read) for p in landlock._SYSTEM_FILES + landlock._SYSTEM_TREES],
        ("/data/a", read), ("/data/b", read), ("/out", landlock.WRITE),
    )
    assert landlock.Confinement.for_run("/p", "/d", iter(()), iter(())).rules[-1] == ("/proc/self", read)


def test_the_rights_each_abi_handles() -> None:
    base = (1 << 13) - 1
    assert landlock._handled(1) == base
    assert landlock._handled(2) == base | landlock.REFER
    assert landlock._handled(3) == landlock._handled(4) == base | landlock.REFER | landlock.TRUNCATE
    assert landlock._handled(5) == landlock._handled(7) == landlock.ALL


def test_the_abi_version_is_asked_once_and_never_negative(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def fake(answer: int) -> Callable[..., int]:
        def syscall(*args: Any) -> int:
            calls.append(args)
            return answer
        return syscall

    for answer, expected in ((-1, 0), (0, 0), (3, 3)):
        monkeypatch.setattr(landlock, "_version", None)
        monkeypatch.setattr(landlock, "_syscall", lambda a=answer: fake(a))
        assert landlock.abi_version() == expected
        assert landlock.abi_version() == expected  # cached
    assert len(calls) == 3
    number, attr, size, flags = calls[0]
    assert (number, attr, size.value, flags.value) == (444, None, 0, 1)
    monkeypatch.setattr(landlock, "_version", None)
    monkeypatch.setattr(landlock, "_syscall", lambda: None)
    assert landlock.abi_version() == 0


@needs_landlock
def test_the_kernel_is_asked_for_its_abi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "_version", None)
    assert landlock.abi_version() >= 1


def test_libc_is_looked_up_once_and_only_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "_libc", None)
    found = landlock._syscall()
    if not sys.platform.startswith("linux"):
        assert found is None
        return
    assert found is not None and found.restype is ctypes.c_long
    libc = landlock._libc
    assert landlock._syscall() is libc.syscall and landlock._libc is libc
    ctypes.set_errno(0)
    assert found(-1) == -1 and ctypes.get_errno() == errno.ENOSYS  # errno is kept for the errors
    monkeypatch.setattr(sys, "platform", "darwin")
    assert landlock._syscall() is None
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(landlock, "_libc", None)

    def no_libc(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no libc")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert landlock._syscall() is None
    assert landlock._libc is False
    assert landlock._syscall() is None


def test_without_landlock_restrict_refuses_before_touching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(landlock, "_version", 0)
    with pytest.raises(landlock.LandlockError, match=r"^Landlock is not available$"):
        landlock.restrict(landlock.Confinement(()))
    monkeypatch.setattr(landlock, "_version", 7)
    monkeypatch.setattr(landlock, "_syscall", lambda: None)
    with pytest.raises(landlock.LandlockError, match=r"^Landlock is not available$"):
        landlock.restrict(landlock.Confinement(()))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("priv", "read", "write", "secret", "zero"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"data")
    (tmp_path / "file").write_bytes(b"data")
    return tmp_path


@needs_landlock
def test_a_confined_child_opens_only_what_its_rules_allow(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _call_restrict_here(monkeypatch)
    confinement = landlock.Confinement.for_run(str(tree / "priv"), sys.executable, [str(tree / "read")],
                                               [str(tree / "write"), str(tree / "missing")])

    def body() -> dict[str, Any]:
        before = sorted(os.listdir("/proc/self/fd"))
        landlock.restrict(confinement)
        status = Path("/proc/self/status").read_text()
        return {
            "fds_kept": sorted(os.listdir("/proc/self/fd")) == before,
            "no_new_privs": "NoNewPrivs:\t1" in status,
            "priv": [_can_read(tree / "priv" / "f"), _can_write(tree / "priv" / "new"),
                     _can_list(tree / "priv")],
            "read": [_can_read(tree / "read" / "f"), _can_write(tree / "read" / "f"),
                     _can_list(tree / "read")],
            "write": [_can_write(tree / "write" / "new"), _can_list(tree / "write")],
            "secret": [_can_read(tree / "secret" / "f"), _can_list(tree / "secret")],
            "dev_null": [_can_read(Path("/dev/null")), _can_write(Path("/dev/null"))],
            "executable": _can_read(Path(sys.executable)),
        }

    assert _in_child(body) == {
        "fds_kept": True, "no_new_privs": True,
        "priv": [True, True, True], "read": [True, False, True], "write": [True, True],
        "secret": [False, False], "dev_null": [True, True], "executable": True,
    }


@needs_landlock
def test_a_rule_without_rights_is_skipped_and_a_file_gets_only_file_rights(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        landlock.restrict(landlock.Confinement(((str(tree / "zero"), 0), (str(tree / "file"), landlock.ALL),
                                                (str(tree / "priv"), landlock.READ))))
        return {"zero": _can_read(tree / "zero" / "f"), "file": [_can_read(tree / "file"),
                                                                 _can_write(tree / "file")],
                "sibling": _can_write(tree / "other"), "priv": _can_read(tree / "priv" / "f")}

    assert _in_child(body) == {"zero": False, "file": [True, True], "sibling": False, "priv": True}


@needs_landlock
def test_a_rule_the_kernel_refuses_is_an_error_naming_its_path(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        landlock._FILE_RIGHTS = landlock.ALL  # type: ignore[misc]  # (in the child only)
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),
                                                (str(tree / "file"), landlock.ALL))))
        return {}

    assert _in_child(body) == {"error": f"[Errno 22] landlock_add_rule failed for {str(tree / 'file')!r}",
                               "errno": 22}


@needs_landlock
def test_a_ruleset_the_kernel_refuses_is_an_error(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        landlock._handled = lambda abi: 1 << 40  # (in the child only): a right no kernel knows
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),)))
        return {}

    assert _in_child(body) == {"error": "[Errno 22] landlock_create_ruleset failed", "errno": 22}


class _FakeLibc:
    """libc with one call failing as the kernel would (errno set): the failures a test cannot
    cause for real as root (with CAP_SYS_ADMIN, restrict_self works without no_new_privs)."""

    def __init__(self, real: Any, fail_prctl: bool, fail_restrict: bool) -> None:
        self._real, self._fail_prctl, self._fail_restrict = real, fail_prctl, fail_restrict
        self.prctl = self._prctl

    def _prctl(self, *args: Any) -> int:
        if self._fail_prctl:
            ctypes.set_errno(errno.EPERM)
            return -1
        return int(self._real.prctl(*args))

    def syscall(self, number: int, *args: Any) -> int:
        if number == 446 and self._fail_restrict:
            ctypes.set_errno(errno.E2BIG)
            return -1
        return int(self._real.syscall(number, *args))


@needs_landlock
@pytest.mark.parametrize(("prctl", "restrict_self", "message"), [
    (True, False, "[Errno 1] prctl(PR_SET_NO_NEW_PRIVS) failed"),
    (False, True, "[Errno 7] landlock_restrict_self failed"),
])
def test_a_failed_confinement_step_is_an_error_naming_it(
        tree: Path, monkeypatch: pytest.MonkeyPatch, prctl: bool, restrict_self: bool, message: str) -> None:
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        landlock._libc = _FakeLibc(landlock._libc, prctl, restrict_self)  # (in the child only)
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),)))
        return {}

    assert _in_child(body) == {"error": message, "errno": int(message[7])}


@needs_landlock
def test_abi_1_confines_with_the_rights_it_knows(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        landlock._version = 1  # (in the child only): as on a kernel of Landlock's first ABI
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),)))
        return {"priv": _can_read(tree / "priv" / "f"), "secret": _can_read(tree / "secret" / "f")}

    assert _in_child(body) == {"priv": True, "secret": False}


@needs_landlock
def test_a_ruleset_on_descriptor_0_is_used(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With stdin closed the ruleset gets descriptor 0, a valid one."""
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        os.close(0)
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),)))
        return {"priv": _can_read(tree / "priv" / "f"), "secret": _can_read(tree / "secret" / "f")}

    assert _in_child(body) == {"priv": True, "secret": False}


@needs_landlock
def test_a_rule_path_is_opened_without_opening_the_file(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule's path is opened with O_PATH: a FIFO in the rules does not block the child (an
    alarm ends it if it did) and a file rule keeps exactly its rights."""
    _call_restrict_here(monkeypatch)
    fifo = tree / "fifo"
    os.mkfifo(fifo)

    def body() -> dict[str, Any]:
        signal.alarm(5)
        landlock.restrict(landlock.Confinement(((str(fifo), landlock.READ),
                                                (str(tree / "file"), landlock.READ),
                                                (str(tree / "priv"), landlock.READ))))
        signal.alarm(0)
        return {"file": [_can_read(tree / "file"), _can_write(tree / "file")],
                "fifo_is_fifo": stat.S_ISFIFO(os.stat(fifo).st_mode)}

    assert _in_child(body) == {"file": [True, False], "fifo_is_fifo": True}


def _as_the_kernel_sees(arg: Any) -> Any:
    """A syscall argument as the kernel reads it: ``None`` is a NULL pointer (0)."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    return getattr(arg, "value", "pointer")


@needs_landlock
def test_each_landlock_call_passes_its_arguments_and_no_flags(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flags of the three calls are 0 (a flag such as 1 for restrict_self exists only from
    ABI 7 and would make the confinement fail on older kernels), and restrict_self gets its
    flags argument at all (without it the kernel reads whatever the register holds)."""
    _call_restrict_here(monkeypatch)

    def body() -> dict[str, Any]:
        real = landlock._libc
        calls: list[list[Any]] = []

        class Spy:
            prctl = real.prctl

            @staticmethod
            def syscall(number: int, *args: Any) -> int:
                calls.append([number, [_as_the_kernel_sees(a) for a in args]])
                return int(real.syscall(number, *args))

        landlock._libc = Spy()  # (in the child only)
        landlock.restrict(landlock.Confinement(((str(tree / "priv"), landlock.READ),)))
        return {"calls": calls}

    calls = _in_child(body)["calls"]
    assert [c[0] for c in calls] == [444, 445, 446]
    create, add, restrict_self = (c[1] for c in calls)
    assert create[1:] == [8, 0]                        # sizeof(attr), flags
    assert add[0] == restrict_self[0] and add[1] == 1 and add[3] == 0  # the ruleset, PATH_BENEATH, flags
    assert len(restrict_self) == 2 and restrict_self[1] == 0
