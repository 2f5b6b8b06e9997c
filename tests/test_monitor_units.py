"""The monitor (``krepis.tlog._monitor``) step by step, on logs published as static files and
served over HTTP by a plain file server: each verdict — no step, an advance, an alarm of each
kind — with its exact message and the signed notes it carries, the state it keeps (and the
state file, checked before it is trusted and replaced durably). The trees are built in memory
from the Merkle primitives and exported with ``export_tiles``."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from krepis import JournalError, ValidationError
from krepis.tlog._cosig import generate_cosigner
from krepis.tlog._http import HTTPError, reader
from krepis.tlog._merkle import EMPTY_ROOT
from krepis.tlog._monitor import Advance, Alarm, MonitorState, follow, load_state, save_state
from krepis.tlog._note import Checkpoint, NoteError, format_checkpoint, generate_signer, sign_note
from krepis.tlog._tiles import export_tiles, read_regular
from logtools import flip_last
from test_tiles_units import SIGNER, MemTree

LOG = SIGNER
ORIGIN = LOG.name


def _data(n: int, tag: str = "e") -> list[bytes]:
    return [f"{tag}{i}".encode() for i in range(n)]


def publish(root: Path, tree: MemTree, size: int | None = None, *, fresh: bool = True) -> str:
    """Export the first ``size`` leaves of ``tree`` into ``root`` (replacing what was there);
    the signed note."""
    size = len(tree.data) if size is None else size
    if fresh and root.exists():
        shutil.rmtree(root)
    note = tree.note(size)
    export_tiles(root, note, size, tree.node, tree.entries)
    return note


class _Site(http.server.SimpleHTTPRequestHandler):
    gone: ClassVar[set[str]] = set()
    broken: ClassVar[set[str]] = set()

    def do_GET(self) -> None:
        rel = self.path.lstrip("/")
        if rel in self.gone or rel in self.broken:
            self.send_response(410 if rel in self.gone else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, str, _Site]]:
    root = tmp_path / "site"
    root.mkdir()

    class Handler(_Site):
        gone: ClassVar[set[str]] = set()
        broken: ClassVar[set[str]] = set()

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", Handler  # type: ignore[misc]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def step(url: str, state: MonitorState | None, **kw: object) -> Advance | Alarm | None:
    return follow(reader(url, 10.0), state, [LOG.verifier()], **kw)  # type: ignore[arg-type]


def advance(url: str, state: MonitorState | None) -> Advance:
    got = step(url, state)
    assert isinstance(got, Advance), got
    return got


def alarm(url: str, state: MonitorState | None) -> Alarm:
    got = step(url, state)
    assert isinstance(got, Alarm), got
    return got


# -- advancing -------------------------------------------------------------------------------

def test_each_new_entry_is_reported_once_with_its_index(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree(_data(800))
    state = None
    for size in (0, 1, 255, 256, 257, 300, 512, 513, 800):
        note = publish(root, tree, size)
        if size == 0:
            assert step(url, state) is None  # the empty tree is where a monitor starts
            continue
        got = advance(url, state)
        before = state.checkpoint.size if state else 0
        assert list(got.entries()) == [(i, tree.data[i]) for i in range(before, size)]
        assert list(got.entries()) == list(got.entries())  # read again from the start
        assert got.count == size - before
        assert got.state.note == note and got.state.checkpoint == tree.checkpoint(size)
        whole = size - size % 256
        assert len(got.state.partial) == size % 256
        assert list(got.state.partial) == tree.leaves[whole:size]
        assert len(got.state.frontier) == bin(whole).count("1")
        got.close()
        state = got.state
        assert step(url, state) is None


def test_an_advance_without_entries_yields_none() -> None:
    state = MonitorState("", Checkpoint(ORIGIN, 0, EMPTY_ROOT), (), ())
    empty = Advance(state)
    assert list(empty.entries()) == [] and empty.count == 0
    empty.close()


def test_the_state_kept_is_the_one_the_state_file_holds(site: tuple[Path, str, _Site],
                                                        tmp_path: Path) -> None:
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree, 300)
    first = advance(url, None)
    path = tmp_path / "state.json"
    save_state(str(path), first.state)
    assert load_state(str(path), [LOG.verifier()]) == first.state
    doc = json.loads(path.read_text())
    assert doc == {"version": 1, "checkpoint": first.state.note,
                   "frontier": [base64.b64encode(h).decode() for h in first.state.frontier],
                   "partial": [base64.b64encode(h).decode() for h in first.state.partial]}
    assert path.read_text().endswith("]}\n") and ", " not in path.read_text()
    publish(root, tree, 600)
    loaded = load_state(str(path), [LOG.verifier()])
    got = advance(url, loaded)
    assert [i for i, _ in got.entries()] == list(range(300, 600))


# -- a tree of the same size or smaller ------------------------------------------------------

def test_two_roots_at_one_size_are_a_conflict_carrying_both_notes(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    a = publish(root, MemTree(_data(300)))
    seen = advance(url, None).state
    b = publish(root, MemTree(_data(300, "x")))
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("conflict", (a, b))
    assert got.message == (f"the log signed two checkpoints of tree size 300 with different roots: two "
                           f"signed checkpoints of {ORIGIN} that contradict each other (a rewritten "
                           "history, or a split view)")


def test_an_empty_tree_with_another_root_is_a_conflict_with_one_note(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    root.joinpath("checkpoint").write_text(
        note := sign_note(format_checkpoint(Checkpoint(ORIGIN, 0, bytes(32))), LOG))
    got = alarm(url, None)
    assert (got.kind, got.checkpoints) == ("conflict", (note,))


def test_an_older_checkpoint_of_the_same_history_is_no_step(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    for size in (0, 1, 255, 256, 300, 599):
        root.joinpath("checkpoint").write_text(tree.note(size))  # a stale cache: the tiles are the new tree's
        assert step(url, seen) is None, size


def test_a_smaller_tree_of_another_history_is_a_conflict(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree(_data(600))
    a = publish(root, tree)
    seen = advance(url, None).state
    b = MemTree(_data(400, "x")).note()
    root.joinpath("checkpoint").write_text(b)
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("conflict", (a, b))
    assert got.message == (f"the log's checkpoint of tree size 400 has another root than the tree of size "
                           f"600 it signed before has at that size: two signed checkpoints of {ORIGIN} that "
                           "contradict each other (a rewritten history, or a split view)")


@pytest.mark.parametrize("how", ["missing", "gone", "damaged", "cut"])
def test_a_smaller_tree_without_the_old_tree_s_tiles_is_a_rollback(site: tuple[Path, str, _Site],
                                                                   how: str) -> None:
    root, url, handler = site
    tree = MemTree(_data(600))
    a = publish(root, tree)
    seen = advance(url, None).state
    b = publish(root, tree, 400)  # the same history, its tiles only: the tree of 600 is not served
    if how == "gone":  # (410: gone for good)
        publish(root, tree)
        root.joinpath("checkpoint").write_text(b)
        handler.gone.add("tile/1/000.p/2")
    elif how == "damaged":
        publish(root, tree)
        tile = root / "tile" / "0" / "002.p" / "88"
        tile.write_bytes(bytes(32) + tile.read_bytes()[32:])
        root.joinpath("checkpoint").write_text(b)
    elif how == "cut":
        publish(root, tree)
        tile = root / "tile" / "1" / "000.p" / "2"
        tile.write_bytes(tile.read_bytes()[:-1])
        root.joinpath("checkpoint").write_text(b)
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("rollback", (a, b))
    assert got.message == (f"the log's checkpoint of tree size 400 is smaller than the one of tree size 600 "
                           f"it signed before, and it no longer serves the tiles of that tree: two signed "
                           f"checkpoints of {ORIGIN} — the log went back")


def test_a_tile_the_server_fails_to_give_is_an_error_not_a_verdict(site: tuple[Path, str, _Site]) -> None:
    root, url, handler = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(tree.note(400))
    handler.broken.add("tile/1/000.p/2")
    with pytest.raises(HTTPError) as info:
        step(url, seen)
    assert info.value.status == 500 and str(info.value) == f"GET {url}/tile/1/000.p/2: 500"


# -- a bigger tree whose entries do not lead to its root --------------------------------------

def _grown(site: tuple[Path, str, _Site], old: int = 300, new: int = 600) -> tuple[Path, str, MonitorState,
                                                                                   MemTree, str]:
    root, url, _ = site
    tree = MemTree(_data(new))
    publish(root, tree, old)
    seen = advance(url, None).state
    note = publish(root, tree, new)
    return root, url, seen, tree, note


def test_a_changed_new_entry_is_an_entries_alarm_when_the_tiles_prove_consistency(
        site: tuple[Path, str, _Site]) -> None:
    root, url, seen, _, note = _grown(site)
    bundle = root / "tile" / "entries" / "002.p" / "88"
    data = bundle.read_bytes()
    bundle.write_bytes(flip_last(data))
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("entries", (note,))
    assert got.message == ("the entries from 300 to 600 do not lead from the old tree to the new root; the "
                           "log's tiles prove its checkpoints of tree sizes 300 and 600 consistent, so the "
                           "entries it serves are not its tree's leaves")


def test_an_entry_seen_before_served_changed_is_named(site: tuple[Path, str, _Site]) -> None:
    root, url, seen, _, note = _grown(site)
    bundle = root / "tile" / "entries" / "001"
    data = bundle.read_bytes()
    bundle.write_bytes(data[:2] + b"X" + data[3:])  # entry 256: before the old size (300)
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("entries", (note,))
    assert got.message == ("entry bundle tile/entries/001 holds other entries than the ones the tree of size "
                           "300 was built from; the log's tiles prove its checkpoints of tree sizes 300 and "
                           "600 consistent, so the entries it serves are not its tree's leaves")
    data2 = bytearray(data)
    data2[-1] ^= 1  # the bundle's last entry: after the old size, caught by the root instead
    bundle.write_bytes(bytes(data2))
    assert alarm(url, seen).message.startswith("the entries from 300 to 600 do not lead")


@pytest.mark.parametrize(("cut", "said"), [(-1, "entry 87 is cut off"), (1, "entry 0 is cut off"),
                                           (0, "entry 0 is cut off"), (None, "2 bytes after entry 87")])
def test_a_malformed_bundle_is_named(site: tuple[Path, str, _Site], cut: int | None, said: str) -> None:
    root, url, seen, _, note = _grown(site)
    bundle = root / "tile" / "entries" / "002.p" / "88"
    data = bundle.read_bytes()
    bundle.write_bytes(data[:cut] if cut is not None else data + b"\0\0")
    got = alarm(url, seen)
    assert got.kind == "entries" and got.checkpoints == (note,)
    assert got.message.startswith(f"entry bundle tile/entries/002.p/88 is malformed (tile/entries/002.p/88: "
                                  f"{said}); the log's tiles prove")


def test_entry_lengths_are_read_as_big_endian_uint16(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree([b"x" * 300, b"y" * 65535, b""])
    publish(root, tree)
    got = advance(url, None)
    assert list(got.entries()) == [(0, b"x" * 300), (1, b"y" * 65535), (2, b"")]


def test_neither_entries_nor_tiles_giving_the_root_is_said_so(site: tuple[Path, str, _Site]) -> None:
    root, url, seen, _, note = _grown(site)
    bundle = root / "tile" / "entries" / "002.p" / "88"
    bundle.write_bytes(flip_last(bundle.read_bytes()))
    tile = root / "tile" / "0" / "002.p" / "88"
    tile.write_bytes(flip_last(tile.read_bytes()))
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("entries", (note,))
    assert got.message == ("the entries from 300 to 600 do not lead from the old tree to the new root; the "
                           "log's tiles do not give its checkpoint's root either: it serves neither the "
                           "entries nor the tiles of the tree of size 600 it signed")
    tile.unlink()  # not served at all: the same
    assert alarm(url, seen).message == got.message


def test_a_bigger_tree_of_another_history_is_a_conflict(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    a = publish(root, MemTree(_data(300)))
    seen = advance(url, None).state
    other = MemTree(_data(600, "x"))
    b = publish(root, other)
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("conflict", (a, b))
    assert got.message == (
        "entry bundle tile/entries/001 holds other entries than the ones the tree of size 300 was built "
        "from: the log's tiles of its tree of size 600 (they give that checkpoint's root) hold another tree "
        f"of size 300 than the one it signed before — two signed checkpoints of {ORIGIN} that contradict "
        "each other (a rewritten history, or a split view)")


def test_a_conflict_found_from_a_whole_bundle_state(site: tuple[Path, str, _Site]) -> None:
    """The old tree ends at a bundle's end (no partial leaves to compare): the root decides."""
    root, url, _ = site
    a = publish(root, MemTree(_data(256)))
    seen = advance(url, None).state
    assert seen.partial == ()
    b = publish(root, MemTree(_data(300, "x")))
    got = alarm(url, seen)
    assert (got.kind, got.checkpoints) == ("conflict", (a, b))
    assert got.message.startswith("the entries from 256 to 300 do not lead from the old tree to the new "
                                  "root: the log's tiles of its tree of size 300")


