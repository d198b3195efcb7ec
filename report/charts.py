"""The report's charts: line, grouped-bar and histogram plots as inline SVG, by Matplotlib.

Why Matplotlib: it is the long-maintained reference plotting library of the scientific
Python stack, and its SVG backend renders offline, with no browser, JavaScript or network
(Plotly, Bokeh and Altair pages load a JS runtime, or need a separate renderer for SVG). Its
new dependencies are a few small compiled wheels. Figures are made with
``matplotlib.figure.Figure`` directly, never pyplot, so no GUI backend or display is chosen
and no global figure state is kept.

Text stays ``<text>`` (``svg.fonttype: none``), which keeps each chart small and its labels
searchable; Matplotlib escapes it. Ids are hashed with a fixed salt (``svg.hashsalt``), so the
same data gives the same SVG, and prefixed with the chart's name, so the SVGs of one page
never share an id. Hover titles (``<title>``) are attached to bars and markers through their
``gid``, as in Matplotlib's SVG tooltip example.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from cycler import cycler
from markupsafe import Markup, escape
from matplotlib import rc_context
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from report.numbers import finite, fmt, round_edges

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f", "#edc948"]
WIDTH, HEIGHT = 560, 300  # CSS pixels of one chart: two fit side by side on a laptop screen
PX = 1 / 96  # inches per CSS pixel
STYLE = {
    "svg.fonttype": "none",
    "font.size": 8,
    "font.family": "sans-serif",
    "axes.prop_cycle": cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888",
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "axes.labelsize": 8.5,
    "grid.color": "#eee",
    "legend.frameon": False,
    "legend.fontsize": 7.5,
    "figure.facecolor": "white",
}
NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


class Chart:
    """One figure being drawn: its axes, its hover titles by artist gid, and its SVG.

    The margins are fixed in pixels (as the page lays charts out) rather than computed by
    constrained layout, which draws every figure twice: the report renders in tests."""

    def __init__(self, name: str, title: str, bottom: int = 46) -> None:
        self.name, self.title, self.bottom = name, title, bottom
        self.figure = Figure(figsize=(WIDTH * PX, HEIGHT * PX))
        self.ax: Axes = self.figure.add_subplot()
        self.tips: dict[str, list[str]] = {}

    def tip(self, artist: Artist, *texts: str) -> None:
        """Hover titles for an artist: one for a bar, one per marker for a line."""
        gid = f"tip-{len(self.tips)}"
        artist.set_gid(gid)
        self.tips[gid] = list(texts)

    def finish(self, x_label: str, y_label: str) -> None:
        """Axis labels, the title, and a legend under it when there are series to name."""
        self.ax.set(xlabel=x_label, ylabel=y_label)
        handles, labels = self.ax.get_legend_handles_labels()
        top = 30
        if len(handles) > 1:
            ncols = min(len(handles), 4)
            top += 16 * -(-len(handles) // ncols)
            self.figure.legend(
                handles,
                [_short(label, 28) for label in labels],
                loc="upper left",
                bbox_to_anchor=(58 / WIDTH, 1 - 24 / HEIGHT),
                ncols=ncols,
                borderaxespad=0,
                handlelength=1.4,
                columnspacing=1.2,
            )
        self.figure.text(
            12 / WIDTH, 1 - 8 / HEIGHT, self.title, va="top", fontsize=10, weight="bold"
        )
        self.figure.subplots_adjust(
            left=64 / WIDTH, right=1 - 16 / WIDTH, top=1 - top / HEIGHT, bottom=self.bottom / HEIGHT
        )

    def svg(self) -> Markup:
        buffer = io.StringIO()
        self.figure.savefig(buffer, format="svg", metadata={"Title": self.title, **NO_METADATA})
        text = buffer.getvalue()
        text = text[text.index("<svg") :]  # drop the XML prolog: the SVG sits inside HTML
        text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
        text = text.replace(
            "<svg ", f'<svg class="plot" data-plot="{escape(self.name)}" role="img" ', 1
        )
        for gid, tips in self.tips.items():
            text = _with_tips(text, f'<g id="{gid}">', tips)
        return Markup(_scoped(text, self.name))  # Matplotlib escapes every text it writes


def _scoped(svg: str, name: str) -> str:
    """Every id of one chart prefixed with its name, and the references to them: the SVGs of
    a page share one id space, and each of Matplotlib's starts at ``figure_1``."""
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{name}-{m[1]}"', svg)
    return re.sub(
        r'(url\(#|href="#)([^)"]+)',
        lambda m: f"{m[1]}{name}-{m[2]}" if m[2] in ids else m[0],
        svg,
    )


def _with_tips(svg: str, group: str, tips: list[str]) -> str:
    """One tip: a title for the artist's group. Several: one for each of the group's markers,
    which Matplotlib writes as ``<use .../>`` elements in data order."""
    start = svg.index(group) + len(group)
    if len(tips) == 1:
        return f"{svg[:start]}<title>{escape(tips[0])}</title>{svg[start:]}"
    parts, at = [svg[:start]], start
    for tip, use in zip(tips, re.finditer(r"<use [^>]*?/>", svg[start:]), strict=False):
        parts += [svg[at : start + use.end() - 2], f"><title>{escape(tip)}</title></use>"]
        at = start + use.end()
    return "".join([*parts, svg[at:]])


