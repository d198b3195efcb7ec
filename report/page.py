"""The operator's report: one self-contained HTML page about a model's flywheel.

Training curves, evaluations against the parent, feedback over time, drift, serving latency
and lineage, drawn as inline SVG: the page needs no network, CDN or script, so it can be
mailed, archived next to a release or opened on an air-gapped cluster. Every source is
optional; a missing one gives a "no data" note instead of an error. Every string from the
registry, the events or the loop state is escaped before it reaches HTML or SVG.

This module reads the sources and assembles the page section by section; the charts are
drawn by ``report.charts`` and the lineage graph by ``report.lineage``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

from core import storage
from core.events import EventLog
from core.registry import ModelRegistry
from core.storage import StorageError
from report.charts import (
    bar_chart,
    duration,
    epoch_seconds,
    finite,
    fmt,
    histogram,
    line_chart,
    mean,
    natural,
    percentile,
    ratio,
    time_bins,
)
from report.lineage import MAX_RAW_PER_SNAPSHOT, lineage_graph, lineage_svg
from schemas.events import Feedback, ServedOutput
from schemas.registry import ModelVersion
from schemas.storage import StorageSettings

DECISION_COLORS = {"promoted": "#2e7d32", "rolled_back": "#c62828", "rejected": "#c62828"}
READ_ERRORS = (StorageError, OSError, ValueError)


# ---------------------------------------------------------------------------------------------
# Gathering: everything the page shows, read once


@dataclass
class Sources:
    """What the report reads, each part empty when its source is."""

    model: str | None = None
    others: list[str] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[ModelVersion] = field(default_factory=list)
    evals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lineage: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    served: dict[str, ServedOutput] = field(default_factory=dict)
    feedback: list[Feedback] = field(default_factory=list)
    controller: dict[str, Any] | None = None
    consumer: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


def gather(
    registry_uri: str,
    event_log_uri: str,
    loop_uri: str | None,
    model: str | None = None,
    settings: StorageSettings | None = None,
) -> Sources:
    src = Sources()
    try:
        _read_registry(src, ModelRegistry(registry_uri, settings), model)
    except READ_ERRORS as e:  # an operator wants the rest of the page even so
        src.problems.append(f"Could not read the registry {registry_uri}: {e}")
    try:
        _read_events(src, EventLog(event_log_uri, settings))
    except READ_ERRORS as e:
        src.problems.append(f"Could not read the event log {event_log_uri}: {e}")
    if loop_uri:
        root = storage.resolve(loop_uri, settings)
        src.controller = _read_state(src, root.join("controller", "state.json"))
        src.consumer = _read_state(src, root.join("consumer", "state.json"))
    return src


def _read_registry(src: Sources, registry: ModelRegistry, model: str | None) -> None:
    models = registry.models()
    src.model = model or (models[0] if models else None)
    if model and model not in models:
        src.problems.append(f"No model {model!r} in the registry; it has: {', '.join(models)}")
    src.others = [m for m in models if m != src.model]
    if src.model is None:
        return
    src.aliases = registry.aliases(src.model)
    src.versions = sorted(registry.versions(src.model), key=lambda v: v.version)
    walked: set[str] = set()
    for v in reversed(src.versions):
        src.evals[v.ref] = registry.eval_reports(v.ref)
        if v.ref not in walked:  # a newer version's walk already holds all its ancestors
            src.lineage[v.ref] = registry.lineage(v.ref)
            walked.update(n["id"] for n in src.lineage[v.ref] if n["kind"] == "version")


def _read_events(src: Sources, log: EventLog) -> None:
    for _, event in log.read():
        if isinstance(event, ServedOutput):
            if src.model is None or event.model == src.model:
                src.served[event.response_id] = event
        else:
            src.feedback.append(event)


def _read_state(src: Sources, loc: storage.Location) -> dict[str, Any] | None:
    try:
        return storage.read_json(loc) if storage.exists(loc) else None
    except READ_ERRORS as e:
        src.problems.append(f"Could not read {loc.uri}: {e}")
        return None


# ---------------------------------------------------------------------------------------------
# The page


def build_report(
    registry_uri: str,
    event_log_uri: str,
    loop_uri: str | None,
    model: str | None = None,
    settings: StorageSettings | None = None,
) -> str:
    """The whole report as one HTML document (inline CSS and SVG, nothing to fetch)."""
    src = gather(registry_uri, event_log_uri, loop_uri, model, settings)
    sections = [
        ("training", "Training", _training(src)),
        ("evaluation", "Evaluation against the parent", _evaluation(src)),
        ("feedback", "Feedback over time", _feedback(src)),
        ("drift", "Drift and feedback per version", _drift(src)),
        ("serving", "Serving latency and throughput", _serving(src)),
        ("lineage", "Lineage", _lineage(src)),
    ]
    nav = " · ".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "\n".join(
        f'<section id="{sid}"><h2>{escape(title)}</h2>\n{html}</section>'
        for sid, title, html in sections
    )
    sources = {"registry": registry_uri, "events": event_log_uri, "loop": loop_uri or "none"}
    title = f"Flywheel report: {src.model or 'no model yet'}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
        f"{_header(src, title, sources)}<nav>{nav}</nav>\n{body}\n</body></html>\n"
    )


def write_report(path_or_uri: str, html: str, settings: StorageSettings | None = None) -> str:
    """Write the page to a local path or ``s3://`` uri; returns where it went."""
    loc = storage.resolve(path_or_uri, settings)
    storage.write_text(loc, html)
    return loc.uri


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
 margin:0 auto;max-width:1200px;padding:16px 24px;background:#fafafa}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px}
