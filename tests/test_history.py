"""The audit trail in daily use: the store knows its archive, and every read — API and CLI —
covers the whole history, live and archived, by default; ``live_only``/``--live-only`` narrows;
a missing or moved archive is an error naming it, never a shorter history."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from krepis import SovereignJournal, StorageError, ValidationError
from krepis.archive import archive_store
from krepis.cli import cli
from krepis.tlog import leaf_hash, verify_inclusion
from krepis.tlog._note import generate_signer
from test_archive import fill_fast, realistic

KREPIS = str(Path(sys.executable).parent / "krepis")


@pytest.fixture(params=["lmdb", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "store")


def _archived(location: str, arch: Path, n: int = 3000, keep: int = 500,
              seed: int = 1) -> list:  # type: ignore[type-arg]
    """A journal of ``n`` entries whose oldest full bundles (all but ``keep``) were archived."""
    with SovereignJournal(location, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(n, seed=seed))
        everything = journal.query(order="append", newest_first=False)
        journal.archive(arch, keep_last=keep)
    return everything


def test_every_read_covers_the_whole_history_by_default(location: str, tmp_path: Path) -> None:
    arch = tmp_path / "cold"
    everything = _archived(location, arch)
    live_first = (3000 - 500) // 256 * 256  # 2304
    by_time = sorted(everything, key=lambda x: (x.timestamp, x.seq), reverse=True)
    with SovereignJournal(location, create=False) as journal:
        assert journal.get_archive_dir() == str(arch)
        counts = journal.entry_counts()
        assert (counts.live, counts.archived, counts.total) == (3000 - live_first, live_first, 3000)
        assert (counts.first_seq, counts.live_first_seq, counts.archive) == (0, live_first, str(arch))
        assert journal.journal_count() == 3000
        assert journal.journal_count(live_only=True) == 3000 - live_first
        assert journal.query(order="append", newest_first=False) == everything
        assert journal.query() == by_time
        assert list(journal.iter_logs(newest_first=False)) == by_time[::-1]
        assert journal.get_recent_logs(5) == by_time[:5]
        assert journal.query(op_name="op_03", status="completed", limit=7) == \
            [x for x in by_time if x.op_name == "op_03" and x.status.value == "Completed"][:7]
        rid = everything[17].request_id
        assert journal.query(request_id=rid) == [x for x in by_time if x.request_id == rid]
        assert journal.entry(17) == everything[17]
        assert journal.query(live_only=True, order="append", newest_first=False) == everything[live_first:]
        with pytest.raises(KeyError):
            journal.entry(17, live_only=True)
        head = journal.tree_head()
        proof = journal.inclusion_proof(17)
        assert verify_inclusion(leaf_hash(everything[17].to_json().encode()), 17, head.size, proof.path,
                                head.root)
        report = journal.verify()
        assert (report.entries, report.archived, report.tree_size) == (3000 - live_first, live_first, 3000)
        assert report.archive is not None and report.archive.entries == live_first
        assert journal.verify(live_only=True).archived == 0
        for bad in ({"archive": arch, "live_only": True}, {"live_only": 1}):
            with pytest.raises((ValueError, TypeError)):
                journal.query(**bad)  # type: ignore[arg-type]
        # a later run needs no directory: the store's own
        assert journal.archive(keep_last=0).entries == 512
        assert journal.query(order="append", newest_first=False) == everything


def test_a_moved_archive_is_an_error_naming_it_until_its_move_is_recorded(location: str,
                                                                           tmp_path: Path) -> None:
    arch, moved = tmp_path / "cold", tmp_path / "elsewhere" / "cold"
    everything = _archived(location, arch)
    moved.parent.mkdir(mode=0o700)
    arch.rename(moved)
    with SovereignJournal(location, create=False) as journal:
        for read in (journal.query, lambda: journal.entry(3), lambda: journal.inclusion_proof(3),
                     journal.verify, journal.check_archive, lambda: journal.summary(),
                     lambda: list(journal.iter_logs(order="append"))):
            with pytest.raises(StorageError) as caught:
                read()
            message = str(caught.value)
            assert f"entries 0…2303 of the journal at {journal.path} are in its archive at {arch}" in message
            assert "krepis archive --set-dir DIR" in message and "--live-only" in message
            assert caught.value.path == str(arch)
        assert journal.journal_count() == 3000  # counted from the store's records: nothing to read
        assert len(journal.query(live_only=True)) == 3000 - 2304
        # the wrong directory is refused, and nothing is recorded
        empty = tmp_path / "empty"
        empty.mkdir(mode=0o700)
        with pytest.raises(ValidationError, match=r"holds entries of the journal at .* only up to seq none"):
            journal.set_archive_dir(empty)
        with pytest.raises(ValidationError, match=r"there is no archive at .*entries 0…2303"):
            journal.set_archive_dir(tmp_path / "nowhere")
        with pytest.raises(ValidationError, match=r"keeps its archive at .*split its history"):
            journal.archive(moved, keep_last=0)  # archiving into another directory: the move first
        assert journal.get_archive_dir() == str(arch)
        assert journal.set_archive_dir(moved) == str(moved)
        assert journal.get_archive_dir() == str(moved)
        assert journal.query(order="append", newest_first=False) == everything
        assert journal.archive(keep_last=0).entries == 512  # into the new place
    with SovereignJournal(location, create=False) as again:  # recorded in the store, for everyone
        assert again.get_archive_dir() == str(moved)
        assert again.verify().archived == 2816


def test_an_archive_of_another_store_is_refused_as_its_new_place(tmp_path: Path) -> None:
    _archived(str(tmp_path / "a"), tmp_path / "cold-a")
    _archived(str(tmp_path / "b"), tmp_path / "cold-b", seed=2)
    with SovereignJournal(tmp_path / "a") as journal:
        with pytest.raises(ValidationError, match="of another store"):
            journal.set_archive_dir(tmp_path / "cold-b")
        assert journal.get_archive_dir() == str(tmp_path / "cold-a")


def test_archived_entries_without_a_recorded_archive_are_an_error(tmp_path: Path) -> None:
    """A store archived by the archive layer alone (as a format-3 store migrated to format 4):
    it has archived entries and records no directory. Reads say so; they never come back short."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1000))
        archive_store(journal._live(), arch, durable=False, before=None, keep_last=0)
        assert journal.get_archive_dir() is None and journal.live_first_seq() == 768
        with pytest.raises(StorageError, match=r"entries 0…767 .* are archived, and the store records no "
                                               r"archive directory"):
            journal.query()
        assert len(journal.query(archive=arch)) == 1000  # an explicit one still works
        assert journal.set_archive_dir(arch) == str(arch)
        assert len(journal.query()) == 1000


