"""How a run ends: its result, or the error that names why it failed or was interrupted."""

from __future__ import annotations

import signal
from dataclasses import dataclass

from .._errors import JournalError

#: Longest error message or stack the prelude reports (characters); longer ones are cut.
MAX_ERROR_TEXT = 16 * 1024

#: Error names only the kernel gives; a script that throws one is reported as a plain Error.
RESERVED_NAMES = frozenset({"Timeout", "MemoryLimit", "OpLimit", "ProtocolError", "DenoExited",
                            "Interrupted"})

class ScriptError(JournalError):
    """A script failed: it threw, did not parse, hit a limit, broke the protocol, or Deno died.

    ``name`` is the JS error's name (``"SyntaxError"``, ``"TypeError"``, …) or one of the
    kernel's: ``"Timeout"``, ``"MemoryLimit"``, ``"OpLimit"``, ``"ProtocolError"``,
    ``"DenoExited"``. ``stack`` is the JS stack when there is one (with the script's own path),
    ``location`` the ``path:line:column`` where it was thrown when known.
    """

    def __init__(self, message: str, *, name: str = "Error", stack: str | None = None,
                 location: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.stack = stack
        self.location = location

class ScriptInterrupted(BaseException):
    """The host process got SIGTERM or SIGHUP while a script ran (SIGINT: ``KeyboardInterrupt``).

    Deno was killed and its directory removed before this was raised. Like
    ``KeyboardInterrupt``, it is not an ``Exception``: ``except Exception`` does not swallow a
    request to stop. ``signum`` is the signal; the CLI exits with ``128 + signum``.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

@dataclass(frozen=True)
class ScriptResult:
    """What a successful run did."""

    ops_called: int
    duration_ms: float
    exit_code: int = 0
    request_id: str | None = None
