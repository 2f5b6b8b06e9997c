from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A fresh storage location on the real disk (not yet created)."""
    return tmp_path / "krepis" / "storage"


def tree_snapshot(root: Path) -> dict[str, bytes]:
    """Every file below root with its bytes, to prove nothing on disk changed.

    ``lock.mdb`` is LMDB's runtime lock table (shared memory, rebuilt by whichever process opens
    the store first); only its presence is compared, not its bytes.
    """
    out: dict[str, bytes] = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = b"<lock table>" if name == "lock.mdb" else p.read_bytes()
    return out
