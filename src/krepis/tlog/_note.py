"""C2SP signed notes (Ed25519) and tlog checkpoints.

* signed-note: a text ending in a newline, a blank line, then signature lines
  ``— <key name> base64(key ID ‖ signature)``; the key ID is
  ``SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key)[:4]``.
* keys, as Go's ``golang.org/x/mod/sumdb/note`` writes them: verifier
  ``<name>+<key ID, 8 hex digits>+base64(0x01 ‖ public key)``, signer
  ``PRIVATE+KEY+<name>+<key ID>+base64(0x01 ‖ 32-byte seed)``.
* tlog-checkpoint: the note text is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` plus
  optional, non-empty extension lines; :func:`open_checkpoint` also requires a verified
  signature by the key named as the origin.

Base64 is read in its canonical form only (RFC 4648 §4, padded, no stray bits): one value has
one spelling, so a signature, key or hash cannot be re-spelt without being refused.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from hashlib import sha256

from .._errors import ValidationError

__all__ = [
    "Checkpoint",
    "NoteError",
    "NoteSignature",
    "Signer",
    "Verifier",
    "format_checkpoint",
    "generate_signer",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "sign_note",
    "split_note",
]

_ED25519 = 1
_COSIGNATURE_V1 = 4  # a witness's timestamped Ed25519 cosignature (c2sp.org/tlog-cosignature)
_DASH = "\u2014"
#: signature lines read at most (Go's note package stops at the same number; the spec asks for 16)
MAX_SIGNATURES = 100
#: the largest tree size a checkpoint may name
MAX_TREE_SIZE = 2**63 - 1


class NoteError(ValidationError):
    """A key, note or checkpoint is malformed, or a signature does not verify."""


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and bool(name) and not any(
        c.isspace() or c == "+" or ord(c) < 0x20 for c in name)


def _check_name(name: str) -> str:
    if not _valid_name(name):
        raise NoteError(f"key name {name!r:.80} must be non-empty, without spaces or '+'")
    return name


def _key_id(name: str, public: bytes) -> int:
    return int.from_bytes(sha256(name.encode() + b"\n" + bytes((_ED25519,)) + public).digest()[:4], "big")


def _hex_id(text: str) -> int:
    """The key ID of a key's text: 8 hex digits (either case, as Go's note package reads them)."""
    if len(text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return -1
    return int(text, 16)


def _b64(data: str, what: str) -> bytes:
    """``data`` decoded, if it is canonical standard base64 (RFC 4648 §4): padded with '=', no
    stray bits in the last character, nothing else — so that the bytes have one spelling."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != data:
        raise NoteError(f"{what} is not canonical base64 (RFC 4648 §4: padded, no stray bits)")
    return raw


@dataclass(frozen=True)
class Verifier:
    """A public Ed25519 key with its name: checks signatures."""

    name: str
    key_id: int
    public: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """Parse ``<name>+<hex key ID>+<base64 key>``."""
        parts = text.strip().split("+", 2)  # (base64 may hold '+')
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<key ID>+<base64 key>")
        name, hex_id, b64 = parts
        _check_name(name)
        raw = _b64(b64, "the verifier key")
        if len(raw) == 33 and raw[0] == _COSIGNATURE_V1:
            raise NoteError("the verifier key is a witness's cosignature key (type 0x04), not a log's "
                            "signature key (type 0x01): give it as a witness key")
        if len(raw) != 33 or raw[0] != _ED25519:
            raise NoteError("the verifier key is not an Ed25519 key (type 0x01, 32 bytes)")
        public = raw[1:]
        if _hex_id(hex_id) != _key_id(name, public):
            raise NoteError(f"the verifier key's ID {hex_id!r:.20} does not match its name and key")
        return cls(name, _hex_id(hex_id), public)

    def __str__(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{base64.b64encode(bytes((_ED25519,)) + self.public).decode()}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A private Ed25519 key with its name: signs notes."""

    name: str
    key_id: int
    seed: bytes = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64 key>``."""
        parts = text.strip().split("+", 4)  # (base64 may hold '+')
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise NoteError("a signer key is PRIVATE+KEY+<name>+<key ID>+<base64 key>")
        name, hex_id, b64 = parts[2:]
        _check_name(name)
        raw = _b64(b64, "the signer key")
        if len(raw) != 33 or raw[0] != _ED25519:
            raise NoteError("the signer key is not an Ed25519 key (type 0x01, 32 bytes)")
        signer = cls(name, 0, raw[1:])
        key_id = _key_id(name, signer.verifier().public)
        if _hex_id(hex_id) != key_id:
            raise NoteError(f"the signer key's ID {hex_id!r:.20} does not match its name and key")
        return cls(name, key_id, raw[1:])

    def __str__(self) -> str:
        return (f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+"
                f"{base64.b64encode(bytes((_ED25519,)) + self.seed).decode()}")

    def verifier(self) -> Verifier:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        return Verifier(self.name, _key_id(self.name, public), public)

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def generate_signer(name: str) -> Signer:
    """A new random Ed25519 signer key named ``name`` (for checkpoints: the log's origin)."""
    import os

    seed = os.urandom(32)
    draft = Signer(_check_name(name), 0, seed)
    return Signer(name, draft.verifier().key_id, seed)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text must end with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note's text must not contain control characters other than newline")


def sign_note(text: str, signer: Signer) -> str:
    """The signed note: ``text``, a blank line, one signature line."""
    _check_text(text)
    signature = signer.key_id.to_bytes(4, "big") + signer.sign(text.encode())
    return f"{text}\n{_DASH} {signer.name} {base64.b64encode(signature).decode()}\n"


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a signed note: the key's ``name`` and ``key_id``, the signature
    bytes after the key ID, and the ``line`` as it was (with its newline)."""

    name: str
    key_id: int
    signature: bytes = field(repr=False)
    line: str = field(repr=False)


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """The note's text and its signature lines, checked for form only (no signature is
    verified). Raises :class:`NoteError` when the note is not a well-formed signed note."""
    split = note.rfind("\n\n")
    if split < 0 or not note.endswith("\n"):
        raise NoteError("not a signed note (no blank line before the signatures)")
    text, lines = note[:split + 1], note[split + 2:-1].split("\n")
    _check_text(text)
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("a signed note must not contain control characters other than newline")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"the note carries more than {MAX_SIGNATURES} signatures")
    out: list[NoteSignature] = []
    for line in lines:
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH or not _valid_name(parts[1]):
            raise NoteError(f"malformed signature line {line[:80]!r}")
        raw = _b64(parts[2], "a signature")
        if len(raw) < 5:
            raise NoteError("a signature is too short")
        out.append(NoteSignature(parts[1], int.from_bytes(raw[:4], "big"), raw[4:], line + "\n"))
    return text, out


def _open(note: str, verifiers: list[Verifier]) -> tuple[str, list[Verifier]]:
    """The note's text and the known keys whose signatures verified (at least one)."""
    text, lines = split_note(note)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[Verifier] = []
    for sig in lines:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # an unknown key (the spec: ignored, even if its name or ID is a known key's)
        if not verifier.verify(text.encode(), sig.signature):
            raise NoteError(f"the signature of {verifier.name} does not verify")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise NoteError("the note carries no signature of a known key")
    return text, verified


