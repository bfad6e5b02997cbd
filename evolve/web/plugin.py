"""The Datasette plugin: our pages (home, run, individual) as `register_routes` views.

Every view reads through Datasette's own read-only connections (`Database.execute_fn`
runs a function of `evolve.web.queries` on one), so the pages see each generation as soon
as a running `evolve run` commits it, and nothing here can write. Unknown or malformed ids
get Datasette's error page with status 404 and one line saying what was not found.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from datasette import hookimpl
from datasette.app import Datasette
from datasette.database import Database
from datasette.utils.asgi import NotFound, Request, Response

from evolve.web import queries
from evolve.web.chart import fitness_svg
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


async def not_found(datasette: Datasette, request: Request, message: str) -> Response:
    """Datasette's error page with status 404 and one clear line.

    Rendered here rather than raised as NotFound: Datasette prints a full traceback to the
    server's console for every exception a view raises, which a mistyped id does not deserve.
    """
    context = {"error": message, "status": 404, "title": "Not found", "ok": False}
    html = await datasette.render_template("error.html", context, request=request)
    return Response.html(html, status=404)


def _int_id(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


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


async def home(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    runs = await db.execute_fn(queries.runs)
    context = {
        "runs": runs,
        "links": _links(datasette, db),
        "fmt": fmt,
        "poll_seconds": POLL_SECONDS,
        "metadata_title": (datasette.metadata("title") or "mlm-evolve runs"),
    }
    return await _page(datasette, request, "evolve_home.html", context)


async def runs_json(datasette: Datasette) -> Response:
    db = _database(datasette)
    runs = await db.execute_fn(queries.runs)
    for run in runs:
        run["url"] = datasette.urls.path(f"/-/evolve/runs/{run['id']}")
        if run["best_id"] is not None:
            run["best_url"] = datasette.urls.path(f"/-/evolve/individuals/{run['best_id']}")
    return Response.json({"runs": runs})


async def run_page(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    raw = request.url_vars["run_id"]
    run_id = _int_id(raw)
    run = None if run_id is None else await db.execute_fn(lambda conn: queries.run(conn, run_id))
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


async def individual_page(datasette: Datasette, request: Request) -> Response:
    db = _database(datasette)
    raw = request.url_vars["individual_id"]
    ind_id = _int_id(raw)
    tree = None if ind_id is None else await db.execute_fn(lambda c: queries.ancestry(c, ind_id))
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


READ_METHODS = ("GET", "HEAD")


@hookimpl
def asgi_wrapper(datasette: Datasette) -> Callable[[Any], Any]:
    """Answer every request but GET and HEAD with 405: the browser only reads.

    Datasette 0.65 has no write API, but POST reaches views (canned queries, messages), and
    a POST to a read-only canned query crashes with a 500 in 0.65.5; refusing other methods
    up front keeps the server plainly read-only.
    """

    def wrap(app: Any) -> Any:
        if not (datasette.plugin_config(PLUGIN) or {}).get("database"):
            return app  # a Datasette that is not `evolve serve`: leave it alone

        async def read_only(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] not in READ_METHODS:
                body = b"read-only: evolve serve answers GET requests only\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 405,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"allow", b"GET, HEAD"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
            await app(scope, receive, send)

        return read_only

    return wrap
