"""HTML of the ancestry tree, built in Python from `pages.walk` events.

A tree can be as deep as the run has generations; Jinja's recursive macros would use a
dozen Python frames a level, so the nested lists are written here without recursion and
the template only places the result. Parent lists below `OPEN_DEPTH` start collapsed
(`<details>`), so a deep tree opens at the recent edits and unfolds on demand.

Every value read from the database goes through `escape` here, whatever its declared type:
a run database is a file people share, and SQLite stores text in an INTEGER column of a
crafted file (`span_start = '<img src=x onerror=...>'` came back live before issue 25).
"""

from __future__ import annotations

from markupsafe import Markup, escape

from evolve.web.pages import Ancestry, Node, walk

OPEN_DEPTH = 3  # parent lists open for the individual and its two nearest edit generations


def fmt(value: object, digits: int = 4, sign: bool = False) -> str:
    """A number for a page: fixed digits, '-' for none; anything else (a crafted file's
    text in a REAL column) as escaped text."""
    if value is None:
        return "-"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(escape(value))
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _gain_html(gain: float | None) -> str:
    if gain is None:
        return ""
    cls = "pos" if gain > 1e-12 else ("neg" if gain < -1e-12 else "zero")
    return f' · gain <span class="gain {cls}">{fmt(gain, sign=True)}</span>'


def _kept_html(node: Node, link: str) -> str:
    if not node.kept_as:
        return ""
    shown = node.kept_as[:6]
    items = ", ".join(
        f'<a href="{link}{escape(k["id"])}">#{escape(k["id"])}</a> '
        f"(gen {escape(k['generation'])} {escape(k['op'])})"
        for k in shown
    )
    more = f" and {len(node.kept_as) - len(shown)} more" if len(node.kept_as) > len(shown) else ""
    return f'<div class="kept">kept unchanged as {items}{more}</div>'


def _header(node: Node, link: str) -> str:
    o = node.origin
    span = ""
    if o.get("span_start") is not None:
        span = f" · tokens [{escape(o['span_start'])}, {escape(o['span_end'])})"
    return (
        f'<div class="node-head"><a class="node-link" href="{link}{escape(o["id"])}">'
        f"#{escape(o['id'])}</a> gen {escape(o['generation'])} · "
        f'<span class="op">{escape(o["op"])}</span> · fitness '
        f"{fmt(o['fitness'])}{_gain_html(node.gain)}{span}</div>"
    )


def tree_html(tree: Ancestry, link: str) -> Markup:
    """The ancestry as nested lists; `link` is the URL prefix of an individual's page."""
    out: list[str] = ['<ul class="tree" id="ancestry">']
    for event, node_id, depth, role in walk(tree):
        node = tree.nodes[node_id]
        role_cls = f" role-{role}" if role else ""
        if event == "ref":
            o = node.origin
            out.append(
                f'<li class="node ref{role_cls}"><a href="#node-{escape(node_id)}">'
                f"#{escape(node_id)}</a> (gen {escape(o['generation'])}, {escape(o['op'])}): "
                "shown above</li>"
            )
        elif event == "open":
            out.append(f'<li class="node kind-{node.kind}{role_cls}" id="node-{escape(node_id)}">')
            out.append(_header(node, link))
            out.append(_kept_html(node, link))
            out.append(f'<div class="text">{node.html}</div>')
            if node.missing_parents:
                out.append(
                    f'<div class="more">{node.missing_parents} parent(s) not read: '
                    f'open <a href="{link}{escape(node_id)}">#{escape(node_id)}</a> for its '
                    "own tree</div>"
                )
            if node.parents:
                label = "parent" if len(node.parents) == 1 else "parents"
                opened = " open" if depth < OPEN_DEPTH else ""
                out.append(
                    f"<details{opened}><summary>{len(node.parents)} {label}</summary>"
                    '<ul class="tree">'
                )
        else:  # close
            if node.parents:
                out.append("</ul></details>")
            out.append("</li>")
    out.append("</ul>")
    return Markup("".join(out))
