"""The web console (``krepis serve``): a read-only view of a journal in the browser — the trail
with live updates, one request's timeline, per-op figures and plots, the counters, and
verification of entries against the signed checkpoint done in the visitor's browser.

Needs the ``web`` extra (``pip install 'krepis-journal[web]'``: Starlette and uvicorn).
:func:`create_app` gives the ASGI application to mount in an application of your own;
:func:`serve` runs it. See ``docs/web.md``.
"""

from __future__ import annotations

from ._app import SESSION_COOKIE, ConsoleApp, create_app
from ._server import MIN_TOKEN_CHARS, Listen, parse_listen, serve
from ._views import Limits

__all__ = ["MIN_TOKEN_CHARS", "SESSION_COOKIE", "ConsoleApp", "Limits", "Listen", "create_app",
           "parse_listen", "serve"]
