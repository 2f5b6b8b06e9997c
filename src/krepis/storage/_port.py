"""The storage port: the small interface every engine implements.

The journal validates, encodes and batches; an adapter only stores. One call,
:meth:`Storage.write_batch`, applies a list of write requests in ONE atomic transaction: the
entries (each given its store-wide sequence number), every index row, the Merkle tree over the
append order (RFC 6962, see :mod:`krepis.tlog._merkle`) and the counters.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from .._errors import CorruptStorageError, InvalidTypeError, ValidationError
from .._model import LogStatus, TransactionLog
from ..tlog._reader import TreeHead

__all__ = ["MAX_SETTING_BYTES", "SETTINGS", "LogAudit", "Order", "Query", "Storage", "TreeHead",
           "VerifyReport", "WriteRequest", "check_checkpoint", "check_drop_prefix", "check_setting",
           "decode_setting"]

#: the order a scan returns entries in: by (timestamp, seq), or by seq alone
Order = Literal["time", "append"]


@dataclass(slots=True)
class WriteRequest:
    """One caller's atomic unit: entries to append and counters to bump by one each.

    ``entries`` holds ``(log, canonical_bytes)`` pairs (``canonical_bytes`` is
    ``encode_log(log)``: the Merkle leaf data); ``increments`` holds counter names (UTF-8,
    without the ``op_count:`` prefix).
    """

    entries: Sequence[tuple[TransactionLog, bytes]]
    increments: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class Query:
    """What a scan returns: every given filter must match; a tuple means "any of these".

    ``since`` is inclusive, ``until`` exclusive (Unix ms). In ``"time"`` order the scan walks an
    index and costs O(log n + results); in ``"append"`` order it walks the entries by sequence
    (filters are checked entry by entry: meant for following and exporting).
    """

    since: int | None = None
    until: int | None = None
    request_id: str | None = None
    op_names: tuple[str, ...] | None = None
    statuses: tuple[LogStatus, ...] | None = None
    newest_first: bool = True
    order: Order = "time"

    def matches(self, log: TransactionLog) -> bool:
        """Whether ``log`` passes every filter (for engines and paths that check one by one)."""
        if self.since is not None and log.timestamp < self.since:
            return False
        if self.until is not None and log.timestamp >= self.until:
            return False
        if self.request_id is not None and log.request_id != self.request_id:
            return False
        if self.op_names is not None and log.op_name not in self.op_names:
            return False
        return self.statuses is None or log.status in self.statuses


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :meth:`Storage.verify` checked: every entry, its index rows and the Merkle tree."""

    entries: int
    tree_size: int
    root: bytes
    tree_nodes: int


class LogAudit:
    """The engine-independent half of :meth:`Storage.verify`: the entries come in sequence,
    each leaf matches the stored tree, the end matches the stored frontier and node count."""

    def __init__(self, where: str, location: str, first_seq: int,
                 stored_node: Callable[[int, int], bytes | None], live_first: int | None = None) -> None:
        from ..tlog._merkle import TreeChecker

        self._where, self._location, self._first = where, location, first_seq
        start = first_seq if live_first is None else live_first
        self.expected = self._start = start
        self._checker = TreeChecker(stored_node, first_seq)
        if start > first_seq:  # an archived prefix: its leaves are gone, its stored nodes stay
            try:
                self._checker.resume(start - first_seq)
            except ValueError as exc:
                raise self._corrupt(str(exc)) from None

    def _corrupt(self, what: str) -> CorruptStorageError:
        return CorruptStorageError(f"{self._where}: {what}", self._location)

    def add(self, seq: int, data: bytes) -> None:
        """The next entry, by its sequence number and canonical bytes."""
        if seq != self.expected:
            what = f"entry {self.expected} is missing" if seq > self.expected else \
                f"entry {seq} precedes the log"
            raise self._corrupt(f"{what} (the log starts at seq {self._first})")
        try:
            self._checker.add(data)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        self.expected += 1

    def finish(self, next_seq: int, frontier: list[bytes], stored_nodes: int) -> VerifyReport:
        if self.expected != next_seq:
            raise self._corrupt(f"the entries end before seq {self.expected}; the sequence record "
                                f"says {next_seq}")
        try:
            root = self._checker.finish(frontier)
        except ValueError as exc:
            raise self._corrupt(str(exc)) from None
        if stored_nodes != self._checker.nodes:
            raise self._corrupt(f"the tree holds {stored_nodes} subtree hashes; the entries make "
                                f"{self._checker.nodes}")
        size = next_seq - self._first
        return VerifyReport(next_seq - self._start, size, root, self._checker.nodes)


