"""The C2SP tlog-tiles layout: export a journal's tree as static files, and check such a tree.

``<dir>/checkpoint`` (a signed checkpoint), hash tiles ``<dir>/tile/<L>/<N>[.p/<W>]`` (the
hashes at tree level 8·L, 32 bytes each, 256 to a full tile) and entry bundles
``<dir>/tile/entries/<N>[.p/<W>]`` (each entry's canonical bytes behind a big-endian uint16
length). ``N`` is written in groups of three digits, all but the last prefixed with ``x``
(``1234067`` → ``x001/x234/067``).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .._errors import ValidationError
from ._merkle import TILE_HEIGHT, append_leaf, leaf_hash, root_from_frontier
from ._note import Checkpoint, NoteError, Verifier, open_note, parse_checkpoint

__all__ = ["TileCheck", "bundle_bytes", "check_tiles", "encode_index", "export_tiles", "parse_tile_path",
           "tile_bytes", "tile_path"]

WIDTH = 1 << TILE_HEIGHT
_LEN = struct.Struct(">H")


def encode_index(n: int) -> str:
    """``N`` as tlog-tiles path elements: ``1234067`` → ``x001/x234/067``."""
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    return "/".join([*("x" + g for g in groups[:-1]), groups[-1]])


def tile_path(level: int | str, index: int, width: int = WIDTH) -> str:
    """The path of a tile (``level`` an int, or ``"entries"`` for an entry bundle)."""
    path = f"tile/{level}/{encode_index(index)}"
    return path if width == WIDTH else f"{path}.p/{width}"


def parse_tile_path(rel: str) -> tuple[int | str, int, int]:
    """``(level or "entries", index, width)`` of a tile path; ``ValueError`` if it is not one."""
    parts = rel.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise ValueError(rel)
    level: int | str = parts[1]
    if level != "entries":
        if not re.fullmatch(r"0|[1-9][0-9]?", parts[1]):  # ASCII, no leading zero
            raise ValueError(rel)
        level = int(parts[1])
    rest = parts[2:]
    width = WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        if not re.fullmatch(r"[1-9][0-9]*", rest[-1]) or not int(rest[-1]) < WIDTH:
            raise ValueError(rel)
        width = int(rest[-1])
        rest = [*rest[:-2], rest[-2][:-2]]
    if not rest or any(not re.fullmatch(r"x[0-9]{3}", g) for g in rest[:-1]) \
            or not re.fullmatch(r"[0-9]{3}", rest[-1]):
        raise ValueError(rel)
    index = int("".join(g.lstrip("x") for g in rest))
    if encode_index(index) != "/".join(rest):
        raise ValueError(rel)
    return level, index, width


def tile_bytes(level: int, index: int, width: int, node: Callable[[int, int], bytes]) -> bytes:
    """A hash tile: ``width`` hashes at tree level 8·``level`` from index ``index``·256."""
    return b"".join(node(TILE_HEIGHT * level, index * WIDTH + i) for i in range(width))


def bundle_bytes(index: int, width: int, entries: Callable[[int, int], list[bytes]]) -> bytes:
    """An entry bundle: ``width`` entries from ``index``·256, each behind a uint16 length."""
    return b"".join(_LEN.pack(len(data)) + data for data in entries(index * WIDTH, width))


def _write(root: str, rel: str, data: bytes, *, replace: bool) -> bool:
    """Write ``root/rel`` atomically; a full tile that exists is kept (tiles never change)."""
    path = os.path.join(root, rel)
    if not replace and os.path.exists(path):
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def export_tiles(
    directory: str,
    checkpoint_note: str,
    size: int,
    node: Callable[[int, int], bytes],
    entries: Callable[[int, int], list[bytes]],
) -> int:
    """Write the tiles of the tree of ``size`` leaves, its entry bundles and the checkpoint;
    return how many files were written (full tiles already there are skipped).

    ``node(level, index)`` gives tree hashes; ``entries(start, count)`` the leaf data."""
    written = 0
    level = 0
    while True:
        count = size >> (TILE_HEIGHT * level)
        if count == 0:
            break
        for n in range((count + WIDTH - 1) // WIDTH):
            width = min(WIDTH, count - n * WIDTH)
            rel = tile_path(level, n, width)
            if width == WIDTH and os.path.exists(os.path.join(directory, rel)):
                continue
            written += _write(directory, rel, tile_bytes(level, n, width, node), replace=True)
        level += 1
    for n in range((size + WIDTH - 1) // WIDTH):
        width = min(WIDTH, size - n * WIDTH)
        rel = tile_path("entries", n, width)
        if width == WIDTH and os.path.exists(os.path.join(directory, rel)):
            continue
        written += _write(directory, rel, bundle_bytes(n, width, entries), replace=True)
    written += _write(directory, "checkpoint", checkpoint_note.encode("utf-8"), replace=True)
    return written


@dataclass(frozen=True)
class TileCheck:
    """What :func:`check_tiles` found: the checkpoint and how many entries and tiles it read."""

    checkpoint: Checkpoint
    entries: int
    tiles: int


def _read(directory: str, rel: str) -> bytes:
    try:
        with open(os.path.join(directory, rel), "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ValidationError(f"{os.path.join(directory, rel)} is missing") from None


def _bundle(data: bytes, width: int, where: str) -> Iterator[bytes]:
    off = 0
    for i in range(width):
        if off + 2 > len(data):
            raise ValidationError(f"{where}: entry {i} is cut off")
        (n,) = _LEN.unpack_from(data, off)
        if off + 2 + n > len(data):
            raise ValidationError(f"{where}: entry {i} is cut off")
        yield data[off + 2:off + 2 + n]
        off += 2 + n
    if off != len(data):
        raise ValidationError(f"{where}: {len(data) - off} bytes after entry {width - 1}")


def check_tiles(directory: str, verifiers: list[Verifier]) -> TileCheck:
    """Check an exported tree from its files alone: the checkpoint's signature, every entry of
    every bundle against every hash tile, and the root against the checkpoint. Raises
    :class:`ValidationError` naming the first entry (or tile) that does not fit."""
    try:
        text = open_note(_read(directory, "checkpoint").decode("utf-8"), verifiers)
        checkpoint = parse_checkpoint(text)
    except UnicodeDecodeError:
        raise NoteError("the checkpoint is not UTF-8") from None
    size = checkpoint.size
    frontier: list[bytes] = []
    done = 0
    tiles = 0
    # the hashes each level's tiles must hold, filled as the leaves are added
    levels: dict[int, list[bytes]] = {}

    def on_node(level: int, index: int, hash_: bytes) -> None:
        levels.setdefault(level // TILE_HEIGHT, []).append(hash_)

    leaves: list[bytes] = []
    for n in range((size + WIDTH - 1) // WIDTH):
        width = min(WIDTH, size - n * WIDTH)
        rel = tile_path("entries", n, width)
        for data in _bundle(_read(directory, rel), width, rel):
            h = leaf_hash(data)
            leaves.append(h)
            done = append_leaf(frontier, done, h, on_node)
        tiles += 1
    levels[0] = leaves
    for level, hashes in sorted(levels.items()):
        count = size >> (TILE_HEIGHT * level)
        for n in range((count + WIDTH - 1) // WIDTH):
            width = min(WIDTH, count - n * WIDTH)
            rel = tile_path(level, n, width)
            data = _read(directory, rel)
            want = b"".join(hashes[n * WIDTH:n * WIDTH + width])
            if data != want:
                for i in range(width):
                    if data[32 * i:32 * i + 32] != want[32 * i:32 * i + 32]:
                        first = (n * WIDTH + i) << (TILE_HEIGHT * level)
                        raise ValidationError(
                            f"{rel}: hash {i} does not match the entries (entry {first} onwards"
                            f"{'' if level == 0 else f', {1 << TILE_HEIGHT * level} entries'})")
                raise ValidationError(f"{rel}: {len(data)} bytes, expected {len(want)}")
            tiles += 1
    if root_from_frontier(frontier) != checkpoint.root:
        raise ValidationError(f"the entries' tree head does not match the checkpoint's root "
                              f"(tree size {size})")
    return TileCheck(checkpoint, size, tiles)
