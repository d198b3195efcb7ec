"""Inline SVG charts for the operator's report: line, grouped-bar and histogram plots.

Each chart is one ``<svg>`` string with a title, a legend, round ticks and labelled axes, made
without a plotting library so the page stays self-contained; every label is escaped here.
The numeric helpers the report's sections use to prepare series (time buckets, percentiles,
number formats) live here too: the buckets share their round steps with the time axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f", "#edc948"]
TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600]
TIME_STEPS += [43200, 86400, 172800, 604800]
W, H = 560, 300  # one chart; two fit side by side on a laptop screen


# ---------------------------------------------------------------------------------------------
# Numbers: time buckets, percentiles, ratios and how values read


def time_bins(items: list[tuple[float, Any]]) -> tuple[dict[float, list[Any]], float]:
    """Items by the centre of their time bucket, in time order, and the buckets' width."""
    start, width = buckets([t for t, _ in items])
    out: dict[float, list[Any]] = {}
    for t, item in sorted(items, key=lambda pair: pair[0]):
        out.setdefault(start + (math.floor((t - start) / width) + 0.5) * width, []).append(item)
    return out, width


def buckets(times: list[float], target: int = 20) -> tuple[float, float]:
    """(start, width) of time buckets: a round width giving about ``target`` buckets."""
    span = max(times) - min(times)
    width = next((s for s in TIME_STEPS if s * target >= span), TIME_STEPS[-1])
    return math.floor(min(times) / width) * width, float(width)


