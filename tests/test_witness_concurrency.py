"""Concurrent add-checkpoint requests never roll a witness back: checking the latest cosigned
checkpoint and recording the next one are one step, for threads of one process and for real
processes sharing the witness's directory (direct calls, and several ``krepis witness serve``
processes behind one state directory).

Each worker learns the size the witness holds (from 409) and asks for a checkpoint of a size of
its own choosing, so many requests race on the same old size. Without the lock two of them
pass the check and the smaller one can be recorded last; with it, the record's sizes never
decrease, every cosignature answered is recorded, and the last record is the largest size.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from krepis import SovereignJournal
from krepis.tlog import Cosigner, Verifier, open_cosigned_checkpoint
from krepis.tlog._witness import COSIGNED_OP, Refusal
from test_witness import LOG, WITNESS, grow, open_witness, request

TOP = 200  # the log's size; requests go from a size to at most STEP leaves more
STEP = 6
KREPIS = str(Path(sys.executable).parent / "krepis")

#: ``send(old, new)``: (status, the cosignature line or the held size)
Send = Callable[[int, int], tuple[int, str]]


def bodies(tmp_path: Path) -> Path:
    """Every add-checkpoint body from a size to one at most STEP bigger, in a file."""
    out: dict[str, str] = {}
    with SovereignJournal(tmp_path / "log") as log:
        grow(log, TOP)
        for old in range(TOP + 1):
            for new in range(old, min(TOP, old + STEP) + 1):
                out[f"{old} {new}"] = base64.b64encode(request(log, old, new)).decode()
    path = tmp_path / "bodies.json"
    path.write_text(json.dumps(out))
    return path


def run(send: Send, seed: int, rounds: int) -> list[tuple[int, str]]:
    """``rounds`` requests, each for a few leaves more than the size the worker last heard the
    witness holds; return the (size, cosignature) of every 200."""
    rng = random.Random(seed)
    got, held = [], 0
    for _ in range(rounds):
        target = min(TOP, held + rng.randint(0, STEP))
        status, said = send(held, target)
        if status == 200:
            got.append((target, said))
            held = target
        else:
            assert status == 409, (status, said)
            held = int(said)
    return got


def direct(state: Path, table: dict[str, str], key: Cosigner = WITNESS,
           logs: list[Verifier] | None = None) -> tuple[Send, Callable[[], None]]:
    core, journal = open_witness(state, key, logs)

    def send(old: int, new: int) -> tuple[int, str]:
        try:
            return 200, core.add_checkpoint(base64.b64decode(table[f"{old} {new}"])).line.strip()
        except Refusal as exc:
            return exc.status, str(exc.size)

    def close() -> None:
        core.close()
        journal.close()

    return send, close


def over_http(ports: list[int], table: dict[str, str], seed: int) -> Send:
    rng = random.Random(seed)

    def send(old: int, new: int) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", rng.choice(ports), timeout=60)
        try:
            conn.request("POST", "/add-checkpoint", body=base64.b64decode(table[f"{old} {new}"]))
            reply = conn.getresponse()
            return reply.status, reply.read().decode().strip()
        finally:
            conn.close()

    return send


def check_record(state: Path, answered: list[tuple[int, str]]) -> None:
    """The record never went back, holds every cosignature answered, ends at the largest size."""
    with SovereignJournal(state / "journal", create=False) as journal:
        entries = journal.query(op_name=COSIGNED_OP, order="append", newest_first=False)
    sizes = [int((e.error or "").split("\n")[1]) for e in entries]
    assert sizes == sorted(sizes), f"the witness was rolled back: {sizes}"
    stamps = [open_cosigned_checkpoint(e.error or "", [LOG.verifier()], [WITNESS.verifier()],
                                       max_future=None).cosignatures[0].timestamp for e in entries]
    assert stamps == sorted(stamps)
    lines = [(e.error or "").rstrip("\n").split("\n")[-1] for e in entries]
    # each answer recorded (once: lines are unique), each record answered
    assert len(set(lines)) == len(lines) and {line for _size, line in answered} == set(lines)
    assert answered and sizes[-1] == max(size for size, _line in answered)


def test_threads_of_one_witness(tmp_path: Path) -> None:
    table = json.loads(bodies(tmp_path).read_text())
    send, close = direct(tmp_path / "w", table)
    answered: list[tuple[int, str]] = []
    try:
        threads = [threading.Thread(target=lambda s=seed: answered.extend(run(send, s, 25)))
                   for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        close()
    check_record(tmp_path / "w", answered)


def test_processes_sharing_a_witness_directory(tmp_path: Path) -> None:
    table_file = bodies(tmp_path)
    (tmp_path / "w").mkdir()
    open_witness(tmp_path / "w")[1].close()  # (the store exists before the race)
    keys = tmp_path / "keys"
    keys.write_text(f"{LOG.verifier()}\n{WITNESS}\n")
    procs = [subprocess.Popen([sys.executable, __file__, str(tmp_path / "w"), str(table_file), str(seed),
                               str(tmp_path / f"out{seed}.json"), str(keys)]) for seed in range(4)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    answered = [tuple(x) for seed in range(4) for x in json.loads((tmp_path / f"out{seed}.json").read_text())]
    check_record(tmp_path / "w", answered)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_witness_servers_sharing_a_state_directory_under_concurrent_clients(tmp_path: Path) -> None:
    table = json.loads(bodies(tmp_path).read_text())
    (tmp_path / "w.key").write_text(f"{WITNESS}\n")
    (tmp_path / "log.pub").write_text(f"{LOG.verifier()}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KREPIS_")}
    servers, ports = [], []
    try:
        for _ in range(3):
            port = _free_port()
            proc = subprocess.Popen([KREPIS, "witness", "serve", "--key", str(tmp_path / "w.key"), "--log",
                                     str(tmp_path / "log.pub"), "--listen", f"127.0.0.1:{port}", "--state",
                                     str(tmp_path / "state")], stderr=subprocess.PIPE, text=True, env=env)
            servers.append(proc)
            assert proc.stderr is not None and "serving" in proc.stderr.readline()
            ports.append(port)
        answered: list[tuple[int, str]] = []
        threads = [threading.Thread(target=lambda s=seed: answered.extend(run(over_http(ports, table, s), s,
                                                                              30)))
                   for seed in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
    check_record(tmp_path / "state", answered)


if __name__ == "__main__":  # one worker process of test_processes_sharing_a_witness_directory
    state, table_file, seed, out, keys = sys.argv[1:]
    log_key, witness_key = Path(keys).read_text().splitlines()
    send, close = direct(Path(state), json.loads(Path(table_file).read_text()), Cosigner.parse(witness_key),
                         [Verifier.parse(log_key)])
    try:
        result = run(send, int(seed), 25)
    finally:
        close()
    Path(out).write_text(json.dumps(result))
