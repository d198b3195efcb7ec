"""Train: a dataset snapshot -> Ray Train + DeepSpeed ZeRO -> a registered model version.

    python -m jobs.train --config jobs/configs/train-tiny.yaml
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/train-tiny.yaml
    flywheel train --config jobs/configs/train-tiny.yaml

Three modes: ``pretrain`` (a fresh model from ``model.architecture``), ``full`` fine-tuning
and ``lora`` (a PEFT adapter, registered as its own version on its base) from a registry
version or a Hugging Face folder. The snapshot's shards stream through Ray Data into the
workers; checkpoints go to ``checkpoint.storage_uri`` through Ray Train, and a run started
again with the same ``run_name`` resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import storage
from core.config import config_hash, load_config
from core.data.feedback import open_training_data
from core.data.snapshots import resolve_snapshot, shard_locations
from core.data.tokenization import tokenizer_files
from core.registry import ModelRegistry, RegistryError
from core.registry.provenance import code_version, package_versions
from core.storage import Location
from jobs.runtime import Progress, config_args, init_ray, quiet_ray_data
from jobs.train_feedback import check_objectives, data_text, metrics_text
from schemas.feedback import FeedbackManifest
from schemas.registry import Lineage, ModelVersion, SnapshotRef
from schemas.snapshot import SHARD_COLUMNS, SnapshotManifest
from schemas.train import TrainConfig

# Environment a worker needs that Ray does not pass on by itself.
_WORKER_ENV = ("TORCH_EXTENSIONS_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

log = logging.getLogger(__name__)


def run_train(cfg: TrainConfig, progress: Progress | None = None) -> ModelVersion:
    """Train as ``cfg`` says, register the result and return the new version."""
    progress = progress or Progress("train")
    init_ray(cfg.address)
    snap, manifest = open_training_data(cfg.data.snapshot_uri, cfg.storage)
    feedback = isinstance(manifest, FeedbackManifest)
    check_objectives(cfg, feedback)
    replay = _replay_snapshot(cfg, manifest)
    registry = ModelRegistry(cfg.registry.uri, cfg.storage)
    base_ref = _base_ref(cfg, registry)
    stages = " then ".join(f"{s.objective} ({s.steps} steps)" for s in cfg.plan())
    progress.say(
        f"{cfg.mode} on snapshot {manifest.snapshot_id} ({data_text(manifest)}), "
        f"{cfg.scaling.num_workers} workers, ZeRO-{cfg.deepspeed.zero_stage}: {stages}"
    )
    if replay:
        progress.say(f"rehearsal: {cfg.data.replay_blocks} blocks of {replay[1].snapshot_id}")
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "base_ref": base_ref,
        "block_size": replay[1].block_size
        if replay
        else getattr(manifest, "block_size", 0) or cfg.data.block_size,
        "feedback": feedback,
        "replay_pieces": [
            (loc.uri, a, b) for loc, a, b in tail_pieces(*replay, cfg.data.replay_blocks)
        ]
        if feedback and replay
        else None,
        "special_ids": _special_ids(manifest),
        "tokenizer_files": _tokenizer_files(cfg, registry, base_ref, snap, manifest),
        "faults": _env("FLYWHEEL_FAULTS"),
    }
    with progress.stage("fit", "training with Ray Train + DeepSpeed"):
        result = _fit(cfg, loop_config, snap, manifest, progress, replay)
    with progress.stage("register", f"registering in {registry.root.uri}"):
        version = _register(cfg, registry, result, base_ref, snap, manifest, replay)
    progress.say(
        f"registered {version.ref} ({version.format}); metrics "
        f"{ {k: v for k, v in version.metrics.items() if k != 'curve'} }"
    )
    return version


Replay = tuple[Location, SnapshotManifest]
Piece = tuple[Location, int, int | None]  # a shard's rows [start, stop); None: to its end


def _replay_snapshot(
    cfg: TrainConfig, manifest: SnapshotManifest | FeedbackManifest
) -> Replay | None:
    """The rehearsal snapshot, checked to share the training snapshot's tokens and blocks."""
    if not (cfg.data.replay_snapshot_uri and cfg.data.replay_blocks):
        return None
    loc, replay = resolve_snapshot(cfg.data.replay_snapshot_uri, cfg.storage)
    block = getattr(manifest, "block_size", replay.block_size)
    for what, mine, theirs in (
        ("tokenizer", manifest.tokenizer.sha256, replay.tokenizer.sha256),
        ("block size", block, replay.block_size),
    ):
        if mine != theirs:
            raise ValueError(
                f"data.replay_snapshot_uri {loc.uri}: its {what} ({theirs}) differs from the "
                f"training snapshot's ({mine}); replayed tokens would mean something else"
            )
    return loc, replay