def epoch_seconds(ts: str) -> float:
    """Event time in epoch seconds; a time without a zone is UTC, as events are written."""
    at = datetime.fromisoformat(ts)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def duration(seconds: float) -> str:
    """A bucket width as a title reads it: per '10 min', per 'hour', per '2 days'."""
    for unit, plural, size in (("day", "days", 86400), ("hour", "hours", 3600), ("min", "min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {plural}"
    return f"{seconds:g} s"


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile: always a latency that was actually observed."""
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def fmt(v: float) -> str:
    if isinstance(v, int) or abs(v) >= 10000 or (abs(v) >= 1000 and float(v).is_integer()):
        return f"{v:,.0f}"
    return f"{v:.4g}"


def finite(v: Any) -> bool:
    """A number that can be drawn (a diverged run logs NaN or inf losses)."""
    return isinstance(v, int | float) and math.isfinite(v)


def natural(key: str) -> tuple[str, int]:
    """'m:10' after 'm:9': the number after the last colon sorts as a number."""
    head, _, tail = key.rstrip(":").rpartition(":")
    return (head, int(tail)) if tail.isdigit() else (key, 0)


# ---------------------------------------------------------------------------------------------
# Charts: inline SVG with titled, labelled, ticked axes


@dataclass
class Frame:
    """A chart's plot area and the linear maps from data to pixels."""

    x0: float
    x1: float
    y0: float
    y1: float
    top: int
    left: int = 64
    right: int = W - 16
    bottom: int = H - 46

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / ((self.x1 - self.x0) or 1) * (self.right - self.left)

    def y(self, v: float) -> float:
        return self.bottom - (v - self.y0) / ((self.y1 - self.y0) or 1) * (self.bottom - self.top)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (the first <= lo, the last >= hi)."""
    if hi <= lo:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - first) / step - 1e-9)
    return [round(first + i * step, 10) for i in range(count + 1)]


def _time_ticks(lo: float, hi: float) -> list[float]:
    step = next((s for s in TIME_STEPS if s * 8 >= hi - lo), TIME_STEPS[-1])
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def _time_label(t: float, span: float) -> str:
    fmt = "%H:%M:%S" if span < 600 else "%H:%M" if span < 2 * 86400 else "%m-%d %H:%M"
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


def _legend(names: list[str]) -> tuple[list[str], int]:
    """Legend swatches in rows under the title; returns the elements and the plot's top."""
    out, x, y = [], 64, 40
    for i, name in enumerate(names):
        label = name if len(name) <= 28 else name[:27] + "…"
        width = 22 + 7 * len(label)
        if x + width > W - 16 and x > 64:
            x, y = 64, y + 16
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{y - 9}" width="12" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="{y}" font-size="11">{escape(label)}</text>')
        x += width + 12
    return out, y + 16


def svg(name: str, title: str, parts: list[str], width: int = W, height: int = H) -> str:
    return (
        f'<svg class="plot" data-plot="{escape(name)}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">'
        f"<title>{escape(title)}</title>"
        f'<text x="12" y="20" font-size="14" font-weight="600">{escape(title)}</text>'
        + "".join(parts)
        + "</svg>"
    )


def _y_axis(f: Frame, ticks: list[float], label: str, percent: bool) -> list[str]:
    out = []
    for t in ticks:
        y = f.y(t)
        text = f"{t * 100:.0f}" if percent else fmt(t)
        out.append(f'<line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(
            f'<text x="{f.left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{escape(text)}</text>"
        )
    mid = (f.top + f.bottom) / 2
    out.append(
        f'<text x="14" y="{mid:.0f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid:.0f})">{escape(label)}</text>'
    )
    out.append(f'<line x1="{f.left}" x2="{f.left}" y1="{f.top}" y2="{f.bottom}" stroke="#888"/>')
    out.append(
        f'<line x1="{f.left}" x2="{f.right}" y1="{f.bottom}" y2="{f.bottom}" stroke="#888"/>'
    )
    return out


def _x_axis(f: Frame, ticks: list[tuple[float, str]], label: str) -> list[str]:
    out = []
    for x, text in ticks:
        px = f.x(x)
        out.append(
            f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{f.bottom}" y2="{f.bottom + 4}" stroke="#888"/>'
        )
        out.append(
            f'<text x="{px:.1f}" y="{f.bottom + 16}" font-size="11" text-anchor="middle">'
            f"{escape(text)}</text>"
        )
    out.append(
        f'<text x="{(f.left + f.right) / 2:.0f}" y="{H - 8}" font-size="12" '
        f'text-anchor="middle">{escape(label)}</text>'
    )
    return out


def line_chart(
    name: str,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    *,
    x_label: str,
    y_label: str,
    time_x: bool = False,
    y_range: tuple[float, float] | None = None,
    percent: bool = False,
) -> str:
    """Lines with point markers, one per series (a legend names them)."""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    legend, top = _legend(list(series))
    lo, hi = y_range or (min(0.0, min(ys)), max(ys))
    y_ticks = nice_ticks(min(lo, min(ys)), max(hi, max(ys)))
    if time_x:  # a margin keeps the first and last buckets off the axes
        pad = max(max(xs) - min(xs), 60) * 0.03
        x0, x1 = min(xs) - pad, max(xs) + pad
        x_ticks = [(t, _time_label(t, x1 - x0)) for t in _time_ticks(x0, x1)]
        x_label += datetime.fromtimestamp(x0, UTC).strftime(", from %Y-%m-%d")
    else:
        ticks = nice_ticks(min(xs), max(xs))
        x0, x1 = ticks[0], ticks[-1]
        x_ticks = [(t, fmt(t)) for t in ticks]
    f = Frame(x0, x1, y_ticks[0], y_ticks[-1], top)
    parts = [*legend, *_y_axis(f, y_ticks, y_label, percent), *_x_axis(f, x_ticks, x_label)]
    for i, (label, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(
            f"{'M' if j == 0 else 'L'}{f.x(x):.1f},{f.y(y):.1f}" for j, (x, y) in enumerate(pts)
        )
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(pts) <= 60:  # markers show sparse data; on dense curves they are clutter
            parts += [
                f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="2.5" fill="{color}">'
                f"<title>{escape(label)}: {escape(fmt(y))}</title></circle>"
                for x, y in pts
            ]
    return svg(name, title, parts)


def bar_chart(
    name: str,
    title: str,
    groups: list[str],
    series: dict[str, list[float | None]],
    *,
    x_label: str,
    y_label: str,
    notes: list[tuple[str, str]] | None = None,
    percent: bool = False,
) -> str:
    """Grouped bars: one group per label, one bar per series; ``notes`` are (text, colour)
    lines under the group labels, e.g. the decision on a candidate."""
    values = [v for vs in series.values() for v in vs if finite(v)]
    scale = 100 if percent else 1
    y_ticks = nice_ticks(min(0.0, *values) * scale, max(0.0, *values) * scale)
    legend, top = _legend(list(series)) if len(series) > 1 else ([], 40)
    f = Frame(
        0,
        len(groups),
        y_ticks[0] / scale,
        y_ticks[-1] / scale,
        top,
        bottom=H - 46 - 14 * bool(notes),
    )
    parts = [*legend, *_y_axis(f, [t / scale for t in y_ticks], y_label, percent)]
    parts += _x_axis(f, [], x_label)
    slot = (f.right - f.left) / len(groups)
    bar = min(36.0, slot * 0.8 / len(series))
    chars = max(4, int(slot / 6.5))
    for g, group in enumerate(groups):
        cx = f.x(g + 0.5)
        parts.append(_label(cx, f.bottom + 15, group, chars))
        if notes:
            text, color = notes[g]
            parts.append(_label(cx, f.bottom + 29, text, chars, color))
        for s, (label, vs) in enumerate(series.items()):
            if not finite(vs[g]):
                continue
            x = cx - bar * len(series) / 2 + s * bar
            y, base = f.y(max(vs[g], 0)), f.y(min(vs[g], 0))
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{base - y:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(group)} {escape(label)}: '
                f"{escape(fmt(vs[g] * scale))}</title></rect>"
            )
    return svg(name, title, parts)


def _label(x: float, y: float, text: str, chars: int, color: str = "#222") -> str:
    short = text if len(text) <= chars else text[: chars - 1] + "…"
    return (
        f'<text x="{x:.1f}" y="{y:.0f}" font-size="11" text-anchor="middle" fill="{color}">'
        f"{escape(short)}</text>"
    )


def histogram(name: str, title: str, values: list[float], *, x_label: str, y_label: str) -> str:
    """Counts in about 20 equal bins of round width, from zero."""
    ticks = nice_ticks(0.0, max(values), 20)
    width = ticks[1] - ticks[0]
    counts = [0] * (len(ticks) - 1)
    for v in values:
        counts[min(len(counts) - 1, max(0, int((v - ticks[0]) // width)))] += 1
    y_ticks = nice_ticks(0, max(*counts, 5))  # at least 0..5: whole-number ticks
    f = Frame(ticks[0], ticks[-1], 0, y_ticks[-1], 40)
    x_ticks = [(t, fmt(t)) for t in nice_ticks(ticks[0], ticks[-1]) if t <= ticks[-1]]
    parts = [*_y_axis(f, y_ticks, y_label, False), *_x_axis(f, x_ticks, x_label)]
    for i, c in enumerate(counts):
        x, y = f.x(ticks[i]), f.y(c)
        parts.append(
            f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{f.x(ticks[i + 1]) - x - 1:.1f}" '
            f'height="{f.bottom - y:.1f}" fill="{PALETTE[0]}"><title>{fmt(ticks[i])}–'
            f"{fmt(ticks[i + 1])}: {c}</title></rect>"
        )
    return svg(name, title, parts)
