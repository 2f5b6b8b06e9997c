"""The damage campaign: every byte-position class of an archive, and every stale or foreign file
swapped in, ends with exactly the right entries or a clear refusal naming the file — never
silently wrong or missing data, never a store that lost entries.

One small archive is built once (a dictionary, three segments, the last of them written by a
run that died before removing its entries from the store) beside another store's archive with
two logs. Each case copies both the store and the archive, damages the copy, then reads (every
entry in append order, a time window, request-id lookups, a proof), verifies (which must refuse
every damaged byte) and archives more (which must never cost an entry).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from krepis import JournalError, SovereignJournal, TransactionLog
from krepis._model import encode_log
from krepis.archive import ArchiveReader, archive_store
from krepis.tlog import leaf_hash
from test_archive import fill_fast, realistic
from test_archive_safety import MANIFEST, frames_of, index_of

SEG0, SEG1, SEG2 = (f"log000000-{k:012d}.kseg" for k in (0, 2, 3))
OTHER_LOG1 = "log000001-000000000000.kseg"
DIR = "<the archive directory>"  # (a refusal that is about the whole archive names its directory)


@dataclass(frozen=True)
class Pristine:
    root: Path
    everything: list[TransactionLog]
    dictionary: str  # its file name


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pristine]:
    import krepis.archive._writer as writer

    root = tmp_path_factory.mktemp("damage")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "DICT_MIN_BUNDLES", 2)  # a dictionary in a small archive

        def die(name: str) -> None:
            if name == "manifest":
                raise KeyboardInterrupt  # the run dies after its manifest, before the removal

        with SovereignJournal(root / "s", flush="interval:20ms") as journal:
            fill_fast(journal, realistic(6 * 256 + 40, seed=11))
            everything = journal.query(order="append", newest_first=False)
            journal.archive(root / "cold", keep_last=4 * 256 + 40)            # bundles 0-1
            shutil.copy(root / "cold" / MANIFEST, root / "older-manifest")
            journal.archive(root / "cold", keep_last=3 * 256 + 40)            # bundle 2
            with pytest.raises(KeyboardInterrupt):                              # bundle 3, pending
                archive_store(journal._live(), root / "cold", durable=False, before=None,
                              keep_last=2 * 256 + 40, on_step=die)
            assert journal.live_first_seq() == 3 * 256
        with SovereignJournal(root / "other", flush="interval:20ms") as other:  # another store
            fill_fast(other, realistic(2 * 256 + 10, seed=12))
            other.archive(root / "other-cold", keep_last=0)
            other.clear_all()
            fill_fast(other, realistic(2 * 256 + 10, seed=13))
            other.archive(root / "other-cold", keep_last=0)                    # its log 1
    dictionary = next(p.name for p in (root / "cold").glob("dict-*.zdict"))
    assert {p.name for p in (root / "cold").glob("*.kseg")} == {SEG0, SEG1, SEG2}
    assert (root / "other-cold" / OTHER_LOG1).exists()
    yield Pristine(root, everything, dictionary)


# -- the cases ------------------------------------------------------------------------------------
Damage = Callable[[Path, Pristine], None]


def _flip(name: str, where: Callable[[bytes], int], mask: int = 0x01) -> Damage:
    def damage(arch: Path, _p: Pristine) -> None:
        data = bytearray((arch / name).read_bytes())
        data[where(bytes(data))] ^= mask
        (arch / name).write_bytes(bytes(data))
    return damage


def _cut(name: str, length: Callable[[int], int]) -> Damage:
    def damage(arch: Path, _p: Pristine) -> None:
        data = (arch / name).read_bytes()
        (arch / name).write_bytes(data[:length(len(data))])
    return damage


def _swap(name: str, source: Callable[[Pristine], Path]) -> Damage:
    def damage(arch: Path, p: Pristine) -> None:
        shutil.copy(source(p), arch / name)
    return damage


def _segment_positions(name: str, frames: int) -> dict[str, Damage]:
    out: dict[str, Damage] = {
        f"{name} header, first byte": _flip(name, lambda d: 0),
        f"{name} header, last byte": _flip(name, lambda d: 7),
    }
    for k in range(frames):
        out[f"{name} frame {k}, magic"] = _flip(name, lambda d, k=k: frames_of(d)[k][0])
        out[f"{name} frame {k}, header"] = _flip(name, lambda d, k=k: frames_of(d)[k][0] + 4, 0x20)
        out[f"{name} frame {k}, middle"] = _flip(name, lambda d, k=k: frames_of(d)[k][0]
                                                 + frames_of(d)[k][1] // 2)
        out[f"{name} frame {k}, last byte"] = _flip(name, lambda d, k=k: sum(frames_of(d)[k]) - 1, 0x80)
    out |= {
        f"{name} index, first byte": _flip(name, lambda d: index_of(d)[0]),
        f"{name} index, middle": _flip(name, lambda d: index_of(d)[0] + index_of(d)[1] // 2),
        f"{name} index, last byte": _flip(name, lambda d: sum(index_of(d)) - 1),
        f"{name} trailer, index offset": _flip(name, lambda d: len(d) - 13),
        f"{name} trailer, index length": _flip(name, lambda d: len(d) - 9),
        f"{name} trailer, magic": _flip(name, lambda d: len(d) - 8),
        f"{name} trailer, last byte": _flip(name, lambda d: len(d) - 1),
        f"{name} cut in half": _cut(name, lambda n: n // 2),
        f"{name} one byte short": _cut(name, lambda n: n - 1),
        f"{name} empty": _cut(name, lambda n: 0),
    }
    return out


_SEGMENT_MEMBERS = ["bundles", "bytes", "dictionary", "file", "first_bundle", "index_sha256", "max_ts",
                    "min_ts", "sha256"]

#: every member of the archive's manifest, in the file's order (sorted keys)
MANIFEST_MEMBERS = [
    "checksum", "dictionaries", "dictionaries.<name>",
    *(f"dictionaries.<name>.{k}" for k in ("bytes", "created", "file", "samples", "sha256")),
    "format", "logs", *(f"logs[0].{k}" for k in ("bundles", "epoch", "first_seq", "last_hash", "segments")),
    *(f"logs[0].segments[{i}].{k}" for i in range(3) for k in _SEGMENT_MEMBERS),
    "store", "store.location", "version"]


def _manifest_fields(raw: bytes) -> dict[str, Damage]:
    """One byte of the value of every member of the manifest, changed."""
    out: dict[str, Damage] = {}
    members = list(re.finditer(rb'"(\w+)":', raw))
    name = members[2].group(1).decode()
    assert [m.group(1).decode() for m in members] == [
        label.rsplit(".", 1)[-1].replace("<name>", name) for label in MANIFEST_MEMBERS]
    for label, found in zip(MANIFEST_MEMBERS, members, strict=True):
        at = found.end()
        byte = raw[at]
        new = {ord('"'): ord("'"), ord("n"): ord("N"), ord("["): ord("("), ord("{"): ord("(")}.get(byte)
        if new is None:
            new = ord("0") + (byte - ord("0") + 1) % 10 if chr(byte).isdigit() else byte ^ 0x01
        position = at + (1 if byte == ord('"') and raw[at + 1] != ord('"') else 0)  # inside a string
        if byte == ord('"'):
            new = raw[position] ^ 0x01 if position != at else new

        def damage(arch: Path, _p: Pristine, position: int = position, new: int = new) -> None:
            data = bytearray((arch / MANIFEST).read_bytes())
            data[position] = new
            (arch / MANIFEST).write_bytes(bytes(data))

        out[f"{MANIFEST} {label}"] = damage
    return out


def cases(p: Pristine) -> dict[str, tuple[Damage, tuple[str, ...]]]:
    """Case → (damage, what a refusal may name)."""
    arch = p.root / "cold"
    out: dict[str, tuple[Damage, tuple[str, ...]]] = {}
    for name, frames in ((SEG0, 2), (SEG1, 1), (SEG2, 1)):
        for case, damage in _segment_positions(name, frames).items():
            out[case] = (damage, (name,))
    for case, damage in _manifest_fields((arch / MANIFEST).read_bytes()).items():
        out[case] = (damage, (MANIFEST,))
    out[f"{MANIFEST} cut in half"] = (_cut(MANIFEST, lambda n: n // 2), (MANIFEST,))
    out[f"{MANIFEST} empty"] = (_cut(MANIFEST, lambda n: 0), (MANIFEST,))
    d = p.dictionary
    out |= {
        "dictionary, first byte": (_flip(d, lambda b: 0), (d,)),
        "dictionary, middle": (_flip(d, lambda b: len(b) // 2), (d,)),
        "dictionary, last byte": (_flip(d, lambda b: len(b) - 1), (d,)),
        "dictionary cut": (_cut(d, lambda n: n // 2), (d,)),
        # stale and foreign files
        "an older manifest": (_swap(MANIFEST, lambda p: p.root / "older-manifest"), (DIR,)),
        "no manifest": (lambda a, p: (a / MANIFEST).unlink(), (DIR,)),
        "another store's manifest": (_swap(MANIFEST, lambda p: p.root / "other-cold" / MANIFEST), (DIR,)),
        "another store's segment": (_swap(SEG0, lambda p: p.root / "other-cold" / SEG0), (SEG0,)),
        "a segment of another log": (_swap(SEG0, lambda p: p.root / "other-cold" / OTHER_LOG1), (SEG0,)),
        "our segments swapped": (_swap(SEG1, lambda p: p.root / "cold" / SEG2), (SEG1,)),
        "the pending segment replaced": (_swap(SEG2, lambda p: p.root / "cold" / SEG1), (SEG2,)),
        "another store's dictionary": (_swap(d, lambda p: next((p.root / "other-cold").glob("dict-*"))),
                                       (d,)),
        "a segment missing": (lambda a, p: (a / SEG1).unlink(), (SEG1,)),
        "the dictionary missing": (lambda a, p: (a / d).unlink(), (d,)),
    }
    return out


# -- the run of one case --------------------------------------------------------------------------
def _reads(journal: SovereignJournal, arch: Path, everything: list[TransactionLog]
           ) -> list[tuple[str, Callable[[], object], object]]:
    """(name, read, the right answer)."""
    lo, hi = everything[300].timestamp, everything[700].timestamp
    window = sorted((x for x in everything if lo <= x.timestamp < hi),
                    key=lambda x: (x.timestamp, x.seq or 0))
    out: list[tuple[str, Callable[[], object], object]] = [
        ("all", lambda: journal.query(archive=arch, order="append", newest_first=False), everything),
        ("window", lambda: journal.query(archive=arch, since=lo, until=hi, newest_first=False), window),
        ("entry", lambda: journal.entry(700, archive=arch), everything[700]),
        ("proof", lambda: journal.inclusion_proof(100, archive=arch).leaf_hash,
         leaf_hash(encode_log(everything[100]))),
    ]
    for seq in (10, 600):
        rid = everything[seq].request_id
        want = sorted((x for x in everything if x.request_id == rid), key=lambda x: (x.timestamp, x.seq or 0),
                      reverse=True)
        out.append((f"rid {seq}", lambda rid=rid: journal.query(archive=arch, request_id=rid), want))
    return out


def _refused(exc: JournalError, names: tuple[str, ...], case: str, what: str) -> None:
    assert any(n in str(exc) for n in names), f"{case}: {what} refused without naming {names}: {exc}"


def run_case(p: Pristine, work: Path, case: str, damage: Damage, names: tuple[str, ...]) -> str:
    """Damage a copy, read, verify, archive; return what happened (for the summary)."""
    store, arch = work / "s", work / "cold"
    shutil.copytree(p.root / "s", store)
    shutil.copytree(p.root / "cold", arch)
    with SovereignJournal(store, retention="off") as journal:
        journal.set_archive_dir(arch)  # a copied store and archive: record where the archive is now
    damage(arch, p)
    names = tuple(str(arch) if n == DIR else n for n in names)
    outcome = []
    with SovereignJournal(store, retention="off") as journal:
        live = journal.live_first_seq()
        for what, read, want in _reads(journal, arch, p.everything):
            try:
                got = read()
            except JournalError as exc:
                _refused(exc, names, case, what)
                outcome.append(f"{what}: refused")
                continue
            assert got == want, f"{case}: {what} returned wrong entries"
            outcome.append(f"{what}: right")
        with pytest.raises(JournalError) as refused:
            journal.verify_archive(arch)
        _refused(refused.value, names, case, "verify")
        try:
            journal.archive(arch, keep_last=0)
        except JournalError as exc:
            _refused(exc, names, case, "archive")
            outcome.append("archive: refused")
        # whatever happened, nothing was lost: what left the store is in the archive, checked
        after = journal.live_first_seq()
        assert journal.query(order="append", newest_first=False, live_only=True) == p.everything[after:], case
        if after > live:
            storage = journal._live()
            reader = ArchiveReader(arch, 0, 0, lambda k: storage.tree_node(8, k))
            for k in range(live // 256, after // 256):
                want = [encode_log(x) for x in p.everything[256 * k:256 * k + 256]]
                assert reader.bundle_data(k) == want, case
            outcome.append(f"archive: moved {live}…{after}")
    return "; ".join(outcome)


CASES = [
    *(case for name, frames in ((SEG0, 2), (SEG1, 1), (SEG2, 1))
      for case in _segment_positions(name, frames)),
    *(f"{MANIFEST} {label}" for label in MANIFEST_MEMBERS), f"{MANIFEST} cut in half", f"{MANIFEST} empty",
    "dictionary, first byte", "dictionary, middle", "dictionary, last byte", "dictionary cut",
    "an older manifest", "no manifest", "another store's manifest", "another store's segment",
    "a segment of another log", "our segments swapped", "the pending segment replaced",
    "another store's dictionary", "a segment missing", "the dictionary missing"]


@pytest.mark.parametrize("case", CASES)
def test_damage_ends_with_the_right_entries_or_a_refusal(pristine: Pristine, tmp_path: Path,
                                                          case: str) -> None:
    damage, names = cases(pristine)[case]
    outcome = run_case(pristine, tmp_path, case, damage, names)
    if case.startswith(SEG2) or case == "the pending segment replaced":
        # the segment of the run that died before removing its entries: never trusted
        assert "archive: refused" in outcome and "moved" not in outcome, outcome


def test_the_campaign_covers_every_case(pristine: Pristine) -> None:
    assert sorted(cases(pristine)) == sorted(CASES)


def test_the_undamaged_copy_reads_right(pristine: Pristine, tmp_path: Path) -> None:
    """(The campaign's baseline: every read right, verify passes, the run completes and moves.)"""
    store, arch = tmp_path / "s", tmp_path / "cold"
    shutil.copytree(pristine.root / "s", store)
    shutil.copytree(pristine.root / "cold", arch)
    with SovereignJournal(store) as journal:
        journal.set_archive_dir(arch)
        for what, read, want in _reads(journal, arch, pristine.everything):
            assert read() == want, what
        assert journal.verify_archive(arch).bundles == 4
        report = journal.archive(arch, keep_last=0)
        assert report.completed_previous and report.live_first_seq == 6 * 256