def _base_ref(cfg: TrainConfig, registry: ModelRegistry) -> str | None:
    """The exact version (``name:N``) training starts from, resolved once on the driver so
    every worker and the lineage agree even if an alias moves meanwhile."""
    if not cfg.model.registry_ref:
        return None
    version = registry.get(cfg.model.registry_ref)
    if version.format == "hf-int8":  # its int8 weights are for inference, not gradients
        raise RegistryError(
            f"{version.ref} is an int8-dynamic quantization: train from its source "
            f"({version.quantization.source if version.quantization else 'unknown'}) instead"
        )
    return version.ref


def _special_ids(manifest: SnapshotManifest) -> dict[str, int]:
    t = manifest.tokenizer
    return {
        "vocab_size": t.vocab_size,
        "bos_token_id": t.eos_token_id,
        "eos_token_id": t.eos_token_id,
        "pad_token_id": t.pad_token_id,
    }


def _tokenizer_files(
    cfg: TrainConfig,
    registry: ModelRegistry,
    base_ref: str | None,
    snap: Location,
    manifest: SnapshotManifest,
) -> dict[str, bytes]:
    """The tokenizer saved with the model: the base model's (it carries the chat template),
    else the snapshot's."""
    if base_ref:
        source = registry.files_location(registry.get(base_ref))
    elif cfg.model.uri:
        source = storage.resolve(cfg.model.uri, cfg.storage)
    else:
        source = snap.join(manifest.tokenizer.path)
    return tokenizer_files(source)


def _fit(
    cfg: TrainConfig,
    loop_config: dict,
    snap: Location,
    manifest: SnapshotManifest,
    progress: Progress,
    replay: Replay | None = None,
) -> Any:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    from jobs.train_worker import train_loop_per_worker

    # Feedback rows are few: workers read them from storage (jobs.train_feedback).
    feedback = loop_config["feedback"]
    dataset = None if feedback else snapshot_dataset(snap, manifest, replay, cfg.data.replay_blocks)
    ckpt = storage.resolve(cfg.checkpoint.storage_uri, cfg.storage)
    env = {k: v for k in _WORKER_ENV if (v := _env(k))}
    steps = Queue(actor_options={"num_cpus": 0})  # rank 0's step stats, for the bar here
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**loop_config, "steps": steps},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=cfg.scaling.resources_per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=ckpt.path,
            storage_filesystem=ckpt.fs,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.checkpoint.keep),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
        datasets={"train": dataset} if dataset is not None else None,
    )
    try:
        with StepProgress(cfg, steps, progress):
            return trainer.fit()
    finally:
        steps.shutdown()


class StepProgress:
    """Follows the steps rank 0 reports while ``fit()`` runs (it blocks, and Ray Train
    wants the main thread): a bar where bars are drawn, else a line every
    ``metrics.log_every_steps`` (a job's log)."""

    def __init__(self, cfg: TrainConfig, steps: Any, progress: Progress) -> None:
        self.cfg, self.steps, self.progress = cfg, steps, progress
        self.bar = progress.bar(total=cfg.optim.max_steps, desc="training steps")
        self.first = True
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._follow, name="train-steps", daemon=True)

    def __enter__(self) -> StepProgress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=10)
        self.bar.close()

    def _follow(self) -> None:
        from ray.util.queue import Empty

        while True:  # until fit() returned and every step it reported is shown
            try:
                self.show(self.steps.get(timeout=0.5))
            except Empty:
                if self.done.is_set():
                    return
            except Exception as e:  # the queue's actor gone: training goes on without a bar
                log.debug("step progress stopped: %s", e)
                return

    def show(self, s: dict[str, Any]) -> None:
        if self.first:  # the clock starts at the first step, after the workers' start-up
            self.first = False
            self.bar.reset(total=self.cfg.optim.max_steps)
        postfix = {"loss": f"{s['loss']:.3f}", "tok_s": f"{s['tokens_per_s']:,.0f}"}
        if "rewards/margin" in (s.get("metrics") or {}):
            postfix["margin"] = f"{s['metrics']['rewards/margin']:.2f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(s["step"] - self.bar.n)
        every = self.cfg.metrics.log_every_steps
        if self.bar.disable and (s["step"] % every == 0 or s["step"] == 1):
            self.progress.say(
                f"step {s['step']}/{self.cfg.optim.max_steps} loss {s['loss']:.4f} "
                f"lr {s['lr']:.2e} {s['tokens_per_s']:,.0f} tok/s MFU {s['mfu']:.1%}"
                f"{metrics_text(s.get('metrics') or {})}"
            )


