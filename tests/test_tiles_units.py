"""The tlog-tiles layout (``krepis.tlog._tiles``) one part at a time, on real files: tile paths
both ways, tile and bundle bytes, the bounded reader of regular files, the export directory that
never writes through a link, the export itself, and every refusal of ``check_tiles`` with its
exact text. The tree is built in memory from the Merkle primitives (no store)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

import pytest

from krepis import ValidationError
from krepis.tlog._cosig import generate_cosigner
from krepis.tlog._merkle import append_leaf, leaf_hash, node_hash, root_from_frontier
from krepis.tlog._note import Checkpoint, NoteError, format_checkpoint, generate_signer, sign_note
from krepis.tlog._tiles import (
    MAX_NOTE,
    ExportDir,
    TileCheck,
    bundle_bytes,
    check_tiles,
    encode_index,
    export_tiles,
    parse_tile_path,
    read_regular,
    tile_bytes,
    tile_path,
)

SIGNER = generate_signer("example.com/tiles")


class MemTree:
    """A tree of the given entries, held in memory: what a store gives ``export_tiles``."""

    def __init__(self, data: list[bytes]) -> None:
        self.data = data
        self.leaves = [leaf_hash(d) for d in data]
        self._nodes: dict[tuple[int, int], bytes] = {}

    def node(self, level: int, index: int) -> bytes:
        if level == 0:
            return self.leaves[index]
        key = (level, index)
        if key not in self._nodes:
            self._nodes[key] = node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
        return self._nodes[key]

    def entries(self, start: int, count: int) -> list[bytes]:
        assert start + count <= len(self.data)
        return self.data[start:start + count]

    def root(self, size: int | None = None) -> bytes:
        frontier: list[bytes] = []
        done = 0
        for h in self.leaves[:len(self.leaves) if size is None else size]:
            done = append_leaf(frontier, done, h)
        return root_from_frontier(frontier)

    def checkpoint(self, size: int | None = None, origin: str | None = None) -> Checkpoint:
        size = len(self.data) if size is None else size
        return Checkpoint(origin or SIGNER.name, size, self.root(size))

    def note(self, size: int | None = None) -> str:
        return sign_note(format_checkpoint(self.checkpoint(size)), SIGNER)


def _data(n: int, tag: str = "e") -> list[bytes]:
    return [f"{tag}{i}".encode() * (1 + i % 3) for i in range(n)]


def _export(tmp_path: Path, n: int, name: str = "tiles") -> tuple[Path, MemTree]:
    tree = MemTree(_data(n))
    out = tmp_path / name
    export_tiles(out, tree.note(), n, tree.node, tree.entries)
    return out, tree


def _refused(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(ValidationError) as info:
        call(*args, **kwargs)
    return str(info.value)


# -- paths -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "path"), [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"),
                                         (1234067, "x001/x234/067"), (10**9, "x001/x000/x000/000")])
def test_an_index_is_written_in_groups_of_three_digits(n: int, path: str) -> None:
    assert encode_index(n) == path
    assert tile_path(3, n) == f"tile/3/{path}"
    assert parse_tile_path(f"tile/3/{path}") == (3, n, 256)


def test_a_partial_tile_and_a_bundle_carry_their_width() -> None:
    assert tile_path(0, 1, 44) == "tile/0/001.p/44"
    assert tile_path(0, 1, 256) == tile_path(0, 1) == "tile/0/001"
    assert tile_path("entries", 1000, 1) == "tile/entries/x001/000.p/1"
    assert parse_tile_path("tile/entries/x001/000.p/1") == ("entries", 1000, 1)
    assert parse_tile_path("/tile/0/001.p/255") == (0, 1, 255)
    assert parse_tile_path("tile/99/000") == (99, 0, 256)


@pytest.mark.parametrize("path", [
    "", "tile", "tile/0", "tiles/0/000", "/tile/0", "tile//000", "tile/00/000", "tile/01/000", "tile/100/000",
    "tile/-1/000", "tile/entry/000", "tile/0/000/", "tile/0/00", "tile/0/0000", "tile/0/x000/000",
    "tile/0/x001", "tile/0/001/x002", "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/000.p/01",
    "tile/0/000.p/", "tile/0/000.p", "tile/0/000.p/1/", "tile/0/x001.p/5", "tile/0/000.q/5",
    "tile/0/x001/000.p/1000", "tile/0/\u0661\u0662\u0663", "tile/\u0661/000", "//tile/0/000",
    "tile/0/xabc/000", "tile/0/xabc/x001/000", "tile/0/x0_1/000", "tile/0/X001/000",
])
def test_anything_but_a_tile_s_one_path_is_refused(path: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_tile_path(path)
    assert str(info.value) == path


def test_tile_bytes_are_the_hashes_in_order_and_bundles_the_entries_behind_their_length() -> None:
    calls: list[tuple[int, int]] = []

    def node(level: int, index: int) -> bytes:
        calls.append((level, index))
        return bytes([level, index % 256]) * 16

    assert tile_bytes(2, 1, 3, node) == bytes([16, 0]) * 16 + bytes([16, 1]) * 16 + bytes([16, 2]) * 16
    assert calls == [(16, 256), (16, 257), (16, 258)]

    def entries(start: int, count: int) -> list[bytes]:
        assert (start, count) == (512, 3)
        return [b"", b"a", b"x" * 300]

    assert bundle_bytes(2, 3, entries) == b"\0\0" + b"\0\x01a" + b"\x01\x2c" + b"x" * 300


# -- read_regular ----------------------------------------------------------------------------

def test_read_regular_reads_a_file_of_at_most_its_limit(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"0123456789")
    assert read_regular(str(f), 10) == b"0123456789"
    assert _refused(read_regular, str(f), 9) == f"{f} is 10 bytes, more than the 9 it may hold"
    assert _refused(read_regular, str(f), 9, shown="the file") == (
        "the file is 10 bytes, more than the 9 it may hold")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20))  # read in chunks of a MiB
    assert read_regular(str(big), 3 << 20) == big.read_bytes()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert read_regular(str(empty), 0) == b""


def test_read_regular_refuses_a_file_that_grows_past_its_limit_while_read(tmp_path: Path) -> None:
    """A file whose size said it fits, but which holds more when read (it grew meanwhile; a
    /proc file says 0 bytes)."""
    status = "/proc/self/status"
    assert os.stat(status).st_size == 0 and len(Path(status).read_bytes()) > 100
    assert _refused(read_regular, status, 100) == f"{status} is more than the 100 bytes it may hold"
    assert len(read_regular(status, 1 << 20)) > 100


def test_read_regular_names_what_it_refuses(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"data")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_regular(str(link), 10) == b"data"  # followed by default
    assert _refused(read_regular, str(link), 10, follow=False) == f"{link} is a symbolic link: refused"
    assert _refused(read_regular, str(tmp_path / "none"), 10) == f"{tmp_path / 'none'} is missing"
    assert _refused(read_regular, str(tmp_path), 10) == f"{tmp_path} is not a regular file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _refused(read_regular, str(fifo), 10) == f"{fifo} is not a regular file"  # and no hang
    assert _refused(read_regular, str(target / "below"), 10) == (
        f"cannot read {target / 'below'}: {os.strerror(errno.ENOTDIR)}")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_regular("target", 10, dir_fd=fd) == b"data"
        assert _refused(read_regular, "link", 10, dir_fd=fd, follow=False, shown="shown") == (
            "shown is a symbolic link: refused")
    finally:
        os.close(fd)


def test_read_regular_leaves_no_descriptor_open(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 20)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        read_regular(str(f), 100)
        with pytest.raises(ValidationError):
            read_regular(str(f), 10)
        with pytest.raises(ValidationError):
            read_regular(str(tmp_path), 10)
    assert len(os.listdir("/proc/self/fd")) == before


# -- ExportDir -------------------------------------------------------------------------------

def test_an_export_dir_writes_whole_files_and_reads_them_back(tmp_path: Path) -> None:
    with ExportDir(tmp_path / "new" / "out") as out:
        out.write("a/b/c", b"data")
        out.write("top", b"1")
        out.write("top", b"22")  # replaced whole
        assert out.read("a/b/c", 4) == b"data"
        assert out.read("a/b/missing", 4) is None
        assert out.kind("a/b/c") == "file" and out.kind("nothing") is None
        assert sorted(out.names()) == ["a", "top"]
        assert _refused(out.read, "a/b/c", 3) == (
            f"{tmp_path}/new/out/a/b/c is 4 bytes, more than the 3 it may hold")
    assert (tmp_path / "new" / "out" / "top").read_bytes() == b"22"
    assert sorted(os.listdir(tmp_path / "new" / "out" / "a" / "b")) == ["c"]  # no temporary file left
    assert (tmp_path / "new" / "out" / "a" / "b" / "c").stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_export_dir_refuses_links_and_other_things_naming_them(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / "linkdir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "file").write_bytes(b"")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    tail = f": krepis writes below {root} only into directories and files it made; remove it"
    with ExportDir(root) as out:
        assert _refused(out.write, "linkdir/x", b"") == f"{root}/linkdir is a symbolic link{tail}"
        assert _refused(out.write, "file/x", b"") == f"{root}/file is not a directory{tail}"
        assert _refused(out.write, "fifo/x", b"") == f"{root}/fifo is not a directory{tail}"
        assert _refused(out.write, "dangling", b"") == f"{root}/dangling is a symbolic link{tail}"
        assert _refused(out.kind, "dangling") == f"{root}/dangling is a symbolic link{tail}"
        assert _refused(out.write, "dir", b"") == f"{root}/dir is not a regular file{tail}"
        assert _refused(out.read, "fifo", 10) == f"{root}/fifo is not a regular file{tail}"
    assert list((tmp_path / "elsewhere").iterdir()) == [] and not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(root)) == ["dangling", "dir", "fifo", "file", "linkdir"]


def test_an_export_dir_says_not_a_directory_when_the_name_vanished_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"
    with ExportDir(root) as out:
        real_open = os.open

        def failing_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
            if path == "gone":
                raise OSError(errno.ENOTDIR, "Not a directory")
            return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", failing_open)
        assert _refused(out.write, "gone/x", b"") == (
            f"{root}/gone is not a directory: krepis writes below {root} only into directories and "
            "files it made; remove it")


def test_an_export_dir_opens_a_directory_another_writer_made_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"
    with ExportDir(root) as out:
        real_mkdir = os.mkdir
        made: list[str] = []

        def racing_mkdir(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
            real_mkdir(path, mode, dir_fd=dir_fd)  # the other writer's
            made.append(path)
            raise FileExistsError(errno.EEXIST, "File exists")

        monkeypatch.setattr(os, "mkdir", racing_mkdir)
        out.write("sub/f", b"x")
        assert made == ["sub"]
    assert (root / "sub" / "f").read_bytes() == b"x"


def test_an_export_dir_gives_up_when_a_directory_cannot_be_made_and_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing, made, and gone again before it could be opened: one try to make it, then not a
    loop but the error itself."""
    root = tmp_path / "out"
    made: list[str] = []
    with ExportDir(root) as out:
        monkeypatch.setattr(os, "mkdir", lambda name, *a, **k: made.append(name))  # "made", never there
        with pytest.raises(FileNotFoundError):
            out.write("sub/f", b"x")
    assert made == ["sub"]
    assert os.listdir(root) == []


