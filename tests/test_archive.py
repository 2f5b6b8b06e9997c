"""The archive: whole bundles move out of the live store (LMDB and PostgreSQL) into compressed,
verifiable segment files; reads, proofs and verify include it; crashes lose nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from krepis import (
    CorruptStorageError,
    Kernel,
    LogStatus,
    RetentionPolicy,
    SovereignJournal,
    TransactionLog,
    ValidationError,
)
from krepis._model import encode_log
from krepis.archive import ArchiveReader
from krepis.cli import cli
from krepis.tlog import leaf_hash, verify_consistency, verify_inclusion
from krepis.tlog._note import generate_signer
from rawlmdb import needed_size

OPS = [f"op_{i:02d}" for i in range(20)]
T0 = 1_764_424_000_000


def realistic(n: int, seed: int = 1, start: int = T0) -> list[TransactionLog]:
    """Started/Completed pairs of uuid4 request ids over 20 ops, a few in flight at once."""
    rng = random.Random(seed)
    out: list[TransactionLog] = []
    pending: list[tuple[str, str, int]] = []
    ts = start
    while len(out) < n:
        ts += rng.randint(0, 2)
        if len(pending) >= 6 or (pending and rng.random() < 0.5):
            op, rid, began = pending.pop(rng.randrange(len(pending)))
            failed = rng.random() < 0.02
            out.append(TransactionLog(ts, op, rid, LogStatus.Failed if failed else LogStatus.Completed,
                                      duration_us=(ts - began) * 1000 + rng.randint(0, 999),
                                      error="timeout" if failed else None))
        else:
            op, rid = rng.choice(OPS), str(uuid.UUID(int=rng.getrandbits(128), version=4))
            pending.append((op, rid, ts))
            out.append(TransactionLog(ts, op, rid, LogStatus.Started))
    return out


def fill(journal: SovereignJournal, logs: list[TransactionLog]) -> None:
    for log in logs:
        journal.record(log, increment=log.op_name)
    journal.flush()


def fill_fast(journal: SovereignJournal, logs: list[TransactionLog]) -> None:
    """The same entries in transactions of 1,000 (the write path is not what these tests test)."""
    from krepis.storage import WriteRequest

    for i in range(0, len(logs), 1000):
        journal._storage.write_batch([WriteRequest([(x, encode_log(x))], [x.op_name.encode()])
                                      for x in logs[i:i + 1000]])
    journal.flush()


@pytest.fixture(params=["lmdb", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "store")


def everything(journal: SovereignJournal, archive: Path | None = None, **kw: Any) -> list[TransactionLog]:
    return journal.query(archive=archive, **kw)


def test_archive_round_trip_both_engines(location: str, tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    logs = realistic(256 * 12 + 100)
    with SovereignJournal(location, flush="interval:20ms") as journal:
        fill_fast(journal, logs)
        assert journal.op_counts() == {op: sum(x.op_name == op for x in logs) for op in OPS}
        signer = generate_signer("example.com/archive-test")
        note = journal.sign_checkpoint(signer)
        head = journal.tree_head()
        counts = journal.op_counts()
        tiles_before = {k: journal.tile_sources()[1](k * 256, 256) for k in range(12)}
        views = {
            "append": everything(journal, order="append", newest_first=False),
            "append_desc": everything(journal, order="append"),
            "time": everything(journal),
            "time_asc": everything(journal, newest_first=False),
            "rid": everything(journal, request_id=logs[10].request_id),
            "op": everything(journal, op_name=["op_03", "op_07"], status="completed"),
            "window": everything(journal, since=logs[500].timestamp, until=logs[3100].timestamp),
        }

        report = journal.archive(arch, keep_last=600)
        assert (report.entries, report.bundles, report.live_first_seq) == (256 * 10, 10, 2560)
        assert journal.journal_count() == len(logs)              # the whole history, by default
        assert journal.journal_count(live_only=True) == len(logs) - 2560
        assert journal.get_archive_dir() == str(arch)            # the store knows its archive
        assert journal.op_counts() == counts                    # counters are totals
        assert journal.tree_head() == head                       # the tree did not change
        assert journal.latest_checkpoint() == note
        checked = journal.verify()
        assert (checked.entries, checked.archived) == (len(logs) - 2560, 2560)
        assert checked.archive is not None and checked.archive.entries == 2560
        assert journal.verify(live_only=True).archive is None
        assert journal.verify_archive(arch).entries == 2560

        # every read, with the archive, is what it was before
        assert everything(journal, arch, order="append", newest_first=False) == views["append"]
        assert everything(journal, arch, order="append") == views["append_desc"]
        assert everything(journal, arch) == views["time"]
        assert everything(journal, arch, newest_first=False) == views["time_asc"]
        assert everything(journal, arch, request_id=logs[10].request_id) == views["rid"]
        assert everything(journal, arch, op_name=["op_03", "op_07"], status="completed") == views["op"]
        assert everything(journal, arch, since=logs[500].timestamp, until=logs[3100].timestamp) \
            == views["window"]
        # paging across the boundary, in both orders
        for order in ("time", "append"):
            page, got = None, []
            while True:
                page = journal.query(archive=arch, order=order, limit=97, newest_first=False,
                                     after=page[-1] if page else None)
                got += page
                if len(page) < 97:
                    break
            assert got == (views["time_asc"] if order == "time" else views["append"])
        assert journal.query(archive=arch, after=5, limit=3) == [
            x for x in views["time"] if (x.timestamp, x.seq) < (logs[5].timestamp, 5)][:3]
        # by default the same (the store records its archive); live_only: the live entries
        assert everything(journal, order="append", newest_first=False) == views["append"]
        assert everything(journal) == views["time"]
        live = everything(journal, live_only=True, order="append", newest_first=False)
        assert live == views["append"][2560:]

        # bundles decompress to exactly the C2SP entry bundles
        reader = ArchiveReader(arch, head.epoch, head.first_seq)
        for k in range(10):
            expect = b"".join(len(d).to_bytes(2, "big") + d for d in tiles_before[k])
            assert reader.bundle_bytes(k) == expect

        # proofs: archived entries through the archive (the store's, or the one given)
        with pytest.raises(ValidationError, match="archived"):
            journal.inclusion_proof(3, live_only=True)
        for seq in (0, 255, 2559, 2560, len(logs) - 1):
            assert journal.inclusion_proof(seq) == journal.inclusion_proof(seq, archive=arch)
            proof = journal.inclusion_proof(seq, archive=arch)
            assert verify_inclusion(leaf_hash(encode_log(views["append"][seq])), proof.index, proof.tree_size,
                                    proof.path, head.root)
        live_proof = journal.inclusion_proof(len(logs) - 1)
        assert verify_inclusion(live_proof.leaf_hash, live_proof.index, live_proof.tree_size,
                                live_proof.path, head.root)
        for old in (1, 300, 2560, 3000):
            c = journal.consistency_proof(old, archive=arch)
            assert verify_consistency(c.old_size, c.new_size, c.old_root, c.new_root, c.path)
        assert journal.tree_root(2560) == journal.tree_root(2560, archive=arch)

        # a second run archives the rest of the full bundles and continues the same archive
        more = journal.archive(arch, keep_last=0)
        assert (more.entries, more.archived_entries) == (512, 3072)
        assert everything(journal, arch, order="append", newest_first=False) == views["append"]
        assert journal.archive(arch, keep_last=0).entries == 0   # nothing more: a no-op
        assert "op_00" in journal.op_names()


def test_compression_and_request_id_index(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    logs = realistic(256 * 64, seed=3)
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, logs)
        report = journal.archive(arch, keep_last=0)
        assert report.entries == len(logs)
        per_entry = sum(f.stat().st_size for f in arch.iterdir()) / report.entries
        assert per_entry < 24, per_entry  # (the bench measures the target on 1M entries)
        reader = ArchiveReader(arch, 0, 0)
        seg = reader.segments[0]
        idx = reader.segment_index(seg)
        rid = logs[12345].request_id
        from krepis.storage._codec import rid_hash

        assert idx.bundles_of(rid_hash(rid.encode())[:4]) == sorted({12345 // 256, *(
            i // 256 for i, x in enumerate(logs) if x.request_id == rid)})
        assert journal.query(request_id=rid, archive=arch) == sorted(
            [x for x in journal.query(order="append", archive=arch) if x.request_id == rid],
            key=lambda x: (x.timestamp, x.seq), reverse=True)


def test_bad_input_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arch = tmp_path / "archive"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill(journal, realistic(600))
        a_file = tmp_path / "file"
        a_file.write_text("x")
        for kwargs, err in [
            ({"keep_last": -1}, ValueError), ({"keep_last": 1.5}, TypeError), ({}, ValueError),
            ({"keep_last": 1, "keep_days": 2}, ValueError), ({"before": "not a time"}, ValueError),
            ({"keep_days": -3}, ValueError), ({"keep_days": "x"}, TypeError),
        ]:
            with pytest.raises(err):
                journal.archive(arch, **kwargs)
        with pytest.raises(ValueError, match="not a directory"):
            journal.archive(a_file, keep_last=0)
        assert not arch.exists()
        assert journal.journal_count() == 600 and journal.live_first_seq() == 0
        # before: only bundles entirely older than the time
        logs = journal.query(order="append", newest_first=False)
        assert journal.archive(arch, before=logs[300].timestamp).entries == 256
        # another store's archive is refused and nothing changes
        with SovereignJournal(tmp_path / "other", flush="interval:20ms") as other:
            fill(other, realistic(600, seed=9))
            with pytest.raises(ValueError, match="another store"):
                other.archive(arch, keep_last=0)
            assert other.live_first_seq() == 0 and other.journal_count() == 600
            for read in (lambda: other.query(archive=arch), lambda: other.tree_root(archive=arch),
                         lambda: other.inclusion_proof(0, archive=arch)):
                with pytest.raises(ValueError, match="another store"):
                    read()
    monkeypatch.setenv("KREPIS_RETENTION", "keep-weeks:3")
    with pytest.raises(ValueError, match="KREPIS_RETENTION"):
        SovereignJournal(tmp_path / "s")
    monkeypatch.setenv("KREPIS_RETENTION", "keep-days:3")
    with pytest.raises(ValueError, match="KREPIS_ARCHIVE"):  # a new store records no archive
        SovereignJournal(tmp_path / "new")
    assert not (tmp_path / "new").exists()  # (and is not made only to be refused)
    with SovereignJournal(tmp_path / "s") as journal:  # this one records where it archives
        assert journal._retention.directory == str(arch)  # type: ignore[attr-defined]
    monkeypatch.setenv("KREPIS_ARCHIVE", str(tmp_path / "file"))
    with pytest.raises(ValueError, match="not a directory"):
        SovereignJournal(tmp_path / "s")
    monkeypatch.delenv("KREPIS_RETENTION")
    with pytest.raises(ValueError, match="archive directory"):
        SovereignJournal(tmp_path / "new", retention="keep-last:5")
    with pytest.raises(ValueError, match="keep-last takes a whole number"):
        RetentionPolicy.parse("keep-last:1.5")
    assert str(RetentionPolicy.parse("keep-days:30,every:5s")) == "keep-days:30,every:5s"


def test_corrupt_or_missing_archive_files_are_named(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill(journal, realistic(256 * 20))
        journal.archive(arch, keep_last=0)
        seg = next(arch.glob("*.kseg"))
        data = bytearray(seg.read_bytes())
        data[len(data) // 2] ^= 0x40
        seg.write_bytes(bytes(data))
        with pytest.raises(CorruptStorageError, match=seg.name):
            journal.verify_archive(arch)
    result = CliRunner().invoke(cli, ["--storage", str(tmp_path / "s"), "verify", "--archive", str(arch)])
    assert result.exit_code == 1 and seg.name in result.output
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        seg.unlink()
        with pytest.raises(CorruptStorageError, match=f"{seg.name} is missing"):
            journal.verify_archive(arch)
        with pytest.raises(CorruptStorageError, match=seg.name):
            journal.query(archive=arch, order="append", newest_first=False)


def test_an_archive_of_other_entries_fails_against_the_tree(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "a", flush="interval:20ms") as a, \
            SovereignJournal(tmp_path / "b", flush="interval:20ms") as b:
        fill(a, realistic(600, seed=1))
        fill(b, realistic(600, seed=2))
        a.archive(tmp_path / "arch-a", keep_last=0)
        b.archive(tmp_path / "arch-b", keep_last=0)
        assert b.verify_archive(tmp_path / "arch-b").bundles == 2
        with pytest.raises(CorruptStorageError, match="does not match the store's Merkle tree"):
            a.verify_archive(tmp_path / "arch-b")   # well-formed, checksums fine: the tree says no


def test_clear_starts_a_new_log_in_the_same_archive(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill(journal, realistic(600))
        journal.archive(arch, keep_last=0)
        journal.clear_all()
        fill(journal, realistic(700, seed=2))
        head = journal.tree_head()
        assert journal.archive(arch, keep_last=0).entries == 512
        manifest = json.loads((arch / "MANIFEST.json").read_text())
        assert [(log["epoch"], log["first_seq"]) for log in manifest["logs"]] == [(0, 0), (1, head.first_seq)]
        got = journal.query(archive=arch, order="append", newest_first=False)
        assert [x.seq for x in got] == list(range(head.first_seq, head.first_seq + 701))  # this log only
        assert journal.verify_archive(arch).bundles == 4
        assert journal.verify().entries == 701 - 512


def test_retention_policy_runs_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import krepis.journal._retention

    arch = tmp_path / "archive"
    with Kernel(tmp_path / "s", flush="interval:20ms", retention="keep-last:256,every:0.05s",
                archive=arch) as kernel:
        journal = kernel.journal
        assert journal.retention == RetentionPolicy(keep_last=256, every=0.05)
        fill(journal, realistic(1000))
        thread = journal._retention
        runs = thread.runs  # type: ignore[attr-defined]
        while thread.runs < runs + 2:  # type: ignore[attr-defined]
            time.sleep(0.02)
        assert thread.error is None  # type: ignore[attr-defined]
        assert journal.live_first_seq() == 0  # fewer than RETENTION_MIN_BUNDLES due: nothing moves
        monkeypatch.setattr(krepis.journal._retention, "RETENTION_MIN_BUNDLES", 2)
        deadline = time.monotonic() + 30
        while journal.live_first_seq() < 512 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert journal.live_first_seq() >= 512
        assert len(journal.query(archive=arch)) == journal.next_seq()
    with SovereignJournal(tmp_path / "s", retention="off") as journal:  # (+ kernel_shutdown)
        assert [x.seq for x in journal.query(archive=arch, order="append", newest_first=False)] == list(
            range(journal.next_seq()))


def test_space_comes_back(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "archive"
    sizes = []
    with SovereignJournal(store, flush="interval:1000ms") as journal:
        for round_ in range(10):
            fill_fast(journal, realistic(256 * 20, seed=round_, start=T0 + round_ * 10**8))
            journal.archive(arch, keep_last=0)
            sizes.append((store / "data.mdb").stat().st_size)
        assert journal.verify_archive(arch).entries == 10 * 256 * 20
    # It stops growing: the last five rounds stay within 1.2x of the largest of the first five.
    # (Not of the first round alone: its size depends on when LMDB applied the commit log —
    # recording the archive directory applies it before the first segment is written.)
    assert max(sizes[5:]) <= 1.2 * max(sizes[:5]), sizes


_CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import krepis.archive._writer
    from krepis import SovereignJournal
    from krepis.archive import archive_store
    from krepis._model import encode_log
    from krepis.storage import WriteRequest
    from test_archive import realistic
    krepis.archive._writer.DICT_MIN_BUNDLES = 2
    store, arch, kill_at, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with SovereignJournal(store, flush="interval:5ms", retention="off") as journal:
        n = journal.next_seq()
        logs = realistic(700, seed=seed, start=10**12 + n)
        journal._storage.write_batch([WriteRequest([(x, encode_log(x)) for x in logs], [])])
        journal.flush()
        print("written", flush=True)
        def step(name):
            if name == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        while True:
            archive_store(journal._storage, arch, durable=False, before=None, keep_last=0, max_bundles=1,
                          on_step=step)
            if kill_at == "never":
                break
""")


