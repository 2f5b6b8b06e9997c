"""``krepis.cli._common`` in-process: values made inert for a terminal (every escape's exact
form, the characters just outside the unsafe ranges left alone), plurals, the stdout guard on a
real closed pipe, the one-line usage errors and the group's handling of every expected error
(through click's CliRunner on real stores), the storage location's checks, and the option
types' conversions and messages."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from krepis import CorruptStorageError, StorageError
from krepis.cli import _common, cli
from krepis.cli._common import (
    _about_the_store,
    _console,
    _emit_json,
    _escape_char,
    _flush_policy,
    _Group,
    _guard_stdout,
    _inert_json,
    _inert_tsv,
    _LimitType,
    _one_line,
    _PipeGuard,
    _reader_gone,
    _set_storage,
    _storage,
    _storage_option,
    _TimeType,
    _UsageError,
    inert,
    plural,
)


@pytest.mark.parametrize(("raw", "shown"), [
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"), ("\x00", "\\x00"), ("\x1b", "\\x1b"), ("\x1f", "\\x1f"),
    ("\x7f", "\\x7f"), ("\x80", "\\x80"), ("\x9f", "\\x9f"), ("\u061c", "\\u061c"), ("\u200e", "\\u200e"),
    ("\u200f", "\\u200f"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\u202a", "\\u202a"),
    ("\u202e", "\\u202e"), ("\u2066", "\\u2066"), ("\u2069", "\\u2069"), ("\ud800", "\\ud800"),
    ("\udfff", "\\udfff"),
])
def test_inert_escapes_each_unsafe_character(raw: str, shown: str) -> None:
    assert inert(f"a{raw}b") == f"a{shown}b"
    assert _inert_tsv(f"a{raw}b") == f"a{shown}b"


@pytest.mark.parametrize("safe", [" ", "~", "\xa0", "é", "\u200d", "\u2027", "\u202f", "\u2065", "\u206a",
                                  "\\", "✓"])
def test_inert_leaves_the_rest_alone(safe: str) -> None:
    text = f"a{safe}b"
    assert inert(text) is text or inert(text) == text
    assert inert(text) == text


def test_escape_char_forms() -> None:
    import re

    def esc(char: str) -> str:
        match = re.match(".", char, re.S)
        assert match is not None
        return _escape_char(match)

    assert [esc(c) for c in "\n\r\t\\"] == ["\\n", "\\r", "\\t", "\\\\"]
    assert (esc("\x01"), esc("\xff"), esc("\u0100"), esc("\u202e")) == (
        "\\x01", "\\xff", "\\u0100", "\\u202e")


def test_tsv_doubles_backslashes_and_inert_does_not() -> None:
    assert _inert_tsv("a\\b\tc") == "a\\\\b\\tc"
    assert inert("a\\b") == "a\\b"
    assert _inert_tsv("plain") == "plain"


def test_inert_json_escapes_only_what_json_leaves_raw() -> None:
    assert _inert_json('{"a":"x\\n\u202ey\x7f\x9f"}') == '{"a":"x\\n\\u202ey\\u007f\\u009f"}'
    line = '{"a":"é ✓"}'
    assert _inert_json(line) is line
    assert _inert_json("\ud800") == "\\ud800"


def test_plural() -> None:
    assert [plural(n, "entry", "entries") for n in (0, 1, 2)] == ["0 entries", "1 entry", "2 entries"]
    assert [plural(n, "counter") for n in (0, 1, 5)] == ["0 counters", "1 counter", "5 counters"]


# -- the stdout guard, on a real pipe whose reader has gone ---------------------------------------

def _closed_pipe() -> tuple[io.TextIOWrapper, int]:
    read, write = os.pipe()
    os.close(read)
    return io.TextIOWrapper(os.fdopen(write, "wb", buffering=0), encoding="utf-8", write_through=True), write


def test_the_guard_discards_writes_once_the_reader_has_gone() -> None:
    inner, fd = _closed_pipe()
    guard = _PipeGuard(inner)
    try:
        assert guard.gone is False and guard.fileno() == fd  # (other attributes: the stream's)
        assert guard.write("hello") == 5
        assert guard.gone is True
        assert os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"  # what is buffered drains there
        assert guard.write("more text") == 9
        guard.flush()
    finally:
        inner.close()


def test_the_guard_passes_writes_through_and_a_flush_notices_the_reader_gone() -> None:
    out = io.StringIO()
    guard = _PipeGuard(out)
    assert guard.write("abc") == 3 and out.getvalue() == "abc"
    guard.flush()
    assert guard.gone is False

    class Buffered(io.StringIO):
        def flush(self) -> None:
            raise BrokenPipeError

        def fileno(self) -> int:
            return fd

    _, fd = _closed_pipe()
    guard = _PipeGuard(Buffered())
    guard.flush()
    assert guard.gone is True and os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"
    guard.flush()  # gone: nothing more is tried
    os.close(fd)


def test_guard_stdout_wraps_once_and_reader_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert _reader_gone() is False
    _guard_stdout()
    guard = sys.stdout
    assert isinstance(guard, _PipeGuard) and guard._inner is out
    _guard_stdout()
    assert sys.stdout is guard
    assert _reader_gone() is False
    guard.gone = True
    assert _reader_gone() is True
    monkeypatch.setattr(sys, "stdout", None)
    _guard_stdout()
    assert sys.stdout is None


# -- usage errors in one line ------------------------------------------------------------------

def test_usage_error_show_names_the_command() -> None:
    out = io.StringIO()
    _UsageError("bad thing", None, "krepis logs").show(out)
    assert out.getvalue() == "Error: bad thing (see krepis logs --help)\n"
    out = io.StringIO()
    _UsageError("bad thing", None, None).show(out)
    assert out.getvalue() == "Error: bad thing\n"


def test_usage_error_show_defaults_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    _UsageError("oops", None, "krepis x").show()
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "Error: oops (see krepis x --help)\n")


def test_one_line_takes_the_path_from_the_error_or_the_group() -> None:
    group = click.Context(click.Group("krepis"), info_name="krepis")
    sub = click.Context(click.Command("logs"), info_name="logs", parent=group)
    made = _one_line(click.UsageError("no \x1b[31m", sub), group)
    assert (made.format_message(), made.command_path, made.ctx) == ("no \\x1b[31m", "krepis logs", sub)
    group.invoked_subcommand = "stats"
    assert _one_line(click.UsageError("x"), group).command_path == "krepis stats"
    group.invoked_subcommand = None
    assert _one_line(click.UsageError("x"), group).command_path == "krepis"
    assert _one_line(click.UsageError("x"), None).command_path is None


def test_usage_errors_through_the_cli_are_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--storage", str(tmp_path / "s"), "logs", "--bogus"],
                                prog_name="krepis")
    assert result.exit_code == 2
    assert result.stderr == "Error: No such option '--bogus'. (see krepis logs --help)\n"
    result = CliRunner().invoke(cli, ["--storage", str(tmp_path / "s"), "logs", "-n", "x\x1b"],
                                prog_name="krepis")
    assert result.exit_code == 2
    assert result.stderr == ("Error: Invalid value for '-n' / '--lines' / '--limit': 'x\\x1b' is not a "
                             "number of entries >= 0 or 'all' (see krepis logs --help)\n")
    result = CliRunner().invoke(cli, ["--nope"], prog_name="krepis")
    assert (result.exit_code, result.stderr) == (2, "Error: No such option '--nope'. (see krepis --help)\n")
    result = CliRunner().invoke(cli, ["logs", "--storage"], prog_name="krepis")
    assert result.exit_code == 2
    assert result.stderr == "Error: Option '--storage' requires an argument. (see krepis logs --help)\n"


# -- the group's expected errors ---------------------------------------------------------------

def test_about_the_store() -> None:
    assert _about_the_store(StorageError("x", None), "/s") is True
    assert _about_the_store(StorageError("x", "/s"), None) is True
    assert _about_the_store(StorageError("x", "/s"), "/s") is True
    assert _about_the_store(StorageError("x", "/s/data.mdb"), "/s/") is True
    assert _about_the_store(StorageError("x", "/s2"), "/s") is False
    assert _about_the_store(StorageError("x", "/backup"), "/s") is False
    assert _about_the_store(StorageError("x", "rel"), "rel") is True
    assert _about_the_store(StorageError("x", "/s-other"), "/s") is False


def test_a_storage_error_names_where_the_location_came_from(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    result = CliRunner().invoke(cli, ["stats"], env={"KREPIS_STORAGE": missing})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and missing in result.stderr
    assert result.stderr.endswith(" (the storage location comes from KREPIS_STORAGE)\n")
    result = CliRunner().invoke(cli, ["--storage", missing, "stats"])
    assert result.exit_code == 1 and "comes from" not in result.stderr


def test_the_group_turns_errors_into_one_line(tmp_path: Path) -> None:
    calls: list[str] = []

    @click.group(cls=_Group)
    @click.pass_context
    def group(ctx: click.Context) -> None:
        ctx.ensure_object(dict)
        ctx.obj.update({"storage": str(tmp_path / "s"), "storage_source": "KREPIS_STORAGE"})

    @group.command()
    @click.argument("what")
    def fail(what: str) -> None:
        calls.append(what)
        if what == "store":
            raise CorruptStorageError("bad\x1b store", str(tmp_path / "s" / "data.mdb"))
        if what == "elsewhere":
            raise StorageError("bad backup", str(tmp_path / "b"))
        if what == "click":
            raise click.ClickException("click \x07 text")
        if what == "usage":
            raise click.UsageError("use \x1b it")
        if what == "pipe":
            raise BrokenPipeError
        if what == "oserror":
            raise PermissionError(13, "Permission denied", "/x\x1by")
        if what == "bare-oserror":
            raise OSError("no strerror")

    runner = CliRunner()
    result = runner.invoke(group, ["fail", "store"])
    assert (result.exit_code, result.stderr) == (
        1, "Error: bad\\x1b store (the storage location comes from KREPIS_STORAGE)\n")
    assert runner.invoke(group, ["fail", "elsewhere"]).stderr == "Error: bad backup\n"
    assert runner.invoke(group, ["fail", "click"]).stderr == "Error: click \\x07 text\n"
    result = runner.invoke(group, ["fail", "usage"])
    assert (result.exit_code, result.stderr) == (2, "Error: use \\x1b it (see group fail --help)\n")
    result = runner.invoke(group, ["fail", "oserror"])
    assert (result.exit_code, result.stderr) == (1, "Error: /x\\x1by: Permission denied\n")
    assert runner.invoke(group, ["fail", "bare-oserror"]).stderr == "Error: no strerror\n"
    assert runner.invoke(group, ["fail"]).stderr == (
        "Error: Missing argument 'WHAT'. (see group fail --help)\n")


def test_a_broken_pipe_ends_quietly_and_successfully(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    @click.group(cls=_Group)
    def group() -> None:
        pass

    @group.command()
    def pipe() -> None:
        raise BrokenPipeError

    inner, fd = _closed_pipe()
    monkeypatch.setattr(sys, "stdout", inner)
    with pytest.raises(SystemExit) as info:
        group.main(["pipe"], standalone_mode=False)
    assert info.value.code == 0
    assert os.readlink(f"/proc/self/fd/{fd}") == "/dev/null"
    monkeypatch.undo()
    inner.close()


# -- output helpers ----------------------------------------------------------------------------

def test_emit_json_is_compact_utf8_and_inert(capsys: pytest.CaptureFixture[str]) -> None:
    _emit_json({"a": "é\u202e", "b": [1, None]})
    assert capsys.readouterr().out == '{"a":"é\\u202e","b":[1,null]}\n'


def test_console_width_follows_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdout", io.StringIO())
    console = _console()
    assert console.width == 200
    monkeypatch.setenv("COLUMNS", "77")
    monkeypatch.setattr(sys, "stdout", Tty())
    assert _console().width == 77
    console = _console()
    console.print("[bold]1 + 1[/bold]")  # no highlighting: the text as given
    assert console.file is sys.stdout


# -- the storage location ----------------------------------------------------------------------

def _ctx(obj: dict[str, Any]) -> click.Context:
    ctx = click.Context(click.Command("krepis"), obj=obj)
    return ctx


def test_storage_must_be_utf8() -> None:
    assert _storage(_ctx({"storage": "/s"})) == "/s"
    assert _storage(click.Context(click.Command("x"), parent=_ctx({"storage": Path("/p")}))) == "/p"
    bad = os.fsdecode(b"/s\xff")
    with pytest.raises(click.BadParameter) as info:
        _storage(_ctx({"storage": bad, "storage_source": "KREPIS_STORAGE"}))
    assert info.value.format_message() == (
        "Invalid value for --storage: b'/s\\xff' (from KREPIS_STORAGE) is not valid UTF-8; krepis needs "
        "a UTF-8 storage path")
    with pytest.raises(click.BadParameter) as info:
        _storage(_ctx({"storage": bad, "storage_source": None}))
    assert info.value.format_message() == (
        "Invalid value for --storage: b'/s\\xff' is not valid UTF-8; krepis needs a UTF-8 storage path")


def test_set_storage_overrides_the_groups() -> None:
    root = _ctx({"storage": "/g", "storage_source": "KREPIS_STORAGE", "storage_explicit": None})
    sub = click.Context(click.Command("x"), parent=root)
    param = click.Option(["--storage"])
    _set_storage(sub, param, None)
    assert root.obj == {"storage": "/g", "storage_source": "KREPIS_STORAGE", "storage_explicit": None}
    _set_storage(sub, param, "/mine")
    assert root.obj == {"storage": "/mine", "storage_source": None, "storage_explicit": "/mine"}


def test_the_storage_option_after_the_command(tmp_path: Path) -> None:
    seen: list[str] = []

    @click.command()
    @_storage_option
    @click.pass_context
    def show(ctx: click.Context) -> None:
        seen.append(_storage(ctx))

    CliRunner().invoke(show, ["--storage", str(tmp_path)], obj={"storage": "/default"})
    CliRunner().invoke(show, [], obj={"storage": "/default"})
    assert seen == [str(tmp_path), "/default"]
    option = next(p for p in show.params if p.name == "storage")
    assert isinstance(option, click.Option) and option.expose_value is False
    assert option.metavar == "PATH" and option.default is None
    assert option.help == "Storage directory or postgresql:// URL (as before the command)."


# -- --flush and the option types --------------------------------------------------------------

def test_flush_policy_names_the_environment_variable() -> None:
    @click.command()
    @click.option("--flush", envvar="KREPIS_FLUSH", default=None, callback=_flush_policy)
    def run(flush: str | None) -> None:
        click.echo(repr(flush))

    runner = CliRunner()
    assert runner.invoke(run, []).stdout == "None\n"
    assert runner.invoke(run, ["--flush", "interval:5ms"]).stdout == "'interval:5ms'\n"
    from_env = runner.invoke(run, [], env={"KREPIS_FLUSH": "often"})
    from_flag = runner.invoke(run, ["--flush", "often"])
    assert from_env.exit_code == from_flag.exit_code == 2
    assert "Invalid value for '--flush': KREPIS_FLUSH='often': " in from_env.stderr
    assert "Invalid value for '--flush': " in from_flag.stderr and "KREPIS_FLUSH" not in from_flag.stderr
    reason = from_flag.stderr.split("Invalid value for '--flush': ", 1)[1]
    assert from_env.stderr.split("KREPIS_FLUSH='often': ", 1)[1] == reason and "often" in reason


def test_time_type() -> None:
    t = _TimeType()
    assert t.name == "time"
    assert t.convert(5, None, None) == 5
    assert t.convert("@2", None, None) == 2000
    assert t.convert("1764424000000", None, None) == 1764424000000
    with pytest.raises(click.BadParameter) as info:
        t.convert("yesterday-ish", None, None)
    assert "yesterday-ish" in info.value.format_message()


def test_limit_type() -> None:
    t = _LimitType()
    assert t.name == "N|all"
    assert [t.convert(v, None, None) for v in (None, 3, "0", " 12 ", "all", "ALL", " All ")] == [
        None, 3, 0, 12, None, None, None]
    for bad in ("-1", "1.5", "١", "", "al"):
        with pytest.raises(click.BadParameter) as info:
            t.convert(bad, None, None)
        assert info.value.format_message() == (
            f"Invalid value: {bad!r} is not a number of entries >= 0 or 'all'")


def test_emitted_json_parses() -> None:
    runner = CliRunner()

    @click.command()
    def out() -> None:
        _emit_json({"k": "\u2028"})

    assert json.loads(runner.invoke(out).stdout) == {"k": "\u2028"}
    assert _common._READ_POLICY == "sync"


def test_a_storage_error_in_a_deleted_working_directory_is_still_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # os.getcwd() fails from now on: a relative location cannot be made absolute
    assert _about_the_store(StorageError("x", "rel/data.mdb"), "rel") is True
    url = "postgresql://127.0.0.1:1/x?connect_timeout=5"  # (nothing listens on port 1)
    result = CliRunner().invoke(cli, ["stats"], env={"KREPIS_STORAGE": url}, prog_name="krepis")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: cannot connect to PostgreSQL at postgresql://127.0.0.1:1/x")
    assert result.stderr.endswith(" (the storage location comes from KREPIS_STORAGE)\n")


def test_about_the_store_at_the_root_or_with_trailing_blanks() -> None:
    assert _about_the_store(StorageError("x", "/data.mdb"), "/") is True
    assert _about_the_store(StorageError("x", "/s/data.mdb"), "/s ") is False  # only separators cut


def test_an_oserror_keeps_a_file_name_starting_with_x() -> None:
    @click.group(cls=_Group)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise PermissionError(13, "Permission denied", "Xfile")

    result = CliRunner().invoke(group, ["fail"])
    assert result.stderr == "Error: Xfile: Permission denied\n"


def test_the_console_does_not_highlight(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("COLUMNS", "80")
    out = Tty()
    monkeypatch.setattr(sys, "stdout", out)
    _console().print("count 12 at /tmp/x")
    assert out.getvalue() == "count 12 at /tmp/x\n"  # no colours added to numbers and paths


def test_the_group_passes_its_context_settings_and_parent_on() -> None:
    seen: list[Any] = []

    @click.group(cls=_Group)
    @click.pass_context
    def outer(ctx: click.Context) -> None:
        seen.append(ctx.obj)

    @outer.group(cls=_Group)
    def inner() -> None:
        pass

    @inner.command()
    @click.pass_context
    def leaf(ctx: click.Context) -> None:
        seen.append(ctx.find_root().info_name)

    result = CliRunner().invoke(outer, ["inner", "leaf"], obj={"given": 1}, prog_name="top")
    assert result.exit_code == 0, result.output
    assert seen == [{"given": 1}, "top"]
    result = CliRunner().invoke(outer, ["inner", "--bogus"], prog_name="top")
    assert result.stderr == "Error: No such option '--bogus'. (see top inner --help)\n"
