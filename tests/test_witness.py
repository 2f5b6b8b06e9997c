"""The witness (C2SP tlog-witness, cosignature/v1): every answer the spec names, to the byte, for
good requests and bad ones — and after each bad one nothing is stored and the witness still
serves. Its record is a krepis journal: every cosignature is an entry, provable like any other."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.cli import cli
from krepis.cli._tlog_serve import TileServer
from krepis.cli._witness import witness_handlers
from krepis.tlog import (
    Checkpoint,
    Cosigner,
    CosignerKey,
    NoteError,
    Verifier,
    find_cosignatures,
    generate_cosigner,
    generate_signer,
    leaf_hash,
    open_cosigned_checkpoint,
    verify_inclusion,
)
from krepis.tlog._note import format_checkpoint, sign_note
from krepis.tlog._witness import CONFLICT_OP, COSIGNED_OP, MAX_BODY, Refusal, Witness, parse_add_checkpoint
from logtools import flip_last

LOG = generate_signer("example.com/log")
OTHER_LOG = generate_signer("example.com/other")
WITNESS = generate_cosigner("witness.example/w1")


# -- helpers the other witness and monitor tests share -------------------------------------------

def grow(journal: SovereignJournal, n: int, tag: str = "r") -> None:
    for i in range(n):
        journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", f"{tag}{i}", LogStatus.Completed))


def note_at(journal: SovereignJournal, size: int, key=LOG) -> str:  # type: ignore[no-untyped-def]
    """The log's signed checkpoint of its first ``size`` leaves."""
    return sign_note(format_checkpoint(Checkpoint(key.name, size, journal.tree_root(size))), key)


def body(old: int, proof: list[bytes], note: str) -> bytes:
    return ("".join(f"{line}\n" for line in [f"old {old}", *(base64.b64encode(h).decode() for h in proof)])
            + "\n" + note).encode()


def request(journal: SovereignJournal, old: int, new: int, key=LOG) -> bytes:  # type: ignore[no-untyped-def]
    """An add-checkpoint body from ``old`` to ``new`` leaves, with the right proof."""
    return body(old, journal.consistency_proof(old, new).path if old else [], note_at(journal, new, key))


def open_witness(state: Path, key=WITNESS, logs=None) -> tuple[Witness, SovereignJournal]:  # type: ignore[no-untyped-def]
    state.mkdir(exist_ok=True)
    journal = SovereignJournal(state / "journal", retention="off")
    try:
        return Witness(key, logs or [LOG.verifier()], journal, str(state / "lock")), journal
    except BaseException:
        journal.close()
        raise


def refused(witness: Witness, data: bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        witness.add_checkpoint(data)
    return info.value


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "log") as journal:
        grow(journal, 20)
        yield journal


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[Witness, SovereignJournal]]:
    core, journal = open_witness(tmp_path / "w")
    try:
        yield core, journal
    finally:
        core.close()
        journal.close()


# -- keys and cosignatures ---------------------------------------------------------------------------

def test_witness_keys_are_cosignature_keys_and_are_not_mistaken_for_log_keys() -> None:
    vkey = WITNESS.verifier()
    assert CosignerKey.parse(str(vkey)) == vkey
    assert base64.b64decode(str(vkey).split("+", 2)[2])[0] == 4
    with pytest.raises(NoteError, match="witness's cosignature key"):
        Verifier.parse(str(vkey))
    with pytest.raises(NoteError, match="log's signature key"):
        CosignerKey.parse(str(LOG.verifier()))
    name, _id, b64 = str(vkey).split("+", 2)
    with pytest.raises(NoteError, match="does not match"):
        CosignerKey.parse(f"{name}+{vkey.key_id ^ 1:08x}+{b64}")
    from hashlib import sha256
    wrong = sha256(name.encode() + b"\n\x01" + vkey.public).digest()[:4].hex()  # the key ID of type 0x01
    with pytest.raises(NoteError, match="does not match"):
        CosignerKey.parse(f"{name}+{wrong}+{b64}")
    assert Cosigner.parse(str(WITNESS)) == WITNESS


