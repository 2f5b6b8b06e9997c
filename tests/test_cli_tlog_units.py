"""``krepis keygen | checkpoint | verify | tlog export | tlog serve`` (cli/_tlog.py) in process:
each message a user reads, word for word, and each refusal before anything is opened or written.
Real LMDB stores, a real witness served over HTTP in a thread."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.cli import cli
from krepis.cli._tlog import _described, _note_text, _utc
from krepis.cli._tlog_serve import TileServer
from krepis.cli._witness import witness_handlers
from krepis.tlog._cosig import CosignerKey, generate_cosigner
from krepis.tlog._note import Verifier, generate_signer
from krepis.tlog._witness import MAX_BODY, Witness

SIGNER = generate_signer("example.com/units")
VKEY = str(SIGNER.verifier())
OTHER = generate_signer("example.com/other")
WITNESS = generate_cosigner("witness.example/u1")
GONE = generate_cosigner("witness.example/u2")
SECOND = generate_cosigner("witness.example/u3")


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _fill(location: Path, n: int, start: int = 0) -> None:
    with SovereignJournal(location, flush="interval:20ms") as journal:
        for i in range(start, start + n):
            journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed))


def _key(tmp_path: Path, signer: object = SIGNER, name: str = "log.key") -> Path:
    path = tmp_path / name
    path.write_text(f"{signer}\n")
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    _fill(tmp_path / "store", 5)
    return tmp_path / "store"


# -- small helpers ------------------------------------------------------------------------------

def test_utc_is_iso_seconds_in_utc() -> None:
    assert _utc(0) == "1970-01-01T00:00:00Z"
    assert _utc(1_700_000_000) == "2023-11-14T22:13:20Z"


def test_note_text_is_the_body_up_to_its_blank_line() -> None:
    assert _note_text("a\nb\n\n— sig\n") == "a\nb\n"
    assert _note_text("a\n\nx\n\n— sig\n") == "a\n\nx\n"  # the last blank line
    with pytest.raises(Exception, match=r"^not a signed note \(no blank line before the signatures\)$"):
        _note_text("a\nb\n— sig\n")


def test_described_names_origin_and_size_as_far_as_they_read() -> None:
    assert _described("example.com/log\n12\nroot\n") == "origin 'example.com/log', tree size 12"
    assert _described("one\ntwo") == "not a checkpoint"
    assert _described("x" * 150 + "\n" + "9" * 30 + "\nrest") == f"origin {'x' * 100!r}, tree size {'9' * 24}"
    assert _described("a\x1bb\n1\n") == "origin 'a\\\\x1bb', tree size 1"


# -- keygen -------------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_0600_and_prints_the_verifier(tmp_path: Path) -> None:
    key = tmp_path / "k"
    result = _run("keygen", "example.com/k", "--key", str(key))
    assert result.exit_code == 0, result.output
    text = key.read_text()
    assert text.startswith("PRIVATE+KEY+example.com/k+") and text.endswith("\n") and text.count("\n") == 1
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    vkey = result.output.strip()
    assert result.output == vkey + "\n"
    assert Verifier.parse(vkey).name == "example.com/k"


def test_keygen_witness_makes_a_cosignature_key(tmp_path: Path) -> None:
    result = _run("keygen", "witness.example/k", "--witness", "--key", str(tmp_path / "w"))
    assert result.exit_code == 0, result.output
    assert CosignerKey.parse(result.output.strip()).name == "witness.example/k"


def test_keygen_never_overwrites_and_names_what_it_cannot_create(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_text("mine")
    result = _run("keygen", "example.com/k", "--key", str(key))
    assert result.exit_code == 1
    assert result.output == f"Error: {key} exists; krepis never overwrites a key\n"
    assert key.read_text() == "mine"
    missing = tmp_path / "no" / "k"
    result = _run("keygen", "example.com/k", "--key", str(missing))
    assert result.exit_code == 1
    assert result.output == f"Error: cannot create {missing}: No such file or directory\n"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    result = _run("keygen", "example.com/k", "--key", str(link))
    assert result.exit_code == 1 and not (tmp_path / "target").exists()


def test_keygen_refuses_a_bad_origin(tmp_path: Path) -> None:
    result = _run("keygen", "bad name+", "--key", str(tmp_path / "k"))
    assert result.exit_code == 2
    assert "Invalid value for ORIGIN:" in result.output
    assert not (tmp_path / "k").exists()


# -- keys read from files ------------------------------------------------------------------------

def test_an_unreadable_signer_key_is_named(tmp_path: Path, store: Path) -> None:
    missing = tmp_path / "nokey"
    result = _run("--storage", str(store), "checkpoint", "--key", str(missing))
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read the signer key {missing}: No such file or directory\n"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    result = _run("--storage", str(store), "checkpoint", "--key", str(binary))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot read the signer key {binary}: 'utf-8' codec can't decode")
    bad = tmp_path / "bad"
    bad.write_text("PRIVATE+KEY+nonsense\n")
    result = _run("--storage", str(store), "checkpoint", "--key", str(bad))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}: ") and "Traceback" not in result.output


def test_a_verifier_key_is_a_file_or_the_key_itself(tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        trusted = tmp_path / "cp"
        trusted.write_text(journal.sign_checkpoint(SIGNER))
    vfile = tmp_path / "v.pub"
    vfile.write_text(VKEY + "\n")
    for vkey in (VKEY, str(vfile)):
        result = _run("--storage", str(store), "verify", "--vkey", vkey, "--trusted", str(trusted))
        assert result.exit_code == 0, result.output
    result = _run("--storage", str(store), "verify", "--vkey", "not-a-key", "--trusted", str(trusted))
    assert result.exit_code == 1
    assert result.output.startswith("Error: not-a-key: ")
    bad = tmp_path / "bad.pub"
    bad.write_text("still not a key\n")
    result = _run("--storage", str(store), "verify", "--vkey", str(bad), "--trusted", str(trusted))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {bad}: ")
    unreadable = tmp_path / "dir.pub"
    unreadable.mkdir()
    result = _run("--storage", str(store), "verify", "--vkey", str(unreadable), "--trusted", str(trusted))
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read the verifier key {unreadable}: Is a directory\n"


# -- checkpoint ----------------------------------------------------------------------------------

def test_checkpoint_prints_the_note_it_keeps(tmp_path: Path, store: Path) -> None:
    result = _run("--storage", str(store), "checkpoint", "--key", str(_key(tmp_path)))
    assert result.exit_code == 0, result.output
    with SovereignJournal(store) as journal:
        assert result.output == journal.latest_checkpoint()
    assert result.output.startswith("example.com/units\n5\n")


def test_checkpoint_refuses_bad_witness_options_before_opening_the_store(tmp_path: Path) -> None:
    key = str(_key(tmp_path))
    nowhere = str(tmp_path / "nostore")
    result = _run("--storage", nowhere, "checkpoint", "--key", key, "--quorum", "1")
    assert result.exit_code == 2 and "Error: --quorum needs --witness" in result.output
    result = _run("--storage", nowhere, "checkpoint", "--key", key, "--witness", "w1=ftp://x:k")
    assert result.exit_code == 2
    assert "Invalid value for --witness: 'w1=ftp://x:k' is not NAME=URL:VKEY" in result.output
    spec = f"w1=http://127.0.0.1:1:{WITNESS.verifier()}"
    result = _run("--storage", nowhere, "checkpoint", "--key", key, "--witness", spec, "--quorum", "2")
    assert result.exit_code == 2
    assert "Invalid value for --quorum: 2 is more than the 1 witness(es) given" in result.output
    assert not Path(nowhere).exists()


@contextlib.contextmanager
def _serving(respond: Any, post: Any = None) -> Iterator[str]:
    """A TileServer answering with ``respond`` (and ``post``) in a thread: its URL."""
    extra = {} if post is None else {"post": post, "max_body": MAX_BODY}
    server = TileServer(("127.0.0.1", 0), respond, timeout=5.0, max_connections=8, **extra)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{server.address[0]}:{server.address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@contextlib.contextmanager
def _witness(state: Path, key: Any = WITNESS) -> Iterator[str]:
    """A real witness for SIGNER's log, served over HTTP: its URL."""
    state.mkdir()
    with SovereignJournal(state / "journal", retention="off") as journal:
        core = Witness(key, [SIGNER.verifier()], journal, str(state / "lock"))
        try:
            get, post = witness_handlers(core, lambda _line: None)
            with _serving(get, post) as url:
                yield url
        finally:
            core.close()


