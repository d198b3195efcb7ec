"""The configs of the jobs the loop controller submits, and their submission ids: pure.

Each builder returns a validated config model and a deterministic submission id derived from
the cycle's subject (snapshot, candidate, covered candidates) and the config's content, so a
controller that retries a phase finds the job it already submitted instead of starting a twin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from core.config import config_hash, load_config
from core.loop.state import Cycle
from core.registry import ModelRegistry
from schemas.evaluate import EvalConfig
from schemas.loop import (
    CuratedExample,
    FeedbackSnapshotConfig,
    LoopConfig,
    QuarantinedCorrection,
    RatedAnswer,
)
from schemas.train import DataConfig, TrainConfig

REPO = Path(__file__).resolve().parents[2]


def job_id(kind: str, subject: str, config_digest: str) -> str:
    """Deterministic: the same subject and config always give the same submission id."""
    digest = hashlib.sha256(f"{subject}\0{config_digest}".encode()).hexdigest()[:16]
    return f"flywheel-{kind}-{digest}"


def publish_config(
    cfg: LoopConfig, pending: dict[str, Any], production_snapshot: str | None
) -> tuple[FeedbackSnapshotConfig, str]:
    """The publishing job: the consumer's pending examples (``pending_examples()``) frozen."""
    job = FeedbackSnapshotConfig(
        loop=cfg,
        upto=pending["upto"],
        examples=[CuratedExample.model_validate(e) for e in pending["examples"]],
        rated=[RatedAnswer.model_validate(r) for r in pending.get("rated", [])],
        ratings_upto=pending.get("ratings_upto", 0),
        quarantined=[QuarantinedCorrection.model_validate(q) for q in pending["quarantined"]],
        production_snapshot=production_snapshot,
    )
    return job, job_id("publish", f"{cfg.model_name}:{job.upto}", config_hash(job))


def train_config(
    cfg: LoopConfig, cycle: Cycle, production_snapshot: str | None
) -> tuple[TrainConfig, str]:
    """A LoRA fine-tune of production on the cycle's feedback snapshot (the loop's recipe
    with its overrides, retargeted at this loop's registry and storage)."""
    f = cfg.finetune
    base = load_config(TrainConfig, _recipe(f.recipe), f.overrides)
    train = base.model_copy(
        update={
            **objective_plan(cfg, base, cycle.counts),
            "mode": "lora",
            "model": base.model.model_copy(
                update={"registry_ref": cycle.production, "uri": None, "architecture": None}
            ),
            "data": finetune_data(cfg, base.data, cycle.snapshot_uri, production_snapshot),
            "registry": base.registry.model_copy(
                update={"uri": cfg.registry_uri, "model_name": cfg.model_name, "alias": None}
            ),
            "storage": cfg.storage,
        }
    )
    submission = job_id("finetune", cycle.snapshot_id, config_hash(train, exclude={"run_name"}))
    train = train.model_copy(update={"run_name": submission})
    # Validate the copy: model_copy(update=...) does not.
    return TrainConfig.model_validate(train.model_dump()), submission


# The rows each objective learns from (schemas.feedback kinds, as counted in the manifest).
NEEDS = {
    "lm": ("sft",),
    "sft": ("sft",),
    "dpo": ("preference",),
    "kto": ("kto_desirable", "kto_undesirable"),
}


def objective_plan(
    cfg: LoopConfig, base: TrainConfig, counts: dict[str, int] | None
) -> dict[str, Any]:
    """The loop's objectives (its ratings-only ones when nobody corrected anything), less
    those whose rows this snapshot lacks; their steps become ``optim.max_steps``."""
    if not cfg.finetune.objectives:
        return {}
    counts = counts or {}
    corrected = counts.get("sft") or counts.get("preference")
    wanted = cfg.finetune.objectives if corrected else cfg.finetune.ratings_only_objectives
    stages = [s for s in wanted if any(counts.get(k) for k in NEEDS[s.objective])]
    if not stages:
        raise ValueError(
            f"the feedback snapshot has no rows for any of the loop's objectives "
            f"({[s.objective for s in wanted]}): counts {counts}"
        )
    steps = sum(s.steps for s in stages)
    optim = base.optim.model_copy(update={"max_steps": steps})
    return {"objective": stages[0].objective, "stages": stages, "optim": optim}


def finetune_data(
    cfg: LoopConfig, data: DataConfig, snapshot_uri: str, production_snapshot: str | None
) -> DataConfig:
    """The feedback snapshot, with a rehearsal sample of production's corpus mixed in
    (the workers' shuffle buffer holds both, so every step sees some of each)."""
    replay = production_snapshot if cfg.finetune.replay_blocks else None
    update: dict[str, Any] = {"snapshot_uri": snapshot_uri}
    if replay:
        update.update(
            replay_snapshot_uri=replay,
            replay_blocks=cfg.finetune.replay_blocks,
            shuffle_buffer_blocks=max(data.shuffle_buffer_blocks, 4 * cfg.finetune.replay_blocks),
        )
    return data.model_copy(update=update)


def eval_config(
    cfg: LoopConfig, cycle: Cycle, production_snapshot: str | None
) -> tuple[EvalConfig, str]:
    """Candidate against production on the held-back feedback and the held-out corpus."""
    e = cfg.evaluate
    body = EvalConfig(
        registry_uri=cfg.registry_uri,
        storage=cfg.storage,
        candidate=cycle.candidate,
        production=cycle.production,
        feedback_snapshot_uri=cycle.eval_snapshot_uri,
        heldout_snapshot_uri=e.heldout_snapshot_uri or production_snapshot,
        max_heldout_blocks=e.max_heldout_blocks,
        qa_uri=e.qa_uri,
        max_new_tokens=e.max_new_tokens,
        gate=cfg.gate,
    )
    return body, job_id("evaluate", cycle.candidate, config_hash(body))


def corpus_snapshot(registry: ModelRegistry, ref: str | None, feedback_root: str) -> str | None:
    """The first dataset snapshot on ``ref``'s lineage chain (itself, its parent, ...) that
    is not a feedback snapshot under ``feedback_root``: what the model knows, as opposed to
    the corrections it was last taught."""
    while ref:
        lineage = registry.get(ref).lineage
        for snap in lineage.dataset_snapshots:
            if not snap.uri.startswith(feedback_root):
                return snap.uri
        ref = lineage.parent
    return None


def _recipe(path: str) -> str:
    local = Path(path)
    return str(local if local.is_absolute() or "://" in path else REPO / local)
