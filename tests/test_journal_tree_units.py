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

import pytest

import krepis.journal._tree as tree
from krepis import (
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    LogStatus,
    SovereignJournal,
    TransactionLog,
    ValidationError,
)
from krepis.cli._tlog_serve import TileServer
from krepis.cli._witness import witness_handlers
from krepis.tlog import QuorumError
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
from test_witness import LOG, WITNESS, grow, open_witness

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
