"""Signed notes, keys and checkpoints read exactly as C2SP signed-note and tlog-checkpoint say:
what the specs allow is accepted (signatures of unknown keys, witnesses' cosignatures, extension
lines), everything else is refused with a NoteError naming the rule."""

from __future__ import annotations

import base64
import string

import pytest

from krepis.tlog._note import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    format_checkpoint,
    generate_signer,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    sign_note,
)

_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
_ROOT = bytes(range(32))


def _noncanonical(b64: str) -> str:
    """The same bytes, base64-encoded with a stray bit set in the last character (a form
    decoders may accept, RFC 4648 §3.5) — or, without padding, with an extra '='."""
    stripped = b64.rstrip("=")
    if len(stripped) == len(b64):
        return b64 + "="
    last = _ALPHABET.index(stripped[-1])
    assert last & 1 == 0
    return stripped[:-1] + _ALPHABET[last | 1] + b64[len(stripped):]


def _checkpoint(signer: Signer, size: int = 5, origin: str | None = None,
                extensions: tuple[str, ...] = ()) -> str:
    return sign_note(format_checkpoint(Checkpoint(origin or signer.name, size, _ROOT, extensions)), signer)


def _signature(note: str) -> str:
    return note.rstrip("\n").rsplit(" ", 1)[1]


def test_a_noncanonical_form_decodes_to_the_same_bytes() -> None:
    key = generate_signer("example.com/log")
    sig = _signature(_checkpoint(key))
    assert base64.b64decode(_noncanonical(sig), validate=True) == base64.b64decode(sig)


def test_a_signature_whose_bytes_were_altered_is_refused() -> None:
    """The key ID is right, the signature bytes are not: the known key's signature must be
    checked, and its failure refuses the note (not merely leaves it unverified)."""
    key = generate_signer("example.com/log")
    note = _checkpoint(key)
    raw = bytearray(base64.b64decode(_signature(note)))
    raw[10] ^= 0x01
    bad = note.replace(_signature(note), base64.b64encode(bytes(raw)).decode())
    with pytest.raises(NoteError, match=r"the signature of example\.com/log does not verify"):
        open_note(bad, [key.verifier()])
    with pytest.raises(NoteError, match="does not verify"):
        open_checkpoint(bad, [key.verifier()])
    assert open_note(note, [key.verifier()]) == format_checkpoint(Checkpoint(key.name, 5, _ROOT))


def test_noncanonical_base64_in_a_signature_is_refused() -> None:
    key = generate_signer("example.com/log")
    note = _checkpoint(key)
    bad = note.replace(_signature(note), _noncanonical(_signature(note)))
    with pytest.raises(NoteError, match="a signature is not canonical base64"):
        open_note(bad, [key.verifier()])


def test_noncanonical_base64_in_a_key_is_refused() -> None:
    key = generate_signer("example.com/log")
    vtext, stext = str(key.verifier()), str(key)
    assert Verifier.parse(vtext) == key.verifier() and Signer.parse(stext) == key
    with pytest.raises(NoteError, match="the verifier key is not canonical base64"):
        Verifier.parse(vtext + "=")
    with pytest.raises(NoteError, match="the signer key is not canonical base64"):
        Signer.parse(stext + "=")


def test_noncanonical_base64_in_a_root_hash_is_refused() -> None:
    root = base64.b64encode(_ROOT).decode()
    assert parse_checkpoint(f"example.com/log\n5\n{root}\n").root == _ROOT
    with pytest.raises(NoteError, match="root hash is not canonical base64"):
        parse_checkpoint(f"example.com/log\n5\n{_noncanonical(root)}\n")


def test_a_verifier_key_whose_id_does_not_match_its_name_and_key_is_refused() -> None:
    key = generate_signer("example.com/log")
    name, hex_id, b64 = str(key.verifier()).split("+", 2)
    wrong = f"{int(hex_id, 16) ^ 1:08x}"
    with pytest.raises(NoteError, match=r"the verifier key's ID .* does not match its name and key"):
        Verifier.parse(f"{name}+{wrong}+{b64}")
    with pytest.raises(NoteError, match="does not match its name and key"):
        Verifier.parse(f"example.com/other+{hex_id}+{b64}")  # the name is part of the ID
    with pytest.raises(NoteError, match=r"the signer key's ID .* does not match its name and key"):
        Signer.parse(str(key).replace(hex_id, wrong))
    # Go's note package reads the ID as hexadecimal in either case
    assert Verifier.parse(f"{name}+{hex_id.upper()}+{b64}") == key.verifier()


