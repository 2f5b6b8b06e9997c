"""Reading strace's output when the traced process has threads.

With ``-f``, a system call that another thread's call interrupts in the trace is printed in two
parts: ``PID call(args <unfinished ...>`` where it began and ``PID <... call resumed>) = result``
where it ended, with other threads' lines in between. A test that matches whole calls — a flush
``fdatasync(5</path>) = 0``, a write's length and offset, the descriptor an ``openat`` returned
— misses such a call unless the two parts are joined again: how often it happens depends on
the machine's load, so a test that does not join them fails now and then.
"""

from __future__ import annotations

import re

__all__ = ["joined"]

_PREFIX = re.compile(r"^(?:\[pid\s+(\d+)\]\s+|(\d+)\s+)?")
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"<\.\.\. \w+ resumed>")


def joined(text: str) -> list[str]:
    """strace's lines, each call split by another thread joined again into one line, kept at the
    place it began (the order the calls were made in)."""
    out: list[str] = []
    begun: dict[str, int] = {}  # thread → where its unfinished call is in ``out``
    for line in text.splitlines():
        prefix = _PREFIX.match(line)
        assert prefix is not None  # (the pattern matches the empty string)
        thread = prefix.group(1) or prefix.group(2) or ""
        body = line[prefix.end():]
        resumed = _RESUMED.match(body)
        if resumed:
            where = begun.pop(thread, None)
            if where is not None:
                out[where] += body[resumed.end():]
            continue
        if body.endswith(_UNFINISHED):
            begun[thread] = len(out)
            out.append(line[:-len(_UNFINISHED)])
            continue
        out.append(line)
    return out