def test_an_export_dir_makes_its_directories_with_mode_0755(tmp_path: Path) -> None:
    """Readable by anyone who may read the export (it is published), writable by its owner only —
    also under a umask that takes nothing away."""
    old = os.umask(0)
    try:
        with ExportDir(tmp_path / "out") as out:
            out.write("a/b/f", b"x")
    finally:
        os.umask(old)
    for sub in ("a", "a/b"):
        assert stat.S_IMODE((tmp_path / "out" / sub).stat().st_mode) == 0o755, sub


def test_an_export_dir_writes_under_a_fresh_temporary_name(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / ".tmp-taken").write_bytes(b"someone else's")
    names = iter(["taken", "free"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    with ExportDir(root) as out:
        out.write("f", b"mine")
    assert (root / ".tmp-taken").read_bytes() == b"someone else's"
    assert (root / "f").read_bytes() == b"mine" and sorted(os.listdir(root)) == [".tmp-taken", "f"]


def test_an_export_dir_removes_its_temporary_file_when_the_rename_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "out"

    def failing_replace(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    with ExportDir(root) as out:
        monkeypatch.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError, match="I/O error"):
            out.write("f", b"data")
    assert os.listdir(root) == []


def test_an_export_dir_closes_its_descriptors(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    out = ExportDir(tmp_path / "out")
    out.write("a/b/c", b"x")
    assert len(os.listdir("/proc/self/fd")) == before + 3
    out.close()
    assert len(os.listdir("/proc/self/fd")) == before
    out.close()  # twice is fine


# -- export_tiles ----------------------------------------------------------------------------

def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_writes_every_tile_and_bundle_then_the_checkpoint(tmp_path: Path) -> None:
    tree = MemTree(_data(300))
    out = tmp_path / "tiles"
    assert export_tiles(out, tree.note(), 300, tree.node, tree.entries) == 6
    files = _files(out)
    assert sorted(files) == ["checkpoint", "tile/0/000", "tile/0/001.p/44", "tile/1/000.p/1",
                             "tile/entries/000", "tile/entries/001.p/44"]
    assert files["tile/0/000"] == b"".join(tree.leaves[:256])
    assert files["tile/0/001.p/44"] == b"".join(tree.leaves[256:])
    assert files["tile/1/000.p/1"] == tree.node(8, 0)
    assert files["tile/entries/001.p/44"] == b"".join(len(d).to_bytes(2, "big") + d for d in tree.data[256:])
    assert files["checkpoint"] == tree.note().encode()
    check = check_tiles(str(out), [SIGNER.verifier()])
    assert check == TileCheck(tree.checkpoint(), 300, 5, ())


def test_export_keeps_full_tiles_and_rewrites_partial_ones(tmp_path: Path) -> None:
    data = _data(600)
    out = tmp_path / "tiles"
    small = MemTree(data[:300])
    export_tiles(out, small.note(), 300, small.node, small.entries)
    planted = b"\xff" * (32 * 256)
    (out / "tile" / "0" / "000").write_bytes(planted)  # a full tile is never written again
    big = MemTree(data)
    # level 0: 000 kept, 001 full now, 002.p/88; level 1: 000.p/2; bundles: 000 kept, 001, 002.p/88;
    # the checkpoint
    assert export_tiles(out, big.note(), 600, big.node, big.entries) == 6
    assert (out / "tile" / "0" / "000").read_bytes() == planted
    assert (out / "tile" / "0" / "001").read_bytes() == b"".join(big.leaves[256:512])
    assert (out / "tile" / "1" / "000.p" / "2").read_bytes() == big.node(8, 0) + big.node(8, 1)
    assert (out / "checkpoint").read_text() == big.note()


def test_export_of_an_empty_tree_writes_only_the_checkpoint(tmp_path: Path) -> None:
    tree = MemTree([])
    assert export_tiles(tmp_path / "tiles", tree.note(), 0, tree.node, tree.entries) == 1
    assert sorted(_files(tmp_path / "tiles")) == ["checkpoint"]
    assert check_tiles(str(tmp_path / "tiles"), [SIGNER.verifier()]) == TileCheck(tree.checkpoint(), 0, 0, ())


def test_export_of_whole_tiles_writes_no_empty_partial_tile(tmp_path: Path) -> None:
    tree = MemTree(_data(512))
    assert export_tiles(tmp_path / "tiles", tree.note(), 512, tree.node, tree.entries) == 6
    assert sorted(_files(tmp_path / "tiles")) == ["checkpoint", "tile/0/000", "tile/0/001", "tile/1/000.p/2",
                                                  "tile/entries/000", "tile/entries/001"]
    assert check_tiles(str(tmp_path / "tiles"), [SIGNER.verifier()]).tiles == 5


def test_export_of_a_tree_with_a_full_level_1_tile(tmp_path: Path) -> None:
    """65,536 leaves: a full tile at level 1 and one hash at level 2."""
    tree = MemTree([i.to_bytes(3, "big") for i in range(1 << 16)])
    out = tmp_path / "tiles"
    assert export_tiles(out, tree.note(), 1 << 16, tree.node, tree.entries) == 256 + 1 + 1 + 256 + 1
    assert (out / "tile" / "2" / "000.p" / "1").read_bytes() == tree.node(16, 0)
    assert check_tiles(str(out), [SIGNER.verifier()]).tiles == 256 + 1 + 1 + 256
    tile = out / "tile" / "1" / "000"
    data = bytearray(tile.read_bytes())
    data[32 * 255] ^= 1
    tile.write_bytes(bytes(data))
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        "tile/1/000: hash 255 does not match the entries (entry 65280 onwards, 256 entries)")


# -- check_tiles -----------------------------------------------------------------------------

def test_check_refuses_a_checkpoint_that_is_not_utf8(tmp_path: Path) -> None:
    out, _ = _export(tmp_path, 3)
    (out / "checkpoint").write_bytes(b"\xff\n")
    with pytest.raises(NoteError) as info:
        check_tiles(str(out), [SIGNER.verifier()])
    assert str(info.value) == "the checkpoint is not UTF-8"


def test_check_reads_through_the_reader_it_is_given(tmp_path: Path) -> None:
    out, _tree = _export(tmp_path, 300)
    asked: list[tuple[str, int]] = []

    def read(rel: str, limit: int) -> bytes:
        asked.append((rel, limit))
        return (out / rel).read_bytes()

    assert check_tiles("/nonexistent", [SIGNER.verifier()], read=read).entries == 300
    assert asked == [("checkpoint", MAX_NOTE), ("tile/entries/000", 256 * 65537),
                     ("tile/entries/001.p/44", 44 * 65537), ("tile/0/000", 32 * 256),
                     ("tile/0/001.p/44", 32 * 44), ("tile/1/000.p/1", 32)]


def test_check_names_a_bundle_cut_short_or_too_long(tmp_path: Path) -> None:
    out, _tree = _export(tmp_path, 3)
    bundle = out / "tile" / "entries" / "000.p" / "3"
    whole = bundle.read_bytes()
    assert len(whole) == 2 + 2 + 2 + len(b"e0" + b"e1e1" + b"e2e2e2")
    for cut, i in ((len(whole) - 1, 2), (len(whole) - 7, 2), (len(whole) - 8, 2), (len(whole) - 9, 1),
                   (1, 0), (0, 0), (3, 0)):
        bundle.write_bytes(whole[:cut])
        assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
            f"tile/entries/000.p/3: entry {i} is cut off"), cut
    bundle.write_bytes(whole + b"\0\0x")
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        "tile/entries/000.p/3: 3 bytes after entry 2")
    bundle.write_bytes(whole)
    assert check_tiles(str(out), [SIGNER.verifier()]).entries == 3


