"""Sequence numbers on the command line: ``logs --json`` and ``export`` print each entry's ``seq``,
and ``krepis prove --request-id`` proves every entry of a request against the latest checkpoint."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog
from krepis.tlog import leaf_hash, verify_inclusion
from krepis.tlog._note import generate_signer, open_checkpoint
from test_cli import krepis

SIGNER = generate_signer("example.com/seq")
RID = "5f0c2a9e-7b1d-4c3e-9f8a-112233445566"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "s"
    with SovereignJournal(path, flush="interval:50ms") as journal:
        for i in range(40):
            rid = RID if i % 7 == 3 else f"other-{i}"
            journal.log_transaction(TransactionLog(1000 + i, f"op{i % 3}", rid, LogStatus.Completed,
                                                   error="é\n\u202e" if i == 10 else None))
    return path


def _stored(store: Path) -> list[TransactionLog]:
    with SovereignJournal(store, create=False) as journal:
        return list(journal.iter_logs(order="append", newest_first=False))


def test_logs_json_and_export_print_the_seq(store: Path) -> None:
    stored = _stored(store)
    logs = [json.loads(line) for line in krepis("logs", "--storage", str(store), "--all", "--json",
                                                cwd=store.parent).stdout.splitlines()]
    assert [e["seq"] for e in logs] == [e.seq for e in reversed(stored)]
    lines = krepis("export", "--storage", str(store), cwd=store.parent).stdout.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == list(range(40))
    for line, entry in zip(lines, stored, strict=True):
        # the seq comes first; without it the line is the stored form, byte for byte
        head = f'{{"seq":{entry.seq},'
        assert line.startswith(head) and "{" + line[len(head):] == entry.to_json()
    out = store.parent / "trail.jsonl"
    krepis("export", "--storage", str(store), "-o", str(out), cwd=store.parent)
    assert out.read_text().splitlines() == lines


def _sign(store: Path) -> str:
    with SovereignJournal(store, create=False) as journal:
        return journal.sign_checkpoint(SIGNER)


def _check(line: dict, note: str) -> None:  # type: ignore[type-arg]
    cp = open_checkpoint(note, [SIGNER.verifier()])
    assert line["checkpoint"] == note and line["tree_size"] == cp.size
    assert base64.b64decode(line["root"]) == cp.root
    leaf = leaf_hash(line["entry"].encode())
    assert base64.b64decode(line["leaf_hash"]) == leaf
    path = [base64.b64decode(p) for p in line["proof"]]
    assert verify_inclusion(leaf, line["index"], cp.size, path, cp.root)


def test_prove_request_id_proves_every_entry_of_the_request(store: Path) -> None:
    note = _sign(store)
    mine = [e for e in _stored(store) if e.request_id == RID]
    for value in (RID, RID[:8]):  # the whole id, or the prefix a terminal shows
        proc = krepis("prove", "--storage", str(store), "--request-id", value, cwd=store.parent)
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [line["seq"] for line in lines] == [e.seq for e in mine]
        assert [line["entry"] for line in lines] == [e.to_json() for e in mine]
        for line in lines:
            _check(line, note)


def test_prove_request_id_refuses_entries_the_checkpoint_does_not_cover(store: Path) -> None:
    _sign(store)
    with SovereignJournal(store, create=False) as journal:
        journal.log_transaction(TransactionLog(5000, "late", RID, LogStatus.Started))
        last = journal.next_seq() - 1
    proc = krepis("prove", "--storage", str(store), "--request-id", RID, cwd=store.parent, ok=False)
    assert proc.returncode == 1 and proc.stdout == ""  # nothing partial
    assert f"entry {last} of request {RID} is not in the latest checkpoint (tree size 40)" in proc.stderr
    assert "krepis checkpoint" in proc.stderr
    ok = krepis("prove", "--storage", str(store), "--request-id", RID, "--tree-size", "41", cwd=store.parent)
    assert json.loads(ok.stdout.splitlines()[-1])["seq"] == last


def test_prove_request_id_errors(store: Path) -> None:
    proc = krepis("prove", "--storage", str(store), "--request-id", "nobody", cwd=store.parent, ok=False)
    assert proc.returncode == 1 and "no request id is or begins with 'nobody'" in proc.stderr
    proc = krepis("prove", "--storage", str(store), "--request-id", "other-3", cwd=store.parent, ok=False)
    assert proc.returncode == 2 and "'other-3' is ambiguous" in proc.stderr  # other-30, other-31, …
    proc = krepis("prove", "--storage", str(store), "3", "--request-id", RID, cwd=store.parent, ok=False)
    assert proc.returncode == 2 and "SEQ, --request-id ID or --consistency" in proc.stderr


# -- output formats ---------------------------------------------------------------------------

CSV_HEADER = ["seq", "time", "op_name", "request_id", "status", "duration_us", "error"]


def test_logs_and_export_in_every_format(store: Path, tmp_path: Path) -> None:
    import csv
    import io

    stored = _stored(store)
    args = ("--storage", str(store), "--all", "--reverse")
    rows = list(csv.reader(io.StringIO(krepis("logs", *args, "-o", "csv", cwd=tmp_path).stdout)))
    assert rows[0] == CSV_HEADER and len(rows) == 41
    assert rows[1] == ["0", "1970-01-01T00:00:01.000Z", "op0", "other-0", "Completed", "", ""]
    assert rows[11][6] == "é\\n\\u202e"  # inert, as in the tab-separated lines
    assert krepis("logs", *args, "--format", "jsonl", cwd=tmp_path).stdout == \
        krepis("logs", *args, "--json", cwd=tmp_path).stdout == \
        krepis("logs", *args, "-o", "json", cwd=tmp_path).stdout
    tsv = krepis("logs", *args, "-o", "tsv", cwd=tmp_path).stdout
    assert tsv == krepis("logs", *args, cwd=tmp_path).stdout
    table = krepis("logs", *args, "-o", "table", cwd=tmp_path, env={"COLUMNS": "80", "TZ": "UTC"}).stdout
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "OP", "REQUEST", "STATUS", "TOOK", "ERROR"] and len(lines) == 41
    assert all(len(line) <= 80 for line in lines) and "\x1b" not in table  # piped: no colour
    assert lines[1].startswith("01-01 00:00:01.000 op0")
    # export: --format, and -o stays the file
    out = tmp_path / "trail.csv"
    krepis("export", "--storage", str(store), "--format", "csv", "-o", str(out), cwd=tmp_path)
    assert list(csv.reader(io.StringIO(out.read_text())))[1:] == rows[1:]
    assert krepis("export", "--storage", str(store), "--format", "tsv", cwd=tmp_path).stdout == \
        krepis("logs", *args, "-o", "tsv", cwd=tmp_path).stdout
    jsonl = krepis("export", "--storage", str(store), "--format", "jsonl", cwd=tmp_path).stdout
    assert [json.loads(line)["seq"] for line in jsonl.splitlines()] == [e.seq for e in stored]


def test_format_errors(store: Path, tmp_path: Path) -> None:
    proc = krepis("logs", "--storage", str(store), "-o", "xml", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "'xml' is not one of" in proc.stderr
    proc = krepis("logs", "--storage", str(store), "--json", "-o", "csv", cwd=tmp_path, ok=False)
    assert proc.returncode == 2 and "--json is --format jsonl" in proc.stderr
