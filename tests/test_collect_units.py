"""Asking witnesses to cosign (``krepis.tlog._collect``), one answer at a time: a small HTTP
server in a thread plays a witness that answers what each test scripts (a cosignature, the
spec's 409 with the size it holds, a rollback, a conflict, garbage, silence), and every outcome
is checked to the text — the request bodies sent, the note returned, each witness's answer, the
quorum's refusal. The real witness is tested end to end in ``test_witness.py``."""

from __future__ import annotations

import base64
import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from krepis import JournalError, ValidationError
from krepis.tlog._collect import QuorumError, WitnessAnswer, WitnessEndpoint, collect_cosignatures
from krepis.tlog._cosig import Cosigner, generate_cosigner
from krepis.tlog._note import Checkpoint, NoteError, format_checkpoint, generate_signer, sign_note

LOG = generate_signer("example.com/log")
SIZE = 10
TEXT = format_checkpoint(Checkpoint(LOG.name, SIZE, bytes(range(32))))
NOTE = sign_note(TEXT, LOG)
W1, W2, W3 = (generate_cosigner(f"w{i}.example") for i in (1, 2, 3))
T = 1_700_000_000

Reply = tuple[int, str, bytes]


def _proof(old: int) -> list[bytes]:
    return [bytes([old]) * 32, bytes([old + 100]) * 32] if old else []


def _body(old: int) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in _proof(old))]
    return ("\n".join(lines) + "\n\n" + NOTE).encode()


def cosigned(witness: Cosigner, stamp: int = T) -> Reply:
    return 200, "text/plain; charset=utf-8", witness.cosign(TEXT, stamp).encode()


def size_409(held: int | str, ctype: str = "text/x.tlog.size") -> Reply:
    return 409, ctype, f"{held}\n".encode() if isinstance(held, int) else held.encode()


@dataclass
class Script:
    replies: list[Reply | Callable[[], Reply]]
    bodies: list[bytes] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


@contextlib.contextmanager
def witness_server(*replies: Reply | Callable[[], Reply]) -> Iterator[tuple[str, Script]]:
    """A server answering each POST with the next scripted reply; its URL (with a path prefix
    and a trailing slash) and the script, which records what was sent."""
    script = Script(list(replies))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            script.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            script.paths.append(self.path)
            reply = script.replies.pop(0)
            status, ctype, data = reply() if callable(reply) else reply
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w/", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def endpoint(label: str, url: str, witness: Cosigner) -> WitnessEndpoint:
    return WitnessEndpoint(label, url, witness.verifier())


def collect(witnesses: Sequence[WitnessEndpoint], **kwargs: object) -> tuple[str, list[WitnessAnswer]]:
    kwargs.setdefault("proof", _proof)
    return collect_cosignatures(NOTE, witnesses, **kwargs)  # type: ignore[arg-type]


def one_answer(*replies: Reply, guess: int = 0) -> tuple[WitnessAnswer, Script]:
    with witness_server(*replies) as (url, script):
        try:
            collect([endpoint("w1", url, W1)], guess=lambda _k: guess)
        except QuorumError as exc:
            return exc.answers[0], script
        raise AssertionError("cosigned")


# -- parsing NAME=URL:VKEY -------------------------------------------------------------------

def test_an_endpoint_is_name_url_and_key() -> None:
    key = W1.verifier()
    w = WitnessEndpoint.parse(f"w1=https://witness.example/w1:{key}")
    assert w == WitnessEndpoint("w1", "https://witness.example/w1", key)
    assert WitnessEndpoint.parse(f"a.b-c=http://127.0.0.1:8080/x:{key}").url == "http://127.0.0.1:8080/x"
    files = {"/keys/w1.vkey": str(key) + "\n"}
    assert WitnessEndpoint.parse("w1=http://h/p:/keys/w1.vkey", files.__getitem__).key == key


