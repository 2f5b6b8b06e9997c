"""Writer processes for the power-loss tests, forked from a pre-imported zygote.

``python -m powerloss.writer`` (from ``tests/``) reads commands on stdin, one JSON object a line:

* ``{"cmd": "spawn", "spec": {...}}`` forks a writer and answers ``{"pid": N}``;
* ``{"cmd": "reap", "pid": N}`` waits for that writer to end and answers ``{"status": S}``
  (the raw wait status).

Forking from a process that already imported krepis makes a writer start in milliseconds, so a
test can afford hundreds of power cuts. A writer writes forever until it is SIGKILLed; after each
write call has RETURNED it appends ``"<request_id> <CLOCK_MONOTONIC ns>\\n"`` to its ack file
(on a normal file system, not the one under test) with one ``write(2)``, so a line cut by the
kill is incomplete and does not count.

A spec of kind ``"inspect"`` instead opens the (copied, post-cut) store at ``store`` and writes
what :func:`powerloss.harness.inspect_store` saw to ``out`` as JSON — in a child, because a
corrupt LMDB file can crash the process that reads it.

Writer spec keys: ``store`` (path on the mount), ``flush`` (policy), ``kind`` (``"threads"`` or
``"async"``), ``threads`` (threads or asyncio tasks), ``tag`` (request-id prefix), ``ack`` (ack
file), ``err`` (where a traceback goes), and ``broken`` (deliberately broken designs, each with
LMDB's background application held off, so that what they break decides the outcome: ``"nosync"``,
the commit log never flushed, so every call is acknowledged before its data is durable;
``"nolog"``, no record written at all, the writes held in memory only; ``"noapplysync"``, LMDB's
applications of the log committed without sync while the log's space is reused as if they were
durable).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

from krepis import AsyncSovereignJournal, LogStatus, SovereignJournal, TransactionLog
from krepis._model import now_ms
from powerloss.harness import inspect_store

OP = "op"


def _ack_writer(path: str) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def ack(rid: str) -> None:
        os.write(fd, f"{rid} {time.monotonic_ns()}\n".encode())

    return ack


def _hold_off_applying() -> None:
    """LMDB applies the log only when the ring has no room left (never in the background)."""
    import krepis.storage.lmdb._apply as apply
    import krepis.storage.lmdb._store as store

    apply.APPLY_SECONDS = 10**9
    apply.APPLY_ENTRIES = store.APPLY_ENTRIES = 10**9


def _break_sync() -> None:
    """Acknowledge before syncing: the commit log is written but never flushed (no fsync of it
    at all, so the file system counts none)."""
    from krepis.storage.lmdb._commitlog import CommitLog

    _hold_off_applying()
    CommitLog.flush = lambda self: None  # type: ignore[method-assign]
    os.fdatasync = lambda fd: None  # (the ring's growth flushes too)


def _break_log() -> None:
    """Write no record: every write lives in this process's memory only until LMDB applies it."""
    from krepis.storage.lmdb._commitlog import CommitLog

    _hold_off_applying()
    CommitLog.flush = lambda self: None  # type: ignore[method-assign]
    CommitLog.write = lambda self, position, record: None  # type: ignore[method-assign]


def _break_apply_sync() -> None:
    """LMDB commits its applications of the log without syncing, and the log's space is reused
    as soon as they committed, as if they were durable."""
    import lmdb

    _hold_off_applying()
    real = lmdb.open

    def open_without_sync(*args: Any, **kwargs: Any) -> Any:
        kwargs["sync"] = kwargs["metasync"] = False
        return real(*args, **kwargs)

    lmdb.open = open_without_sync


def _die(spec: dict[str, Any]) -> None:
    """A writer that fails reports why and ends its process (no thread dies silently)."""
    with open(spec["err"], "a") as f:
        f.write(traceback.format_exc())
    os._exit(3)


def run(spec: dict[str, Any]) -> None:
    """Run the job ``spec`` describes: a writer (forever), or a store inspection (then return)."""
    if spec.get("broken") == "nosync":
        _break_sync()
    elif spec.get("broken") == "nolog":
        _break_log()
    elif spec.get("broken") == "noapplysync":
        _break_apply_sync()
    elif spec.get("broken"):
        raise ValueError(f"unknown broken variant {spec['broken']!r}")

    def entry(rid: str) -> TransactionLog:
        return TransactionLog(now_ms(), OP, rid, LogStatus.Completed)

    if spec["kind"] == "create":  # a new, empty store (after a cut left one beyond repair)
        if spec.get("ring"):  # a smaller commit-log ring than the default (it laps sooner)
            from krepis.storage.lmdb import _commitlog

            _commitlog.RING_SIZE = int(spec["ring"])
        SovereignJournal(spec["store"], flush="sync").close()
        return
    if spec["kind"] == "inspect":
        result = inspect_store(spec["store"], spec["probe"])
        with open(spec["out"] + ".tmp", "w") as f:
            json.dump(result, f)
        os.rename(spec["out"] + ".tmp", spec["out"])
        return
    ack = _ack_writer(spec["ack"])
    tag = spec["tag"]
    threads = int(spec["threads"])
    if spec["kind"] == "threads":
        journal = SovereignJournal(spec["store"], flush=spec["flush"])

        def work(t: int) -> None:
            i = 0
            try:
                while True:
                    rid = f"{tag}.{t}.{i}"
                    journal.record(entry(rid), increment=OP)
                    ack(rid)
                    i += 1
            except BaseException:
                _die(spec)

        for t in range(threads):
            threading.Thread(target=work, args=(t,), daemon=True).start()
        threading.Event().wait()
    elif spec["kind"] == "async":
        async def main() -> None:
            journal = AsyncSovereignJournal(spec["store"], flush=spec["flush"])

            async def task(t: int) -> None:
                i = 0
                while True:
                    rid = f"{tag}.{t}.{i}"
                    await journal.record(entry(rid), increment=OP)
                    ack(rid)
                    i += 1

            await asyncio.gather(*(task(t) for t in range(threads)))

        asyncio.run(main())
    else:
        raise ValueError(f"unknown writer kind {spec['kind']!r}")


def _child(spec: dict[str, Any]) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    try:
        run(spec)
    except BaseException:
        _die(spec)
    os._exit(0)


def zygote() -> None:
    out = sys.stdout
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(msg["spec"])
            reply: dict[str, Any] = {"pid": pid}
        elif msg["cmd"] == "reap":
            _, status = os.waitpid(int(msg["pid"]), 0)
            reply = {"status": status}
        else:
            reply = {"error": f"unknown command {msg['cmd']!r}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    zygote()