# -- what is not a step at all ---------------------------------------------------------------

def test_a_checkpoint_of_another_origin_is_refused(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    publish(root, MemTree(_data(3)))
    seen = advance(url, None).state
    other = generate_signer("example.com/other")
    root.joinpath("checkpoint").write_text(
        sign_note(format_checkpoint(Checkpoint(other.name, 5, bytes(32))), other))
    with pytest.raises(NoteError) as info:
        follow(reader(url), seen, [LOG.verifier(), other.verifier()])
    assert str(info.value) == ("the log's checkpoint is of 'example.com/other', the monitor follows "
                               "'example.com/tiles'")
    long = generate_signer("o" * 100)
    root.joinpath("checkpoint").write_text(
        sign_note(format_checkpoint(Checkpoint(long.name, 5, bytes(32))), long))
    with pytest.raises(NoteError) as info:
        follow(reader(url), seen, [long.verifier()])
    assert str(info.value) == (f"the log's checkpoint is of {repr(long.name)[:80]}, the monitor follows "
                               "'example.com/tiles'")


def test_a_checkpoint_that_is_not_utf8_is_refused(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    root.joinpath("checkpoint").write_bytes(b"\xff\n")
    with pytest.raises(NoteError) as info:
        step(url, None)
    assert str(info.value) == "the log's checkpoint is not UTF-8"


def test_witnesses_are_required_only_when_given(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree(_data(3))
    note = publish(root, tree)
    w1, w2 = generate_cosigner("w1.example"), generate_cosigner("w2.example")
    cosignature = w1.cosign(format_checkpoint(tree.checkpoint()), 1_700_000_000)
    root.joinpath("checkpoint").write_text(note + cosignature)
    assert isinstance(step(url, None, witnesses=[w1.verifier(), w2.verifier()], quorum=1), Advance)
    with pytest.raises(NoteError, match="fewer than the quorum of 2"):
        step(url, None, witnesses=[w1.verifier(), w2.verifier()])
    assert isinstance(step(url, None), Advance)


def test_fetch_errors_are_raised() -> None:
    with pytest.raises(JournalError):
        follow(reader("http://127.0.0.1:9"), None, [LOG.verifier()])


# -- the state file --------------------------------------------------------------------------

@pytest.fixture
def saved(site: tuple[Path, str, _Site], tmp_path: Path) -> tuple[Path, dict[str, object], MonitorState]:
    root, url, _ = site
    publish(root, MemTree(_data(600)))
    state = advance(url, None).state
    path = tmp_path / "state.json"
    save_state(str(path), state)
    return path, json.loads(path.read_text()), state


def _load_refused(path: Path, doc: object) -> str:
    path.write_text(json.dumps(doc))
    with pytest.raises(ValidationError) as info:
        load_state(str(path), [LOG.verifier()])
    return str(info.value)


def test_a_state_file_that_is_not_a_monitor_s_is_refused_naming_it(
        saved: tuple[Path, dict[str, object], MonitorState]) -> None:
    path, doc, state = saved
    unversioned = {k: v for k, v in doc.items() if k != "version"}
    for bad in ([], {**doc, "version": 2}, {**doc, "version": "1"}, unversioned):
        assert _load_refused(path, bad) == f"{path}: not a krepis monitor state (version 1)"
    assert _load_refused(path, {**doc, "checkpoint": 5}) == f"{path}: its checkpoint is not text"
    assert _load_refused(path, {k: v for k, v in doc.items() if k != "frontier"}) == f"{path}: 'frontier'"
    assert _load_refused(path, {k: v for k, v in doc.items() if k != "checkpoint"}) == f"{path}: 'checkpoint'"
    frontier = doc["frontier"]
    partial = doc["partial"]
    assert isinstance(frontier, list) and isinstance(partial, list)
    fit = f"{path}: its tree edge does not fit its checkpoint's size"
    assert _load_refused(path, {**doc, "partial": partial[:-1]}) == fit
    assert _load_refused(path, {**doc, "partial": [*partial, partial[0]]}) == fit
    assert _load_refused(path, {**doc, "frontier": frontier[:-1]}) == fit
    assert _load_refused(path, {**doc, "frontier": [*frontier, frontier[0]]}) == fit
    short = base64.b64encode(bytes(31)).decode()
    assert _load_refused(path, {**doc, "frontier": [short, *frontier[1:]]}) == fit
    assert _load_refused(path, {**doc, "partial": [*partial[:-1], short]}) == fit
    lead = f"{path}: its tree edge does not lead to its checkpoint's root"
    zero = base64.b64encode(bytes(32)).decode()
    assert _load_refused(path, {**doc, "partial": [*partial[:-1], zero]}) == lead
    assert _load_refused(path, {**doc, "frontier": [base64.b64encode(bytes(32)).decode()]}) == lead
    assert _load_refused(path, {**doc, "partial": ["!!!!", *partial[1:]]}).startswith(f"{path}: ")
    assert _load_refused(path, {**doc, "frontier": 5}).startswith(f"{path}: ")
    path.write_text("{")
    with pytest.raises(ValidationError) as info:
        load_state(str(path), [LOG.verifier()])
    assert str(info.value).startswith(f"{path}: Expecting property name")
    path.write_text(json.dumps(doc))
    assert load_state(str(path), [LOG.verifier()]) == state
    with pytest.raises(ValidationError) as info:
        load_state(str(path), [generate_signer(ORIGIN).verifier()])
    assert str(info.value) == f"{path}: the note carries no signature of a known key"


def test_a_state_file_must_be_a_regular_file(saved: tuple[Path, dict[str, object], MonitorState],
                                             tmp_path: Path) -> None:
    path, _, state = saved
    link = tmp_path / "link.json"
    link.symlink_to(path)
    assert load_state(str(link), [LOG.verifier()]) == state
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValidationError) as info:  # a link to nothing is not "no state yet"
        load_state(str(dangling), [LOG.verifier()])
    assert str(info.value) == f"{dangling} is missing"
    with pytest.raises(ValidationError) as info:
        load_state(str(tmp_path), [LOG.verifier()])
    assert str(info.value) == f"{tmp_path} is not a regular file"
    assert load_state(str(tmp_path / "none.json"), [LOG.verifier()]) is None


def test_a_state_file_of_the_empty_tree(tmp_path: Path) -> None:
    note = MemTree([]).note()
    state = MonitorState(note, MemTree([]).checkpoint(), (), ())
    save_state(str(tmp_path / "s.json"), state)
    assert load_state(str(tmp_path / "s.json"), [LOG.verifier()]) == state


def test_save_replaces_the_file_whole_and_leaves_nothing_behind(
        saved: tuple[Path, dict[str, object], MonitorState], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, state = saved
    before = path.read_bytes()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    save_state(str(path), state)
    assert path.read_bytes() == before and len(synced) == 2  # the file, then its directory
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".krepis-monitor-")) == []

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing)
    other = MonitorState(state.note, state.checkpoint, state.frontier, state.partial[:-1])
    with pytest.raises(OSError, match="No space left"):
        save_state(str(path), other)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".krepis-monitor-")] == []