@pytest.mark.parametrize("spec", [
    "w1", "w1=", "=http://h:{key}", "w 1=http://h:{key}", "w+1=http://h:{key}", "w1:http://h:{key}",
    "w1=ftp://h:{key}", "w1=http:///path:{key}", "w1=h:{key}", "w1=https://:{key}", "w1=http://h",
])
def test_a_malformed_endpoint_is_refused_with_the_form(spec: str) -> None:
    spec = spec.format(key=W1.verifier())
    with pytest.raises(ValidationError) as info:
        WitnessEndpoint.parse(spec)
    assert str(info.value) == (f"{spec!r} is not NAME=URL:VKEY (e.g. "
                               "w1=https://witness.example/w1:witness.example/w1+1234abcd+BA…)")


def test_a_long_malformed_endpoint_is_shown_cut() -> None:
    spec = "x" * 500
    with pytest.raises(ValidationError) as info:
        WitnessEndpoint.parse(spec)
    assert str(info.value).startswith(f"{'x' * 200!r} is not NAME=URL:VKEY")


def test_a_bad_key_is_refused_naming_the_witness() -> None:
    for key, reason in ((str(LOG.verifier()), "the witness key is a log's signature key (type 0x01)"),
                        ("nonsense", "a witness key is <name>+<key ID>+<base64 key>")):
        with pytest.raises(ValidationError) as info:
            WitnessEndpoint.parse(f"w7=http://h/p:{key}")
        assert str(info.value).startswith(f"witness w7: {reason}")
        assert not isinstance(info.value, NoteError)


# -- one witness's answers -------------------------------------------------------------------

def test_a_cosignature_is_collected_and_appended() -> None:
    with witness_server(cosigned(W1)) as (url, script):
        note, answers = collect([endpoint("w1", url, W1)])
    assert note == NOTE + W1.cosign(TEXT, T)
    assert [(a.witness.label, a.cosignature and a.cosignature.timestamp, a.error) for a in answers] == [
        ("w1", T, None)]
    assert script.paths == ["/w/add-checkpoint"] and script.bodies == [_body(0)]


def test_the_guess_is_sent_with_its_proof_when_it_fits_the_tree() -> None:
    asked: list[object] = []

    def guess(key: object) -> int:
        asked.append(key)
        return 7

    with witness_server(cosigned(W1)) as (url, script):
        collect([endpoint("w1", url, W1)], guess=guess)
    assert asked == [W1.verifier()] and script.bodies == [_body(7)]
    for bad in (-1, SIZE + 1):  # a guess the tree cannot have: from 0
        with witness_server(cosigned(W1)) as (url, script):
            collect([endpoint("w1", url, W1)], guess=lambda _k, bad=bad: bad)
        assert script.bodies == [_body(0)]
    with witness_server(cosigned(W1)) as (url, script):
        collect([endpoint("w1", url, W1)], guess=lambda _k: SIZE)
    assert script.bodies == [_body(SIZE)]


def test_a_409_naming_the_size_held_is_answered_once_with_a_proof_from_there() -> None:
    with witness_server(size_409(4), cosigned(W1)) as (url, script):
        note, _ = collect([endpoint("w1", url, W1)])
    assert note == NOTE + W1.cosign(TEXT, T) and script.bodies == [_body(0), _body(4)]
    for ctype in ("text/x.tlog.size; charset=utf-8", "text/x.tlog.size ;x=y"):
        with witness_server(size_409(4, ctype), cosigned(W1)) as (url, script):
            collect([endpoint("w1", url, W1)])
        assert script.bodies == [_body(0), _body(4)]
    with witness_server(size_409(0), cosigned(W1)) as (url, script):  # the guess was wrong the other way
        collect([endpoint("w1", url, W1)], guess=lambda _k: 3)
    assert script.bodies == [_body(3), _body(0)]
    with witness_server(size_409(SIZE), cosigned(W1)) as (url, script):  # it holds this very size
        collect([endpoint("w1", url, W1)])
    assert script.bodies == [_body(0), _body(SIZE)]


