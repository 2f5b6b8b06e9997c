"""The ``krepis`` command line: run the kernel, inspect and export the journal.

Output guarantees (every command but ``run``'s own messages):

* Everything read from the journal — op names, request ids, error texts, counter names — is
  printed as inert text: never interpreted as Rich markup, and control characters (newlines,
  tabs, ANSI/OSC escape sequences, C1 controls), Unicode bidi controls and line separators are
  shown as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``), so no entry can forge a line, move
  the cursor or retitle the operator's terminal.
* A reader that goes away (``krepis logs | head -1``) ends the command quietly with status 0.
* Expected errors are one line on stderr (``Error: …``) and a non-zero status, never a traceback;
  an error about a value from an environment variable names the variable.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each registers its commands)
    _admin,
    _archive,
    _backup,
    _disk,
    _logs,
    _prove,
    _run,
    _serve,
    _stats,
    _tlog,
    _witness,
)
from ._common import _guard_stdout, cli

__all__ = ["cli", "main"]

def main() -> None:
    """Console-script entry point."""
    _guard_stdout()
    cli(prog_name="krepis")
