"""The verifiable log end to end through the CLI: keys, checkpoints, proofs, exported tiles —
checked by krepis and by Go's own transparency-log code (golang.org/x/mod/sumdb), on both
engines, after writes from several processes."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import leaf_hash, verify_consistency, verify_inclusion
from rawlmdb import forget_commit_log

KREPIS = str(Path(sys.executable).parent / "krepis")
WORKERS = str(Path(__file__).parent / "workers.py")
GO_SOURCE = Path(__file__).parent / "tlogcheck"
GOPATH = "/usr/share/gocode"  # where Debian's golang-golang-x-mod-dev puts golang.org/x/mod


def krepis(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    proc = subprocess.run([KREPIS, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=env, stdin=subprocess.DEVNULL)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="session")
def tlogcheck(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Go's sumdb/tlog and sumdb/note, built into a small checker (tests/tlogcheck)."""
    go = shutil.which("go")
    missing = None if go and (Path(GOPATH) / "src/golang.org/x/mod/sumdb/tlog").is_dir() else \
        "needs go and golang.org/x/mod (Debian: golang-go golang-golang-x-mod-dev)"
    if missing:
        if os.environ.get("CI") == "true" or os.environ.get("KREPIS_REQUIRE_GO") == "1":
            pytest.fail(f"the independent verifier {missing}")
        pytest.skip(f"the independent verifier {missing}")
    out = tmp_path_factory.mktemp("go") / "tlogcheck"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": GOPATH, "GOFLAGS": "",
           "GOCACHE": str(out.parent / "cache")}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_SOURCE, env=env, check=True,  # type: ignore[list-item]
                   capture_output=True, timeout=300)
    return str(out)


