"""Paging through archived entries in time order when timestamps tie: a page that ends inside a
run of entries sharing one timestamp — the largest of their segment (oldest first) or the
smallest (newest first) — continues with the rest of that run, read from the same segment,
before the next segment's entries."""

from __future__ import annotations

from pathlib import Path

from krepis import LogStatus, SovereignJournal, TransactionLog

T0 = 1_767_225_600_000


def _timestamp(seq: int) -> int:
    # bundle 0's last 16 entries share its largest timestamp, bundle 1's first 16 its smallest
    if seq < 256:
        return T0 + min(seq, 240)
    return T0 + 300 if seq < 272 else T0 + 100 + seq


def test_time_order_paging_continues_within_a_tie_at_a_segments_end(tmp_path: Path) -> None:
    with SovereignJournal(tmp_path / "s", flush="interval:20ms") as journal:
        for seq in range(3 * 256 + 10):
            journal.log_transaction(TransactionLog(_timestamp(seq), "op", f"r{seq}", LogStatus.Completed))
        assert journal.archive(tmp_path / "cold", keep_last=2 * 256 + 10).bundles == 1  # segment 0
        assert journal.archive(tmp_path / "cold", keep_last=256 + 10).bundles == 1  # segment 1
        cursor = journal.entry(245)
        page = journal.query(order="time", newest_first=False, after=cursor, limit=14)
        assert [e.seq for e in page] == [246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 256, 257, 258, 259]
        back = journal.query(order="time", newest_first=True, after=journal.entry(262), limit=8)
        assert [e.seq for e in back] == [261, 260, 259, 258, 257, 256, 255, 254]