@contextmanager
def _chart(name: str, title: str, bottom: int = 46) -> Iterator[Chart]:
    with rc_context({**STYLE, "svg.hashsalt": "flywheel"}):
        yield Chart(name, title, bottom)


def _percent_axis(ax: Axes) -> None:
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 100:.0f}"))


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
) -> Markup:
    """Lines with point markers, one per series (a legend names them). With ``time_x`` the
    x values are epoch seconds, drawn as UTC times."""
    ys = [y for pts in series.values() for _, y in pts]
    lo, hi = y_range or (min(0.0, min(ys)), max(ys))
    lo, hi = min(lo, min(ys)), max(hi, max(ys))
    with _chart(name, title) as c:
        for label, pts in series.items():
            xs = [_x(x, time_x) for x, _ in pts]
            sparse = len(pts) <= 60  # markers show sparse data; on dense curves they clutter
            (line,) = c.ax.plot(
                xs, [y for _, y in pts], label=label, linewidth=1.8, marker="o" if sparse else ""
            )
            line.set_markersize(3.5)
            if sparse:
                c.tip(line, *(f"{label}: {fmt(y)}" for _, y in pts))
        pad = (hi - lo) * 0.05 or 1
        c.ax.set_ylim(lo - pad if lo else lo, hi + pad)
        if time_x:
            x_label += _time_axis(c.ax, [x for pts in series.values() for x, _ in pts])
        if percent:
            _percent_axis(c.ax)
        c.finish(x_label, y_label)
        return c.svg()


def _x(x: float, time_x: bool) -> float | datetime:
    return datetime.fromtimestamp(x, UTC) if time_x else x


def _time_axis(ax: Axes, xs: list[float]) -> str:
    """UTC times along x, with a margin that keeps the first and last buckets off the axes;
    returns what the axis label adds: the first day."""
    pad = max(max(xs) - min(xs), 60) * 0.03
    ax.set_xlim(_x(min(xs) - pad, True), _x(max(xs) + pad, True))
    locator = AutoDateLocator(tz=UTC, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(
        DateFormatter("%H:%M:%S", tz=UTC)  # seconds apart: say which minute
        if max(xs) - min(xs) < 600
        else ConciseDateFormatter(locator, tz=UTC, show_offset=False)
    )
    return datetime.fromtimestamp(min(xs), UTC).strftime(", from %Y-%m-%d")


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
) -> Markup:
    """Grouped bars: one group per label, one bar per series; ``notes`` are (text, colour)
    lines under the group labels, e.g. the decision on a candidate."""
    scale = 100 if percent else 1
    width = min(0.8 / len(series), 0.3)
    chars = max(4, int(WIDTH / len(groups) / 6.5))
    with _chart(name, title, bottom=60 if notes else 46) as c:
        for s, (label, values) in enumerate(series.items()):
            offset = (s - (len(series) - 1) / 2) * width
            drawn = [(g, v) for g, v in enumerate(values) if finite(v)]
            for i, (g, value) in enumerate(drawn):
                legend = label if i == 0 else "_nolegend_"  # one swatch per series
                (bar,) = c.ax.bar(
                    g + offset, value, width * 0.92, color=PALETTE[s % 8], label=legend
                )
                c.tip(bar, f"{groups[g]} {label}: {fmt(value * scale)}")
        c.ax.axhline(0, color="#888", linewidth=0.8)
        c.ax.set_xticks(range(len(groups)), [_short(g, chars) for g in groups])
        c.ax.set_xlim(-0.5, len(groups) - 0.5)
        for g, (text, color) in enumerate(notes or []):
            c.ax.annotate(
                _short(text, chars),
                (g, 0),
                xycoords=c.ax.get_xaxis_transform(),
                xytext=(0, -17),
                textcoords="offset points",
                ha="center",
                va="top",
                color=color,
            )
        if percent:
            _percent_axis(c.ax)
        if notes:
            c.ax.xaxis.labelpad = 14
        c.finish(x_label, y_label)
        return c.svg()


def _short(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def histogram(name: str, title: str, values: list[float], *, x_label: str, y_label: str) -> Markup:
    """Counts in about 20 equal bins of round width, from zero."""
    edges = round_edges(0.0, max(values), 20)
    with _chart(name, title) as c:
        counts, _, patches = c.ax.hist(values, bins=edges, color=PALETTE[0], rwidth=0.94)
        for i, patch in enumerate(patches):
            c.tip(patch, f"{fmt(edges[i])}–{fmt(edges[i + 1])}: {int(counts[i])}")
        c.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        c.ax.set_ylim(0, max(5, *counts) * 1.05)  # at least 0..5: whole-number ticks
        c.ax.set_xlim(edges[0], edges[-1])
        c.finish(x_label, y_label)
        return c.svg()
