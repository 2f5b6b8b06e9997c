"""A monitor: follow a C2SP tiles log, check every new checkpoint and every new entry against
the tree, and catch the log contradicting itself.

The monitor keeps the last checkpoint it verified and the tree's right edge at that size (the
frontier of the last whole bundle, and the leaf hashes of the partial bundle after it) — a few
kilobytes whatever the log's size. Each new checkpoint is verified (the log's signature by the
key named as its origin, and a quorum of witness cosignatures when witness keys are given),
then every new entry is fetched and appended to that frontier: the tree it builds must have
the new checkpoint's root. That proves at once that the new tree extends the old one and that
the entries are the tree's leaves. Nothing is reported before the whole step has verified.

When it does not hold, the step is an :class:`Alarm`, classified with the log's own hash tiles
(first checked to give the root of the checkpoint they belong to; a tile read after that must
hash to its node in the tile above it, or the step is an error, not a verdict):

* ``conflict`` — another root at the same size, or tiles of the new tree that give another root
  at the old size than the old checkpoint's (or, for a smaller tree, tiles of the old tree that
  give another root at the new size): two signed checkpoints that contradict each other. That
  pair is the proof of misbehaviour; the alarm carries both notes.
* ``rollback`` — a smaller tree, and the log no longer serves the tiles of the bigger one it
  signed (a smaller checkpoint whose tree is a prefix of the old one's, by the old tiles, is an
  older checkpoint — a stale cache — and no step at all).
* ``entries`` — the tiles prove the new tree extends the old one (or do not give the new root
  either), yet the entries served do not lead to it, or changed entries seen before: the log
  serves entries that are not its tree's leaves. The alarm names the new checkpoint.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from .._errors import ValidationError
from ._cosig import CosignerKey, open_cosigned_checkpoint
from ._http import HTTPError
from ._merkle import (
    EMPTY_ROOT,
    TILE_HEIGHT,
    append_leaf,
    leaf_hash,
    node_hash,
    range_hash,
    root_from_frontier,
)
from ._note import Checkpoint, NoteError, Verifier, open_checkpoint
from ._tiles import MAX_NOTE, read_regular, tile_path

__all__ = ["Advance", "Alarm", "MonitorState", "follow", "load_state", "save_state"]

_WIDTH = 1 << TILE_HEIGHT
_LEN = struct.Struct(">H")
_REC = struct.Struct(">QI")

#: ``fetch(path, limit)``: the bytes of ``<log>/<path>`` (at most ``limit``); raises on anything
#: but a whole answer (a JournalError or OSError)
Fetch = Callable[[str, int], bytes]


@dataclass(frozen=True)
class MonitorState:
    """The last verified checkpoint (its signed ``note``) and the tree's right edge at its size:
    ``frontier`` of its whole bundles, ``partial`` the leaf hashes after them."""

    note: str
    checkpoint: Checkpoint
    frontier: tuple[bytes, ...] = field(repr=False)
    partial: tuple[bytes, ...] = field(repr=False)


@dataclass(frozen=True)
class Alarm:
    """The log contradicted itself. ``checkpoints`` are the signed notes involved — two when
    they contradict each other (older first): that pair proves the misbehaviour."""

    kind: str
    message: str
    checkpoints: tuple[str, ...]


@dataclass
class Advance:
    """A verified step: the ``state`` to keep and the new entries, in order."""

    state: MonitorState
    spool: IO[bytes] | None = None
    count: int = 0

    def entries(self) -> Iterator[tuple[int, bytes]]:
        """``(leaf index, entry bytes)`` of every new entry, in order."""
        if self.spool is None:
            return
        self.spool.seek(0)
        while header := self.spool.read(_REC.size):
            index, length = _REC.unpack(header)
            yield index, self.spool.read(length)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()


def _open(note: str, log_keys: list[Verifier], witnesses: Sequence[CosignerKey],
          quorum: int | None) -> Checkpoint:
    if witnesses:
        return open_cosigned_checkpoint(note, log_keys, witnesses, quorum).checkpoint
    return open_checkpoint(note, log_keys)


def _bundle(data: bytes, width: int, where: str) -> list[bytes]:
    out, off = [], 0
    for i in range(width):
        if off + 2 > len(data):
            raise ValueError(f"{where}: entry {i} is cut off")
        (n,) = _LEN.unpack_from(data, off)
        if off + 2 + n > len(data):
            raise ValueError(f"{where}: entry {i} is cut off")
        out.append(data[off + 2:off + 2 + n])
        off += 2 + n
    if off != len(data):
        raise ValueError(f"{where}: {len(data) - off} bytes after entry {width - 1}")
    return out


class _TileNodes:
    """Tree hashes of the tree of ``size`` leaves, read from the log's hash tiles.

    Once ``checked`` is set (the tiles read so far gave the checkpoint's root), every full tile
    read must hash to its node in the tile above it, itself read and checked the same way: a
    chain that ends at a tile the root needed (the top level's is always one). So every hash
    a verdict is drawn from is bound to the signed root."""

    def __init__(self, fetch: Fetch, size: int) -> None:
        self._fetch, self._size = fetch, size
        self._tiles: dict[tuple[int, int], bytes] = {}
        self._nodes: dict[tuple[int, int], bytes] = {}
        self.checked = False

    def _path(self, tile_level: int, n: int) -> str:
        return tile_path(tile_level, n, min(_WIDTH, (self._size >> (tile_level * TILE_HEIGHT)) - n * _WIDTH))

    def node(self, level: int, index: int) -> bytes:
        if level % TILE_HEIGHT:
            key = (level, index)
            found = self._nodes.get(key)
            if found is None:
                found = node_hash(self.node(level - 1, 2 * index), self.node(level - 1, 2 * index + 1))
                self._nodes[key] = found
            return found
        tile_level = level // TILE_HEIGHT
        n, i = divmod(index, _WIDTH)
        width = min(_WIDTH, (self._size >> level) - n * _WIDTH)
        data = self._tiles.get((tile_level, n))
        if data is None:
            data = self._fetch(tile_path(tile_level, n, width), 32 * width)
            if len(data) != 32 * width:  # (a ValueError: _tiles_of takes it for tiles not served)
                raise ValidationError(f"the log's tile {tile_path(tile_level, n, width)} is {len(data)} "
                                      f"bytes, not {32 * width}")
            if self.checked and width == _WIDTH and _tile_root(data) != self.node(level + TILE_HEIGHT, n):
                above = self._path(tile_level + 1, n // _WIDTH)
                raise ValidationError(f"the log's tile {tile_path(tile_level, n)} does not hash to its node "
                                      f"in {above}: the log's tiles disagree")
            self._tiles[(tile_level, n)] = data
        return data[32 * i:32 * i + 32]


def _tile_root(data: bytes) -> bytes:
    """The hash of the perfect subtree whose nodes a full tile holds, left to right."""
    row = [data[k:k + 32] for k in range(0, len(data), 32)]
    while len(row) > 1:
        row = [node_hash(row[k], row[k + 1]) for k in range(0, len(row), 2)]
    return row[0]


def _tiles_of(fetch: Fetch, checkpoint: Checkpoint) -> _TileNodes | None:
    """The log's tiles of the tree ``checkpoint`` signed, once they hash to its root; ``None``
    when they do not, are cut short, or are not served (404, 410). Other fetch errors raise (a
    tile longer than its width is one: the fetch refuses it)."""
    nodes = _TileNodes(fetch, checkpoint.size)
    try:
        if checkpoint.size and range_hash(nodes.node, 0, checkpoint.size) != checkpoint.root:
            return None
    except ValueError:
        return None
    except HTTPError as exc:
        if exc.status in (404, 410):
            return None
        raise
    nodes.checked = True
    return nodes


def _prefix_root(nodes: _TileNodes, size: int) -> bytes:
    return range_hash(nodes.node, 0, size) if size else EMPTY_ROOT


def _conflict(fetch: Fetch, old: MonitorState, new: Checkpoint, note: str, what: str) -> Alarm:
    """The alarm for a step whose entries do not lead from ``old`` to ``new``: a conflict when the
    log's own tiles of the new tree (checked against its root) hold another tree at the old
    size; else the entries (or tiles) it serves are not those of the tree it signed."""
    a, b = old.checkpoint, new
    nodes = _tiles_of(fetch, b)
    if nodes is None:
        return Alarm("entries", f"{what}; the log's tiles do not give its checkpoint's root either: it "
                                f"serves neither the entries nor the tiles of the tree of size {b.size} it "
                                "signed",
                     (note,))
    if _prefix_root(nodes, a.size) == a.root:
        return Alarm("entries", f"{what}; the log's tiles prove its checkpoints of tree sizes {a.size} and "
                                f"{b.size} consistent, so the entries it serves are not its tree's leaves",
                     (note,))
    return Alarm("conflict", f"{what}: the log's tiles of its tree of size {b.size} (they give that "
                             f"checkpoint's root) hold another tree of size {a.size} than the one it signed "
                             f"before — two signed checkpoints of {a.origin} that contradict each other (a "
                             "rewritten history, or a split view)", _pair(old.note, note))


def _smaller(fetch: Fetch, old: MonitorState, new: Checkpoint, note: str) -> Alarm | None:
    """A checkpoint of a smaller tree: ``None`` when it is an older checkpoint of the same history
    (a stale cache: the log's tiles of the tree seen last still give its root at that size)."""
    a = old.checkpoint
    nodes = _tiles_of(fetch, a)
    if nodes is None:
        return Alarm("rollback", f"the log's checkpoint of tree size {new.size} is smaller than the one of "
                                 f"tree size {a.size} it signed before, and it no longer serves the tiles of "
                                 f"that tree: two signed checkpoints of {a.origin} — the log went back",
                     _pair(old.note, note))
    if _prefix_root(nodes, new.size) == new.root:
        return None
    return Alarm("conflict", f"the log's checkpoint of tree size {new.size} has another root than the tree "
                             f"of size {a.size} it signed before has at that size: two signed checkpoints of "
                             f"{a.origin} that contradict each other (a rewritten history, or a split view)",
                 _pair(old.note, note))


def _pair(old: str, new: str) -> tuple[str, ...]:
    return (old, new) if old else (new,)


def follow(fetch: Fetch, state: MonitorState | None, log_keys: Sequence[Verifier],
           witnesses: Sequence[CosignerKey] = (), quorum: int | None = None) -> Advance | Alarm | None:
    """One step: fetch the log's checkpoint and verify it against ``state`` (``None``: nothing
    seen yet). Returns ``None`` when the tree did not grow (or the checkpoint is an older one of
    the same history, as a stale cache serves), an :class:`Advance` (the new state
    and the new entries, all verified), or an :class:`Alarm`. Raises :class:`NoteError` for a
    checkpoint that does not verify (signature, cosignature quorum) — not proof of anything,
    since anyone can serve a bad note —, :class:`ValidationError` naming a hash tile read after
    the tiles were checked against a root that has the wrong length or does not hash to its node
    in the tile above it (tiles that disagree prove nothing either), and the fetch's errors:
    every error is a :class:`JournalError` (or the fetch's ``OSError``)."""
    keys = list(log_keys)
    try:
        note = fetch("checkpoint", MAX_NOTE).decode("utf-8")
    except UnicodeDecodeError:
        raise NoteError("the log's checkpoint is not UTF-8") from None
    new = _open(note, keys, witnesses, quorum)
    if state is None:
        state = MonitorState("", Checkpoint(new.origin, 0, EMPTY_ROOT), (), ())
    old = state.checkpoint
    if new.origin != old.origin:
        raise NoteError(f"the log's checkpoint is of {new.origin!r:.80}, the monitor follows "
                        f"{old.origin!r:.80}")
    if new.size < old.size:
        return _smaller(fetch, state, new, note)
    if new.size == old.size:
        if new.root == old.root:
            return None
        return Alarm("conflict", f"the log signed two checkpoints of tree size {new.size} with different "
                                 f"roots: two signed checkpoints of {old.origin} that contradict each other "
                                 "(a rewritten history, or a split view)", _pair(state.note, note))
    return _grow(fetch, state, new, note)


def _grow(fetch: Fetch, state: MonitorState, new: Checkpoint, note: str) -> Advance | Alarm:
    old = state.checkpoint
    frontier = list(state.frontier)
    done = old.size - old.size % _WIDTH
    spool: IO[bytes] = tempfile.TemporaryFile()
    whole, partial = list(frontier), list(state.partial)
    try:
        count = 0
        for b in range(old.size // _WIDTH, (new.size + _WIDTH - 1) // _WIDTH):
            width = min(_WIDTH, new.size - b * _WIDTH)
            rel = tile_path("entries", b, width)
            try:
                entries = _bundle(fetch(rel, width * (2 + 0xFFFF)), width, rel)
            except ValueError as exc:
                spool.close()
                return _conflict(fetch, state, new, note, f"entry bundle {rel} is malformed ({exc})")
            hashes = [leaf_hash(e) for e in entries]
            if b * _WIDTH < old.size and hashes[:len(state.partial)] != list(state.partial):
                spool.close()
                return _conflict(fetch, state, new, note, f"entry bundle {rel} holds other entries than the "
                                                          f"ones the tree of size {old.size} was built from")
            for i, (data, h) in enumerate(zip(entries, hashes, strict=True)):
                index = b * _WIDTH + i
                done = append_leaf(frontier, done, h)
                if index >= old.size:
                    spool.write(_REC.pack(index, len(data)) + data)
                    count += 1
            if width == _WIDTH:
                whole, partial = list(frontier), []
            else:
                partial = hashes
        if root_from_frontier(frontier) != new.root:
            spool.close()
            what = f"the entries from {old.size} to {new.size} do not lead from the old tree to the new root"
            return _conflict(fetch, state, new, note, what)
    except BaseException:
        spool.close()
        raise
    return Advance(MonitorState(note, new, tuple(whole), tuple(partial)), spool, count)


# -- the state file --------------------------------------------------------------------------------

def load_state(path: str, log_keys: Sequence[Verifier]) -> MonitorState | None:
    """The state kept in the file ``path`` (``None`` when there is no such file), checked: its
    checkpoint's signature by the log's key, and its tree edge against that checkpoint's root.
    Raises :class:`ValidationError` naming the file when it is not a monitor's state of this log."""
    if not os.path.lexists(path):
        return None
    raw = read_regular(path, 2 * MAX_NOTE)
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a krepis monitor state (version 1)")
        note = doc["checkpoint"]
        if not isinstance(note, str):
            raise ValueError("its checkpoint is not text")
        checkpoint = open_checkpoint(note, list(log_keys))
        frontier = tuple(base64.b64decode(h, validate=True) for h in doc["frontier"])
        partial = tuple(base64.b64decode(h, validate=True) for h in doc["partial"])
        whole = checkpoint.size - checkpoint.size % _WIDTH
        if len(partial) != checkpoint.size % _WIDTH or len(frontier) != whole.bit_count() \
                or any(len(h) != 32 for h in frontier + partial):
            raise ValueError("its tree edge does not fit its checkpoint's size")
        edge, done = list(frontier), whole
        for h in partial:
            done = append_leaf(edge, done, h)
        if root_from_frontier(edge) != checkpoint.root:
            raise ValueError("its tree edge does not lead to its checkpoint's root")
    except (ValueError, KeyError, TypeError) as exc:  # (NoteError and binascii.Error are ValueErrors)
        raise ValidationError(f"{path}: {exc}") from None
    return MonitorState(note, checkpoint, frontier, partial)


def save_state(path: str, state: MonitorState) -> None:
    """Replace the file ``path`` with ``state``, durably: a new file written and flushed, renamed
    over the old one, the directory flushed."""
    doc = {"version": 1, "checkpoint": state.note,
           "frontier": [base64.b64encode(h).decode() for h in state.frontier],
           "partial": [base64.b64encode(h).decode() for h in state.partial]}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".krepis-monitor-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