@pytest.fixture
def witness_url(tmp_path: Path) -> Iterator[str]:
    with _witness(tmp_path / "witness") as url:
        yield url


def test_checkpoint_with_witnesses_says_each_answer_and_keeps_only_a_quorum(
        tmp_path: Path, store: Path, witness_url: str) -> None:
    key = str(_key(tmp_path))
    wkey = tmp_path / "w.pub"
    wkey.write_text(f"{WITNESS.verifier()}\n")
    closed = socket.create_server(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()  # nothing listens there: refused at once
    result = CliRunner().invoke(cli, ["--storage", str(store), "checkpoint", "--key", key,
                                      "--witness", f"w1={witness_url}:{wkey}",
                                      "--witness", f"w2={dead}:{GONE.verifier()}"])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any(line.startswith("krepis: witness w1 cosigned (20") and line.endswith("Z)") for line in lines)
    assert any(line.startswith("krepis: witness w2: ") for line in lines)
    assert lines[-1].startswith("Error: ") and lines[-1].endswith("; nothing was kept")
    with SovereignJournal(store) as journal:
        assert journal.latest_checkpoint() is None
    result = CliRunner().invoke(cli, ["--storage", str(store), "checkpoint", "--key", key,
                                      "--witness", f"w1={witness_url}:{wkey}",
                                      "--witness", f"w2={dead}:{GONE.verifier()}", "--quorum", "1",
                                      "--timeout", "5"])
    assert result.exit_code == 0, result.output
    with SovereignJournal(store) as journal:
        note = journal.latest_checkpoint()
    assert note is not None and result.output.endswith(note)
    said = result.output[:-len(note)].splitlines()
    assert len(said) == 2 and said[0].startswith("krepis: witness w1 cosigned (")
    assert said[1].startswith("krepis: witness w2: ")
    assert "— witness.example/u1 " in note


# -- verify --------------------------------------------------------------------------------------

def test_verify_says_what_it_checked(tmp_path: Path, store: Path) -> None:
    result = _run("--storage", str(store), "verify")
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 5 entries, tree of 5 leaves, 0 checkpoints consistent "
                             "(signatures not checked: pass --vkey and --trusted)\n")
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
    result = _run("--storage", str(store), "verify")
    assert result.output == ("ok: 5 entries, tree of 5 leaves, 1 checkpoint consistent "
                             "(signatures not checked: pass --vkey and --trusted)\n")


