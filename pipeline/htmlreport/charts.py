"""Charts as inline SVG strings: no script, no font or style fetched, readable in a mail client.

Two kinds cover the page: :func:`xy_chart` (stacked bars over equal bins, lines and
vertical markers on a numeric x axis: the time charts and the latency histogram) and
:func:`bar_list` (labelled horizontal bars: attempts, error types, groups). Every
drawn datum is an element of class ``mark`` with a ``<title>`` (the browser shows
it on hover), which is also what the tests count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .fmt import esc, short, ticks

W, H = 560, 220
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 10, 30
PLOT_W, PLOT_H = W - LEFT - RIGHT, H - TOP - BOTTOM
AXIS = "#8a8f98"


@dataclass(frozen=True)
class Bars:
    """One layer of stacked bars: one value per equal bin."""

    label: str
    color: str
    values: Sequence[float]


@dataclass(frozen=True)
class Line:
    """A polyline of (x, y) points."""

    label: str
    color: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` with a label on top (p50, p95, p99)."""

    label: str
    x: float
    color: str


@dataclass(frozen=True)
class Axis:
    """The x range and how its tick labels read."""

    lo: float
    hi: float
    fmt: Callable[[float], str] = short
    time: bool = False


def _svg(name: str, label: str, body: list[str], height: int = H) -> str:
    return (
        f'<svg class="chart" data-chart="{esc(name)}" viewBox="0 0 {W} {height}" width="{W}" height="{height}" '
        f'role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">' + "".join(body) + "</svg>"
    )


def legend(items: Sequence[tuple[str, str]]) -> str:
    """An HTML legend: (label, colour) pairs."""
    spans = "".join(f'<span><i style="background:{c}"></i>{esc(t)}</span>' for t, c in items)
    return f'<div class="legend">{spans}</div>'


def xy_chart(
    name: str,
    label: str,
    x: Axis,
    *,
    bars: Sequence[Bars] = (),
    lines: Sequence[Line] = (),
    markers: Sequence[Marker] = (),
    y_fmt: Callable[[float], str] = short,
) -> str:
    """Stacked bars over equal bins of ``x``, lines and markers, on a zero-based y axis."""
    bins = max((len(b.values) for b in bars), default=0)
    stack_top = [sum(b.values[i] for b in bars) for i in range(bins)]
    y_hi = max([*stack_top, *(y for ln in lines for _, y in ln.points), 0.0])
    y_ticks = ticks(y_hi * (1.25 if markers else 1.0))  # headroom for the marker labels
    y_top = y_ticks[-1]
    span = (x.hi - x.lo) or 1.0

    def px(v: float) -> float:
        return LEFT + (v - x.lo) / span * PLOT_W

    def py(v: float) -> float:
        return TOP + PLOT_H - v / y_top * PLOT_H

    body = _grid(y_ticks, py, y_fmt) + _x_axis(x, px)
    body += _bar_marks(bars, x, px, py, bins)
    for ln in lines:
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in ln.points)
        dash = ' stroke-dasharray="5 3"' if ln.dashed else ""
        body.append(
            f'<polyline class="mark" points="{pts}" fill="none" stroke="{ln.color}" stroke-width="1.6"'
            f"{dash}><title>{esc(ln.label)}</title></polyline>"
        )
    body += _markers(markers, x, px)
    return _svg(name, label, body)


def _markers(markers: Sequence[Marker], x: Axis, px: Callable[[float], float]) -> list[str]:
    """Dashed vertical lines; labels that would overlap the previous one go a line lower."""
    out, last_x, level = [], -1e9, 0
    for m in sorted(markers, key=lambda m: m.x):
        xm = px(min(max(m.x, x.lo), x.hi))
        level = level + 1 if xm - last_x < 30 else 0
        last_x = xm
        y = TOP + 9 + 11 * level
        out.append(
            f'<line class="mark" x1="{xm:.1f}" x2="{xm:.1f}" y1="{y + 3}" y2="{TOP + PLOT_H}" stroke="{m.color}" '
            f'stroke-width="1.5" stroke-dasharray="4 2"><title>{esc(m.label)}</title></line>'
            f'<text x="{xm:.1f}" y="{y}" text-anchor="middle" fill="{m.color}">{esc(m.label.split()[0])}</text>'
        )
    return out


def _grid(y_ticks: list[float], py: Callable[[float], float], y_fmt: Callable[[float], str]) -> list[str]:
    out = []
    for v in y_ticks:
        y = py(v)
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e8eb"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{esc(y_fmt(v))}</text>'
        )
    return out


def _x_axis(x: Axis, px: Callable[[float], float]) -> list[str]:
    base = TOP + PLOT_H
    out = [f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{base}" y2="{base}" stroke="{AXIS}"/>']
    for v in ticks(x.hi - x.lo, 6, time=x.time):
        if v > x.hi - x.lo + 1e-9:
            break
        xv = px(x.lo + v)
        out.append(
            f'<line x1="{xv:.1f}" x2="{xv:.1f}" y1="{base}" y2="{base + 4}" stroke="{AXIS}"/>'
            f'<text x="{xv:.1f}" y="{base + 16}" text-anchor="middle">{esc(x.fmt(x.lo + v))}</text>'
        )
    return out


def _bar_marks(
    bars: Sequence[Bars], x: Axis, px: Callable[[float], float], py: Callable[[float], float], bins: int
) -> list[str]:
    if not bins:
        return []
    step = (x.hi - x.lo) / bins
    gap = 1.0 if PLOT_W / bins > 4 else 0.0
    out = []
    base = [0.0] * bins
    for b in bars:
        for i, v in enumerate(b.values):
            if v <= 0:
                continue
            x0, x1 = px(x.lo + i * step), px(x.lo + (i + 1) * step)
            y0, y1 = py(base[i] + v), py(base[i])
            base[i] += v
            tip = f"{b.label}: {short(v)} ({x.fmt(x.lo + i * step)}–{x.fmt(x.lo + (i + 1) * step)})"
            out.append(
                f'<rect class="mark" x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0 - gap, 0.8):.1f}" '
                f'height="{max(y1 - y0, 0.8):.1f}" fill="{b.color}"><title>{esc(tip)}</title></rect>'
            )
    return out


def bar_list(
    name: str,
    label: str,
    rows: Sequence[tuple[str, Sequence[float]]],
    colors: Sequence[str],
    value_fmt: Callable[[Sequence[float]], str],
    *,
    stacked: bool = True,
) -> str:
    """Horizontal bars, one per (label, values) row; several values stack left to right, or
    (``stacked=False``) overlap from the same origin, each drawn over the one before."""
    row_h, label_w, value_w = 22, 150, 110
    height = TOP + row_h * len(rows) + 6
    hi = max(((sum(v) if stacked else max(v, default=0.0)) for _, v in rows), default=0.0) or 1.0
    width = W - label_w - value_w - RIGHT
    body = []
    for i, (text, values) in enumerate(rows):
        y = TOP + i * row_h
        body.append(f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end">{esc(_cut(text, 24))}</text>')
        x = end = float(label_w)
        for v, color in zip(values, colors, strict=False):
            w = v / hi * width
            if v > 0:
                body.append(
                    f'<rect class="mark" x="{x:.1f}" y="{y + 3}" width="{max(w, 1.0):.1f}" height="{row_h - 6}" '
                    f'fill="{color}"><title>{esc(text)}: {esc(short(v))}</title></rect>'
                )
            end = max(end, x + w)
            x = x + w if stacked else x
        body.append(f'<text x="{end + 6:.1f}" y="{y + 15}">{esc(value_fmt(values))}</text>')
    return _svg(name, label, body, height)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
