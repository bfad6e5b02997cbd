"""The Datasette plugin: our pages (home, run, individual) as `register_routes` views.

Every view reads through Datasette's own read-only connections: `Database.execute_fn` runs
a read of the store (`evolve.store.web_queries`) on one and shapes its rows for the page
(`evolve.web.pages`), so the pages see each generation as soon as a running `evolve run`
commits it, and nothing here runs SQL or can write. Unknown or malformed ids (also ones
beyond SQLite's 64-bit range) get Datasette's error page with status 404 and one line saying
what was not found; a database too damaged to show gets one line too.

Every connection is bounded (`evolve.store.sql.prepare_served`) and every request passes the
checks of `evolve.web.guard` (Host, methods, paths, security headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.database import Database
from datasette.utils.asgi import NotFound, Request, Response

from evolve.store import DatabaseError, web_queries
from evolve.store.sql import prepare_served, too_big
from evolve.store.web_queries import Connection
from evolve.web import pages
from evolve.web.chart import fitness_svg
from evolve.web.guard import error_page, guard, not_found
from evolve.web.metadata import QUERIES
from evolve.web.render import fmt, tree_html

PLUGIN = "mlm-evolve"  # the key of our settings in the metadata's "plugins"
STATIC = "evolve.web"  # Datasette serves a plugin's static/ under its module name
POLL_SECONDS = 5  # home page refresh while runs go: a generation takes longer than that


def _database(datasette: Datasette) -> Database:
    config = datasette.plugin_config(PLUGIN) or {}
    name = config.get("database")
    if name is None or name not in datasette.databases:
        raise NotFound("no mlm-evolve database is being served")
    return datasette.get_database(name)


def _ours(datasette: Datasette) -> bool:
    """Whether this Datasette is `evolve serve`'s (another one is left alone)."""
    return bool((datasette.plugin_config(PLUGIN) or {}).get("database"))


INT64 = (-(2**63), 2**63 - 1)  # SQLite's INTEGER: a larger id is no id (and overflows)


