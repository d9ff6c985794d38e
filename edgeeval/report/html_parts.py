"""The pieces report.html is built of: sections, sortable tables, cells, anchors."""

from __future__ import annotations

import hashlib
import math
import re
from html import escape

from edgeeval.report.views import fmt

NUMERIC = ' class="num"'
_SLUG_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def slug(*names: str) -> str:
    """An id for an anchor; a short hash keeps names that differ only in odd characters apart."""
    joined = "--".join(names)
    clean = _SLUG_UNSAFE.sub("-", joined)
    return clean if clean == joined else f"{clean}-{hashlib.sha1(joined.encode()).hexdigest()[:6]}"


def section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape(title)}</h2>\n{content}\n</section>'


def table(header: list[tuple[str, bool]], rows: list[list[str]], cls: str = "sortable") -> str:
    """header: (label, numeric); rows hold ready-made <td> elements."""
    sortable = cls == "sortable"
    head = "".join(f'<th scope="col"{NUMERIC if numeric else ""}>'
                   + (f'<button type="button">{escape(label)}</button>' if sortable else escape(label)) + "</th>"
                   for label, numeric in header)
    body = "\n".join("<tr>" + "".join(cells) + "</tr>" for cells in rows)
    return (f'<div class="table-wrap"><table class="{cls}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            "</tbody>\n</table></div>")


def td(text, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape(str(text))}</td>"


def num(value, shown: str | None = None) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    sort = "" if missing else repr(float(value))
    text = shown if shown is not None else fmt(value)
    return f'<td class="num" data-v="{sort}">{escape(minus(text))}</td>'


def minus(text: str) -> str:
    return text.replace("-", "−")
