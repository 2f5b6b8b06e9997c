"""``tlog export`` writes only into directories and files it made — never through a symbolic
link below the export directory, never into a directory that may hold another history — and
``verify --tlog`` reads only regular files of bounded size (a FIFO must not hang it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from krepis import LogStatus, SovereignJournal, TransactionLog, ValidationError
from krepis.tlog._note import generate_signer
from krepis.tlog._tiles import check_tiles

KREPIS = str(Path(sys.executable).parent / "krepis")
SIGNER = generate_signer("example.com/export")


def _fill(journal: SovereignJournal, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        journal.log_transaction(TransactionLog(i, "op", f"r{i}", LogStatus.Completed))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def journal(tmp_path: Path):  # type: ignore[no-untyped-def]
    with SovereignJournal(tmp_path / "store") as j:
        _fill(j, 300)
        j.sign_checkpoint(SIGNER)
        yield j


def test_a_dangling_marker_link_is_refused_and_nothing_is_written(journal: SovereignJournal,
                                                                  tmp_path: Path) -> None:
    out, target = tmp_path / "tiles", tmp_path / "elsewhere" / "planted"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / ".krepis-log").symlink_to(target)
    with pytest.raises(ValidationError, match=r"tiles/\.krepis-log is a symbolic link: krepis writes below"):
        journal.export_tiles(out)
    assert not target.exists() and sorted(os.listdir(out)) == [".krepis-log"]


def test_a_linked_directory_below_the_export_is_refused(journal: SovereignJournal, tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "tiles", tmp_path / "elsewhere"
    journal.export_tiles(out)
    elsewhere.mkdir()
    for rel in ("tile/entries", "tile/0"):  # a link in place of a directory the export writes into
        moved = out / (rel + ".moved")
        (out / rel).rename(moved)
        (out / rel).symlink_to(elsewhere, target_is_directory=True)
        _fill(journal, 1, start=1000)
        with pytest.raises(ValidationError, match=f"tiles/{rel} is a symbolic link"):
            journal.export_tiles(out, SIGNER)
        assert list(elsewhere.iterdir()) == []
        (out / rel).unlink()
        moved.rename(out / rel)
    tile = out / "tile"
    tile.rename(tmp_path / "tile.moved")
    tile.symlink_to(tmp_path / "tile.moved", target_is_directory=True)
    before = _files(tmp_path / "tile.moved")
    with pytest.raises(ValidationError, match="tiles/tile is a symbolic link"):
        journal.export_tiles(out, SIGNER)
    assert _files(tmp_path / "tile.moved") == before


def test_a_linked_full_tile_is_refused_not_kept(journal: SovereignJournal, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    journal.export_tiles(out)
    full = out / "tile" / "0" / "000"
    planted = tmp_path / "planted"
    planted.write_bytes(full.read_bytes())
    full.unlink()
    full.symlink_to(planted)
    with pytest.raises(ValidationError, match="tile/0/000 is a symbolic link"):
        journal.export_tiles(out)


def test_a_nonempty_directory_without_a_marker_is_refused(journal: SovereignJournal, tmp_path: Path) -> None:
    """It may hold the tiles of another history: full tiles there would be kept and published
    under this log's checkpoint."""
    other = tmp_path / "other"
    with SovereignJournal(tmp_path / "other-store") as j:
        _fill(j, 300, start=5000)
        j.export_tiles(other, generate_signer("example.com/other"))
    (other / ".krepis-log").unlink()
    before = _files(other)
    with pytest.raises(ValidationError, match=r"other is not empty and has no \.krepis-log marker"):
        journal.export_tiles(other)
    assert _files(other) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert journal.export_tiles(empty) >= 4  # an empty directory, or a new one, is fine
    assert journal.export_tiles(tmp_path / "new" / "dir") >= 4
    assert check_tiles(str(empty), [SIGNER.verifier()]).entries == 300


def test_the_export_directory_itself_may_be_a_link(journal: SovereignJournal, tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    journal.export_tiles(tmp_path / "link")
    assert check_tiles(str(real), [SIGNER.verifier()]).entries == 300


def test_an_export_cut_short_is_resumed_not_refused(tmp_path: Path) -> None:
    """The marker is written before the tiles: an export that fails half way (here: archived
    entries read with live_only) leaves a directory the next export continues."""
    out, arch = tmp_path / "tiles", tmp_path / "archive"
    with SovereignJournal(tmp_path / "store") as j:
        _fill(j, 700)
        j.archive(arch, keep_last=0)
        with pytest.raises(ValidationError, match="are archived"):
            j.export_tiles(out, SIGNER, live_only=True)
        assert (out / ".krepis-log").exists() and not (out / "checkpoint").exists()
        j.export_tiles(out, archive=arch)
    assert check_tiles(str(out), [SIGNER.verifier()]).entries == 700


def _verify_tlog(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KREPIS, "verify", "--tlog", str(out), "--vkey", str(SIGNER.verifier())],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("rel", ["tile/0/001.p/44", "tile/entries/000", "checkpoint"])
def test_verify_tlog_refuses_a_fifo_instead_of_hanging(journal: SovereignJournal, tmp_path: Path,
                                                       rel: str) -> None:
    out = tmp_path / "tiles"
    journal.export_tiles(out)
    assert _verify_tlog(out).returncode == 0
    (out / rel).unlink()
    os.mkfifo(out / rel)
    proc = _verify_tlog(out)  # (before: blocked in open() until the timeout)
    assert proc.returncode == 1 and f"{rel} is not a regular file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_verify_tlog_refuses_links_and_oversized_files(journal: SovereignJournal, tmp_path: Path) -> None:
    out = tmp_path / "tiles"
    journal.export_tiles(out)
    bundle = out / "tile" / "entries" / "001.p" / "44"
    saved = tmp_path / "bundle"
    saved.write_bytes(bundle.read_bytes())
    bundle.unlink()
    bundle.symlink_to(saved)
    with pytest.raises(ValidationError, match=r"001\.p/44 is a symbolic link"):
        check_tiles(str(out), [SIGNER.verifier()])
    bundle.unlink()
    with open(bundle, "wb") as f:  # sparse: a bundle of 44 entries is at most 44 · (2 + 65535) bytes
        f.truncate(44 * (2 + 65535) + 1)
    with pytest.raises(ValidationError, match=r"001\.p/44 is 2883629 bytes, more than the 2883628 it may"):
        check_tiles(str(out), [SIGNER.verifier()])
    bundle.write_bytes(saved.read_bytes())
    with open(out / "checkpoint", "ab") as f:
        f.truncate((1 << 20) + 1)
    with pytest.raises(ValidationError, match="checkpoint is 1048577 bytes, more than the 1048576"):
        check_tiles(str(out), [SIGNER.verifier()])


def test_a_refused_export_signs_no_checkpoint(journal: SovereignJournal, tmp_path: Path) -> None:
    """The directory is checked before ``--key`` signs a checkpoint into the store."""
    out = tmp_path / "tiles"
    out.mkdir()
    (out / "stray").write_text("not an export")
    _fill(journal, 1, start=1000)  # (a tree the fixture's checkpoint is not of)
    kept = journal.checkpoints()
    with pytest.raises(ValidationError, match="is not empty and has no"):
        journal.export_tiles(out, SIGNER)
    assert journal.checkpoints() == kept