def test_verify_json_names_every_count(store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
        root = journal.tree_head().root
    result = _run("--storage", str(store), "verify", "--json")
    assert result.exit_code == 0, result.output
    import base64
    assert json.loads(result.output) == {
        "entries": 5, "tree_size": 5, "root": base64.b64encode(root).decode(), "checkpoints": 1,
        "checkpoints_of_earlier_logs": 0, "checkpoints_of_other_keys": 0, "checkpoints_needing_archive": 0,
        "signatures_checked": False,
        "ok": True, "archived_entries": 0}


def test_verify_against_a_trusted_checkpoint_says_it_extends_it(tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        trusted = tmp_path / "cp"
        trusted.write_text(journal.sign_checkpoint(SIGNER))
        journal.sign_checkpoint(OTHER)  # another key's: its root is checked, its signature not
    _fill(store, 2, start=5)
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(trusted))
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 7 entries, tree of 7 leaves extends the trusted checkpoint of "
                             "example.com/units (tree size 5), 2 checkpoints consistent "
                             "(1 of other keys: roots checked, signatures not)\n")
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(trusted), "--json")
    out = json.loads(result.output)
    assert out["trusted"] == {"origin": "example.com/units", "tree_size": 5}
    assert (out["checkpoints"], out["checkpoints_of_other_keys"], out["signatures_checked"]) == (2, 1, True)


