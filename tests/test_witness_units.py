"""The witness (``krepis.tlog._witness``) one rule at a time, on a real journal: every refusal of
an ``add-checkpoint`` body and of a checkpoint with its exact text and status, each limit at its
edge (body, proof lines, sizes, text, record), what is recorded (and what is not), the record
read back and refused when it is not the witness's, the reuse window and the clock. The log's
trees are built in memory from the Merkle primitives."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from krepis import (
    CorruptStorageError,
    LogStatus,
    SovereignJournal,
    StorageError,
    TransactionLog,
    ValidationError,
)
from krepis.tlog._cosig import generate_cosigner
from krepis.tlog._merkle import EMPTY_ROOT, consistency_proof
from krepis.tlog._note import Checkpoint, Signer, format_checkpoint, generate_signer, sign_note, split_note
from krepis.tlog._witness import (
    CONFLICT_OP,
    COSIGNED_OP,
    MAX_BODY,
    MAX_PROOF_LINES,
    MAX_TEXT,
    REUSE_SECONDS,
    AddCheckpoint,
    Cosigned,
    Refusal,
    Witness,
    parse_add_checkpoint,
)
from test_tiles_units import MemTree

LOG = generate_signer("example.com/log")
WITNESS = generate_cosigner("witness.example/w1")
TREE = MemTree([f"e{i}".encode() for i in range(40)])
OTHER = MemTree([f"x{i}".encode() for i in range(40)])
T0 = 2_000_000_000.0


def note_of(size: int, tree: MemTree = TREE, key: Signer = LOG, extensions: tuple[str, ...] = ()) -> str:
    return sign_note(format_checkpoint(Checkpoint(key.name, size, tree.root(size), extensions)), key)


def body(old: int, note: str, proof: list[bytes] | None = None) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in (proof or []))]
    return ("\n".join(lines) + "\n\n" + note).encode()


def request(old: int, new: int, tree: MemTree = TREE, key: Signer = LOG) -> bytes:
    proof = consistency_proof(tree.node, old, new) if 0 < old < new else []
    return body(old, note_of(new, tree, key), proof)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[SovereignJournal]:
    with SovereignJournal(tmp_path / "journal", retention="off") as j:
        yield j


@pytest.fixture
def witness(tmp_path: Path, journal: SovereignJournal, clock: Clock) -> Iterator[Witness]:
    core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock"), clock=clock)
    yield core
    core.close()


def refused(core: Witness, data: bytes) -> Refusal:
    with pytest.raises(Refusal) as info:
        core.add_checkpoint(data)
    return info.value


def parse_refused(data: bytes) -> tuple[int, str]:
    with pytest.raises(Refusal) as info:
        parse_add_checkpoint(data)
    return info.value.status, str(info.value)


# -- the request body ------------------------------------------------------------------------

def test_a_body_is_parsed_to_the_byte() -> None:
    proof = [bytes([i]) * 32 for i in range(3)]
    assert parse_add_checkpoint(body(7, "the note\n", proof)) == AddCheckpoint(7, tuple(proof), "the note\n")
    assert parse_add_checkpoint(b"old 0\n\n") == AddCheckpoint(0, (), "")
    top = AddCheckpoint(2**63 - 1, (), "x\n\ny")
    assert parse_add_checkpoint(b"old 9223372036854775807\n\nx\n\ny") == top
    assert parse_add_checkpoint(body(1, "n", [proof[0]] * MAX_PROOF_LINES)).proof == (proof[0],) * 63


def test_a_body_over_the_limit_is_413() -> None:
    assert MAX_BODY == 128 * 1024
    at_limit = b"old 0\n\n" + b"x" * (MAX_BODY - 7)
    assert parse_add_checkpoint(at_limit).note == "x" * (MAX_BODY - 7)
    assert parse_refused(at_limit + b"x") == (
        413, f"the request body is {MAX_BODY + 1} bytes, more than the {MAX_BODY} a witness reads")


@pytest.mark.parametrize(("data", "said"), [
    (b"\xff\n\n", "the request body is not UTF-8"),
    (b"old 0\n", "the request body has no empty line between the proof and the checkpoint"),
    (b"", "the request body has no empty line between the proof and the checkpoint"),
    (b"old 0\r\n\r\nx", "the request body has no empty line between the proof and the checkpoint"),
])
def test_a_body_that_is_no_request_is_400(data: bytes, said: str) -> None:
    assert parse_refused(data) == (400, said)


@pytest.mark.parametrize("first", ["old 00", "old 01", "old -1", "old +1", "old 1 ", " old 1", "OLD 1",
                                   "old  1", "old", "old ", "old 9223372036854775808",
                                   "old 99999999999999999999", "old ١", "old 0x1", "x" * 100])
def test_the_first_line_must_be_old_and_a_size(first: str) -> None:
    assert parse_refused(f"{first}\n\nnote".encode()) == (
        400, f"the first line {first[:40]!r} is not 'old <tree size>' (ASCII decimal, no leading zero, "
             "at most 2**63-1)")


def test_at_most_63_proof_lines_each_a_canonical_32_byte_hash() -> None:
    h = base64.b64encode(bytes(32)).decode()
    assert parse_refused(f"old 1\n{(h + chr(10)) * 64}\nn".encode()) == (
        400, "the consistency proof has 64 lines, more than 63")
    assert parse_refused(f"old 1\n{h}\n{h[:-1]}\n\nn".encode()) == (
        400, "consistency proof line 2 is not valid base64")
    stray = h[:-2] + "B="
    assert base64.b64decode(stray) == bytes(32)
    assert parse_refused(f"old 1\n{stray}\n\nn".encode()) == (
        400, "consistency proof line 1 is not canonical base64 (RFC 4648 §4: padded, no stray bits)")
    for size in (31, 33, 1):
        line = base64.b64encode(bytes(size)).decode()
        assert parse_refused(f"old 1\n{h}\n{h}\n{line}\n\nn".encode()) == (
            400, "consistency proof line 3 is not a 32-byte hash")


# -- setting up a witness --------------------------------------------------------------------

def test_a_witness_needs_its_cosignature_key_and_a_log(tmp_path: Path, journal: SovereignJournal) -> None:
    lock = str(tmp_path / "lock")
    for key in (LOG, WITNESS.verifier(), str(WITNESS)):
        with pytest.raises(ValidationError) as info:
            Witness(key, [LOG.verifier()], journal, lock)  # type: ignore[arg-type]
        assert str(info.value) == "the witness key must be a cosignature key (krepis keygen --witness)"
    with pytest.raises(ValidationError) as info:
        Witness(WITNESS, [], journal, lock)
    assert str(info.value) == "a witness needs the verifier key of at least one log (--log VKEY)"
    assert not os.path.exists(lock)  # refused before the lock file is made


def test_an_origin_too_long_to_keep_is_refused(tmp_path: Path, journal: SovereignJournal) -> None:
    longest = generate_signer("o" * 256)
    core = Witness(WITNESS, [longest.verifier()], journal, str(tmp_path / "lock"))
    core.close()
    too_long = generate_signer("ü" * 129)  # 258 bytes in 129 characters
    with pytest.raises(ValidationError) as info:
        Witness(WITNESS, [LOG.verifier(), too_long.verifier()], journal, str(tmp_path / "lock"))
    assert str(info.value) == (f"log origin {'ü' * 80!r}… is longer than the 256 bytes a witness keeps")


def test_several_keys_of_one_origin_and_several_origins(tmp_path: Path, journal: SovereignJournal) -> None:
    second = generate_signer(LOG.name)  # a log that rotated its key: both are trusted
    other = generate_signer("example.com/another")
    keys = [other.verifier(), LOG.verifier(), second.verifier()]
    core = Witness(WITNESS, keys, journal, str(tmp_path / "l"))
    try:
        assert core.origins == ["example.com/another", "example.com/log"]
        assert core.add_checkpoint(request(0, 3, key=second)).checkpoint.size == 3
        assert core.add_checkpoint(request(3, 5, key=LOG)).checkpoint.size == 5
        assert core.add_checkpoint(request(0, 2, key=other)).checkpoint.origin == "example.com/another"
    finally:
        core.close()


def test_the_lock_file_is_the_witness_s_own(tmp_path: Path, journal: SovereignJournal) -> None:
    lock = tmp_path / "lock"
    core = Witness(WITNESS, [LOG.verifier()], journal, str(lock))
    core.close()
    assert lock.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(StorageError) as info:
        Witness(WITNESS, [LOG.verifier()], journal, str(link))
    assert str(info.value) == (f"cannot open the witness's lock file {link}: "
                               f"{os.strerror(40)}") and info.value.path == str(link)
    with pytest.raises(StorageError) as info:
        Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "none" / "lock"))
    assert str(info.value) == (f"cannot open the witness's lock file {tmp_path / 'none' / 'lock'}: "
                               "No such file or directory")


def test_a_journal_that_forgot_is_refused_naming_it(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "cleared") as journal:
        journal.clear_all()
        with pytest.raises(StorageError) as info:
            Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock"))
        assert str(info.value) == (
            f"the witness's journal at {journal.path} was cleared: the record of what it cosigned before may "
            "be gone, and a witness that forgot can be rolled back; start a new witness (a new key and a "
            "new store)")
        assert info.value.path == journal.path
    with SovereignJournal(tmp_path / "archived") as journal:
        for i in range(300):
            journal.log_transaction(TransactionLog(1_700_000_000_000 + i, "op", f"r{i}", LogStatus.Completed))
        journal.archive(tmp_path / "archive", keep_last=0)
        with pytest.raises(StorageError) as info:
            Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock"))
        assert str(info.value) == (
            f"the witness's journal at {journal.path} has archived entries: the witness reads its record "
            "from the store alone; restore them (a witness's journal must not be archived)")
        assert info.value.path == journal.path


# -- cosigning -------------------------------------------------------------------------------

def test_a_cosignature_is_recorded_before_it_is_given(witness: Witness, journal: SovereignJournal) -> None:
    got = witness.add_checkpoint(request(0, 5))
    text = format_checkpoint(Checkpoint(LOG.name, 5, TREE.root(5)))
    assert got == Cosigned(WITNESS.cosign(text, int(T0)), Checkpoint(LOG.name, 5, TREE.root(5)), int(T0))
    [entry] = journal.query(op_name=COSIGNED_OP)
    assert (entry.op_name, entry.request_id, entry.status) == (COSIGNED_OP, LOG.name, LogStatus.Completed)
    assert entry.error == note_of(5) + got.line  # the log's signature, then the cosignature
    latest = witness.latest(LOG.name)
    assert latest is not None
    assert (latest.checkpoint, latest.timestamp, latest.note, latest.text, latest.line) == (
        got.checkpoint, int(T0), entry.error, text, got.line)
    assert latest.entry == entry
    assert witness.latest("example.com/unknown") is None


def test_only_the_trusted_keys_signatures_are_recorded(witness: Witness, journal: SovereignJournal) -> None:
    stranger = generate_signer("example.org/stranger")
    text = format_checkpoint(Checkpoint(LOG.name, 5, TREE.root(5)))
    note = sign_note(text, stranger) + sign_note(text, LOG).split("\n\n")[1] + \
        generate_cosigner("w2.example").cosign(text, 7)
    got = witness.add_checkpoint(body(0, note))
    [entry] = journal.query(op_name=COSIGNED_OP)
    assert entry.error == text + "\n" + sign_note(text, LOG).split("\n\n")[1] + got.line


@pytest.mark.parametrize(("note", "said"), [
    ("nonsense", "the checkpoint is malformed: not a signed note (no blank line before the signatures)"),
    (sign_note("example.com/log\n5\n", LOG),
     "the checkpoint is malformed: a checkpoint has an origin, a tree size and a root hash, each on a line"),
    (sign_note("example.com/log\n05\nAAAA\n", LOG),
     "the checkpoint is malformed: checkpoint tree size '05' is not a decimal number"),
])
def test_a_malformed_checkpoint_is_400(witness: Witness, note: str, said: str) -> None:
    err = refused(witness, body(0, note))
    assert (err.status, str(err)) == (400, said)


def test_a_checkpoint_text_over_8_kib_is_413(witness: Witness) -> None:
    assert MAX_TEXT == 8192
    base = len(format_checkpoint(Checkpoint(LOG.name, 5, TREE.root(5))).encode())
    fits = ("x" * (MAX_TEXT - base - 1),)
    assert witness.add_checkpoint(body(0, note_of(5, extensions=fits))).checkpoint.size == 5
    err = refused(witness, body(5, note_of(5, extensions=("x" * (MAX_TEXT - base),))))
    assert (err.status, str(err)) == (
        413, "the checkpoint's text is more than the 8192 bytes this witness cosigns")


def test_an_unknown_origin_is_404_naming_the_ones_it_knows(tmp_path: Path, journal: SovereignJournal) -> None:
    logs = [generate_signer(f"example.com/{c * 150}") for c in "abc"]
    core = Witness(WITNESS, [k.verifier() for k in logs], journal, str(tmp_path / "lock"))
    try:
        stranger = generate_signer("s" * 300)
        err = refused(core, request(0, 3, key=stranger))
        known = ", ".join(k.name for k in logs)
        assert (err.status, str(err)) == (
            404, f"unknown log origin {'s' * 200!r}: this witness cosigns {known[:400]}")
    finally:
        core.close()


def test_a_checkpoint_no_trusted_key_signed_is_403(witness: Witness) -> None:
    impostor = generate_signer(LOG.name)
    err = refused(witness, request(0, 3, key=impostor))
    assert (err.status, str(err)) == (
        403, "no trusted signature of example.com/log verifies: the note carries no signature of a known key")


def test_an_old_size_past_the_checkpoint_is_400(witness: Witness) -> None:
    err = refused(witness, body(6, note_of(5)))
    assert (err.status, str(err)) == (400, "old size 6 is bigger than the checkpoint's tree size 5")
    assert witness.add_checkpoint(body(0, note_of(5))).checkpoint.size == 5


def test_an_old_size_that_is_not_the_one_cosigned_last_is_409_naming_it(witness: Witness,
                                                                          journal: SovereignJournal) -> None:
    err = refused(witness, request(3, 5))
    assert (err.status, err.size, str(err)) == (
        409, 0, "the latest checkpoint cosigned for example.com/log has tree size 0, not 3")
    witness.add_checkpoint(request(0, 5))
    for old in (0, 4, 6):
        err = refused(witness, request(old, 10))
        assert (err.status, err.size, str(err)) == (
            409, 5, f"the latest checkpoint cosigned for example.com/log has tree size 5, not {old}")
    assert journal.journal_count() == 1


def test_a_proof_is_checked_against_the_checkpoint_cosigned_last(witness: Witness,
                                                                 journal: SovereignJournal) -> None:
    witness.add_checkpoint(request(0, 5))
    good = consistency_proof(TREE.node, 5, 13)
    for bad in ([good[0][::-1], *good[1:]], good[:-1], [*good, good[0]], []):
        err = refused(witness, body(5, note_of(13), bad))
        assert (err.status, str(err)) == (
            422, "the consistency proof from tree size 5 to 13 does not verify against the checkpoint this "
                 "witness cosigned for example.com/log")
    # the proof of another tree that is not an extension of the one cosigned
    err = refused(witness, request(5, 13, tree=OTHER))
    assert err.status == 422 and "does not verify" in str(err)
    assert witness.add_checkpoint(body(5, note_of(13), good)).checkpoint.size == 13
    assert journal.journal_count() == 2


def test_a_proof_where_none_belongs_is_422(witness: Witness) -> None:
    h = [bytes(32)]
    err = refused(witness, body(0, note_of(5), h))
    assert (err.status, str(err)) == (422, "a consistency proof from tree size 0 to 5 is empty")
    witness.add_checkpoint(request(0, 5))
    err = refused(witness, body(5, note_of(5), h))
    assert (err.status, str(err)) == (422, "a consistency proof from tree size 5 to 5 is empty")


def test_an_empty_tree_must_carry_the_empty_root(witness: Witness) -> None:
    wrong = sign_note(format_checkpoint(Checkpoint(LOG.name, 0, bytes(32))), LOG)
    err = refused(witness, body(0, wrong))
    assert (err.status, str(err)) == (422, "a checkpoint of tree size 0 must carry the empty tree's root")
    assert witness.add_checkpoint(body(0, note_of(0))).checkpoint == Checkpoint(LOG.name, 0, EMPTY_ROOT)
    assert witness.add_checkpoint(request(0, 4)).checkpoint.size == 4


def test_another_root_at_the_size_cosigned_last_is_409_and_kept_once(witness: Witness,
                                                                     journal: SovereignJournal) -> None:
    witness.add_checkpoint(request(0, 20))
    for _ in range(3):
        err = refused(witness, request(20, 20, tree=OTHER))
        assert (err.status, err.size, str(err)) == (
            409, 20, "the checkpoint of tree size 20 has another root than the one this witness cosigned for "
                     "example.com/log at that size: a split view")
    [kept] = journal.query(op_name=CONFLICT_OP)
    assert (kept.request_id, kept.status) == (LOG.name, LogStatus.Failed)
    assert kept.error == note_of(20, OTHER)
    # another conflicting checkpoint is kept too
    third = MemTree([f"y{i}".encode() for i in range(20)])
    refused(witness, request(20, 20, tree=third))
    assert [e.error for e in journal.query(op_name=CONFLICT_OP, order="append", newest_first=False)] == [
        note_of(20, OTHER), note_of(20, third)]
    refused(witness, request(20, 20, tree=OTHER))  # not the latest kept: kept again
    assert len(journal.query(op_name=CONFLICT_OP)) == 3
    assert len(journal.query(op_name=COSIGNED_OP)) == 1


def test_a_record_too_long_to_keep_is_413_and_a_conflict_too_long_is_not_kept(
        tmp_path: Path, journal: SovereignJournal) -> None:
    log = generate_signer("example.com/" + "l" * 200)  # signature lines of about 300 bytes
    core = Witness(WITNESS, [log.verifier()], journal, str(tmp_path / "lock"))
    try:
        note = note_of(7, key=log)
        line = note.split("\n\n")[1]
        many = note + line * 99  # 100 signature lines of the trusted key: about 30 KB of record
        assert len(many.encode()) > 16 * 1024
        err = refused(core, body(0, many))
        assert (err.status, str(err)) == (
            413, "the checkpoint with its log signatures is too long for the witness's record")
        assert journal.journal_count() == 0
        fits = note + line * 40
        assert len(fits.encode()) < 16 * 1024 - 200
        core.add_checkpoint(body(0, fits))
        [entry] = journal.query(op_name=COSIGNED_OP)
        assert entry.error is not None and entry.error.count(line) == 41
        other = note_of(7, OTHER, key=log)
        err = refused(core, body(7, other + other.split("\n\n")[1] * 99))
        assert err.status == 409 and journal.query(op_name=CONFLICT_OP) == []
        refused(core, body(7, other))
        assert len(journal.query(op_name=CONFLICT_OP)) == 1
    finally:
        core.close()


# -- the same checkpoint again, and the clock ------------------------------------------------

def test_the_checkpoint_cosigned_last_gets_the_same_cosignature_within_a_minute(
        witness: Witness, journal: SovereignJournal, clock: Clock) -> None:
    assert REUSE_SECONDS == 60
    first = witness.add_checkpoint(request(0, 5))
    clock.now = T0 + 59.9
    assert witness.add_checkpoint(request(5, 5)) == first
    assert journal.journal_count() == 1
    clock.now = T0 + 60
    fresh = witness.add_checkpoint(request(5, 5))
    assert fresh.timestamp == int(T0) + 60 and fresh.line != first.line
    assert journal.journal_count() == 2
    latest = witness.latest(LOG.name)
    assert latest is not None and latest.timestamp == int(T0) + 60


def test_a_clock_gone_back_neither_reuses_nor_goes_back(witness: Witness, journal: SovereignJournal,
                                                        clock: Clock) -> None:
    first = witness.add_checkpoint(request(0, 5))
    clock.now = T0 - 10  # the same checkpoint, the clock ten seconds back: not "within a minute after"
    again = witness.add_checkpoint(request(5, 5))
    assert again.timestamp == first.timestamp and journal.journal_count() == 2
    entries = journal.query(op_name=COSIGNED_OP, order="append", newest_first=False)
    assert entries[1].timestamp > entries[0].timestamp  # the record's own times only go forward


def test_the_record_s_entry_times_only_go_forward(witness: Witness, journal: SovereignJournal,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    witness.add_checkpoint(request(0, 5))
    first = journal.query(op_name=COSIGNED_OP)[0].timestamp
    monkeypatch.setattr(time, "time_ns", lambda: (first - 5000) * 1_000_000)  # the system clock went back
    witness.add_checkpoint(request(5, 9))
    assert journal.query(op_name=COSIGNED_OP)[0].timestamp == first + 1


def test_a_different_text_of_the_same_tree_is_cosigned_anew(witness: Witness,
                                                             journal: SovereignJournal) -> None:
    first = witness.add_checkpoint(request(0, 5))
    other = witness.add_checkpoint(body(5, note_of(5, extensions=("ext",))))
    assert other.line != first.line and journal.journal_count() == 2


# -- the record read back --------------------------------------------------------------------

def _spoilt(line: str) -> str:
    name, b64 = line.rstrip("\n").split(" ")[1:]
    raw = bytearray(base64.b64decode(b64))
    raw[-1] ^= 1
    return f"— {name} {base64.b64encode(bytes(raw)).decode()}\n"


def _plant(journal: SovereignJournal, error: str, origin: str = LOG.name) -> int:
    journal.log_transaction(TransactionLog(1_800_000_000_000, COSIGNED_OP, origin, LogStatus.Completed,
                                           error=error))
    return journal.query(op_name=COSIGNED_OP, limit=1)[0].seq or 0


def test_a_record_that_is_not_a_cosigned_checkpoint_is_corruption_naming_the_entry(
        witness: Witness, journal: SovereignJournal) -> None:
    text = format_checkpoint(Checkpoint(LOG.name, 5, TREE.root(5)))
    mine = WITNESS.cosign(text, 100)
    cases = [
        ("garbage", "is not a cosigned checkpoint: not a signed note (no blank line before the signatures)"),
        (sign_note("x\n", LOG), "is not a cosigned checkpoint: a checkpoint has an origin, a tree size and a "
                                "root hash, each on a line"),
        (note_of(5), f"does not hold a checkpoint of {LOG.name} cosigned by this witness's key"),
        (note_of(5) + generate_cosigner(WITNESS.name).cosign(text, 100),
         f"does not hold a checkpoint of {LOG.name} cosigned by this witness's key"),
        (note_of(5) + WITNESS.cosign(text.replace("5", "6", 1), 100),
         f"does not hold a checkpoint of {LOG.name} cosigned by this witness's key"),
        (note_of(5) + mine + _spoilt(mine),  # the last one of its key does not verify
         f"does not hold a checkpoint of {LOG.name} cosigned by this witness's key"),
    ]
    for error, said in cases:
        seq = _plant(journal, error)
        with pytest.raises(CorruptStorageError) as info:
            witness.latest(LOG.name)
        assert str(info.value) == f"the witness's journal at {journal.path}: entry {seq} {said}"
        assert info.value.path == journal.path
    other = format_checkpoint(Checkpoint("example.com/other", 5, TREE.root(5)))
    seq = _plant(journal, sign_note(other, LOG) + WITNESS.cosign(other, 100))  # another origin's checkpoint
    with pytest.raises(CorruptStorageError) as info:
        witness.latest(LOG.name)
    assert str(info.value) == (f"the witness's journal at {journal.path}: entry {seq} does not hold a "
                               f"checkpoint of {LOG.name} cosigned by this witness's key")
    with pytest.raises(CorruptStorageError):
        witness.add_checkpoint(request(0, 5))


def test_the_last_cosignature_of_the_witness_s_key_in_a_record_counts(witness: Witness,
                                                                     journal: SovereignJournal) -> None:
    text = format_checkpoint(Checkpoint(LOG.name, 5, TREE.root(5)))
    early, late = WITNESS.cosign(text, 100), WITNESS.cosign(text, 200)
    _plant(journal, note_of(5) + early + late)
    latest = witness.latest(LOG.name)
    assert latest is not None and (latest.timestamp, latest.line) == (200, late)
    _plant(journal, note_of(5) + late + early)
    latest = witness.latest(LOG.name)
    assert latest is not None and (latest.timestamp, latest.line) == (100, early)
    assert split_note(latest.note)[0] == text


# -- the lock and the journal checked under it -----------------------------------------------

class _Probe:
    """The witness's real journal, looking at the lock each time an entry is appended: whether
    the witness's thread lock is held, and whether another open of the lock file can take the
    flock (it cannot while the witness holds it)."""

    def __init__(self, journal: SovereignJournal, lock_path: str) -> None:
        self._journal, self._lock_path = journal, lock_path
        self.core: Witness | None = None
        self.seen: list[tuple[bool, bool]] = []

    @property
    def path(self) -> str:
        return self._journal.path

    def log_transaction(self, log: TransactionLog) -> None:
        import fcntl

        assert self.core is not None
        fd = os.open(self._lock_path, os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flocked = False
            except BlockingIOError:
                flocked = True
        finally:
            os.close(fd)  # (closing drops a flock this open took)
        self.seen.append((self.core._lock._thread.locked(), flocked))
        self._journal.log_transaction(log)

    def query(self, **kwargs: object) -> list[TransactionLog]:
        return self._journal.query(**kwargs)  # type: ignore[arg-type]

    def tree_head(self) -> object:
        return self._journal.tree_head()

    def live_first_seq(self) -> int:
        return self._journal.live_first_seq()


def test_an_entry_is_appended_under_the_thread_lock_and_the_flock(tmp_path: Path,
                                                                  journal: SovereignJournal) -> None:
    lock = str(tmp_path / "lock")
    probe = _Probe(journal, lock)
    core = Witness(WITNESS, [LOG.verifier()], probe, lock)  # type: ignore[arg-type]
    probe.core = core
    try:
        core.add_checkpoint(request(0, 5))
        refused(core, request(5, 5, tree=OTHER))  # a conflict kept: under the lock too
        core.add_checkpoint(request(5, 9))
    finally:
        core.close()
    assert probe.seen == [(True, True)] * 3
    import fcntl

    fd = os.open(lock, os.O_RDWR)  # released after each request
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_a_journal_cleared_while_the_witness_runs_is_refused_before_it_cosigns(
        tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "journal") as journal:
        core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock"))
        try:
            core.add_checkpoint(request(0, 5))
            journal.clear_all()
            with pytest.raises(StorageError) as info:
                core.add_checkpoint(request(0, 9))  # the record of size 5 is gone: old 0 would pass
            assert str(info.value).startswith(f"the witness's journal at {journal.path} was cleared: ")
            assert journal.query(op_name=COSIGNED_OP) == []
        finally:
            core.close()


# -- what the run of tlog/_witness's mutants found untested --------------------------------------

def test_a_clock_at_the_epoch_stamps_zero(tmp_path: Path, journal: SovereignJournal,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    core = Witness(WITNESS, [LOG.verifier()], journal, str(tmp_path / "lock"), clock=lambda: 0.0)
    try:
        monkeypatch.setattr(time, "time_ns", lambda: 0)
        got = core.add_checkpoint(request(0, 5))
    finally:
        core.close()
    assert got.timestamp == 0 and got.line == WITNESS.cosign(format_checkpoint(got.checkpoint), 0)
    [entry] = journal.query(op_name=COSIGNED_OP)
    assert entry.timestamp == 0


def _sized(log: Signer, size: int, tree: MemTree, lines: int, total: int, cosigned: bool) -> str:
    """A note of ``log`` over the checkpoint of ``size`` with ``lines`` signature lines, its text
    padded with an extension line so that what the witness keeps of it — the text, its trusted
    signature lines and (when ``cosigned``) the witness's cosignature — is ``total`` bytes."""
    def note(pad: int) -> str:
        text = format_checkpoint(Checkpoint(log.name, size, tree.root(size), ("x" * pad,)))
        signed = sign_note(text, log)
        return signed + signed.split("\n\n")[1] * (lines - 1)

    def kept(pad: int) -> int:
        text = note(pad).split("\n\n")[0] + "\n"
        return len(note(pad).encode()) + (len(WITNESS.cosign(text, int(T0)).encode()) if cosigned else 0)

    pad = total - kept(1) + 1
    assert 1 <= pad and len(note(pad).split("\n\n")[0].encode()) < MAX_TEXT and kept(pad) == total
    return note(pad)


