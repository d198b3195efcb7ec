"""What each Ray Train worker runs: DeepSpeed ZeRO over the gloo/NCCL group Ray Train set up.

Each worker fetches its own copy of the starting model (workers may be on other nodes),
builds the DeepSpeed engine, resumes from the run's latest checkpoint if there is one,
streams its shard of the snapshot through Ray Data, and every ``checkpoint.every_steps``
saves a DeepSpeed checkpoint through ``ray.train.report``. At the end the weights are
gathered (``save_16bit_model``, a collective under ZeRO-3) and rank 0 writes a plain Hugging
Face folder (or a PEFT adapter) into the final checkpoint under ``model/``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from core import faults
from core.logs import setup_logging
from core.training import (
    LoopState,
    StepStats,
    batch_tensors,
    build_model,
    count_params,
    deepspeed_config,
    flops_per_token,
    lm_loss,
    lr_lambda,
    make_optimizer,
    measure_matmul_flops,
    train_steps,
    use_bf16,
)
from jobs.train_feedback import FeedbackData, metrics_text, run_stages
from schemas.train import TrainConfig

CHECKPOINT_TAG = "ds"

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config`` is built by ``jobs.train``."""
    import ray.train

    setup_logging(bars=False)  # this worker's lines to its Ray log file (and the home's)
    cfg = TrainConfig.model_validate(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Torch would start a thread per core in every worker; workers sharing cores then
    # preempt each other (two processes of 2 threads on 2 cores: 87 GFLOP/s of matmul in
    # all, against 126 with one thread each).
    torch.set_num_threads(cfg.scaling.threads())
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cfg.scaling.use_gpu else "cpu")
    import deepspeed

    if not cfg.scaling.use_gpu and not cfg.deepspeed.cpu_shm_allreduce:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # use gloo, no JIT

    base_dir, adapter_dir = _fetch_base(loop_config)
    model = build_model(
        cfg.mode,
        base_dir,
        cfg.model.architecture,
        loop_config["special_ids"],
        cfg.lora,
        cfg.seed,
        adapter_dir,
    )
    bf16 = use_bf16(cfg.deepspeed.bf16, cfg.scaling.use_gpu)
    # Counted before DeepSpeed: under ZeRO-3 each rank then holds only a partition.
    meter = _Meter(cfg, model, loop_config["block_size"], world, rank, bf16)
    meter.steps = loop_config.get("steps") if rank == 0 else None
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim))
    ds_config = deepspeed_config(cfg.deepspeed, cfg.optim, cfg.data.micro_batch_size, bf16)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    state = _restore(engine)

    def on_step(stats: StepStats) -> None:
        meter.log(stats, state)
        faults.maybe_fail(f"train.step{stats.step}", loop_config.get("faults"))
        if stats.step % cfg.checkpoint.every_steps == 0 and stats.step < cfg.optim.max_steps:
            _save(engine, state, meter.summary(state), final=False, rank=rank, loop_config=None)

    reduce = _mean_across_workers if world > 1 else (lambda x: x)
    reduce_metrics = _metrics_across_workers if world > 1 else (lambda m: m)

    def train(batches: Iterator, max_steps: int, loss_fn: Any = lm_loss) -> LoopState:
        args = (engine, batches, state, max_steps, cfg.optim.grad_accum)
        kwargs = {"reduce_loss": reduce, "reduce_metrics": reduce_metrics, "loss_fn": loss_fn}
        return train_steps(*args, on_step=on_step, **kwargs)

    if loop_config.get("feedback"):  # sft, dpo, kto (or lm) on a feedback snapshot
        data = FeedbackData(cfg, loop_config, rank, world)
        state = run_stages(engine, cfg, data, state, train)
    else:
        dtype = torch.bfloat16 if bf16 else torch.float32
        state = train(_batches(cfg, dtype, skip=state.micro_batches), cfg.optim.max_steps)
    _save(engine, state, meter.summary(state), final=True, rank=rank, loop_config=loop_config)


def _fetch_base(loop_config: dict[str, Any]) -> tuple[Path | None, Path | None]:
    """Local copies of the starting model and, if it is a LoRA version, its adapter."""
    from core.models import local_model_dir
    from core.registry import ModelRegistry
    from schemas.storage import StorageSettings

    cfg = TrainConfig.model_validate(loop_config["cfg"])
    settings = StorageSettings.model_validate(cfg.storage.model_dump())
    if loop_config.get("base_ref"):
        registry = ModelRegistry(cfg.registry.uri, settings)
        version = registry.get(loop_config["base_ref"])
        if version.format == "lora":
            return _download(registry, version.base), _download(registry, version.ref)
        return _download(registry, version.ref), None
    if cfg.model.uri:
        return local_model_dir(cfg.model.uri, settings), None
    return None, None


def _download(registry: Any, ref: str) -> Path:
    version = registry.get(ref)
    target = Path(tempfile.gettempdir()) / "flywheel-base" / version.content_sha256[:24]
    if not (target / ".complete").exists():
        registry.download(version.ref, target)
        (target / ".complete").touch()
    return target


def _restore(engine: Any) -> LoopState:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return LoopState()
    with checkpoint.as_directory() as folder:
        _, client = engine.load_checkpoint(folder, tag=CHECKPOINT_TAG)
    state = LoopState(**client["loop"])
    state.resumed_at.append(state.step)
    log.info("resumed from step %d (%d micro-batches)", state.step, state.micro_batches)
    return state


