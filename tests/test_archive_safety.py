"""The archive against attackers and careless operators: a forged manifest never removes live
entries, the archive directory gets the store directory's checks and only its own files are
touched, corrupted bundles are never served, hostile files are clear errors (never a traceback,
a hang or a huge allocation)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from krepis import CorruptStorageError, SovereignJournal, StorageError, ValidationError
from krepis.archive import ArchiveReader, archive_store
from krepis.cli import cli
from test_archive import fill_fast, realistic

MANIFEST = "MANIFEST.json"


# -- helpers (the format as docs/archive.md defines it, independent of krepis's code) -------------
def seal(data: dict[str, Any], sealed: bool = True) -> bytes:
    """A manifest's bytes: compact sorted JSON, with (format 2) the checksum member first."""
    data = dict(data)
    data.pop("checksum", None)
    body = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    if not sealed:
        return body
    return b'{"checksum":"' + hashlib.sha256(body).hexdigest().encode() + b'",' + body[1:]


def rewrite_manifest(arch: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the manifest as an attacker would: the change, then the checksum made right again."""
    raw = (arch / MANIFEST).read_bytes()
    data = json.loads(raw)
    change(data)
    (arch / MANIFEST).write_bytes(seal(data, raw.startswith(b'{"checksum":"')))


def index_of(raw: bytes) -> tuple[int, int]:
    offset, length, _magic = struct.unpack(">QI8s", raw[-20:])
    return offset, length


def frames_of(raw: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each bundle's frame, from the segment's index."""
    import zstandard

    offset, length = index_of(raw)
    index = zstandard.ZstdDecompressor().decompress(raw[offset:offset + length])
    _epoch, _first, count, _keys = struct.unpack_from(">QQII", index)
    out, at = [], 8
    for i in range(count):
        (flen,) = struct.unpack_from(">I", index, 24 + 52 * i)
        out.append((at, flen))
        at += flen
    return out


def install_segment(arch: Path, name: str, raw: bytes) -> None:
    """``raw`` as segment ``name``, the manifest's checksums of it made to match."""
    (arch / name).write_bytes(raw)
    offset, length = index_of(raw)

    def change(m: dict[str, Any]) -> None:
        for log in m["logs"]:
            for seg in log["segments"]:
                if seg["file"] == name:
                    seg["sha256"], seg["bytes"] = hashlib.sha256(raw).hexdigest(), len(raw)
                    if "index_sha256" in seg:
                        seg["index_sha256"] = hashlib.sha256(raw[offset:offset + length]).hexdigest()

    rewrite_manifest(arch, change)


def reads(journal: SovereignJournal, arch: Path) -> list[Callable[[], object]]:
    return [lambda: journal.query(archive=arch, order="append", newest_first=False),
            lambda: journal.verify_archive(arch),
            lambda: journal.archive(arch, keep_last=0)]


@pytest.fixture
def archived(tmp_path: Path) -> tuple[Path, Path, list[Any]]:
    """A store of 1,400 entries whose first 4 bundles are archived (one segment, no dictionary)."""
    store, arch = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1400))
        everything = journal.query(order="append", newest_first=False)
        assert journal.archive(arch, keep_last=300).bundles == 4
    return store, arch, everything


# -- 1. a forged manifest never removes a live entry --------------------------------------------
def _claim_more(bundles: int, node: bytes, *, segment_too: bool) -> Callable[[dict[str, Any]], None]:
    def change(m: dict[str, Any]) -> None:
        m["logs"][0]["bundles"] = bundles
        m["logs"][0]["last_hash"] = node.hex()
        if segment_too:
            m["logs"][0]["segments"][-1]["bundles"] += bundles - 21
    return change


