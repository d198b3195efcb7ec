"""Numbers for the report's sections: time buckets, percentiles, ratios and how values read.

Pure helpers, no plotting: the sections use them to prepare the series the charts draw and
the cells the tables show. Time buckets have round widths (1 s ... 1 week) so a chart's
title can say "per 5 min".
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from matplotlib.ticker import MaxNLocator

TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600]
TIME_STEPS += [43200, 86400, 172800, 604800]


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


def round_edges(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round, evenly spaced values covering [lo, hi] (the first <= lo, the last
    >= hi): the histogram's bin edges. An empty range is widened around its value."""
    if hi <= lo:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) * 0.1, hi + abs(hi) * 0.1)
    locator = MaxNLocator(nbins=n, steps=[1, 2, 2.5, 5, 10])
    return [round(float(t), 10) for t in locator.tick_values(lo, hi)]


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
