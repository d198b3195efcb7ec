"""Publish curated feedback as feedback snapshots that trace back to their events.

    python -m jobs.feedback_snapshot --config publish.json --result snapshot.json
    ray job submit -- python -m jobs.feedback_snapshot --config publish.json

The loop controller submits it like the fine-tune and the evaluation, with the examples it
curated frozen in the config (``schemas.loop.FeedbackSnapshotConfig``): corrections and the
served answers users rated. They become three kinds of rows (``schemas.feedback``), tokenized
with the production model's tokenizer (its chat special tokens kept, since the prompts were
rendered by its chat template):

- ``sft``: the served prompt and the correction;
- ``preference``: the correction chosen over the served answer it corrects;
- ``kto``: each rated answer, desirable or not, with another row's answer as its KL pair.

Part of it is held back as the ``eval`` snapshot, which the gate scores and nothing trains
on: corrections on phrasings the candidate never saw, of facts it was taught by another
phrasing (a correction whose answer no other correction shares stays in training: holding
it out would only test what was never taught), and every fifth answer users rated good.
The manifest's ``parents`` lists every event id; quarantined items are written beside the
snapshots for operators, never into them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from core import storage
from core.config import load_config
from core.data.feedback import write_feedback
from core.data.tokenization import TokenizerBundle, load_tokenizer, tokenizer_files
from core.loop.answers import normalize_answer
from core.loop.erasure import erased_event_ids, without_erased
from core.registry import ModelRegistry
from core.registry.provenance import code_version
from jobs.runtime import config_args
from schemas.loop import CuratedExample, FeedbackSnapshotConfig, RatedAnswer
from schemas.snapshot import TokenizerInfo


def held_prompts(examples: list[CuratedExample], rated: list[RatedAnswer], every: int = 5) -> set:
    """The prompts held back for evaluation (see the module docstring)."""
    by_answer: dict[str, list[CuratedExample]] = defaultdict(list)
    for e in examples:
        by_answer[normalize_answer(e.answer)].append(e)
    # The phrasings past the first of each answer; a quarter of them are held back: enough
    # to judge a candidate, and most of what users taught stays in training.
    extra = sorted(
        (e for group in by_answer.values() for e in sorted(group, key=lambda e: e.key)[1:]),
        key=lambda e: e.key,
    )
    held = {e.prompt for e in extra if int(e.key[:8], 16) % 4 == 0}
    if extra and not held:  # a gate with nothing to answer would judge by loss alone
        held.add(extra[0].prompt)
    taught = {e.prompt for e in examples} - held
    for r in rated:
        if r.desirable and r.prompt not in taught and int(r.key[:8], 16) % every == 0:
            held.add(r.prompt)
    return held


def publish_feedback_snapshot(job: FeedbackSnapshotConfig) -> dict[str, Any]:
    """Publish the job's examples as a train and an eval snapshot; returns their ids, uris
    and counts, and ``upto`` / ``ratings_upto`` (the consumer candidates they cover)."""
    cfg = job.loop
    job = without_erased(job, erased_event_ids(cfg))  # erased since the job was frozen
    if not job.examples and not job.rated:
        raise ValueError("nothing to publish: no curated corrections and no rated answers")
    root = storage.resolve(cfg.loop_uri, cfg.storage).join("feedback")
    source = storage.resolve(_tokenizer_uri(job), cfg.storage)
    files, bundle = tokenizer_files(source), load_tokenizer(source.uri, cfg.storage)
    info = TokenizerInfo(
        source=source.uri,
        sha256=bundle.sha256,
        vocab_size=bundle.tokenizer.get_vocab_size(),
        eos_token_id=bundle.eos_token_id,
        pad_token_id=bundle.pad_token_id,
    )
    held = held_prompts(job.examples, job.rated)
    quarantined: dict[str, int] = defaultdict(int)
    for q in job.quarantined:
        quarantined[q.reason] += 1
    out: dict[str, Any] = {
        "upto": job.upto,
        "ratings_upto": job.ratings_upto,
        "examples": len(job.examples),
        "rated": len(job.rated),
        "quarantined": len(job.quarantined),
        "production_snapshot": job.production_snapshot,
    }
    for role in ("train", "eval"):
        keep = (lambda p: p not in held) if role == "train" else (lambda p: p in held)
        rows = build_rows(
            [e for e in job.examples if keep(e.prompt)],
            [r for r in job.rated if keep(r.prompt)],
            bundle,
            cfg.finetune.parse_special_tokens,
        )
        loc, manifest = write_feedback(
            root.join(role),
            f"{cfg.model_name}-feedback-{role}",
            role,
            rows,
            info,
            files,
            dict(quarantined),
            job.production_snapshot,
            code_version(),
            # Examples naming no principal count as one shared principal, as curation does.
            len(
                {u for x in (*job.examples, *job.rated) if keep(x.prompt) for u in x.users or [""]}
            ),
        )
        out[f"{role}_snapshot_id"], out[f"{role}_uri"] = manifest.snapshot_id, loc.uri
        out[f"{role}_counts"] = manifest.counts.model_dump(exclude={"quarantined"})
    out["snapshot_id"], out["uri"] = out["train_snapshot_id"], out["train_uri"]
    out["counts"] = out["train_counts"]
    _write_quarantine(root, job)
    return out


def build_rows(
    examples: list[CuratedExample],
    rated: list[RatedAnswer],
    tok: TokenizerBundle,
    parse_special: bool,
) -> dict[str, list[dict[str, Any]]]:
    """Rows of every kind (``schemas.feedback.KIND_COLUMNS``), tokenized."""

    def ids(texts: list[str], answer: bool) -> list[list[int]]:
        # Prompts were rendered by our chat template; answers are the user's text and must
        # never carry special tokens of their own. An answer ends the assistant's turn.
        encoded = tok.encode_batch(texts, parse_special=parse_special and not answer)
        return [[*e, tok.eos_token_id] for e in encoded] if answer else encoded

    sft = [
        {
            "key": e.key,
            "event_ids": e.event_ids,
            "prompt": e.prompt,
            "prompt_ids": p,
            "completion": e.answer,
            "completion_ids": c,
        }
        for e, p, c in zip(
            examples, ids([e.prompt for e in examples], False),
            ids([e.answer for e in examples], True), strict=True,
        )
    ]  # fmt: skip
    pairs = [
        (row, rejected) for row, e in zip(sft, examples, strict=True) for rejected in e.rejected
    ]
    preference = [
        {
            "key": row["key"],
            "event_ids": row["event_ids"],
            "prompt": row["prompt"],
            "prompt_ids": row["prompt_ids"],
            "chosen": row["completion"],
            "chosen_ids": row["completion_ids"],
            "rejected": rejected,
            "rejected_ids": r_ids,
        }
        for (row, rejected), r_ids in zip(pairs, ids([r for _, r in pairs], True), strict=True)
    ]
    completions = ids([r.completion for r in rated], True)
    kto = [
        {
            "key": r.key,
            "event_ids": r.event_ids,
            "prompt": r.prompt,
            "prompt_ids": p,
            "completion": r.completion,
            "completion_ids": c,
            "desirable": r.desirable,
            # The next row's answer: a mismatched pair for KTO's reference point.
            "kl_completion_ids": completions[(i + 1) % len(completions)],
        }
        for i, (r, p, c) in enumerate(
            zip(rated, ids([r.prompt for r in rated], False), completions, strict=True)
        )
    ]
    return {"sft": sft, "preference": preference, "kto": kto}


def _tokenizer_uri(job: FeedbackSnapshotConfig) -> str:
    """The production version's own tokenizer files (its chat template included)."""
    cfg = job.loop
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    version = registry.get(f"{cfg.model_name}@production")
    return registry.files_location(version).uri


def _write_quarantine(root: Any, job: FeedbackSnapshotConfig) -> None:
    if job.quarantined:
        lines = "".join(q.model_dump_json() + "\n" for q in job.quarantined)
        storage.write_text(root.join("quarantine", f"upto-{job.upto}.jsonl"), lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args("Publish curated feedback as a train and an eval feedback snapshot.", argv)
    job = load_config(FeedbackSnapshotConfig, args.config, args.overrides)
    result = publish_feedback_snapshot(job)
    if args.result:
        storage.write_json(storage.resolve(args.result, job.loop.storage), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
