"""The log's side of ``tlog-witness``: ask witnesses, in parallel, to cosign a new checkpoint.

Each witness gets ``POST <url>/add-checkpoint`` with the size it last cosigned (the log's best
guess: the newest kept checkpoint that witness cosigned, else 0), the consistency proof from
that size, and the checkpoint. A 409 names the size the witness really holds (its
``text/x.tlog.size`` body): the request is sent again once with a proof from there — the
spec's way to learn it. Every answer is checked: a 200 must carry a valid cosignature of the
witness's key on this very checkpoint. Everything ends by the deadline.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

from .._errors import JournalError, ValidationError
from ._cosig import Cosignature, CosignerKey, find_cosignatures
from ._http import HTTPError, join, request
from ._note import Checkpoint, NoteError, _valid_name, parse_checkpoint, split_note

__all__ = ["CosignResult", "QuorumError", "WitnessAnswer", "WitnessEndpoint", "collect_cosignatures"]

#: the largest answer read from a witness
_MAX_ANSWER = 64 * 1024


@dataclass(frozen=True)
class WitnessEndpoint:
    """A witness a log asks for cosignatures: a ``label`` for messages, the ``url`` of its
    submission prefix (``POST <url>/add-checkpoint``) and its cosignature ``key``."""

    label: str
    url: str
    key: CosignerKey

    @classmethod
    def parse(cls, spec: str, read_key: Callable[[str], str] = lambda text: text) -> WitnessEndpoint:
        """Parse ``NAME=URL:VKEY``: the key is what follows the URL's last ``:`` (the key itself,
        or — through ``read_key`` — a file holding it)."""
        label, sep, rest = spec.partition("=")
        url, colon, key_text = rest.rpartition(":")
        if not sep or not colon or not _valid_name(label) or not re.match(r"https?://[^/]", url):
            raise ValidationError(f"{spec[:200]!r} is not NAME=URL:VKEY (e.g. "
                                  "w1=https://witness.example/w1:witness.example/w1+1234abcd+BA…)")
        try:
            key = CosignerKey.parse(read_key(key_text))
        except NoteError as exc:
            raise ValidationError(f"witness {label}: {exc}") from None
        return cls(label, url, key)


@dataclass(frozen=True)
class WitnessAnswer:
    """What one witness answered: its ``cosignature``, or ``error`` saying why there is none."""

    witness: WitnessEndpoint
    cosignature: Cosignature | None
    error: str | None


@dataclass(frozen=True)
class CosignResult:
    """A checkpoint cosigned by a quorum: the ``note`` (the log's signature, then the valid
    cosignatures), its ``checkpoint``, the ``cosignatures`` (with their timestamps) and every
    witness's ``answers``."""

    note: str
    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]
    answers: tuple[WitnessAnswer, ...]


class QuorumError(JournalError):
    """Fewer witnesses cosigned than the quorum; ``answers`` says what each one answered."""

    def __init__(self, summary: str, answers: Sequence[WitnessAnswer]) -> None:
        said = "; ".join(f"{a.witness.label}: {a.error}" for a in answers if a.cosignature is None)
        super().__init__(f"{summary} — {said}")
        self.summary = summary
        self.answers = list(answers)


def _body(old: int, proof: Sequence[bytes], note: str) -> bytes:
    import base64

    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode()


