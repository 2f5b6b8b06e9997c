"""The kernel and its execution plane: :class:`Kernel` boots from the journal, journals its
lifecycle and every op; JavaScript runs in a zero-permission Deno process (``_plane``) whose
prelude (``prelude.js``) and built-in bootstrap (``bootstrap.js``) live beside the Python that
drives them."""

from __future__ import annotations

from ._kernel import BUILTIN_OPS, CONTEXTS_COUNTER, JS_OPS_COUNTER, Kernel
from ._outcome import ScriptError, ScriptInterrupted, ScriptResult
from ._permissions import PermissionPolicy
from ._plane import resolve_script

__all__ = ["BUILTIN_OPS", "CONTEXTS_COUNTER", "JS_OPS_COUNTER", "Kernel", "PermissionPolicy", "ScriptError",
           "ScriptInterrupted", "ScriptResult", "resolve_script"]