def test_check_names_the_first_hash_that_does_not_match(tmp_path: Path) -> None:
    out, _tree = _export(tmp_path, 600)
    tile = out / "tile" / "0" / "001"
    whole = tile.read_bytes()
    bad = bytearray(whole)
    bad[32 * 7 + 31] ^= 1
    bad[32 * 9] ^= 1
    tile.write_bytes(bytes(bad))
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        "tile/0/001: hash 7 does not match the entries (entry 263 onwards)")
    # a tile cut short is named so (not by its first missing hash)
    for cut in (whole[:-32], whole[:-1], whole[:32 * 7], b""):
        tile.write_bytes(cut)
        assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
            f"tile/0/001: {len(cut)} bytes, expected 8192")
    tile.write_bytes(whole + b"\0")  # one byte too many: refused by the reader, naming the file
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        f"{tile} is 8193 bytes, more than the 8192 it may hold")
    tile.write_bytes(whole)

    def longer(rel: str, limit: int) -> bytes:  # a reader that does not keep to the limit
        return (out / rel).read_bytes() + (b"\0" if rel == "tile/0/001" else b"")

    assert _refused(check_tiles, str(out), [SIGNER.verifier()], read=longer) == (
        "tile/0/001: 8193 bytes, expected 8192")
    level1 = out / "tile" / "1" / "000.p" / "2"
    hashes = level1.read_bytes()
    level1.write_bytes(hashes[:32] + bytes(32))
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        "tile/1/000.p/2: hash 1 does not match the entries (entry 256 onwards, 256 entries)")
    level1.write_bytes(hashes)
    assert check_tiles(str(out), [SIGNER.verifier()]).tiles == 3 + 3 + 1