def test_a_cosignature_is_over_the_spec_message_and_names_its_time(log: SovereignJournal) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    note = note_at(log, 20)
    text = note[:note.index("\n\n") + 1]
    line = WITNESS.cosign(text, 1679315147)
    raw = base64.b64decode(line.split(" ")[2])
    assert raw[:4] == WITNESS.key_id.to_bytes(4, "big") and raw[4:12] == (1679315147).to_bytes(8, "big")
    Ed25519PublicKey.from_public_bytes(WITNESS.verifier().public).verify(
        raw[12:], b"cosignature/v1\ntime 1679315147\n" + text.encode())
    cosigned = open_cosigned_checkpoint(note + line, [LOG.verifier()], [WITNESS.verifier()], max_future=None)
    assert [c.timestamp for c in cosigned.cosignatures] == [1679315147]
    # a known witness's bad cosignature refuses the whole note; an unknown one's is ignored
    bad = line[:-10] + ("A" if line[-10] != "A" else "B") + line[-9:]
    with pytest.raises(NoteError, match="does not verify"):
        open_cosigned_checkpoint(note + bad, [LOG.verifier()], [WITNESS.verifier()])
    other = generate_cosigner("witness.example/w2")
    with pytest.raises(NoteError, match=r"fewer than the quorum of 1 \(missing: witness.example/w2\)"):
        open_cosigned_checkpoint(note + line, [LOG.verifier()], [other.verifier()])
    # a cosignature alone does not make a checkpoint: the log's own signature is needed
    with pytest.raises(NoteError):
        open_cosigned_checkpoint(text + "\n" + line, [LOG.verifier()], [WITNESS.verifier()])
    # dated far in the future: refused unless the caller says otherwise
    late = WITNESS.cosign(text, int(time.time()) + 86400)
    with pytest.raises(NoteError, match="dated in the future"):
        open_cosigned_checkpoint(note + late, [LOG.verifier()], [WITNESS.verifier()])
    assert find_cosignatures(note + late, [WITNESS.verifier()])[0].witness == "witness.example/w1"


# -- the protocol ------------------------------------------------------------------------------------

