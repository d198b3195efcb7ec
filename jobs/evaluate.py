"""Evaluate a candidate version against production on held-back feedback and a held-out set.

    python -m jobs.evaluate --config eval.yaml --result s3://.../report.json
    ray job submit -- python -m jobs.evaluate --config eval.yaml

For each model, on the held-back feedback snapshot (``jobs.feedback_snapshot``'s eval part,
never trained on): how many corrected questions it now answers as users said (greedy
answers, :func:`core.loop.answers.answer_matches` on what the correction adds to the
question), how many answers users accepted it still gives (facts nobody corrected), and the
mean loss of the corrections' answer tokens. On the corpus: the mean loss of held-out blocks
(what must not regress). Optionally generation accuracy on question/answer pairs. The
governance checks: the hallucination rate (``core.governance.hallucination``) and bias
probes (``core.governance.bias``). The gate (``core.loop.policy.gate``) decides; the report
goes to the candidate's evaluation reports in the registry and to ``--result``. Without a
``production`` version the candidate is scored alone and the report's gate is None.

With a ``baseline`` instead (a quantized version's source), both are scored the same way
and nothing is gated: the report adds ``delta`` (candidate minus baseline, per score) and
how often both predict the same next token on the held-out blocks (``top1_agreement``):

    python -m jobs.evaluate --config eval.yaml --set candidate=demo:4 --set baseline=demo:3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core import storage
from core.config import load_config
from core.data.feedback import open_training_data, read_rows
from core.data.snapshots import resolve_snapshot, shard_locations
from core.generation.greedy import chat_prompt_ids, greedy_answers
from core.generation.loading import LoadedModel, load_version
from core.governance.bias import bias_scores
from core.governance.hallucination import Checkable, hallucination_scores
from core.loop.answers import answer_matches, expected_answer
from core.loop.policy import gate
from core.objectives import completion_logps
from core.registry import ModelRegistry
from core.training import batch_tensors
from schemas.evaluate import EvalConfig
from schemas.feedback import FeedbackManifest


def blocks(uri: str, settings: Any, limit: int | None) -> list[tuple[np.ndarray, list, int]]:
    """Up to ``limit`` packed blocks of a snapshot, in order."""
    snap, manifest = resolve_snapshot(uri, settings)
    out = []
    for shard in shard_locations(snap, manifest):
        t = storage.read_parquet(shard)
        for ids, segs, pad in zip(
            t["input_ids"].to_pylist(),
            t["segment_lengths"].to_pylist(),
            t["num_pad"].to_pylist(),
            strict=True,
        ):
            out.append((np.asarray(ids), segs, pad))
            if limit is not None and len(out) >= limit:
                return out
    return out


# Scores whose candidate-minus-baseline difference a baseline comparison reports.
DELTA_SCORES = (
    ("heldout_loss",),
    ("feedback_loss",),
    ("corrected", "accuracy"),
    ("accepted", "accuracy"),
    ("qa", "accuracy"),
    ("hallucination", "rate"),
    ("bias", "max_spread"),
)


def mean_loss(
    loaded: LoadedModel, data: list[tuple[np.ndarray, list, int]], batch: int = 8
) -> float:
    """Mean next-token loss over real tokens, documents masked from each other."""
    return next_token_scores(loaded, data, batch)[0]


@torch.inference_mode()
def next_token_scores(
    loaded: LoadedModel, data: list[tuple[np.ndarray, list, int]], batch: int = 8
) -> tuple[float, torch.Tensor]:
    """:func:`mean_loss`, and the predicted (argmax) next token at every real token, in order:
    two models' predictions compare position by position."""
    total, count, top1 = 0.0, 0, []
    for i in range(0, len(data), batch):
        rows = data[i : i + batch]
        inputs = batch_tensors(
            np.stack([r[0] for r in rows]), [r[1] for r in rows], [r[2] for r in rows]
        )
        labels = inputs.pop("labels")
        logits = loaded.model(**inputs).logits[:, :-1].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total += float(losses)
        count += int((targets != -100).sum())
        top1.append(logits.argmax(-1)[targets != -100])
    return total / max(1, count), torch.cat(top1) if top1 else torch.empty(0, dtype=torch.long)