@pytest.mark.parametrize("forgery", ["count and last hash", "segment too", "forged segment"])
def test_a_forged_manifest_never_removes_live_entries(tmp_path: Path, forgery: str) -> None:
    """The review's attack: a manifest claiming 23 bundles of 21, its last hash the tree's public
    height-8 node 22. `archive --keep-last 100000` asks to move nothing; it must not "complete"
    anything the segment files do not hold, byte for byte."""
    from krepis.archive._format import _encode_segment, _zstd

    store, arch = tmp_path / "s", tmp_path / "cold"
    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(6000))
        assert journal.archive(arch, keep_last=600).bundles == 21
        pristine = (arch / MANIFEST).read_bytes()
        storage = journal._live()
        node = storage.tree_node(8, 22)
        assert node is not None
        if forgery == "forged segment":  # a real segment file: the tree's hashes, other entries
            fake = [(b"\x00\x01x" * 256, [], storage.tree_node(8, k), 1, 2, [b"abcd"]) for k in (21, 22)]
            raw = _encode_segment(_zstd(), None, 0, 21, fake)

            def add(m: dict[str, Any]) -> None:
                seg = dict(m["logs"][0]["segments"][0], file="log000000-000000000021.kseg", first_bundle=21,
                           bundles=2, dictionary=None)
                m["logs"][0]["segments"].append(seg)
                _claim_more(23, node, segment_too=False)(m)

            rewrite_manifest(arch, add)
            install_segment(arch, "log000000-000000000021.kseg", raw)
        else:
            rewrite_manifest(arch, _claim_more(23, node, segment_too=forgery == "segment too"))
        with pytest.raises(CorruptStorageError, match=r"kseg|MANIFEST"):
            journal.archive(arch, keep_last=100_000)
        assert journal.live_first_seq() == 21 * 256
        assert journal.journal_count(live_only=True) == 6000 - 21 * 256
    result = CliRunner().invoke(cli, ["--storage", str(store), "archive", str(arch), "--keep-last", "100000"])
    assert result.exit_code != 0
    (arch / MANIFEST).write_bytes(pristine)
    with SovereignJournal(store) as journal:
        assert len(journal.query(archive=arch)) == 6000
        journal.verify_archive(arch)


def test_the_archive_on_disk_is_read_back_before_entries_leave_the_store(tmp_path: Path) -> None:
    """Between the manifest's write and the removal, a bit of the new segment flips on disk:
    the read-back (not the bytes in memory) decides, and nothing leaves the store."""
    store, arch = tmp_path / "s", tmp_path / "cold"

    def flip(name: str) -> None:
        if name == "manifest":
            seg = next(arch.glob("*.kseg"))
            data = bytearray(seg.read_bytes())
            at, length = frames_of(bytes(data))[1]
            data[at + length // 2] ^= 0x10
            seg.write_bytes(bytes(data))

    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1000))
        with pytest.raises(CorruptStorageError, match=r"log000000-000000000000\.kseg: bundle 1"):
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0, on_step=flip)
        assert journal.live_first_seq() == 0 and journal.journal_count() == 1000


# -- 2. the archive directory: the store directory's checks, only our own files ------------------
def test_the_archive_directory_gets_the_store_directorys_checks(archived: Any, tmp_path: Path) -> None:
    store, arch, _ = archived
    with SovereignJournal(store) as journal:
        for mode, owner in ((0o777, 0), (0o720, 0), (0o700, 4242)):
            os.chmod(arch, mode)
            os.chown(arch, owner, -1)
            for read in reads(journal, arch):
                with pytest.raises(StorageError, match=f"{arch}.*(writable by|owned by)"):
                    read()
        os.chown(arch, 0, -1)
        os.chmod(arch, 0o700)
        shared = tmp_path / "shared"  # a parent anyone can write (not sticky): anyone could swap it
        shared.mkdir(mode=0o700)
        moved = shared / "cold"
        arch.rename(moved)
        os.chmod(shared, 0o777)
        with pytest.raises(StorageError, match="users other than you"):
            journal.query(archive=moved)
        with SovereignJournal(tmp_path / "fresh", flush="interval:20ms") as fresh:  # (one recording none)
            fill_fast(fresh, realistic(600))
            with pytest.raises(StorageError, match="users other than you"):
                fresh.archive(shared / "new", keep_last=0)
            assert fresh.get_archive_dir() is None
        assert not (shared / "new").exists()
        os.chmod(shared, 0o755)
        assert len(journal.query(archive=moved)) == 1400