def test_a_checkpoint_whose_origin_is_not_its_key_name_is_refused() -> None:
    key = generate_signer("example.com/log")
    note = _checkpoint(key, origin="example.com/another-log")
    assert open_note(note, [key.verifier()]).startswith("example.com/another-log\n")  # a note, yes
    with pytest.raises(NoteError, match=r"origin 'example.com/another-log' is not the name of a key that "
                                        r"signed it \(example.com/log\)"):
        open_checkpoint(note, [key.verifier()])
    assert open_checkpoint(_checkpoint(key), [key.verifier()]) == Checkpoint(key.name, 5, _ROOT)


def test_an_empty_extension_line_is_refused_and_others_are_kept() -> None:
    key = generate_signer("example.com/log")
    root = base64.b64encode(_ROOT).decode()
    with pytest.raises(NoteError, match="extension line 1 is empty"):
        parse_checkpoint(f"example.com/log\n5\n{root}\n\n")
    with pytest.raises(NoteError, match="extension line 2 is empty"):
        parse_checkpoint(f"example.com/log\n5\n{root}\nfirst\n\nthird\n")
    with pytest.raises(NoteError, match="extension line"):
        format_checkpoint(Checkpoint("example.com/log", 5, _ROOT, ("",)))
    note = _checkpoint(key, extensions=("timestamp 1700000000", "— x"))
    assert open_checkpoint(note, [key.verifier()]).extensions == ("timestamp 1700000000", "— x")


def test_what_the_specs_allow_is_accepted() -> None:
    """Signatures of unknown keys — even sharing the name or the ID (not both) of a known key —
    are ignored; a witness's cosignature beside the log's is fine; 16 signatures are read;
    an origin that is no URL is fine so long as it is the key's name."""
    log = generate_signer("example.com/log")
    witness = generate_signer("witness.example/w1")
    same_name = generate_signer("example.com/log")  # another key under the same name
    text = format_checkpoint(Checkpoint(log.name, 7, _ROOT))
    note = sign_note(text, log)
    extra = [sign_note(text, k).splitlines()[-1] for k in (witness, same_name)]
    fake_id = f"— example.org/other {base64.b64encode(log.key_id.to_bytes(4, 'big') + b'x' * 64).decode()}"
    many = [sign_note(text, generate_signer(f"w{i}.example")).splitlines()[-1] for i in range(13)]
    full = note + "\n".join([*extra, fake_id, *many]) + "\n"
    assert len(full.split("\n\n", 1)[1].splitlines()) == 17
    assert open_checkpoint(full, [log.verifier()]).size == 7
    assert open_checkpoint(full, [witness.verifier(), log.verifier()]).size == 7
    with pytest.raises(NoteError, match="is not the name of a key that signed it"):
        open_checkpoint(full, [witness.verifier()])  # a witness alone does not name the log
    with pytest.raises(NoteError, match="no signature of a known key"):
        open_note(note, [witness.verifier()])
    plain = generate_signer("log-without-a-dot")
    assert open_checkpoint(_checkpoint(plain), [plain.verifier()]).origin == "log-without-a-dot"


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u2003b"])
def test_a_signature_line_with_a_bad_key_name_is_malformed(name: str) -> None:
    key = generate_signer("example.com/log")
    note = _checkpoint(key)
    line = f"— {name} {_signature(note)}"
    with pytest.raises(NoteError, match=r"malformed signature line|must be non-empty"):
        open_note(note + line + "\n", [key.verifier()])


def test_a_note_with_too_many_signatures_is_refused() -> None:
    key = generate_signer("example.com/log")
    note = _checkpoint(key)
    line = note.splitlines()[-1]
    with pytest.raises(NoteError, match="more than 100 signatures"):
        open_note(note + (line + "\n") * 100, [key.verifier()])
