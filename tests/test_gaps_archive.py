"""Archive checks that the rest of the suite let through when they were removed one at a time
(see each docstring for the bug it kills)."""

from __future__ import annotations

from pathlib import Path

import pytest

from krepis import CorruptStorageError, SovereignJournal
from krepis.archive import archive_store
from test_archive import fill_fast, realistic


def test_a_rerun_compares_the_archived_bundles_with_the_stores_entries(pg_url: str, tmp_path: Path) -> None:
    """Kills: ``_check_holds`` not comparing the archived bundle's bytes with the store's entries
    (archive/_writer.py). A run dies after the manifest naming bundle 0 is durable, before the
    store drops it; meanwhile an entry of that bundle is changed in the store (behind the tree's
    back, with plain SQL). The next run must not take the archive's word for it: it stops,
    naming the segment, and the store keeps its entries."""
    import psycopg

    arch = tmp_path / "cold"
    with SovereignJournal(pg_url, flush="interval:20ms") as journal:
        fill_fast(journal, realistic(2 * 256 + 10))

        def die(name: str) -> None:
            if name == "manifest":
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0, max_bundles=1,
                          on_step=die)
        assert journal.live_first_seq() == 0
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE krepis_entries SET duration_us = 99 WHERE seq = 100")
        with pytest.raises(CorruptStorageError, match=r"log000000-000000000000\.kseg: bundle 0 does not hold "
                                                      r"the store's entries 0…: nothing was removed"):
            archive_store(journal._live(), arch, durable=False, before=None, keep_last=0)
        assert journal.live_first_seq() == 0
        assert journal.entry(100).duration_us == 99
