from __future__ import annotations

from pathlib import Path

import pytest

from krepis._storage import Storage
from krepis._storage.lmdb import LmdbStorage

from storage_conformance import StorageConformance


class TestLmdbConformance(StorageConformance):
    @pytest.fixture
    def make_storage(self, tmp_path: Path):  # type: ignore[no-untyped-def]
        def factory() -> Storage:
            return LmdbStorage(tmp_path / "store")

        return factory


def test_two_handles_in_one_process_share_one_environment(tmp_path: Path) -> None:
    a = LmdbStorage(tmp_path / "s")
    b = LmdbStorage(tmp_path / "s")
    try:
        from krepis._storage import WriteRequest

        a.write_batch([WriteRequest([], [b"x"])])
        assert b.get_count(b"x") == 1
        a.close()
        assert b.get_count(b"x") == 1  # closing one handle leaves the other working
    finally:
        a.close()
        b.close()