def test_a_fresh_store_may_record_an_archive_before_it_exists(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(700))
        journal.set_archive_dir(tmp_path / "later")
        assert journal.query() and journal.check_archive() is None  # nothing archived: not needed
        assert journal.archive(keep_last=0).directory == str(tmp_path / "later")
        assert journal.check_archive() == str(tmp_path / "later")
        with pytest.raises(ValidationError, match="must not be empty"):
            journal.set_archive_dir("")
        with pytest.raises(TypeError):
            journal.set_archive_dir(b"/x")  # type: ignore[arg-type]


def test_retention_records_the_archive_and_reads_follow_it(tmp_path: Path) -> None:
    import time

    import krepis.journal._retention

    store, arch = tmp_path / "s", tmp_path / "cold"
    old = krepis.journal._retention.RETENTION_MIN_BUNDLES
    krepis.journal._retention.RETENTION_MIN_BUNDLES = 1  # type: ignore[misc]
    try:
        with SovereignJournal(store, flush="interval:20ms", retention="keep-last:100,every:0.05s",
                              archive=arch) as journal:
            fill_fast(journal, realistic(800))
            deadline = time.monotonic() + 30
            while journal.live_first_seq() < 512 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        krepis.journal._retention.RETENTION_MIN_BUNDLES = old  # type: ignore[misc]
    with SovereignJournal(store, retention="off") as journal:  # opened without archive=
        assert journal.get_archive_dir() == str(arch)
        assert journal.journal_count() == 800 == len(journal.query())
    with SovereignJournal(store, retention="keep-last:100") as journal:  # a policy finds it too
        assert journal._retention.directory == str(arch)  # type: ignore[attr-defined]