def test_cosigning_follows_the_log_and_every_cosignature_is_a_provable_entry(
        log: SovereignJournal, witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    first = core.add_checkpoint(request(log, 0, 5))
    assert first.checkpoint.size == 5
    assert open_cosigned_checkpoint(note_at(log, 5) + first.line, [LOG.verifier()], [WITNESS.verifier()])
    # the old size must be the one cosigned last: 409 names it
    stale = refused(core, request(log, 0, 12))
    assert (stale.status, stale.size) == (409, 5)
    second = core.add_checkpoint(request(log, 5, 12))
    assert second.timestamp >= first.timestamp
    # the same checkpoint again (within a minute: the same cosignature), then a bigger one
    assert core.add_checkpoint(request(log, 12, 12)) == second
    core.add_checkpoint(request(log, 12, 20))
    entries = journal.query(op_name=COSIGNED_OP, order="append", newest_first=False)
    assert [e.request_id for e in entries] == [LOG.name] * 3
    assert [e.error.split("\n")[1] for e in entries] == ["5", "12", "20"]  # type: ignore[union-attr]
    latest = core.latest(LOG.name)
    assert latest is not None and latest.checkpoint.size == 20
    # each entry is the checkpoint with the log's signature and the cosignature: a signed note
    for entry in entries:
        assert open_cosigned_checkpoint(entry.error or "", [LOG.verifier()], [WITNESS.verifier()],
                                        max_future=None)
    # ... and provable: an inclusion proof in the witness's own tree
    head = journal.tree_head()
    proof = journal.inclusion_proof(entries[1].seq or 0)
    assert verify_inclusion(leaf_hash(entries[1].to_json().encode()), proof.index, head.size, proof.path,
                            head.root)


def test_every_status_the_spec_names_and_nothing_stored(
        log: SovereignJournal, witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    core.add_checkpoint(request(log, 0, 8))
    before = journal.journal_count()
    # 404: an origin the witness does not know
    assert refused(core, request(log, 0, 8, key=OTHER_LOG)).status == 404
    # 403: the origin is known, but no trusted key signed (another key under the same name)
    impostor = generate_signer(LOG.name)
    assert refused(core, request(log, 8, 10, key=impostor)).status == 403
    # 403: a trusted key's signature that does not verify
    note = note_at(log, 10)
    forged = note.replace(note.split(" ")[-1], base64.b64encode(
        flip_last(base64.b64decode(note.split(" ")[-1]))).decode() + "\n")
    assert refused(core, body(8, log.consistency_proof(8, 10).path, forged)).status == 403
    # 400: the old size is bigger than the checkpoint's
    assert refused(core, body(12, [], note_at(log, 10))).status == 400
    # 409: not the size cosigned last
    assert (refused(core, request(log, 5, 10)).size, refused(core, request(log, 0, 10)).size) == (8, 8)
    # 422: a proof that does not verify; a proof where none belongs
    proof = log.consistency_proof(8, 10).path
    assert refused(core, body(8, [proof[0][::-1], *proof[1:]], note_at(log, 10))).status == 422
    assert refused(core, body(8, [*proof, proof[0]], note_at(log, 10))).status == 422
    assert refused(core, body(8, proof, note_at(log, 8))).status == 422
    assert journal.journal_count() == before  # nothing stored
    assert core.add_checkpoint(request(log, 8, 10)).checkpoint.size == 10


def test_a_checkpoint_of_the_same_size_with_another_root_is_refused_and_kept_as_evidence(
        tmp_path: Path, log: SovereignJournal, witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    core.add_checkpoint(request(log, 0, 20))
    with SovereignJournal(tmp_path / "rewritten") as other:
        grow(other, 20, tag="x")
        split = refused(core, request(other, 20, 20))
        assert (split.status, split.size) == (409, 20)
        assert "split view" in str(split)
        refused(core, request(other, 20, 20))  # the same again: kept once
    conflicts = journal.query(op_name=CONFLICT_OP)
    assert len(conflicts) == 1 and conflicts[0].status == LogStatus.Failed
    evidence = conflicts[0].error or ""
    cosigned = journal.query(op_name=COSIGNED_OP, limit=1)[0].error or ""
    # both signed by the log, same origin and size, different roots: the proof of misbehaviour
    a = open_cosigned_checkpoint(cosigned, [LOG.verifier()], [WITNESS.verifier()], max_future=None).checkpoint
    from krepis.tlog import open_checkpoint
    b = open_checkpoint(evidence, [LOG.verifier()])
    assert (a.origin, a.size) == (b.origin, b.size) and a.root != b.root
    assert core.latest(LOG.name).checkpoint == a  # type: ignore[union-attr]


@pytest.mark.parametrize("data, status", [
    (b"", 400),
    (b"old 0\n", 400),                                      # no empty line, no checkpoint
    (b"old 00\n\nx", 400),                                  # leading zero
    (b"old -1\n\nx", 400),
    (b"old 1 \n\nx", 400),
    (b"old 9223372036854775808\n\nx", 400),                 # beyond 2**63-1
    (b"old 99999999999999999999999999\n\nx", 400),
    (b"OLD 0\n\nx", 400),
    (b"old 0\r\n\r\nx", 400),
    (b"\xff\xfe", 400),                                     # not UTF-8
    (b"old 0\n\nnot a note\n", 400),
    (b"old 0\nAAAA\n\nx", 400),                              # a proof line that is no hash
])
def test_malformed_bodies_are_400(data: bytes, status: int,
                                  witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    assert refused(core, data).status == status
    assert journal.journal_count() == 0


def test_proof_lines_are_canonical_base64_hashes_and_at_most_63(
        log: SovereignJournal, witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    core.add_checkpoint(request(log, 0, 8))
    note = note_at(log, 10)
    proof = log.consistency_proof(8, 10).path
    line = base64.b64encode(proof[0]).decode()
    assert line.endswith("=")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    respelt = line[:-2] + alphabet[alphabet.index(line[-2]) ^ 1] + "="  # a stray bit set: the same bytes
    assert base64.b64decode(respelt) == proof[0]
    stray = refused(core, f"old 8\n{respelt}\n\n{note}".encode())
    assert stray.status == 400 and "canonical" in str(stray)
    unpadded = line.rstrip("=")
    assert refused(core, f"old 8\n{unpadded}\n\n{note}".encode()).status == 400
    short = base64.b64encode(proof[0][:31]).decode()
    assert refused(core, f"old 8\n{short}\n\n{note}".encode()).status == 400
    assert refused(core, body(8, [proof[0]] * 64, note)).status == 400
    assert "more than 63" in str(refused(core, body(8, [proof[0]] * 64, note)))
    assert refused(core, body(8, [proof[0]] * 63, note)).status == 422  # 63 read, and checked
    assert parse_add_checkpoint(body(8, [proof[0]] * 63, note)).proof == (proof[0],) * 63
    assert journal.journal_count() == 1


def test_huge_sizes_are_refused_not_crashed_on(log: SovereignJournal,
                                               witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    root = base64.b64encode(log.tree_root(20)).decode()
    for size in ("9223372036854775808", "1" + "0" * 5000):
        note = sign_note(f"{LOG.name}\n{size}\n{root}\n", LOG)
        assert refused(core, f"old 0\n\n{note}".encode()).status == 400
    # the biggest size allowed is cosigned from 0 (nothing to check it against), and then holds
    top = sign_note(f"{LOG.name}\n9223372036854775807\n{root}\n", LOG)
    assert core.add_checkpoint(f"old 0\n\n{top}".encode()).checkpoint.size == 2**63 - 1
    assert refused(core, request(log, 0, 20)).size == 2**63 - 1
    assert journal.journal_count() == 1


def test_an_empty_tree_must_have_the_empty_root(witness: tuple[Witness, SovereignJournal]) -> None:
    core, _journal = witness
    wrong = sign_note(f"{LOG.name}\n0\n{base64.b64encode(bytes(32)).decode()}\n", LOG)
    assert refused(core, f"old 0\n\n{wrong}".encode()).status == 422
    empty = sign_note(f"{LOG.name}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", LOG)
    assert core.add_checkpoint(f"old 0\n\n{empty}".encode()).checkpoint.size == 0


def test_oversized_checkpoint_text_is_413(log: SovereignJournal,
                                          witness: tuple[Witness, SovereignJournal]) -> None:
    core, journal = witness
    text = format_checkpoint(Checkpoint(LOG.name, 20, log.tree_root(20), ("x" * 9000,)))
    assert refused(core, f"old 0\n\n{sign_note(text, LOG)}".encode()).status == 413
    assert refused(core, b"old 0\n\n" + b"x" * MAX_BODY).status == 413
    assert journal.journal_count() == 0


def test_the_latest_checkpoint_replayed_gets_its_cosignature_again_and_grows_nothing(
        tmp_path: Path, log: SovereignJournal) -> None:
    now = [2_000_000_000.0]
    (tmp_path / "w").mkdir()
    with SovereignJournal(tmp_path / "w" / "journal") as journal:
        core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "w" / "lock"), clock=lambda: now[0])
        first = core.add_checkpoint(request(log, 0, 5))
        for _ in range(20):  # anyone may replay it: no credentials
            now[0] += 2
            assert core.add_checkpoint(request(log, 5, 5)) == first
        assert journal.journal_count() == 1
        now[0] += 60  # a minute after the last cosignature: a fresh one
        fresh = core.add_checkpoint(request(log, 5, 5))
        assert fresh.timestamp == first.timestamp + 100 and journal.journal_count() == 2
        # another text (an extension line) of the same tree is cosigned as what it is
        text = format_checkpoint(Checkpoint(LOG.name, 5, log.tree_root(5), ("ext",)))
        other = core.add_checkpoint(f"old 5\n\n{sign_note(text, LOG)}".encode())
        assert other.line != fresh.line and journal.journal_count() == 3
        core.close()


def test_timestamps_never_go_back_for_a_log_whatever_the_clock(tmp_path: Path, log: SovereignJournal) -> None:
    now = [2_000_000_000.0]
    (tmp_path / "w").mkdir()
    with SovereignJournal(tmp_path / "w" / "journal") as journal:
        core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "w" / "lock"), clock=lambda: now[0])
        first = core.add_checkpoint(request(log, 0, 5))
        now[0] -= 3600  # the clock goes back an hour
        second = core.add_checkpoint(request(log, 5, 10))
        assert second.timestamp == first.timestamp == 2_000_000_000
        core.close()


def test_a_witness_refuses_a_journal_that_forgot(tmp_path: Path, log: SovereignJournal) -> None:
    (tmp_path / "w").mkdir()
    with SovereignJournal(tmp_path / "w" / "journal") as journal:
        core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "w" / "lock"))
        core.add_checkpoint(request(log, 0, 5))
        journal.clear_all()
        with pytest.raises(StorageError, match="was cleared"):
            core.add_checkpoint(request(log, 5, 10))
        with pytest.raises(StorageError, match="was cleared"):
            Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "w" / "lock"))
        core.close()
    with SovereignJournal(tmp_path / "w2") as journal:
        for _ in range(2):
            grow(journal, 256)
        journal.archive(tmp_path / "archive", keep_last=1)
        assert journal.live_first_seq() > journal.tree_head().first_seq
        with pytest.raises(StorageError, match="archived entries"):
            Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock2"))