def go_check(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["lmdb", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "lmdb":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("pg_url"))


def write_from_processes(location: str, tag: str, per_process: int = 60) -> None:
    procs = [subprocess.Popen([sys.executable, WORKERS, "append", location, f"{tag}{n}",
                               str(per_process), "interval:5ms"]) for n in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0


def test_keys_checkpoints_proofs_and_tiles_checked_by_an_independent_verifier(
        location: str, tmp_path: Path, tlogcheck: str) -> None:
    key, pub = tmp_path / "log.key", tmp_path / "log.pub"
    vkey = krepis("keygen", "example.com/krepis-test", "--key", str(key), cwd=tmp_path).stdout.strip()
    pub.write_text(vkey + "\n")
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert key.read_text().startswith("PRIVATE+KEY+example.com/krepis-test+")
    assert vkey.startswith("example.com/krepis-test+") and "PRIVATE" not in vkey
    again = krepis("keygen", "example.com/other", "--key", str(key), cwd=tmp_path, ok=False)
    assert again.returncode == 1 and "never overwrites" in again.stderr

    write_from_processes(location, "a")  # 180 entries from three processes
    first = krepis("checkpoint", "--key", str(key), "--storage", location, cwd=tmp_path).stdout
    assert first.splitlines()[:2] == ["example.com/krepis-test", "180"]
    (tmp_path / "old.cp").write_text(first)  # what a verifier keeps
    krepis("tlog", "export", str(tmp_path / "old"), "--storage", location, cwd=tmp_path)
    assert go_check(tlogcheck, str(tmp_path / "old"), vkey).stdout == "ok 180\n"

    write_from_processes(location, "b")  # past the first full tile of 256
    krepis("tlog", "export", str(tmp_path / "new"), "--key", str(key), "--storage", location, cwd=tmp_path)
    shutil.copytree(tmp_path / "new", tmp_path / "new-before")
    assert go_check(tlogcheck, str(tmp_path / "new"), vkey, str(tmp_path / "old")).stdout == "ok 360\n"
    assert sorted(p.name for p in (tmp_path / "new" / "tile" / "0").iterdir()) == ["000", "001.p"]
    out = krepis("verify", "--tlog", str(tmp_path / "new"), "--vkey", str(pub), "--trusted",
                 str(tmp_path / "old.cp"), cwd=tmp_path).stdout
    assert "ok: 360 entries" in out and "extends the trusted checkpoint (tree size 180)" in out

    # the store: every entry, the tree, both checkpoints, consistent, and extending the one kept
    result = json.loads(krepis("verify", "--vkey", str(pub), "--trusted", str(tmp_path / "old.cp"), "--json",
                               "--storage", location, cwd=tmp_path).stdout)
    assert (result["entries"], result["checkpoints"], result["ok"]) == (360, 2, True)
    assert result["trusted"] == {"origin": "example.com/krepis-test", "tree_size": 180}
    # an export directory holds the checkpoint to trust as well
    out = krepis("verify", "--vkey", str(pub), "--trusted", str(tmp_path / "new"), "--storage", location,
                 cwd=tmp_path).stdout
    assert "tree of 360 leaves extends the trusted checkpoint of example.com/krepis-test (tree size 360)" \
        in out

    # proofs printed by the CLI check with the public functions alone
    proof = json.loads(krepis("prove", "200", "--storage", location, cwd=tmp_path).stdout)
    root = __import__("base64").b64decode(proof["root"])
    path = [__import__("base64").b64decode(p) for p in proof["proof"]]
    assert proof["tree_size"] == 360 and proof["checkpoint"].startswith("example.com/krepis-test\n360\n")
    assert verify_inclusion(leaf_hash(proof["entry"].encode()), 200, 360, path, root)
    cons = json.loads(krepis("prove", "--consistency", str(tmp_path / "old.cp"), "--storage", location,
                             cwd=tmp_path).stdout)
    b64 = __import__("base64").b64decode
    assert verify_consistency(180, 360, b64(cons["old_root"]), b64(cons["new_root"]),
                              [b64(p) for p in cons["proof"]])

    # an exported tree whose entry was changed fails both verifiers
    bundle = tmp_path / "new" / "tile" / "entries" / "001.p" / "104"
    data = bytearray(bundle.read_bytes())
    data[40] ^= 1
    bundle.write_bytes(bytes(data))
    assert go_check(tlogcheck, str(tmp_path / "new"), vkey).returncode == 1
    bad = krepis("verify", "--tlog", str(tmp_path / "new"), "--vkey", str(pub), cwd=tmp_path, ok=False)
    assert bad.returncode == 1 and "does not match" in bad.stderr
    # and a wrong key is refused
    other = krepis("keygen", "example.com/krepis-test", "--key", str(tmp_path / "k2"), cwd=tmp_path).stdout
    assert go_check(tlogcheck, str(tmp_path / "new-before"), other.strip()).returncode == 1
    bad = krepis("verify", "--tlog", str(tmp_path / "new-before"), "--vkey", other.strip(), cwd=tmp_path,
                 ok=False)
    assert "no signature of a known key" in bad.stderr


def test_exports_are_incremental(tmp_path: Path) -> None:
    store, key = tmp_path / "s", tmp_path / "k"
    krepis("keygen", "example.com/inc", "--key", str(key), cwd=tmp_path)
    with SovereignJournal(store) as journal:
        for i in range(600):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    krepis("tlog", "export", str(tmp_path / "t"), "--key", str(key), "--storage", str(store), cwd=tmp_path)
    full = tmp_path / "t" / "tile" / "0" / "000"
    before = full.stat().st_mtime_ns
    with SovereignJournal(store) as journal:
        journal.log_transaction(TransactionLog(9, "op", "late", LogStatus.Completed))
    time.sleep(0.01)
    err = krepis("tlog", "export", str(tmp_path / "t"), "--key", str(key), "--storage", str(store),
                 cwd=tmp_path).stderr
    # only the partial tiles (0/002.p/89, 1/000.p/2, entries/002.p/89) and the checkpoint
    assert "4 files written" in err
    assert full.stat().st_mtime_ns == before  # full tiles never change, so they are not rewritten


def test_verify_names_the_first_bad_entry_and_a_clear_needs_a_new_origin(tmp_path: Path) -> None:
    import lmdb

    store, key = tmp_path / "s", tmp_path / "k"
    krepis("keygen", "example.com/t", "--key", str(key), cwd=tmp_path)
    with SovereignJournal(store) as journal:
        for i in range(20):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed, duration_us=i))
    krepis("checkpoint", "--key", str(key), "--storage", str(store), cwd=tmp_path)
    env = lmdb.open(str(store), max_dbs=16)
    with env.begin(write=True) as txn:
        db = env.open_db(b"entries", txn=txn, create=False)
        value = bytearray(txn.get((7).to_bytes(8, "big"), db=db))
        value[-1] ^= 1  # the duration of entry 7
        txn.put((7).to_bytes(8, "big"), bytes(value), db=db)
    env.close()
    forget_commit_log(store)
    bad = krepis("verify", "--storage", str(store), cwd=tmp_path, ok=False)
    assert bad.returncode == 1 and "entries 0" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    krepis("clear", "--yes", "--storage", str(store), cwd=tmp_path)
    refused = krepis("checkpoint", "--key", str(key), "--storage", str(store), cwd=tmp_path, ok=False)
    assert "already named the log before a clear" in refused.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_tlog_serve_serves_the_same_bytes_as_the_export(tmp_path: Path) -> None:
    store, key = tmp_path / "s", tmp_path / "k"
    krepis("keygen", "example.com/serve", "--key", str(key), cwd=tmp_path)
    with SovereignJournal(store) as journal:
        for i in range(300):
            journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))
    krepis("tlog", "export", str(tmp_path / "t"), "--key", str(key), "--storage", str(store), cwd=tmp_path)
    port = _free_port()
    server = subprocess.Popen([KREPIS, "tlog", "serve", "--listen", f"127.0.0.1:{port}", "--storage",
                               str(store)], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None and "serving" in server.stderr.readline()
        for rel in ("checkpoint", "tile/0/000", "tile/0/001.p/44", "tile/entries/000",
                    "tile/entries/001.p/44", "tile/1/000.p/1"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{rel}", timeout=10) as reply:
                assert reply.read() == (tmp_path / "t" / rel).read_bytes(), rel
        for rel in ("tile/0/002", "tile/0/001", "nope", "tile/0/x000/001"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{rel}", timeout=10)
            assert info.value.code == 404, rel
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_tlog_serve_of_an_archived_store_passes_the_independent_verifier(location: str, tmp_path: Path,
                                                                        tlogcheck: str) -> None:
    """After `krepis archive`, `krepis tlog serve` (no --archive: the store knows its archive)
    serves the whole tree: Go's tlog code reads every tile and bundle over HTTP, checks every
    entry's inclusion and the consistency with a checkpoint taken before the entries moved."""
    key = tmp_path / "k"
    vkey = krepis("keygen", "example.com/served", "--key", str(key), cwd=tmp_path).stdout.strip()
    with SovereignJournal(location) as journal:
        for i in range(700):
            journal.log_transaction(TransactionLog(1000 + i, f"op{i % 7}", f"r{i}", LogStatus.Completed,
                                                   duration_us=i))
    krepis("tlog", "export", str(tmp_path / "before"), "--key", str(key), "--storage", location, cwd=tmp_path)
    done = krepis("archive", str(tmp_path / "cold"), "--keep-last", "0", "--storage", location, cwd=tmp_path)
    assert "archived 512 entries" in done.stdout
    krepis("checkpoint", "--key", str(key), "--storage", location, cwd=tmp_path)
    port = _free_port()
    server = subprocess.Popen([KREPIS, "tlog", "serve", "--listen", f"127.0.0.1:{port}", "--storage",
                               location], stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None and "serving" in server.stderr.readline()
        url = f"http://127.0.0.1:{port}"
        assert go_check(tlogcheck, url, vkey, str(tmp_path / "before")).stdout == "ok 700\n"
        for rel in ("tile/entries/000", "tile/entries/001", "tile/0/000"):  # archived bytes, as exported
            with urllib.request.urlopen(f"{url}/{rel}", timeout=10) as reply:
                assert reply.read() == (tmp_path / "before" / rel).read_bytes(), rel
    finally:
        server.terminate()
        server.wait(timeout=10)
    served = subprocess.Popen([KREPIS, "tlog", "serve", "--listen", f"127.0.0.1:{port}", "--live-only",
                               "--storage", location], stderr=subprocess.PIPE, text=True)
    try:  # the live store alone is not the tree: the verifier says so
        assert served.stderr is not None and "serving" in served.stderr.readline()
        bad = go_check(tlogcheck, f"http://127.0.0.1:{port}", vkey)
        assert bad.returncode == 1 and "404" in bad.stderr
    finally:
        served.terminate()
        served.wait(timeout=10)


def test_notes_signed_by_go_are_read_and_ours_are_the_same_bytes(tlogcheck: str) -> None:
    """Go's note.Sign with our keys: Ed25519 is deterministic, so a note krepis signs is byte for
    byte Go's; a note Go signs with the log's key and a witness's (and an extension line) opens
    as the same checkpoint — what the specs allow, krepis accepts."""
    from krepis.tlog._note import Checkpoint, format_checkpoint, generate_signer, open_checkpoint, sign_note

    log, witness = generate_signer("example.com/go-log"), generate_signer("witness.example/w")
    checkpoint = Checkpoint(log.name, 12345, bytes(range(32)), ("an extension line",))
    text = format_checkpoint(checkpoint)

    def go_sign(*keys: object) -> str:
        proc = subprocess.run([tlogcheck, "sign", *map(str, keys)], input=text, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert go_sign(log) == sign_note(text, log)
    both = go_sign(log, witness)
    assert len(both.split("\n\n")[-1].splitlines()) == 2
    assert open_checkpoint(both, [log.verifier()]) == checkpoint
    assert open_checkpoint(both, [witness.verifier(), log.verifier()]) == checkpoint