def test_a_409_for_the_size_just_sent_is_a_conflict() -> None:
    answer, script = one_answer(size_409(4), size_409(4))
    assert answer.error == ("409: it holds a checkpoint of tree size 4 with another root than this log's: "
                            "the log's history is not the one it saw")
    assert len(script.bodies) == 2
    answer, script = one_answer(size_409(0))
    assert answer.error == ("409: it holds a checkpoint of tree size 0 with another root than this log's: "
                            "the log's history is not the one it saw") and len(script.bodies) == 1
    # sizes already tried are not tried again: 0 → 4 → 0 is a conflict, not a loop
    answer, script = one_answer(size_409(4), size_409(0))
    assert answer.error is not None and answer.error.startswith("409: it holds a checkpoint of tree size 0")
    assert script.bodies == [_body(0), _body(4)]


def test_a_409_naming_a_bigger_tree_says_the_log_went_back() -> None:
    for held in (SIZE + 1, 10**18):
        answer, _ = one_answer(size_409(held))
        assert answer.error == (f"it cosigned a tree of {held} leaves, bigger than this one ({SIZE}): the "
                                "log was rolled back, or is another history of its origin")


@pytest.mark.parametrize(("reply", "said"), [
    (size_409("4"), "409: 4"),                            # no newline
    (size_409("04\n"), "409: 04"),                        # not the canonical decimal
    (size_409("4\n\n"), "409: 4"),
    (size_409(" 4\n"), "409: 4"),
    (size_409("-1\n"), "409: -1"),
    (size_409("1" * 20 + "\n"), "409: " + "1" * 20),      # beyond 2**63-1 in digits
    (size_409(4, "text/plain"), "409: 4"),                # not the spec's content type
    (size_409(4, "text/x.tlog.sizes"), "409: 4"),
    ((403, "text/plain", b"  unknown log \n"), "403: unknown log"),
    ((500, "text/plain", b"x" * 1000), "500: " + "x" * 300),
    ((422, "text/plain", b"\xff bad\n"), "422: \ufffd bad"),
    ((404, "text/plain", b""), "404: "),
])
def test_any_other_answer_is_named_with_its_status_and_text(reply: Reply, said: str) -> None:
    answer, script = one_answer(reply)
    assert answer.error == said and answer.cosignature is None and len(script.bodies) == 1


def test_the_largest_size_a_409_may_name_is_nineteen_digits() -> None:
    held = 10**18
    assert len(str(held)) == 19
    answer, _ = one_answer(size_409(held))
    assert answer.error is not None and answer.error.startswith(f"it cosigned a tree of {held} leaves")


NOT_LINES = "200, but the answer is not note signature lines"


@pytest.mark.parametrize(("reply", "said"), [
    ((200, "text/plain", b""), NOT_LINES),
    ((200, "text/plain", b"hello\n"), NOT_LINES),
    ((200, "text/plain", W1.cosign(TEXT, T).rstrip("\n").encode()), NOT_LINES),
    ((200, "text/plain", W1.cosign(TEXT, T).encode() + b"x\n"), NOT_LINES),
    ((200, "text/plain", b"\n" + W1.cosign(TEXT, T).encode()), NOT_LINES),
    ((200, "text/plain", b"- " + W1.cosign(TEXT, T).encode()[4:]), NOT_LINES),
    ((200, "text/plain", b"\xe2\x80\x94 w1.example AAAA\n"), "200, but a signature is too short"),
    ((200, "text/plain", W2.cosign(TEXT, T).encode()),
     "200, but without a cosignature of its key w1.example"),
    ((200, "text/plain", W1.cosign(TEXT.replace("10", "11"), T).encode()),
     "200, but the cosignature of witness w1.example does not verify"),
])
def test_a_200_must_carry_a_valid_cosignature_of_the_witness_s_key(reply: Reply, said: str) -> None:
    answer, _ = one_answer(reply)
    assert answer.error == said and answer.cosignature is None


