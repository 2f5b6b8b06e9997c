"""``krepis tlog serve``: every request the C2SP tiles spec allows is answered as the export
writes it, every other one with a plain-text error and an ASCII status line; connections and
time are bounded (idle clients cannot starve real ones), and a client that goes away is no
traceback."""

from __future__ import annotations

import http.client
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.cli._tlog_serve import TileServer, tile_responder
from krepis.storage import WriteRequest, open_storage
from krepis.tlog._note import generate_signer
from krepis.tlog._tiles import tile_path

KREPIS = str(Path(sys.executable).parent / "krepis")
SIGNER = generate_signer("example.com/serve")


def _write(location: Path, n: int, start: int = 0, error: str | None = None) -> None:
    """``n`` entries through the storage port, in big batches (the write path is not tested here)."""
    storage = open_storage(location)
    try:
        for k in range(start, start + n, 5000):
            logs = [TransactionLog(i, "op", f"r{i}", LogStatus.Failed if error else LogStatus.Completed,
                                   error=error) for i in range(k, min(k + 5000, start + n))]
            storage.write_batch([WriteRequest([(log, encode_log(log))], []) for log in logs])
    finally:
        storage.close()


def _get(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request(method, path)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read()
    finally:
        conn.close()


def _raw(address: tuple[str, int], request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers before it closes."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A store of 70,000 entries (the spec's example: 273 full level-0 tiles and one of width
    112, a full level-1 tile and one of width 17, a level-2 tile of width 1), checkpointed and
    exported."""
    base = tmp_path_factory.mktemp("serve")
    store, out = base / "store", base / "tiles"
    _write(store, 70000)
    with SovereignJournal(store) as journal:
        journal.export_tiles(out, SIGNER)
    return store, out


@pytest.fixture
def served(tree: tuple[Path, Path]) -> Iterator[tuple[tuple[str, int], Path]]:
    store, out = tree
    with SovereignJournal(store, create=False) as journal:
        server = TileServer(("127.0.0.1", 0), tile_responder(journal), timeout=5, max_connections=32)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            yield server.address, out
        finally:
            server.shutdown()
            thread.join(timeout=30)


def _spec_paths(size: int) -> list[str]:
    """Every tile and bundle path of a tree of ``size`` (C2SP tlog-tiles), full and partial."""
    paths = ["checkpoint"]
    level = 0
    while size >> (8 * level):
        count = size >> (8 * level)
        paths += [tile_path(level, n, min(256, count - n * 256)) for n in range((count + 255) // 256)]
        level += 1
    paths += [tile_path("entries", n, min(256, size - n * 256)) for n in range((size + 255) // 256)]
    return paths


def test_every_path_of_the_spec_is_served_as_exported(served: tuple[tuple[str, int], Path]) -> None:
    address, out = served
    paths = _spec_paths(70000)
    assert {"tile/0/272", "tile/0/273.p/112", "tile/1/000", "tile/1/001.p/17", "tile/2/000.p/1",
            "tile/entries/273.p/112"} <= set(paths)
    for rel in paths:
        status, ctype, body = _get(address, "/" + rel)
        assert (status, body) == (200, (out / rel).read_bytes()), rel
        assert ctype == ("text/plain; charset=utf-8" if rel == "checkpoint" else "application/octet-stream")
    # a partial tile a client may ask for while the full one exists is its prefix
    for rel, full, width in (("tile/0/000.p/7", "tile/0/000", 7), ("tile/1/000.p/255", "tile/1/000", 255)):
        status, _ctype, body = _get(address, "/" + rel)
        assert (status, body) == (200, (out / full).read_bytes()[:32 * width]), rel
    status, _ctype, body = _get(address, "/tile/entries/000.p/3")
    assert status == 200 and body == _bundle_prefix((out / "tile/entries/000").read_bytes(), 3)
    status, _ctype, body = _get(address, "/tile/0/001", "HEAD")
    assert (status, body) == (200, b"")
    status, _ctype, body = _get(address, "/checkpoint?x=1#y")
    assert status == 200 and body == (out / "checkpoint").read_bytes()


def _bundle_prefix(bundle: bytes, count: int) -> bytes:
    off = 0
    for _ in range(count):
        (n,) = struct.unpack_from(">H", bundle, off)
        off += 2 + n
    return bundle[:off]


@pytest.mark.parametrize("path", [
    "/tile/0/274", "/tile/0/273", "/tile/0/273.p/113", "/tile/0/x001/000", "/tile/0/x001/x000/000",
    "/tile/entries/x999/x999/x999/x999/x999/999", "/tile/1/002", "/tile/2/000", "/tile/3/000.p/1",
    "/tile/63/000.p/1", "/tile/64/000", "/tile/0/000.p/256", "/tile/0/000.p/0", "/tile/0/000.p/07",
    "/tile/00/000", "/tile/0/0", "/tile/0/x000/001", "/tile/0/000/", "/tile/-1/000", "/tile/entries",
    "/", "/checkpoint/", "/tile/0/%30%30%30", "/tile/0/\u2026".encode().decode("latin-1"),
])
def test_anything_else_is_a_plain_404(served: tuple[tuple[str, int], Path], path: str) -> None:
    address, _out = served
    reply = _raw(address, b"GET " + path.encode("latin-1") + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 404 Not Found\r\n"), reply[:200]
    assert b"Content-Type: text/plain; charset=utf-8\r\n" in reply and b"Traceback" not in reply


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"POST /checkpoint HTTP/1.1\r\n\r\n", b"405"),
    (b"DELETE /tile/0/000 HTTP/1.0\r\n\r\n", b"405"),
    (b"GET\r\n\r\n", b"400"),
    (b"GET /checkpoint\r\n\r\n", b"400"),
    (b"GET http://example.com/checkpoint HTTP/1.1\r\n\r\n", b"400"),
    (b"\xff\xfe\x00garbage\r\n\r\n", b"400"),
    (b"GET /checkpoint HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (b"GET /checkpoint HTTP/1.1\n\n", b"200"),
])
def test_bad_requests_get_a_status_not_a_crash(served: tuple[tuple[str, int], Path], request_bytes: bytes,
                                               status: bytes) -> None:
    address, _out = served
    reply = _raw(address, request_bytes)
    assert reply.startswith(b"HTTP/1.0 " + status + b" "), reply[:200]
    assert reply.split(b"\r\n", 1)[0].isascii()
    assert _get(address, "/checkpoint")[0] == 200  # and the server is still there


def test_idle_connections_cannot_starve_a_client(served: tuple[tuple[str, int], Path]) -> None:
    """32 connections at most (this server): 100 idle ones, then a real request, answered."""
    address, out = served
    idle = [socket.create_connection(address, timeout=30) for _ in range(100)]
    try:
        idle[-1].sendall(b"GET /tile/0/00")  # a request that never ends
        status, _ctype, body = _get(address, "/tile/0/000")
        assert (status, body) == (200, (out / "tile/0/000").read_bytes())
        assert idle[0].recv(10) == b""  # the oldest were closed to make room
    finally:
        for s in idle:
            s.close()


def test_a_client_that_says_nothing_is_closed_and_a_slow_one_gets_408(tree: tuple[Path, Path]) -> None:
    store, _out = tree
    with SovereignJournal(store, create=False) as journal:
        server = TileServer(("127.0.0.1", 0), tile_responder(journal), timeout=0.3)
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with socket.create_connection(server.address, timeout=30) as quiet:
                assert quiet.recv(100) == b""  # closed after the timeout (the guard here is 30 s)
            with socket.create_connection(server.address, timeout=30) as slow:
                slow.sendall(b"GET /checkpoint HTTP/1.1\r\n")
                reply = slow.recv(1000)
                assert reply.startswith(b"HTTP/1.0 408 Request Timeout\r\n")
        finally:
            server.shutdown()
            thread.join(timeout=30)


def _serve(store: Path, *args: str,
           nofile: int | None = None) -> tuple[subprocess.Popen[str], tuple[str, int]]:
    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    proc = subprocess.Popen([KREPIS, "tlog", "serve", "--listen", f"127.0.0.1:{port}", "--storage",
                             str(store), *args], stderr=subprocess.PIPE, text=True, env=env, preexec_fn=limit)
    assert proc.stderr is not None and "serving" in proc.stderr.readline()
    return proc, ("127.0.0.1", port)


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _out, err = proc.communicate(timeout=30)
    return err


def test_the_command_survives_more_idle_connections_than_it_has_descriptors(tmp_path: Path) -> None:
    """The server may open 64 files here; 150 idle clients connect before a real one."""
    store = tmp_path / "store"
    _write(store, 10)
    with SovereignJournal(store) as journal:
        note = journal.sign_checkpoint(SIGNER)
    proc, address = _serve(store, "--max-connections", "32", nofile=64)
    idle = []
    try:
        for _ in range(150):
            idle.append(socket.create_connection(address, timeout=30))
        assert _get(address, "/checkpoint") == (200, "text/plain; charset=utf-8", note.encode())
    finally:
        for s in idle:
            s.close()
        err = _stop(proc)
    assert "Traceback" not in err


def test_a_client_that_goes_away_mid_response_is_no_traceback(tmp_path: Path) -> None:
    """A bundle of 256 entries of ~60 KB each: the client reads a little and resets."""
    store = tmp_path / "store"
    _write(store, 256, error="\x01" * 10000)
    with SovereignJournal(store) as journal:
        journal.sign_checkpoint(SIGNER)
    proc, address = _serve(store)
    try:
        for _ in range(3):
            s = socket.create_connection(address, timeout=30)
            s.sendall(b"GET /tile/entries/000 HTTP/1.1\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.0 200 OK")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()  # a reset, with most of the 15 MB still to come
        assert _get(address, "/tile/0/000.p/1")[0] == 200
    finally:
        err = _stop(proc)
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err


def test_no_checkpoint_is_a_404_with_a_hint(tmp_path: Path) -> None:
    store = tmp_path / "store"
    _write(store, 10)
    proc, address = _serve(store)
    try:
        status, ctype, body = _get(address, "/checkpoint")
        assert (status, ctype) == (404, "text/plain; charset=utf-8")
        assert b"no checkpoint of its current log yet: sign one with krepis checkpoint --key FILE" in body
    finally:
        err = _stop(proc)
    assert "Traceback" not in err


def test_archived_tiles_are_served_by_default_and_named_under_live_only(tmp_path: Path) -> None:
    """Once the store knows its archive, its tiles and bundles are served as exported before the
    entries moved. Under --live-only an archived bundle is a 404 whose reason ("entries 0…255 …
    are archived") holds a non-ASCII '…': it goes in the body, the status line stays ASCII."""
    store, arch, out = tmp_path / "store", tmp_path / "archive", tmp_path / "tiles"
    _write(store, 700)
    with SovereignJournal(store) as journal:
        journal.export_tiles(out, SIGNER)
        journal.archive(arch, keep_last=0)
    for args in ((), ("--archive", str(arch))):
        proc, address = _serve(store, *args)
        try:
            for rel in _spec_paths(700):
                assert _get(address, "/" + rel)[2] == (out / rel).read_bytes(), (args, rel)
        finally:
            err = _stop(proc)
        assert "Traceback" not in err
    proc, address = _serve(store, "--live-only")
    try:
        status, ctype, body = _get(address, "/tile/entries/000")
        assert (status, ctype) == (404, "text/plain; charset=utf-8")
        assert "entries 0…255 of the journal at" in body.decode() and "live_only" in body.decode()
        assert _get(address, "/tile/0/001")[0] == 404
        assert _get(address, "/tile/1/000.p/2")[2] == (out / "tile/1/000.p/2").read_bytes()  # stored hashes
        assert _get(address, "/tile/entries/002.p/188")[2] == (out / "tile/entries/002.p/188").read_bytes()
    finally:
        err = _stop(proc)
    assert "Traceback" not in err and "UnicodeEncodeError" not in err


def test_serve_refuses_to_start_without_the_archive_it_needs(tmp_path: Path) -> None:
    """A moved archive: `tlog serve` says so, naming it, before it listens — never a tree whose
    archived tiles fail one by one; once the move is recorded, it serves them."""
    store, arch, out = tmp_path / "store", tmp_path / "archive", tmp_path / "tiles"
    _write(store, 700)
    with SovereignJournal(store) as journal:
        journal.export_tiles(out, SIGNER)
        journal.archive(arch, keep_last=0)
    arch.rename(tmp_path / "moved")
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    proc = subprocess.run([KREPIS, "tlog", "serve", "--listen", "127.0.0.1:0", "--storage", str(store)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and f"its archive at {arch}, which cannot be read" in proc.stderr
    assert "--set-dir" in proc.stderr and "Traceback" not in proc.stderr
    with SovereignJournal(store) as journal:
        journal.set_archive_dir(tmp_path / "moved")
    proc2, address = _serve(store)
    try:
        assert _get(address, "/tile/entries/001")[2] == (out / "tile/entries/001").read_bytes()
    finally:
        _stop(proc2)


def test_an_interrupt_between_a_state_change_and_the_selectors_still_closes_everything(
        tree: tuple[Path, Path]) -> None:
    """Ctrl-C lands anywhere: here just after a connection left the selector to be answered, before
    it is registered for writing. The server still closes every connection and its listener, and
    the interrupt is what propagates (not a KeyError from unregistering a socket twice)."""
    import selectors

    store, _out = tree
    with SovereignJournal(store, create=False) as journal:
        server = TileServer(("127.0.0.1", 0), tile_responder(journal), timeout=5, max_connections=8)
        register = server._sel.register

        def interrupted(sock: socket.socket, events: int, data: object = None) -> selectors.SelectorKey:
            if events == selectors.EVENT_WRITE:
                raise KeyboardInterrupt
            return register(sock, events, data)

        server._sel.register = interrupted  # type: ignore[method-assign]
        client = socket.create_connection(server.address, timeout=10)
        client.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(KeyboardInterrupt):
            server.serve_forever()
        assert client.recv(1) == b""  # closed by the server
        client.close()
        with pytest.raises(OSError):
            socket.create_connection(server.address, timeout=2).close()
