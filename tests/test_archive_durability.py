"""Durable before removed, checked before written, verified against checksums: each test here
fails when one plausible one-line bug is put into the archive (see each docstring)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from krepis import CorruptStorageError, SovereignJournal
from krepis.archive import archive_store
from test_archive import fill_fast, realistic
from test_archive_safety import MANIFEST, rewrite_manifest

from stracekit import joined

TESTS = Path(__file__).parent


class Watched:
    """The real store, watched: at each removal, the archive's files on disk must already hold
    what is removed (the manifest naming it, its segments matching their checksums)."""

    def __init__(self, storage: Any, arch: Path) -> None:
        self._storage, self._arch, self.removals = storage, arch, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        manifest = json.loads((self._arch / MANIFEST).read_bytes())
        log = next(x for x in manifest["logs"] if x["epoch"] == epoch)
        assert log["first_seq"] + 256 * log["bundles"] >= upto_seq, "removed before the manifest named it"
        for seg in log["segments"]:
            data = (self._arch / seg["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == seg["sha256"]
        self.removals.append(upto_seq)
        return int(self._storage.drop_prefix(epoch, upto_seq))


def test_entries_leave_the_store_only_once_the_manifest_naming_them_is_on_disk(tmp_path: Path) -> None:
    """Kills: the store's prefix dropped before the manifest naming the new segment is written
    (a crash between the two would lose the entries)."""
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(5 * 256 + 10))
        watched = Watched(journal._live(), arch)
        for _ in range(3):  # one bundle a step: three steps, each removal watched
            archive_store(watched, arch, durable=False, before=None, keep_last=0,  # type: ignore[arg-type]
                          max_bundles=1)

        def die(name: str) -> None:
            if name == "manifest":
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # then a run that dies before its removal …
            archive_store(watched, arch, durable=False, before=None, keep_last=0,  # type: ignore[arg-type]
                          max_bundles=1, on_step=die)
        report = archive_store(watched, arch, durable=False, before=None,  # type: ignore[arg-type]
                               keep_last=0)  # … and the run that completes it, then moves the rest
        assert report.completed_previous
        assert watched.removals == [256, 512, 768, 1024, 1280]
        assert len(journal.query(archive=arch)) == 5 * 256 + 10


def test_a_bundle_that_does_not_match_the_tree_is_never_written(pg_url: str, tmp_path: Path) -> None:
    """Kills: the bundle's hash not checked against the tree before the bundle is written. (On
    PostgreSQL an entry can be changed behind the tree's back with plain SQL.)"""
    import psycopg

    arch = tmp_path / "cold"
    with SovereignJournal(pg_url, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(3 * 256 + 10))
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE krepis_entries SET duration_us = 99 WHERE seq = 300")
        with pytest.raises(CorruptStorageError, match=r"entries 256…511 do not match the stored Merkle hash"):
            journal.archive(arch, keep_last=0)
        assert [p.name for p in arch.iterdir()] == [".lock"]  # nothing written but the lock file
        assert journal.live_first_seq() == 0


def test_verify_checks_every_segment_against_its_checksum(tmp_path: Path) -> None:
    """Kills: verify_archive not checking the segment files' sha256 checksums. (Reads check a
    segment's index and bundles, not its whole-file checksum: only verify does.)"""
    arch = tmp_path / "cold"
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(3 * 256))
        journal.archive(arch, keep_last=256)
        journal.archive(arch, keep_last=0)
        assert journal.verify_archive(arch).segments == 2
        name = "log000000-000000000002.kseg"
        rewrite_manifest(arch, lambda m: m["logs"][0]["segments"][1].__setitem__("sha256", "0" * 64))
        assert len(journal.query(archive=arch)) == 3 * 256  # (the data is fine)
        with pytest.raises(CorruptStorageError, match=f"{name} does not match its checksum"):
            journal.verify_archive(arch)


_TRACED = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import krepis.archive._writer
    from krepis import SovereignJournal
    from test_archive import fill_fast, realistic
    krepis.archive._writer.DICT_MIN_BUNDLES = 2   # a dictionary file too
    with SovereignJournal({store!r}, flush="sync") as journal:
        fill_fast(journal, realistic(3 * 256 + 10))
        os.write(2, b"<archive>")
        journal.archive({arch!r}, keep_last=256)
        os.write(2, b"</archive>")
""")


@pytest.mark.usefixtures("strace")
def test_every_archive_file_is_fsynced_before_its_rename_and_before_any_removal(tmp_path: Path) -> None:
    """Kills: segment files (and the manifest, the dictionary) not fsynced before their rename, the
    directory not fsynced after it, and the removal's commit made before the manifest is durable.
    Counted at the system call, in a child traced with strace."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    trace = tmp_path / "trace"
    code = _TRACED.format(tests=str(TESTS), store=str(store), arch=str(arch))
    subprocess.run(["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
                    "trace=fsync,fdatasync,rename,renameat,renameat2,write", sys.executable, "-c", code],
                   check=True, timeout=120, capture_output=True)
    text = trace.read_text()
    inside = text[text.index("<archive>"):text.index("</archive>")]
    events: list[tuple[str, str]] = []  # ("sync", path) or ("rename", "temporary name -> name")
    for line in joined(inside):
        sync = re.search(r"\b(?:fsync|fdatasync)\(\d+<([^>]*)>\)", line)
        if sync:
            events.append(("sync", sync.group(1)))
        moved = re.search(r"\brename(?:at2?)?\(\d+<([^>]*)>, \"([^\"]+)\", \d+<[^>]*>, \"([^\"]+)\"", line)
        if moved:
            assert moved.group(1) == str(arch), line
            events.append(("rename", f"{moved.group(2)} -> {moved.group(3)}"))
    renames = [(i, e[1].split(" -> ")) for i, e in enumerate(events) if e[0] == "rename"]
    assert sorted(dst for _, (_, dst) in renames if not dst.startswith("dict-")) == [
        MANIFEST, "log000000-000000000000.kseg"]
    assert len(renames) == 3, events  # the dictionary, the segment, the manifest
    for i, (src, dst) in renames:
        assert ("sync", str(arch / src)) in events[:i], f"{dst} renamed before its file was fsynced"
        assert events[i + 1] == ("sync", str(arch)), f"the directory not fsynced right after {dst}'s rename"
        assert re.fullmatch(rf"\.tmp-{re.escape(dst)}\.[0-9a-f]{{16}}", src)
    manifest_at = next(i for i, (_, dst) in renames if dst == MANIFEST)
    segment_at = next(i for i, (_, dst) in renames if dst.endswith(".kseg"))
    store_syncs = [i for i, e in enumerate(events) if e[0] == "sync" and e[1].startswith(str(store) + "/")]
    assert not [i for i in store_syncs if segment_at < i <= manifest_at + 1], \
        "the store committed between the segment and the durable manifest"
    assert [i for i in store_syncs if i > manifest_at + 1], "the removal was not made durable"