def test_verify_counts_checkpoints_of_a_log_before_a_clear(tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
        journal.clear_all()
    _fill(store, 3)
    result = _run("--storage", str(store), "verify")
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 4 entries, tree of 4 leaves, 0 checkpoints consistent "
                             "(1 of logs before a clear not checkable) "
                             "(signatures not checked: pass --vkey and --trusted)\n")
    assert json.loads(_run("--storage", str(store), "verify", "--json").output)[
        "checkpoints_of_earlier_logs"] == 1


def test_verify_refuses_keys_without_a_trusted_checkpoint_and_the_reverse(tmp_path: Path,
                                                                           store: Path) -> None:
    result = _run("--storage", str(store), "verify", "--trusted", str(tmp_path / "cp"))
    assert result.exit_code == 2
    assert "Error: --trusted needs --vkey: the checkpoint is only as good as its signature" in result.output
    result = _run("--storage", str(store), "verify", "--vkey", VKEY)
    assert result.exit_code == 1
    assert result.output.startswith("Error: --vkey needs the newest checkpoint you trust: pass --trusted "
                                    "FILE (a signed checkpoint you kept: krepis checkpoint prints one) or "
                                    "--trusted DIR (a krepis tlog export directory). The checkpoints kept in "
                                    "the store prove nothing by themselves: ")
    assert result.output.rstrip().endswith("whoever can write the store can delete them")


def test_verify_reads_the_trusted_checkpoint_of_an_export_directory(tmp_path: Path, store: Path) -> None:
    _run("--storage", str(store), "tlog", "export", str(tmp_path / "tiles"), "--key", str(_key(tmp_path)))
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(tmp_path / "tiles"))
    assert result.exit_code == 0, result.output
    assert "extends the trusted checkpoint of example.com/units (tree size 5)" in result.output
    (tmp_path / "bad").write_bytes(b"\xff\n")
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(tmp_path / "bad"))
    assert result.exit_code == 1
    assert result.output == f"Error: {tmp_path / 'bad'}: the checkpoint is not UTF-8\n"
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert str(tmp_path / "none") in result.output and "Traceback" not in result.output


def test_verify_names_a_trusted_checkpoint_another_key_signed(tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        trusted = tmp_path / "cp"
        trusted.write_text(journal.sign_checkpoint(OTHER))
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(trusted))
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {trusted}: ")


def test_witness_keys_and_quorum_need_tlog(tmp_path: Path, store: Path) -> None:
    wkey = str(WITNESS.verifier())
    for extra in (["--witness-vkey", wkey], ["--quorum", "1"]):
        result = _run("--storage", str(store), "verify", *extra)
        assert result.exit_code == 2
        assert "Error: --witness-vkey and --quorum check the checkpoint of --tlog DIR|URL" in result.output
    result = _run("verify", "--tlog", str(tmp_path), "--vkey", VKEY, "--witness-vkey", wkey, "--quorum", "2")
    assert result.exit_code == 2
    assert "Invalid value for --quorum: 2 is more than the 1 --witness-vkey given" in result.output
    result = _run("verify", "--tlog", str(tmp_path), "--vkey", VKEY, "--witness-vkey", "x" * 300)
    assert result.exit_code == 2
    assert "Invalid value for --witness-vkey: xxx" in result.output and f"{'x' * 200}: " in result.output
    assert "x" * 201 not in result.output


