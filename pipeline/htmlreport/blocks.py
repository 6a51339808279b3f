"""Small HTML pieces the page is made of: panels, tables, cells, headline figures, colours."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import fmt

OK, FAILED, FAILED_ATTEMPT, BLUE, GREY = "#2f9e44", "#e03131", "#ffc9c9", "#1c7ed6", "#868e96"
ERROR_COLORS = {"rate_limited": "#f08c00", "server_error": "#c2255c", "timeout": "#7048e8"}


def figure(key: str, value: Any, shown: str, label: str, cls: str = "") -> str:
    """A headline number: ``shown`` to people, the exact ``value`` in ``data-value`` for machines."""
    raw = "" if value is None else value
    return (
        f'<div class="fig {cls}" data-figure="{key}" data-value="{fmt.esc(raw)}">'
        f"<b>{fmt.esc(shown)}</b><span>{fmt.esc(label)}</span></div>"
    )


def card(title: str, body: str, note: str = "", wide: bool = False) -> str:
    """A titled panel; ``wide`` ones span the page."""
    sub = f'<p class="sub">{fmt.esc(note)}</p>' if note else ""
    return (
        f'<figure class="card{" wide" if wide else ""}"><figcaption>{fmt.esc(title)}</figcaption>{sub}{body}</figure>'
    )


def empty(text: str) -> str:
    """What a panel says instead of an empty chart."""
    return f'<p class="empty">{fmt.esc(text)}</p>'


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table of cells that are already HTML (see :func:`cell`)."""
    head = "".join(f"<th>{fmt.esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def cell(value: Any, n: int = fmt.CLIP) -> str:
    """Escaped, clipped text; the whole value in the title when clipped."""
    text = "" if value is None else str(value)
    if len(text) <= n:
        return fmt.esc(text)
    return f'<span title="{fmt.esc(text)}">{fmt.esc(fmt.clip(text, n))}</span>'
