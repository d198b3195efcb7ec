"""The training loop's building blocks, free of Ray: batches from packed blocks, the model,
the learning-rate schedule, the DeepSpeed config, the step loop, FLOP accounting.

``jobs/train_worker.py`` runs these inside Ray Train workers with a DeepSpeed engine; tests
run the same loop in one process with :class:`PlainEngine`, which has the slice of the
DeepSpeed engine interface the loop uses (forward, ``backward``, ``step``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from schemas.train import DeepSpeedConfig, LoraConfig, OptimConfig

# ---------------------------------------------------------------------------------------------
# Batches


def batch_tensors(
    input_ids: np.ndarray,
    segment_lengths: Iterable[Iterable[int]],
    num_pad: Iterable[int],
    mask_boundaries: bool = True,
    dtype: torch.dtype = torch.float32,
    loss_mask: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Model inputs for packed blocks; with ``loss_mask`` (1 where a token is a target, as
    :func:`pack_examples` makes) only those tokens are targets.

    With ``mask_boundaries`` every document attends only to itself (a block-diagonal causal
    mask, additive, 4D) and position ids restart per document; the first token of a document
    is not a target (it would be predicted from the previous document). Padding is masked
    and never a target.
    """
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64))
    batch, length = ids.shape
    labels = ids.clone()
    positions = torch.zeros_like(ids)
    allowed = torch.zeros(batch, length, length, dtype=torch.bool) if mask_boundaries else None
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    for b, (segs, pad) in enumerate(zip(segment_lengths, num_pad, strict=True)):
        real = length - int(pad)
        labels[b, real:] = -100
        if not mask_boundaries:
            positions[b, :real] = torch.arange(real)
            continue
        offset = 0
        for seg in segs:
            positions[b, offset : offset + seg] = torch.arange(seg)
            allowed[b, offset : offset + seg, offset : offset + seg] = causal[:seg, :seg]
            if offset > 0:
                labels[b, offset] = -100
            offset += seg
        allowed[b, real:, real:] = causal[: length - real, : length - real]
    if loss_mask is not None:
        labels[torch.as_tensor(np.asarray(loss_mask)) == 0] = -100
    out = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if allowed is not None:
        mask = torch.zeros(batch, 1, length, length, dtype=dtype)
        out["attention_mask"] = mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return out


@dataclass
class PackedExamples:
    """(prompt, completion) examples packed whole into blocks, with a loss mask."""

    input_ids: np.ndarray  # [blocks, block_size]
    segment_lengths: list[list[int]]
    num_pad: list[int]
    loss_mask: np.ndarray  # 1 on targets: the completions (and the prompts with loss_on_prompt)


def pack_examples(
    examples: Iterable[tuple[list[int], list[int]]],
    block_size: int,
    pad_id: int,
    loss_on_prompt: bool = False,
) -> PackedExamples:
    """Pack examples into blocks, none split across two (a block's attention stays within
    each example: see :func:`batch_tensors`); an example longer than a block keeps its end."""
    blocks: list[tuple[list[int], list[int], list[int]]] = []  # ids, segments, mask
    for prompt, completion in examples:
        ids = (list(prompt) + list(completion))[-block_size:]
        mask = ([int(loss_on_prompt)] * len(prompt) + [1] * len(completion))[-block_size:]
        if not blocks or len(blocks[-1][0]) + len(ids) > block_size:
            blocks.append(([], [], []))
        blocks[-1][0].extend(ids)
        blocks[-1][1].append(len(ids))
        blocks[-1][2].extend(mask)
    pads = [block_size - len(b[0]) for b in blocks]
    return PackedExamples(
        np.array([b[0] + [pad_id] * n for b, n in zip(blocks, pads, strict=True)], np.int64),
        [b[1] for b in blocks],
        pads,
        np.array([b[2] + [0] * n for b, n in zip(blocks, pads, strict=True)], np.int64),
    )


# ---------------------------------------------------------------------------------------------
# Schedule, optimiser, DeepSpeed


def lr_lambda(cfg: OptimConfig) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at an optimizer step: warmup, then decay."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        decay = (
            0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
        )
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay

    return factor


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def deepspeed_config(
    ds: DeepSpeedConfig, optim: OptimConfig, micro_batch: int, bf16: bool
) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": ds.zero_stage,
        # Without this a ZeRO-3 consolidated save silently writes nothing.
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accum,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        # Our client AdamW works with offload; DeepSpeed's CPU Adam would JIT-compile (~65 s).
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def use_bf16(setting: str, use_gpu: bool) -> bool:
    if setting != "auto":
        return setting == "true"
    return use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# ---------------------------------------------------------------------------------------------
# Models


def _warn_if_lora_differs(adapter_dir: Path, lora: LoraConfig | None) -> None:
    """Continuing an adapter keeps its shape: say so when the recipe asks for another."""
    import json

    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    if lora is None:
        return
    asked = {"r": lora.r, "lora_alpha": lora.alpha}
    differs = {k: (v, saved.get(k)) for k, v in asked.items() if saved.get(k) not in (None, v)}
    if differs:
        logging.getLogger(__name__).warning(
            "continuing the adapter in %s with its own %s; the recipe's %s do not apply",
            adapter_dir,
            ", ".join(f"{k}={theirs}" for k, (_, theirs) in differs.items()),
            ", ".join(f"{k}={mine}" for k, (mine, _) in differs.items()),
        )


