"""``krepis bench``: krepis against the disk's fsync limit and the alternatives, side by side.

Every row runs in the same process, on the same disk, one after another, so ratios between rows
are meaningful even on a noisy machine; absolute numbers are not.
"""

from __future__ import annotations

from ._queries import QUERY_NAMES
from ._rows import BenchConfig, Row
from ._run import run_bench

__all__ = ["QUERY_NAMES", "BenchConfig", "Row", "run_bench"]
