"""Witness cosignatures: C2SP ``tlog-cosignature`` (``cosignature/v1``, Ed25519).

* A cosigner key is an Ed25519 key of signature type ``0x04``: key ID
  ``SHA-256(name ‖ 0x0A ‖ 0x04 ‖ public key)[:4]``; verifier ``<name>+<key ID>+base64(0x04 ‖ public
  key)``, signer ``PRIVATE+KEY+<name>+<key ID>+base64(0x04 ‖ 32-byte seed)``.
* A cosignature is a note signature line ``— <name> base64(key ID ‖ timestamp ‖ signature)``:
  ``timestamp`` a big-endian u64 of POSIX seconds (at most 2**63-1), ``signature`` Ed25519 over
  ``cosignature/v1\\ntime <timestamp>\\n`` followed by the whole checkpoint text.
* A client accepts a checkpoint only with the log's own signature (by the key named as its
  origin) and valid cosignatures of at least ``quorum`` distinct witnesses it trusts
  (:func:`open_cosigned_checkpoint`); cosignatures of unknown keys are ignored, one that does not
  verify under a known key rejects the whole note (as signed-note says of every signature).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from hashlib import sha256

from ._note import (
    _DASH,
    Checkpoint,
    NoteError,
    Verifier,
    _b64,
    _check_name,
    _hex_id,
    open_checkpoint,
    split_note,
)

__all__ = ["Cosignature", "CosignedCheckpoint", "Cosigner", "CosignerKey", "cosignature_message",
           "find_cosignatures", "generate_cosigner", "open_cosigned_checkpoint"]

_COSIG_V1 = 4
_MAX_TIMESTAMP = 2**63 - 1


def _key_id(name: str, public: bytes) -> int:
    return int.from_bytes(sha256(name.encode() + b"\n" + bytes((_COSIG_V1,)) + public).digest()[:4], "big")


def _parts(text: str, count: int, what: str, form: str) -> list[str]:
    parts = text.strip().split("+", count - 1)  # (base64 may hold '+')
    if len(parts) != count:
        raise NoteError(f"a {what} is {form}")
    return parts


def _raw_key(b64: str, what: str) -> bytes:
    raw = _b64(b64, what)
    if len(raw) == 33 and raw[0] == 1:
        raise NoteError(f"{what} is a log's signature key (type 0x01), not a witness's cosignature key "
                        "(type 0x04): make witness keys with krepis keygen --witness")
    if len(raw) != 33 or raw[0] != _COSIG_V1:
        raise NoteError(f"{what} is not an Ed25519 cosignature key (type 0x04, 32 bytes)")
    return raw[1:]


def cosignature_message(text: str, timestamp: int) -> bytes:
    """What a ``cosignature/v1`` Ed25519 signature signs: two header lines, then the whole
    checkpoint text (with its final newline, without signature lines)."""
    return f"cosignature/v1\ntime {timestamp}\n{text}".encode()


@dataclass(frozen=True)
class CosignerKey:
    """A witness's public cosignature key (type 0x04) with its name: checks cosignatures."""

    name: str
    key_id: int
    public: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> CosignerKey:
        """Parse ``<name>+<hex key ID>+base64(0x04 ‖ key)``."""
        name, hex_id, b64 = _parts(text, 3, "witness key", "<name>+<key ID>+<base64 key>")
        _check_name(name)
        public = _raw_key(b64, "the witness key")
        if _hex_id(hex_id) != _key_id(name, public):
            raise NoteError(f"the witness key's ID {hex_id!r:.20} does not match its name and key")
        return cls(name, _hex_id(hex_id), public)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(bytes((_COSIG_V1,)) + self.public).decode()}"

    def timestamp(self, text: str, signature: bytes) -> int | None:
        """The timestamp of ``signature`` (the bytes after the key ID) when it is a valid
        cosignature of the note text ``text`` by this key, else ``None``."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(signature) != 8 + 64:
            return None
        stamp = int.from_bytes(signature[:8], "big")
        if stamp > _MAX_TIMESTAMP:
            return None
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature[8:],
                                                                   cosignature_message(text, stamp))
        except (InvalidSignature, ValueError):
            return None
        return stamp


@dataclass(frozen=True)
class Cosigner:
    """A witness's private cosignature key (type 0x04): cosigns checkpoints."""

    name: str
    key_id: int
    seed: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Cosigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x04 ‖ seed)``."""
        parts = _parts(text, 5, "witness signer key", "PRIVATE+KEY+<name>+<key ID>+<base64 key>")
        if parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a witness signer key is PRIVATE+KEY+<name>+<key ID>+<base64 key>")
        name, hex_id, b64 = parts[2:]
        _check_name(name)
        draft = cls(name, 0, _raw_key(b64, "the witness signer key"))
        key_id = draft.verifier().key_id
        if _hex_id(hex_id) != key_id:
            raise NoteError(f"the witness signer key's ID {hex_id!r:.20} does not match its name and key")
        return cls(name, key_id, draft.seed)

    def __str__(self) -> str:
        return (f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+"
                f"{base64.b64encode(bytes((_COSIG_V1,)) + self.seed).decode()}")

    def verifier(self) -> CosignerKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        return CosignerKey(self.name, _key_id(self.name, public), public)

    def cosign(self, text: str, timestamp: int) -> str:
        """The cosignature line (with its newline) of the checkpoint text ``text`` at
        ``timestamp`` (POSIX seconds)."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if type(timestamp) is not int or not 0 <= timestamp <= _MAX_TIMESTAMP:
            raise NoteError(f"a cosignature's timestamp must be in 0 … 2**63-1, got {timestamp!r:.40}")
        signature = Ed25519PrivateKey.from_private_bytes(self.seed).sign(cosignature_message(text, timestamp))
        raw = self.key_id.to_bytes(4, "big") + timestamp.to_bytes(8, "big") + signature
        return f"{_DASH} {self.name} {base64.b64encode(raw).decode()}\n"


