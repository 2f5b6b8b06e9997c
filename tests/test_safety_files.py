"""The store directory as an attacker or a careless operator leaves it: symbolic links, foreign
owners, loose permissions, truncated or emptied files. Real files, real LMDB, real processes.

Each case checks two things: krepis refuses with an error naming the path and the reason, and
nothing outside the store (a link's target) changed by a single byte.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import (
    CorruptStorageError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from rawlmdb import needed_size

from conftest import tree_snapshot

NOBODY = 65534
VICTIM = b"root:x:0:0:precious system file\n" * 50


def make_store(path: Path, entries: int = 3) -> None:
    with SovereignJournal(path) as journal:
        for i in range(entries):
            journal.record(TransactionLog(i, "op", f"r{i}", LogStatus.Completed), increment="op")


def krepis_stats(store: Path) -> subprocess.CompletedProcess[str]:
    """The read-only CLI command, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "krepis", "stats", "--storage", str(store)],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


OPENERS = {
    "create": lambda p: SovereignJournal(p).close(),
    "read-only": lambda p: SovereignJournal(p, create=False).close(),
}


# --- symbolic links ---------------------------------------------------------------------------

@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_lock_file_symlink_alone_is_not_followed(tmp_path: Path, opener: str) -> None:
    """The issue's attack: a directory holding only lock.mdb -> a system file."""
    victim = tmp_path / "passwd"
    victim.write_bytes(VICTIM)
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "lock.mdb").symlink_to(victim)
    with pytest.raises(StorageError, match=r"lock\.mdb is a symbolic link") as info:
        OPENERS[opener](store)
    assert info.value.path == str(store)
    assert victim.read_bytes() == VICTIM
    assert sorted(os.listdir(store)) == ["lock.mdb"]  # no data.mdb created beside it