def test_check_refuses_a_root_the_entries_do_not_make(tmp_path: Path) -> None:
    out, _tree = _export(tmp_path, 5)
    other = MemTree(_data(5, "other"))
    (out / "checkpoint").write_text(other.note())
    assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
        "the entries' tree head does not match the checkpoint's root (tree size 5)")


def test_check_against_a_trusted_checkpoint(tmp_path: Path) -> None:
    out, tree = _export(tmp_path, 300)
    for size in (0, 1, 255, 256, 257, 300):
        assert check_tiles(str(out), [SIGNER.verifier()], trusted=tree.checkpoint(size)).entries == 300
    assert _refused(check_tiles, str(out), [SIGNER.verifier()], trusted=MemTree(_data(301)).checkpoint()) == (
        "the tree has 300 entries, fewer than the 301 of the trusted checkpoint: entries were removed, or "
        "the export is older")
    assert _refused(check_tiles, str(out), [SIGNER.verifier()],
                    trusted=tree.checkpoint(3, origin="example.com/another")) == (
        "the tree is of 'example.com/tiles', the trusted checkpoint of 'example.com/another': another log")
    long = "o" * 100
    assert _refused(check_tiles, str(out), [SIGNER.verifier()], trusted=tree.checkpoint(3, origin=long)) == (
        f"the tree is of 'example.com/tiles', the trusted checkpoint of {repr(long)[:80]}: another log")
    rewritten = MemTree(_data(300, "x"))
    for size in (0, 1, 256, 300):
        trusted = rewritten.checkpoint(size)
        if size == 0:
            trusted = Checkpoint(SIGNER.name, 0, bytes(32))  # not the empty tree's root
        assert _refused(check_tiles, str(out), [SIGNER.verifier()], trusted=trusted) == (
            f"the tree does not extend the trusted checkpoint: its first {size} entries are not the ones "
            "that checkpoint signed (the history was rewritten)")