def test_a_directory_that_is_not_an_archive_is_refused_unchanged(tmp_path: Path) -> None:
    """Today's careless operator: `krepis archive ~/work` deleted .tmp-*, log*.kseg, dict-*.zdict."""
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    files = {".tmp-notes": b"draft", "log000000-000000000000.kseg": b"my log", "notes.txt": b"x",
             "dict-0123456789abcdef.zdict": b"words"}
    for name, data in files.items():
        (work / name).write_bytes(data)
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        fill_fast(journal, realistic(600))
        with pytest.raises(ValidationError, match=f"{work} is not empty and is not a krepis archive"):
            journal.archive(work, keep_last=0)
        assert journal.live_first_seq() == 0
    assert {p.name: p.read_bytes() for p in work.iterdir()} == files  # not even a lock file


def test_only_files_a_crashed_run_provably_left_are_removed(tmp_path: Path) -> None:
    store, arch = tmp_path / "s", tmp_path / "cold"

    def crash(name: str) -> None:
        if name == "segment":
            raise KeyboardInterrupt  # the run dies after its segment, before its manifest

    with SovereignJournal(store, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(1400))
        journal.archive(arch, keep_last=1000)
        with pytest.raises(KeyboardInterrupt):
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0, on_step=crash)
        left = arch / "log000000-000000000001.kseg"
        assert left.exists()
        mine = {"log000000-000000000099.kseg": b"not a segment", "dict-0123456789abcdef.zdict": b"words",
                ".tmp-mine": b"x", "notes.txt": b"y"}
        for name, data in mine.items():
            (arch / name).write_bytes(data)
        temp = arch / ".tmp-MANIFEST.json.0123456789abcdef"  # a crashed run's temporary file
        temp.write_bytes(b'{"checksum"')
        report = journal.archive(arch, keep_last=0)
        assert report.bundles == 4 and journal.live_first_seq() == 5 * 256
        assert not temp.exists()
        assert {n: (arch / n).read_bytes() for n in mine} == mine
        assert len(journal.query(archive=arch)) == 1400
        journal.verify_archive(arch)


def test_no_planted_link_is_ever_followed(archived: Any, tmp_path: Path) -> None:
    store, arch, _ = archived
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    with SovereignJournal(store) as journal:
        fill_fast(journal, realistic(600, seed=5, start=10**13))  # more due: the next segment's name
        nxt = arch / "log000000-000000000004.kseg"
        nxt.symlink_to(victim)
        with pytest.raises(StorageError, match=f"{nxt} exists"):
            journal.archive(arch, keep_last=0)
        assert nxt.is_symlink() and journal.live_first_seq() == 4 * 256
        nxt.unlink()
        for name in (".lock", MANIFEST, "log000000-000000000000.kseg"):
            saved = arch / (name + ".saved")
            (arch / name).rename(saved)
            (arch / name).symlink_to(victim)
            # (only a run takes the lock; a run reads no old segment)
            calls = {".lock": [2], MANIFEST: [0, 1, 2]}.get(name, [0, 1])
            for read in [reads(journal, arch)[i] for i in calls]:
                with pytest.raises(StorageError, match=f"{name}.*symbolic link"):
                    read()
            (arch / name).unlink()
            saved.rename(arch / name)
        assert journal.live_first_seq() == 4 * 256
        assert journal.archive(arch, keep_last=0).bundles == 3  # (2,000 entries: 7 full bundles)
    assert victim.read_bytes() == b"precious"


# -- 3. corrupted bundles are never served -------------------------------------------------------
def _well_formed(bundle: bytes) -> bool:
    """256 length-prefixed JSON entries, as a C2SP entry bundle of TransactionLogs holds."""
    entries, at = [], 0
    while at + 2 <= len(bundle):
        size = int.from_bytes(bundle[at:at + 2], "big")
        entries.append(bundle[at + 2:at + 2 + size])
        at += 2 + size
    try:
        return at == len(bundle) and len(entries) == 256 and all(
            isinstance(json.loads(e)["timestamp"], int) for e in entries)
    except (ValueError, KeyError, TypeError):
        return False