def test_sigkill_during_archive_loses_nothing_and_duplicates_nothing(location: str, tmp_path: Path) -> None:
    store, arch = location, tmp_path / "archive"
    child = tmp_path / "child.py"
    child.write_text(_CHILD.format(tests=str(Path(__file__).parent)))
    written = 0
    points = ["dictionary", "segment", "manifest", "dropped", "random", "random", "random", "random"]
    if location.startswith("postgresql"):  # (each child costs more there)
        points = ["dictionary", "manifest", "dropped", "random"]
    for i, point in enumerate(points):
        proc = subprocess.Popen([sys.executable, str(child), str(store), str(arch), point, str(i)],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"written\n"
        written += 700
        if point == "random":
            time.sleep(random.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(60) == -signal.SIGKILL
        with SovereignJournal(store, retention="off") as journal:
            head = journal.tree_head()
            live = journal.live_first_seq()
            got = journal.query(archive=arch, order="append", newest_first=False)
            assert [x.seq for x in got] == list(range(written)), point   # none lost, none twice
            assert len(journal.query(archive=arch)) == written
            journal.verify(archive=arch)  # (archive_store alone records no archive directory)
            journal.verify_archive(arch)
            reader = ArchiveReader(arch, head.epoch, head.first_seq)
            assert reader.bundles * 256 >= live
    with SovereignJournal(store, retention="off") as journal:   # a rerun completes the work
        report = journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == report.archived_entries == written // 256 * 256
        assert [x.seq for x in journal.query(archive=arch, order="append", newest_first=False)] \
            == list(range(written))
        journal.verify()


def test_cli_archive_logs_export(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "archive"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill(journal, realistic(800))
        rid = journal.query(order="append", newest_first=False, limit=1)[0].request_id
    runner = CliRunner()
    base = ["--storage", str(store)]
    res = runner.invoke(cli, [*base, "archive", str(arch), "--keep-last", "100", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["entries"] == 512
    res = runner.invoke(cli, [*base, "archive", str(arch)])
    assert res.exit_code == 2 and "exactly one" in res.output
    res = runner.invoke(cli, [*base, "archive", str(arch), "--keep-last", "1", "--keep-days", "1"])
    assert res.exit_code == 2
    res = runner.invoke(cli, [*base, "logs", "--count", "--archive", str(arch)])
    assert res.output.strip() == "800"
    res = runner.invoke(cli, [*base, "logs", "--count"])  # the store records its archive
    assert res.output.strip() == "800"
    res = runner.invoke(cli, [*base, "logs", "--count", "--live-only"])
    assert res.output.strip() == "288"
    res = runner.invoke(cli, [*base, "logs", "--count", "--live-only", "--archive", str(arch)])
    assert res.exit_code == 2 and "do not go together" in res.output
    res = runner.invoke(cli, [*base, "logs", "--request-id", rid, "--archive", str(arch), "--json"])
    assert [json.loads(line)["request_id"] for line in res.output.splitlines()] == [rid, rid]
    res = runner.invoke(cli, [*base, "export", "--archive", str(arch)])
    assert len(res.output.splitlines()) == 800
    res = runner.invoke(cli, [*base, "verify", "--archive", str(arch), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["archive"]["entries"] == 512
    res = runner.invoke(cli, [*base, "prove", "3", "--live-only"])
    assert res.exit_code == 1 and "archived" in res.output
    for extra in ([], ["--archive", str(arch)]):
        res = runner.invoke(cli, [*base, "prove", "3", *extra])
        proof = json.loads(res.output)
        assert json.loads(proof["entry"])["request_id"] and proof["index"] == 3


def test_tiles_of_archived_entries_export_from_the_archive(tmp_path: Path) -> None:
    import asyncio

    from krepis import AsyncSovereignJournal
    from krepis.tlog._tiles import check_tiles

    arch, store = tmp_path / "archive", tmp_path / "s"
    signer = generate_signer("example.com/tiles")
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill(journal, realistic(700))
        journal.export_tiles(tmp_path / "before", signer)

    async def archive_async() -> int:
        async with AsyncSovereignJournal(store, flush="interval:20ms", retention="off") as journal:
            report = await journal.archive(arch, keep_last=0)
            await journal.verify_archive(arch)
            return report.entries

    assert asyncio.run(archive_async()) == 512
    with SovereignJournal(store, flush="interval:20ms") as journal:
        with pytest.raises(ValidationError, match="archived"):
            journal.export_tiles(tmp_path / "without", signer, live_only=True)
        journal.export_tiles(tmp_path / "after", signer, archive=arch)
        journal.export_tiles(tmp_path / "default", signer)  # from the archive the store records
    check = check_tiles(str(tmp_path / "after"), [signer.verifier()])
    assert check.entries == 700
    assert check_tiles(str(tmp_path / "default"), [signer.verifier()]).entries == 700
    for k in (0, 1):  # the archive's bundles are the exported bundles, byte for byte
        rel = Path("tile/entries") / f"{k:03d}"
        assert (tmp_path / "after" / rel).read_bytes() == (tmp_path / "before" / rel).read_bytes()


def test_a_store_whose_last_pages_were_freed_still_opens(tmp_path: Path) -> None:
    """LMDB never writes pages a transaction allocated and freed again, so removing entries can
    leave data.mdb shorter than its meta page's last page. Such a file is made here from a real
    store: cut to the shortest length whose missing pages are all on LMDB's free list. It opens
    and verifies (in a child: a page it needed would be SIGBUS); a truly truncated one does not."""
    from krepis.storage.lmdb._files import _META, _PAGE_HEADER

    store = tmp_path / "s"
    with SovereignJournal(store, flush="interval:100ms") as journal:
        fill(journal, realistic(3000, seed=0))
        journal.archive(tmp_path / "arch", keep_last=0)
    (store / "commit.log").unlink()  # the file as it is, not as the log's checkpoint says
    data = (store / "data.mdb").read_bytes()
    offset = max((0, 4096), key=lambda off: _META.unpack_from(data, off + _PAGE_HEADER)[4])
    psize, last_pg = _META.unpack_from(data, offset + _PAGE_HEADER)[2:4]
    size = needed_size(store / "data.mdb")
    assert size < (last_pg + 1) * psize  # (the situation this test is about)
    os.truncate(store / "data.mdb", size)
    check = ("import sys; from krepis import SovereignJournal\n"
             "with SovereignJournal(sys.argv[1], create=False) as j: print(j.verify().entries)")
    out = subprocess.run([sys.executable, "-c", check, str(store)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == str(3000 - 2816), out.stderr
    os.truncate(store / "data.mdb", size // 2)
    with pytest.raises(CorruptStorageError, match="truncated"):
        SovereignJournal(store, create=False)


def test_a_minimum_step_archives_all_due_bundles_or_none(tmp_path: Path) -> None:
    arch = tmp_path / "archive"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1000))
        logs = journal.query(order="append", newest_first=False)
        young = logs[600].timestamp  # bundles 0 and 1 are older, bundle 2 is not
        assert journal._archive_step(arch, before=young, min_bundles=3).entries == 0
        assert journal._archive_step(arch, keep_last=0, min_bundles=4).entries == 0
        assert journal._archive_step(arch, before=young, min_bundles=2).entries == 512
        assert journal._archive_step(arch, keep_last=0, min_bundles=1).entries == 256
