"""``krepis serve``: the read-only web console (the ``web`` extra)."""
from __future__ import annotations

import importlib.util

import click

from .._errors import ValidationError
from ..journal import SovereignJournal
from ._common import _READ_POLICY, _storage, _storage_option, cli
from ._select import _check_history, _history_options


@cli.command()
@click.option("--listen", default="127.0.0.1:8088", show_default=True, metavar="HOST:PORT",
              help="Address to serve on; anything but loopback needs --token (port 0: any free port).")
@click.option("--token", envvar="KREPIS_SERVE_TOKEN", default=None, metavar="TOKEN",
              help="Every visitor must present it (open the console once as URL/?token=TOKEN); "
                   "at least 16 characters (env: KREPIS_SERVE_TOKEN).")
@_history_options
@click.option("--max-live", type=click.IntRange(min=1, max=10_000), default=100, show_default=True,
              metavar="N", help="Live-mode connections at most (browser tabs).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="Serve HTTPS with this certificate chain (PEM) and --tls-key.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), default=None, metavar="FILE",
              help="The private key (PEM) of --tls-cert.")
@click.option("--access-log", is_flag=True, help="One line per request on stderr (paths only, no query).")
@_storage_option
@click.pass_context
def serve(ctx: click.Context, listen: str, token: str | None, archive: str | None, live_only: bool,
          max_live: int, tls_cert: str | None, tls_key: str | None, access_log: bool) -> None:
    """Serve a read-only web console of the journal.

    The trail with filters, paging and a live mode, each request's timeline, per-op figures and
    plots, the counters, and verification of entries against the signed checkpoint in the
    browser. Ctrl-C stops it.

    Listens on loopback by default; any other address needs --token (or KREPIS_SERVE_TOKEN),
    which is never printed. Needs the web extra: pip install 'krepis-journal[web]'.
    See docs/web.md.
    """
    _check_history(archive, live_only)
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"krepis serve needs the web extra ({', '.join(missing)} not installed): "
                                   "pip install 'krepis-journal[web]'")
    from ..web import Limits, parse_listen
    from ..web import serve as run
    from ..web._server import check_token

    from_env = ctx.get_parameter_source("token") is click.core.ParameterSource.ENVIRONMENT
    source = "KREPIS_SERVE_TOKEN" if from_env else "--token"
    try:
        where = parse_listen(listen)
        check_token(where, token or None, source)
    except ValidationError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen" if "token" not in str(exc) else "--token") \
            from None
    journal = SovereignJournal(_storage(ctx), create=False, flush=_READ_POLICY, retention="off")
    try:
        run(journal, listen, token=token or None, archive=archive, live_only=live_only,
            limits=Limits(live_max=max_live), access_log=access_log, tls_cert=tls_cert, tls_key=tls_key)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    finally:
        journal.close()