def test_check_with_witnesses_returns_their_cosignatures(tmp_path: Path) -> None:
    out, tree = _export(tmp_path, 3)
    w1, w2 = generate_cosigner("w1.example"), generate_cosigner("w2.example")
    text = format_checkpoint(tree.checkpoint())
    note = tree.note() + w1.cosign(text, 1_700_000_000)
    (out / "checkpoint").write_text(note)
    check = check_tiles(str(out), [SIGNER.verifier()], witnesses=[w1.verifier(), w2.verifier()], quorum=1)
    assert check.checkpoint == tree.checkpoint() and check.entries == 3
    assert [(c.witness, c.timestamp) for c in check.cosignatures] == [("w1.example", 1_700_000_000)]
    with pytest.raises(NoteError, match="fewer than the quorum of 2"):
        check_tiles(str(out), [SIGNER.verifier()], witnesses=[w1.verifier(), w2.verifier()])
    assert check_tiles(str(out), [SIGNER.verifier()]).cosignatures == ()


def test_read_regular_reads_on_after_short_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``read`` may return fewer bytes than asked (POSIX allows it): the reader goes on until the
    end of the file, and still refuses a file that holds more than the limit once read whole —
    here one whose size says 0 (a /proc file), read 10 bytes at a time."""
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 10)))
    f = tmp_path / "f"
    f.write_bytes(bytes(range(45)))
    assert read_regular(str(f), 45) == bytes(range(45))
    status = "/proc/self/status"
    assert _refused(read_regular, status, 20) == f"{status} is more than the 20 bytes it may hold"
    assert _refused(read_regular, status, 30) == f"{status} is more than the 30 bytes it may hold"


@pytest.mark.parametrize("n", [1, 2, 255, 257, 513])
def test_check_reads_every_bundle_whatever_the_size(tmp_path: Path, n: int) -> None:
    out, tree = _export(tmp_path, n)
    check = check_tiles(str(out), [SIGNER.verifier()])
    bundles, level0 = (n + 255) // 256, (n + 255) // 256
    assert check == TileCheck(tree.checkpoint(), n, bundles + level0 + (1 if n >= 256 else 0), ())


def test_an_empty_entry_is_an_entry(tmp_path: Path) -> None:
    """Entries of zero bytes, last in their bundle too: a length of 0 and nothing after it."""
    for data in ([b""], [b"a", b""], [b"", b"", b"b", b""]):
        tree = MemTree(data)
        out = tmp_path / f"tiles{len(data)}"
        export_tiles(out, tree.note(), len(data), tree.node, tree.entries)
        assert check_tiles(str(out), [SIGNER.verifier()]).entries == len(data)
        bundle = out / "tile" / "entries" / f"000.p/{len(data)}"
        assert bundle.read_bytes() == b"".join(len(d).to_bytes(2, "big") + d for d in data)
        bundle.write_bytes(bundle.read_bytes()[:-1])  # the last length cut in half
        assert _refused(check_tiles, str(out), [SIGNER.verifier()]) == (
            f"tile/entries/000.p/{len(data)}: entry {len(data) - 1} is cut off")


def _swap_for_a_link(directory: Path, elsewhere: Path) -> None:
    """``directory`` moved aside and a link to ``elsewhere`` put in its place (an attacker's swap)."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(elsewhere, target_is_directory=True)


def test_an_export_dir_reads_from_the_directory_it_checked(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory a file is read from is the one walked and checked (held open), not whatever
    its path names by the time the file is opened: a link swapped in meanwhile is not followed."""
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "c").write_bytes(b"planted")
    real_open = os.open
    swapped: list[str] = []

    def racing_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if path.endswith("c") and not swapped:
            swapped.append(path)
            _swap_for_a_link(root / "a" / "b", elsewhere)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    with ExportDir(root) as out:
        out.write("a/b/c", b"mine")
        monkeypatch.setattr(os, "open", racing_open)
        assert out.read("a/b/c", 100) == b"mine"
    assert swapped and (root / "a" / "b.moved" / "c").read_bytes() == b"mine"


def test_an_export_dir_writes_into_the_directory_it_checked(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_open = os.open
    swapped: list[str] = []

    def racing_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if ".tmp-" in path and not swapped:
            swapped.append(path)
            _swap_for_a_link(root / "a" / "b", elsewhere)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    with ExportDir(root) as out:
        out.write("a/b/old", b"")
        monkeypatch.setattr(os, "open", racing_open)
        out.write("a/b/c", b"mine")
    assert swapped and list(elsewhere.iterdir()) == []
    assert sorted(os.listdir(root / "a" / "b.moved")) == ["c", "old"]
    assert os.listdir(root) == ["a"]  # (and no temporary file anywhere)


def test_an_export_dir_never_reads_through_a_link_swapped_in_after_its_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``read`` looks at the file (a regular one) before opening it; a link put in its place
    between the two is refused when opened, naming the file, and its target is not read."""
    root, secret = tmp_path / "out", tmp_path / "secret"
    secret.write_bytes(b"not for export")
    real_open = os.open
    swapped: list[str] = []

    def racing_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if path == "c" and not swapped:
            swapped.append(path)
            (root / "a" / "c").unlink()
            (root / "a" / "c").symlink_to(secret)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    with ExportDir(root) as out:
        out.write("a/c", b"mine")
        monkeypatch.setattr(os, "open", racing_open)
        assert _refused(out.read, "a/c", 100) == f"{root}/a/c is a symbolic link: refused"
    assert swapped == ["c"]


def test_an_export_dir_looks_at_a_file_only_through_the_directories_it_checked(tmp_path: Path) -> None:
    """``kind`` and ``read`` of a file below a link refuse the link (by its name), whether or not
    the link's target holds a file of that name: nothing is looked up through it."""
    root, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (elsewhere / "there").write_bytes(b"planted")
    (root / "linkdir").symlink_to(elsewhere, target_is_directory=True)
    refused = (f"{root}/linkdir is a symbolic link: krepis writes below {root} only into directories "
               "and files it made; remove it")
    with ExportDir(root) as out:
        for name in ("there", "missing"):
            assert _refused(out.kind, f"linkdir/{name}") == refused
            assert _refused(out.read, f"linkdir/{name}", 100) == refused