def test_a_witness_needs_a_witness_key_and_a_log(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "journal") as journal:
        with pytest.raises(ValueError, match="cosignature key"):
            Witness(LOG, [LOG.verifier()], journal, str(tmp_path / "lock"))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least one log"):
            Witness(WITNESS, [], journal, str(tmp_path / "lock"))


# -- over HTTP ---------------------------------------------------------------------------------------

@pytest.fixture
def served(witness: tuple[Witness, SovereignJournal]) -> Iterator[tuple[tuple[str, int], SovereignJournal]]:
    core, journal = witness
    get, post = witness_handlers(core, lambda _line: None)
    server = TileServer(("127.0.0.1", 0), get, post=post, max_body=MAX_BODY, timeout=1.0, max_connections=8)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.address, journal
    finally:
        server.shutdown()
        thread.join(timeout=10)


def post(address: tuple[str, int], data: bytes, path: str = "/add-checkpoint") -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("POST", path, body=data)
        reply = conn.getresponse()
        return reply.status, reply.getheader("Content-Type") or "", reply.read()
    finally:
        conn.close()


def raw(address: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_over_http_the_answers_are_the_specs(log: SovereignJournal,
                                              served: tuple[tuple[str, int], SovereignJournal]) -> None:
    address, journal = served
    status, kind, answer = post(address, request(log, 0, 7))
    assert status == 200 and kind.startswith("text/plain")
    assert answer.decode().startswith("\u2014 witness.example/w1 ") and answer.endswith(b"\n")
    assert answer.decode().count("\n") == 1
    status, kind, answer = post(address, request(log, 0, 9))
    assert (status, kind, answer) == (409, "text/x.tlog.size", b"7\n")
    status, kind, answer = post(address, request(log, 7, 9, key=OTHER_LOG))
    assert status == 404 and kind.startswith("text/plain") and b"unknown log origin" in answer
    assert post(address, b"old x\n\n")[0] == 400
    assert post(address, request(log, 7, 9), path="/elsewhere")[0] == 404
    conn = http.client.HTTPConnection(*address, timeout=30)
    conn.request("GET", "/add-checkpoint")
    reply = conn.getresponse()
    assert (reply.status, reply.getheader("Allow")) == (405, "POST")
    conn.close()
    assert journal.journal_count() == 1


def test_over_http_oversized_slow_and_bodiless_requests_are_refused_and_it_keeps_serving(
        log: SovereignJournal, served: tuple[tuple[str, int], SovereignJournal]) -> None:
    address, journal = served
    answer = raw(address, b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 1000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413 Content Too Large\r\n")
    answer = raw(address, b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411 ")
    answer = raw(address, b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 411 ")
    # a body that never comes whole: 408 when the time is up
    started = time.monotonic()
    answer = raw(address, b"POST /add-checkpoint HTTP/1.1\r\nContent-Length: 100\r\n\r\nold 0\n")
    assert answer.startswith(b"HTTP/1.0 408 ") and time.monotonic() - started < 20
    for head in answer.split(b"\r\n\r\n")[:1]:
        head.decode("ascii")
    assert journal.journal_count() == 0
    assert post(address, request(log, 0, 3))[0] == 200


def test_a_witness_process_keeps_its_record_across_a_kill(tmp_path: Path, log: SovereignJournal) -> None:
    """SIGKILL right after a 200: the cosigned checkpoint is durable, a new process holds it."""
    import signal
    import subprocess
    import sys

    krepis = str(Path(sys.executable).parent / "krepis")
    (tmp_path / "w.key").write_text(f"{WITNESS}\n")
    (tmp_path / "log.pub").write_text(f"{LOG.verifier()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREPIS_")}

    def start() -> tuple[subprocess.Popen[str], tuple[str, int]]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([krepis, "witness", "serve", "--key", str(tmp_path / "w.key"), "--log",
                                 str(tmp_path / "log.pub"), "--listen", f"127.0.0.1:{port}", "--state",
                                 str(tmp_path / "state")], stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "serving" in line, line
        return proc, ("127.0.0.1", port)

    proc, address = start()
    try:
        assert post(address, request(log, 0, 11))[0] == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    proc, address = start()
    try:
        assert post(address, request(log, 0, 15))[:3] == (409, "text/x.tlog.size", b"11\n")
        assert post(address, request(log, 11, 15))[0] == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_python_api_collects_cosignatures_in_time_or_raises(
        tmp_path: Path, served: tuple[tuple[str, int], SovereignJournal]) -> None:
    from krepis.tlog import QuorumError, WitnessEndpoint

    address, _journal = served
    url = f"http://{address[0]}:{address[1]}"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: a hung witness
    try:
        hung = f"http://127.0.0.1:{silent.getsockname()[1]}"
        other = generate_cosigner("witness.example/w2").verifier()
        with SovereignJournal(tmp_path / "log") as log:
            grow(log, 30)
            result = log.cosign_checkpoint(LOG, [f"w1={url}:{WITNESS.verifier()}"])
            assert [c.witness for c in result.cosignatures] == ["witness.example/w1"]
            assert log.latest_checkpoint() == result.note and result.checkpoint.size == 30
            grow(log, 5, tag="more")
            started = time.monotonic()
            with pytest.raises(QuorumError) as info:
                log.cosign_checkpoint(LOG, [WitnessEndpoint("w1", url, WITNESS.verifier()),
                                            WitnessEndpoint("w2", hung, other)], quorum=2, timeout=1.0)
            assert time.monotonic() - started < 30  # (the deadline holds; pytest-timeout is the net)
            answers = {a.witness.label: a for a in info.value.answers}
            assert answers["w1"].cosignature is not None and answers["w2"].cosignature is None
            assert "no whole answer within 1.0 s" in (answers["w2"].error or "")
            assert log.latest_checkpoint() == result.note  # nothing kept
            # the witness did cosign size 35 in that round: the next round learns it from its 409
            done = log.cosign_checkpoint(LOG, [f"w1={url}:{WITNESS.verifier()}"])
            assert done.checkpoint.size == 35
    finally:
        silent.close()


def test_cosigning_the_same_tree_again_keeps_the_other_witnesses_cosignatures(
        tmp_path: Path, served: tuple[tuple[str, int], SovereignJournal]) -> None:
    address, _journal = served
    w2 = generate_cosigner("witness.example/w2")
    core, journal = open_witness(tmp_path / "w2", key=w2)
    get, post_ = witness_handlers(core, lambda _line: None)
    server = TileServer(("127.0.0.1", 0), get, post=post_, max_body=MAX_BODY, timeout=5.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        first = f"w1=http://{address[0]}:{address[1]}:{WITNESS.verifier()}"
        second = f"w2=http://127.0.0.1:{server.address[1]}:{w2.verifier()}"
        with SovereignJournal(tmp_path / "log") as log:
            grow(log, 12)
            log.cosign_checkpoint(LOG, [first])
            again = log.cosign_checkpoint(LOG, [second])  # the same tree, another witness
            both = open_cosigned_checkpoint(log.latest_checkpoint() or "", [LOG.verifier()],
                                            [WITNESS.verifier(), w2.verifier()])
            assert sorted(c.witness for c in both.cosignatures) == ["witness.example/w1",
                                                                    "witness.example/w2"]
            assert log.latest_checkpoint() == again.note
            assert len(log.checkpoints()) == 1
    finally:
        server.shutdown()
        thread.join(timeout=10)
        core.close()
        journal.close()


def test_status_shows_each_logs_latest_cosigned_checkpoint(log: SovereignJournal, tmp_path: Path) -> None:
    core, journal = open_witness(tmp_path / "w")
    try:
        core.add_checkpoint(request(log, 0, 5))
        core.add_checkpoint(request(log, 5, 12))
        latest = journal.query(op_name=COSIGNED_OP)[0]
    finally:
        core.close()
        journal.close()
    result = CliRunner().invoke(cli, ["witness", "status", "--state", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    when = datetime.datetime.fromtimestamp(latest.timestamp // 1000, datetime.timezone.utc)
    assert result.stdout == (f"{LOG.name}\ttree size 12\tcosigned {when:%Y-%m-%dT%H:%M:%SZ}\t"
                             f"witness journal seq {latest.seq}\n")
    as_json = json.loads(CliRunner().invoke(cli, ["witness", "status", "--state", str(tmp_path / "w"),
                                                  "--json"]).stdout)
    assert (as_json["origin"], as_json["tree_size"], as_json["seq"]) == (LOG.name, 12, latest.seq)
    missing = CliRunner().invoke(cli, ["witness", "status", "--state", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and str(tmp_path / "nowhere") in missing.output