def _batches(
    cfg: TrainConfig, dtype: torch.dtype, skip: int
) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """Micro-batches from this worker's shard, epoch after epoch; the first ``skip`` are
    dropped so a resumed run sees the data an uninterrupted one would have."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.scaling.use_gpu else None
    seen, epoch = 0, 0
    while True:
        produced = 0
        for raw in shard.iter_batches(
            batch_size=cfg.data.micro_batch_size,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer_blocks or None,
            local_shuffle_seed=cfg.seed + epoch if cfg.data.shuffle_buffer_blocks else None,
        ):
            produced += 1
            seen += 1
            if seen <= skip:
                continue
            ids = _stack(raw["input_ids"])
            inputs = batch_tensors(
                ids,
                raw["segment_lengths"],
                raw["num_pad"],
                cfg.data.mask_document_boundaries,
                dtype,
            )
            if device is not None:
                inputs = {k: v.to(device) for k, v in inputs.items()}
            yield inputs, int(ids.size - raw["num_pad"].sum())
        if produced == 0:
            raise ValueError("the snapshot has fewer blocks than one micro-batch per worker")
        epoch += 1


def _stack(column: Any) -> Any:
    import numpy as np

    return np.stack([np.asarray(row) for row in column])


def _mean_across_workers(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


# Every metric an objective may report (core.objectives, jobs.train_feedback): the order
# of the one all-reduce that averages them, whichever of them each rank's batches had.
METRICS = (
    "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
    "logps/rejected", "rewards/desirable", "rewards/undesirable", "logps/desirable",
    "logps/undesirable", "kl", "replay_loss",
)  # fmt: skip


def _metrics_across_workers(metrics: dict[str, float]) -> dict[str, float]:
    """Means over the ranks that reported each metric (a KTO batch may lack a kind)."""
    import torch.distributed as dist

    t = torch.zeros(2, len(METRICS), dtype=torch.float64)
    for i, key in enumerate(METRICS):
        if key in metrics:
            t[0, i], t[1, i] = metrics[key], 1
    dist.all_reduce(t)
    return {k: float(t[0, i] / t[1, i]) for i, k in enumerate(METRICS) if t[1, i] > 0}


class _Meter:
    """Tokens/s and MFU, logged by rank 0."""

    def __init__(
        self,
        cfg: TrainConfig,
        model: torch.nn.Module,
        block: int,
        world: int,
        rank: int,
        bf16: bool,
    ) -> None:
        self.cfg, self.world, self.rank = cfg, world, rank
        total, trainable = count_params(model)
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0)
        hidden = getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0)
        self.params, self.trainable = total, trainable
        self.flops_per_token = flops_per_token(total, layers, hidden, block, trainable)
        self.peak = cfg.metrics.peak_flops_per_worker or measure_matmul_flops(
            torch.bfloat16 if bf16 else torch.float32, seconds=0.5
        )
        self.tokens = 0
        self.seconds = 0.0
        self.steps: Any = None  # rank 0: a Ray queue the driver follows

    def log(self, stats: StepStats, state: LoopState) -> None:
        tokens = stats.tokens * self.world  # every worker processed a micro-batch per step
        self.tokens += tokens
        self.seconds += stats.seconds
        tps = tokens / stats.seconds
        state.curve[-1]["tokens_per_s"] = round(tps, 1)
        if self.rank != 0:
            return
        if stats.step % self.cfg.metrics.log_every_steps == 0 or stats.step == 1:
            log.info(
                "step %d/%d loss %.4f lr %.2e %s tok/s MFU %.1f%%%s",
                stats.step,
                self.cfg.optim.max_steps,
                stats.loss,
                stats.lr,
                f"{tps:,.0f}",
                100 * self.mfu(tps),
                metrics_text(stats.metrics),
            )
        if self.steps is not None:  # the driver's bar (see jobs.train.StepProgress)
            step = {"step": stats.step, "loss": stats.loss, "lr": stats.lr, "tokens_per_s": tps}
            self.steps.put_nowait({**step, "mfu": self.mfu(tps), "metrics": stats.metrics})

    def mfu(self, tokens_per_s: float) -> float:
        return tokens_per_s / self.world * self.flops_per_token / self.peak

    def summary(self, state: LoopState) -> dict[str, Any]:
        tps = self.tokens / self.seconds if self.seconds else 0.0
        return {
            "step": state.step,
            "loss": state.curve[-1]["loss"] if state.curve else None,
            "tokens": self.tokens,  # trained on, padding excluded as in tokens_per_s
            "tokens_per_s": round(tps, 1),
            "mfu": round(self.mfu(tps), 4),
            "peak_flops_per_worker": self.peak,
            "params": self.params,
            "trainable_params": self.trainable,
            "workers": self.world,
            "resumed_at": list(state.resumed_at),
        }


def _save(
    engine: Any,
    state: LoopState,
    metrics: dict[str, Any],
    final: bool,
    rank: int,
    loop_config: dict[str, Any] | None,
) -> None:
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(tmp, tag=CHECKPOINT_TAG, client_state={"loop": asdict(state)})
        if final:
            _consolidate(engine, Path(tmp), rank, loop_config, {**metrics, "curve": state.curve})
        ray.train.report(
            {**metrics, "final": final}, checkpoint=ray.train.Checkpoint.from_directory(tmp)
        )


def _consolidate(
    engine: Any, folder: Path, rank: int, loop_config: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Gather the full weights and write a Hugging Face folder (rank 0) under ``model/``."""
    gathered = folder / "_gathered"
    engine.save_16bit_model(str(gathered), "weights.bin")  # a collective under ZeRO-3
    if rank == 0:
        state_dict = torch.load(gathered / "weights.bin", map_location="cpu", weights_only=True)
        out = folder / "model"
        engine.module.save_pretrained(str(out), state_dict=state_dict, safe_serialization=True)
        for name, data in loop_config["tokenizer_files"].items():
            (out / name).write_bytes(data)
        (folder / "training_metrics.json").write_text(json.dumps(metrics))
    shutil.rmtree(gathered, ignore_errors=True)