def test_a_200_may_carry_other_signature_lines_beside_the_cosignature() -> None:
    both = W2.cosign(TEXT, T) + W1.cosign(TEXT, T + 1)
    with witness_server((200, "text/plain", both.encode())) as (url, _):
        note, answers = collect([endpoint("w1", url, W1)])
    assert note == NOTE + W1.cosign(TEXT, T + 1) and answers[0].cosignature is not None


def test_a_witness_that_cannot_be_reached_is_named_with_the_reason() -> None:
    with witness_server() as (url, _):
        pass  # (closed: nothing listens there any more)
    answer, _ = one_answer_at(url)
    assert answer.error is not None and answer.error.startswith(f"POST {url.rstrip('/')}/add-checkpoint: ")


def one_answer_at(url: str) -> tuple[WitnessAnswer, None]:
    with pytest.raises(QuorumError) as info:
        collect([endpoint("w1", url, W1)])
    return info.value.answers[0], None


# -- many witnesses, the quorum, the deadline ------------------------------------------------

def test_the_note_carries_the_cosignatures_in_the_order_the_witnesses_are_given() -> None:
    with witness_server(cosigned(W1, T + 1)) as (u1, _), witness_server(size_409(20)) as (u2, _), \
            witness_server(cosigned(W3, T + 3)) as (u3, _):
        witnesses = [endpoint("first", u3, W3), endpoint("second", u2, W2), endpoint("third", u1, W1)]
        note, answers = collect(witnesses, quorum=2)
    assert note == NOTE + W3.cosign(TEXT, T + 3) + W1.cosign(TEXT, T + 1)
    assert [a.witness.label for a in answers] == ["first", "second", "third"]
    assert [a.error is None for a in answers] == [True, False, True]


def test_fewer_cosignatures_than_the_quorum_raise_naming_every_failure() -> None:
    with witness_server(cosigned(W1)) as (u1, _), witness_server(size_409(20)) as (u2, _), \
            witness_server((403, "text/plain", b"no")) as (u3, _):
        witnesses = [endpoint("a", u1, W1), endpoint("b", u2, W2), endpoint("c", u3, W3)]
        with pytest.raises(QuorumError) as info:
            collect(witnesses, quorum=2)
    err = info.value
    assert isinstance(err, JournalError)
    assert err.summary == ("1 of 3 witness(es) cosigned the checkpoint of tree size 10, fewer than the "
                           "quorum of 2")
    assert str(err) == (f"{err.summary} — b: it cosigned a tree of 20 leaves, bigger than this one (10): the "
                        "log was rolled back, or is another history of its origin; c: 403: no")
    assert [a.witness.label for a in err.answers] == ["a", "b", "c"] and isinstance(err.answers, list)
    with witness_server(cosigned(W1)) as (u1, _), witness_server(cosigned(W2)) as (u2, _), \
            witness_server((403, "text/plain", b"no")) as (u3, _):
        with pytest.raises(QuorumError, match="2 of 3 witness"):  # default quorum: all
            collect([endpoint("a", u1, W1), endpoint("b", u2, W2), endpoint("c", u3, W3)])


