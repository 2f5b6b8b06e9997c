"""Unit tests of kernel/_landlock: the rules of a run, the rights each ABI handles, and the real
confinement — applied in a forked child of the test process (as between fork and exec), which
then reports what it could open."""

from __future__ import annotations

import ctypes
import json
import os
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
