"""Number, duration and text formatting shared by the charts and the page."""

from __future__ import annotations

import html
import math
from typing import Any

CLIP = 120  # characters of a URL or message shown in a table cell; the full text is in its title


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` ('' for None), quotes included (safe in attributes)."""
    return "" if value is None else html.escape(str(value), quote=True)


def clip(text: Any, n: int = CLIP) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def count(n: int | float | None) -> str:
    """1234567 -> '1,234,567'."""
    return "–" if n is None else f"{n:,.0f}"


def short(x: float) -> str:
    """Axis labels: 950, 1.5k, 2.3M, 0.25."""
    a = abs(x)
    if a >= 1e9:
        return f"{x / 1e9:.3g}G"
    if a >= 1e6:
        return f"{x / 1e6:.3g}M"
    if a >= 1e4:
        return f"{x / 1e3:.3g}k"
    if a >= 100 or x == int(x):
        return f"{x:.0f}"
    return f"{x:.3g}"


def plural(n: int, word: str) -> str:
    """'1 row', '2 rows', '1,000 rows'."""
    return f"{count(n)} {word}{'' if n == 1 else 's'}"


def money(x: float | None) -> str:
    if x is None:
        return "–"
    return f"${x:,.2f}" if abs(x) >= 100 else f"${x:,.4f}"


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1000:.2f} s" if x >= 10_000 else f"{x:,.0f} ms"


def duration(seconds: float | None) -> str:
    """3.2 -> '3.2 s', 754 -> '12 min 34 s', 26000 -> '7 h 13 min'."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    if m < 60:
        return f"{m} min {s} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def clock(seconds: float) -> str:
    """Axis labels for seconds since the start: '45s', '12m', '1h30'."""
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    h, m = divmod(int(seconds) // 60, 60)
    return f"{h}h{m:02d}" if m else f"{h}h"


def percent(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def signed(x: float | None, kind: str = "count") -> str:
    """A delta with its sign: '+12', '-$0.0100', '+1.50%'."""
    if x is None:
        return "–"
    sign = "+" if x >= 0 else "-"
    body = {"count": count, "money": money, "percent": percent}[kind](abs(x))
    return sign + body


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k not below ``raw`` (> 0)."""
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def ticks(hi: float, n: int = 5, *, time: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``hi`` (about ``n`` of them); seconds on a time axis."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / n
    step = next((float(s) for s in _TIME_STEPS if s >= raw), nice_step(raw)) if time and raw >= 1 else nice_step(raw)
    top = math.ceil(hi / step - 1e-9) * step
    return [i * step for i in range(round(top / step) + 1)]