@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb", "commit.log"])
def test_symlink_in_an_existing_store_is_not_followed(tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    store = tmp_path / "store"
    make_store(store)
    if name == "data.mdb":  # a link to the real data file of a store elsewhere
        shutil.copytree(store, tmp_path / "elsewhere")
        victim = tmp_path / "elsewhere" / "data.mdb"
    else:
        victim.write_bytes(VICTIM)
    before = victim.read_bytes()
    (store / name).unlink()
    (store / name).symlink_to(victim)
    for opener in OPENERS.values():
        with pytest.raises(StorageError, match=rf"{name.replace('.', '[.]')} is a symbolic link"):
            opener(store)
    proc = krepis_stats(store)
    assert proc.returncode != 0
    assert f"{name} is a symbolic link" in proc.stderr and "Traceback" not in proc.stderr
    assert victim.read_bytes() == before


@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_data_file_symlink_to_an_empty_file_is_not_initialised(tmp_path: Path, opener: str) -> None:
    target = tmp_path / "empty"
    target.write_bytes(b"")
    store = tmp_path / "store"
    store.mkdir(mode=0o700)
    (store / "data.mdb").symlink_to(target)
    with pytest.raises(StorageError, match=r"data\.mdb is a symbolic link"):
        OPENERS[opener](store)
    assert target.read_bytes() == b""
    assert sorted(os.listdir(store)) == ["data.mdb"]


def test_dangling_lock_symlink_does_not_create_its_target(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    (store / "lock.mdb").unlink()
    (store / "lock.mdb").symlink_to(tmp_path / "created-by-link")
    with pytest.raises(StorageError, match=r"lock\.mdb is a symbolic link"):
        SovereignJournal(store)
    assert not (tmp_path / "created-by-link").exists()


@pytest.mark.parametrize("name", ["lock.mdb", "commit.log"])
@pytest.mark.parametrize("kind", ["directory", "fifo", "hard link"])
def test_store_files_must_be_plain_unshared_files(tmp_path: Path, kind: str, name: str) -> None:
    store = tmp_path / "store"
    make_store(store)
    lock = store / name
    lock.unlink()
    if kind == "directory":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        victim = tmp_path / "victim"
        victim.write_bytes(VICTIM)
        os.link(victim, lock)
    with pytest.raises(StorageError, match=name.replace(".", r"\.")):
        SovereignJournal(store)
    if kind == "hard link":
        assert (tmp_path / "victim").read_bytes() == VICTIM


def test_a_symlinked_store_path_is_fine(tmp_path: Path) -> None:
    """Only the store's own entries are never followed; the path to the directory may be a link."""
    make_store(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with SovereignJournal(tmp_path / "link", create=False) as journal:
        assert journal.journal_count() == 3


# --- owners and permissions -------------------------------------------------------------------

@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory outside pytest's private tmp root, like /tmp: other users can reach it."""
    base = Path(tempfile.mkdtemp(prefix="krepis-safety-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory of another user")
@pytest.mark.parametrize("prepared", [False, True])
def test_directory_of_another_user_is_refused(shared_tmp: Path, prepared: bool) -> None:
    """Run as root against a store another (unprivileged) user controls: refused, says why."""
    victim = shared_tmp / "victim"
    victim.write_bytes(VICTIM)
    store = shared_tmp / "store"
    store.mkdir()
    if prepared:
        (store / "lock.mdb").symlink_to(victim)
    os.chown(store, NOBODY, NOBODY)
    store.chmod(0o777)
    before = tree_snapshot(store) if not prepared else None
    for opener in OPENERS.values():
        with pytest.raises(StorageError, match=rf"{store} is owned by uid {NOBODY}") as info:
            opener(store)
        assert "could replace" in str(info.value)
    assert victim.read_bytes() == VICTIM
    if before is not None:
        assert tree_snapshot(store) == before


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777, 0o720])
def test_directory_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    store = tmp_path / "store"
    make_store(store)
    store.chmod(mode)
    with pytest.raises(StorageError, match=rf"{store} is writable by (its group|other users)"):
        SovereignJournal(store, create=False)
    store.chmod(0o700)
    SovereignJournal(store, create=False).close()


def test_new_store_gets_private_modes_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        make_store(tmp_path / "a" / "b" / "s")
    finally:
        os.umask(old)
    store = tmp_path / "a" / "b" / "s"
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    for parent in (tmp_path / "a", tmp_path / "a" / "b"):  # created, never writable by others
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o755
    for name in ("data.mdb", "lock.mdb", "commit.log"):
        assert stat.S_IMODE(os.lstat(store / name).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_parent_others_can_change_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can rename entries of a parent can swap the whole store directory."""
    parent = tmp_path / "shared"
    make_store(parent / "store")
    parent.chmod(mode)
    with pytest.raises(StorageError, match=rf"is inside {parent} \(owner uid {os.geteuid()}.*mode "
                                           rf"{mode:04o}\), which users other than you and root"):
        SovereignJournal(parent / "store", create=False)
    parent.chmod(mode | stat.S_ISVTX)  # sticky, like /tmp: others cannot rename our entries
    SovereignJournal(parent / "store", create=False).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files of another user")
def test_path_through_others_symlink_or_directory_is_refused(shared_tmp: Path) -> None:
    make_store(shared_tmp / "real" / "store")
    link = shared_tmp / "link"
    link.symlink_to(shared_tmp / "real")
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(StorageError, match=rf"goes through {link}, a symbolic link owned by uid {NOBODY}"):
        SovereignJournal(link / "store", create=False)
    os.lchown(link, 0, 0)
    SovereignJournal(link / "store", create=False).close()  # our own link is fine
    os.chown(shared_tmp / "real", NOBODY, NOBODY)
    with pytest.raises(StorageError, match=rf"is inside {shared_tmp / 'real'} \(owner uid {NOBODY}"):
        SovereignJournal(shared_tmp / "real" / "store", create=False)


# --- truncated and empty data files -----------------------------------------------------------

def grown_store(path: Path) -> None:
    with SovereignJournal(path) as journal:
        for i in range(60):
            journal.record(TransactionLog(i, "op", "r" * 200 + str(i), LogStatus.Completed,
                                          error="x" * 3000), increment="op")


@pytest.mark.parametrize("keep", ["half", "two pages", "one page less"])
def test_truncated_data_file_is_refused_naming_it(tmp_path: Path, keep: str) -> None:
    store = tmp_path / "store"
    grown_store(store)
    data = store / "data.mdb"
    size = data.stat().st_size
    if keep == "one page less":  # one page less than the file needs: the last page in use
        size = needed_size(data)
    cut = {"half": size // 2, "two pages": 8192, "one page less": size - 4096}[keep]
    os.truncate(data, cut)
    before = tree_snapshot(store)
    for opener in OPENERS.values():
        with pytest.raises(CorruptStorageError, match=rf"{data} is truncated") as info:
            opener(store)
        assert info.value.path == str(store)
    proc = krepis_stats(store)  # used to die of SIGBUS (exit -7 / 135) with no message
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert f"{data} is truncated" in proc.stderr
    assert tree_snapshot(store) == before


def test_empty_data_file_is_refused_not_reinitialised(tmp_path: Path) -> None:
    store = tmp_path / "store"
    make_store(store)
    os.truncate(store / "data.mdb", 0)
    for opener in OPENERS.values():
        with pytest.raises(CorruptStorageError, match=r"data\.mdb is empty"):
            opener(store)
    proc = krepis_stats(store)
    assert proc.returncode == 1 and "data.mdb is empty" in proc.stderr
    assert (store / "data.mdb").stat().st_size == 0


# --- paths the OS cannot take -----------------------------------------------------------------

@pytest.mark.parametrize("bad", ["a\0b", "\ud800x"])
def test_unusable_path_characters_are_a_validation_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValidationError, match="storage path"):
        SovereignJournal(str(tmp_path / bad))
    assert os.listdir(tmp_path) == []


def test_path_with_invalid_utf8_works_and_errors_cleanly(tmp_path: Path) -> None:
    name = os.fsdecode(b"st\xffore")  # what a shell hands Python for a non-UTF-8 file name
    with SovereignJournal(tmp_path / name) as journal:
        journal.increment_op_count("op")
    with SovereignJournal(tmp_path / name, create=False) as journal:
        assert journal.recover_op_count("op") == 1
    assert os.listdir(os.fsencode(tmp_path)) == [b"st\xffore"]


def test_errors_are_journal_errors(tmp_path: Path) -> None:
    with pytest.raises(JournalError):
        SovereignJournal(tmp_path / "none", create=False)