def _silent_flip(raw: bytes, at: int, length: int) -> int:
    """A bit of this frame whose flip still decompresses to 256 well-formed entries (other ones):
    what an unchecked reader would serve."""
    import zstandard

    good = zstandard.ZstdDecompressor().decompress(raw[at:at + length])
    for pos in range(at + length - 1, at + 6, -1):
        for bit in (0x01, 0x08):
            frame = bytearray(raw[at:at + length])
            frame[pos - at] ^= bit
            try:
                out = zstandard.ZstdDecompressor().decompress(bytes(frame))
            except zstandard.ZstdError:
                continue
            if out != good and _well_formed(out):
                return pos * 8 + bit.bit_length() - 1
    raise AssertionError("no silent flip found")


def test_a_flipped_bit_in_a_segment_is_never_served(archived: Any) -> None:
    store, arch, everything = archived
    seg = arch / "log000000-000000000000.kseg"
    raw = seg.read_bytes()
    at, length = frames_of(raw)[2]
    where = _silent_flip(raw, at, length)
    damaged = bytearray(raw)
    damaged[where // 8] ^= 1 << (where % 8)
    seg.write_bytes(bytes(damaged))  # the manifest untouched
    with SovereignJournal(store) as journal:
        for read in (lambda: journal.query(archive=arch, order="append", newest_first=False),
                     lambda: journal.query(archive=arch, since=everything[600].timestamp),
                     lambda: journal.entry(600, archive=arch),
                     lambda: journal.inclusion_proof(600, archive=arch),
                     lambda: journal.query(archive=arch, request_id=everything[600].request_id)):
            with pytest.raises(CorruptStorageError, match=f"{seg.name}: bundle 2 does not match"):
                read()
        assert journal.query(archive=arch, request_id=everything[10].request_id)  # other bundles: fine
    # without a store at hand, against the hash the (checked) index records
    with pytest.raises(CorruptStorageError, match=f"{seg.name}: bundle 2 does not match the hash its index"):
        ArchiveReader(arch, 0, 0).bundle_data(2)
    result = CliRunner().invoke(cli, ["--storage", str(store), "export", "--archive", str(arch)])
    assert result.exit_code != 0 and seg.name in result.output


# -- 4. hostile files -----------------------------------------------------------------------------
def _frame(content_size: int | None, blocks: int, block: int = 1 << 17) -> bytes:
    """A zstd frame of ``blocks`` RLE blocks of ``block`` zero bytes, declaring ``content_size``
    (8-byte field; ``None``: undeclared)."""
    if content_size is None:
        head = bytes([0x00, 0x58])  # no size, window descriptor: 2^(10+11) bytes
    else:
        head = bytes([0xE0]) + content_size.to_bytes(8, "little")  # single segment, 8-byte size
    body = b"".join((((i == blocks - 1) | 1 << 1 | block << 3).to_bytes(3, "little") + b"\0")
                    for i in range(blocks))
    return b"\x28\xb5\x2f\xfd" + head + body


@pytest.mark.parametrize("bomb", ["1 TiB declared", "3 GiB declared", "undeclared", "more than declared",
                                  "index: 1 TiB declared"])
def test_a_decompression_bomb_is_refused_without_allocating_it(archived: Any, bomb: str) -> None:
    store, arch, _ = archived
    name = "log000000-000000000000.kseg"
    raw = (arch / name).read_bytes()
    frames = frames_of(raw)
    offset, length = index_of(raw)
    frame = {"1 TiB declared": _frame(1 << 40, 1), "3 GiB declared": _frame(3 << 30, 1),
             "undeclared": _frame(None, 200), "more than declared": _frame(1000, 200),
             "index: 1 TiB declared": raw[frames[0][0]:frames[0][0] + frames[0][1]]}[bomb]
    index = _frame(1 << 40, 1) if bomb.startswith("index") else raw[offset:offset + length]
    # the bomb in place of bundle 0, the index's length of it (and of the index) made to fit
    import zstandard

    plain = bytearray(zstandard.ZstdDecompressor().decompress(raw[offset:offset + length]))
    struct.pack_into(">I", plain, 24, len(frame))
    if not bomb.startswith("index"):
        index = zstandard.ZstdCompressor().compress(bytes(plain))
    body = raw[:8] + frame + raw[frames[0][0] + frames[0][1]:offset]
    forged = body + index + struct.pack(">QI8s", len(body), len(index), b"KRPIDX1\n")
    install_segment(arch, name, forged)
    with SovereignJournal(store) as journal:
        for read in (lambda: journal.entry(0, archive=arch), lambda: journal.verify_archive(arch)):
            with pytest.raises(CorruptStorageError, match=name):
                read()


def _hostile_manifests(good: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """Variant → (manifest bytes, the field or rule the refusal must name)."""
    def edit(change: Callable[[dict[str, Any]], None]) -> bytes:
        data = json.loads(json.dumps(good))
        change(data)
        return seal(data)

    def seg(key: str, value: object) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["logs"][0]["segments"][0].__setitem__(key, value)

    def log(key: str, value: object) -> Callable[[dict[str, Any]], None]:
        return lambda m: m["logs"][0].__setitem__(key, value)

    def drop(path: str) -> Callable[[dict[str, Any]], None]:
        def change(m: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            obj: Any = m
            for p in parents:
                obj = obj[int(p)] if p.isdigit() else obj[p]
            del obj[last]
        return change

    def duplicate(m: dict[str, Any]) -> None:
        m["logs"][0]["segments"].append(dict(m["logs"][0]["segments"][0]))
        m["logs"][0]["bundles"] *= 2

    def overlap(m: dict[str, Any]) -> None:
        second = dict(m["logs"][0]["segments"][0], first_bundle=2, file="log000000-000000000002.kseg")
        m["logs"][0]["segments"].append(second)
        m["logs"][0]["bundles"] += 4

    text = json.dumps(good)
    return {
        "not JSON": (b'{"format": "krepis-archive", ', "not JSON"),
        "not UTF-8": (b'{"format": "\xff"}', "not JSON"),
        "a list": (b"[]", "not a krepis archive manifest"),
        "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        "NaN": (seal(good).replace(b'"bytes":', b'"bytes":NaN,"x":', 1), "not JSON|checksum"),
        "duplicate key": (text.replace('"logs":', '"logs": [], "logs":', 1).encode(), "appears twice"),
        "no checksum": (seal(good, sealed=False), "checksum"),
        "wrong checksum": (seal(good).replace(b'"checksum":"', b'"checksum":"0', 1).replace(b'0",', b'",', 1),
                           "checksum"),
        "version 99": (edit(lambda m: m.__setitem__("version", 99)), "version 99"),
        "version true": (edit(lambda m: m.__setitem__("version", True)), "version True"),
        "logs an object": (edit(lambda m: m.__setitem__("logs", {})), "logs must be a list"),
        "dictionaries a list": (edit(lambda m: m.__setitem__("dictionaries", [])), "dictionaries must be"),
        "no logs": (edit(drop("logs")), "logs is missing"),
        "no store": (edit(drop("store")), "store is missing"),
        "no segments": (edit(drop("logs.0.segments")), r"logs\[0\]\.segments is missing"),
        "no file": (edit(drop("logs.0.segments.0.file")), r"segments\[0\]\.file is missing"),
        "no sha256": (edit(drop("logs.0.segments.0.sha256")), r"sha256 is missing"),
        "bundles a string": (edit(log("bundles", "4")), r"logs\[0\]\.bundles must be a whole number"),
        "epoch true": (edit(log("epoch", True)), r"epoch must be a whole number"),
        "first_seq null": (edit(log("first_seq", None)), r"first_seq must be a whole number"),
        "min_ts a float": (edit(seg("min_ts", 1.5)), r"min_ts must be a whole number"),
        "negative bundles": (edit(log("bundles", -1)), r"bundles is -1"),
        "negative first_seq": (edit(log("first_seq", -256)), r"first_seq is -256"),
        "huge bundles": (edit(log("bundles", 10**30)), r"bundles is 1000000000000000000000000000000"),
        "huge first_bundle": (edit(seg("first_bundle", 2**64)), r"first_bundle is"),
        "huge segment": (edit(seg("bundles", 2**40)), r"segments\[0\]\.bundles is"),
        "bundles not the segments'": (edit(log("bundles", 5)), r"bundles is 5; its segments hold 4"),
        "duplicate segment": (edit(duplicate), r"segments\[1\]\.first_bundle is 0.*overlap"),
        "overlapping segments": (edit(overlap), r"segments\[1\]\.first_bundle is 2.*overlap"),
        "slash": (edit(seg("file", "sub/log000000-000000000000.kseg")), r"segments\[0\]\.file must be"),
        "dot dot": (edit(seg("file", "../log000000-000000000000.kseg")), r"segments\[0\]\.file must be"),
        "absolute": (edit(seg("file", "/etc/passwd")), r"segments\[0\]\.file must be"),
        "NUL": (edit(seg("file", "log000000-000000000000.kseg\0")), r"segments\[0\]\.file must be"),
        "another log's name": (edit(seg("file", "log000001-000000000000.kseg")), r"file must be"),
        "dictionary not listed": (edit(seg("dictionary", "0123456789abcdef")), r"dictionary is"),
        "dictionary outside": (edit(lambda m: m["dictionaries"].__setitem__("0123456789abcdef", {
            "file": "../dict-0123456789abcdef.zdict", "sha256": "0123456789abcdef" + "0" * 48, "bytes": 5,
            "created": 1.0, "samples": 1})), r"file must be 'dict-0123456789abcdef\.zdict'"),
        "last hash not hex": (edit(log("last_hash", "zz")), r"last_hash must be 64 lowercase hex"),
        "two logs, one epoch": (edit(lambda m: m["logs"].append(dict(m["logs"][0]))),
                                r"logs\[1\]\.epoch is 0"),
        "max before min": (edit(seg("max_ts", 0)), r"max_ts is 0"),
    }


def test_every_hostile_manifest_is_a_clear_error(archived: Any) -> None:
    store, arch, _ = archived
    pristine = (arch / MANIFEST).read_bytes()
    good = json.loads(pristine)
    outside = arch.parent / "outside.kseg"
    outside.write_bytes(b"must never be opened")
    with SovereignJournal(store) as journal:
        for variant, (raw, rule) in _hostile_manifests(good).items():
            (arch / MANIFEST).write_bytes(raw)
            for read in reads(journal, arch):
                with pytest.raises(CorruptStorageError, match=f"{MANIFEST}.*({rule})") as refused:
                    read()
                assert str(arch / MANIFEST) in str(refused.value), variant
            assert journal.live_first_seq() == 4 * 256, variant
        (arch / MANIFEST).write_bytes(pristine)
        assert len(journal.query(archive=arch)) == 1400


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "symlink to a fifo"])
def test_a_fifo_device_or_directory_in_place_of_a_file_is_refused_at_once(archived: Any, kind: str) -> None:
    store, arch, _ = archived
    for name in ("log000000-000000000000.kseg", MANIFEST):
        path = arch / name
        saved = arch / (name + ".saved")
        path.rename(saved)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        elif kind == "device":
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null
        else:
            os.mkfifo(arch.parent / "fifo")
            path.symlink_to(arch.parent / "fifo")
        with SovereignJournal(store) as journal:
            for read in reads(journal, arch)[:3 if name == MANIFEST else 2]:  # (a run reads no old segment)
                with pytest.raises(CorruptStorageError, match=f"{name}"):
                    read()
            assert journal.live_first_seq() == 4 * 256
        shutil.rmtree(path) if kind == "directory" else path.unlink()
        (arch.parent / "fifo").unlink(missing_ok=True)
        saved.rename(path)
