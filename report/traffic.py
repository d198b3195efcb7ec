"""The report's sections on what the running loop saw: feedback, drift and serving."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from markupsafe import Markup

from report.blocks import Block, Note, Plots, Table
from report.charts import bar_chart, histogram, line_chart
from report.numbers import (
    duration,
    epoch_seconds,
    finite,
    mean,
    natural,
    percentile,
    ratio,
    time_bins,
)
from report.sources import Sources
from report.versions import DECISION_COLORS
from schemas.events import Feedback


def feedback(src: Sources) -> list[Block]:
    joined = [(fb, src.served.get(fb.response_id)) for fb in src.feedback]
    joined = [(fb, s) for fb, s in joined if s is not None or src.model is None]
    if not joined:
        unmatched = len(src.feedback)
        note = (
            f"No served response matches the {unmatched:,} ratings in the log." if unmatched else ""
        )
        return [Note(note or "No feedback events yet."), Plots([_curation(src)])]
    binned, width = time_bins([(epoch_seconds(fb.created_at), (fb, s)) for fb, s in joined])
    by_version: dict[str, dict[float, list[Feedback]]] = defaultdict(dict)
    for x, items in binned.items():
        for fb, served in items:
            by_version[served.model_version if served else "unknown"].setdefault(x, []).append(fb)
    versions = sorted(by_version, key=natural)
    rating = {
        v: [(x, mean([f.rating for f in fbs])) for x, fbs in sorted(by_version[v].items())]
        for v in versions
    }
    accept = {
        v: [(x, mean([f.rating >= 4 for f in fbs])) for x, fbs in sorted(by_version[v].items())]
        for v in versions
    }
    volume = {
        "ratings": [(x, len(items)) for x, items in binned.items()],
        "corrections": [
            (x, sum(bool(fb.correction) for fb, _ in items)) for x, items in binned.items()
        ],
    }
    every = duration(width)
    time = {"x_label": "time (UTC)", "time_x": True}
    charts: list[Markup | Note] = [
        line_chart(
            "feedback-rating",
            f"Mean rating per {every}, by serving version",
            rating,
            y_label="rating (1-5)",
            y_range=(1, 5),
            **time,
        ),
        line_chart(
            "feedback-acceptance",
            f"Acceptance (rating ≥ 4) per {every}, by version",
            accept,
            y_label="accepted (%)",
            y_range=(0, 1),
            percent=True,
            **time,
        ),
        line_chart(
            "feedback-volume",
            f"Ratings and corrections per {every}",
            volume,
            y_label="count",
            **time,
        ),
        _curation(src),
    ]
    return [Plots(charts)]


def _curation(src: Sources) -> Markup | Note:
    """Curated vs quarantined corrections per fine-tune cycle, from the controller's history."""
    history = (src.controller or {}).get("history", [])
    cycles = [h for h in history if "examples" in h or "quarantined" in h]
    if not cycles:
        state = "no loop state yet" if src.controller is None else "no fine-tune cycle finished yet"
        return Note(f"Curated and quarantined corrections: {state}.")
    notes = [(h.get("outcome", "?"), DECISION_COLORS.get(h.get("outcome"), "#555")) for h in cycles]
    series = {
        label: [h.get(k) for h in cycles]
        for label, k in (("curated", "examples"), ("quarantined", "quarantined"))
    }
    groups = [f"{i}: {h.get('candidate') or '?'}" for i, h in enumerate(cycles, start=1)]
    return bar_chart(
        "feedback-curation",
        "Corrections curated vs quarantined per cycle",
        groups,
        series,
        x_label="fine-tune cycle: candidate (outcome)",
        y_label="corrections",
        notes=notes,
    )


def drift(src: Sources) -> list[Block]:
    if src.controller is None and src.consumer is None:
        return [
            Note(
                "No loop state yet: drift and per-version statistics appear once the "
                "feedback loop has run."
            )
        ]
    drift = (src.controller or {}).get("drift") or {}
    production = src.aliases.get("production")
    label = f"{src.model}:{production}" if production else "production"
    parts: list[Markup | Note] = [
        bar_chart(
            "drift",
            f"Prompt drift of {label} from its training data",
            ["score", "word JS divergence", "length shift"],
            {label: [drift.get("score"), drift.get("words_js"), drift.get("length_shift")]},
            x_label="drift score and its two components",
            y_label="drift (0 = none)",
        )
        if finite(drift.get("score"))
        else Note("No drift measured yet.")
    ]
    stats = (src.consumer or {}).get("stats", {})
    versions = sorted(stats, key=natural)
    if not versions:
        return [Plots(parts), Note("No per-version statistics yet.")]
    counts = {
        k: [stats[v].get(k, 0) for v in versions]
        for k in ("requests", "rated", "accepted", "corrections")
    }
    accept = {
        "accepted": [ratio(stats[v].get("accepted", 0), stats[v].get("rated")) for v in versions]
    }
    parts += [
        bar_chart(
            "version-counts",
            "Requests and feedback by version",
            versions,
            counts,
            x_label="serving version",
            y_label="count",
        ),
        bar_chart(
            "version-acceptance",
            "Acceptance (rating ≥ 4) by version",
            versions,
            accept,
            x_label="serving version",
            y_label="accepted (%)",
            percent=True,
        ),
    ]
    rows = [_stats_row(v, stats[v]) for v in versions]
    headers = ["version", "requests", "rated", "mean rating", "acceptance", "corrections"]
    return [Plots(parts), Table.of(headers, rows)]


def _stats_row(version: str, s: dict[str, Any]) -> list[Any]:
    acceptance = ratio(s.get("accepted", 0), s.get("rated"))
    return [
        version,
        s.get("requests"),
        s.get("rated"),
        ratio(s.get("rating_sum", 0), s.get("rated")),
        None if acceptance is None else f"{acceptance:.0%}",
        s.get("corrections"),
    ]


def serving(src: Sources) -> list[Block]:
    served = list(src.served.values())
    if not served:
        return [Note("No served responses in the event log yet.")]
    binned, width = time_bins([(epoch_seconds(e.created_at), e) for e in served])
    latency = {
        f"p{q}": [(x, percentile([e.latency_ms for e in es], q)) for x, es in binned.items()]
        for q in (50, 95)
    }
    ttft = [
        (x, percentile(t, 50))
        for x, es in binned.items()
        if (t := [e.ttft_ms for e in es if e.ttft_ms is not None])
    ]
    if ttft:
        latency["time to first token, p50"] = ttft
    tokens = {
        "generated tokens/s": [
            (x, sum(e.completion_tokens for e in es) / width) for x, es in binned.items()
        ]
    }
    every = duration(width)
    time = {"x_label": "time (UTC)", "time_x": True}
    charts = [
        line_chart(
            "serving-latency", f"Latency per {every}", latency, y_label="latency (ms)", **time
        ),
        line_chart(
            "serving-throughput",
            f"Generated tokens/s, averaged per {every}",
            tokens,
            y_label="tokens/s",
            **time,
        ),
        histogram(
            "serving-latency-hist",
            f"Latency of {len(served):,} responses",
            [e.latency_ms for e in served],
            x_label="latency (ms)",
            y_label="responses",
        ),
    ]
    return [Plots(charts)]