def feedback_scores(
    loaded: LoadedModel, rows: dict[str, list[dict]], max_new: int, pad_id: int
) -> dict[str, Any]:
    """On held-back feedback: corrections answered as users said, accepted answers still
    given (each judged on what the answer adds to its question), the corrections' loss."""
    out: dict[str, Any] = {}
    accepted = [r for r in rows["kto"] if r["desirable"]]
    for name, part in (("corrected", rows["sft"]), ("accepted", accepted)):
        if not part:
            continue
        answers = greedy_answers(loaded, [r["prompt_ids"] for r in part], max_new)
        expected = [expected_answer(r["prompt"], r["completion"]) for r in part]
        right = [answer_matches(e, a) for e, a in zip(expected, answers, strict=True)]
        out[name] = {
            "accuracy": sum(right) / len(right),
            "n": len(right),
            "samples": [
                {"expected": e, "answer": a[:160], "ok": ok}
                for e, a, ok in list(zip(expected, answers, right, strict=True))[:6]
            ],
        }
    if rows["sft"] or accepted:
        out["feedback_loss"] = _completion_loss(loaded, rows["sft"] or accepted, pad_id)
    return out


@torch.inference_mode()
def _completion_loss(loaded: LoadedModel, rows: list[dict], pad_id: int) -> float:
    """Mean per-token loss of the rows' completions (the answer tokens only)."""
    total, count = 0.0, 0
    for i in range(0, len(rows), 8):
        chunk = rows[i : i + 8]
        completions = [r["completion_ids"] for r in chunk]
        logps = completion_logps(
            loaded.model, [r["prompt_ids"] for r in chunk], completions, pad_id
        )
        total -= float(logps.sum())
        count += sum(len(c) for c in completions)
    return total / max(1, count)


def qa_accuracy(loaded: LoadedModel, items: list[dict[str, str]], max_new: int) -> dict:
    """Greedy answers to each question; correct when the expected answer appears in it
    (:func:`core.loop.answers.answer_matches`, the rule the demo scores by too)."""
    ids = chat_prompt_ids(loaded, [q["question"] for q in items])
    answers = greedy_answers(loaded, ids, max_new)
    correct = [answer_matches(q["answer"], a) for q, a in zip(items, answers, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct) if correct else None,
        "n": len(correct),
        "samples": [
            {"question": q["question"], "answer": a[:200], "correct": c}
            for q, a, c in list(zip(items, answers, correct, strict=True))[:8]
        ],
    }


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    rows, pad_id, feedback = _feedback(cfg)
    heldout = blocks(cfg.heldout_snapshot_uri, cfg.storage, cfg.max_heldout_blocks)
    qa = _qa_items(cfg)
    report: dict[str, Any] = {
        "feedback_snapshot": cfg.feedback_snapshot_uri,
        "heldout_snapshot": cfg.heldout_snapshot_uri,
        "feedback_rows": {k: len(v) for k, v in rows.items()} if rows else None,
        "feedback_blocks": len(feedback),
        "heldout_blocks": len(heldout),
    }
    roles = [("candidate", cfg.candidate)]
    if cfg.production:  # standalone: the candidate's scores alone, no gate to pass
        roles.append(("production", cfg.production))
    if cfg.baseline:
        roles.append(("baseline", cfg.baseline))
    predicted = {}
    for role, ref in roles:
        loaded = load_version(registry, ref, torch.float32)
        scores = feedback_scores(loaded, rows, cfg.max_new_tokens, pad_id) if rows else {}
        if feedback:  # a packed (corpus-format) feedback snapshot: the loss alone
            scores["feedback_loss"] = mean_loss(loaded, feedback)
        heldout_loss, predicted[role] = next_token_scores(loaded, heldout)
        report[role] = {"version": loaded.ref, **scores, "heldout_loss": heldout_loss}
        if qa:
            report[role]["qa"] = qa_accuracy(loaded, qa, cfg.max_new_tokens)
        report[role]["hallucination"] = hallucination_scores(loaded, checkable(loaded, rows, qa))
        report[role]["bias"] = bias_scores(loaded)
        del loaded
    report["gate"] = None
    if cfg.baseline:
        report["delta"] = score_delta(report["candidate"], report["baseline"])
        same = predicted["candidate"] == predicted["baseline"]
        report["delta"]["top1_agreement"] = float(same.float().mean()) if len(same) else None
    if cfg.production:
        decision = gate(report, cfg.gate)
        report["gate"] = {"passed": decision.trigger, "reason": decision.reason}
    return report