def open_note(note: str, verifiers: list[Verifier]) -> str:
    """The note's text, once a signature of one of ``verifiers`` has been checked.

    Raises :class:`NoteError` when the note is malformed, when a known key's signature does not
    verify, or when no known key signed it. Signatures of unknown keys are ignored."""
    return _open(note, verifiers)[0]


def open_checkpoint(note: str, verifiers: list[Verifier]) -> Checkpoint:
    """The checkpoint of a signed note, once :func:`open_note` checked it and a key named as its
    origin is among the keys whose signatures verified (a witness's cosignature alone does not
    name the log). Raises :class:`NoteError` otherwise."""
    text, signers = _open(note, verifiers)
    checkpoint = parse_checkpoint(text)
    if all(v.name != checkpoint.origin for v in signers):
        names = ", ".join(v.name for v in signers)
        raise NoteError(f"the checkpoint's origin {checkpoint.origin!r:.80} is not the name of a key that "
                        f"signed it ({names}): a log signs its checkpoints with the key named as its origin")
    return checkpoint


@dataclass(frozen=True)
class Checkpoint:
    """A tlog checkpoint: ``origin``, tree ``size`` and ``root`` hash (plus extension lines)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The checkpoint's note text (to be signed)."""
    _check_origin(checkpoint.origin)
    _check_extensions(checkpoint.extensions)
    lines = [checkpoint.origin, str(checkpoint.size), base64.b64encode(checkpoint.root).decode(),
             *checkpoint.extensions]
    return "\n".join(lines) + "\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text (use :func:`open_note` first to check its signature)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint has an origin, a tree size and a root hash, each on a line")
    origin, size_text, root_text = lines[:3]
    if not re.fullmatch(r"0|[1-9][0-9]*", size_text):
        raise NoteError(f"checkpoint tree size {size_text!r:.40} is not a decimal number")
    if len(size_text) > 19 or int(size_text) > MAX_TREE_SIZE:
        raise NoteError(f"checkpoint tree size {size_text:.40} is beyond 2**63-1 (what every tlog client "
                        "holds in a signed 64-bit integer)")
    root = _b64(root_text, "the checkpoint's root hash")
    if len(root) != 32:
        raise NoteError("the checkpoint's root hash is not 32 bytes")
    return Checkpoint(_check_origin(origin), int(size_text), root, _check_extensions(tuple(lines[3:-1])))


def _check_extensions(lines: tuple[str, ...]) -> tuple[str, ...]:
    for n, line in enumerate(lines, 1):
        if not isinstance(line, str) or not line or "\n" in line:
            raise NoteError(f"checkpoint extension line {n} is empty (or not one line): extension lines "
                            "must be non-empty (C2SP tlog-checkpoint)")
    return lines


def _check_origin(origin: str) -> str:
    # the spec's only rule (spaces are merely not recommended); open_checkpoint then requires
    # the origin to be the name of the key that signed it
    if not isinstance(origin, str) or not origin or any(ord(c) < 0x20 for c in origin):
        raise NoteError(f"checkpoint origin {origin!r:.80} must be one non-empty line")
    return origin
