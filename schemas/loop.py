"""The feedback loop's recipe: where events and state live, when to retrain, how to judge."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel
from schemas.storage import StorageSettings
from schemas.train import Stage


class PolicySettings(StrictModel):
    """When to fine-tune (see core.loop.policy.RetrainPolicy)."""

    min_new_examples: int = Field(20, ge=1, description="Curated examples that trigger.")
    min_acceptance: float = Field(0.5, ge=0, le=1, description="Trigger below this acceptance.")
    acceptance_window: int = Field(50, ge=1, description="Rated requests in the window.")
    max_drift: float = Field(0.6, ge=0, le=1, description="Trigger above this drift score.")
    cooldown_s: float = Field(600, ge=0, description="Seconds between triggers.")


class GateSettings(StrictModel):
    """What a candidate must show before it serves anyone."""

    min_accuracy_gain: float = Field(
        0.1,
        ge=-1,
        le=1,
        description="Held-back corrections answered right: at least this much more often "
        "than production (absolute, 0.1 = ten points).",
    )
    max_accepted_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Answers users accepted (facts nobody corrected): at most this much less "
        "often given than by production (and always one answer of the held-back set).",
    )
    margin: float = Field(
        0.05,
        ge=0,
        description="Held-back feedback's answer-token loss must drop by this share.",
    )
    tolerance: float = Field(0.05, ge=0, description="Held-out loss may rise by this share.")
    max_bias_increase: float = Field(
        1.0,
        ge=0,
        description="Bias probes (core.governance.bias): in every category, the candidate's "
        "likelihood spread between group terms may exceed its parent's by at most this many "
        "nats (mean per-token log-prob). Lenient: a fine-tune sharpens the model and so every "
        "spread (the demo's on facts: +0.2 to +0.4 nats in all four categories); a model taught "
        "to prefer one group moves them more. Skipped for reports without it.",
    )
    max_hallucination_increase: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Hallucination rate (core.governance.hallucination: confident answers "
        "about made-up things or wrong checkable ones, over all asked): at most this much "
        "above the parent's (absolute, 0.2 = twenty points). Skipped for reports without it.",
    )


class CanarySettings(StrictModel):
    """How a passing candidate is tried on live traffic."""

    weight: float = Field(20, gt=0, lt=100, description="Percent of traffic to the canary.")
    min_rated: int = Field(10, ge=1, description="Rated canary requests before judging.")
    max_acceptance_drop: float = Field(0.1, ge=0, le=1)
    max_wait_s: float = Field(3600, gt=0, description="Roll back if still undecided after this.")
    max_votes_per_principal: int = Field(
        3,
        ge=1,
        description="Ratings one principal (an API key, or a trusted key's user) adds to a "
        "canary's or production's tally at most; more are scaled down to this weight.",
    )


class FinetuneSettings(StrictModel):
    """The fine-tune job the controller submits."""

    recipe: str = Field(description="Base train recipe (YAML path); mode/model/data are set.")
    overrides: list[str] = Field(default_factory=list, description="--set overrides for it.")
    block_size: int = Field(256, ge=8, description="Block size of feedback snapshots.")
    replay_blocks: int = Field(
        16,
        ge=0,
        description=(
            "Rehearsal: blocks of production's training snapshot mixed into each fine-tune "
            "(from its end; evaluation holds out its start), so learning a few corrections "
            "does not make the model forget the rest. 0 trains on the feedback alone."
        ),
    )
    parse_special_tokens: bool = Field(
        True, description="Feedback prompts are rendered by our chat template: keep its tokens."
    )
    objectives: list[Stage] = Field(
        default_factory=list,
        description="What the fine-tune learns from, in order, e.g. [{objective: sft, steps: "
        "24}, {objective: dpo, steps: 8}]; a stage whose rows the snapshot lacks is skipped. "
        "Unset: the recipe's own objective and steps.",
    )
    ratings_only_objectives: list[Stage] = Field(
        default_factory=lambda: [Stage(objective="kto", steps=24)],
        description="Instead of `objectives` when users only rated (no corrections): what "
        "ratings alone can teach.",
    )


class EvalSettings(StrictModel):
    """The evaluation job."""

    heldout_snapshot_uri: str | None = Field(
        None, description="Held-out set (a snapshot); production's training snapshot if unset."
    )
    max_heldout_blocks: int = Field(64, ge=1)
    qa_uri: str | None = Field(
        None, description="Optional JSONL of {question, answer} scored by generation accuracy."
    )
    max_new_tokens: int = Field(48, ge=1)


class JobSettings(StrictModel):
    """How jobs reach the cluster."""

    address: str | None = Field(
        None, description="Ray dashboard/job address; RAY_ADDRESS or the local one if unset."
    )
    python: str = Field("python", description="Interpreter in the job's environment.")
    working_dir: str | None = Field(None, description="Uploaded as the job's working dir.")
    env_vars: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(3600, gt=0)


class LoopConfig(StrictModel):
    """A whole loop recipe (``jobs/configs/loop-*.yaml``)."""

    schema_version: Literal[1] = 1
    model_name: str = Field(description="The served model whose loop this is.")
    registry_uri: str
    event_log_uri: str
    loop_uri: str = Field(description="Root for the loop's own state, snapshots and job files.")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    join_window_s: float = Field(
        86400,
        gt=0,
        description="How long a response awaits feedback: at least the gateway's feedback window.",
    )
    max_pending: int = Field(
        100_000, ge=1, description="Responses awaiting feedback kept at most (oldest go first)."
    )
    max_pending_feedback: int = Field(
        10_000, ge=1, description="Feedback awaiting its response kept at most (oldest first)."
    )
    tick_interval_s: float = Field(2.0, gt=0)
    retention_days: float = Field(
        180,
        gt=0,
        description="Events older than this many days are compacted to tombstones by "
        "`flywheel data compact` (core.erasure.compact).",
    )
    policy: PolicySettings = Field(default_factory=PolicySettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    canary: CanarySettings = Field(default_factory=CanarySettings)
    finetune: FinetuneSettings
    evaluate: EvalSettings = Field(default_factory=EvalSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    approval: Literal["auto", "required"] = Field(
        "auto",
        description="required: a candidate that passes the gate waits (awaiting_approval) "
        "until a person runs `flywheel models approve` or `reject` on it; auto: its canary "
        "starts at once.",
    )
    approval_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Reject a candidate still awaiting approval after this; None waits forever.",
    )


class CuratedExample(StrictModel):
    """A correction fit to train on (``core.loop.curation.Example``), with its sources."""

    prompt: str = Field(description="The served prompt, in the model's chat template.")
    answer: str = Field(description="The corrected answer.")
    event_ids: list[str] = Field(description="Served-output and feedback events it came from.")
    users: list[str] = Field(default_factory=list)
    key: str = Field(description="Content hash of prompt and answer (stable split and ids).")
    rejected: list[str] = Field(
        default_factory=list,
        description="The served answers this correction corrects (preference pairs' losers).",
    )


class RatedAnswer(StrictModel):
    """A served answer users rated (``core.loop.curation.Rated``): a KTO example."""

    prompt: str
    completion: str = Field(description="The served answer.")
    desirable: bool = Field(description="Rated 4-5 (True) or 1-2 (False) by most raters.")
    ratings: list[int]
    event_ids: list[str]
    users: list[str] = Field(default_factory=list)
    key: str


class QuarantinedCorrection(StrictModel):
    """A correction never trained on, and why (``core.loop.curation``'s rules)."""

    reason: str = Field(description="instruction, link, spam, flood or outlier.")
    prompt: str
    answer: str
    user: str | None = None
    event_ids: list[str]


class FeedbackSnapshotConfig(StrictModel):
    """The publishing job's recipe (``python -m jobs.feedback_snapshot``), written by the
    controller: the examples it curated, frozen at submission, so a retry publishes the same."""

    schema_version: Literal[1] = 1
    loop: LoopConfig
    upto: int = Field(ge=0, description="Consumer candidates these examples cover.")
    ratings_upto: int = Field(0, ge=0, description="Consumer ratings the rated answers cover.")
    examples: list[CuratedExample]
    rated: list[RatedAnswer] = Field(default_factory=list)
    quarantined: list[QuarantinedCorrection] = Field(default_factory=list)
    production_snapshot: str | None = Field(
        None, description="The corpus production learned from (recorded for lineage)."
    )
