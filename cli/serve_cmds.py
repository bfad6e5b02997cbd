"""`evolve serve`: browse a run database in Datasette, with the lineage pages of evolve.web."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import db_option, resolve_db

DEFAULT_PORT = 8001  # Datasette's own default, so its docs' URLs work as written


@click.command()
@db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 0.0.0.0 shows the runs to your whole network",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_PORT,
    show_default=True,
    help="Port to listen on (0: any free port)",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Also answer requests for this host name (repeatable; '*' for any). localhost, IP "
    "addresses and --host are always answered; other names are refused against DNS "
    "rebinding.",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the home page in a browser")
def serve(
    db_path: Path | None,
    host: str,
    port: int,
    allow_hosts: tuple[str, ...],
    open_browser: bool,
) -> None:
    """Browse runs in a web browser: run pages with a fitness chart, each individual's
    ancestry with its edits marked, and every table and canned query of Datasette.

    Read-only: the browser cannot change the database, and pages follow a run that is
    still writing to it. Ctrl-C stops the server.
    """
    from evolve.web.app import serve as serve_app  # imports Datasette only for this command

    path = resolve_db(db_path)

    def ready(url: str) -> None:
        click.echo(f"Serving {path} at {url} (read-only; Ctrl-C stops)", err=True)

    serve_app(
        path, host, port, open_browser=open_browser, on_ready=ready, allowed_hosts=allow_hosts
    )


COMMANDS = [serve]