def snapshot_dataset(
    snap: Location,
    manifest: SnapshotManifest,
    replay: Replay | None = None,
    replay_blocks: int = 0,
) -> Any:
    """The snapshot's shards as a Ray Dataset, read through the manifest, streamed; with
    ``replay``, followed by that snapshot's last ``replay_blocks`` blocks (workers mix them
    with ``data.shuffle_buffer_blocks``).

    One read task per shard, asking for no CPU: the training workers may hold every CPU of
    the cluster (2 workers x 1 CPU on 2 cores), and a read that waits for a CPU would then
    wait for ever, as Ray Data's own file listing (a whole CPU) and quarter-CPU reads did.
    The reads are short Parquet loads, paced by the workers consuming them.
    """
    import ray.data

    # Training reports its own progress; per-operator bars from the split actor would
    # interleave with it in the job's log.
    quiet_ray_data()
    pieces: list[Piece] = [(loc, 0, None) for loc in shard_locations(snap, manifest)]
    if replay:
        pieces += tail_pieces(*replay, replay_blocks)
    items = [{"piece": i} for i in range(len(pieces))]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _read_pieces,
        batch_size=1,
        num_cpus=0,
        fn_kwargs={"pieces": pieces},
        batch_format="pyarrow",
    )


def tail_pieces(snap: Location, manifest: SnapshotManifest, blocks: int) -> list[Piece]:
    """(shard, first row, end row) covering the snapshot's last ``blocks`` blocks."""
    pieces: list[Piece] = []
    shards = zip(shard_locations(snap, manifest), manifest.shards, strict=True)
    for loc, shard in reversed(list(shards)):
        if blocks <= 0:
            break
        take = min(blocks, shard.blocks)
        pieces.append((loc, shard.blocks - take, shard.blocks))
        blocks -= take
    return pieces[::-1]


def _read_pieces(batch: Any, pieces: list[Piece]) -> Any:
    import pyarrow as pa

    tables = []
    for i in batch["piece"].to_pylist():
        loc, start, stop = pieces[i]
        table = storage.read_parquet(loc, list(SHARD_COLUMNS))
        tables.append(table.slice(start, None if stop is None else stop - start))
    return pa.concat_tables(tables)


def _env(name: str) -> str | None:
    import os

    return os.environ.get(name)


def _register(
    cfg: TrainConfig,
    registry: ModelRegistry,
    result: Any,
    base_ref: str | None,
    snap: Location,
    manifest: SnapshotManifest,
    replay: Replay | None = None,
) -> ModelVersion:
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.run_name} ended without a checkpoint")
    with tempfile.TemporaryDirectory() as tmp, result.checkpoint.as_directory() as folder:
        metrics = json.loads((Path(folder) / "training_metrics.json").read_text())
        model_dir = Path(tmp) / "model"
        storage.download_dir(storage.resolve(str(Path(folder) / "model")), model_dir)
        lineage = Lineage(
            dataset_snapshots=[
                SnapshotRef(snapshot_id=m.snapshot_id, uri=loc.uri)
                for loc, m in [(snap, manifest), *([replay] if replay else [])]
            ],
            parent=base_ref,
            base_model=cfg.model.uri,
            training_config=cfg.model_dump(mode="json"),
            training_config_hash=config_hash(cfg),
            code_version=code_version(),
            packages=package_versions(),
            job=cfg.run_name,
        )
        version = registry.register(
            cfg.registry.model_name,
            model_dir,
            format="lora" if cfg.mode == "lora" else "hf",
            base=_lora_base(cfg, registry, base_ref),
            lineage=lineage,
            metrics=metrics,
        )
    if cfg.registry.alias:
        registry.set_alias(
            version.name, cfg.registry.alias, version.version, reason=f"trained by {cfg.run_name}"
        )
    return version


def _lora_base(cfg: TrainConfig, registry: ModelRegistry, base_ref: str | None) -> str | None:
    """A LoRA adapter must name a registered base: an external folder is registered first."""
    if cfg.mode != "lora":
        return None
    if base_ref:
        version = registry.get(base_ref)
        # Training on from an adapter makes a sibling adapter on the same base.
        return version.base if version.format == "lora" else version.ref
    loc = storage.resolve(cfg.model.uri, cfg.storage)
    name = f"{cfg.registry.model_name}-base"
    with tempfile.TemporaryDirectory() as tmp:
        local = storage.download_dir(loc, Path(tmp) / "base")
        try:
            return registry.register(
                name,
                local,
                lineage=Lineage(base_model=cfg.model.uri, code_version=code_version()),
                description=f"imported from {cfg.model.uri}",
            ).ref
        except RegistryError as e:
            raise RegistryError(f"could not register the LoRA base {cfg.model.uri}: {e}") from e


def main(argv: Sequence[str] | None = None) -> None:
    args = config_args("Train a model on a dataset snapshot and register it.", argv)
    cfg = load_config(TrainConfig, args.config, args.overrides)
    version = run_train(cfg)
    result = {
        "registered": version.ref,
        "metrics": {k: v for k, v in version.metrics.items() if k != "curve"},
    }
    if args.result:
        storage.write_json(storage.resolve(args.result, cfg.storage), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