def test_verify_tlog_says_what_it_checked(tmp_path: Path, store: Path, witness_url: str) -> None:
    key = str(_key(tmp_path))
    tiles = tmp_path / "tiles"
    assert _run("--storage", str(store), "tlog", "export", str(tiles), "--key", key).exit_code == 0
    result = _run("verify", "--tlog", str(tiles))
    assert result.exit_code == 2
    assert "Error: --tlog needs --vkey: an exported tree is only as good as its signature" in result.output
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 5 entries and 2 tiles match the checkpoint of example.com/units "
                             "(tree size 5)\n")
    with SovereignJournal(store) as journal:
        root = journal.tree_head().root
    import base64
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY, "--json")
    assert json.loads(result.output) == {"tlog": str(tiles), "origin": "example.com/units", "tree_size": 5,
                                         "root": base64.b64encode(root).decode(), "tiles": 2, "ok": True}
    trusted = tmp_path / "trusted"
    trusted.write_text((tiles / "checkpoint").read_text())
    _fill(store, 3, start=5)
    wkey = str(WITNESS.verifier())
    assert _run("--storage", str(store), "checkpoint", "--key", key,
                "--witness", f"w1={witness_url}:{wkey}").exit_code == 0
    assert _run("--storage", str(store), "tlog", "export", str(tiles)).exit_code == 0
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY, "--trusted", str(trusted),
                  "--witness-vkey", wkey)
    assert result.exit_code == 0, result.output
    line = result.output
    assert line.startswith("ok: 8 entries and 2 tiles match the checkpoint of example.com/units "
                           "(tree size 8), which extends the trusted checkpoint (tree size 5); cosigned by "
                           "witness.example/u1 at 20"), line
    assert line.endswith("Z\n")
    out = json.loads(_run("verify", "--tlog", str(tiles), "--vkey", VKEY, "--trusted", str(trusted),
                          "--witness-vkey", wkey, "--quorum", "1", "--json").output)
    assert out["trusted"] == {"origin": "example.com/units", "tree_size": 5}
    assert [c["witness"] for c in out["cosignatures"]] == ["witness.example/u1"]
    assert isinstance(out["cosignatures"][0]["timestamp"], int)
    result = _run("verify", "--tlog", str(tiles), "--vkey", str(OTHER.verifier()), "--trusted", str(trusted))
    assert result.exit_code == 1 and result.output.startswith(f"Error: {trusted}: ")
    result = _run("verify", "--tlog", str(tmp_path / "nothing"), "--vkey", VKEY)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {tmp_path / 'nothing'}: ")


# -- tlog export / serve -------------------------------------------------------------------------

def test_tlog_export_says_what_it_wrote_and_what_is_not_signed(tmp_path: Path, store: Path) -> None:
    tiles = tmp_path / "tiles"
    result = _run("--storage", str(store), "tlog", "export", str(tiles), "--key", str(_key(tmp_path)))
    assert result.exit_code == 0, result.output
    assert result.output == f"3 files written to {tiles}: the checkpoint of example.com/units, tree size 5\n"
    _fill(store, 1, start=5)
    result = _run("--storage", str(store), "tlog", "export", str(tiles))
    assert result.output == (f"3 files written to {tiles}: the checkpoint of example.com/units, tree size 5; "
                             "1 newer entry not in it (sign a checkpoint: --key FILE)\n")
    _fill(store, 1, start=6)
    result = _run("--storage", str(store), "tlog", "export", str(tiles))
    assert result.output.endswith("; 2 newer entries not in it (sign a checkpoint: --key FILE)\n")


def test_tlog_serve_refuses_a_bad_listen_address(store: Path) -> None:
    for bad in ("localhost", "127.0.0.1:http", "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:\u0661"):
        result = _run("--storage", str(store), "tlog", "serve", "--listen", bad)
        assert result.exit_code == 2, bad
        assert f"Invalid value for --listen: {bad!r} is not HOST:PORT" in result.output


