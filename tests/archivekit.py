"""A small archive built once per test module, copied for each test: the unit tests of the
archive's modules (tests/test_archive_*_units.py) damage or read their own copy.

The store ``s`` has two logs. Log 0 (seqs 0 … 1289) had its bundles 0-1 archived before
``clear_all()``; log 1 begins at seq 1290 and has bundle 0 archived in one segment and bundles
1-2 in another; the archive ``cold`` holds one dictionary (trained by the first run), three
segments and the manifest. Log 1's live entries begin at seq 1290 + 3 × 256 = 2058.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from krepis import SovereignJournal, TransactionLog
from krepis.storage import open_storage
from test_archive import fill_fast, realistic
from test_archive_safety import seal

MANIFEST = "MANIFEST.json"
FIRST1 = 5 * 256 + 10  # log 1's first seq
LOG0_SEG = "log000000-000000000000.kseg"
LOG1_SEG0 = "log000001-000000000000.kseg"
LOG1_SEG1 = "log000001-000000000001.kseg"


@dataclass(frozen=True)
class Built:
    root: Path
    log0: list[TransactionLog]    # every entry of log 0
    log1: list[TransactionLog]    # every entry of log 1
    dictionary: str               # its file name

    def copy(self, to: Path, *, record: bool = True) -> tuple[Path, Path]:
        """A copy of the store and its archive under ``to``: (store, archive). The copy records
        the copied archive as its own (``record=False``: no archive at all)."""
        shutil.copytree(self.root / "s", to / "s")
        shutil.copytree(self.root / "cold", to / "cold")
        storage = open_storage(to / "s", create=False)
        try:
            storage.set_setting("archive", str(to / "cold") if record else None)
        finally:
            storage.close()
        return to / "s", to / "cold"


def build(root: Path) -> Built:
    import krepis.archive._writer as writer

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(writer, "DICT_MIN_BUNDLES", 2)  # a dictionary in a small archive
        with SovereignJournal(root / "s", flush="interval:20ms") as journal:
            fill_fast(journal, realistic(FIRST1, seed=21))
            log0 = journal.query(order="append", newest_first=False)
            assert journal.archive(root / "cold", keep_last=3 * 256 + 10).bundles == 2
            journal.clear_all()
            fill_fast(journal, realistic(6 * 256 + 20, seed=22, start=1_770_000_000_000))
            log1 = journal.query(order="append", newest_first=False)
            assert journal.archive(root / "cold", keep_last=5 * 256 + 20).bundles == 1
            assert journal.archive(root / "cold", keep_last=3 * 256 + 20).bundles == 2
            assert journal.live_first_seq() == FIRST1 + 3 * 256
    dictionary = next(p.name for p in (root / "cold").glob("dict-*.zdict"))
    assert sorted(p.name for p in (root / "cold").glob("*.kseg")) == [LOG0_SEG, LOG1_SEG0, LOG1_SEG1]
    return Built(root, log0, log1, dictionary)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    yield build(tmp_path_factory.mktemp("built"))


def manifest_of(arch: Path) -> dict[str, Any]:
    return json.loads((arch / MANIFEST).read_bytes())  # type: ignore[no-any-return]


def edit_manifest(arch: Path, change: Any) -> None:
    """Change the manifest as an attacker would, its checksum made right again."""
    data = manifest_of(arch)
    change(data)
    (arch / MANIFEST).write_bytes(seal(data))


def install(arch: Path, name: str, raw: bytes, **fields: Any) -> None:
    """``raw`` as file ``name``, the manifest's checksums and length of it made to match (and
    ``fields`` of its entry set), sealed again."""
    import hashlib
    import struct

    (arch / name).write_bytes(raw)

    def change(m: dict[str, Any]) -> None:
        for seg in (s for log in m["logs"] for s in log["segments"]):
            if seg["file"] == name:
                offset, length = struct.unpack(">QI", raw[-20:-8])
                seg.update(sha256=hashlib.sha256(raw).hexdigest(), bytes=len(raw),
                           index_sha256=hashlib.sha256(raw[offset:offset + length]).hexdigest(), **fields)

    edit_manifest(arch, change)
