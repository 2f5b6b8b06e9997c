"""Every file krepis creates outside a live store — a restore's staging copy, a backup, a
migration's new store, an export — is created exclusively, never through a planted link, in a
directory that passed the checks of a store directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, StorageError, TransactionLog
from krepis.storage import backup, migrate, restore
from rawlmdb import edit

from conftest import make_store, tree_snapshot

FIXTURE = Path(__file__).parent / "fixtures" / "format1-store"
VICTIM = b"precious file of the operator\n" * 40


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    victim.chmod(0o644)
    return victim


def _untouched(victim: Path) -> None:
    assert victim.read_bytes() == VICTIM
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def _krepis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "krepis", *args], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


# --- restore ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [".restore.mdb", ".restore"])
def test_restore_never_writes_through_a_link_planted_in_the_destination(tmp_path: Path, name: str) -> None:
    """The review's attack: dest/.restore.mdb -> FILE; `krepis restore bk --force` overwrote FILE
    (and made dest/data.mdb that link). Also the staging directory's name, as a link to a
    directory of the operator's."""
    make_store(tmp_path / "live", 30)
    backup(tmp_path / "live", tmp_path / "bk")
    victim = _victim(tmp_path)
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_bytes(VICTIM)
    dest = make_store(tmp_path / "dest", 5)
    (dest / name).symlink_to(victim if name.endswith(".mdb") else victim_dir)
    done = _krepis("restore", str(tmp_path / "bk"), "--force", "--storage", str(dest))
    assert done.returncode == 0, done.stderr
    _untouched(victim)
    assert sorted(os.listdir(victim_dir)) == ["keep"] and (victim_dir / "keep").read_bytes() == VICTIM
    data = os.lstat(dest / "data.mdb")
    assert stat.S_ISREG(data.st_mode) and stat.S_IMODE(data.st_mode) == 0o600
    assert not (dest / ".restore").exists()
    with SovereignJournal(dest, create=False) as journal:
        assert journal.journal_count() == 30
        journal.verify()


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_restore_refuses_a_destination_others_can_write(tmp_path: Path, mode: int) -> None:
    make_store(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    dest = tmp_path / "dest"
    dest.mkdir()
    dest.chmod(mode)
    with pytest.raises(StorageError, match=rf"{dest} is writable by .* chmod 700"):
        restore(tmp_path / "bk", dest)
    assert os.listdir(dest) == []
    shared = tmp_path / "shared"  # a parent others can change: they could swap the directory
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(StorageError, match="which users other than you and root can change"):
        restore(tmp_path / "bk", shared / "dest")
    assert os.listdir(shared) == []


def test_restore_never_uses_a_directory_that_is_not_a_store(tmp_path: Path) -> None:
    """The careless `krepis restore bk --force --storage ~`."""
    make_store(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "notes.txt").write_text("mine")
    (home / "commit.log").write_text("not krepis's")
    before = tree_snapshot(home)
    with pytest.raises(StorageError, match=r"is not a krepis store and is not empty \(notes.txt\)"):
        restore(tmp_path / "bk", home, force=True)
    assert tree_snapshot(home) == before


def test_restore_refuses_the_backup_itself_as_destination(tmp_path: Path) -> None:
    make_store(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    before = tree_snapshot(tmp_path / "bk")
    with pytest.raises(StorageError, match="is the destination"):
        restore(tmp_path / "bk", tmp_path / "bk", force=True)
    assert tree_snapshot(tmp_path / "bk") == before


def test_a_failed_restore_leaves_no_directory_it_created(tmp_path: Path) -> None:
    make_store(tmp_path / "live")
    backup(tmp_path / "live", tmp_path / "bk")
    edit(tmp_path / "bk", lambda txn, db: txn.put((1).to_bytes(8, "big"), b"\0", db=db(b"entries")))
    with pytest.raises(StorageError, match=rf"backup|{tmp_path / 'bk'}"):
        restore(tmp_path / "bk", tmp_path / "new" / "dest")
    assert not (tmp_path / "new" / "dest").exists()


# --- backup -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_backup_refuses_a_destination_others_can_write(tmp_path: Path, mode: int) -> None:
    """Whoever can write the destination could plant data.mdb -> FILE while the copy starts."""
    make_store(tmp_path / "live")
    dest = tmp_path / "bk"
    dest.mkdir()
    dest.chmod(mode)
    with pytest.raises(StorageError, match=rf"{dest} is writable by"):
        backup(tmp_path / "live", dest)
    assert os.listdir(dest) == [] and stat.S_IMODE(dest.stat().st_mode) == mode
    with pytest.raises(StorageError, match="which users other than you and root can change"):
        backup(tmp_path / "live", dest / "inside")  # a new directory in it: refused, removed
    assert os.listdir(dest) == []


def test_backup_never_writes_through_a_link_and_makes_private_files(tmp_path: Path) -> None:
    make_store(tmp_path / "live")
    victim = _victim(tmp_path)
    dest = tmp_path / "bk"
    dest.mkdir(mode=0o700)
    (dest / "data.mdb").symlink_to(victim)
    with pytest.raises(StorageError, match="not an empty directory"):
        backup(tmp_path / "live", dest)
    _untouched(victim)
    old = os.umask(0)
    try:
        backup(tmp_path / "live", tmp_path / "new" / "bk")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "bk").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) & 0o022 == 0
    for name in os.listdir(tmp_path / "new" / "bk"):
        assert stat.S_IMODE((tmp_path / "new" / "bk" / name).stat().st_mode) == 0o600, name