def test_tlog_serve_names_an_address_it_cannot_listen_on(store: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        result = _run("--storage", str(store), "tlog", "serve", "--listen", f"127.0.0.1:{port}")
    finally:
        taken.close()
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot listen on 127.0.0.1:{port}: Address already in use")


def _serve_in_process(store: Path, *args: str, path: str = "/checkpoint",
                      host: str = "127.0.0.1") -> tuple[Result, tuple[int, bytes]]:
    """``krepis tlog serve`` run by CliRunner in this (the main) thread; a helper thread fetches
    ``path`` (answered only once the server is serving) and then interrupts it with SIGINT, as
    Ctrl-C does. The command's result and the answer."""
    import http.client
    import signal
    import time

    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    answer: list[tuple[int, bytes]] = []

    def fetch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", path)
                reply = conn.getresponse()
                answer.append((reply.status, reply.read()))
                conn.close()
                break
            except OSError:
                time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # Ctrl-C's KeyboardInterrupt, whatever the disposition this process inherited (a runner
    # may ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        helper = threading.Thread(target=fetch, daemon=True)
        helper.start()
        result = _run("--storage", str(store), "tlog", "serve", "--listen", f"{host}:{port}", *args)
        helper.join(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert answer, result.output
    return result, answer[0]


@pytest.mark.parametrize("host", ["127.0.0.1", "", "[127.0.0.1]"])
def test_tlog_serve_says_where_it_serves_and_stops_on_ctrl_c(tmp_path: Path, store: Path, host: str) -> None:
    with SovereignJournal(store) as journal:
        note = journal.sign_checkpoint(SIGNER)
    result, (status, body) = _serve_in_process(store, host=host)
    assert result.exit_code == 0, result.output
    assert (status, body.decode()) == (200, note)
    port = result.output.split(":")[2].split("/")[0]
    assert result.output == f"serving http://127.0.0.1:{port}/checkpoint (Ctrl-C to stop)\n"
    with SovereignJournal(store) as journal:  # closed: it opens again, and writes
        journal.log_transaction(TransactionLog(1, "op", "after", LogStatus.Completed))


def test_tlog_serve_checks_the_archive_before_it_listens_unless_live_only(tmp_path: Path) -> None:
    from test_archive import fill_fast, realistic

    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(300, seed=5))
        journal.sign_checkpoint(SIGNER)
        journal.archive(tmp_path / "cold", keep_last=0)
    result, (status, _body) = _serve_in_process(store, path="/tile/entries/000")
    assert (result.exit_code, status) == (0, 200), result.output
    (tmp_path / "cold").rename(tmp_path / "moved")
    result = _run("--storage", str(store), "tlog", "serve", "--listen", "127.0.0.1:0")
    assert result.exit_code == 1
    assert f"its archive at {tmp_path / 'cold'}, which cannot be read" in result.output
    assert "serving" not in result.output
    result, (status, _body2) = _serve_in_process(store, "--live-only", path="/tile/entries/000")
    assert result.exit_code == 0, result.output
    assert status == 404


def test_witness_lines_go_to_stderr_and_the_note_alone_to_stdout(tmp_path: Path, store: Path,
                                                                  witness_url: str) -> None:
    result = _run("--storage", str(store), "checkpoint", "--key", str(_key(tmp_path)),
                  "--witness", f"w1={witness_url}:{WITNESS.verifier()}",
                  "--witness", f"w2=http://127.0.0.1:1:{GONE.verifier()}", "--quorum", "1")
    assert result.exit_code == 0, result.output
    with SovereignJournal(store) as journal:
        assert result.stdout == journal.latest_checkpoint()
    said = result.stderr.splitlines()
    assert len(said) == 2 and said[0].startswith("krepis: witness w1 cosigned (")
    assert said[1].startswith("krepis: witness w2: ")


def test_an_unreadable_witness_key_file_is_named(tmp_path: Path, store: Path) -> None:
    folder = tmp_path / "keydir"
    folder.mkdir()
    result = _run("verify", "--tlog", str(tmp_path), "--vkey", VKEY, "--witness-vkey", str(folder))
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read the key {folder}: Is a directory\n"
    result = _run("--storage", str(store), "checkpoint", "--key", str(_key(tmp_path)),
                  "--witness", f"w1=http://127.0.0.1:1:{folder}")
    assert result.exit_code == 1
    assert result.output == f"Error: cannot read the key {folder}: Is a directory\n"


def test_verify_tlog_reads_a_log_served_over_http_and_names_a_url_it_cannot_reach(
        tmp_path: Path, store: Path) -> None:
    from krepis.cli._tlog_serve import tile_responder

    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
        with _serving(tile_responder(journal)) as url:
            result = _run("verify", "--tlog", url, "--vkey", VKEY)
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 5 entries and 2 tiles match the checkpoint of example.com/units "
                             "(tree size 5)\n")
    for scheme in ("http", "https"):
        result = _run("verify", "--tlog", f"{scheme}://127.0.0.1:1", "--vkey", VKEY)
        assert result.exit_code == 1
        assert result.output == (f"Error: {scheme}://127.0.0.1:1: GET {scheme}://127.0.0.1:1/checkpoint: "
                                 "Connection refused\n")