def test_save_writes_beside_the_file_named_relative(saved: tuple[Path, dict[str, object], MonitorState],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, state = saved
    monkeypatch.chdir(path.parent)
    save_state("again.json", state)
    assert read_regular(str(path.parent / "again.json"), 1 << 20) == path.read_bytes()


# -- what the run of tlog/_monitor's mutants found -----------------------------------------------

def test_a_cut_tile_met_only_at_the_smaller_size_is_an_error_naming_it_not_a_crash(
        site: tuple[Path, str, _Site]) -> None:
    # the tree of 600 leaves is checked by tile/1/000.p/2 and tile/0/002.p/88 alone; its root at
    # size 300 also needs tile/0/001, read only then
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(tree.note(300))
    tile = root / "tile" / "0" / "001"
    tile.write_bytes(tile.read_bytes()[:-1])
    with pytest.raises(JournalError) as info:
        step(url, seen)
    assert isinstance(info.value, ValidationError)
    assert str(info.value) == "the log's tile tile/0/001 is 8191 bytes, not 8192"


def test_a_tile_longer_than_its_width_is_an_error_not_a_verdict(site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(tree.note(400))
    tile = root / "tile" / "1" / "000.p" / "2"
    tile.write_bytes(tile.read_bytes() + b"\x00")
    with pytest.raises(HTTPError) as info:
        step(url, seen)
    assert str(info.value) == f"GET {url}/tile/1/000.p/2: the answer is 65 bytes, more than the 64 read"


def test_each_tile_is_fetched_once_a_step(site: tuple[Path, str, _Site]) -> None:
    # the tiles a verdict is drawn from are the ones checked against the checkpoint's root
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(MemTree(_data(400, "x")).note())
    fetched: list[str] = []
    read = reader(url, 10.0)

    def fetch(path: str, limit: int) -> bytes:
        fetched.append(path)
        return read(path, limit)

    got = follow(fetch, seen, [LOG.verifier()])
    assert isinstance(got, Alarm) and got.kind == "conflict"
    tiles = [p for p in fetched if p.startswith("tile/")]
    assert sorted(tiles) == sorted(set(tiles)) and "tile/0/001" in tiles


def test_an_entry_bundle_over_the_largest_possible_is_an_error_not_a_verdict(
        site: tuple[Path, str, _Site]) -> None:
    root, url, _ = site
    publish(root, MemTree(_data(1)))
    bundle = root / "tile" / "entries" / "000.p" / "1"
    bundle.write_bytes(b"\xff\xff" + b"x" * 0xFFFF + b"y")  # one entry of 65,535 bytes is the most
    with pytest.raises(HTTPError) as info:
        step(url, None)
    assert str(info.value) == (f"GET {url}/tile/entries/000.p/1: the answer is 65538 bytes, more than the "
                               "65537 read")


def test_a_state_file_over_2_mib_is_refused_unread(
        saved: tuple[Path, dict[str, object], MonitorState]) -> None:
    path, doc, state = saved
    text = json.dumps(doc)
    path.write_text(text + " " * (2 * (1 << 20) - len(text)))
    assert load_state(str(path), [LOG.verifier()]) == state  # 2 MiB: read
    path.write_text(text + " " * (2 * (1 << 20) - len(text) + 1))
    with pytest.raises(ValidationError) as info:
        load_state(str(path), [LOG.verifier()])
    assert str(info.value) == f"{path} is 2097153 bytes, more than the 2097152 it may hold"


@pytest.mark.parametrize("field", ["frontier", "partial"])
def test_a_state_file_s_hashes_are_strict_base64(saved: tuple[Path, dict[str, object], MonitorState],
                                                 field: str) -> None:
    path, doc, _ = saved
    hashes = doc[field]
    assert isinstance(hashes, list) and hashes
    stray = hashes[0][:10] + "*" + hashes[0][10:]  # the same hash, were the stray character skipped
    assert base64.b64decode(stray) == base64.b64decode(hashes[0])
    said = _load_refused(path, {**doc, field: [stray, *hashes[1:]]})
    assert said.startswith(f"{path}: ")  # (then binascii's words, which vary with Python's version)


def test_save_writes_a_hidden_temporary_file_beside_the_state(
        saved: tuple[Path, dict[str, object], MonitorState], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, state = saved
    renamed: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        renamed.append((src, dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    save_state(str(path), state)
    [(src, dst)] = renamed
    assert os.path.dirname(src) == str(path.parent) and dst == str(path)
    assert os.path.basename(src).startswith(".krepis-monitor-")


def test_a_tile_read_after_the_root_was_checked_must_hash_to_the_tile_above_it(
        site: tuple[Path, str, _Site]) -> None:
    # an older checkpoint (a stale cache) and one damaged full tile its root at that size needs,
    # which the tree's own root did not: no verdict from a tile nothing checked — an error
    root, url, _ = site
    tree = MemTree(_data(600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(tree.note(300))
    tile = root / "tile" / "0" / "001"
    tile.write_bytes(flip_last(tile.read_bytes()))
    with pytest.raises(ValidationError) as info:
        step(url, seen)
    assert str(info.value) == ("the log's tile tile/0/001 does not hash to its node in tile/1/000.p/2: "
                               "the log's tiles disagree")
    tile.write_bytes(flip_last(tile.read_bytes()))  # whole again: no step
    assert step(url, seen) is None


def test_a_tile_that_disagrees_is_named_with_the_tile_above_it_at_any_index(
        site: tuple[Path, str, _Site]) -> None:
    # 65,536 + 600 leaves: the root at 65,536 + 300 needs tile/0/257 (leaves 65,792 … 66,047),
    # checked against its node in tile/1/001.p/2; the tree's own root does not need it
    root, url, _ = site
    tree = MemTree(_data(65536 + 600))
    publish(root, tree)
    seen = advance(url, None).state
    root.joinpath("checkpoint").write_text(tree.note(65536 + 300))
    assert step(url, seen) is None  # an older checkpoint of the same history
    tile = root / "tile" / "0" / "257"
    tile.write_bytes(flip_last(tile.read_bytes()))
    with pytest.raises(ValidationError) as info:
        step(url, seen)
    assert str(info.value) == ("the log's tile tile/0/257 does not hash to its node in tile/1/001.p/2: "
                               "the log's tiles disagree")
