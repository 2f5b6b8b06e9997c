"""The journal's verifiable log: tree heads, proofs, signed checkpoints and tiles (the tree
half of :class:`~krepis.SovereignJournal`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .._errors import (
    CorruptStorageError,
    InvalidTypeError,
    JournalError,
    ValidationError,
)
from .._model import (
    TransactionLog,
    encode_log,
)
from .._policy import FlushPolicy
from ..archive import ArchiveReader, RetentionPolicy
from ..storage import Storage, TreeHead
from ..tlog._collect import CosignResult, WitnessEndpoint, collect_cosignatures
from ..tlog._cosig import CosignerKey, find_cosignatures
from ..tlog._merkle import EMPTY_ROOT, TILE_HEIGHT, TreeChecker, verify_consistency
from ..tlog._note import (
    MAX_SIGNATURES,
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    format_checkpoint,
    open_checkpoint,
    parse_checkpoint,
    sign_note,
    split_note,
)
from ..tlog._reader import ConsistencyProof, InclusionProof, TreeReader, TrustReport
from ._archived import check_history

#: the file in an export directory naming the tree exported into it last
_MARKER = ".krepis-log"


class _TreeMethods:
    """Tree heads, proofs, checkpoints and tiles of the current log."""

    if TYPE_CHECKING:  # provided by SovereignJournal or the other mixin
        _policy: FlushPolicy
        _archive_dir: str | None
        _retention_policy: RetentionPolicy | None

        @property
        def path(self) -> str:
            raise NotImplementedError

        def _live(self) -> Storage:
            raise NotImplementedError

        def _history_reader(self, storage: Storage, archive: str | os.PathLike[str] | None,
                            live_only: bool, head: TreeHead | None = None) -> ArchiveReader | None:
            raise NotImplementedError

        def _leaf_source(self, storage: Storage, archive: str | os.PathLike[str] | None, live_only: bool,
                         head: TreeHead) -> Callable[[int, int], list[bytes]] | None:
            raise NotImplementedError

        query: Callable[..., list[TransactionLog]]

    def tree_head(self) -> TreeHead:
        """The RFC 6962 Merkle tree head over the entries in append order since the last clear."""
        return self._live().tree_head()

    def _tree_reader(self, storage: Storage, archive: str | os.PathLike[str] | None,
                     live_only: bool = False) -> TreeReader:
        head = storage.tree_head()
        return TreeReader(storage, head, self._leaf_source(storage, archive, live_only, head))

    def tree_root(self, size: int | None = None, *, archive: str | os.PathLike[str] | None = None,
                  live_only: bool = False) -> bytes:
        """The RFC 6962 tree head of the first ``size`` leaves of the current log (default: all).
        Any earlier size costs O(log n) reads. A size inside the archived prefix that is not a
        multiple of 256 reads one bundle from the journal's archive (or ``archive``);
        ``live_only=True`` refuses that (``ValidationError``)."""
        storage = self._live()
        reader = self._tree_reader(storage, archive, live_only)
        return reader.root(reader.head.size if size is None else size)

    def inclusion_proof(self, seq: int, *, tree_size: int | None = None,
                        archive: str | os.PathLike[str] | None = None,
                        live_only: bool = False) -> InclusionProof:
        """Proof that entry ``seq`` is in the tree of ``tree_size`` leaves (default: the current
        tree). Verify it with :func:`krepis.tlog.verify_inclusion`; O(log n) reads. An archived
        entry's proof reads its bundle from the journal's archive (or ``archive``)."""
        if type(seq) is not int:
            raise InvalidTypeError(f"seq must be an int, got {type(seq).__name__} {seq!r:.80}")
        storage = self._live()
        reader = self._tree_reader(storage, archive, live_only)
        return reader.inclusion(seq, reader.head.size if tree_size is None else tree_size)

    def consistency_proof(self, old_size: int, new_size: int | None = None, *,
                          archive: str | os.PathLike[str] | None = None,
                          live_only: bool = False) -> ConsistencyProof:
        """Proof that the tree of ``old_size`` leaves is a prefix of the tree of ``new_size``
        leaves (default: the current tree). Verify it with
        :func:`krepis.tlog.verify_consistency`; O(log n) reads (a size inside the archived
        prefix that is not a multiple of 256 reads one bundle from the journal's archive)."""
        storage = self._live()
        reader = self._tree_reader(storage, archive, live_only)
        return reader.consistency(old_size, reader.head.size if new_size is None else new_size)

    def sign_checkpoint(self, signer: Signer | str) -> str:
        """Sign a C2SP checkpoint of the current tree with ``signer`` (a :class:`Signer`, or its
        ``PRIVATE+KEY+…`` text), keep it in the store and return the signed note.

        The origin line is the key's name. A clear ends a log: a key (origin) that signed a
        checkpoint of an earlier log is refused for the new one, so two checkpoints under one
        origin are always consistent with each other."""
        key = _signer(signer)
        storage = self._live()
        head = storage.tree_head()
        note = sign_note(format_checkpoint(Checkpoint(key.name, head.size, head.root)), key)
        kept = _kept_note(storage, head.epoch, head.size, key.name)
        if kept is not None and kept.startswith(note):
            return kept  # the same note (Ed25519 signs alike), with witnesses' cosignatures: kept
        storage.add_checkpoint(head.epoch, head.size, key.name, note)
        return note

    def cosign_checkpoint(self, signer: Signer | str, witnesses: Sequence[WitnessEndpoint | str], *,
                          quorum: int | None = None, timeout: float = 10.0,
                          archive: str | os.PathLike[str] | None = None) -> CosignResult:
        """Sign a checkpoint of the current tree with ``signer``, have it cosigned by the
        ``witnesses`` (C2SP tlog-witness, all asked in parallel; :class:`WitnessEndpoint` objects
        or their ``NAME=URL:VKEY`` text), and keep it — with the cosignatures — in the store, as
        the checkpoint ``latest_checkpoint()`` returns and ``tlog export``/``tlog serve`` publish.

        Each witness is sent a consistency proof from the size it cosigned last (the newest kept
        checkpoint it cosigned, else learnt from its 409 answer; proofs from inside the archived
        prefix read ``archive``). Raises :class:`~krepis.tlog.QuorumError` naming each witness's
        answer when fewer than ``quorum`` (default: all of them) cosigned within ``timeout``
        seconds: then nothing is kept, and the checkpoint published stays the one before. A
        note of the same tree kept before keeps the cosignatures of witnesses that did not
        answer this time."""
        key = _signer(signer)
        endpoints = [WitnessEndpoint.parse(w) if isinstance(w, str) else w for w in witnesses]
        if not all(isinstance(w, WitnessEndpoint) for w in endpoints):
            raise InvalidTypeError("witnesses must be WitnessEndpoint objects or their NAME=URL:VKEY text")
        storage = self._live()
        reader = self._tree_reader(storage, archive)
        head = reader.head  # the tree the note signs and every proof is made from
        note = sign_note(format_checkpoint(Checkpoint(key.name, head.size, head.root)), key)
        mine = sorted(((size, kept) for epoch, size, origin, kept in storage.checkpoints()
                       if epoch == head.epoch and origin == key.name and size <= head.size), reverse=True)

        def guess(witness: CosignerKey) -> int:
            for size, kept in mine:
                try:
                    if find_cosignatures(kept, [witness]):
                        return size
                except NoteError:
                    continue
            return 0

        cosigned, answers = collect_cosignatures(
            note, endpoints, quorum=quorum, timeout=timeout, guess=guess,
            proof=lambda old: reader.consistency(old, head.size).path)
        reader.check_same_log()
        before = _kept_note(storage, head.epoch, head.size, key.name)
        if before is not None and before.startswith(note):  # the same tree, cosigned before: keep
            have = {(s.name, s.key_id) for s in split_note(cosigned)[1]}  # the others' cosignatures
            older = [s.line for s in split_note(before)[1] if (s.name, s.key_id) not in have]
            cosigned += "".join(older[:max(0, MAX_SIGNATURES - len(have))])
        storage.add_checkpoint(head.epoch, head.size, key.name, cosigned)  # (replaces a note of the size)
        good = tuple(a.cosignature for a in answers if a.cosignature is not None)
        return CosignResult(cosigned, parse_checkpoint(_text(cosigned)), good, tuple(answers))

    def latest_checkpoint(self) -> str | None:
        """The signed note of the largest checkpoint kept for the current log, or ``None``."""
        storage = self._live()
        epoch = storage.tree_head().epoch
        mine = [(size, note) for e, size, _origin, note in storage.checkpoints() if e == epoch]
        return max(mine)[1] if mine else None

    def tile_sources(
        self, archive: str | os.PathLike[str] | None = None, *, live_only: bool = False
    ) -> tuple[TreeReader, Callable[[int, int], list[bytes]]]:
        """What a tile server or exporter reads: tree nodes, and leaf data by leaf number
        (archived leaves from the journal's archive, or ``archive``, read when first needed;
        ``live_only=True``: a ``ValidationError`` for them)."""
        storage = self._live()
        head = storage.tree_head()
        archived = self._leaf_source(storage, archive, live_only, head)
        reader = TreeReader(storage, head, archived)
        first = reader.head.first_seq

        def entries(start: int, count: int) -> list[bytes]:
            seq = first + start
            if seq < storage.live_first_seq():
                reader.check_same_log()  # cleared meanwhile: a JournalError (read again), not "archived"
                if archived is None:
                    raise ValidationError(
                        f"entries {seq}…{seq + count - 1} of the journal at {self.path} are archived: "
                        "read without live_only (or pass the archive directory, archive=DIR, --archive DIR)")
                return archived(start, count)
            logs = self.query(order="append", newest_first=False, limit=count,
                              after=seq - 1 if seq > 0 else None, live_only=True)
            if [log.seq for log in logs] != list(range(seq, seq + count)):
                reader.check_same_log()  # cleared meanwhile: a JournalError, not corruption
                if storage.live_first_seq() > seq:  # archived meanwhile: from the archive
                    return entries(start, count)
                raise CorruptStorageError(f"storage at {self.path}: entries {seq}…{seq + count - 1} "
                                          "are not all there", self.path)
            return [encode_log(log) for log in logs]

        return reader, entries

    def export_tiles(self, directory: str | os.PathLike[str], signer: Signer | str | None = None, *,
                     archive: str | os.PathLike[str] | None = None, live_only: bool = False) -> int:
        """Write the log as a static C2SP tlog-tiles tree into ``directory``: a checkpoint
        (signed now with ``signer``, else the latest kept one), hash tiles and entry bundles.
        Incremental: full tiles already there are kept. Returns how many files were written.
        Bundles of archived entries come from the journal's archive, or ``archive`` (read only
        for those not exported before they were archived).

        Refused (``ValidationError``, nothing written): a directory holding another log or another
        history of this one (its ``.krepis-log`` marker records the tree exported last), a
        non-empty directory without a marker, and a symbolic link anywhere below the directory —
        nothing is ever written through one. The checkpoint is written last, after every tile."""
        from ..tlog._tiles import ExportDir, export_tiles

        key = None if signer is None else _signer(signer)
        self._history_reader(self._live(), archive, live_only)  # an archive it cannot read: refused now
        if key is None and self.latest_checkpoint() is None:
            raise ValidationError(f"the journal at {self.path} has no checkpoint of its current log "
                                  "yet: sign one (krepis checkpoint --key FILE, or pass a signer)")
        target = os.fspath(directory)
        # The directory's tiles must be of this log: the tree exported last time (recorded in the
        # marker) must be a prefix of today's — not so after a clear, or a restore from an older
        # backup, and then full tiles on disk would belong to another history. A directory with
        # files but no marker may hold anything: refused too. All this is checked before a
        # checkpoint is signed. The marker is written before the tiles, so an export cut short is
        # continued, not refused, by the next one.
        with ExportDir(target) as out:
            marker = os.path.join(target, _MARKER)
            reader, entries = self.tile_sources(archive, live_only=live_only)
            text = out.read(_MARKER, 4096)
            if text is None and out.names():
                raise ValidationError(
                    f"{target} is not empty and has no {_MARKER} marker of a krepis export: it may "
                    "hold the tiles of another history; export into an empty or new directory")
            other = ValidationError(f"{target} holds the tiles of another log, or of another history "
                                    f"of this one (see {marker}); export into a new directory")
            if text is not None and not self._same_history(text, reader, reader.head.size):
                raise other
            note = self.sign_checkpoint(key) if key is not None else self.latest_checkpoint()
            if note is None:  # (cleared meanwhile)
                raise ValidationError(f"the journal at {self.path} has no checkpoint of its current log")
            size = parse_checkpoint(note[:note.rfind("\n\n") + 1]).size
            if size > reader.head.size:  # the log grew meanwhile: read today's tree
                reader, entries = self.tile_sources(archive, live_only=live_only)
            if text is not None and not self._same_history(text, reader, size):
                raise other
            out.write(_MARKER, (f"store {self.path}\nfirst_seq {reader.head.first_seq}\n"
                                f"epoch {reader.head.epoch}\nsize {size}\n"
                                f"root {reader.root(size).hex()}\n").encode())
            written = export_tiles(out, note, size, reader.node, entries)
        reader.check_same_log()
        return written

    @staticmethod
    def _same_history(text: bytes, reader: TreeReader, size: int) -> bool:
        """Whether the tree a marker records is a prefix of the reader's tree of ``size`` leaves."""
        try:
            fields = dict(line.split(" ", 1) for line in text.decode("utf-8").splitlines() if " " in line)
            old_size, old_root = int(fields["size"]), bytes.fromhex(fields["root"])
            return (int(fields["first_seq"]), int(fields["epoch"])) == (
                reader.head.first_seq, reader.head.epoch) and 0 <= old_size <= size \
                and reader.root(old_size) == old_root
        except (KeyError, ValueError):
            return False

    def verify_extends(self, trusted: str, verifiers: Sequence[Verifier | str], *,
                       archive: str | os.PathLike[str] | None = None, live_only: bool = False) -> TrustReport:
        """Prove that the journal's current log extends ``trusted``: the signed checkpoint note of
        the newest tree you trust (one you kept — ``sign_checkpoint`` returns it, ``krepis
        checkpoint`` prints it, a ``tlog export`` directory holds it). Nothing kept in the store
        is taken on faith: whoever can write the store can rewrite it, tree and checkpoints too.

        Checked, in this order: the note's signature by one of ``verifiers`` (:class:`Verifier`
        objects or their ``<name>+<id>+<key>`` text), by the key named as the checkpoint's origin;
        the whole store (as :meth:`verify`: every entry against the stored tree); every entry
        already archived — its leaves are no longer in the store — read from the journal's
        archive (or ``archive``) and hashed against the stored tree; that the origin signed no
        checkpoint of an earlier log (else the journal was cleared since: the log it signed has
        ended); that the log has at least the checkpoint's size; and a consistency proof from
        the checkpoint to the tree of every leaf checked. O(n) reads, as :meth:`verify`.

        Raises :class:`~krepis.tlog.NoteError` (a ``ValidationError``) for a checkpoint that is
        malformed or not signed by the key of its origin; ``ValidationError`` naming the archived
        entries under ``live_only=True`` (they were not checked), ``StorageError`` naming the
        archive when it cannot be read; ``CorruptStorageError``
        naming the store when its log does not extend the checkpoint (history rewritten, rolled
        back, cleared) or disagrees with itself or with the archive."""
        check_history(archive, live_only)
        if not isinstance(trusted, str):
            raise InvalidTypeError(f"trusted must be a signed checkpoint note (str), got "
                                   f"{type(trusted).__name__}")
        if isinstance(verifiers, str) or not isinstance(verifiers, Sequence):
            raise InvalidTypeError("verifiers must be a list of Verifier keys (or their text)")
        keys: list[Verifier] = []
        for v in verifiers:
            if isinstance(v, str):
                v = Verifier.parse(v)
            if not isinstance(v, Verifier):
                raise InvalidTypeError(f"a verifier must be a Verifier or its text, got {type(v).__name__}")
            keys.append(v)
        if not keys:
            raise ValidationError("verify_extends needs the verifier key of the log: the checkpoint is only "
                                  "as good as its signature")
        checkpoint = open_checkpoint(trusted, keys)
        storage = self._live()
        before = storage.tree_head()
        report = storage.verify()
        head = storage.tree_head()
        if (head.epoch, head.first_seq) != (before.epoch, before.first_seq):
            raise JournalError(f"the journal at {self.path} was cleared while it was being verified; "
                               "verify again")
        origin = checkpoint.origin
        for epoch, size, other, _note in storage.checkpoints():
            if other == origin and epoch != head.epoch:
                raise CorruptStorageError(
                    f"the journal at {self.path} was cleared after {origin} signed a checkpoint of it "
                    f"(tree size {size}, log {epoch}): the log the trusted checkpoint signed has ended, "
                    f"its entries are gone (the current log, log {head.epoch}, began at seq "
                    f"{head.first_seq})", self.path)
        cleared = "" if head.epoch == 0 else (
            f", or the journal was cleared since (its current log, log {head.epoch}, began at seq "
            f"{head.first_seq})")
        if checkpoint.size > report.tree_size:
            raise CorruptStorageError(
                f"the log of the journal at {self.path} has {report.tree_size} entries, fewer than the "
                f"{checkpoint.size} of the trusted checkpoint of {origin}: entries were removed (or "
                f"rolled back, as by a restore from an older backup){cleared}", self.path)
        archived = storage.live_first_seq() - head.first_seq
        leaf_data: Callable[[int, int], list[bytes]] | None = None
        if archived > 0:
            reader = self._history_reader(storage, archive, live_only, head)
            if reader is None:
                raise ValidationError(
                    f"entries {head.first_seq}…{head.first_seq + archived - 1} of the journal at "
                    f"{self.path} are not in the store (archived, or removed): they were not checked "
                    "against the tree; read them from the archive (without --live-only, live_only=True)")
            _check_archived(storage, reader, head, archived, self.path)
            leaf_data = reader.leaf_data
        tree = TreeReader(storage, head, leaf_data)
        proof = tree.consistency(checkpoint.size, report.tree_size)
        if not verify_consistency(checkpoint.size, report.tree_size, checkpoint.root, report.root,
                                  proof.path) or (checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT):
            raise CorruptStorageError(
                f"the log of the journal at {self.path} does not extend the trusted checkpoint of {origin} "
                f"(tree size {checkpoint.size}): its entries before seq {head.first_seq + checkpoint.size} "
                f"are not the ones that checkpoint signed — the history was rewritten{cleared}", self.path)
        return TrustReport(checkpoint, report.tree_size, report.root, report.entries, archived)

    def checkpoints(self) -> list[tuple[int, str]]:
        """Every checkpoint the store keeps as ``(epoch, signed note)``, oldest first."""
        return [(epoch, note) for epoch, _size, _origin, note in self._live().checkpoints()]


def _text(note: str) -> str:
    return note[:note.rfind("\n\n") + 1]


def _kept_note(storage: Storage, epoch: int, size: int, origin: str) -> str | None:
    """The note the store keeps for ``(epoch, size, origin)``, if any."""
    for e, n, o, note in storage.checkpoints():
        if (e, n, o) == (epoch, size, origin):
            return note
    return None


def _signer(signer: object) -> Signer:
    key = Signer.parse(signer) if isinstance(signer, str) else signer
    if not isinstance(key, Signer):
        raise InvalidTypeError(f"signer must be a Signer or its text, got {type(signer).__name__}")
    return key


def _check_archived(storage: Storage, reader: ArchiveReader, head: TreeHead, archived: int,
                    path: str) -> None:
    """Hash the ``archived`` leaves of the log from the archive's bundles and compare every stored
    tree hash they complete, and the frontier they end in, with the store's: the stored hashes
    that stand in for the archived entries are then the entries' own."""
    width = 1 << TILE_HEIGHT
    where = f"the archive at {reader.directory} and the journal at {path} disagree"
    if archived % width:
        raise CorruptStorageError(f"the journal at {path} holds its log from leaf {archived} on: not a "
                                  f"whole number of bundles of {width}", path)
    ours = TreeChecker(storage.tree_node, head.first_seq)
    for bundle in range(archived // width):
        data = reader.bundle_data(bundle)
        if len(data) != width:
            raise CorruptStorageError(f"{where}: bundle {bundle} holds {len(data)} entries, not {width}",
                                      reader.directory)
        try:
            for entry in data:
                ours.add(entry)
        except ValueError as exc:
            raise CorruptStorageError(f"{where}: {exc}", reader.directory) from None
    stored = TreeChecker(storage.tree_node, head.first_seq)
    try:
        stored.resume(archived)
    except ValueError as exc:
        raise CorruptStorageError(f"storage at {path}: {exc}", path) from None
    if stored.frontier != ours.frontier:
        raise CorruptStorageError(f"{where}: the tree of the archived entries is not the stored one", path)
