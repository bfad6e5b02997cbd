"""`evolve serve`: run history in the browser, on Datasette with our plugin.

This package *is* the Datasette plugin (its hooks are re-exported here, and Datasette finds
the `templates/` and `static/` folders next to this file), registered from code by
`evolve.web.app.build_datasette`, so no separate install step is needed. It is a consumer
of the store like `evolve.experiments`: it reads run databases through the store's reads and
canned queries (`evolve.store.web_queries`) on Datasette's read-only connections, runs no
SQL of its own and never writes.
"""

from evolve.web.plugin import asgi_wrapper, menu_links, prepare_connection, register_routes

__all__ = ["asgi_wrapper", "menu_links", "prepare_connection", "register_routes"]