# --- migrate ----------------------------------------------------------------------------------

def test_migrate_never_builds_through_a_planted_link(tmp_path: Path) -> None:
    """`.migrate` -> a directory of the operator's: the new store used to be built in it."""
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    store.chmod(0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_bytes(VICTIM)
    (store / ".migrate").symlink_to(elsewhere)
    assert migrate(store).entries == 305
    assert sorted(os.listdir(elsewhere)) == ["keep"]
    assert set(os.listdir(store)) <= {"data.mdb", "lock.mdb"}
    assert stat.S_IMODE((store / "data.mdb").stat().st_mode) == 0o600
    with SovereignJournal(store, create=False) as journal:
        assert journal.journal_count() == 305


def test_migrate_refuses_a_store_directory_others_can_write(tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(FIXTURE, store)
    store.chmod(0o777)
    before = tree_snapshot(store)
    with pytest.raises(StorageError, match=rf"{store} is writable by other users"):
        migrate(store)
    assert tree_snapshot(store) == before and not (store / ".migrate").exists()


# --- export -o FILE ---------------------------------------------------------------------------

def test_export_never_writes_through_a_link(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    victim = _victim(tmp_path)
    out = tmp_path / "trail.jsonl"
    out.symlink_to(victim)
    done = _krepis("--storage", str(store), "export", "-o", str(out))
    assert done.returncode == 1
    assert "is a symbolic link" in done.stderr and "Traceback" not in done.stderr
    _untouched(victim)
    assert os.readlink(out) == str(victim)


def test_export_replaces_the_file_whole_or_not_at_all(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", 40)
    out = tmp_path / "trail.jsonl"
    out.write_text("the previous export\n")
    # entry 20 becomes unreadable: the export fails on its way
    edit(store, lambda txn, db: txn.put((20).to_bytes(8, "big"), b"\0" * 14, db=db(b"entries")))
    failed = _krepis("--storage", str(store), "export", "-o", str(out))
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert out.read_text() == "the previous export\n"
    assert sorted(os.listdir(tmp_path)) == ["store", "trail.jsonl"]  # no temporary file left
    good = make_store(tmp_path / "good", 3)
    done = _krepis("--storage", str(good), "export", "-o", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith('{"seq":0,"timestamp":0,')
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["good", "store", "trail.jsonl"]


def test_export_to_a_fifo_streams_into_it(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", 3)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    done = _krepis("--storage", str(store), "export", "-o", str(fifo))
    reader.join(60)
    assert done.returncode == 0, done.stderr
    assert len(got[0].splitlines()) == 3
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_temporary_name_taken_by_a_link_is_never_written(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file beside FILE gets a random name; if a link was planted under the name
    drawn, that name is skipped and the link's target is never touched."""
    from krepis.storage import _outfiles
    from krepis.storage._outfiles import atomic_output

    victim = _victim(tmp_path)
    names = iter(["planted", "free"])
    monkeypatch.setattr(_outfiles.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".out.planted.tmp").symlink_to(victim)
    with atomic_output(str(tmp_path / "out")) as f:
        f.write("new\n")
    assert (tmp_path / "out").read_text() == "new\n"
    _untouched(victim)
    assert os.readlink(tmp_path / ".out.planted.tmp") == str(victim)
    assert not (tmp_path / ".out.free.tmp").exists()


def test_create_exclusive_never_opens_an_existing_name(tmp_path: Path) -> None:
    from krepis.storage._outfiles import create_exclusive

    victim = _victim(tmp_path)
    (tmp_path / "data.mdb").symlink_to(victim)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(StorageError, match=r"data\.mdb is a symbolic link"):
            create_exclusive("data.mdb", fd, str(tmp_path / "data.mdb"))
        (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
        with pytest.raises(StorageError, match="dangling is a symbolic link"):
            create_exclusive("dangling", fd, str(tmp_path / "dangling"))
        assert not (tmp_path / "nowhere").exists()
        old = os.umask(0)
        try:
            os.close(create_exclusive("new", fd, str(tmp_path / "new")))
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    finally:
        os.close(fd)
    _untouched(victim)


def test_every_writer_makes_a_whole_journal_readable_again(tmp_path: Path) -> None:
    """What the three produce is a store (or file) krepis reads in full."""
    with SovereignJournal(tmp_path / "live") as journal:
        journal.record(TransactionLog(1, "op", "r", LogStatus.Completed), increment="op")
    backup(tmp_path / "live", tmp_path / "bk")
    restore(tmp_path / "bk", tmp_path / "back")
    with SovereignJournal(tmp_path / "back", create=False) as journal:
        assert journal.op_counts() == {"op": 1}
