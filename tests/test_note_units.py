"""Signed notes, keys and checkpoints (``krepis.tlog._note``) one rule at a time: every refusal's
exact text (users read them), each limit at its edge, and the published example of the note
format — a key pair and a signed note — read and written byte for byte."""

from __future__ import annotations

import base64
from hashlib import sha256

import pytest

from krepis.tlog._note import (
    MAX_SIGNATURES,
    MAX_TREE_SIZE,
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
    split_note,
)

# the example key pair and note of the signed-note format's reference documentation
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
NOTE = (TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpR"
        "Zb6KE6RyyBwJnAM=\n")
ROOT = bytes(range(32))
ROOT_B64 = base64.b64encode(ROOT).decode()


def _refused(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(NoteError) as info:
        call(*args)
    return str(info.value)


def _b64key(kind: int, key: bytes) -> str:
    return base64.b64encode(bytes((kind,)) + key).decode()


def _key_id(name: str, public: bytes) -> str:
    return sha256(name.encode() + b"\n\x01" + public).digest()[:4].hex()


# -- keys ------------------------------------------------------------------------------------

def test_the_published_example_keys_and_note_are_read_and_written_byte_for_byte() -> None:
    signer, verifier = Signer.parse(SKEY), Verifier.parse(VKEY)
    assert (signer.name, signer.key_id) == (verifier.name, verifier.key_id) == ("PeterNeumann", 0xc74f20a3)
    assert signer.verifier() == verifier
    assert str(signer) == SKEY and str(verifier) == VKEY  # the private key's base64 holds a '+'
    assert sign_note(TEXT, signer) == NOTE  # Ed25519 is deterministic
    assert open_note(NOTE, [verifier]) == TEXT
    text, sigs = split_note(NOTE)
    assert text == TEXT and len(sigs) == 1
    assert (sigs[0].name, sigs[0].key_id, sigs[0].line) == ("PeterNeumann", 0xc74f20a3, NOTE[len(TEXT) + 1:])
    assert sigs[0].signature == base64.b64decode(NOTE.split(" ")[-1])[4:]


def test_a_key_id_is_the_start_of_the_hash_of_name_type_and_key() -> None:
    signer = Signer(_name := "example.com/log", 0, bytes(32))
    public = signer.verifier().public
    want = int(_key_id(_name, public), 16)
    assert signer.verifier().key_id == want and str(Signer.parse(str(Signer(_name, want, bytes(32))))).split(
        "+")[3] == f"{want:08x}"
    generated = generate_signer("example.com/log")
    assert generated.key_id == int(_key_id(generated.name, generated.verifier().public), 16)
    assert generated.verifier().key_id == generated.key_id
    assert Signer.parse(str(generated)) == generated


def test_a_key_id_is_eight_hex_digits_in_either_case_and_nothing_else() -> None:
    verifier = Verifier.parse(VKEY)
    b64 = VKEY.split("+", 2)[2]
    assert Verifier.parse(f"PeterNeumann+C74F20A3+{b64}") == verifier
    # (int(…, 16) would read some of these: a space, "0x", "_")
    for hex_id in ("c74f20a", "0c74f20a3", "c74f20ag", "c74f20aX", " c74f20a", "c74f20a ", "0xc74f20",
                   "c74_f20a", ""):
        assert _refused(Verifier.parse, f"PeterNeumann+{hex_id}+{b64}") == (
            f"the verifier key's ID {hex_id!r} does not match its name and key")
    # the ID as shown is cut at 20 characters of its repr
    long_id = "f" * 40
    assert _refused(Verifier.parse, f"PeterNeumann+{long_id}+{b64}") == (
        f"the verifier key's ID {repr(long_id)[:20]} does not match its name and key")
    skey_b64 = SKEY.split("+", 4)[4]
    assert _refused(Signer.parse, f"PRIVATE+KEY+PeterNeumann+{long_id}+{skey_b64}") == (
        f"the signer key's ID {repr(long_id)[:20]} does not match its name and key")


def test_a_verifier_key_of_the_wrong_form_is_refused_saying_which_rule() -> None:
    b64 = VKEY.split("+", 2)[2]
    public = base64.b64decode(b64)[1:]
    form = "a verifier key is <name>+<key ID>+<base64 key>"
    assert _refused(Verifier.parse, "PeterNeumann+c74f20a3") == form
    assert _refused(Verifier.parse, "PeterNeumann") == form
    assert _refused(Verifier.parse, "") == form
    assert _refused(Verifier.parse, "PeterNeumann+c74f20a3+!!!!") == "the verifier key is not valid base64"
    assert _refused(Verifier.parse, VKEY + "=") == (
        "the verifier key is not canonical base64 (RFC 4648 §4: padded, no stray bits)")
    assert Verifier.parse(f"  {VKEY}\n") == Verifier.parse(VKEY)  # surrounding blanks are no part of it
    not_ed25519 = "the verifier key is not an Ed25519 key (type 0x01, 32 bytes)"
    for raw in (bytes((2,)) + public, bytes((1,)) + public[:31], bytes((1,)) + public + b"\0", b"\x01"):
        key = f"PeterNeumann+c74f20a3+{base64.b64encode(raw).decode()}"
        assert _refused(Verifier.parse, key) == not_ed25519
    assert _refused(Verifier.parse, f"PeterNeumann+c74f20a3+{_b64key(4, public)}") == (
        "the verifier key is a witness's cosignature key (type 0x04), not a log's signature key (type 0x01): "
        "give it as a witness key")
    # 0x04 but not 33 bytes: merely not an Ed25519 key
    assert _refused(Verifier.parse, f"PeterNeumann+c74f20a3+{_b64key(4, public[:31])}") == not_ed25519
    assert _refused(Verifier.parse, f"Peter Neumann+c74f20a3+{b64}") == (
        "key name 'Peter Neumann' must be non-empty, without spaces or '+'")


def test_a_signer_key_of_the_wrong_form_is_refused_saying_which_rule() -> None:
    name, hex_id, b64 = SKEY.split("+", 4)[2:]
    seed = base64.b64decode(b64)[1:]
    form = "a signer key is PRIVATE+KEY+<name>+<key ID>+<base64 key>"
    assert _refused(Signer.parse, f"PRIVATE+KEY+{name}+{hex_id}") == form  # the right prefix, a part short
    assert _refused(Signer.parse, f"PRIVATE+KAY+{name}+{hex_id}+{b64}") == form  # five parts, a wrong prefix
    assert _refused(Signer.parse, f"PUBLIC+KEY+{name}+{hex_id}+{b64}") == form
    assert _refused(Signer.parse, VKEY) == form
    assert _refused(Signer.parse, SKEY + "=") == (
        "the signer key is not canonical base64 (RFC 4648 §4: padded, no stray bits)")
    assert _refused(Signer.parse, f"PRIVATE+KEY+{name}+{hex_id}+*") == "the signer key is not valid base64"
    not_ed25519 = "the signer key is not an Ed25519 key (type 0x01, 32 bytes)"
    for raw in (bytes((2,)) + seed, bytes((4,)) + seed, bytes((1,)) + seed[:31], bytes((1,)) + seed + b"\0"):
        assert _refused(Signer.parse, f"PRIVATE+KEY+{name}+{hex_id}+{base64.b64encode(raw).decode()}") == \
            not_ed25519
    assert _refused(Signer.parse, f"PRIVATE+KEY++{hex_id}+{b64}") == (
        "key name '' must be non-empty, without spaces or '+'")


@pytest.mark.parametrize("name", ["", "a b", "a\tb", "a+b", "a\x01b", "a\x1fb", "a\u00a0b", "a\u2003b"])
def test_a_bad_key_name_is_refused_naming_it(name: str) -> None:
    assert _refused(generate_signer, name) == f"key name {name!r} must be non-empty, without spaces or '+'"


@pytest.mark.parametrize("name", ["a", "!", "a!b", "a\x7fb", "ümlaut.example/log", "a/b:c"])
def test_a_key_name_may_hold_anything_but_spaces_plus_and_control_characters(name: str) -> None:
    key = generate_signer(name)
    assert Signer.parse(str(key)) == key and Verifier.parse(str(key.verifier())) == key.verifier()


def test_a_long_bad_key_name_is_shown_cut_at_80_characters() -> None:
    name = "x " * 100
    assert _refused(generate_signer, name) == (
        f"key name {repr(name)[:80]} must be non-empty, without spaces or '+'")


# -- notes -----------------------------------------------------------------------------------

def test_a_note_text_must_end_with_a_newline_and_hold_no_control_character() -> None:
    key = Signer.parse(SKEY)
    assert _refused(sign_note, "no newline", key) == "a note's text must end with a newline"
    for c in ("\x00", "\t", "\r", "\x1f"):
        assert _refused(sign_note, f"a{c}b\n", key) == (
            "a note's text must not contain control characters other than newline")
    assert sign_note("\x7f \u2014 ok\n", key).startswith("\x7f \u2014 ok\n\n— PeterNeumann ")


def test_what_is_not_a_signed_note_is_refused_saying_why() -> None:
    verifier = Verifier.parse(VKEY)
    no_blank = "not a signed note (no blank line before the signatures)"
    assert _refused(open_note, TEXT, [verifier]) == no_blank
    assert _refused(open_note, NOTE[:-1], [verifier]) == no_blank  # no final newline
    assert _refused(open_note, "\n\n", [verifier]) == "malformed signature line ''"
    control = "a signed note must not contain control characters other than newline"
    assert _refused(open_note, NOTE[:-1] + "\t\n", [verifier]) == control
    assert _refused(open_note, "a\x01\n" + NOTE[len(TEXT):], [verifier]) == (
        "a note's text must not contain control characters other than newline")


def test_the_signatures_follow_the_last_blank_line() -> None:
    """The signature lines are those after the last blank line: a signature line before it is
    part of the text (which the signature then does not cover)."""
    verifier = Verifier.parse(VKEY)
    sig_line = NOTE[len(TEXT) + 1:]
    assert _refused(open_note, TEXT + "\n" + sig_line + "\n" + sig_line, [verifier]) == (
        "the signature of PeterNeumann does not verify")
    text, sigs = split_note("a\n\nb\n\n" + sig_line)
    assert text == "a\n\nb\n" and [s.name for s in sigs] == ["PeterNeumann"]


@pytest.mark.parametrize("line", ["— PeterNeumann", "- PeterNeumann x08g", "—  PeterNeumann x08g",
                                  "— PeterNeumann x08g extra", "— Peter+Neumann x08g", "x" * 200])
def test_a_malformed_signature_line_is_shown_cut_at_80_characters(line: str) -> None:
    assert _refused(open_note, TEXT + "\n" + line + "\n", [Verifier.parse(VKEY)]) == (
        f"malformed signature line {line[:80]!r}")


def test_a_signature_must_hold_a_key_id_and_at_least_one_byte() -> None:
    verifier = Verifier.parse(VKEY)
    four = base64.b64encode(bytes.fromhex("c74f20a3")).decode()
    assert _refused(open_note, f"{TEXT}\n— PeterNeumann {four}\n", [verifier]) == "a signature is too short"
    five = base64.b64encode(bytes.fromhex("c74f20a3") + b"x").decode()
    # five bytes are a signature's form: one that does not verify under the key
    assert _refused(open_note, f"{TEXT}\n— PeterNeumann {five}\n", [verifier]) == (
        "the signature of PeterNeumann does not verify")
    other = base64.b64encode(bytes.fromhex("00000000") + b"x").decode()
    _, sigs = split_note(f"{TEXT}\n— PeterNeumann {other}\n")
    assert (sigs[0].key_id, sigs[0].signature) == (0, b"x")
    assert _refused(open_note, f"{TEXT}\n— PeterNeumann !!!!\n", [verifier]) == (
        "a signature is not valid base64")


def test_up_to_the_limit_of_signatures_is_read_and_one_more_is_refused() -> None:
    assert MAX_SIGNATURES == 100
    verifier = Verifier.parse(VKEY)
    sig_line = NOTE[len(TEXT) + 1:]
    assert open_note(TEXT + "\n" + sig_line * 100, [verifier]) == TEXT
    assert _refused(open_note, TEXT + "\n" + sig_line * 101, [verifier]) == (
        "the note carries more than 100 signatures")


def test_a_note_no_known_key_signed_is_refused_and_one_key_counts_once() -> None:
    verifier = Verifier.parse(VKEY)
    other = generate_signer("example.com/other")
    assert _refused(open_note, NOTE, [other.verifier()]) == "the note carries no signature of a known key"
    assert _refused(open_note, NOTE, []) == "the note carries no signature of a known key"
    # the same name with another key ID, or the same ID under another name: unknown keys
    renamed = NOTE.replace("— PeterNeumann ", "— PeterNeumann2 ")
    assert _refused(open_note, renamed, [verifier]) == "the note carries no signature of a known key"
    assert open_note(NOTE, [other.verifier(), verifier]) == TEXT
    # a key that signed twice is named once
    cp = format_checkpoint(Checkpoint("example.com/log", 1, ROOT))
    witness = generate_signer("witness.example")
    twice = sign_note(cp, witness) + sign_note(cp, witness).split("\n\n")[1]
    assert _refused(open_checkpoint, twice, [witness.verifier()]) == (
        "the checkpoint's origin 'example.com/log' is not the name of a key that signed it "
        "(witness.example): a log signs its checkpoints with the key named as its origin")


def test_a_bad_signature_of_a_known_key_refuses_the_note_whatever_follows() -> None:
    signer = Signer.parse(SKEY)
    verifier = signer.verifier()
    other = generate_signer("example.com/other")
    good = NOTE[len(TEXT) + 1:]
    raw = bytearray(base64.b64decode(good.split(" ")[-1]))
    raw[-1] ^= 1
    bad = f"— PeterNeumann {base64.b64encode(bytes(raw)).decode()}\n"
    extra = sign_note(TEXT, other).split("\n\n")[1]
    for lines in (bad + good, good + bad, extra + bad):
        assert _refused(open_note, f"{TEXT}\n{lines}", [verifier, other.verifier()]) == (
            "the signature of PeterNeumann does not verify")


# -- checkpoints -----------------------------------------------------------------------------

def test_a_checkpoint_text_is_origin_size_and_root_each_on_a_line() -> None:
    assert format_checkpoint(Checkpoint("example.com/log", 5, ROOT)) == f"example.com/log\n5\n{ROOT_B64}\n"
    assert format_checkpoint(Checkpoint("example.com/log", 5, ROOT, ("a", "b c"))) == (
        f"example.com/log\n5\n{ROOT_B64}\na\nb c\n")
    assert parse_checkpoint(f"example.com/log\n5\n{ROOT_B64}\na\nb c\n") == Checkpoint(
        "example.com/log", 5, ROOT, ("a", "b c"))
    lines = "a checkpoint has an origin, a tree size and a root hash, each on a line"
    for text in ("", "example.com/log\n", "example.com/log\n5\n", f"example.com/log\n5\n{ROOT_B64}",
                 f"example.com/log\n5\n{ROOT_B64}\nextension"):
        assert _refused(parse_checkpoint, text) == lines


@pytest.mark.parametrize("size", ["", "-1", "+1", "01", "00", "1.0", "1e3", " 1", "١", "0x10", "x" * 60])
def test_a_tree_size_that_is_not_a_plain_decimal_is_refused(size: str) -> None:
    assert _refused(parse_checkpoint, f"example.com/log\n{size}\n{ROOT_B64}\n") == (
        f"checkpoint tree size {size!r:.40} is not a decimal number")


def test_the_tree_size_may_reach_2_63_minus_1_and_not_beyond() -> None:
    assert MAX_TREE_SIZE == 2**63 - 1
    for size in (0, 1, 10**18, 2**63 - 1):
        assert parse_checkpoint(f"example.com/log\n{size}\n{ROOT_B64}\n").size == size
    beyond = ("checkpoint tree size {} is beyond 2**63-1 (what every tlog client holds in a signed "
              "64-bit integer)")
    for size in (2**63, 10**19, 10**30):
        assert _refused(parse_checkpoint, f"example.com/log\n{size}\n{ROOT_B64}\n") == beyond.format(size)
    huge = "9" * 5000  # longer than Python converts to an int: refused by its length first
    assert _refused(parse_checkpoint, f"example.com/log\n{huge}\n{ROOT_B64}\n") == beyond.format(huge[:40])


def test_a_root_hash_must_be_32_bytes_of_canonical_base64() -> None:
    for root in (bytes(31), bytes(33), b""):
        assert _refused(parse_checkpoint, f"o\n1\n{base64.b64encode(root).decode()}\n") == (
            "the checkpoint's root hash is not 32 bytes")
    assert _refused(parse_checkpoint, "o\n1\n!\n") == "the checkpoint's root hash is not valid base64"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    stray = ROOT_B64[:-2] + alphabet[alphabet.index(ROOT_B64[-2]) | 1] + "="  # the same bytes, a stray bit
    assert base64.b64decode(stray) == ROOT
    assert _refused(parse_checkpoint, f"o\n1\n{stray}\n") == (
        "the checkpoint's root hash is not canonical base64 (RFC 4648 §4: padded, no stray bits)")


def test_an_origin_must_be_one_non_empty_line() -> None:
    for origin in ("", "a\x01b", "a\rb", "a\x1f"):
        assert _refused(format_checkpoint, Checkpoint(origin, 1, ROOT)) == (
            f"checkpoint origin {origin!r} must be one non-empty line")
    assert _refused(parse_checkpoint, f"\n1\n{ROOT_B64}\n") == (
        "checkpoint origin '' must be one non-empty line")
    long = "\x01" * 100
    assert _refused(format_checkpoint, Checkpoint(long, 1, ROOT)) == (
        f"checkpoint origin {repr(long)[:80]} must be one non-empty line")
    assert _refused(format_checkpoint, Checkpoint(None, 1, ROOT)) == (  # type: ignore[arg-type]
        "checkpoint origin None must be one non-empty line")
    # spaces and any printable character are the spec's to allow
    assert parse_checkpoint(format_checkpoint(Checkpoint("a log \x7f ü", 1, ROOT))).origin == "a log \x7f ü"


def test_an_extension_line_must_be_one_non_empty_line() -> None:
    rule = ("checkpoint extension line {} is empty (or not one line): extension lines must be non-empty "
            "(C2SP tlog-checkpoint)")
    assert _refused(format_checkpoint, Checkpoint("o", 1, ROOT, ("a", "b\nc"))) == rule.format(2)
    assert _refused(format_checkpoint, Checkpoint("o", 1, ROOT, ("",))) == rule.format(1)
    assert _refused(format_checkpoint, Checkpoint("o", 1, ROOT, ("a", "b", 3))) == rule.format(3)  # type: ignore[arg-type]
    assert _refused(parse_checkpoint, f"o\n1\n{ROOT_B64}\na\nb\n\n") == rule.format(3)


def test_a_checkpoint_opens_only_under_the_key_named_as_its_origin() -> None:
    log = generate_signer("example.com/log")
    witness = generate_signer("witness.example")
    other = generate_signer("other.example")
    text = format_checkpoint(Checkpoint("example.com/log", 3, ROOT))
    note = sign_note(text, witness) + sign_note(text, other).split("\n\n")[1]
    assert _refused(open_checkpoint, note, [witness.verifier(), other.verifier()]) == (
        "the checkpoint's origin 'example.com/log' is not the name of a key that signed it "
        "(witness.example, other.example): a log signs its checkpoints with the key named as its origin")
    both = note + sign_note(text, log).split("\n\n")[1]
    assert open_checkpoint(both, [witness.verifier(), log.verifier()]) == (
        Checkpoint("example.com/log", 3, ROOT))
    long = "o" * 100
    long_note = sign_note(format_checkpoint(Checkpoint(long, 3, ROOT)), witness)
    assert _refused(open_checkpoint, long_note, [witness.verifier()]).startswith(
        f"the checkpoint's origin {repr(long)[:80]} is not the name")