def test_what_collect_refuses_before_asking_anyone() -> None:
    w1 = endpoint("a", "http://127.0.0.1:9/", W1)
    cases: list[tuple[dict[str, object], str]] = [
        ({"witnesses": []}, "no witness given"),
        ({"witnesses": [w1, endpoint("b", "http://127.0.0.1:9/", W1)]},
         "a witness key is given twice: a quorum counts distinct witnesses"),
        ({"witnesses": [w1], "quorum": 0}, "the quorum must be 1 … 1 (the number of witnesses), got 0"),
        ({"witnesses": [w1], "quorum": 2}, "the quorum must be 1 … 1 (the number of witnesses), got 2"),
        ({"witnesses": [w1], "quorum": True}, "the quorum must be 1 … 1 (the number of witnesses), got True"),
        ({"witnesses": [w1], "quorum": 1.0}, "the quorum must be 1 … 1 (the number of witnesses), got 1.0"),
        ({"witnesses": [w1], "timeout": 0}, "the timeout must be > 0 seconds, got 0"),
        ({"witnesses": [w1], "timeout": -1.0}, "the timeout must be > 0 seconds, got -1.0"),
        ({"witnesses": [w1], "timeout": float("nan")}, "the timeout must be > 0 seconds, got nan"),
    ]
    for kwargs, message in cases:
        witnesses = kwargs.pop("witnesses")
        with pytest.raises(ValidationError) as info:
            collect(witnesses, **kwargs)  # type: ignore[arg-type]
        assert str(info.value) == message
    with pytest.raises(NoteError, match="not a signed note"):
        collect_cosignatures(TEXT, [w1], proof=_proof)


def test_a_proof_that_cannot_be_made_is_that_witness_s_answer() -> None:
    def proof(old: int) -> list[bytes]:
        raise ValidationError(f"entries 0…{old} are archived")

    def broken(old: int) -> list[bytes]:
        raise RuntimeError(f"no proof from {old}")

    with witness_server() as (url, script):
        with pytest.raises(QuorumError) as info:
            collect([endpoint("w1", url, W1)], proof=proof)
        assert info.value.answers[0].error == "entries 0…0 are archived"  # a krepis error says itself
        with pytest.raises(QuorumError) as info:
            collect([endpoint("w1", url, W1)], proof=broken)
        assert info.value.answers[0].error == "RuntimeError: no proof from 0"  # any other names its kind
    assert script.bodies == []


def test_the_proofs_are_made_one_at_a_time() -> None:
    inside = 0
    most = 0
    lock = threading.Lock()

    def proof(old: int) -> list[bytes]:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)
        with lock:
            inside -= 1
        return _proof(old)

    with witness_server(cosigned(W1)) as (u1, _), witness_server(cosigned(W2)) as (u2, _), \
            witness_server(cosigned(W3)) as (u3, _):
        collect([endpoint("a", u1, W1), endpoint("b", u2, W2), endpoint("c", u3, W3)], proof=proof)
    assert most == 1


def test_a_witness_that_does_not_answer_in_time_is_given_up_at_the_deadline() -> None:
    release = threading.Event()

    def slow() -> Reply:
        release.wait(30)
        return cosigned(W2)

    try:
        with witness_server(cosigned(W1)) as (u1, _), witness_server(slow) as (u2, _):
            started = time.monotonic()
            note, answers = collect([endpoint("a", u1, W1), endpoint("b", u2, W2)], quorum=1, timeout=0.5)
            assert time.monotonic() - started < 20
            release.set()
    finally:
        release.set()
    assert note == NOTE + W1.cosign(TEXT, T)
    assert answers[1].error is not None and "no whole answer within 0.5 s" in answers[1].error


def test_a_witness_whose_proof_hangs_is_no_answer_in_time_and_does_not_hold_the_caller() -> None:
    release = threading.Event()

    def proof(old: int) -> list[bytes]:
        release.wait(30)
        return _proof(old)

    try:
        with witness_server(cosigned(W1)) as (url, _):
            started = time.monotonic()
            with pytest.raises(QuorumError) as info:
                collect([endpoint("w1", url, W1)], proof=proof, timeout=0.2)
            assert time.monotonic() - started < 20
    finally:
        release.set()
    assert info.value.answers[0].error == "no answer in time"


def test_a_proof_that_ends_past_the_deadline_is_not_sent() -> None:
    """The time left is counted after the proof is made: a request sent once the deadline has
    passed would hold the witness (and its answer would arrive after the caller gave up)."""
    def proof(old: int) -> list[bytes]:
        time.sleep(0.4)
        return _proof(old)

    with witness_server(cosigned(W1)) as (url, script):
        with pytest.raises(QuorumError) as info:
            collect([endpoint("w1", url, W1)], proof=proof, timeout=0.2)
    assert info.value.answers[0].error == "no answer in time" and script.bodies == []


