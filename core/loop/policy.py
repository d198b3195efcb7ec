"""When the model should learn, and whether a candidate may replace production: pure.

:class:`RetrainPolicy` triggers a fine-tune when there are enough new curated examples, or
production's acceptance rate over a window of rated requests falls below a threshold, or
drift passes a threshold; never during a cooldown, never with a fine-tune already in
flight, never while paused. :func:`gate` judges an evaluation, :func:`judge_canary` a
canary's live statistics. Their settings are the loop recipe's own (``schemas.loop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from schemas.loop import CanarySettings, GateSettings, PolicySettings


@dataclass(frozen=True)
class PolicyInput:
    new_examples: int
    acceptance: float | None  # production, over its last window of rated requests
    rated: int  # rated requests in that window
    drift: float | None
    now: float
    last_trigger: float | None
    in_flight: bool
    paused: bool = False
    forced: bool = False


@dataclass(frozen=True)
class Decision:
    trigger: bool
    reason: str


class RetrainPolicy:
    """Decides whether to fine-tune now; the reason always says why (or why not)."""

    def __init__(self, cfg: PolicySettings | None = None) -> None:
        self.cfg = cfg or PolicySettings()

    def decide(self, s: PolicyInput) -> Decision:
        c = self.cfg
        if s.paused:
            return Decision(False, "paused by an operator")
        if s.in_flight:
            return Decision(False, "a fine-tune is already in flight")
        if s.forced:
            return Decision(
                bool(s.new_examples),
                "forced by an operator"
                if s.new_examples
                else "forced, but there are no curated examples to train on",
            )
        if s.last_trigger is not None and s.now - s.last_trigger < c.cooldown_s:
            left = c.cooldown_s - (s.now - s.last_trigger)
            return Decision(False, f"cooling down ({left:.0f} s left)")
        if not s.new_examples:
            return Decision(False, "no new curated examples")
        if s.new_examples >= c.min_new_examples:
            return Decision(
                True, f"{s.new_examples} new curated examples (>= {c.min_new_examples})"
            )
        if (
            s.acceptance is not None
            and s.rated >= c.acceptance_window
            and s.acceptance < c.min_acceptance
        ):
            return Decision(
                True,
                f"production acceptance {s.acceptance:.2f} < "
                f"{c.min_acceptance} over {s.rated} rated requests",
            )
        if s.drift is not None and s.drift > c.max_drift:
            return Decision(True, f"drift {s.drift:.2f} > {c.max_drift}")
        return Decision(False, f"waiting: {s.new_examples}/{c.min_new_examples} examples")


def gate(report: dict[str, Any], cfg: GateSettings | None = None) -> Decision:
    """Pass when the candidate's loss on held-back feedback dropped by the margin, it answers
    held-back corrections right more often than production (by ``min_accuracy_gain``), still
    gives the answers users accepted (at most ``max_accepted_drop`` fewer), its corpus
    loss is within the tolerance, and against its parent neither a bias category's spread
    (``max_bias_increase``) nor the hallucination rate (``max_hallucination_increase``) rose
    past its limit. A check whose scores a report lacks (an older report) is skipped."""
    cfg = cfg or GateSettings()
    cand, prod = report["candidate"], report["production"]
    if "feedback_loss" not in cand or "feedback_loss" not in prod:
        # Only undesirable ratings were held back: nothing shows what the candidate got right.
        return Decision(False, "the held-back feedback has no corrections or accepted answers "
                        "to judge the candidate by")  # fmt: skip
    losses = [
        cand["feedback_loss"],
        cand["heldout_loss"],
        prod["feedback_loss"],
        prod["heldout_loss"],
    ]
    if not all(math.isfinite(x) and x > 0 for x in losses):
        return Decision(False, f"losses are not finite and positive: {losses} (diverged?)")
    regress = cand["heldout_loss"] / prod["heldout_loss"] - 1
    fb_gain = 1 - cand["feedback_loss"] / prod["feedback_loss"]
    if fb_gain < cfg.margin:
        return Decision(
            False, f"feedback-set loss improved {fb_gain:.1%} < margin {cfg.margin:.0%}"
        )
    said = [f"feedback-set loss -{fb_gain:.1%}"]
    if "corrected" in cand:
        c, p = cand["corrected"]["accuracy"], prod["corrected"]["accuracy"]
        if c - p < cfg.min_accuracy_gain:
            return Decision(False, f"held-back corrections answered right {c:.0%} vs "
                            f"production {p:.0%}: gain < {cfg.min_accuracy_gain:.0%}")  # fmt: skip
        said.append(f"held-back corrections right {c:.0%} (production {p:.0%})")
    if "accepted" in cand:
        c, p = cand["accepted"]["accuracy"], prod["accepted"]["accuracy"]
        # One answer of a handful is noise, not forgetting: allow at least one.
        allowed = max(cfg.max_accepted_drop, 1 / cand["accepted"].get("n", 1) + 1e-9)
        if p - c > allowed:
            return Decision(False, f"accepted answers still given {c:.0%} vs production "
                            f"{p:.0%}: drop > {allowed:.0%}")  # fmt: skip
        said.append(f"accepted answers kept {c:.0%} (production {p:.0%})")
    if regress > cfg.tolerance:
        return Decision(
            False, f"held-out loss worse by {regress:.1%} > tolerance {cfg.tolerance:.0%}"
        )
    said.append(f"held-out loss {regress:+.1%}")
    failed = _bias_failure(cand, prod, cfg) or _hallucination_failure(cand, prod, cfg)
    if failed:
        return Decision(False, failed)
    return Decision(True, ", ".join([*said, *_governance_figures(cand, prod)]))


def _governance_figures(cand: dict[str, Any], prod: dict[str, Any]) -> list[str]:
    """The bias and hallucination figures a passing gate's reason records (the audit's)."""
    out = []
    if "bias" in cand and "bias" in prod:
        c, p = cand["bias"]["max_spread"], prod["bias"]["max_spread"]
        out.append(f"bias: largest spread {c:.2f} nats (parent {p:.2f})")
    c, p = _hallucination_rates(cand, prod)
    if c is not None and p is not None:
        out.append(f"hallucination rate {c:.0%} (parent {p:.0%})")
    return out


def _hallucination_rates(
    cand: dict[str, Any], prod: dict[str, Any]
) -> tuple[float | None, float | None]:
    """(candidate's, parent's) hallucination rate; None where a report has none."""
    return _rate(cand), _rate(prod)


def _rate(scores: dict[str, Any]) -> float | None:
    return (scores.get("hallucination") or {}).get("rate")


def _bias_failure(cand: dict[str, Any], prod: dict[str, Any], cfg: GateSettings) -> str | None:
    """Why the bias probes fail the candidate against its parent (None: they pass, or an
    older report without them)."""
    if "bias" not in cand or "bias" not in prod:
        return None
    parent = prod["bias"]["categories"]
    for cat, scores in cand["bias"]["categories"].items():
        if cat not in parent:
            continue
        c, p = scores["spread"], parent[cat]["spread"]
        if c - p > cfg.max_bias_increase:
            return (f"bias: {cat} probes' likelihood spread {c:.2f} nats vs parent "
                    f"{p:.2f}: rise > {cfg.max_bias_increase}")  # fmt: skip
    return None


def _hallucination_failure(
    cand: dict[str, Any], prod: dict[str, Any], cfg: GateSettings
) -> str | None:
    """Why the hallucination rate fails the candidate against its parent (None: it passes,
    or an older report without it)."""
    c, p = _hallucination_rates(cand, prod)
    if c is None or p is None or c - p <= cfg.max_hallucination_increase:
        return None
    return (f"hallucination: rate {c:.0%} vs parent {p:.0%}: rise > "
            f"{cfg.max_hallucination_increase:.0%}")  # fmt: skip


def judge_canary(
    canary: dict[str, Any], production: dict[str, Any], cfg: CanarySettings | None = None
) -> Decision | None:
    """Promote, roll back, or None to keep watching (not enough rated requests yet)."""
    cfg = cfg or CanarySettings()
    if canary.get("rated", 0) < cfg.min_rated:
        return None
    c_acc = canary["accepted"] / canary["rated"]
    p_acc = production["accepted"] / production["rated"] if production.get("rated") else 0.0
    if c_acc + cfg.max_acceptance_drop < p_acc:
        return Decision(False, f"canary acceptance {c_acc:.2f} trails production {p_acc:.2f}")
    return Decision(True, f"canary acceptance {c_acc:.2f} vs production {p_acc:.2f}")
