"""``krepis bench``: krepis against the disk's one-writer ceiling, sqlite3 and its targets.

Every write row runs in the same process, on the same disk, in interleaved rounds (round 1 of
every row, then round 2 of every row, …), and reports the median of its rounds, its spread and
its CPU per operation; ratios between rows are meaningful even on a noisy machine, absolute
numbers are not.
"""

from __future__ import annotations

from ._queries import QUERY_NAMES
from ._report import render
from ._rows import BenchConfig, Round, WriteRow, write_rows
from ._run import interleaved, run_bench, summarise
from ._targets import evaluate

__all__ = ["QUERY_NAMES", "BenchConfig", "Round", "WriteRow", "evaluate", "interleaved", "render",
           "run_bench", "summarise", "write_rows"]
