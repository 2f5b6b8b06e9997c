"""``krepis serve``: the read-only web console (the ``web`` extra)."""
from __future__ import annotations

import errno
import importlib.util
import os
import stat

import click

from .._errors import ValidationError
from ..journal import SovereignJournal
from ._common import _READ_POLICY, _storage, _storage_option, cli
from ._select import _check_history, _history_options

#: the longest token file read
_TOKEN_FILE_BYTES = 4096


def read_token_file(path: str) -> str:
    """The token in ``path``, whitespace around it stripped: read once, through a descriptor
    opened without following a link, and refused (a :class:`click.BadParameter` naming the
    path and the rule) unless it is a regular file that neither group nor others may read or
    write, of at most 4 KiB of UTF-8, holding a token."""
    def refuse(rule: str) -> click.BadParameter:
        return click.BadParameter(f"{path!r}: {rule}", param_hint="--token-file")

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse("is a symbolic link; give the file itself") from None
        raise refuse(f"cannot be read: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise refuse("is not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise refuse(f"is readable or writable by group or others (mode {mode:04o}); chmod 600 it")
        data = os.read(fd, _TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _TOKEN_FILE_BYTES:
        raise refuse(f"is longer than {_TOKEN_FILE_BYTES} bytes: it holds one token")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise refuse("is not UTF-8 text") from None
    if not token:
        raise refuse("is empty: it must hold the token")
    return token


@cli.command()
@click.option("--listen", default="127.0.0.1:8088", show_default=True, metavar="HOST:PORT",
              help="Address to serve on; anything but loopback needs --token (port 0: any free port).")
@click.option("--token", envvar="KREPIS_SERVE_TOKEN", default=None, metavar="TOKEN",
              help="Every visitor must present it (open the console once as URL/?token=TOKEN); "
                   "at least 16 characters (env: KREPIS_SERVE_TOKEN).")
@click.option("--token-file", default=None, metavar="FILE",
              help="Read the token from FILE (a regular file, not a link, readable by its owner only; "
                   "whitespace around it ignored): kept out of the process list, unlike --token.")
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
def serve(ctx: click.Context, listen: str, token: str | None, token_file: str | None,
          archive: str | None, live_only: bool, max_live: int, tls_cert: str | None, tls_key: str | None,
          access_log: bool) -> None:
    """Serve a read-only web console of the journal.

    The trail with filters, paging and a live mode, each request's timeline, per-op figures and
    plots, the counters, and verification of entries against the signed checkpoint in the
    browser. Ctrl-C stops it.

    Listens on loopback by default; any other address needs a token — from KREPIS_SERVE_TOKEN
    or --token-file (a --token on the command line is visible in the process list) — which is
    never printed. Needs the web extra: pip install 'krepis-journal[web]'. See docs/web.md.
    """
    _check_history(archive, live_only)
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"krepis serve needs the web extra ({', '.join(missing)} not installed): "
                                   "pip install 'krepis-journal[web]'")
    from ..web import Limits, parse_listen
    from ..web import serve as run
    from ..web._server import check_token

    token_source = ctx.get_parameter_source("token")
    from_env = token_source is click.core.ParameterSource.ENVIRONMENT
    source = "KREPIS_SERVE_TOKEN" if from_env else "--token"
    if token_file is not None:
        if token:
            raise click.BadParameter(f"give the token once: {source} or --token-file, not both",
                                     param_hint="--token-file")
        token, source = read_token_file(token_file), f"--token-file {token_file}"
    elif token and token_source is click.core.ParameterSource.COMMANDLINE:
        click.echo("krepis serve: warning: --token on the command line can be read by every user of this "
                   "machine (the process list); set KREPIS_SERVE_TOKEN or use --token-file FILE", err=True)
    try:
        where = parse_listen(listen)
        check_token(where, token or None, source)
    except ValidationError as exc:
        hint = "--listen" if "token" not in str(exc) else "--token-file" if token_file else "--token"
        raise click.BadParameter(str(exc), param_hint=hint) from None
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