def generate_cosigner(name: str) -> Cosigner:
    """A new random witness key named ``name`` (a schema-less URL is recommended)."""
    draft = Cosigner(_check_name(name), 0, os.urandom(32))
    return Cosigner(name, draft.verifier().key_id, draft.seed)


@dataclass(frozen=True)
class Cosignature:
    """A valid cosignature found on a checkpoint: the witness's ``key``, its ``timestamp`` (POSIX
    seconds) and its signature ``line``."""

    key: CosignerKey
    timestamp: int
    line: str = field(repr=False)

    @property
    def witness(self) -> str:
        return self.key.name


@dataclass(frozen=True)
class CosignedCheckpoint:
    """A checkpoint accepted with the log's signature and a quorum of witness cosignatures."""

    checkpoint: Checkpoint
    cosignatures: tuple[Cosignature, ...]


def _witness_keys(keys: Sequence[CosignerKey | str]) -> list[CosignerKey]:
    out: list[CosignerKey] = []
    for key in keys:
        parsed = CosignerKey.parse(key) if isinstance(key, str) else key
        if not isinstance(parsed, CosignerKey):
            raise NoteError(f"a witness key must be a CosignerKey or its text, got {type(key).__name__}")
        out.append(parsed)
    return out


def find_cosignatures(note: str, witnesses: Sequence[CosignerKey | str]) -> list[Cosignature]:
    """The valid cosignatures on the signed note ``note`` by the keys ``witnesses`` (one per key,
    the first), checked for form first. Signatures of other keys are ignored; one by a known key
    that does not verify raises :class:`NoteError` (the whole note is refused)."""
    keys = {(k.name, k.key_id): k for k in _witness_keys(witnesses)}
    text, lines = split_note(note)
    found: dict[CosignerKey, Cosignature] = {}
    for sig in lines:
        key = keys.get((sig.name, sig.key_id))
        if key is None:
            continue
        stamp = key.timestamp(text, sig.signature)
        if stamp is None:
            raise NoteError(f"the cosignature of witness {key.name} does not verify")
        found.setdefault(key, Cosignature(key, stamp, sig.line))
    return list(found.values())


def open_cosigned_checkpoint(note: str, log_keys: Sequence[Verifier | str],
                             witnesses: Sequence[CosignerKey | str], quorum: int | None = None, *,
                             max_future: float | None = 600.0) -> CosignedCheckpoint:
    """The checkpoint of ``note``, once :func:`~krepis.tlog.open_checkpoint` checked the log's
    signature (a key of ``log_keys`` named as its origin) and at least ``quorum`` (default: every
    one) of the ``witnesses`` cosigned it validly, none dated more than ``max_future`` seconds
    ahead of this machine's clock (``None``: no limit). Returns the checkpoint and the valid
    cosignatures, with their timestamps. Raises :class:`NoteError` naming the witnesses whose
    cosignature is missing when there are too few."""
    logs = [Verifier.parse(k) if isinstance(k, str) else k for k in log_keys]
    keys = _witness_keys(witnesses)
    if len(set(keys)) != len(keys):
        raise NoteError("a witness key is given twice: a quorum counts distinct witnesses")
    need = len(keys) if quorum is None else quorum
    if type(need) is not int or not 1 <= need <= len(keys):
        raise NoteError(f"the quorum must be 1 … {len(keys)} (the number of witness keys given), "
                        f"got {need!r}")
    checkpoint = open_checkpoint(note, logs)
    found = find_cosignatures(note, keys)
    if max_future is not None:
        limit = time.time() + max_future
        for cosig in found:
            if cosig.timestamp > limit:
                raise NoteError(f"the cosignature of witness {cosig.witness} is dated in the future "
                                f"(timestamp {cosig.timestamp}, more than {max_future:g} s ahead)")
    if len(found) < need:
        have = {c.key for c in found}
        missing = ", ".join(k.name for k in keys if k not in have)
        raise NoteError(f"the checkpoint of {checkpoint.origin} (tree size {checkpoint.size}) carries "
                        f"{len(found)} valid cosignature(s) of the witnesses given, fewer than the quorum "
                        f"of {need} (missing: {missing})")
    return CosignedCheckpoint(checkpoint, tuple(found))
