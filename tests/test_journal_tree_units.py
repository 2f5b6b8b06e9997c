"""The journal's verifiable log (``krepis.journal._tree``) at its edges: the refusals of bad
arguments with their exact texts, the paths ``verify_extends``'s errors carry, a clear or an
archive under a trusted checkpoint, exports from a store whose path holds spaces, and how
``cosign_checkpoint`` talks to witnesses — one request per witness when the log knows what the
witness cosigned last, the quorum it is given, and the cosignatures of a tree kept before."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import krepis.journal._tree as tree
import rawlmdb
from krepis import (
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis._model import encode_log
from krepis.cli._tlog_serve import TileServer
from krepis.cli._witness import witness_handlers
from krepis.tlog import QuorumError, verify_consistency
from krepis.tlog._cosig import CosignerKey, generate_cosigner, open_cosigned_checkpoint
from krepis.tlog._note import (
    MAX_SIGNATURES,
    Checkpoint,
    format_checkpoint,
    generate_signer,
    sign_note,
    split_note,
)
from logtools import flip_last
from test_archive import fill_fast
from test_witness import LOG, WITNESS, body, grow, open_witness

SIGNER = generate_signer("example.com/tree")
VKEY = str(SIGNER.verifier())


def _fill(journal: SovereignJournal, n: int, start: int = 0, tag: str = "r") -> None:
    for i in range(start, start + n):
        journal.log_transaction(TransactionLog(i, "op", f"{tag}{i}", LogStatus.Completed))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "store", flush="interval:20ms") as j:
        _fill(j, 10)
        yield j


# -- arguments ------------------------------------------------------------------------------------

def test_bad_arguments_are_refused_with_texts_naming_them(journal: SovereignJournal) -> None:
    note = journal.sign_checkpoint(SIGNER)
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: journal.inclusion_proof("3"), InvalidTypeError,  # type: ignore[arg-type]
         "seq must be an int, got str '3'"),
        (lambda: journal.cosign_checkpoint(SIGNER, [object()]), InvalidTypeError,  # type: ignore[list-item]
         "witnesses must be WitnessEndpoint objects or their NAME=URL:VKEY text"),
        (lambda: journal.sign_checkpoint(5), InvalidTypeError,  # type: ignore[arg-type]
         "signer must be a Signer or its text, got int"),
        (lambda: journal.verify_extends(note.encode(), [VKEY]), InvalidTypeError,  # type: ignore[arg-type]
         "trusted must be a signed checkpoint note (str), got bytes"),
        (lambda: journal.verify_extends(note, VKEY), InvalidTypeError,  # (a str is not a list of keys)
         "verifiers must be a list of Verifier keys (or their text)"),
        (lambda: journal.verify_extends(note, 5), InvalidTypeError,  # type: ignore[arg-type]
         "verifiers must be a list of Verifier keys (or their text)"),
        (lambda: journal.verify_extends(note, [5]), InvalidTypeError,  # type: ignore[list-item]
         "a verifier must be a Verifier or its text, got int"),
        (lambda: journal.verify_extends(note, []), ValidationError,
         "verify_extends needs the verifier key of the log: the checkpoint is only as good as its signature"),
        (lambda: journal.verify_extends(note, [VKEY], archive="x", live_only=True), ValidationError,
         "archive= and live_only=True contradict each other: give one of them"),
    ]
    for call, kind, text in cases:
        with pytest.raises(kind) as info:
            call()
        assert str(info.value) == text
    assert journal.verify_extends(note, [VKEY]).tree_size == 10  # (the same note is good)


# -- verify_extends: what its errors carry -------------------------------------------------------

def test_a_clear_during_the_verification_is_said_so(journal: SovereignJournal,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is read in more than one transaction: a clear between them is a ``JournalError``
    asking to verify again — not a corruption, and not a pass."""
    note = journal.sign_checkpoint(SIGNER)
    storage = journal._live()
    verify = storage.verify

    def verify_then_clear() -> object:
        report = verify()
        journal.clear_all()
        return report

    monkeypatch.setattr(storage, "verify", verify_then_clear)
    with pytest.raises(JournalError) as info:
        journal.verify_extends(note, [VKEY])
    assert type(info.value) is JournalError
    assert str(info.value) == (f"the journal at {journal.path} was cleared while it was being verified; "
                               "verify again")


