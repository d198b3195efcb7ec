"""Benchmark training throughput: the project's Ray Train + DeepSpeed path (1 and 2 workers,
ZeRO stages, gradient accumulation, DeepSpeed's shared-memory all-reduce) against a plain
PyTorch loop, same model, same data, same micro-batches, in one process run.

    python bench/train.py                   # ~13 M-parameter Llama, 120 micro-batches an arm
    python bench/train.py --steps 30        # a quick look (2-worker figures wander below ~120)
    python bench/train.py --arms plain_accum4 ray_2w_zero0_accum4

Arms with gradient accumulation run the same number of micro-batches as the others (fewer,
longer optimizer steps); tokens/s counts every micro-batch, so all arms compare directly.

Each Ray worker gets one CPU (one intra-op thread); the plain loop runs with one thread too,
so "per worker" compares like with like. Tokens/s is the median over steps after warmup.
MFU = training FLOPs per token x tokens/s / the measured matmul FLOP/s of one thread.
Prints JSON with the arms, ratios per worker against the plain loop with the same gradient
accumulation, and the goal (>= 0.85x with 2 workers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core import storage
from core.data.snapshots import open_snapshot, shard_locations
from core.training import (
    LoopState,
    PlainEngine,
    batch_tensors,
    build_model,
    count_params,
    flops_per_token,
    measure_matmul_flops,
    train_steps,
)
from demo.corpus import generate_corpus
from jobs.ingest import run_ingest
from jobs.runtime import Progress, init_ray
from jobs.train import _special_ids, run_train
from schemas.ingest import IngestConfig
from schemas.train import OptimConfig, TrainConfig

ARCH = {
    "model_type": "llama",
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 6,
    "max_position_embeddings": 512,
}
BLOCK, MICRO, WARMUP = 256, 4, 5  # warmup in micro-batches' worth of steps


class Arm(NamedTuple):
    workers: int  # 0: the plain loop in this process
    zero_stage: int = 0
    accum: int = 1
    shm_allreduce: bool = False


ARMS: dict[str, Arm] = {
    "plain": Arm(0),
    "plain_accum4": Arm(0, accum=4),
    "plain_accum8": Arm(0, accum=8),
    "ray_1w": Arm(1, 2),
    "ray_1w_zero0": Arm(1, 0),
    "ray_2w": Arm(2, 2),
    "ray_2w_zero2_accum4": Arm(2, 2, 4),
    "ray_2w_zero1_accum4": Arm(2, 1, 4),
    "ray_2w_zero0_accum4": Arm(2, 0, 4),
    "ray_2w_zero1_accum8": Arm(2, 1, 8),
    "ray_2w_zero1_accum4_shm": Arm(2, 1, 4, shm_allreduce=True),
}
# The shared-memory all-reduce JIT-compiles (~35 s) on first use: asked for by name only.
DEFAULT_ARMS = [name for name, arm in ARMS.items() if not arm.shm_allreduce]


def make_snapshot(work: Path) -> str:
    generate_corpus(work / "corpus", target_bytes=3_000_000, seed=1)
    cfg = IngestConfig.model_validate(
        {
            "name": "bench",
            "input": {"uri": str(work / "corpus" / "raw")},
            "output": {"uri": str(work / "data")},
            "tokenizer": {"kind": "train", "vocab_size": 8192},
            "pack": {"block_size": BLOCK},
            "execution": {"executor": "local"},
        }
    )
    m = run_ingest(cfg, Progress("ingest", stream=open("/dev/null", "w")))  # noqa: SIM115
    return str(work / "data" / "snapshots" / m.snapshot_id)


def plain_batches(snapshot: str):
    snap, manifest = open_snapshot(snapshot)
    while True:
        for shard in shard_locations(snap, manifest):
            t = storage.read_parquet(shard)
            ids = np.asarray(t["input_ids"].to_pylist(), dtype=np.int64)
            segs, pads = t["segment_lengths"].to_pylist(), t["num_pad"].to_pylist()
            for i in range(0, len(ids) - MICRO + 1, MICRO):
                rows = slice(i, i + MICRO)
                batch = batch_tensors(ids[rows], segs[rows], pads[rows])
                yield batch, MICRO * BLOCK - sum(pads[rows])


def optimizer_steps(micro_steps: int, accum: int) -> tuple[int, int]:
    """(optimizer steps, warmup steps) that cover ``micro_steps`` micro-batches."""
    warmup = -(-WARMUP // accum)
    return max(warmup + 3, -(-micro_steps // accum)), warmup


def steady_tokens_per_s(curve: list[dict], warmup: int) -> float:
    return statistics.median(p["tokens_per_s"] for p in curve[warmup:])


def plain_arm(snapshot: str, micro_steps: int, accum: int) -> dict:
    torch.set_num_threads(1)
    steps, warmup = optimizer_steps(micro_steps, accum)
    _, manifest = open_snapshot(snapshot)
    model = build_model("pretrain", None, ARCH, _special_ids(manifest), None, seed=0)
    optim = OptimConfig(lr=1e-3, warmup_steps=2, max_steps=steps, grad_accum=accum)
    engine = PlainEngine(model, optim)
    state = LoopState()

    def record(stats) -> None:
        state.curve[-1]["tokens_per_s"] = stats.tokens / stats.seconds

    train_steps(engine, plain_batches(snapshot), state, steps, accum, on_step=record)
    return {
        "tokens_per_s": round(steady_tokens_per_s(state.curve, warmup), 1),
        "workers": 1,
        "params": count_params(model)[0],
    }


def ray_arm(snapshot: str, work: Path, arm: Arm, micro_steps: int) -> dict:
    workers = arm.workers
    steps, warmup = optimizer_steps(micro_steps, arm.accum)
    cfg = TrainConfig.model_validate(
        {
            "run_name": f"bench-{workers}w-{time.time_ns()}",
            "mode": "pretrain",
            "model": {"architecture": ARCH},
            "data": {"snapshot_uri": snapshot, "micro_batch_size": MICRO},
            "optim": {"lr": 1e-3, "warmup_steps": 2, "max_steps": steps, "grad_accum": arm.accum},
            "deepspeed": {"zero_stage": arm.zero_stage, "cpu_shm_allreduce": arm.shm_allreduce},
            "scaling": {"num_workers": workers, "resources_per_worker": {"CPU": 1}},
            "checkpoint": {"storage_uri": str(work / "ckpt"), "every_steps": 10_000},
            "registry": {"uri": str(work / "registry"), "model_name": f"bench{workers}"},
            "metrics": {"log_every_steps": 10},
        }
    )
    version = run_train(cfg, Progress("train", stream=open("/dev/null", "w")))  # noqa: SIM115
    total = steady_tokens_per_s(version.metrics["curve"], warmup)
    return {
        "tokens_per_s": round(total, 1),
        "workers": workers,
        "tokens_per_s_per_worker": round(total / workers, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="micro-batches per arm")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=DEFAULT_ARMS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-train-"))
    snapshot = make_snapshot(work)
    torch.set_num_threads(1)
    peak = measure_matmul_flops(torch.float32, seconds=2.0)
    plain = plain_arm(snapshot, args.steps, 1)
    arms = {"plain": plain}
    for name in args.arms:
        arm = ARMS[name]
        if name in arms:
            continue
        if arm.workers == 0:
            arms[name] = plain_arm(snapshot, args.steps, arm.accum)
            continue
        init_ray(None)
        arms[name] = ray_arm(snapshot, work, arm, args.steps)
    fpt = flops_per_token(plain["params"], ARCH["num_hidden_layers"], ARCH["hidden_size"], BLOCK)
    for a in arms.values():
        a["mfu"] = round(a["tokens_per_s"] / a["workers"] * fpt / peak, 4)
    # Against the plain loop with the same accumulation where it ran (accumulating also
    # spreads the plain loop's optimizer step over more tokens), else the plain loop.
    plain_by_accum = {ARMS[n].accum: a for n, a in arms.items() if ARMS[n].workers == 0}
    ratios = {}
    for name, a in arms.items():
        if ARMS[name].workers > 0:
            peer = plain_by_accum.get(ARMS[name].accum, plain)
            ratios[name] = round(a["tokens_per_s"] / a["workers"] / peer["tokens_per_s"], 3)
    result = {
        "benchmark": "train",
        "model_params": plain["params"],
        "block_size": BLOCK,
        "micro_batch": MICRO,
        "micro_steps": args.steps,
        "peak_flops_one_thread": round(peak),
        "arms": arms,
        "per_worker_ratio_vs_plain": ratios,
        "goal": ">= 0.85x the plain loop per worker with 2 workers",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