def test_a_record_of_exactly_16_kib_is_kept(tmp_path: Path, journal: SovereignJournal) -> None:
    from krepis._model import MAX_ERROR_BYTES

    log = generate_signer("example.com/" + "l" * 200)
    core = Witness(WITNESS, [log.verifier()], journal, str(tmp_path / "lock"), clock=lambda: T0)
    try:
        err = refused(core, body(0, _sized(log, 7, TREE, 30, MAX_ERROR_BYTES + 1, True)))
        assert err.status == 413 and journal.journal_count() == 0
        core.add_checkpoint(body(0, _sized(log, 7, TREE, 30, MAX_ERROR_BYTES, True)))
        [entry] = journal.query(op_name=COSIGNED_OP)
        assert entry.error is not None and len(entry.error.encode()) == MAX_ERROR_BYTES
        # a conflict: kept when its text and log signatures fit exactly, not when one byte more
        refused(core, body(7, _sized(log, 7, OTHER, 30, MAX_ERROR_BYTES + 1, False)))
        assert journal.query(op_name=CONFLICT_OP) == []
        refused(core, body(7, _sized(log, 7, OTHER, 30, MAX_ERROR_BYTES, False)))
        [kept] = journal.query(op_name=CONFLICT_OP)
        assert kept.error is not None and len(kept.error.encode()) == MAX_ERROR_BYTES
    finally:
        core.close()