def build_model(
    mode: str,
    base_dir: Path | None,
    architecture: dict[str, Any] | None,
    special_ids: dict[str, int],
    lora: LoraConfig | None,
    seed: int,
    adapter_dir: Path | None = None,
) -> torch.nn.Module:
    """The model to train: a fresh one from an architecture (pretrain), a Hugging Face
    folder (full), or that folder wrapped with a LoRA adapter (lora). ``adapter_dir`` is an
    existing adapter on ``base_dir``: LoRA keeps training it, full training merges it first."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    if mode == "pretrain":
        arch = dict(architecture or {})
        model_type = arch.pop("model_type")
        config = AutoConfig.for_model(model_type, **arch, **special_ids)
        return AutoModelForCausalLM.from_config(config)
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        if mode == "lora":
            _warn_if_lora_differs(adapter_dir, lora)
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if mode == "lora":
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, peft_cfg)
    return model


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def flops_per_token(
    n_params: int, n_layers: int, hidden: int, seq_len: int, trainable: int | None = None
) -> float:
    """Training FLOPs per token (PaLM's estimate): 2N forward, 2N backward to the activations,
    2N to the weight gradients (only the ``trainable`` ones: a frozen LoRA base needs none),
    plus attention."""
    trainable = n_params if trainable is None else trainable
    return 4 * n_params + 2 * trainable + 12 * n_layers * hidden * seq_len


def measure_matmul_flops(dtype: torch.dtype = torch.float32, seconds: float = 1.0) -> float:
    """Achievable FLOP/s of this process on square matmuls: the denominator of MFU."""
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)  # warm up
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------
# The loop


class PlainEngine:
    """A single-process stand-in for the DeepSpeed engine (forward, backward, step), for
    running the loop without Ray or DeepSpeed: the regression test of the loss curve."""

    def __init__(
        self, model: torch.nn.Module, cfg: OptimConfig, grad_accum: int | None = None
    ) -> None:
        self.module = model
        self.cfg = cfg
        self.grad_accum = grad_accum or cfg.grad_accum
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.micro_steps = 0

    def __call__(self, **batch: torch.Tensor) -> Any:
        return self.module(**batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.grad_accum == 0

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def get_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()


@dataclass
class StepStats:
    """What one optimizer step did."""

    step: int
    loss: float
    tokens: int
    seconds: float
    lr: float
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's, e.g. margins


@dataclass
class LoopState:
    """Progress that a checkpoint carries, so a resumed run continues where it stopped."""

    step: int = 0
    micro_batches: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)
    # Reference log-probabilities of preference stages, by stage index: computed once from
    # the policy each stage starts from, so a resumed run keeps the same reference.
    refs: dict[str, dict[str, list[float]]] = field(default_factory=dict)


Batch = dict[str, torch.Tensor]
LossFn = Callable[[Any, Batch], tuple[torch.Tensor, dict[str, float]]]


def lm_loss(engine: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """The model's own next-token loss on ``batch`` (labels in it)."""
    return engine(**batch).loss, {}


def train_steps(
    engine: Any,
    batches: Iterator[tuple[dict[str, torch.Tensor], int]],
    state: LoopState,
    max_steps: int,
    grad_accum: int,
    reduce_loss: Callable[[float], float] = lambda x: x,
    on_step: Callable[[StepStats], None] = lambda s: None,
    loss_fn: LossFn = lm_loss,
    reduce_metrics: Callable[[dict[str, float]], dict[str, float]] = lambda m: m,
) -> LoopState:
    """Run optimizer steps until ``max_steps`` (or the batches run out).

    ``batches`` yields (model inputs, real tokens in them); ``loss_fn`` turns one into the
    loss to minimise and the objective's metrics (means over the step's micro-batches)."""
    engine.module.train()
    while state.step < max_steps:
        t0 = time.perf_counter()
        losses, tokens, metrics = [], 0, []
        for _ in range(grad_accum):
            item = next(batches, None)
            if item is None:
                return state
            batch, n_tokens = item
            loss, extra = loss_fn(engine, batch)
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            metrics.append(extra)
            tokens += n_tokens
            state.micro_batches += 1
        state.step += 1
        means = reduce_metrics(
            {k: float(np.mean([m[k] for m in metrics if k in m])) for k in set().union(*metrics)}
        )
        stats = StepStats(
            state.step,
            reduce_loss(float(np.mean(losses))),
            tokens,
            time.perf_counter() - t0,
            float(engine.get_lr()[0]),
            means,
        )
        state.curve.append(
            {"step": stats.step, "loss": stats.loss, "lr": stats.lr, "t": round(time.time(), 3)}
            | {k: round(v, 5) for k, v in means.items()}
        )
        on_step(stats)
    return state