def test_verify_tlog_needs_a_quorum_of_the_witnesses_given(tmp_path: Path, store: Path) -> None:
    with _witness(tmp_path / "w1") as first, _witness(tmp_path / "w3", SECOND) as second:
        result = _run("--storage", str(store), "checkpoint", "--key", str(_key(tmp_path)),
                      "--witness", f"w1={first}:{WITNESS.verifier()}",
                      "--witness", f"w3={second}:{SECOND.verifier()}")
        assert result.exit_code == 0, result.output
    tiles = tmp_path / "tiles"
    assert _run("--storage", str(store), "tlog", "export", str(tiles)).exit_code == 0
    keys = ["--witness-vkey", str(WITNESS.verifier()), "--witness-vkey", str(SECOND.verifier())]
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY, *keys)
    assert result.exit_code == 0, result.output
    cosigned = result.output.split("; cosigned by ")[1].rstrip("\n").split(", ")
    assert [c.split(" at ")[0] for c in sorted(cosigned)] == ["witness.example/u1", "witness.example/u3"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert all(re.fullmatch(rf"witness\.example/u[13] at {stamp}", c) for c in cosigned)
    absent = ["--witness-vkey", str(WITNESS.verifier()), "--witness-vkey", str(GONE.verifier())]
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY, *absent)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {tiles}: ")
    result = _run("verify", "--tlog", str(tiles), "--vkey", VKEY, *absent, "--quorum", "1")
    assert result.exit_code == 0, result.output
    assert result.output.endswith("; cosigned by witness.example/u1 at " + result.output[-21:])


def test_utc_is_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    try:
        assert _utc(0) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_verify_counts_every_checkpoint_of_earlier_logs_and_checks_the_current_ones(
        tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
        journal.log_transaction(TransactionLog(1, "op", "x", LogStatus.Completed))
        journal.sign_checkpoint(SIGNER)
        journal.clear_all()
        journal.sign_checkpoint(OTHER)  # (a cleared log's origin is not signed again)
    result = _run("--storage", str(store), "verify")
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 1 entries, tree of 1 leaves, 1 checkpoint consistent "
                             "(2 of logs before a clear not checkable) "
                             "(signatures not checked: pass --vkey and --trusted)\n")