def test_a_conflict_is_kept_once_even_with_cosignatures_between(witness: Witness, journal: SovereignJournal,
                                                                 clock: Clock) -> None:
    witness.add_checkpoint(request(0, 20))
    refused(witness, request(20, 20, tree=OTHER))
    clock.now = T0 + REUSE_SECONDS  # the same checkpoint cosigned again: a new entry after the conflict
    witness.add_checkpoint(request(20, 20))
    assert len(journal.query(op_name=COSIGNED_OP)) == 2
    refused(witness, request(20, 20, tree=OTHER))
    assert len(journal.query(op_name=CONFLICT_OP)) == 1


def test_a_conflict_is_kept_once_per_origin(tmp_path: Path, journal: SovereignJournal) -> None:
    other_log = generate_signer("example.com/other")
    core = Witness(WITNESS, [LOG.verifier(), other_log.verifier()], journal, str(tmp_path / "lock"))
    try:
        core.add_checkpoint(request(0, 20))
        core.add_checkpoint(request(0, 20, key=other_log))
        refused(core, request(20, 20, tree=OTHER))
        refused(core, request(20, 20, tree=OTHER, key=other_log))  # the newest conflict: another origin's
        refused(core, request(20, 20, tree=OTHER))  # the same as this origin's newest: not kept again
    finally:
        core.close()
    assert sorted(e.request_id for e in journal.query(op_name=CONFLICT_OP)) == [LOG.name, other_log.name]