def check_drop_prefix(location: str, epoch: int, upto_seq: int, current_epoch: int, next_seq: int) -> None:
    """The rule every engine applies before removing an archived prefix (``Storage.drop_prefix``):
    the log it was archived from is still the current one, and the prefix lies within it."""
    if current_epoch != epoch:
        raise ValidationError(f"the journal at {location} was cleared (log {epoch} ended, log "
                              f"{current_epoch} began); nothing was removed")
    if upto_seq > next_seq:
        raise ValidationError(f"cannot remove entries up to seq {upto_seq}: the journal at {location} "
                              f"ends before seq {next_seq}")


#: the settings a store keeps beside its data (``Storage.get_setting``/``set_setting``), each a
#: short UTF-8 text: ``archive`` is the absolute path of the store's archive directory
#: (``docs/archive.md``). No other name is accepted, so a setting never touches the store's own
#: records (the sequence, the tree, the format).
SETTINGS = ("archive",)

#: the longest value a setting may have, in UTF-8 bytes
MAX_SETTING_BYTES = 4096


def check_setting(name: object, value: object = None) -> bytes | None:
    """The rule every engine applies to a setting before it reads or writes one: ``name`` is one
    of :data:`SETTINGS`; ``value`` is ``None`` (remove it) or a non-empty ``str`` of at most
    :data:`MAX_SETTING_BYTES` UTF-8 bytes without NUL. Returns the value's UTF-8 bytes.
    Raises ``ValidationError``/``InvalidTypeError`` naming the name and the rule."""
    if not isinstance(name, str):
        raise InvalidTypeError(f"a setting's name must be a str, got {type(name).__name__}")
    if name not in SETTINGS:
        raise ValidationError(f"{name!r:.80} is not a setting a store keeps; the settings are: "
                              f"{', '.join(SETTINGS)}")
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidTypeError(f"setting {name!r} must be a str or None, got {type(value).__name__}")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"setting {name!r} must be valid Unicode text (it holds a lone "
                              "surrogate)") from None
    nul = b"\0" in raw
    if not raw or nul or len(raw) > MAX_SETTING_BYTES:
        raise ValidationError(f"setting {name!r} must be 1 … {MAX_SETTING_BYTES} bytes of UTF-8 "
                              f"without NUL, got {len(raw)} bytes" + (" with a NUL" if nul else ""))
    return raw


def decode_setting(raw: bytes, name: str, location: str, where: str) -> str:
    """A stored setting's value, checked by :func:`check_setting`'s rule; anything else is a
    :class:`CorruptStorageError` naming the store (``where`` is its message prefix)."""
    try:
        value = bytes(raw).decode("utf-8")
        check_setting(name, value)
    except (UnicodeDecodeError, ValidationError) as exc:
        raise CorruptStorageError(f"{where}: the setting {name!r} is malformed ({exc})", location) from None
    return value


def check_checkpoint(epoch: int, size: int, origin: str, current_epoch: int, current_size: int,
                     kept: list[tuple[int, int, str, str]]) -> None:
    """The rule every engine applies before keeping a checkpoint (see ``Storage.add_checkpoint``)."""
    if epoch != current_epoch or size > current_size:
        raise ValidationError("the journal was cleared while the checkpoint was being signed; sign again")
    for other_epoch, _size, other_origin, _note in kept:
        if other_origin == origin and other_epoch != epoch:
            raise ValidationError(
                f"origin {origin!r} already named the log before a clear (epoch {other_epoch}); a "
                "checkpoint of this log under it would contradict those: sign with a new origin")


