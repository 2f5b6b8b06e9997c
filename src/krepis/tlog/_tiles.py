"""The C2SP tlog-tiles layout: export a journal's tree as static files, and check such a tree.

``<dir>/checkpoint`` (a signed checkpoint), hash tiles ``<dir>/tile/<L>/<N>[.p/<W>]`` (the
hashes at tree level 8·L, 32 bytes each, 256 to a full tile) and entry bundles
``<dir>/tile/entries/<N>[.p/<W>]`` (each entry's canonical bytes behind a big-endian uint16
length). ``N`` is written in groups of three digits, all but the last prefixed with ``x``
(``1234067`` → ``x001/x234/067``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .._errors import ValidationError
from ._cosig import Cosignature, CosignerKey, open_cosigned_checkpoint
from ._merkle import TILE_HEIGHT, append_leaf, leaf_hash, root_from_frontier
from ._note import Checkpoint, NoteError, Verifier, open_checkpoint

__all__ = ["MAX_NOTE", "ExportDir", "TileCheck", "bundle_bytes", "check_tiles", "encode_index",
           "export_tiles", "parse_tile_path", "read_regular", "tile_bytes", "tile_path"]

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
    """``(level or "entries", index, width)`` of a tile path (``tile/…``, or ``/tile/…``);
    ``ValueError`` if it is not exactly one (so one tile has one path: no trailing slash)."""
    parts = (rel[1:] if rel.startswith("/") else rel).split("/")
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


#: the largest checkpoint note read (C2SP asks verifiers to take 16 signatures of up to ~5 kB)
MAX_NOTE = 1 << 20
_MAX_ENTRY = (1 << 16) - 1


def read_regular(path: str, limit: int, *, dir_fd: int | None = None, follow: bool = True,
                 shown: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` — never a FIFO, device or directory (opened
    non-blocking, so a FIFO cannot hang the reader), nor a symbolic link when ``follow`` is
    false — of at most ``limit`` bytes. Raises :class:`ValidationError` naming the path."""
    name = shown or path
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ValidationError(f"{name} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValidationError(f"{name} is a symbolic link: refused") from None
        raise ValidationError(f"cannot read {name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValidationError(f"{name} is not a regular file")
        if st.st_size > limit:
            raise ValidationError(f"{name} is {st.st_size} bytes, more than the {limit} it may hold")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise ValidationError(f"{name} is more than the {limit} bytes it may hold")
        return b"".join(chunks)
    finally:
        os.close(fd)


class ExportDir:
    """A directory to write an export into, safely: every path below it is walked one name at a
    time from directory descriptors with ``O_NOFOLLOW``, so no symbolic link below it is ever
    followed (one found is a :class:`ValidationError` naming it, and nothing is written through
    it); files are created ``O_EXCL|O_NOFOLLOW`` under a temporary name and renamed into place,
    so a reader sees a whole file or none. The directory itself (created if missing) is the one
    the caller named, a link to it included. Use as a context manager."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = os.fspath(directory)
        os.makedirs(self.path, exist_ok=True)
        self._fds: dict[str, int] = {}
        self._fds[""] = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))

    def __enter__(self) -> ExportDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def names(self) -> list[str]:
        """The names directly in the directory."""
        return os.listdir(self._fds[""])

    def _refuse(self, rel: str, what: str) -> ValidationError:
        return ValidationError(f"{os.path.join(self.path, rel)} is {what}: krepis writes below "
                               f"{self.path} only into directories and files it made; remove it")

    def _dir(self, rel: str) -> int:
        """A descriptor of the directory ``rel``, made if missing, never reached through a link."""
        found = self._fds.get(rel)
        if found is not None:
            return found
        parent_rel, _, name = rel.rpartition("/")
        parent = self._dir(parent_rel)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        for attempt in range(2):
            try:
                fd = os.open(name, flags, dir_fd=parent)
                break
            except FileNotFoundError:
                if attempt:
                    raise
                with contextlib.suppress(FileExistsError):  # (made meanwhile: opened next)
                    os.mkdir(name, 0o755, dir_fd=parent)
            except OSError:  # ELOOP or ENOTDIR (Linux says ENOTDIR for a link, with O_DIRECTORY)
                raise self._refuse(rel, self._what(parent, name)) from None
        self._fds[rel] = fd
        return fd

    @staticmethod
    def _what(parent: int, name: str) -> str:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return "not a directory"
        return "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"

    def kind(self, rel: str) -> str | None:
        """``"file"`` when ``rel`` is a regular file, ``None`` when there is nothing; anything
        else there — a symbolic link (dangling or not), a FIFO, a directory — is refused."""
        parent_rel, _, name = rel.rpartition("/")
        try:
            st = os.stat(name, dir_fd=self._dir(parent_rel), follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise self._refuse(rel, "a symbolic link")
        if not stat.S_ISREG(st.st_mode):
            raise self._refuse(rel, "not a regular file")
        return "file"

    def read(self, rel: str, limit: int) -> bytes | None:
        """The regular file ``rel`` (at most ``limit`` bytes), or ``None`` when it does not exist."""
        if self.kind(rel) is None:
            return None
        parent_rel, _, name = rel.rpartition("/")
        return read_regular(name, limit, dir_fd=self._dir(parent_rel), follow=False,
                            shown=os.path.join(self.path, rel))

    def write(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole: a new file under a temporary name, renamed over the old one (which
        must be a regular file, if there is one)."""
        parent_rel, _, name = rel.rpartition("/")
        parent = self._dir(parent_rel)
        self.kind(rel)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        while True:
            tmp = f".tmp-{secrets.token_hex(8)}"
            try:
                fd = os.open(tmp, flags, 0o644, dir_fd=parent)
                break
            except FileExistsError:
                continue
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=parent)
            raise


def export_tiles(
    directory: str | os.PathLike[str] | ExportDir,
    checkpoint_note: str,
    size: int,
    node: Callable[[int, int], bytes],
    entries: Callable[[int, int], list[bytes]],
) -> int:
    """Write the tiles of the tree of ``size`` leaves, its entry bundles and — last, once they
    are all there — the checkpoint; return how many files were written (full tiles already
    there are kept: a full tile never changes). Never follows a symbolic link below the
    directory (see :class:`ExportDir`).

    ``node(level, index)`` gives tree hashes; ``entries(start, count)`` the leaf data."""
    if not isinstance(directory, ExportDir):
        with ExportDir(directory) as out:
            return export_tiles(out, checkpoint_note, size, node, entries)
    out = directory
    written = 0
    level = 0
    while True:
        count = size >> (TILE_HEIGHT * level)
        if count == 0:
            break
        for n in range((count + WIDTH - 1) // WIDTH):
            width = min(WIDTH, count - n * WIDTH)
            rel = tile_path(level, n, width)
            if width == WIDTH and out.kind(rel) == "file":
                continue
            out.write(rel, tile_bytes(level, n, width, node))
            written += 1
        level += 1
    for n in range((size + WIDTH - 1) // WIDTH):
        width = min(WIDTH, size - n * WIDTH)
        rel = tile_path("entries", n, width)
        if width == WIDTH and out.kind(rel) == "file":
            continue
        out.write(rel, bundle_bytes(n, width, entries))
        written += 1
    out.write("checkpoint", checkpoint_note.encode("utf-8"))
    return written + 1


@dataclass(frozen=True)
class TileCheck:
    """What :func:`check_tiles` found: the checkpoint and how many entries and tiles it read
    (and, when witness keys were given, the valid cosignatures, with their timestamps)."""

    checkpoint: Checkpoint
    entries: int
    tiles: int
    cosignatures: tuple[Cosignature, ...] = ()


def _read(directory: str, rel: str, limit: int) -> bytes:
    """A file of an exported tree: a regular file, not a link (nor a FIFO that would hang the
    reader), of at most ``limit`` bytes."""
    return read_regular(os.path.join(directory, rel), limit, follow=False)


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


def check_tiles(directory: str, verifiers: list[Verifier], *, trusted: Checkpoint | None = None,
                read: Callable[[str, int], bytes] | None = None,
                witnesses: Sequence[CosignerKey] = (), quorum: int | None = None) -> TileCheck:
    """Check an exported tree from its files alone: the checkpoint's signature (by the key named
    as its origin), every entry of every bundle against every hash tile, and the root against
    the checkpoint; with ``trusted`` (a checkpoint the caller trusts, signature already
    checked), that the tree extends it: same origin, at least its size, and its root equal to
    the root of the tree's first ``trusted.size`` entries; with ``witnesses``, that at least
    ``quorum`` of them (default: all) cosigned the checkpoint. Raises :class:`ValidationError`
    naming the first entry (or tile) that does not fit. Files are read only if regular, not
    through a link, and of bounded size — or with ``read(path, limit)`` (a log served over
    HTTP)."""
    if read is None:
        def read(rel: str, limit: int) -> bytes:
            return _read(directory, rel, limit)
    try:
        note = read("checkpoint", MAX_NOTE).decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the checkpoint is not UTF-8") from None
    cosignatures: tuple[Cosignature, ...] = ()
    if witnesses:
        cosigned = open_cosigned_checkpoint(note, verifiers, witnesses, quorum)
        checkpoint, cosignatures = cosigned.checkpoint, cosigned.cosignatures
    else:
        checkpoint = open_checkpoint(note, verifiers)
    size = checkpoint.size
    if trusted is not None:
        if trusted.origin != checkpoint.origin:
            raise ValidationError(f"the tree is of {checkpoint.origin!r:.80}, the trusted checkpoint of "
                                  f"{trusted.origin!r:.80}: another log")
        if trusted.size > size:
            raise ValidationError(f"the tree has {size} entries, fewer than the {trusted.size} of the "
                                  "trusted checkpoint: entries were removed, or the export is older")
    trusted_root = None
    frontier: list[bytes] = []
    done = 0
    tiles = 0
    # the hashes each level's tiles must hold, filled as the leaves are added
    levels: dict[int, list[bytes]] = {}

    def on_node(level: int, index: int, hash_: bytes) -> None:
        levels.setdefault(level // TILE_HEIGHT, []).append(hash_)

    leaves: list[bytes] = []
    if trusted is not None and trusted.size == 0:
        trusted_root = root_from_frontier(frontier)
    for n in range((size + WIDTH - 1) // WIDTH):
        width = min(WIDTH, size - n * WIDTH)
        rel = tile_path("entries", n, width)
        for data in _bundle(read(rel, width * (2 + _MAX_ENTRY)), width, rel):
            h = leaf_hash(data)
            leaves.append(h)
            done = append_leaf(frontier, done, h, on_node)
            if trusted is not None and done == trusted.size:
                trusted_root = root_from_frontier(frontier)
        tiles += 1
    levels[0] = leaves
    for level, hashes in sorted(levels.items()):
        count = size >> (TILE_HEIGHT * level)
        for n in range((count + WIDTH - 1) // WIDTH):
            width = min(WIDTH, count - n * WIDTH)
            rel = tile_path(level, n, width)
            data = read(rel, 32 * width)
            want = b"".join(hashes[n * WIDTH:n * WIDTH + width])
            if len(data) != len(want):  # (a tile cut short is named as such, not by a hash)
                raise ValidationError(f"{rel}: {len(data)} bytes, expected {len(want)}")
            if data != want:
                i = next(i for i in range(width) if data[32 * i:32 * i + 32] != want[32 * i:32 * i + 32])
                first = (n * WIDTH + i) << (TILE_HEIGHT * level)
                raise ValidationError(
                    f"{rel}: hash {i} does not match the entries (entry {first} onwards"
                    f"{'' if level == 0 else f', {1 << TILE_HEIGHT * level} entries'})")
            tiles += 1
    if root_from_frontier(frontier) != checkpoint.root:
        raise ValidationError(f"the entries' tree head does not match the checkpoint's root "
                              f"(tree size {size})")
    if trusted is not None and trusted_root != trusted.root:
        raise ValidationError(f"the tree does not extend the trusted checkpoint: its first {trusted.size} "
                              "entries are not the ones that checkpoint signed (the history was rewritten)")
    return TileCheck(checkpoint, size, tiles, cosignatures)
