"""Witness cosignatures (``krepis.tlog._cosig``) one rule at a time: the key format and the
cosignature's bytes as C2SP tlog-cosignature defines them (recomputed here from the spec with
the Ed25519 primitive itself), every refusal's exact text, the limits at their edges (the
timestamp, the quorum, a cosignature dated in the future)."""

from __future__ import annotations

import base64
import time
from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from krepis.tlog._cosig import (
    Cosignature,
    Cosigner,
    CosignerKey,
    cosignature_message,
    find_cosignatures,
    generate_cosigner,
    open_cosigned_checkpoint,
)
from krepis.tlog._note import Checkpoint, NoteError, format_checkpoint, generate_signer, sign_note

LOG = generate_signer("example.com/log")
TEXT = format_checkpoint(Checkpoint(LOG.name, 5, bytes(range(32))))
NOTE = sign_note(TEXT, LOG)
SEED = bytes(range(100, 132))
T = 1_700_000_000


def _refused(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(NoteError) as info:
        call(*args, **kwargs)
    return str(info.value)


def _public(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _spec_key_id(name: str, public: bytes) -> int:
    return int.from_bytes(sha256(name.encode() + b"\n\x04" + public).digest()[:4], "big")


def _witness(name: str = "witness.example/w1", seed: bytes = SEED) -> Cosigner:
    return Cosigner(name, _spec_key_id(name, _public(seed)), seed)


def _b64(kind: int, key: bytes) -> str:
    return base64.b64encode(bytes((kind,)) + key).decode()


def _line_bytes(line: str) -> bytes:
    return base64.b64decode(line.rstrip("\n").rsplit(" ", 1)[1])


# -- keys ------------------------------------------------------------------------------------

def test_a_cosigner_key_is_the_spec_s_type_4_key() -> None:
    w = _witness()
    public = _public(SEED)
    kid = _spec_key_id(w.name, public)
    vkey = f"{w.name}+{kid:08x}+{_b64(4, public)}"
    skey = f"PRIVATE+KEY+{w.name}+{kid:08x}+{_b64(4, SEED)}"
    assert str(w) == skey and str(w.verifier()) == vkey
    assert w.verifier() == CosignerKey(w.name, kid, public)
    assert Cosigner.parse(skey) == w and CosignerKey.parse(vkey) == w.verifier()
    assert CosignerKey.parse(f"  {vkey}\n") == w.verifier()
    assert CosignerKey.parse(vkey.replace(f"{kid:08x}", f"{kid:08X}")) == w.verifier()
    generated = generate_cosigner("w.example")
    assert generated.key_id == _spec_key_id("w.example", _public(generated.seed))
    assert generated.verifier().key_id == generated.key_id and Cosigner.parse(str(generated)) == generated


def test_a_cosignature_is_the_spec_s_bytes() -> None:
    w = _witness()
    line = w.cosign(TEXT, T)
    message = f"cosignature/v1\ntime {T}\n{TEXT}".encode()
    assert cosignature_message(TEXT, T) == message
    signature = Ed25519PrivateKey.from_private_bytes(SEED).sign(message)
    raw = w.key_id.to_bytes(4, "big") + T.to_bytes(8, "big") + signature
    assert line == f"— {w.name} {base64.b64encode(raw).decode()}\n"
    assert w.verifier().timestamp(TEXT, raw[4:]) == T
    for stamp in (0, 2**63 - 1):
        assert w.verifier().timestamp(TEXT, _line_bytes(w.cosign(TEXT, stamp))[4:]) == stamp


def test_a_timestamp_is_the_signed_one_or_none() -> None:
    key = _witness().verifier()
    raw = _line_bytes(_witness().cosign(TEXT, T))[4:]
    assert key.timestamp(TEXT, raw) == T
    assert key.timestamp(TEXT, raw[:-1]) is None and key.timestamp(TEXT, raw + b"\0") is None
    assert key.timestamp(TEXT, (T + 1).to_bytes(8, "big") + raw[8:]) is None  # the time is signed
    assert key.timestamp(TEXT.replace("5", "6"), raw) is None
    bad = bytearray(raw)
    bad[-1] ^= 1
    assert key.timestamp(TEXT, bytes(bad)) is None
    assert generate_cosigner("w.example").verifier().timestamp(TEXT, raw) is None


def test_a_timestamp_beyond_2_63_minus_1_is_no_cosignature_even_signed() -> None:
    """Signed by the key (with the primitive itself), over a time that does not fit a signed
    64-bit integer: not a valid cosignature."""
    key = _witness().verifier()
    private = Ed25519PrivateKey.from_private_bytes(SEED)
    for stamp, valid in ((2**63 - 1, True), (2**63, False), (2**64 - 1, False)):
        sig = private.sign(cosignature_message(TEXT, stamp))
        assert key.timestamp(TEXT, stamp.to_bytes(8, "big") + sig) == (stamp if valid else None)


@pytest.mark.parametrize("stamp", [-1, 2**63, 1.0, True, "1", None])
def test_cosign_refuses_a_timestamp_out_of_range(stamp: object) -> None:
    assert _refused(_witness().cosign, TEXT, stamp) == (
        f"a cosignature's timestamp must be in 0 … 2**63-1, got {stamp!r}")
    long = 10**60
    assert _refused(_witness().cosign, TEXT, long) == (
        f"a cosignature's timestamp must be in 0 … 2**63-1, got {repr(long)[:40]}")


def test_witness_keys_of_the_wrong_form_are_refused_saying_which_rule() -> None:
    w = _witness()
    vkey, skey = str(w.verifier()), str(w)
    name, hex_id, b64 = vkey.split("+", 2)
    public = _public(SEED)
    assert _refused(CosignerKey.parse, f"{name}+{hex_id}") == "a witness key is <name>+<key ID>+<base64 key>"
    assert _refused(CosignerKey.parse, "") == "a witness key is <name>+<key ID>+<base64 key>"
    assert _refused(CosignerKey.parse, vkey + "=") == (
        "the witness key is not canonical base64 (RFC 4648 §4: padded, no stray bits)")
    log_key = f"{name}+{hex_id}+{_b64(1, public)}"
    assert _refused(CosignerKey.parse, log_key) == (
        "the witness key is a log's signature key (type 0x01), not a witness's cosignature key (type 0x04): "
        "make witness keys with krepis keygen --witness")
    assert _refused(CosignerKey.parse, str(LOG.verifier())) == (
        "the witness key is a log's signature key (type 0x01), not a witness's cosignature key (type 0x04): "
        "make witness keys with krepis keygen --witness")
    for raw in (b"\x02" + public, b"\x04" + public[:31], b"\x04" + public + b"\0", b"\x01" + public[:31],
                b"\x04"):
        key = f"{name}+{hex_id}+{base64.b64encode(raw).decode()}"
        assert _refused(CosignerKey.parse, key) == (
            "the witness key is not an Ed25519 cosignature key (type 0x04, 32 bytes)")
    wrong = f"{int(hex_id, 16) ^ 1:08x}"
    assert _refused(CosignerKey.parse, f"{name}+{wrong}+{b64}") == (
        f"the witness key's ID '{wrong}' does not match its name and key")
    assert _refused(CosignerKey.parse, f"other.example+{hex_id}+{b64}") == (
        f"the witness key's ID '{hex_id}' does not match its name and key")
    assert _refused(CosignerKey.parse, f"{name}+{'f' * 30}+{b64}") == (
        f"the witness key's ID {repr('f' * 30)[:20]} does not match its name and key")
    assert _refused(CosignerKey.parse, f"a b+{hex_id}+{b64}") == (
        "key name 'a b' must be non-empty, without spaces or '+'")
    # the signer key
    form = "a witness signer key is PRIVATE+KEY+<name>+<key ID>+<base64 key>"
    assert _refused(Cosigner.parse, vkey) == form
    assert _refused(Cosigner.parse, skey.replace("PRIVATE+KEY", "PRIVATE+KAY")) == form
    assert _refused(Cosigner.parse, skey.replace("PRIVATE+KEY", "PUBLIC+KEY")) == form
    assert _refused(Cosigner.parse, "PRIVATE+KEY+a+b") == form
    assert _refused(Cosigner.parse, str(LOG)) == (
        "the witness signer key is a log's signature key (type 0x01), not a witness's cosignature key "
        "(type 0x04): make witness keys with krepis keygen --witness")
    assert _refused(Cosigner.parse, skey.replace(hex_id, wrong)) == (
        f"the witness signer key's ID '{wrong}' does not match its name and key")
    assert _refused(Cosigner.parse, skey.replace(hex_id, "f" * 30)) == (
        f"the witness signer key's ID {repr('f' * 30)[:20]} does not match its name and key")
    assert _refused(Cosigner.parse, skey.replace(name, "a b")) == (
        "key name 'a b' must be non-empty, without spaces or '+'")
    assert _refused(generate_cosigner, "") == "key name '' must be non-empty, without spaces or '+'"


def test_a_witness_signer_key_may_hold_a_plus_in_its_base64() -> None:
    seed = next(bytes([i]) * 32 for i in range(256)
                if "+" in base64.b64encode(b"\x04" + bytes([i]) * 32).decode())
    w = _witness("w.example", seed)
    assert "+" in str(w).split("+", 4)[4] and Cosigner.parse(str(w)) == w
    public = next(_public(bytes([i]) * 32) for i in range(256)
                  if "+" in base64.b64encode(b"\x04" + _public(bytes([i]) * 32)).decode())
    key = CosignerKey("w.example", _spec_key_id("w.example", public), public)
    assert CosignerKey.parse(str(key)) == key


# -- finding cosignatures --------------------------------------------------------------------

def test_find_keeps_the_first_valid_cosignature_of_each_known_key() -> None:
    w1, w2 = _witness("w1.example"), _witness("w2.example", bytes(32))
    other = generate_cosigner("other.example")
    note = (NOTE + w1.cosign(TEXT, T) + other.cosign(TEXT, T + 5) + w1.cosign(TEXT, T + 1)
            + w2.cosign(TEXT, T + 2))
    found = find_cosignatures(note, [w2.verifier(), w1.verifier()])
    assert [(c.witness, c.timestamp, c.line) for c in found] == [
        ("w1.example", T, w1.cosign(TEXT, T)), ("w2.example", T + 2, w2.cosign(TEXT, T + 2))]
    assert found[0] == Cosignature(w1.verifier(), T, w1.cosign(TEXT, T)) and found[0].key == w1.verifier()
    assert find_cosignatures(note, [str(w1.verifier())]) == found[:1]  # a key's text is a key
    assert find_cosignatures(NOTE, [w1.verifier()]) == []
    assert find_cosignatures(note, []) == []


def test_find_refuses_a_cosignature_of_a_known_key_that_does_not_verify() -> None:
    w = _witness()
    raw = bytearray(_line_bytes(w.cosign(TEXT, T)))
    raw[-1] ^= 1
    bad = f"— {w.name} {base64.b64encode(bytes(raw)).decode()}\n"
    for note in (NOTE + bad, NOTE + w.cosign(TEXT, T) + bad, NOTE + bad + w.cosign(TEXT, T)):
        assert _refused(find_cosignatures, note, [w.verifier()]) == (
            "the cosignature of witness witness.example/w1 does not verify")
    assert find_cosignatures(NOTE + bad, [generate_cosigner("other.example").verifier()]) == []
    # a log's signature line under a witness's name and ID does not verify as a cosignature
    forged = f"— {w.name} {base64.b64encode(w.key_id.to_bytes(4, 'big') + bytes(64)).decode()}\n"
    assert _refused(find_cosignatures, NOTE + forged, [w.verifier()]) == (
        "the cosignature of witness witness.example/w1 does not verify")


def test_a_witness_key_must_be_a_key_or_its_text() -> None:
    for bad, kind in ((3, "int"), (LOG.verifier(), "Verifier"), (None, "NoneType"), (b"k", "bytes")):
        assert _refused(find_cosignatures, NOTE, [bad]) == (  # type: ignore[list-item]
            f"a witness key must be a CosignerKey or its text, got {kind}")
    assert _refused(find_cosignatures, NOTE, ["not a key"]) == "a witness key is <name>+<key ID>+<base64 key>"


# -- accepting a cosigned checkpoint ---------------------------------------------------------

def test_a_quorum_of_distinct_known_witnesses_is_needed() -> None:
    w1, w2, w3 = (_witness(f"w{i}.example", bytes([i]) * 32) for i in (1, 2, 3))
    keys = [w1.verifier(), w2.verifier(), w3.verifier()]
    note = NOTE + w1.cosign(TEXT, T) + w3.cosign(TEXT, T + 3)
    cp = open_cosigned_checkpoint(note, [LOG.verifier()], keys, 2)
    assert cp.checkpoint == Checkpoint(LOG.name, 5, bytes(range(32)))
    assert [(c.witness, c.timestamp) for c in cp.cosignatures] == [("w1.example", T), ("w3.example", T + 3)]
    assert isinstance(cp.cosignatures, tuple)
    assert open_cosigned_checkpoint(note, [str(LOG.verifier())], [str(k) for k in keys], 1) == cp
    assert _refused(open_cosigned_checkpoint, note, [LOG.verifier()], keys) == (
        "the checkpoint of example.com/log (tree size 5) carries 2 valid cosignature(s) of the witnesses "
        "given, fewer than the quorum of 3 (missing: w2.example)")
    assert _refused(open_cosigned_checkpoint, NOTE, [LOG.verifier()], keys, 1) == (
        "the checkpoint of example.com/log (tree size 5) carries 0 valid cosignature(s) of the witnesses "
        "given, fewer than the quorum of 1 (missing: w1.example, w2.example, w3.example)")
    assert open_cosigned_checkpoint(note, [LOG.verifier()], keys[:1]).cosignatures[0].witness == "w1.example"


@pytest.mark.parametrize("quorum", [0, -1, 4, True, 1.0, "1"])
def test_a_quorum_must_be_one_to_the_number_of_witnesses(quorum: object) -> None:
    keys = [_witness(f"w{i}.example", bytes([i]) * 32).verifier() for i in (1, 2, 3)]
    assert _refused(open_cosigned_checkpoint, NOTE, [LOG.verifier()], keys, quorum) == (
        f"the quorum must be 1 … 3 (the number of witness keys given), got {quorum!r}")


def test_no_witness_at_all_is_refused_as_a_quorum_out_of_range() -> None:
    assert _refused(open_cosigned_checkpoint, NOTE, [LOG.verifier()], []) == (
        "the quorum must be 1 … 0 (the number of witness keys given), got 0")


def test_a_witness_given_twice_is_refused() -> None:
    w = _witness()
    note = NOTE + w.cosign(TEXT, T)
    for keys in ([w.verifier(), w.verifier()], [w.verifier(), str(w.verifier())]):
        assert _refused(open_cosigned_checkpoint, note, [LOG.verifier()], keys, 1) == (
            "a witness key is given twice: a quorum counts distinct witnesses")


def test_the_log_s_own_signature_is_needed() -> None:
    w = _witness()
    note = NOTE + w.cosign(TEXT, T)
    other = generate_signer("example.com/log")
    assert _refused(open_cosigned_checkpoint, note, [other.verifier()], [w.verifier()]) == (
        "the note carries no signature of a known key")


def test_a_cosignature_dated_in_the_future_is_refused_beyond_the_limit() -> None:
    w1, w2 = _witness("w1.example"), _witness("w2.example", bytes(32))
    now = int(time.time())
    ok = NOTE + w1.cosign(TEXT, now + 500) + w2.cosign(TEXT, T)
    both = open_cosigned_checkpoint(ok, [LOG.verifier()], [w1.verifier(), w2.verifier()])
    assert len(both.cosignatures) == 2
    ahead = now + 3600
    note = NOTE + w2.cosign(TEXT, T) + w1.cosign(TEXT, ahead)
    assert _refused(open_cosigned_checkpoint, note, [LOG.verifier()], [w1.verifier(), w2.verifier()], 1) == (
        f"the cosignature of witness w1.example is dated in the future (timestamp {ahead}, more than 600 s "
        "ahead)")
    assert _refused(open_cosigned_checkpoint, note, [LOG.verifier()], [w1.verifier()], max_future=1.5) == (
        f"the cosignature of witness w1.example is dated in the future (timestamp {ahead}, more than 1.5 s "
        "ahead)")
    cp = open_cosigned_checkpoint(note, [LOG.verifier()], [w1.verifier()], max_future=None)
    assert cp.cosignatures[0].timestamp == ahead
    assert open_cosigned_checkpoint(note, [LOG.verifier()], [w1.verifier()], max_future=7200).cosignatures
    far = NOTE + w1.cosign(TEXT, 2**63 - 1)
    assert open_cosigned_checkpoint(far, [LOG.verifier()], [w1.verifier()], max_future=None).cosignatures[
        0].timestamp == 2**63 - 1


def test_the_future_limit_is_measured_from_this_machine_s_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    w = _witness()
    note = NOTE + w.cosign(TEXT, 10_000)
    monkeypatch.setattr(time, "time", lambda: 10_000.0 - 600)
    # exactly 600 s ahead
    assert open_cosigned_checkpoint(note, [LOG.verifier()], [w.verifier()]).cosignatures
    monkeypatch.setattr(time, "time", lambda: 10_000.0 - 600.5)
    assert _refused(open_cosigned_checkpoint, note, [LOG.verifier()], [w.verifier()]) == (
        "the cosignature of witness witness.example/w1 is dated in the future (timestamp 10000, more than "
        "600 s ahead)")
