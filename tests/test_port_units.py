"""``storage/_port``: the rules every engine applies (settings, checkpoints, removing an archived
prefix), the engine-independent half of ``verify`` (``LogAudit``) and ``Query.matches`` — each
rule at its bounds and each refusal word for word. The engines' use of them is checked by the
shared conformance suite (``tests/storage_conformance.py``)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from krepis import CorruptStorageError, InvalidTypeError, LogStatus, TransactionLog, ValidationError
from krepis.storage._port import (
    MAX_SETTING_BYTES,
    SETTINGS,
    LogAudit,
    Query,
    VerifyReport,
    check_checkpoint,
    check_drop_prefix,
    check_setting,
    decode_setting,
)
from krepis.tlog._merkle import append_leaf, leaf_hash, root_from_frontier

W = "the store at /s"


def _tree(count: int) -> tuple[list[bytes], dict[tuple[int, int], bytes], list[bytes]]:
    """A reference tree of ``count`` entries: its frontier, its tile-height nodes, the data."""
    frontier: list[bytes] = []
    nodes: dict[tuple[int, int], bytes] = {}
    data = [f"entry {i}".encode() for i in range(count)]
    size = 0
    for d in data:
        size = append_leaf(frontier, size, leaf_hash(d),
                           lambda level, i, node: nodes.__setitem__((level, i), node))
    return frontier, nodes, data


def _source(nodes: dict[tuple[int, int], bytes]) -> Callable[[int, int], bytes | None]:
    return lambda level, index: nodes.get((level, index))


def _refused(call: object, kind: type[Exception] = CorruptStorageError) -> str:
    with pytest.raises(kind) as caught:
        call()  # type: ignore[operator]
    assert type(caught.value) is kind
    if kind is CorruptStorageError:
        assert caught.value.path == "/s"  # type: ignore[attr-defined]
    return str(caught.value)


# -- LogAudit --------------------------------------------------------------------------------

def test_an_audit_of_a_sound_log_reports_it() -> None:
    frontier, nodes, data = _tree(3)
    audit = LogAudit(W, "/s", 5, _source(nodes))
    assert audit.expected == 5
    for i, d in enumerate(data):
        audit.add(5 + i, d)
    assert audit.expected == 8
    assert audit.finish(8, frontier, 0) == VerifyReport(3, 3, root_from_frontier(frontier), 0)
    audit = LogAudit(W, "/s", 5, _source(nodes), None)  # no archived prefix: the same start
    assert audit.expected == 5


def test_an_audit_of_a_log_of_whole_tiles_counts_its_nodes() -> None:
    frontier, nodes, data = _tree(512)
    audit = LogAudit(W, "/s", 0, _source(nodes))
    for i, d in enumerate(data):
        audit.add(i, d)
    assert audit.finish(512, frontier, 2) == VerifyReport(512, 512, root_from_frontier(frontier), 2)
    audit = LogAudit(W, "/s", 0, _source(nodes))
    for i, d in enumerate(data):
        audit.add(i, d)
    assert _refused(lambda: audit.finish(512, frontier, 3)) == (
        f"{W}: the tree holds 3 subtree hashes; the entries make 2")


def test_an_audit_resumes_after_an_archived_prefix() -> None:
    frontier, nodes, data = _tree(300)
    audit = LogAudit(W, "/s", 10, _source(nodes), 266)  # entries 10…265 archived: one whole tile
    assert audit.expected == 266
    for i, d in enumerate(data[256:]):
        audit.add(266 + i, d)
    # entries counts the live ones; the tree's size is the whole log's
    assert audit.finish(310, frontier, 1) == VerifyReport(44, 300, root_from_frontier(frontier), 1)
    # a live mark at the log's first seq: nothing archived, nothing resumed
    audit = LogAudit(W, "/s", 10, _source({}), 10)
    assert audit.expected == 10
    audit.add(10, data[0])


def test_an_audit_that_cannot_resume_names_why() -> None:
    _frontier, nodes, _data = _tree(256)
    assert _refused(lambda: LogAudit(W, "/s", 10, _source(nodes), 20)) == (
        f"{W}: a tree can resume only after whole tiles of leaves, not after 10")
    assert _refused(lambda: LogAudit(W, "/s", 10, _source({}), 266)) == (
        f"{W}: the stored Merkle hash of entries 10…265 (height 8) is missing")


def test_an_audit_names_an_entry_missing_or_out_of_place() -> None:
    _frontier, _nodes, data = _tree(3)
    audit = LogAudit(W, "/s", 5, _source({}))
    starts = "(the log starts at seq 5)"
    assert _refused(lambda: audit.add(6, data[1])) == f"{W}: entry 5 is missing {starts}"
    assert _refused(lambda: audit.add(4, data[0])) == f"{W}: entry 4 precedes the log {starts}"
    audit.add(5, data[0])
    assert _refused(lambda: audit.add(5, data[0])) == f"{W}: entry 5 precedes the log {starts}"
    assert _refused(lambda: audit.add(7, data[2])) == f"{W}: entry 6 is missing {starts}"
    assert audit.expected == 6  # a refused entry does not count


def test_an_audit_names_a_stored_node_or_head_that_does_not_match() -> None:
    frontier, nodes, data = _tree(256)
    wrong = {key: b"\x00" * 32 for key in nodes}
    audit = LogAudit(W, "/s", 5, _source(wrong))
    for i, d in enumerate(data[:255]):
        audit.add(5 + i, d)
    assert _refused(lambda: audit.add(260, data[255])) == (
        f"{W}: the stored Merkle hash of entries 5…260 (height 8) does not match the entries")
    assert audit.expected == 260
    audit = LogAudit(W, "/s", 0, _source(nodes))
    for i, d in enumerate(data):
        audit.add(i, d)
    assert _refused(lambda: audit.finish(257, frontier, 1)) == (
        f"{W}: the entries end before seq 256; the sequence record says 257")
    assert _refused(lambda: audit.finish(256, [b"\x01" * 32], 1)) == (
        f"{W}: the stored tree head does not match entries 0…255")


# -- check_drop_prefix -----------------------------------------------------------------------

def test_removing_a_prefix_of_another_log_or_past_the_end_is_refused() -> None:
    check_drop_prefix("/s", 2, 10, 2, 10)  # up to the log's end: allowed
    check_drop_prefix("/s", 2, 0, 2, 10)
    assert _refused(lambda: check_drop_prefix("/s", 1, 5, 2, 10), ValidationError) == (
        "the journal at /s was cleared (log 1 ended, log 2 began); nothing was removed")
    assert _refused(lambda: check_drop_prefix("/s", 3, 5, 2, 10), ValidationError) == (
        "the journal at /s was cleared (log 3 ended, log 2 began); nothing was removed")
    assert _refused(lambda: check_drop_prefix("/s", 2, 11, 2, 10), ValidationError) == (
        "cannot remove entries up to seq 11: the journal at /s ends before seq 10")


# -- settings --------------------------------------------------------------------------------

def test_the_settings_and_their_limit() -> None:
    assert SETTINGS == ("archive",) and MAX_SETTING_BYTES == 4096


def test_a_setting_is_checked_and_returned_as_utf8() -> None:
    assert check_setting("archive") is None
    assert check_setting("archive", None) is None
    assert check_setting("archive", "/a") == b"/a"
    assert check_setting("archive", "é" * 2048) == "é".encode() * 2048  # 4,096 bytes: the limit
    assert check_setting("archive", "a" * 4096) == b"a" * 4096


@pytest.mark.parametrize(("name", "value", "kind", "message"), [
    (5, None, InvalidTypeError, "a setting's name must be a str, got int"),
    (b"archive", "/a", InvalidTypeError, "a setting's name must be a str, got bytes"),
    ("format", None, ValidationError, "'format' is not a setting a store keeps; the settings are: archive"),
    ("x" * 100, "/a", ValidationError,
     "'" + "x" * 79 + " is not a setting a store keeps; the settings are: archive"),
    ("archive", b"/a", InvalidTypeError, "setting 'archive' must be a str or None, got bytes"),
    ("archive", 0, InvalidTypeError, "setting 'archive' must be a str or None, got int"),
    ("archive", "a\ud800", ValidationError,
     "setting 'archive' must be valid Unicode text (it holds a lone surrogate)"),
    ("archive", "", ValidationError,
     "setting 'archive' must be 1 … 4096 bytes of UTF-8 without NUL, got 0 bytes"),
    ("archive", "a\0", ValidationError,
     "setting 'archive' must be 1 … 4096 bytes of UTF-8 without NUL, got 2 bytes with a NUL"),
    ("archive", "\0", ValidationError,
     "setting 'archive' must be 1 … 4096 bytes of UTF-8 without NUL, got 1 bytes with a NUL"),
    ("archive", "a" * 4097, ValidationError,
     "setting 'archive' must be 1 … 4096 bytes of UTF-8 without NUL, got 4097 bytes"),
    ("archive", "é" * 2048 + "a", ValidationError,
     "setting 'archive' must be 1 … 4096 bytes of UTF-8 without NUL, got 4097 bytes"),
])
def test_a_bad_setting_is_refused_naming_the_rule(name: object, value: object, kind: type[Exception],
                                                  message: str) -> None:
    assert _refused(lambda: check_setting(name, value), kind) == message


def test_a_stored_setting_is_decoded_or_named_malformed() -> None:
    assert decode_setting(b"/a", "archive", "/s", W) == "/a"
    assert decode_setting(memoryview(b"/a\xc3\xa9"), "archive", "/s", W) == "/aé"  # LMDB hands out buffers
    assert _refused(lambda: decode_setting(b"\xff", "archive", "/s", W)) == (
        f"{W}: the setting 'archive' is malformed ('utf-8' codec can't decode byte 0xff in position 0: "
        "invalid start byte)")
    assert _refused(lambda: decode_setting(b"", "archive", "/s", W)) == (
        f"{W}: the setting 'archive' is malformed (setting 'archive' must be 1 … 4096 bytes of UTF-8 "
        "without NUL, got 0 bytes)")
    assert _refused(lambda: decode_setting(b"a\0", "archive", "/s", W)) == (
        f"{W}: the setting 'archive' is malformed (setting 'archive' must be 1 … 4096 bytes of UTF-8 "
        "without NUL, got 2 bytes with a NUL)")


# -- check_checkpoint ------------------------------------------------------------------------

def test_a_checkpoint_of_the_current_log_is_kept() -> None:
    check_checkpoint(2, 10, "o", 2, 10, [])  # the whole log
    check_checkpoint(2, 3, "o", 2, 10, [(2, 1, "o", "n"), (1, 5, "other", "n")])


def test_a_checkpoint_of_a_cleared_log_or_an_origin_used_before_is_refused() -> None:
    cleared = "the journal was cleared while the checkpoint was being signed; sign again"
    assert _refused(lambda: check_checkpoint(1, 3, "o", 2, 10, []), ValidationError) == cleared
    assert _refused(lambda: check_checkpoint(3, 3, "o", 2, 10, []), ValidationError) == cleared
    assert _refused(lambda: check_checkpoint(2, 11, "o", 2, 10, []), ValidationError) == cleared
    for kept in ([(1, 5, "o", "n")], [(2, 1, "o", "n"), (3, 5, "o", "n")]):
        assert _refused(lambda: check_checkpoint(2, 3, "o", 2, 10, kept), ValidationError) == (  # noqa: B023
            f"origin 'o' already named the log before a clear (epoch {kept[-1][0]}); a checkpoint of "
            "this log under it would contradict those: sign with a new origin")


# -- Query.matches ---------------------------------------------------------------------------

def _log(ts: int = 5, op: str = "op", rid: str = "r",
         status: LogStatus = LogStatus.Completed) -> TransactionLog:
    return TransactionLog(ts, op, rid, status)


def test_a_query_matches_by_every_filter_at_its_bounds() -> None:
    assert Query().matches(_log())
    assert Query(since=5).matches(_log(5)) and not Query(since=6).matches(_log(5))  # since: inclusive
    assert Query(until=6).matches(_log(5)) and not Query(until=5).matches(_log(5))  # until: exclusive
    assert Query(request_id="r").matches(_log()) and not Query(request_id="s").matches(_log())
    assert Query(op_names=("a", "op")).matches(_log()) and not Query(op_names=("a",)).matches(_log())
    assert not Query(op_names=()).matches(_log())
    assert Query(statuses=(LogStatus.Failed, LogStatus.Completed)).matches(_log())
    assert not Query(statuses=(LogStatus.Failed,)).matches(_log())
    assert not Query(statuses=()).matches(_log())
    both = Query(since=1, until=9, request_id="r", op_names=("op",), statuses=(LogStatus.Completed,))
    assert both.matches(_log())
    for other in (_log(0), _log(9), _log(rid="s"), _log(op="x"), _log(status=LogStatus.Started)):
        assert not both.matches(other), other