def _ask(witness: WitnessEndpoint, note: str, size: int, guess: int,
         proof: Callable[[int], Sequence[bytes]], deadline: float) -> WitnessAnswer:
    old, seen = (guess if 0 <= guess <= size else 0), set[int]()
    while True:
        try:  # (a proof may take a while: the time left is counted after it)
            body = _body(old, proof(old), note)
        except JournalError as exc:  # e.g. the entries it needs are archived
            return WitnessAnswer(witness, None, str(exc))
        left = deadline - time.monotonic()
        if left <= 0:
            return WitnessAnswer(witness, None, "no answer in time")
        try:
            reply = request(join(witness.url, "/add-checkpoint"), method="POST",
                            body=body, timeout=left, limit=_MAX_ANSWER)
        except (HTTPError, JournalError) as exc:
            return WitnessAnswer(witness, None, str(exc))
        text = reply.body.decode("utf-8", "replace")
        if reply.status == 200:
            return _check(witness, note, text)
        seen.add(old)
        if reply.status == 409 and reply.content_type.split(";")[0].strip() == "text/x.tlog.size" \
                and re.fullmatch(r"(0|[1-9][0-9]{0,18})\n", text):
            held = int(text)
            if held > size:
                return WitnessAnswer(witness, None, f"it cosigned a tree of {held} leaves, bigger than this "
                                                    f"one ({size}): the log was rolled back, or is another "
                                                    "history of its origin")
            if held not in seen:
                old = held
                continue
            return WitnessAnswer(witness, None, f"409: it holds a checkpoint of tree size {held} with "
                                                "another root than this log's: the log's history is not "
                                                "the one it saw")
        return WitnessAnswer(witness, None, f"{reply.status}: {text.strip()[:300]}")


def _check(witness: WitnessEndpoint, note: str, answer: str) -> WitnessAnswer:
    lines = answer.splitlines(keepends=True)
    if not lines or any(not line.startswith("\u2014 ") or not line.endswith("\n") for line in lines):
        return WitnessAnswer(witness, None, "200, but the answer is not note signature lines")
    try:
        found = find_cosignatures(note + "".join(lines), [witness.key])
    except NoteError as exc:
        return WitnessAnswer(witness, None, f"200, but {exc}")
    if not found:
        return WitnessAnswer(witness, None, f"200, but without a cosignature of its key {witness.key.name}")
    return WitnessAnswer(witness, found[0], None)


def collect_cosignatures(note: str, witnesses: Sequence[WitnessEndpoint], *, quorum: int | None = None,
                         timeout: float = 10.0, guess: Callable[[CosignerKey], int] = lambda _k: 0,
                         proof: Callable[[int], Sequence[bytes]]) -> tuple[str, list[WitnessAnswer]]:
    """Ask every witness in parallel to cosign the signed checkpoint ``note``; return the note with
    the valid cosignatures appended (in the order the witnesses are given) and every answer.

    ``guess(key)`` is the size the log believes the witness cosigned last; ``proof(old)`` the
    consistency proof from ``old`` to the checkpoint's size. Raises :class:`QuorumError` (naming
    each witness's answer) when fewer than ``quorum`` (default: all) cosigned within ``timeout``
    seconds."""
    if not witnesses:
        raise ValidationError("no witness given")
    if len({w.key for w in witnesses}) != len(witnesses):
        raise ValidationError("a witness key is given twice: a quorum counts distinct witnesses")
    need = len(witnesses) if quorum is None else quorum
    if type(need) is not int or not 1 <= need <= len(witnesses):
        raise ValidationError(f"the quorum must be 1 … {len(witnesses)} (the number of witnesses), "
                              f"got {need!r}")
    if not timeout > 0:
        raise ValidationError(f"the timeout must be > 0 seconds, got {timeout!r}")
    text, _lines = split_note(note)
    size = parse_checkpoint(text).size
    deadline = time.monotonic() + timeout
    lock = threading.Lock()

    def locked_proof(old: int) -> Sequence[bytes]:
        with lock:  # (one store read at a time)
            return proof(old)

    pool = ThreadPoolExecutor(max_workers=len(witnesses), thread_name_prefix="krepis-witness")
    try:
        futures = [pool.submit(_ask, w, note, size, guess(w.key), locked_proof, deadline) for w in witnesses]
        answers = []
        for witness, future in zip(witnesses, futures, strict=True):
            try:
                answers.append(future.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0))
            except FutureTimeout:
                answers.append(WitnessAnswer(witness, None, "no answer in time"))
            except Exception as exc:  # a proof that cannot be made (e.g. archived entries)
                answers.append(WitnessAnswer(witness, None, f"{type(exc).__name__}: {exc}"))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    good = [a for a in answers if a.cosignature is not None]
    if len(good) < need:
        raise QuorumError(f"{len(good)} of {len(witnesses)} witness(es) cosigned the checkpoint of tree size "
                          f"{size}, fewer than the quorum of {need}", answers)
    return note + "".join(a.cosignature.line for a in good if a.cosignature is not None), answers
