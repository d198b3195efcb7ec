"""Publish curated feedback as a dataset snapshot that traces back to its events.

    python -m jobs.feedback_snapshot --config publish.json --result snapshot.json
    ray job submit -- python -m jobs.feedback_snapshot --config publish.json

The loop controller submits it like the fine-tune and the evaluation, with the examples it
curated frozen in the config (``schemas.loop.FeedbackSnapshotConfig``).

The examples (served prompt, already in the model's chat template, plus the corrected
answer) are split into a train and an eval part (the gate scores corrections the candidate
never saw), written as JSONL under ``<loop_uri>/feedback/<role>/raw/<digest>/`` and run through
the ingest pipeline (one process: they are few) with the production model's tokenizer, its
chat special tokens kept. The manifest's ``parents`` lists every event id, so lineage walks
from a model version to the feedback that taught it. Quarantined items are written beside
the examples for operators, never into the snapshot. The same examples give the same
snapshot id, so publishing twice is harmless.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from core import storage
from core.config import load_config
from core.registry import ModelRegistry
from core.storage import Location
from jobs.ingest import run_ingest
from jobs.runtime import Progress, config_args
from schemas.ingest import IngestConfig
from schemas.loop import CuratedExample, FeedbackSnapshotConfig, LoopConfig, QuarantinedCorrection
from schemas.snapshot import SnapshotManifest


def split_examples(
    examples: list[CuratedExample], every: int = 5
) -> tuple[list[CuratedExample], list[CuratedExample]]:
    """(train, eval): every ``every``-th example by key hash is held out for evaluation, so
    the gate measures corrections the candidate never saw; both sides get at least one."""
    held = [e for e in examples if int(e.key[:8], 16) % every == 0]
    train = [e for e in examples if int(e.key[:8], 16) % every != 0]
    if not held and len(train) > 1:
        held, train = train[-1:], train[:-1]
    if not train and len(held) > 1:
        train, held = held[:-1], held[-1:]
    return train, held


def publish_feedback_snapshot(job: FeedbackSnapshotConfig) -> dict[str, Any]:
    """Publish ``job.examples`` as a train and an eval snapshot; returns their ids, uris and
    counts, and ``upto`` (the consumer candidates they cover)."""
    cfg, examples = job.loop, job.examples
    if len(examples) < 2:
        raise ValueError("need at least two curated examples (one to train, one to evaluate)")
    root = storage.resolve(cfg.loop_uri, cfg.storage).join("feedback")
    train, held = split_examples(examples)
    out: dict[str, Any] = {
        "upto": job.upto,
        "examples": len(examples),
        "quarantined": len(job.quarantined),
        "production_snapshot": job.production_snapshot,
    }
    for role, part in (("train", train), ("eval", held)):
        manifest = _publish(cfg, root, role, part, job.quarantined)
        out[f"{role}_snapshot_id"] = manifest.snapshot_id
        out[f"{role}_uri"] = root.join(role, "datasets", "snapshots", manifest.snapshot_id).uri
        out[f"{role}_examples"] = len(part)
    out["snapshot_id"], out["uri"] = out["train_snapshot_id"], out["train_uri"]
    return out


def _publish(
    cfg: LoopConfig,
    root: Location,
    role: str,
    examples: list[CuratedExample],
    quarantined: list[QuarantinedCorrection],
) -> SnapshotManifest:
    keys = json.dumps(sorted(e.key for e in examples))
    raw = root.join(role, "raw", hashlib.sha256(keys.encode()).hexdigest()[:16])
    lines = [json.dumps({"text": e.prompt + e.answer, "event_ids": e.event_ids}) for e in examples]
    storage.write_text(raw.join("examples.jsonl"), "\n".join(lines) + "\n")
    storage.write_text(
        raw.join("_quarantined.jsonl"), "".join(q.model_dump_json() + "\n" for q in quarantined)
    )
    event_ids = sorted({i for e in examples for i in e.event_ids})
    ingest = IngestConfig.model_validate(
        {
            "name": f"{cfg.model_name}-feedback-{role}",
            "storage": cfg.storage.model_dump(mode="json"),
            "input": {"uri": raw.uri, "glob": "examples.jsonl", "format": "jsonl"},
            "output": {"uri": root.join(role, "datasets").uri},
            "clean": {"min_chars": 8, "min_alpha_ratio": 0.3, "max_repeated_line_ratio": 1.0},
            "dedup": {"exact": True, "near": False},
            "tokenizer": {
                "kind": "pretrained",
                "uri": _tokenizer_uri(cfg),
                "parse_special_tokens": cfg.finetune.parse_special_tokens,
            },
            "pack": {"block_size": cfg.finetune.block_size},
            "execution": {"executor": "local"},
            "parents": [f"feedback-events:{raw.uri}", *event_ids],
        }
    )
    return run_ingest(ingest, Progress(f"feedback-{role}"))


def _tokenizer_uri(cfg: LoopConfig) -> str:
    """The production version's own tokenizer files (its chat template included)."""
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    version = registry.get(f"{cfg.model_name}@production")
    return registry.files_location(version).uri


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args("Publish curated feedback as a train and an eval dataset snapshot.", argv)
    job = load_config(FeedbackSnapshotConfig, args.config, args.overrides)
    result = publish_feedback_snapshot(job)
    if args.result:
        storage.write_json(storage.resolve(args.result, job.loop.storage), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