def test_a_deadline_already_past_asks_no_one() -> None:
    with witness_server(cosigned(W1)) as (url, script):
        with pytest.raises(QuorumError) as info:
            collect([endpoint("w1", url, W1)], timeout=1e-9)
    assert info.value.answers[0].error == "no answer in time" and script.bodies == []


# -- what the run of tlog/_collect's mutants found untested --------------------------------------

def test_a_url_may_hold_an_equals_sign() -> None:
    key = W1.verifier()
    w = WitnessEndpoint.parse(f"w1=https://witness.example/add?log=a=b:{key}")
    assert w == WitnessEndpoint("w1", "https://witness.example/add?log=a=b", key)


def test_an_answer_over_64_kib_is_refused_unread() -> None:
    big = (200, "text/plain", b"x" * (64 * 1024 + 1))
    with witness_server(big) as (url, _):
        answer, _ = one_answer_at(url)
    assert answer.error == (f"POST {url.rstrip('/')}/add-checkpoint: the answer is 65537 bytes, more than "
                            "the 65536 read")


def test_the_default_timeout_is_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import krepis.tlog._collect as collect_module

    clock = iter([0.0])  # the deadline is set at 0; when the witness is asked, it is 9.5

    def monotonic() -> float:
        return next(clock, 9.5)

    monkeypatch.setattr(collect_module, "time", types.SimpleNamespace(monotonic=monotonic))
    release = threading.Event()

    def slow() -> Reply:
        release.wait(30)
        return cosigned(W1)

    try:
        with witness_server(slow) as (url, _):
            with pytest.raises(QuorumError) as info:
                collect_cosignatures(NOTE, [endpoint("w1", url, W1)], proof=_proof)
            release.set()
    finally:
        release.set()
    assert info.value.answers[0].error == (f"POST {url.rstrip('/')}/add-checkpoint: no whole answer within "
                                           "0.5 s")


def test_every_witness_is_asked_at_once_in_threads_named_for_it() -> None:
    import os

    n = min(32, (os.cpu_count() or 1) + 4) + 1  # one more than a thread pool's default size
    cosigners = [generate_cosigner(f"v{i}.example") for i in range(n)]
    barrier = threading.Barrier(n, timeout=5)
    names: list[str] = []

    def together(c: Cosigner) -> Callable[[], Reply]:
        def reply() -> Reply:
            barrier.wait()  # answers only once every witness has been asked
            return cosigned(c)
        return reply

    def proof(old: int) -> list[bytes]:
        names.append(threading.current_thread().name)
        return _proof(old)

    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(witness_server(together(c)))[0] for c in cosigners]
        witnesses = [endpoint(f"v{i}", u, c) for i, (u, c) in enumerate(zip(urls, cosigners, strict=True))]
        note, answers = collect(witnesses, proof=proof)
    assert [a.error for a in answers] == [None] * n
    assert note == NOTE + "".join(c.cosign(TEXT, T) for c in cosigners)
    assert len(names) == n and all(name.startswith("krepis-witness_") for name in names)


def test_a_deadline_reached_exactly_asks_no_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import krepis.tlog._collect as collect_module

    clock = iter([0.0])  # the deadline is set at 0; the witness would be asked at 10.0: none left

    def monotonic() -> float:
        return next(clock, 10.0)

    monkeypatch.setattr(collect_module, "time", types.SimpleNamespace(monotonic=monotonic))
    with witness_server(cosigned(W1)) as (url, script):
        with pytest.raises(QuorumError) as info:
            collect_cosignatures(NOTE, [endpoint("w1", url, W1)], proof=_proof, timeout=10.0)
    assert info.value.answers[0].error == "no answer in time" and script.bodies == []