def score_delta(candidate: dict[str, Any], baseline: dict[str, Any]) -> dict[str, float]:
    """Candidate minus baseline for every score of ``DELTA_SCORES`` both have, by dotted name
    (``{"heldout_loss": 0.004, "qa.accuracy": -0.05}``)."""
    out = {}
    for path in DELTA_SCORES:
        c, b = candidate, baseline
        for key in path:
            c = c.get(key) if isinstance(c, dict) else None
            b = b.get(key) if isinstance(b, dict) else None
        if isinstance(c, int | float) and isinstance(b, int | float):
            out[".".join(path)] = float(c) - float(b)
    return out


def checkable(
    loaded: LoadedModel, rows: dict[str, list[dict]], qa: list[dict[str, str]]
) -> list[Checkable]:
    """The questions with a known answer: QA items, then held-back corrections."""
    asked = chat_prompt_ids(loaded, [q["question"] for q in qa]) if qa else []
    out = [Checkable(q["question"], ids, q["answer"]) for q, ids in zip(qa, asked, strict=True)]
    out += [
        Checkable(r["prompt"], r["prompt_ids"], expected_answer(r["prompt"], r["completion"]))
        for r in rows.get("sft", [])
    ]
    return out


def _feedback(cfg: EvalConfig) -> tuple[dict[str, list[dict]], int, list]:
    """(rows by kind, pad id, []) of a feedback snapshot, ({}, 0, packed blocks) of a
    corpus-format one, or ({}, 0, []) without one."""
    if not cfg.feedback_snapshot_uri:
        return {}, 0, []
    snap, manifest = open_training_data(cfg.feedback_snapshot_uri, cfg.storage)
    if not isinstance(manifest, FeedbackManifest):
        return {}, 0, blocks(cfg.feedback_snapshot_uri, cfg.storage, None)
    rows = {k: read_rows(snap, manifest, k) for k in ("sft", "kto")}
    return rows, manifest.tokenizer.pad_token_id, []


def _qa_items(cfg: EvalConfig) -> list[dict[str, str]]:
    if not cfg.qa_uri:
        return []
    raw = storage.read_bytes(storage.resolve(cfg.qa_uri, cfg.storage)).decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Evaluate a candidate against production or a baseline."
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--result", help="Also write the report JSON here (path or s3://).")
    args = parser.parse_args(argv)
    cfg = load_config(EvalConfig, args.config, args.overrides)
    report = evaluate_and_record(cfg)
    if args.result:
        storage.write_json(storage.resolve(args.result, cfg.storage), report)
    shown = {k: report.get(k) for k in ("candidate", "production", "gate")}
    shown |= {k: report[k] for k in ("baseline", "delta") if k in report}
    print(json.dumps(shown, indent=2, default=str))


def evaluate_and_record(cfg: EvalConfig) -> dict[str, Any]:
    """:func:`evaluate`, its report appended to the candidate's evaluation reports."""
    report = evaluate(cfg)
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    registry.add_eval_report(cfg.candidate, {"kind": "evaluation", **report})
    return report


if __name__ == "__main__":
    main()
