"""The report's sections on what the registry holds: training and evaluation of versions."""

from __future__ import annotations

from typing import Any

from report.blocks import Block, Note, Plots, Table
from report.charts import bar_chart, line_chart
from report.numbers import finite
from report.sources import Sources
from schemas.registry import ModelVersion

DECISION_COLORS = {"promoted": "#2e7d32", "rolled_back": "#c62828", "rejected": "#c62828"}


def training(src: Sources) -> list[Block]:
    if not src.versions:
        return [Note("No model versions registered yet: no training to show.")]
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
        else Note("No version recorded a loss curve.")
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
    rows = [_version_row(v) for v in src.versions]
    return [Plots(charts), Table.of([*headers, "MFU", "description"], rows)]


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


def evaluation(src: Sources) -> list[Block]:
    cycles = _cycles(src)
    evaluated = [c for c in cycles if c["eval"]]
    if not evaluated:
        return [Note("No candidate has been evaluated against its parent yet.")]
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
    return [Plots(charts), Table.of(headers, [_eval_row(c) for c in cycles])]


def _score(scores: dict[str, Any], metric: str) -> float | None:
    if metric == "qa":
        return (scores.get("qa") or {}).get("accuracy")
    return scores.get(metric)


def _decision_note(cycle: dict[str, Any]) -> tuple[str, str]:
    decision = cycle["decision"].get("decision")
    if decision is None:
        passed = (cycle["eval"].get("gate") or {}).get("passed")  # None: standalone
        decision = "gate passed" if passed else "gate failed" if passed is False else "pending"
    return decision, DECISION_COLORS.get(decision, "#555")


def _eval_row(c: dict[str, Any]) -> list[Any]:
    gate = c["eval"].get("gate") or {}  # a standalone evaluation has no gate
    return [
        c["ref"],
        c["eval"].get("production", {}).get("version"),
        c["decision"].get("cycle"),
        {True: "passed", False: "failed"}.get(gate.get("passed")),
        gate.get("reason"),
        c["decision"].get("decision"),
        c["decision"].get("reason"),
    ]
