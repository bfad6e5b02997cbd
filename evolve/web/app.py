"""Build and serve the Datasette app for one run database.

`check_database` (the store's) refuses what is not ours with one-line errors before any
server starts; `build_datasette` registers our plugin from code and opens the file as a
*mutable* Datasette database, which Datasette reads through `mode=ro` connections: SQLite
refuses writes on them, yet each query sees the latest commit, so pages follow a running
`evolve run` (an `immutable` database would be read as a frozen snapshot and could read torn
pages while a run writes). Datasette 0.65 has no write API; the only way it writes is a
canned query marked `write: true`, and ours (the store's, `evolve.store.web_queries`) are all
SELECTs.

The database is served through `BoundedDatabase` (SQL past a size limit is an SQL error, see
`evolve.web.limits`), and `serve` caps SQLite's memory in the server process. Requests for
another Host than localhost, an IP address or a name the user allowed are refused
(`evolve.web.guard`).
"""

from __future__ import annotations

import errno
import socket
import webbrowser
from collections.abc import Callable, Sequence
from pathlib import Path

from datasette.app import Datasette
from datasette.plugins import pm

import evolve.web
from evolve.store import check_database
from evolve.store.sql import limit_heap
from evolve.web import guard
from evolve.web.limits import BoundedDatabase
from evolve.web.metadata import metadata
from evolve.web.plugin import PLUGIN
from scoring.errors import UserError

SETTINGS = {
    # Recursive ancestry queries over a long run take more than Datasette's 1 s default.
    "sql_time_limit_ms": 5000,
}


def register_plugin() -> None:
    """Register this package with Datasette's plugin manager (once per process)."""
    if pm.get_plugin(PLUGIN) is None:
        pm.register(evolve.web, name=PLUGIN)


def build_datasette(path: Path, allowed_hosts: Sequence[str] = ()) -> Datasette:
    """A Datasette on the run database at `path`, with our metadata, pages and assets;
    requests are answered for localhost, IP addresses and `allowed_hosts`."""
    register_plugin()
    name = path.stem
    ds = Datasette(files=[str(path)], metadata=metadata(name), settings=SETTINGS)
    served = [db for db in ds.databases.values() if db.path == str(path)]
    if [db.name for db in served] != [name]:  # Datasette renamed it (a clash with its own
        name = served[0].name  # names): follow it
    ds._metadata_local = metadata(name, allowed_hosts=list(allowed_hosts))
    # The same database, as Datasette made it, but with SQL size errors as SQL errors.
    bounded = BoundedDatabase(ds, str(path), is_mutable=True)
    ds.remove_database(name)
    ds.add_database(bounded, name=name, route=served[0].route)
    return ds


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port; UserError (one line) if that cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not blocked by TIME_WAIT
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use; choose another with --port") from exc
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def serve(
    path: Path,
    host: str,
    port: int,
    open_browser: bool = False,
    on_ready: Callable[[str], None] | None = None,
    allowed_hosts: Sequence[str] = (),
) -> None:
    """Serve the database at `path` until Ctrl-C; bad input raises UserError first.

    Requests are answered for localhost, IP addresses, `host` when it is a name, and
    `allowed_hosts` (`evolve.web.guard`)."""
    import uvicorn  # a Datasette dependency; imported here so the checks above stay fast

    check_database(path)
    limit_heap()  # this process serves queries: SQLite's memory is capped for all of them
    ds = build_datasette(path, allowed_hosts=guard.allowed_hosts(host, allowed_hosts))
    sock = listen(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    if on_ready is not None:
        on_ready(url)
    if open_browser:
        webbrowser.open(url)  # the socket already listens: the browser's request waits for us
    server = uvicorn.Server(uvicorn.Config(ds.app(), log_level="warning", lifespan="on"))
    server.run(sockets=[sock])
