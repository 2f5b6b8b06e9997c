"""Fork detection: a child inherits a journal's threads' state (a commit leader that no longer
exists, locks held by vanished threads) but not the threads, so it must not use the journal."""

from __future__ import annotations

import os

from .._errors import ClosedError

__all__ = ["forked_error", "generation"]

_fork_generation = 0

def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

def generation() -> int:
    """How many times this process's ancestors forked since krepis was imported."""
    return _fork_generation

def forked_error(path: str) -> ClosedError:
    return ClosedError(f"the journal at {path} was opened in a parent process; open a new one "
                       "after fork()")