def _int_id(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if INT64[0] <= value <= INT64[1] else None


async def _read(db: Database, fn: Callable[[Connection], Any]) -> Any:
    """`fn` on one of the database's read connections; a database that cannot be read as
    ours (damaged, or a value past the limits) raises PageError with one line."""
    try:
        return await db.execute_fn(fn)
    except (DatabaseError, MemoryError) as exc:
        raise PageError(too_big(exc) or f"this database cannot be shown here: {exc}") from exc


# What each page reads, run in one of Datasette's threads: the store's read, then its shaping
# (an ancestry of thousands of nodes is diffed word by word: not on the event loop).
def _runs(conn: Connection) -> list[dict[str, Any]]:
    return pages.runs(web_queries.runs(conn))


def _run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    return pages.run(web_queries.run(conn, run_id, pages.N_BEST))


def _ancestry(conn: Connection, individual_id: int) -> pages.Ancestry | None:
    return pages.ancestry(web_queries.ancestry(conn, individual_id, pages.MAX_ANCESTORS))


class PageError(Exception):
    """A page that cannot be made from this database; shown as one line (status 500)."""


def _view(
    fn: Callable[[Datasette, Request], Awaitable[Response]],
) -> Callable[[Datasette, Request], Awaitable[Response]]:
    async def view(datasette: Datasette, request: Request) -> Response:
        try:
            return await fn(datasette, request)
        except PageError as exc:
            return await error_page(datasette, request, str(exc), 500, "Cannot show this page")

    view.__name__ = fn.__name__
    return view


def _links(datasette: Datasette, db: Database) -> dict[str, Any]:
    return {
        "database": datasette.urls.database(db.name),
        "static": lambda path: datasette.urls.static_plugins(STATIC, path),
        "run": lambda run_id: datasette.urls.path(f"/-/evolve/runs/{run_id}"),
        "individual": lambda ind_id: datasette.urls.path(f"/-/evolve/individuals/{ind_id}"),
        "table": lambda table, **args: (
            datasette.urls.table(db.name, table)
            + ("?" + "&".join(f"{k}={v}" for k, v in args.items()) if args else "")
        ),
        "queries": [
            (name, q["title"], datasette.urls.table(db.name, name)) for name, q in QUERIES.items()
        ],
    }


async def _page(
    datasette: Datasette, request: Request, template: str, context: dict[str, Any]
) -> Response:
    html = await datasette.render_template(template, context, request=request)
    return Response.html(html)


@_view
async def home(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    runs = await _read(db, _runs)
    context = {
        "runs": runs,
        "links": _links(datasette, db),
        "fmt": fmt,
        "poll_seconds": POLL_SECONDS,
        "metadata_title": (datasette.metadata("title") or "mlm-evolve runs"),
    }
    return await _page(datasette, request, "evolve_home.html", context)


@_view
async def runs_json(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    runs = await _read(db, _runs)
    for run in runs:
        run["url"] = datasette.urls.path(f"/-/evolve/runs/{run['id']}")
        if run["best_id"] is not None:
            run["best_url"] = datasette.urls.path(f"/-/evolve/individuals/{run['best_id']}")
    return Response.json({"runs": runs})


@_view
async def run_page(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    raw = request.url_vars["run_id"]
    run_id = _int_id(raw)
    run = None if run_id is None else await _read(db, lambda c: _run(c, run_id))
    if run is None:
        return await not_found(datasette, request, f"No run {raw} in this database.")
    context = {
        "run": run,
        "chart": fitness_svg(run["generations"], f"Fitness per generation, run {run_id}"),
        "links": _links(datasette, db),
        "fmt": fmt,
        "refresh": run["status"] == "running",
        "poll_seconds": POLL_SECONDS * 2,
    }
    return await _page(datasette, request, "evolve_run.html", context)


@_view
async def individual_page(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    raw = request.url_vars["individual_id"]
    ind_id = _int_id(raw)
    tree = None if ind_id is None else await _read(db, lambda c: _ancestry(c, ind_id))
    if tree is None:
        return await not_found(datasette, request, f"No individual {raw} in this database.")
    links = _links(datasette, db)
    context = {
        "ind": tree.individual,
        "tree": tree,
        "root": tree.nodes[tree.root],
        "tree_html": tree_html(tree, datasette.urls.path("/-/evolve/individuals/")),
        "links": links,
        "fmt": fmt,
    }
    return await _page(datasette, request, "evolve_individual.html", context)


@hookimpl
def register_routes() -> list[tuple[str, Callable[..., Awaitable[Response]]]]:
    # Plugin routes are matched before Datasette's own, so "/" becomes our runs page; the
    # database's tables and SQL stay at /<database>.
    return [
        (r"^/$", home),
        (r"^/-/evolve/runs\.json$", runs_json),
        (r"^/-/evolve/runs/(?P<run_id>[^/]+)$", run_page),
        (r"^/-/evolve/individuals/(?P<individual_id>[^/]+)$", individual_page),
    ]


@hookimpl
def menu_links(datasette: Datasette) -> list[dict[str, str]]:
    return [{"href": datasette.urls.path("/"), "label": "mlm-evolve runs"}]


@hookimpl
def prepare_connection(conn: Connection, datasette: Datasette) -> None:
    """Bound every connection of `evolve serve` (`evolve.store.sql.prepare_served`)."""
    if _ours(datasette):
        prepare_served(conn)


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Callable[[Any], Any]:
    """Host, methods, paths and security headers (`evolve.web.guard`).

    Only GET and HEAD are answered: Datasette 0.65 has no write API, but POST reaches views
    (canned queries, messages), and a POST to a read-only canned query crashes with a 500 in
    0.65.5; refusing other methods up front keeps the server plainly read-only.
    """

    def wrap(app: Any) -> Any:
        if not _ours(datasette):
            return app  # a Datasette that is not `evolve serve`: leave it alone
        allowed = (datasette.plugin_config(PLUGIN) or {}).get("allowed_hosts") or []
        return guard(datasette, app, allowed)

    return wrap