def test_a_key_file_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    """In a process whose locale is ASCII, a key file with a non-ASCII byte is still read (as
    UTF-8); what is wrong with it is then said, not a decoding error."""
    import subprocess
    import sys

    bad = tmp_path / "key.pub"
    bad.write_text("caf\u00e9+1234abcd+AAAA\n", encoding="utf-8")
    here = _run("verify", "--tlog", str(tmp_path), "--vkey", str(bad))
    assert here.exit_code == 1 and here.output.startswith(f"Error: {bad}: ")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "PYTHONIOENCODING": "utf-8"}
    env.pop("KREPIS_STORAGE", None)
    proc = subprocess.run([sys.executable, "-m", "krepis", "verify", "--tlog", str(tmp_path), "--vkey",
                           str(bad)], capture_output=True, text=True, encoding="utf-8", env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == here.output


def test_note_text_of_a_note_whose_only_blank_line_opens_it() -> None:
    assert _note_text("\n\n— sig\n") == "\n"


def _store_note(store: Path, size: int, note: str, origin: str) -> None:
    from krepis.storage import open_storage

    with SovereignJournal(store) as journal:
        epoch = journal.tree_head().epoch
    storage = open_storage(store, create=False)
    try:
        storage.add_checkpoint(epoch, size, origin, note)
    finally:
        storage.close()


def test_verify_counts_every_checkpoint_of_another_key(tmp_path: Path, store: Path) -> None:
    with SovereignJournal(store) as journal:
        trusted = tmp_path / "cp"
        trusted.write_text(journal.sign_checkpoint(SIGNER))
    for n in (5, 6):
        with SovereignJournal(store) as journal:
            journal.sign_checkpoint(OTHER)
        _fill(store, 1, start=n)
    result = _run("--storage", str(store), "verify", "--vkey", VKEY, "--trusted", str(trusted))
    assert result.exit_code == 0, result.output
    assert "3 checkpoints consistent (2 of other keys: roots checked, signatures not)" in result.output


def test_verify_names_a_kept_checkpoint_of_a_bigger_tree(tmp_path: Path, store: Path) -> None:
    from krepis.tlog._note import Checkpoint, format_checkpoint, sign_note

    with SovereignJournal(store) as journal:
        root = journal.tree_head().root
    _store_note(store, 5, sign_note(format_checkpoint(Checkpoint(SIGNER.name, 9, root)), SIGNER), SIGNER.name)
    result = _run("--storage", str(store), "verify")
    assert result.exit_code == 1
    assert result.output == ("Error: the stored checkpoint of tree size 9 is of a bigger tree than the "
                             "journal's (5 leaves): entries were removed\n")


@pytest.fixture
def archived(tmp_path: Path) -> Path:
    """A store of 600 entries whose first 512 are archived (then the archive moved away from
    where the store records it), with checkpoints of 100 and 600 leaves: the root of 100 leaves
    needs archived bundle 0."""
    from test_archive import fill_fast, realistic

    logs = realistic(600, seed=9)
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, logs[:100])
        journal.sign_checkpoint(SIGNER)
        fill_fast(journal, logs[100:])
        journal.sign_checkpoint(SIGNER)
        assert journal.archive(tmp_path / "cold", keep_last=0).entries == 512
    (tmp_path / "cold").rename(tmp_path / "moved")
    return tmp_path / "s"


def test_verify_live_only_counts_every_checkpoint_it_cannot_check(tmp_path: Path) -> None:
    from test_archive import fill_fast, realistic

    logs = realistic(600, seed=10)
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        for start, end in ((0, 100), (100, 200), (200, 600)):
            fill_fast(journal, logs[start:end])
            journal.sign_checkpoint(SIGNER)
        assert journal.archive(tmp_path / "cold", keep_last=0).entries == 512
    out = json.loads(_run("--storage", str(tmp_path / "s"), "verify", "--live-only", "--json").output)
    assert (out["checkpoints"], out["checkpoints_needing_archive"]) == (1, 2)


def test_verify_reads_kept_checkpoints_roots_from_the_archive_given(tmp_path: Path, archived: Path) -> None:
    result = _run("--storage", str(archived), "verify", "--archive", str(tmp_path / "moved"))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 88 entries and 512 archived, tree of 600 leaves, 2 checkpoints "
                                    "consistent")
    # the archive is not read at all: the checkpoint whose root needs archived leaves is counted,
    # not checked, and not an error (the 600-leaf one is rebuilt from the stored tree nodes)
    result = _run("--storage", str(archived), "verify", "--live-only")
    assert result.exit_code == 0, result.output
    assert result.output == ("ok: 88 entries, tree of 600 leaves, 1 checkpoint consistent (1 of archived "
                             "entries not checked: --live-only) (signatures not checked: pass --vkey and "
                             "--trusted)\n")
    out = json.loads(_run("--storage", str(archived), "verify", "--live-only", "--json").output)
    assert (out["checkpoints"], out["checkpoints_needing_archive"]) == (1, 1)
    assert json.loads(_run("--storage", str(archived), "verify", "--archive", str(tmp_path / "moved"),
                           "--json").output)["checkpoints_needing_archive"] == 0
    result = _run("--storage", str(archived), "verify")  # without either: the moved archive is named
    assert result.exit_code == 1 and str(tmp_path / "cold") in result.output
