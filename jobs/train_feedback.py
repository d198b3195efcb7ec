"""The feedback objectives inside a Ray Train worker: sft, dpo and kto (and lm on feedback).

A feedback snapshot (``schemas.feedback``) is small, tens to thousands of examples, so each
worker reads its rows straight from storage and holds them: rank ``r`` of ``w`` takes rows
``r, r + w, ...``, wrapping round so every rank has as many (under ZeRO-3 each forward is a
collective: every rank must run the same number). The rehearsal blocks of the corpus are
split the same way and add their language-model loss (``data.replay_weight``) to every
``data.replay_every``-th micro-batch.

Stages run in order (``TrainConfig.plan``). A preference stage first scores its rows with
the policy it starts from, under ``no_grad``: those are the reference log-probabilities
(TRL's ``precompute_ref_log_probs``), so there is no second copy of the weights, for LoRA
and full fine-tuning alike, and they ride in the checkpoint so a resumed run keeps them.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from core import storage
from core.data.feedback import open_feedback, read_rows
from core.objectives import (
    completion_logps,
    dpo_loss,
    kto_kl,
    kto_loss,
    kto_metrics,
    kto_weights,
    preference_metrics,
)
from core.training import Batch, LoopState, batch_tensors, pack_examples
from schemas.feedback import FeedbackManifest
from schemas.snapshot import SHARD_COLUMNS, SnapshotManifest
from schemas.train import Stage, TrainConfig

log = logging.getLogger(__name__)
ROWS = {"lm": "sft", "sft": "sft", "dpo": "preference", "kto": "kto"}
Item = tuple[Batch, int]
PACKED_ROWS_PER_BLOCK = 4  # a correction (prompt and answer) is ~40-60 tokens of a 256 block


def rank_rows(rows: list[Any], rank: int, world: int) -> list[Any]:
    """Rows ``rank, rank + world, ...``, wrapping round so every rank gets as many."""
    if not rows:
        return []
    n = math.ceil(len(rows) / world)
    return [rows[(rank + i * world) % len(rows)] for i in range(n)]


class FeedbackData:
    """This worker's share of a feedback snapshot and of the rehearsal blocks."""

    def __init__(self, cfg: TrainConfig, loop_config: dict[str, Any], rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        snap, manifest = open_feedback(cfg.data.snapshot_uri, cfg.storage)
        self.counts = manifest.counts
        self.pad_id = manifest.tokenizer.pad_token_id
        self.rows = {
            k: rank_rows(read_rows(snap, manifest, k), rank, world) for k in set(ROWS.values())
        }
        pieces = loop_config.get("replay_pieces") or []
        self.replay = rank_rows(_replay_blocks(pieces, cfg), rank, world)

    def batches(self, objective: str, seed: int, skip: int) -> Iterator[Item]:
        """Micro-batches of the objective's rows, epoch after epoch, reshuffled each epoch;
        the first ``skip`` are dropped so a resumed run sees what it would have."""
        rows = self.rows[ROWS[objective]]
        if not rows:
            raise ValueError(
                f"objective {objective}: the feedback snapshot has no {ROWS[objective]} rows"
            )
        # SFT packs several short examples per block: a micro-batch of `size` rows would
        # leave blocks mostly padding, so it takes rows for about `size` blocks.
        size = self.cfg.data.micro_batch_size
        per = size * PACKED_ROWS_PER_BLOCK if objective in ("lm", "sft") else size
        for seen, chunk in enumerate(row_chunks(len(rows), per, seed), start=1):
            if seen > skip:
                yield self._batch(objective, [rows[i] for i in chunk], chunk, seen)

    def _batch(self, objective: str, rows: list[dict], idx: list[int], n: int) -> Item:
        """The ``n``-th micro-batch and the real tokens it holds."""
        batch: dict[str, Any] = {"idx": torch.tensor(idx)}
        tokens = sum(
            len(r["prompt_ids"]) + len(r.get("completion_ids") or r["chosen_ids"]) for r in rows
        )
        if objective == "dpo":
            tokens += sum(len(r["prompt_ids"]) + len(r["rejected_ids"]) for r in rows)
        if objective in ("lm", "sft"):
            packed = pack_examples(
                [(r["prompt_ids"], r["completion_ids"]) for r in rows],
                self.cfg.data.block_size,
                self.pad_id,
                loss_on_prompt=objective == "lm",
            )
            batch["lm"] = batch_tensors(
                packed.input_ids,
                packed.segment_lengths,
                packed.num_pad,
                True,
                loss_mask=packed.loss_mask,
            )
        else:
            batch["rows"] = rows
        block = replay_block(self.replay, n, self.cfg.data.replay_every)
        if block is not None:
            batch["replay"] = batch_tensors(
                np.asarray([block[0]]),
                [block[1]],
                [block[2]],
                self.cfg.data.mask_document_boundaries,
            )
            tokens += len(block[0]) - block[2]
        return batch, tokens


def replay_block(replay: list[Any], n: int, every: int) -> Any | None:
    """The rehearsal block of the ``n``-th micro-batch (from 1): one every ``every``, each
    block in turn; None between them or without rehearsal."""
    if not replay or (n - 1) % every:
        return None
    return replay[(n - 1) // every % len(replay)]


def row_chunks(n: int, per: int, seed: int) -> Iterator[list[int]]:
    """Chunks of ``per`` row indices from epochs of ``n`` rows, each epoch reshuffled. A
    chunk runs on into the next epoch rather than end short: a packed block holding one row
    costs as much compute as a full one. Every rank has as many rows, so as many chunks."""
    epoch, buffer = 0, []
    while True:
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        buffer.extend(order)
        epoch += 1
        while len(buffer) >= per:
            yield buffer[:per]
            buffer = buffer[per:]


def _replay_blocks(pieces: list[tuple[str, int, int | None]], cfg: TrainConfig) -> list[tuple]:
    out = []
    for uri, start, stop in pieces:
        t = storage.read_parquet(storage.resolve(uri, cfg.storage), list(SHARD_COLUMNS))
        t = t.slice(start, None if stop is None else stop - start)
        for ids, segs, pad in zip(*(t[c].to_pylist() for c in SHARD_COLUMNS), strict=True):
            if has_targets(segs):
                out.append((ids, segs, pad))
    return out


def has_targets(segment_lengths: list[int]) -> bool:
    """Whether a packed block has a token to predict: a document of at least two tokens. A
    snapshot's last block can hold a single token; its loss is 0/0 = NaN, and DeepSpeed
    silently skips every step whose gradients hold a NaN (every 8th step of the demo's)."""
    return any(n >= 2 for n in segment_lengths)


# ---------------------------------------------------------------------------------------------
# On the driver


def check_objectives(cfg: TrainConfig, feedback: bool) -> None:
    """Objectives other than lm need a feedback snapshot's roles; a corpus has none."""
    wrong = [s.objective for s in cfg.plan() if s.objective != "lm"]
    if wrong and not feedback:
        raise ValueError(
            f"objective {wrong[0]} needs a feedback snapshot (prompts and answers apart: "
            f"jobs.feedback_snapshot); {cfg.data.snapshot_uri} is a corpus snapshot"
        )


def data_text(manifest: SnapshotManifest | FeedbackManifest) -> str:
    if isinstance(manifest, FeedbackManifest):
        c = manifest.counts
        return (
            f"{c.sft} corrections, {c.preference} preference pairs, {c.kto_desirable} + "
            f"{c.kto_undesirable} rated answers"
        )
    return f"{manifest.counts.blocks} blocks of {manifest.block_size}"


def metrics_text(metrics: dict[str, float]) -> str:
    """The objective's metrics for a log line: ' margin 0.41 acc 0.75 ...' (TRL's names)."""
    short = {"rewards/margin": "margin", "rewards/accuracy": "acc", "logps/chosen": "logp_c",
             "logps/rejected": "logp_r", "kl": "kl", "replay_loss": "replay"}  # fmt: skip
    return "".join(f" {short[k]} {v:.3f}" for k, v in metrics.items() if k in short)


# ---------------------------------------------------------------------------------------------
# Reference log-probabilities


@torch.no_grad()
def reference_logps(
    module: torch.nn.Module, data: FeedbackData, objective: str
) -> dict[str, list[float]]:
    """Log-probabilities of this rank's rows under ``module`` as it is now (the stage's
    starting policy), in row order. Same number of forwards on every rank (see module doc)."""
    rows = data.rows[ROWS[objective]]
    was_training = module.training
    module.eval()
    out: dict[str, list[float]] = {}
    average = objective == "dpo" and data.cfg.dpo.loss == "ipo"
    for name, column in _scored(objective):
        values: list[float] = []
        for i in range(0, len(rows), data.cfg.data.micro_batch_size):
            chunk = rows[i : i + data.cfg.data.micro_batch_size]
            logps = completion_logps(
                module,
                [r["prompt_ids"] for r in chunk],
                [r[column] for r in chunk],
                data.pad_id,
                average,
            )
            values.extend(logps.float().cpu().tolist())
        out[name] = values
    module.train(was_training)
    return out


def _scored(objective: str) -> list[tuple[str, str]]:
    if objective == "dpo":
        return [("chosen", "chosen_ids"), ("rejected", "rejected_ids")]
    return [("completion", "completion_ids"), ("kl", "kl_completion_ids")]


# ---------------------------------------------------------------------------------------------
# Losses per objective


def loss_fn(
    cfg: TrainConfig, stage: Stage, data: FeedbackData, refs: dict[str, list[float]]
) -> Callable[[Any, Batch], tuple[torch.Tensor, dict[str, float]]]:
    """The step loss of ``stage``: its objective plus the weighted rehearsal loss."""
    objective = stage.objective
    w_d, w_u = 1.0, 1.0
    if objective == "kto":
        d = data.counts.kto_desirable
        u = data.counts.kto_undesirable
        w_d, w_u = (cfg.kto.desirable_weight, cfg.kto.undesirable_weight)
        if w_d is None:
            w_d, w_u = kto_weights(d, u)[0], cfg.kto.undesirable_weight

    def step(engine: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        if objective in ("lm", "sft"):
            loss, metrics = engine(**batch["lm"]).loss, {}
        elif objective == "dpo":
            loss, metrics = _dpo(engine, cfg, data, batch, refs)
        else:
            loss, metrics = _kto(engine, cfg, data, batch, refs, w_d, w_u)
        if "replay" in batch and cfg.data.replay_weight:
            replay = engine(**batch["replay"]).loss
            metrics["replay_loss"] = float(replay.detach())
            loss = loss + cfg.data.replay_weight * replay
        return loss, metrics

    return step


def _dpo(engine: Any, cfg: TrainConfig, data: FeedbackData, batch: Batch, refs: dict) -> tuple:
    rows, idx = batch["rows"], batch["idx"].tolist()
    prompts = [r["prompt_ids"] for r in rows] * 2
    completions = [r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows]
    average = cfg.dpo.loss == "ipo"
    logps = completion_logps(engine, prompts, completions, data.pad_id, average)
    chosen, rejected = logps[: len(rows)], logps[len(rows) :]
    ref_c = torch.tensor([refs["chosen"][i] for i in idx], dtype=logps.dtype)
    ref_r = torch.tensor([refs["rejected"][i] for i in idx], dtype=logps.dtype)
    out = dpo_loss(
        chosen, rejected, ref_c, ref_r, cfg.dpo.beta, cfg.dpo.loss, cfg.dpo.label_smoothing
    )
    return out.losses.mean(), preference_metrics(out, chosen.detach(), rejected.detach())


def _kto(
    engine: Any,
    cfg: TrainConfig,
    data: FeedbackData,
    batch: Batch,
    refs: dict,
    w_d: float,
    w_u: float,
) -> tuple:
    rows, idx = batch["rows"], batch["idx"].tolist()
    prompts = [r["prompt_ids"] for r in rows]
    policy = completion_logps(engine, prompts, [r["completion_ids"] for r in rows], data.pad_id)
    with torch.no_grad():
        policy_kl = completion_logps(
            engine, prompts, [r["kl_completion_ids"] for r in rows], data.pad_id
        )
    ref = torch.tensor([refs["completion"][i] for i in idx], dtype=policy.dtype)
    ref_kl = torch.tensor([refs["kl"][i] for i in idx], dtype=policy.dtype)
    desirable = torch.tensor([bool(r["desirable"]) for r in rows])
    kl = kto_kl(policy_kl, ref_kl)
    out = kto_loss(policy, ref, desirable, kl, cfg.kto.beta, w_d, w_u)
    return out.losses.mean(), kto_metrics(out, desirable, policy.detach())


# ---------------------------------------------------------------------------------------------
# Running the stages


def run_stages(
    engine: Any,
    cfg: TrainConfig,
    data: FeedbackData,
    state: LoopState,
    train: Callable[..., LoopState],
) -> LoopState:
    """Each stage of ``cfg.plan()`` in order, from where ``state`` stands (a resumed run
    skips finished stages and the micro-batches its current stage already saw)."""
    start = 0
    for i, stage in enumerate(cfg.plan()):
        end = start + stage.steps
        if state.step < end:
            if stage.objective in ("dpo", "kto") and str(i) not in state.refs:
                state.refs[str(i)] = reference_logps(engine.module, data, stage.objective)
                log.info(
                    "stage %d (%s): reference log-probs of %d rows",
                    i,
                    stage.objective,
                    len(data.rows[ROWS[stage.objective]]),
                )
            skip = state.micro_batches - start * cfg.optim.grad_accum
            batches = data.batches(stage.objective, cfg.seed + 1000 * i, skip)
            state = train(batches, end, loss_fn(cfg, stage, data, state.refs.get(str(i), {})))
        start = end
    return state