class Storage(abc.ABC):
    """An engine holding the journal (entries in append order, indexes, the Merkle tree) and the
    counters.

    Guarantees every adapter gives (checked by the shared conformance suite in ``tests/``):

    * ``write_batch`` is atomic: all requests of a batch are stored — entries, index rows, tree
      nodes and counters — or none is.
    * Every entry gets the next store-wide sequence number; numbers are never reused, no entry
      ever replaces another, and the tree's leaf ``i`` is the entry with seq ``first_seq + i``.
    * With ``durable=True`` a write returns only after its data is on stable storage.
    """

    location: str

    @abc.abstractmethod
    def write_batch(self, requests: Sequence[WriteRequest]) -> list[list[int]]:
        """Apply every request in one transaction; return, per request, its counters' new values."""

    @abc.abstractmethod
    def get_count(self, name: bytes) -> int:
        """One counter's value; 0 when it was never incremented."""

    @abc.abstractmethod
    def get_counts(self) -> dict[str, int]:
        """Every counter, by name."""

    @abc.abstractmethod
    def entry_count(self) -> int:
        """How many entries the journal holds, without scanning them."""

    @abc.abstractmethod
    def scan(self, query: Query, *, after: TransactionLog | None, limit: int) -> list[TransactionLog]:
        """Up to ``limit`` matching entries in the query's order, each with its ``seq`` set.

        ``after`` is the last entry of the previous page (its ``timestamp`` and ``seq`` are the
        cursor): the scan resumes strictly past it.
        """

    @abc.abstractmethod
    def get_entry(self, seq: int) -> TransactionLog | None:
        """The entry with sequence number ``seq``, or ``None``. O(log n)."""

    @abc.abstractmethod
    def next_seq(self) -> int:
        """The sequence number the next entry will get (one past the last ever appended)."""

    @abc.abstractmethod
    def tree_head(self) -> TreeHead:
        """The current Merkle tree head. O(log n)."""

    @abc.abstractmethod
    def op_names(self) -> list[str]:
        """Every op name that has entries (or had, before a clear), sorted."""

    @abc.abstractmethod
    def tree_node(self, level: int, index: int) -> bytes | None:
        """The stored hash of the perfect subtree of height ``level`` (a positive multiple of 8)
        and index ``index`` of the current log, or ``None`` when it is not complete."""

    @abc.abstractmethod
    def leaf_hashes(self, first_seq: int, start: int, count: int) -> list[bytes]:
        """Leaf hashes of leaves ``start … start+count−1`` of the log that begins at
        ``first_seq`` (recomputed from the entries where the engine does not store them)."""

    @abc.abstractmethod
    def add_checkpoint(self, epoch: int, size: int, origin: str, note: str) -> None:
        """Keep a signed checkpoint of the log of ``epoch`` at ``size`` leaves, atomically
        refusing it (:class:`ValidationError`) when the log was cleared since (another epoch)
        or when ``origin`` already named the log of another epoch: two checkpoints under one
        origin are always of one append-only log, hence consistent. A note kept before for the
        same ``(epoch, size, origin)`` is replaced (the same tree, signed again or cosigned)."""

    @abc.abstractmethod
    def checkpoints(self) -> list[tuple[int, int, str, str]]:
        """Every kept checkpoint as ``(epoch, size, origin, note)``, by epoch then size."""

    @abc.abstractmethod
    def verify(self) -> VerifyReport:
        """Read everything once and check it agrees: every entry decodes, the sequence has no gap,
        every leaf recomputed from its entry matches the stored tree (tile nodes and frontier),
        and every index holds exactly one row per entry. Raises :class:`CorruptStorageError`
        naming the first entry (or range of entries) found wrong. O(n)."""

    @abc.abstractmethod
    def clear(self, trace: Callable[[int, int, int], TransactionLog] | None = None) -> None:
        """Remove every entry and counter and end the Merkle log (a new one starts with the next
        sequence number), durably. The store stays usable.

        ``trace(entries, counters, epoch)`` — told how many entries and counters were removed
        and the new log's epoch — returns an entry that becomes, in the same transaction, the
        first entry of the new log: an audit trail shows that it was cleared."""

    @abc.abstractmethod
    def live_first_seq(self) -> int:
        """The sequence number of the oldest entry the store still holds for the current log:
        ``first_seq`` of the tree head, unless :meth:`drop_prefix` moved it on (entries before it
        were archived). O(1)."""

    @abc.abstractmethod
    def drop_prefix(self, epoch: int, upto_seq: int) -> int:
        """Remove the entries with ``live_first_seq() <= seq < upto_seq`` of the log of ``epoch``
        and their index rows, in ONE durable transaction (when the store was opened durable), and
        record ``upto_seq`` as the new live first sequence number; return how many were removed.

        Nothing else changes: counters, the tree's stored nodes and frontier, the sequence. A call
        whose ``upto_seq`` is not past the current live first seq removes nothing (so a rerun is
        harmless). Raises :class:`ValidationError` and changes nothing when ``epoch`` is not the
        current log's (it was cleared meanwhile) or ``upto_seq`` is past the last entry."""

    @abc.abstractmethod
    def get_setting(self, name: str) -> str | None:
        """The value the store keeps for setting ``name`` (one of :data:`SETTINGS`), or ``None``
        when it has none. Every process sees the last value set, in any process. A malformed
        stored value is a :class:`CorruptStorageError` naming the store."""

    @abc.abstractmethod
    def set_setting(self, name: str, value: str | None) -> None:
        """Keep ``value`` for setting ``name`` (``None``: remove it), durably (under ``durable``)
        and in one transaction: the old or the new value, never a mix. Nothing else changes,
        and a clear keeps settings. Bad input (:func:`check_setting`) raises before anything
        is written."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make every committed write durable."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the engine. Idempotent."""