def test_reads_follow_an_archive_run_of_another_journal(tmp_path: Path) -> None:
    """A journal keeps its archive reader between reads; another journal (here: another instance)
    archiving more makes it read the new segments, never miss the moved entries."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    everything = _archived(str(store), arch, n=3000, keep=2000)
    with SovereignJournal(store) as reader, SovereignJournal(store) as other:
        assert reader.query(order="append", newest_first=False) == everything
        other.archive(keep_last=0)
        assert reader.live_first_seq() == 2816
        assert reader.query(order="append", newest_first=False) == everything
        assert reader.entry(2000) == everything[2000]


def test_newest_first_reads_open_no_archived_bundle_they_do_not_need(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from krepis.archive import ArchiveReader

    store, arch = tmp_path / "s", tmp_path / "cold"
    everything = _archived(str(store), arch)
    opened: list[int] = []
    real = ArchiveReader.bundle_data

    def counting(self: ArchiveReader, bundle: int) -> list[bytes]:
        opened.append(bundle)
        return real(self, bundle)

    monkeypatch.setattr(ArchiveReader, "bundle_data", counting)
    with SovereignJournal(store) as journal:
        by_time = sorted(everything, key=lambda x: (x.timestamp, x.seq), reverse=True)
        assert journal.get_recent_logs(20) == by_time[:20]
        assert journal.query(limit=600) == by_time[:600]  # (never a look past the limit)
        assert journal.query(order="append", limit=20) == everything[::-1][:20]
        assert journal.query(order="append", newest_first=False, after=2500) == everything[2501:]
        assert opened == []  # the newest entries are live: the archive's bundles stay shut
        assert journal.query(order="append", newest_first=False, limit=3) == everything[:3]
        assert opened == [0]


# -- the command line ------------------------------------------------------------------------------
def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KREPIS_STORAGE"}
    return subprocess.run([KREPIS, *args, "--storage", str(store)], capture_output=True, text=True, env=env,
                          timeout=120, stdin=subprocess.DEVNULL)


def test_the_cli_shows_the_whole_history_without_a_flag(tmp_path: Path) -> None:
    """The issue: after `krepis archive DIR --keep-last N`, stats, export, logs, verify and prove
    counted and showed the live entries only unless given --archive DIR."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(3000))
    done = _cli(store, "archive", str(arch), "--keep-last", "500")
    assert done.returncode == 0 and "archived 2304 entries" in done.stdout, done.stderr

    stats = json.loads(_cli(store, "stats", "--json").stdout)
    assert stats["journal_entries"] == 3000
    assert stats["entries"] == {"live": 696, "archived": 2304, "total": 3000}
    assert stats["archive"] == str(arch)
    assert stats["op_counts"] == {f"op_{i:02d}": n for i, n in
                                  ((int(k[3:]), v) for k, v in stats["op_counts"].items())}
    piped = _cli(store, "stats")
    assert f"3000 journal entries (696 live, 2304 archived in {arch})" in piped.stderr
    live = json.loads(_cli(store, "stats", "--json", "--live-only").stdout)
    assert live["journal_entries"] == 696

    out = tmp_path / "all.jsonl"
    exported = _cli(store, "export", "-o", str(out))
    assert exported.returncode == 0 and f"exported 3000 entries to {out}" in exported.stderr
    seqs = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(seqs) == 3000
    assert _cli(store, "export", "--live-only").stdout.count("\n") == 696

    assert _cli(store, "logs", "--count").stdout.strip() == "3000"
    assert _cli(store, "logs", "--count", "--status", "failed").stdout.strip() == \
        str(sum('"Failed"' in line for line in out.read_text().splitlines()))
    assert _cli(store, "logs", "-n", "all").stdout.count("\n") == 3000
    assert _cli(store, "logs", "-n", "all", "--live-only").stdout.count("\n") == 696
    assert _cli(store, "logs", "--count", "--live-only").stdout.strip() == "696"

    verified = _cli(store, "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: 696 entries and 2304 archived, tree of 3000 leaves")
    assert "archive: 2304 entries in 9 bundles" in verified.stdout
    checked = json.loads(_cli(store, "verify", "--json").stdout)
    assert (checked["entries"], checked["archived_entries"]) == (696, 2304)
    assert checked["archive"]["entries"] == 2304
    assert json.loads(_cli(store, "verify", "--json", "--live-only").stdout)["archived_entries"] == 0

    proof = json.loads(_cli(store, "prove", "5").stdout)
    exported = json.loads(out.read_text().splitlines()[5])
    assert proof["index"] == exported.pop("seq") == 5 and json.loads(proof["entry"]) == exported
    refused = _cli(store, "prove", "5", "--live-only")
    assert refused.returncode == 1 and "entries 0…255" in refused.stderr and "archived" in refused.stderr