nav{margin:8px 0 4px}nav a{color:#4e79a7;text-decoration:none}
section{margin-bottom:28px}.plots{display:flex;flex-wrap:wrap;gap:16px}
svg.plot{background:#fff;border:1px solid #e2e2e2;border-radius:4px;max-width:100%;height:auto}
svg text{font-family:inherit}.meta{color:#555}.note{color:#777;font-style:italic}
.problem{color:#c62828}.tag{display:inline-block;padding:1px 8px;border-radius:10px;
 background:#e8eef6;margin-right:6px}
table{border-collapse:collapse;margin-top:10px;font-size:13px;background:#fff}
th,td{border:1px solid #e2e2e2;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}.graph{overflow-x:auto}.graph svg.plot{max-width:none}
td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _header(src: Sources, title: str, sources: dict[str, str]) -> str:
    aliases = "".join(
        f'<span class="tag">{escape(a)} → {escape(src.model or "")}:{v}</span>'
        for a, v in sorted(src.aliases.items())
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">Aliases: {aliases or "none"} · generated {generated}</p>',
        '<p class="meta">' + " · ".join(f"{k}: {escape(v)}" for k, v in sources.items()) + "</p>",
    ]
    if src.others:
        others = ", ".join(src.others)
        lines.append(f'<p class="meta">Other models: {escape(others)} (choose with --model)</p>')
    lines += [f'<p class="problem">{escape(p)}</p>' for p in src.problems]
    return "\n".join(lines) + "\n"


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>\n'


def _plots(*charts: str) -> str:
    return '<div class="plots">' + "".join(charts) + "</div>\n"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>\n"


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return f"<td>{'—' if value is None else str(value).lower()}</td>"
    if isinstance(value, int | float):
        return f'<td class="num">{escape(fmt(value))}</td>'
    return f"<td>{escape(str(value))}</td>"


# ---------------------------------------------------------------------------------------------
# Sections


def _training(src: Sources) -> str:
    if not src.versions:
        return _note("No model versions registered yet: no training to show.")
    curves = {
        v.ref: [
            (p["step"], p["loss"])
            for p in v.metrics.get("curve", [])
            if finite(p.get("step")) and finite(p.get("loss"))
        ]
        for v in src.versions
    }
    curves = {ref: pts for ref, pts in curves.items() if pts}
    charts = [
        line_chart("training-loss", "Training loss", curves, x_label="step", y_label="loss")
        if curves
        else _note("No version recorded a loss curve.")
    ]
    refs = [v.ref for v in src.versions]
    for name, title, key, label, scale in (
        ("training-throughput", "Training throughput", "tokens_per_s", "tokens/s", 1),
        ("training-mfu", "Model FLOPs utilisation", "mfu", "MFU (%)", 100),
    ):
        values = [v.metrics.get(key) for v in src.versions]
        values = [x * scale if finite(x) else None for x in values]
        if any(finite(x) for x in values):
            charts.append(
                bar_chart(name, title, refs, {label: values}, x_label="version", y_label=label)
            )
    headers = ["version", "format", "base", "created (UTC)", "steps", "final loss", "tokens/s"]
    return _plots(*charts) + _table(
        [*headers, "MFU", "description"], [_version_row(v) for v in src.versions]
    )


def _version_row(v: ModelVersion) -> list[Any]:
    curve = v.metrics.get("curve") or [{}]
    mfu = v.metrics.get("mfu")
    return [
        v.ref,
        v.format,
        v.base,
        v.created_at[:19].replace("T", " "),
        len(v.metrics.get("curve", [])),
        curve[-1].get("loss"),
        v.metrics.get("tokens_per_s"),
        None if mfu is None else f"{mfu:.2%}",
        v.description,
    ]


def _cycles(src: Sources) -> list[dict[str, Any]]:
    """One row per evaluated candidate: its last evaluation and the loop's decision on it."""
    rows = []
    for v in src.versions:
        reports = src.evals.get(v.ref, [])
        row = {"ref": v.ref, "eval": _last(reports, "evaluation")}
        row["decision"] = _last(reports, "loop_decision")
        if row["eval"] or row["decision"]:
            rows.append(row)
    return rows


def _last(reports: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next((r for r in reversed(reports) if r.get("kind") == kind), {})


def _evaluation(src: Sources) -> str:
    cycles = _cycles(src)
    evaluated = [c for c in cycles if c["eval"]]
    if not evaluated:
        return _note("No candidate has been evaluated against its parent yet.")
    groups = [
        f"{c['ref']} vs {c['eval'].get('production', {}).get('version', '?')}" for c in evaluated
    ]
    notes = [_decision_note(c) for c in evaluated]
    charts = []
    for metric, title, label in (
        ("feedback_loss", "Loss on held-out corrections (lower is better)", "loss"),
        ("heldout_loss", "Loss on held-out training data (lower is better)", "loss"),
        ("qa", "QA accuracy (higher is better)", "accuracy"),
    ):
        series = {
            label: [_score(c["eval"].get(role, {}), metric) for c in evaluated]
            for role, label in (("candidate", "candidate"), ("production", "parent (production)"))
        }
        if any(finite(x) for xs in series.values() for x in xs):
            charts.append(
                bar_chart(
                    f"eval-{metric}",
                    title,
                    groups,
                    series,
                    x_label="candidate vs parent (decision)",
                    y_label=label,
                    notes=notes,
                )
            )
    headers = ["candidate", "parent", "cycle", "gate", "gate reason", "decision", "reason"]
    return _plots(*charts) + _table(headers, [_eval_row(c) for c in cycles])


def _score(scores: dict[str, Any], metric: str) -> float | None:
    if metric == "qa":
        return (scores.get("qa") or {}).get("accuracy")
    return scores.get(metric)


def _decision_note(cycle: dict[str, Any]) -> tuple[str, str]:
    decision = cycle["decision"].get("decision")
    if decision is None:
        passed = cycle["eval"].get("gate", {}).get("passed")
        decision = "gate passed" if passed else "gate failed" if passed is False else "pending"
    return decision, DECISION_COLORS.get(decision, "#555")


def _eval_row(c: dict[str, Any]) -> list[Any]:
    gate = c["eval"].get("gate", {})
    return [
        c["ref"],
        c["eval"].get("production", {}).get("version"),
        c["decision"].get("cycle"),
        {True: "passed", False: "failed"}.get(gate.get("passed")),
        gate.get("reason"),
        c["decision"].get("decision"),
        c["decision"].get("reason"),
    ]


def _feedback(src: Sources) -> str:
    joined = [(fb, src.served.get(fb.response_id)) for fb in src.feedback]
    joined = [(fb, s) for fb, s in joined if s is not None or src.model is None]
    if not joined:
        unmatched = len(src.feedback)
        note = (
            f"No served response matches the {unmatched:,} ratings in the log." if unmatched else ""
        )
        return _note(note or "No feedback events yet.") + _plots(_curation(src))
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
    return _plots(
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
    )


def _curation(src: Sources) -> str:
    """Curated vs quarantined corrections per fine-tune cycle, from the controller's history."""
    history = (src.controller or {}).get("history", [])
    cycles = [h for h in history if "examples" in h or "quarantined" in h]
    if not cycles:
        state = "no loop state yet" if src.controller is None else "no fine-tune cycle finished yet"
        return _note(f"Curated and quarantined corrections: {state}.")
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


def _drift(src: Sources) -> str:
    if src.controller is None and src.consumer is None:
        return _note(
            "No loop state yet: drift and per-version statistics appear once the "
            "feedback loop has run."
        )
    drift = (src.controller or {}).get("drift") or {}
    production = src.aliases.get("production")
    label = f"{src.model}:{production}" if production else "production"
    parts = [
        bar_chart(
            "drift",
            f"Prompt drift of {label} from its training data",
            ["score", "word JS divergence", "length shift"],
            {label: [drift.get("score"), drift.get("words_js"), drift.get("length_shift")]},
            x_label="drift score and its two components",
            y_label="drift (0 = none)",
        )
        if finite(drift.get("score"))
        else _note("No drift measured yet.")
    ]
    stats = (src.consumer or {}).get("stats", {})
    versions = sorted(stats, key=natural)
    if not versions:
        return _plots(*parts) + _note("No per-version statistics yet.")
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
    return _plots(*parts) + _table(headers, rows)


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


def _serving(src: Sources) -> str:
    served = list(src.served.values())
    if not served:
        return _note("No served responses in the event log yet.")
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
    return _plots(
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
    )


def _lineage(src: Sources) -> str:
    walks = [walk for walk in src.lineage.values() if walk]
    if not walks:
        return _note("No model versions registered yet: no lineage to draw.")
    graph = lineage_graph(walks)
    for alias, number in sorted(src.aliases.items()):  # tag versions with their aliases
        node = graph.nodes.get(f"version:{src.model}:{number}:")
        if node:
            node["sub"] += f" · {alias}"
    return lineage_svg(graph) + _note(
        "Hover a node for its full id and details. Raw files beyond "
        f"{MAX_RAW_PER_SNAPSHOT} per snapshot and feedback events are summarised."
    )
