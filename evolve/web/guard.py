"""What `evolve serve` checks and adds at the HTTP level, around Datasette (an ASGI wrapper).

- **Host**. A page on another site can make a browser send requests to a server on the
  user's own machine by pointing a DNS name at 127.0.0.1 ("DNS rebinding"); the requests
  then carry that name in their Host header. So a request is answered only when its Host is
  `localhost` (or a `*.localhost` name, RFC 6761), an IP address (a rebinding page cannot
  make the browser send one: its Host is the page's own name), or a name the user allowed
  (`--host NAME`, `--allow-host NAME`; `--allow-host '*'` turns the check off). Others get
  400 with one line. Jupyter and Vite's dev server decide the same way.
- **Methods**. Only GET and HEAD: the browser only reads (405 otherwise).
- **Paths**. A path with a `.` or `..` segment (also percent-encoded) is never a page: 404
  at once. So is a path that matches none of Datasette's routes: Datasette 0.65.5 answered
  those with a 500 from its own 404 handler.
- **Headers** on every response: a Content-Security-Policy that allows scripts, styles,
  images and requests only from this server (the inline scripts of Datasette's own
  templates by their SHA-256), `frame-ancestors 'none'` with X-Frame-Options DENY,
  X-Content-Type-Options nosniff, Referrer-Policy no-referrer (query URLs hold SQL) and
  Cross-Origin-Resource-Policy same-origin. Markup from a crafted database is escaped in
  the pages; the policy is the second line of defence should something slip through.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import datasette
from datasette.app import Datasette
from datasette.utils import resolve_routes
from datasette.utils.asgi import Request, Response

READ_METHODS = ("GET", "HEAD")
ANY_HOST = "*"  # `--allow-host '*'`: answer every Host (behind a proxy that checks it)

Scope = dict[str, Any]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[Scope, Any, Send], Awaitable[None]]


# -- Host -------------------------------------------------------------------------------------


def host_name(header: str) -> str:
    """The name or address in a Host header, without port, brackets or a final dot."""
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8001
        return header[1 : header.find("]")] if "]" in header else header
    name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def host_allowed(header: str | None, allowed: Collection[str]) -> bool:
    """Whether a request with this Host header is answered (see the module doc). A request
    without one (HTTP/1.0) is: browsers always send it, so no rebinding page can omit it."""
    if header is None or ANY_HOST in allowed:
        return True
    name = host_name(header)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in {host_name(a) for a in allowed}


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> list[str]:
    """The names to answer besides localhost and IP addresses: `--host` when it is a name,
    and every `--allow-host`."""
    names = [host] if host and not _is_address(host) else []
    return [*names, *extra]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


# -- headers ------------------------------------------------------------------------------------

_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
# table.html: `<script>DATASETTE_ALLOW_FACET = {{ datasette_allow_facet }};</script>`, whose
# value is "true" or "false" (the allow_facet setting).
_TEMPLATED = {"{{ datasette_allow_facet }}": ("true", "false")}


def inline_script_hashes(templates: Path | None = None) -> list[str]:
    """CSP sources ('sha256-...') for the inline scripts of Datasette's templates: each
    script that is plain text, or whose only template value is one of `_TEMPLATED`."""
    folder = templates or Path(datasette.__file__).parent / "templates"
    sources: set[str] = set()
    for template in sorted(folder.glob("*.html")):
        for body in _INLINE_SCRIPT.findall(template.read_text(encoding="utf-8")):
            variants = [body]
            for marker, values in _TEMPLATED.items():
                if marker in body:
                    variants = [v.replace(marker, value) for v in variants for value in values]
            for text in variants:
                if "{{" in text or "{%" in text:
                    continue  # made per request (a plugin's script): not ours to allow
                digest = hashlib.sha256(text.encode("utf-8")).digest()
                sources.add(f"'sha256-{base64.b64encode(digest).decode('ascii')}'")
    return sorted(sources)


def content_security_policy() -> str:
    scripts = " ".join(["'self'", *inline_script_hashes()])
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",  # Datasette's templates use style attributes
            "img-src 'self' data:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers() -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", content_security_policy().encode("ascii")),
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-resource-policy", b"same-origin"),
    ]


# -- paths --------------------------------------------------------------------------------------


def has_dot_segment(path: str) -> bool:
    """Whether a raw request path has a `.` or `..` segment, percent-encoded or not."""
    return any(urllib.parse.unquote(part) in (".", "..") for part in path.split("/"))


async def not_found(datasette: Datasette, request: Request, message: str) -> Response:
    """Datasette's error page with status 404 and one clear line.

    Rendered here rather than raised as NotFound: Datasette prints a full traceback to the
    server's console for every exception a view raises, which a mistyped id does not deserve.
    """
    return await error_page(datasette, request, message, 404, "Not found")


async def error_page(
    datasette: Datasette, request: Request, message: str, status: int, title: str
) -> Response:
    """Datasette's error page with `status` and one line, without a traceback anywhere."""
    await datasette.invoke_startup()  # a no-op once Datasette has started (a first request)
    context = {"error": message, "status": status, "title": title, "ok": False}
    html = await datasette.render_template("error.html", context, request=request)
    return Response.html(html, status=status)


# -- the wrapper --------------------------------------------------------------------------------


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": text.encode("utf-8")})


def guard(datasette: Datasette, app: App, allowed: Collection[str]) -> App:
    """`app` behind the checks of the module doc, with the security headers added."""
    extra = security_headers()
    routes = datasette._routes()  # the router's own table (its regexes and views)

    async def guarded(scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {name.lower() for name, _ in message.get("headers", [])}
                added = [(k, v) for k, v in extra if k not in have]
                message = dict(message, headers=[*message.get("headers", []), *added])
            await send(message)

        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if not host_allowed(None if host is None else host.decode("latin-1"), allowed):
            shown = host.decode("latin-1") if host is not None else ""
            await _plain(
                send_secured,
                400,
                f"bad Host header {shown!r}: evolve serve answers localhost, IP addresses and "
                "the names given with --host or --allow-host\n",
                [],
            )
            return
        if scope["method"] not in READ_METHODS:
            await _plain(
                send_secured,
                405,
                "read-only: evolve serve answers GET requests only\n",
                [(b"allow", b"GET, HEAD")],
            )
            return
        raw = scope.get("raw_path")
        path = (raw.decode("latin-1") if raw else scope["path"]).partition("?")[0]
        unrouted = (
            resolve_routes(routes, path)[0] is None and "%" not in path and not path.endswith("/")
        )
        if has_dot_segment(path) or unrouted:
            # Outside Datasette's CSRF layer, which gives pages their (here unused) token.
            request = Request(dict(scope, csrftoken=lambda: ""), receive)
            page = await not_found(datasette, request, "No page at this address.")
            await page.asgi_send(send_secured)
            return
        await app(scope, receive, send_secured)

    return guarded