def test_the_cli_names_a_moved_archive_and_set_dir_records_the_move(tmp_path: Path) -> None:
    store, arch, moved = tmp_path / "s", tmp_path / "cold", tmp_path / "moved"
    _archived(str(store), arch)
    arch.rename(moved)
    key = tmp_path / "key"
    key.write_text(f"{generate_signer('example.com/history')}\n")
    for args in (("stats",), ("export",), ("logs",), ("logs", "--count"), ("verify",), ("prove", "5"),
                 ("stats", "--by", "op"), ("tlog", "export", str(tmp_path / "tiles"), "--key", str(key))):
        done = _cli(store, *args)
        assert done.returncode == 1, args
        reason = f"in its archive at {arch}, which cannot be read: there is no archive at {arch}"
        assert reason in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "tiles").exists()  # refused before anything was written
    with SovereignJournal(store) as journal:
        assert journal.checkpoints() == []  # (nor signed)
    assert _cli(store, "stats", "--live-only").returncode == 0
    assert _cli(store, "logs", "--count", "--live-only").stdout.strip() == "696"
    wrong = _cli(store, "archive", "--set-dir", str(tmp_path / "nowhere"))
    assert wrong.returncode == 1 and "there is no archive at" in wrong.stderr
    usage = _cli(store, "archive", "--set-dir", str(moved), "--keep-last", "1")
    assert usage.returncode == 2 and "give it alone" in usage.stderr
    done = _cli(store, "archive", "--set-dir", str(moved))
    assert done.returncode == 0, done.stderr
    assert f"now records its archive at {moved} (was {arch}); it holds the 2304 archived" in done.stdout
    assert _cli(store, "logs", "--count").stdout.strip() == "3000"
    assert _cli(store, "verify").returncode == 0
    again = _cli(store, "archive", "--keep-last", "0")  # no DIR: the store's
    assert again.returncode == 0 and f"into {moved}" in again.stdout
    other = _cli(store, "archive", str(tmp_path / "another"), "--keep-last", "0")
    assert other.returncode == 1 and "split its history" in other.stderr
    assert not (tmp_path / "another").exists()


def test_the_cli_refuses_archive_and_live_only_together(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "cold"
    _archived(str(store), arch, n=600, keep=0)
    runner = CliRunner()
    for command in (["logs"], ["export"], ["stats"], ["verify"], ["prove", "1"], ["tlog", "serve"],
                    ["tlog", "export", str(tmp_path / "t")]):
        res = runner.invoke(cli, ["--storage", str(store), *command, "--archive", str(arch), "--live-only"])
        assert res.exit_code == 2 and "--archive and --live-only do not go together" in res.output, command


def test_a_copied_store_and_archive_are_moved_together(tmp_path: Path) -> None:
    """Restoring a store and its archive elsewhere: the copy still records the old place; one
    --set-dir records the new one, and both copies read whole."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    everything = _archived(str(store), arch)
    shutil.copytree(store, tmp_path / "s2")
    shutil.copytree(arch, tmp_path / "cold2")
    assert _cli(tmp_path / "s2", "archive", "--set-dir", str(tmp_path / "cold2")).returncode == 0
    shutil.rmtree(arch)
    with SovereignJournal(tmp_path / "s2") as journal:
        assert journal.query(order="append", newest_first=False) == everything


def test_the_asyncio_journal_has_the_same_history_api(tmp_path: Path) -> None:
    import asyncio

    from krepis import AsyncSovereignJournal

    store, arch = tmp_path / "s", tmp_path / "cold"
    everything = _archived(str(store), arch)

    async def use() -> None:
        async with AsyncSovereignJournal(store, retention="off") as journal:
            assert await journal.get_archive_dir() == str(arch)
            assert (await journal.entry_counts()).archived == 2304
            assert await journal.journal_count() == 3000
            assert await journal.journal_count(live_only=True) == 696
            assert await journal.entry(3) == everything[3]
            assert (await journal.verify()).archived == 2304
            assert (await journal.summary("status")).total.entries == 3000
            assert await journal.check_archive() == str(arch)
            assert await journal.set_archive_dir(arch) == str(arch)
            proof = await journal.inclusion_proof(3)
            assert proof.index == 3

    asyncio.run(use())


def test_a_read_in_progress_keeps_its_archive_reader(tmp_path: Path) -> None:
    """A journal keeps one archive reader; a read with another archive copy replaces it — while a
    streaming read is still using the first one, which must go on reading whole."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    everything = _archived(str(store), arch, n=3000, keep=0)
    shutil.copytree(arch, tmp_path / "copy")
    with SovereignJournal(store) as journal:
        stream = journal.iter_logs(order="append", newest_first=False)
        first = [next(stream) for _ in range(600)]  # (its reader: the store's archive)
        assert journal.query(archive=tmp_path / "copy", limit=1)  # another reader is kept now
        assert first + list(stream) == everything
