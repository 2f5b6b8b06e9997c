"""A C2SP ``tlog-witness``: ``add-checkpoint`` checked against the latest checkpoint the witness
cosigned for the log, and answered with a ``cosignature/v1`` cosignature.

The witness's record is a krepis journal (its own store): every cosignature it issues is an
entry — op :data:`COSIGNED_OP`, request id the log's origin, the checkpoint with the log's
signature and the cosignature as a signed note in the entry's text field — so what it cosigned
is in a Merkle tree of its own, and provable. The latest such entry of an origin is the state
the next request is checked against. Checking that state and appending the next entry happen
under one lock — a thread lock and an exclusive ``flock`` on a lock file beside the store — so
no two requests, from any threads or processes sharing the store, interleave: the race the
spec describes (a smaller checkpoint's cosignature recorded after a bigger one's, rolling the
witness back) cannot happen. The entry is durable before the answer is sent.

The checkpoint cosigned last, sent again within :data:`REUSE_SECONDS`, gets the same
cosignature, and nothing is recorded: replaying a log's latest checkpoint — anyone can, requests
carry no credentials — cannot make the record grow faster than one entry a minute per log.

A checkpoint of the size the witness cosigned last with another root — two checkpoints of the
log, both signed, that cannot both be true: proof of a split view — is refused (409) and kept as
an entry too (op :data:`CONFLICT_OP`).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from .._errors import CorruptStorageError, StorageError, ValidationError
from .._model import MAX_ERROR_BYTES, MAX_REQUEST_ID_BYTES, LogStatus, TransactionLog, now_ms
from ._cosig import Cosigner
from ._merkle import EMPTY_ROOT, verify_consistency
from ._note import (
    MAX_TREE_SIZE,
    Checkpoint,
    NoteError,
    Verifier,
    _b64,
    open_checkpoint,
    parse_checkpoint,
    split_note,
)
from ._reader import TreeHead

__all__ = ["CONFLICT_OP", "COSIGNED_OP", "MAX_BODY", "MAX_PROOF_LINES", "MAX_TEXT", "AddCheckpoint",
           "Cosigned", "Refusal", "Witness", "WitnessRecord", "parse_add_checkpoint"]

#: the op name of the entry kept for each cosignature issued
COSIGNED_OP = "witness_cosigned"
#: the op name of the entry kept for a signed checkpoint that contradicts one cosigned before
CONFLICT_OP = "witness_conflict"
#: consistency proof lines a request may hold (the spec: a client MUST NOT send more than 63)
MAX_PROOF_LINES = 63
#: the largest add-checkpoint body read (a checkpoint with 16 post-quantum signatures fits)
MAX_BODY = 128 * 1024
#: the largest checkpoint text (origin, size, root, extension lines) a witness cosigns
MAX_TEXT = 8 * 1024
#: the same checkpoint again within this many seconds gets the cosignature it got last time
REUSE_SECONDS = 60


class Refusal(ValidationError):
    """An ``add-checkpoint`` request the witness refuses: ``status`` is the HTTP status the spec
    names (400, 403, 404, 409, 413, 422); for 409, ``size`` is the tree size of the latest
    checkpoint cosigned for the origin (the answer's ``text/x.tlog.size`` body)."""

    def __init__(self, status: int, message: str, size: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.size = size


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed ``add-checkpoint`` body: the old size, the consistency proof, the signed note."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse an ``add-checkpoint`` body, to the byte: ``old <size>\\n`` (decimal, no leading zero),
    at most 63 lines of one canonical base64 hash each, an empty line, then the checkpoint note.
    Raises :class:`Refusal` (400, or 413 for too much) naming what is wrong."""
    if len(body) > MAX_BODY:
        raise Refusal(413, f"the request body is {len(body)} bytes, more than the {MAX_BODY} a witness reads")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(400, "the request body is not UTF-8") from None
    head, sep, note = text.partition("\n\n")
    if not sep:
        raise Refusal(400, "the request body has no empty line between the proof and the checkpoint")
    lines = head.split("\n")
    match = re.fullmatch(r"old (0|[1-9][0-9]{0,18})", lines[0])
    if match is None or int(match.group(1)) > MAX_TREE_SIZE:
        raise Refusal(400, f"the first line {lines[0][:40]!r} is not 'old <tree size>' (ASCII decimal, "
                           "no leading zero, at most 2**63-1)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise Refusal(400, f"the consistency proof has {len(lines) - 1} lines, more than {MAX_PROOF_LINES}")
    proof: list[bytes] = []
    for n, line in enumerate(lines[1:], 1):
        try:
            hash_ = _b64(line, f"consistency proof line {n}")
        except NoteError as exc:
            raise Refusal(400, str(exc)) from None
        if len(hash_) != 32:
            raise Refusal(400, f"consistency proof line {n} is not a 32-byte hash")
        proof.append(hash_)
    return AddCheckpoint(int(match.group(1)), tuple(proof), note)


@dataclass(frozen=True)
class Cosigned:
    """A cosignature issued: its signature ``line`` (with its newline), the checkpoint, the time."""

    line: str
    checkpoint: Checkpoint
    timestamp: int


@dataclass(frozen=True)
class WitnessRecord:
    """The latest checkpoint the witness cosigned for an origin, as its journal keeps it."""

    checkpoint: Checkpoint
    timestamp: int
    note: str
    entry: TransactionLog
    text: str = ""
    line: str = ""


class WitnessJournal(Protocol):
    """What the witness keeps its record in (a :class:`~krepis.SovereignJournal` is one)."""

    @property
    def path(self) -> str: ...

    def log_transaction(self, log: TransactionLog) -> None: ...

    def query(self, *, op_name: str | Sequence[str] | None = None, request_id: str | None = None,
              limit: int | None = None) -> list[TransactionLog]: ...

    def tree_head(self) -> TreeHead: ...

    def live_first_seq(self) -> int: ...


class _Lock:
    """A thread lock and an exclusive ``flock`` on ``path``: held by one thread of one process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread = threading.Lock()
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the witness's lock file {path}: {exc.strerror}", path) from None

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._thread:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


class Witness:
    """Checks ``add-checkpoint`` requests for the logs ``logs`` (their verifier keys: the key's
    name is the origin it signs; several keys may share one) and cosigns with ``key``, keeping
    its record in ``journal`` (serialised by the lock file ``lock_path``, which every process
    sharing the journal must use).

    Refused at once (``StorageError``): a journal that was ever cleared (its record may be gone)
    or has archived entries (they are not read back): a witness that forgot what it cosigned
    could be rolled back. ``clock`` gives POSIX seconds (cosignature timestamps never go back
    for an origin, whatever the clock does)."""

    def __init__(self, key: Cosigner, logs: Sequence[Verifier], journal: WitnessJournal, lock_path: str,
                 *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(key, Cosigner):
            raise ValidationError("the witness key must be a cosignature key (krepis keygen --witness)")
        self.key = key
        self._logs: dict[str, list[Verifier]] = {}
        for log in logs:
            if len(log.name.encode()) > MAX_REQUEST_ID_BYTES:
                raise ValidationError(f"log origin {log.name[:80]!r}… is longer than the "
                                      f"{MAX_REQUEST_ID_BYTES} bytes a witness keeps")
            self._logs.setdefault(log.name, []).append(log)
        if not self._logs:
            raise ValidationError("a witness needs the verifier key of at least one log (--log VKEY)")
        self._journal = journal
        self._clock = clock
        self._check_journal()
        self._lock = _Lock(lock_path)

    @property
    def origins(self) -> list[str]:
        return sorted(self._logs)

    def close(self) -> None:
        self._lock.close()

    def _check_journal(self) -> None:
        head = self._journal.tree_head()
        where = f"the witness's journal at {self._journal.path}"
        if head.epoch != 0:
            raise StorageError(f"{where} was cleared: the record of what it cosigned before may be gone, "
                               "and a witness that forgot can be rolled back; start a new witness (a new "
                               "key and a new store)", self._journal.path)
        if self._journal.live_first_seq() != head.first_seq:
            raise StorageError(f"{where} has archived entries: the witness reads its record from the store "
                               "alone; restore them (a witness's journal must not be archived)",
                               self._journal.path)

    def latest(self, origin: str) -> WitnessRecord | None:
        """The latest checkpoint cosigned for ``origin`` (its cosignature checked), or ``None``."""
        found = self._journal.query(op_name=COSIGNED_OP, request_id=origin, limit=1)
        if not found:
            return None
        entry = found[0]
        where = f"the witness's journal at {self._journal.path}: entry {entry.seq}"
        try:
            text, lines = split_note(entry.error or "")
            checkpoint = parse_checkpoint(text)
        except NoteError as exc:
            raise CorruptStorageError(f"{where} is not a cosigned checkpoint: {exc}",
                                      self._journal.path) from None
        mine = self.key.verifier()
        signed = [(mine.timestamp(text, s.signature), s.line) for s in lines
                  if (s.name, s.key_id) == (mine.name, mine.key_id)]
        if checkpoint.origin != origin or not signed or signed[-1][0] is None:
            raise CorruptStorageError(f"{where} does not hold a checkpoint of {origin} cosigned by this "
                                      "witness's key", self._journal.path)
        stamp, line = signed[-1]
        assert stamp is not None
        return WitnessRecord(checkpoint, stamp, entry.error or "", entry, text, line)

    def add_checkpoint(self, body: bytes) -> Cosigned:
        """Answer one ``add-checkpoint`` body: the cosignature, once the checkpoint proved
        consistent with the latest one cosigned for its origin and the record of it is durable.
        Raises :class:`Refusal` with the status the spec names; nothing is recorded then (but a
        conflict, see the module docs)."""
        request = parse_add_checkpoint(body)
        try:
            text, _lines = split_note(request.note)
            checkpoint = parse_checkpoint(text)
        except NoteError as exc:
            raise Refusal(400, f"the checkpoint is malformed: {exc}") from None
        if len(text.encode()) > MAX_TEXT:
            raise Refusal(413, f"the checkpoint's text is more than the {MAX_TEXT} bytes this witness "
                               "cosigns")
        keys = self._logs.get(checkpoint.origin)
        if keys is None:
            raise Refusal(404, f"unknown log origin {checkpoint.origin[:200]!r}: this witness cosigns "
                               f"{', '.join(self.origins)[:400]}")
        try:
            open_checkpoint(request.note, keys)
        except NoteError as exc:
            raise Refusal(403, f"no trusted signature of {checkpoint.origin} verifies: {exc}") from None
        if request.old_size > checkpoint.size:
            raise Refusal(400, f"old size {request.old_size} is bigger than the checkpoint's tree size "
                               f"{checkpoint.size}")
        log_lines = "".join(s.line for s in split_note(request.note)[1]
                            if any((k.name, k.key_id) == (s.name, s.key_id) for k in keys))
        with self._lock.held():
            self._check_journal()
            latest = self.latest(checkpoint.origin)
            size = 0 if latest is None else latest.checkpoint.size
            if request.old_size != size:
                raise Refusal(409, f"the latest checkpoint cosigned for {checkpoint.origin} has tree size "
                                   f"{size}, not {request.old_size}", size)
            self._check_proof(request, checkpoint, latest, text + "\n" + log_lines)
            now = int(self._clock())
            if latest is not None and latest.text == text and 0 <= now - latest.timestamp < REUSE_SECONDS:
                # the very checkpoint cosigned last, again, soon: its cosignature still says it all,
                # and anyone replaying the latest checkpoint cannot make the record grow faster
                return Cosigned(latest.line, checkpoint, latest.timestamp)
            stamp = max(now, 0 if latest is None else latest.timestamp)
            line = self.key.cosign(text, stamp)
            record = text + "\n" + log_lines + line
            if len(record.encode()) > MAX_ERROR_BYTES:
                raise Refusal(413, "the checkpoint with its log signatures is too long for the witness's "
                                   "record")
            at = max(now_ms(), 0 if latest is None else latest.entry.timestamp + 1)
            self._journal.log_transaction(TransactionLog(at, COSIGNED_OP, checkpoint.origin,
                                                         LogStatus.Completed, error=record))
        return Cosigned(line, checkpoint, stamp)

    def _check_proof(self, request: AddCheckpoint, checkpoint: Checkpoint, latest: WitnessRecord | None,
                     signed: str) -> None:
        old, new = request.old_size, checkpoint.size
        if old == new and latest is not None:
            if checkpoint.root != latest.checkpoint.root:
                self._keep_conflict(checkpoint, signed)
                raise Refusal(409, f"the checkpoint of tree size {new} has another root than the one this "
                                   f"witness cosigned for {checkpoint.origin} at that size: a split view",
                              latest.checkpoint.size)
        if old == 0 or old == new:
            if request.proof:
                raise Refusal(422, f"a consistency proof from tree size {old} to {new} is empty")
            if new == 0 and checkpoint.root != EMPTY_ROOT:
                raise Refusal(422, "a checkpoint of tree size 0 must carry the empty tree's root")
            return
        assert latest is not None
        if not verify_consistency(old, new, latest.checkpoint.root, checkpoint.root, list(request.proof)):
            raise Refusal(422, f"the consistency proof from tree size {old} to {new} does not verify "
                               f"against the checkpoint this witness cosigned for {checkpoint.origin}")

    def _keep_conflict(self, checkpoint: Checkpoint, signed: str) -> None:
        """Keep a signed checkpoint that contradicts the one cosigned at its size (once)."""
        if len(signed.encode()) > MAX_ERROR_BYTES:
            return
        last = self._journal.query(op_name=CONFLICT_OP, request_id=checkpoint.origin, limit=1)
        if last and last[0].error == signed:
            return
        self._journal.log_transaction(TransactionLog(now_ms(), CONFLICT_OP, checkpoint.origin,
                                                     LogStatus.Failed, error=signed))
