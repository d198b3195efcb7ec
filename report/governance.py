"""The report's governance section: approvals, the gate's bias and hallucination figures per
version, and every version's model card (``core.registry.card``)."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from core.governance.hallucination import live_signal, rated_answers
from core.loop.feedback_state import ConsumerState
from report.blocks import Block, Details, Note, Plots, Table
from report.charts import line_chart
from report.numbers import finite
from report.sources import Sources

AWAITING = "awaiting_approval"


def governance(src: Sources) -> list[Block]:
    if not src.versions:
        return [Note("No model versions registered yet: no model cards or approvals to show.")]
    return [_approval_state(src), *_approvals(src), *_trend(src), *_live(src), *_cards(src)]


def _approval_state(src: Sources) -> Note:
    state = src.controller
    if state is None:
        return Note("No loop state: no candidate awaits approval.")
    phase = state.get("phase", "idle")
    if phase != AWAITING:
        return Note(f"The loop is {phase}: no candidate awaits approval.")
    cur = state.get("current") or {}
    candidate, gate = cur.get("candidate") or "?", cur.get("gate") or {}
    return Note(
        f"The loop awaits approval of {candidate} (gate: {gate.get('reason', 'not recorded')}). "
        f"Decide with `flywheel models approve {candidate} --note ...` or `reject`."
    )


def _approvals(src: Sources) -> list[Block]:
    if not src.approvals:
        return [Note("No approval recorded in the audit log.")]
    rows = [
        [e.at[:19].replace("T", " "), e.action, e.subject, e.details.get("by"),
         e.details.get("note"), e.actor, e.seq]
        for e in src.approvals
    ]  # fmt: skip
    headers = ["at (UTC)", "action", "version", "by", "note", "recorded by", "audit entry"]
    return [Table.of(headers, rows)]


def _latest_evaluation(reports: list[dict[str, Any]]) -> dict[str, Any]:
    return next((r for r in reversed(reports) if r.get("kind") == "evaluation"), {})


def _figures(scores: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(hallucination rate, bias max spread, the category with the widest spread)."""
    bias = scores.get("bias") or {}
    categories = bias.get("categories") or {}
    widest = max(categories, key=lambda c: categories[c].get("spread") or 0, default=None)
    return (scores.get("hallucination") or {}).get("rate"), bias.get("max_spread"), widest


def _trend(src: Sources) -> list[Block]:
    rows, rate, spread = [], [], []
    for v in src.versions:
        report = _latest_evaluation(src.evals.get(v.ref, []))
        cand, prod = report.get("candidate") or {}, report.get("production") or {}
        (c_rate, c_spread, widest), (p_rate, p_spread, _) = _figures(cand), _figures(prod)
        if not any(finite(x) for x in (c_rate, c_spread, p_rate, p_spread)):
            continue
        rows.append([v.ref, prod.get("version"), c_rate, p_rate, c_spread, p_spread, widest])
        rate += [(v.version, c_rate)] if finite(c_rate) else []
        spread += [(v.version, c_spread)] if finite(c_spread) else []
    if not rows:
        return [Note("No evaluation recorded bias or hallucination figures yet.")]
    series = {"hallucination rate": rate, "bias: largest spread": spread}
    series = {k: pts for k, pts in series.items() if pts}
    charts: list[Markup | Note] = [
        line_chart(
            "governance-trend",
            "Hallucination rate and bias spread per version (lower is better)",
            series,
            x_label="version",
            y_label="rate / spread",
        )
        if series
        else Note("Only parents have bias or hallucination figures.")
    ]
    headers = ["version", "parent", "halluc. rate", "parent's", "bias spread", "parent's"]
    return [Plots(charts), Table.of([*headers, "widest category"], rows)]


def _live(src: Sources) -> list[Block]:
    """The live signal (``core.governance.hallucination.live_signal``) per version."""
    try:
        signal = live_signal(rated_answers(ConsumerState.model_validate(src.consumer or {})))
    except ValueError as e:  # a state of another schema: say so, show the rest
        return [Note(f"The consumer's state could not be read for the live signal: {e}")]
    if not signal:
        return [Note("No rated answers since the last feedback snapshot: no live signal yet.")]
    rows = [
        [v, s["rated"], s["abstention_share"], s["confident_wrong"], s["confident_wrong_share"]]
        for v, s in sorted(signal.items())
    ]
    headers = ["version", "rated answers", "hedged", "confident, corrected", "share"]
    return [
        Note("Live, since the last feedback snapshot: answers that did not hedge and that "
             "their user rated down with a correction. Only what users notice and rate."),
        Table.of(headers, rows),
    ]  # fmt: skip


def _cards(src: Sources) -> list[Block]:
    aliases = {n: [a for a, m in src.aliases.items() if m == n] for n in src.aliases.values()}
    blocks: list[Block] = []
    for v in reversed(src.versions):  # the newest first: the one an operator asks about
        tags = "".join(f" · {a}" for a in sorted(aliases.get(v.version, [])))
        text = src.cards.get(v.ref)
        if text is not None:
            blocks.append(Details(f"{v.ref}{tags}: model card (README.md)", text))
    if not blocks:
        return [Note("No model card could be read or built.")]
    return [Note("Each version's model card, as `flywheel models card` prints it."), *blocks]