def test_each_failure_names_the_store_and_says_cleared_only_after_a_clear(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        _fill(journal, 20)
        kept = journal.sign_checkpoint(SIGNER)
        journal.clear_all()
        with pytest.raises(CorruptStorageError) as info:
            journal.verify_extends(kept, [VKEY])
        assert info.value.path == journal.path
        assert str(info.value).startswith(f"the journal at {journal.path} was cleared after example.com/tree "
                                          "signed a checkpoint of it (tree size 20, log 0)")
    with SovereignJournal(tmp_path / "short") as journal:
        _fill(journal, 5)
        bigger = sign_note(format_checkpoint(Checkpoint(SIGNER.name, 9, b"\1" * 32)), SIGNER)
        with pytest.raises(CorruptStorageError) as info:
            journal.verify_extends(bigger, [VKEY])
        assert info.value.path == journal.path
        assert str(info.value) == (
            f"the log of the journal at {journal.path} has 5 entries, fewer than the 9 of the trusted "
            "checkpoint of example.com/tree: entries were removed (or rolled back, as by a restore from an "
            "older backup)")  # (never cleared: nothing said of a clear)
        other = sign_note(format_checkpoint(Checkpoint(SIGNER.name, 3, b"\1" * 32)), SIGNER)
        with pytest.raises(CorruptStorageError) as info:
            journal.verify_extends(other, [VKEY])
        assert info.value.path == journal.path
        assert str(info.value) == (
            f"the log of the journal at {journal.path} does not extend the trusted checkpoint of "
            "example.com/tree (tree size 3): its entries before seq 3 are not the ones that checkpoint "
            "signed — the history was rewritten")


def test_archived_entries_of_a_log_begun_by_a_clear_are_checked_from_the_archive(tmp_path: Path) -> None:
    """The archived prefix of a log that does not begin at seq 0: its bundles are the log's
    first ones (counted from the log's first seq), checked against the stored tree."""
    store, arch = tmp_path / "store", tmp_path / "archive"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        _fill(journal, 30)
        journal.clear_all()
        _fill(journal, 600, start=30, tag="new")
        kept = journal.sign_checkpoint(SIGNER)
        journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == 30 + 512
        report = journal.verify_extends(kept, [VKEY])
        # (the clear's own entry is the new log's first)
        assert (report.entries, report.archived, report.tree_size) == (89, 512, 601)
        with pytest.raises(ValidationError) as info:
            journal.verify_extends(kept, [VKEY], live_only=True)
        assert str(info.value) == (
            f"entries 30…541 of the journal at {journal.path} are not in the store (archived, or removed): "
            "they were not checked against the tree; read them from the archive (without --live-only, "
            "live_only=True)")
    moved = tmp_path / "moved"
    arch.rename(moved)  # an archive given explicitly is the one read
    with SovereignJournal(store) as journal:
        assert journal.verify_extends(kept, [VKEY], archive=moved).archived == 512


# -- tile exports ---------------------------------------------------------------------------------

def test_exports_from_a_store_whose_path_has_spaces_continue(tmp_path: Path) -> None:
    """The export's marker records the store's path on its ``store`` line: a path with spaces in
    it is still read back, so the next export into the directory is taken as the same history."""
    with SovereignJournal(tmp_path / "my  audit store" / "s p", flush="interval:20ms") as journal:
        _fill(journal, 300)
        assert journal.export_tiles(tmp_path / "tiles", SIGNER) > 0
        _fill(journal, 30, start=300)
        assert journal.export_tiles(tmp_path / "tiles", SIGNER) > 0


def test_an_export_without_a_checkpoint_or_into_a_foreign_directory_is_refused(
        journal: SovereignJournal, tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as info:
        journal.export_tiles(tmp_path / "tiles")
    assert str(info.value) == (f"the journal at {journal.path} has no checkpoint of its current log yet: "
                               "sign one (krepis checkpoint --key FILE, or pass a signer)")
    assert not (tmp_path / "tiles").exists()


def test_archived_entries_read_for_tiles_under_live_only_are_named(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "store", flush="interval:20ms") as journal:
        _fill(journal, 600)
        journal.archive(tmp_path / "archive", keep_last=0)
        _reader, entries = journal.tile_sources(live_only=True)
        with pytest.raises(ValidationError) as info:
            entries(256, 256)
        assert str(info.value) == (
            f"entries 256…511 of the journal at {journal.path} are archived: read without live_only (or pass "
            "the archive directory, archive=DIR, --archive DIR)")
        assert len(entries(512, 88)) == 88  # live entries are read from the store


# -- cosigning ------------------------------------------------------------------------------------

class _Served:
    """A witness behind HTTP, counting the refusals it answers."""

    def __init__(self, state: Path, key: CosignerKey) -> None:
        self.key = key
        self.refusals: list[str] = []
        self.core, self.journal = open_witness(state, key=key)
        get, post = witness_handlers(self.core, self.refusals.append)
        self.server = TileServer(("127.0.0.1", 0), get, post=post, max_body=1 << 20, timeout=5.0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self, label: str) -> str:
        return f"{label}=http://127.0.0.1:{self.server.address[1]}:{self.key.verifier()}"

    def close(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=10)
        self.core.close()
        self.journal.close()


@pytest.fixture
def witnesses(tmp_path: Path) -> Iterator[list[_Served]]:
    served = [_Served(tmp_path / "w1", WITNESS),
              _Served(tmp_path / "w2", generate_cosigner("witness.example/w2"))]
    try:
        yield served
    finally:
        for s in served:
            s.close()


def _conflicts(served: _Served) -> list[str]:
    return [line for line in served.refusals if ": 409: " in line]


def _cosigned_by(key: CosignerKey, note: str, *, forged: bool = False) -> str:
    """``note`` with a cosignature line of ``key`` made here (``forged``: one that does not
    verify: a bit of its signature flipped)."""
    text = note[:note.index("\n\n") + 1]
    line = key.cosign(text, 1_700_000_000)
    if forged:
        prefix, b64 = line.rstrip("\n").rsplit(" ", 1)
        line = f"{prefix} {base64.b64encode(flip_last(base64.b64decode(b64))).decode()}\n"
    return note + line


def test_each_round_starts_from_the_size_the_witness_cosigned_last(tmp_path: Path,
                                                                    witnesses: list[_Served]) -> None:
    """The log sends each witness a proof from the newest checkpoint of its own origin and log
    that the witness validly cosigned — not from 0, not from an older one, not from another
    origin's — so a witness that keeps up is asked once per round (a wrong guess costs a 409 and
    a second request)."""
    w1, w2 = witnesses
    another = generate_signer("example.com/another")
    with SovereignJournal(tmp_path / "log") as log:
        grow(log, 10)
        log.cosign_checkpoint(LOG, [w1.endpoint("w1")])  # a witness that never saw the log: from 0
        grow(log, 5, tag="b")
        log.cosign_checkpoint(LOG, [w1.endpoint("w1"), w2.endpoint("w2")])  # w1 from 10, w2 from 0
        grow(log, 5, tag="c")
        log.cosign_checkpoint(LOG, [w1.endpoint("w1")])  # w1 cosigned 10 and 15: from 15
        log.cosign_checkpoint(LOG, [w1.endpoint("w1")])  # the same tree again: from 20
        grow(log, 5, tag="d")
        head = log.tree_head()
        storage = log._live()
        # w1's cosignature (made here) on another origin's checkpoint of 25: not this log's
        theirs = sign_note(format_checkpoint(Checkpoint(another.name, 25, head.root)), another)
        storage.add_checkpoint(head.epoch, 25, another.name, _cosigned_by(WITNESS, theirs))
        # this origin's note of 25 with a cosignature of w1 that does not verify: passed over
        ours = sign_note(format_checkpoint(Checkpoint(LOG.name, 25, head.root)), LOG)
        storage.add_checkpoint(head.epoch, 25, LOG.name, _cosigned_by(WITNESS, ours, forged=True))
        result = log.cosign_checkpoint(LOG, [w1.endpoint("w1"), w2.endpoint("w2")])  # from 20 and 15
        assert sorted(c.witness for c in result.cosignatures) == ["witness.example/w1", "witness.example/w2"]
        assert _conflicts(w1) == [] and _conflicts(w2) == []


def test_a_quorum_of_one_is_met_by_one_of_two(tmp_path: Path, witnesses: list[_Served]) -> None:
    w1, w2 = witnesses
    with SovereignJournal(tmp_path / "log") as log:
        grow(log, 10)
        w2.close()  # (nobody answers there any more)
        result = log.cosign_checkpoint(LOG, [w1.endpoint("w1"), w2.endpoint("w2")], quorum=1, timeout=5.0)
        assert [c.witness for c in result.cosignatures] == ["witness.example/w1"]
        assert log.latest_checkpoint() == result.note
        with pytest.raises(QuorumError):
            log.cosign_checkpoint(LOG, [w1.endpoint("w1"), w2.endpoint("w2")], timeout=5.0)
        witnesses.remove(w2)


def test_a_tree_cosigned_again_keeps_the_cosignatures_of_before_up_to_the_limit(
        tmp_path: Path, witnesses: list[_Served], monkeypatch: pytest.MonkeyPatch) -> None:
    """Cosignatures kept with a note of the same tree are appended — each as its own line — after
    this round's, and never past the note's limit of signatures (a note over it cannot be read)."""
    w1, _w2 = witnesses
    others = [generate_cosigner(f"witness.example/x{i}") for i in range(MAX_SIGNATURES)]
    with SovereignJournal(tmp_path / "log") as log:
        grow(log, 10)
        head = log.tree_head()
        note = sign_note(format_checkpoint(Checkpoint(LOG.name, head.size, head.root)), LOG)
        text = note[:note.index("\n\n") + 1]
        kept = note + "".join(k.cosign(text, 1_700_000_000 + i) for i, k in enumerate(others[:2]))
        log._live().add_checkpoint(head.epoch, head.size, LOG.name, kept)
        result = log.cosign_checkpoint(LOG, [w1.endpoint("w1")])
        both = open_cosigned_checkpoint(result.note, [LOG.verifier()], [WITNESS.verifier(),
                                        *(k.verifier() for k in others[:2])])
        assert sorted(c.witness for c in both.cosignatures) == [
            "witness.example/w1", "witness.example/x0", "witness.example/x1"]
        assert split_note(result.note)[1][1].name == "witness.example/w1"  # this round's first
        # a kept note already holding the limit: the new round's cosignature replaces the oldest
        full = note + "".join(k.cosign(text, 1_700_000_000) for k in others[:MAX_SIGNATURES - 1])
        log._live().add_checkpoint(head.epoch, head.size, LOG.name, full)
        result = log.cosign_checkpoint(LOG, [w1.endpoint("w1")])
        lines = split_note(result.note)[1]
        assert len(lines) == MAX_SIGNATURES
        assert [s.name for s in lines[:2]] == [LOG.name, "witness.example/w1"]
        assert lines[-1].name == f"witness.example/x{MAX_SIGNATURES - 3}"
        # a round whose own answers fill the note keeps nothing from before (x0 here)
        real = tree.collect_cosignatures

        def many(note: str, *args: object, **kwargs: object) -> object:
            cosigned, answers = real(note, *args, **kwargs)  # type: ignore[arg-type]
            return cosigned + "".join(k.cosign(text, 1) for k in others[1:MAX_SIGNATURES - 1]), answers

        monkeypatch.setattr(tree, "collect_cosignatures", many)
        result = log.cosign_checkpoint(LOG, [w1.endpoint("w1")])  # (x0, kept before, is not in it)
        lines = split_note(result.note)[1]
        assert len(lines) == MAX_SIGNATURES and lines[-1].name == f"witness.example/x{MAX_SIGNATURES - 2}"


# -- the archived prefix: the archive given, the one recorded, or none ----------------------------

class _Archived:
    """A store of 600 entries whose first 512 are archived, and whose recorded archive directory
    was moved to ``moved``: reads of the archived prefix need ``archive=moved``."""

    def __init__(self, tmp_path: Path) -> None:
        self.store, arch, self.moved = tmp_path / "store", tmp_path / "archive", tmp_path / "moved"
        with SovereignJournal(self.store, flush="interval:20ms") as journal:
            grow(journal, 300)
            self.note300 = journal.sign_checkpoint(LOG)
            self.root300 = journal.tree_root(300)
            grow(journal, 300, tag="b")
            journal.archive(arch, keep_last=0)
            assert journal.live_first_seq() == 512
        arch.rename(self.moved)
        self.recorded = str(arch)


@pytest.fixture
def archived(tmp_path: Path) -> _Archived:
    return _Archived(tmp_path)


def test_reads_of_the_archived_prefix_take_the_archive_given_or_refuse(archived: _Archived,
                                                                       tmp_path: Path) -> None:
    with SovereignJournal(archived.store) as journal:
        assert journal.tree_root(300, archive=archived.moved) == archived.root300
        proof = journal.consistency_proof(300, archive=archived.moved)
        assert verify_consistency(300, 600, archived.root300, journal.tree_root(), proof.path)
        for call in (lambda: journal.tree_root(300, live_only=True),
                     lambda: journal.consistency_proof(300, live_only=True)):
            with pytest.raises(ValidationError, match=r"entries 256…511 .* are archived"):
                call()
        with pytest.raises(StorageError) as info:
            journal.tree_root(300)  # the recorded archive is not where it was
        assert archived.recorded in str(info.value)
        _reader, entries = journal.tile_sources(archive=archived.moved)
        bundle = entries(256, 256)
        assert len(bundle) == 256 and bundle[0] == encode_log(journal.query(
            order="append", newest_first=False, limit=1, after=255, archive=archived.moved)[0])
        _reader, entries = journal.tile_sources()  # by default the recorded archive: not there
        with pytest.raises(StorageError) as info:
            entries(256, 256)
        assert archived.recorded in str(info.value)
        _reader, entries = journal.tile_sources(live_only=True)  # live entries need no archive
        assert entries(512, 88) == [encode_log(log) for log in journal.query(
            order="append", newest_first=False, limit=88, after=511, live_only=True)]
        assert journal.export_tiles(tmp_path / "tiles", LOG, archive=archived.moved) > 0


def test_cosigning_reads_old_proofs_from_the_archive_given(archived: _Archived, tmp_path: Path) -> None:
    """A witness that last cosigned a size inside the archived prefix (300) is sent a proof from
    it, read from the archive the call names."""
    w1 = _Served(tmp_path / "w1", WITNESS)
    try:
        with SovereignJournal(archived.store) as journal:
            w1.core.add_checkpoint(body(0, [], archived.note300))  # (w1 cosigned 300 back then)
            journal._live().add_checkpoint(journal.tree_head().epoch, 300, LOG.name,
                                           _cosigned_by(WITNESS, archived.note300))
            grow(journal, 10, tag="c")
            result = journal.cosign_checkpoint(LOG, [w1.endpoint("w1")], archive=archived.moved)
            assert result.checkpoint.size == 610 and _conflicts(w1) == []
            # signing the same tree again without witnesses returns the cosigned note, kept
            assert journal.sign_checkpoint(LOG) == result.note == journal.latest_checkpoint()
    finally:
        w1.close()


def test_the_default_cosigning_timeout_is_10_seconds(journal: SovereignJournal,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []

    def spy(note: str, endpoints: object, **kwargs: object) -> object:
        asked.append(kwargs["timeout"])
        raise QuorumError("(not asked)", [])

    monkeypatch.setattr(tree, "collect_cosignatures", spy)
    with pytest.raises(QuorumError):
        journal.cosign_checkpoint(LOG, [f"w1=http://127.0.0.1:9:{WITNESS.verifier()}"])
    assert asked == [10.0]


def test_a_rewritten_tree_above_the_archived_bundles_is_caught_by_rehashing_them(tmp_path: Path) -> None:
    """The store's tree above the archived bundles (here the height-16 hash of the log's first
    65,536 entries, and the tree head made of it) rewritten to agree with itself: the store's own
    check has only the tree for those entries and passes, but ``verify_extends`` hashes the
    archived bundles again and finds the stored hash is not theirs — leaf numbers counted from
    the log's first seq (a log begun by a clear)."""
    store, arch = tmp_path / "store", tmp_path / "archive"
    with SovereignJournal(store) as journal:
        _fill(journal, 9)
        journal.clear_all()  # the log begins at seq 9 (the clear's entry)
        first = journal.tree_head().first_seq
        fill_fast(journal, [TransactionLog(i, "op", f"r{i}", LogStatus.Completed)
                            for i in range(first + 1, first + 65_536 + 10)])
        kept = journal.sign_checkpoint(SIGNER)
        journal.archive(arch, keep_last=0)
        assert journal.live_first_seq() == first + 65_536

    def rewrite(txn: Any, db: Any) -> None:
        txn.put(b"\x10" + (0).to_bytes(8, "big"), b"\1" * 32, db=db(b"tree"))
        head = bytearray(txn.get(b"tree", db=db(b"meta")))
        head[16:48] = b"\1" * 32  # the tree head's first subtree: entries 0…65535 of the log
        txn.put(b"tree", bytes(head), db=db(b"meta"))

    rawlmdb.edit(store, rewrite)
    with SovereignJournal(store) as journal:
        journal._live().verify()  # (the store alone cannot tell)
        for note in (kept, journal.sign_checkpoint(SIGNER)):  # even a checkpoint signed since
            with pytest.raises(CorruptStorageError) as info:
                journal.verify_extends(note, [VKEY])
            assert str(info.value) == (
                f"the archive at {arch} and the journal at {journal.path} disagree: the stored Merkle hash "
                f"of entries {first}…{first + 65_535} (height 16) does not match the entries")
            assert info.value.path == str(arch)


# -- tile sources ---------------------------------------------------------------------------------

def test_tile_sources_read_any_run_of_entries(journal: SovereignJournal) -> None:
    _reader, entries = journal.tile_sources()
    want = [encode_log(log) for log in journal.query(order="append", newest_first=False, limit=10)]
    assert entries(0, 10) == want and entries(1, 3) == want[1:4] and entries(9, 1) == want[9:]


def test_entries_missing_from_a_store_are_corruption_naming_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SovereignJournal(store) as journal:
        _fill(journal, 20)
    rawlmdb.edit(store, lambda txn, db: txn.delete((5).to_bytes(8, "big"), db=db(b"entries")))
    with SovereignJournal(store) as journal:
        _reader, entries = journal.tile_sources()
        assert len(entries(10, 10)) == 10
        with pytest.raises(CorruptStorageError) as info:
            entries(0, 10)
        assert str(info.value) == f"storage at {journal.path}: entries 0…9 are not all there"
        assert info.value.path == journal.path


# -- exports: the marker, races ------------------------------------------------------------------

def test_a_foreign_or_unmarked_directory_is_refused_with_its_marker_named(journal: SovereignJournal,
                                                                           tmp_path: Path) -> None:
    unmarked = tmp_path / "unmarked"
    unmarked.mkdir()
    (unmarked / "notes.txt").write_text("mine")
    with pytest.raises(ValidationError) as info:
        journal.export_tiles(unmarked, SIGNER)
    assert str(info.value) == (f"{unmarked} is not empty and has no .krepis-log marker of a krepis export: "
                               "it may hold the tiles of another history; export into an empty or new "
                               "directory")
    tiles = tmp_path / "tiles"
    journal.export_tiles(tiles, SIGNER)
    with SovereignJournal(tmp_path / "other") as other:
        _fill(other, 12, tag="other")
        with pytest.raises(ValidationError) as info:
            other.export_tiles(tiles, SIGNER)
    assert str(info.value) == (f"{tiles} holds the tiles of another log, or of another history of this one "
                               f"(see {tiles / '.krepis-log'}); export into a new directory")
    (tiles / ".krepis-log").write_bytes(b"x" * 4097)  # a marker past 4 KiB is not read
    with pytest.raises(JournalError, match="4096"):
        journal.export_tiles(tiles, SIGNER)
    (tiles / ".krepis-log").write_bytes((tiles / ".krepis-log").read_bytes()[:4096])
    with pytest.raises(ValidationError, match="holds the tiles of another log"):
        journal.export_tiles(tiles, SIGNER)


def test_an_export_of_an_empty_log_is_continued(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "store") as journal:
        journal.export_tiles(tmp_path / "tiles", SIGNER)  # a tree of 0 leaves
        _fill(journal, 5)
        journal.export_tiles(tmp_path / "tiles", SIGNER)
        assert (tmp_path / "tiles" / "checkpoint").read_text() == journal.latest_checkpoint()


def test_an_export_while_the_log_grows_reads_todays_tree_as_asked(
        archived: _Archived, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries written between the export's first read and its checkpoint: the export reads the
    tree again — from the archive it was given, and still refusing archived entries under
    ``live_only``."""
    with SovereignJournal(archived.store) as journal:
        sign = journal.sign_checkpoint

        def grow_then_sign(signer: object) -> str:
            grow(journal, 3, tag="meanwhile")
            return sign(signer)  # type: ignore[arg-type]

        monkeypatch.setattr(journal, "sign_checkpoint", grow_then_sign)
        journal.export_tiles(tmp_path / "tiles", LOG, archive=archived.moved)
        assert (tmp_path / "tiles" / "checkpoint").read_text().split("\n")[1] == "603"
        with pytest.raises(ValidationError) as info:
            journal.export_tiles(tmp_path / "live", LOG, live_only=True)
        assert type(info.value) is ValidationError
        assert str(info.value).startswith("entries 0…255 of the journal at ")
        assert str(info.value).endswith(
            " are archived: pass the archive directory (archive=DIR, --archive DIR)")


def test_a_clear_during_an_export_without_a_signer_is_refused(journal: SovereignJournal, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    journal.sign_checkpoint(SIGNER)
    sources = journal.tile_sources

    def clear_then_read(*args: object, **kwargs: object) -> object:
        journal.clear_all()
        return sources(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(journal, "tile_sources", clear_then_read)
    with pytest.raises(ValidationError) as info:
        journal.export_tiles(tmp_path / "tiles")
    assert str(info.value) == f"the journal at {journal.path} has no checkpoint of its current log"


def test_a_clear_while_entries_are_read_says_cleared_not_archived(journal: SovereignJournal) -> None:
    """Entries read for a tile after a clear began a new log (whose first seq is past them): the
    reader says the journal was cleared — read again (a tile server's 503) — not that they are
    archived (its 404), with or without ``live_only``."""
    for live_only in (True, False):
        _fill(journal, 10)
        _reader, entries = journal.tile_sources(live_only=live_only)
        journal.clear_all()
        _fill(journal, 3)
        with pytest.raises(JournalError) as info:
            entries(0, 5)
        assert type(info.value) is JournalError
        assert str(info.value) == (f"the journal at {journal.path} was cleared while its tree was being read "
                                   "(a new log began); read again")
