"""The training recipe: a dataset snapshot in, a registered model version out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.storage import StorageSettings


class ModelSource(StrictModel):
    """What training starts from."""

    registry_ref: str | None = Field(
        None, description="A registered version: 'name:3' or 'name@production'."
    )
    uri: str | None = Field(None, description="A Hugging Face model folder: path or s3:// URI.")
    architecture: dict[str, Any] | None = Field(
        None,
        description="Pretraining only: a Hugging Face config (model_type plus sizes, e.g. "
        "{model_type: llama, hidden_size: 64, num_hidden_layers: 2, ...}); vocab size and "
        "special token ids come from the snapshot's tokenizer.",
    )


class DataConfig(StrictModel):
    """Which snapshot to train on and how to batch it."""

    snapshot_uri: str = Field(
        description="Snapshot folder (<dataset>/snapshots/<id>), or a dataset root: its newest."
    )
    micro_batch_size: int = Field(4, ge=1, description="Blocks per worker per forward pass.")
    mask_document_boundaries: bool = Field(
        True, description="Block attention across packed documents; restart position ids."
    )
    shuffle_buffer_blocks: int = Field(
        0, ge=0, description="Local shuffle buffer per worker (0 keeps the snapshot order)."
    )
    replay_snapshot_uri: str | None = Field(
        None,
        description=(
            "Rehearsal: a snapshot whose last `replay_blocks` blocks are mixed into training, "
            "so a fine-tune on a few examples keeps what the model knew (the loop passes "
            "production's training snapshot; its evaluation holds out the first blocks)."
        ),
    )
    replay_blocks: int = Field(0, ge=0, description="Blocks taken from replay_snapshot_uri.")
    replay_weight: float = Field(
        1.0,
        ge=0,
        description="Feedback objectives (sft, dpo, kto): weight of the rehearsal blocks' "
        "language-model loss, added to the objective's loss on the steps that rehearse.",
    )
    replay_every: int = Field(
        1,
        ge=1,
        description="Feedback objectives: rehearse one corpus block every this many "
        "micro-batches (1: every one). A block costs about as much compute as a block of "
        "feedback: at 2 a step of one feedback block costs 1.5 blocks instead of 2.",
    )
    block_size: int = Field(
        256, ge=8, description="Feedback objectives: tokens per packed SFT block."
    )


class LoraConfig(StrictModel):
    """LoRA adapter settings (mode: lora)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt (GPT-2 uses c_attn, c_proj).",
    )


class OptimConfig(StrictModel):
    """Optimiser and schedule."""

    lr: float = Field(3e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(10, ge=0, description="Linear warmup, optimizer steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="Decay after warmup, to min_lr_ratio * lr at max_steps."
    )
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    max_steps: int = Field(100, ge=1, description="Optimizer steps to train.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    grad_clip: float = Field(1.0, ge=0, description="Max gradient norm; 0 disables clipping.")


class DeepSpeedConfig(StrictModel):
    """DeepSpeed ZeRO settings."""

    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (stage 3).")
    bf16: Literal["auto", "true", "false"] = Field(
        "auto", description="auto: bf16 on GPUs that support it, fp32 on CPU."
    )
    cpu_shm_allreduce: bool = Field(
        False,
        description="CPU workers: DeepSpeed's shared-memory all-reduce (faster with many "
        "workers per node) instead of gloo. It is JIT-compiled on first use (~35 s), and a "
        "compile killed midway leaves a build lock that blocks later runs.",
    )

    @model_validator(mode="after")
    def _offload_params_needs_stage3(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("deepspeed.offload_params needs deepspeed.zero_stage: 3")
        return self


class ScalingConfig(StrictModel):
    """How many workers and what each gets."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="Ray resources per worker."
    )
    threads_per_worker: int | None = Field(
        None,
        ge=1,
        description="Torch compute threads per worker; by default the worker's CPUs, at "
        "least 1: more threads than cores makes workers that share them preempt each other.",
    )

    def threads(self) -> int:
        """What each worker passes to ``torch.set_num_threads``."""
        if self.threads_per_worker:
            return self.threads_per_worker
        return max(1, int(self.resources_per_worker.get("CPU", 1.0)))


class CheckpointConfig(StrictModel):
    """Checkpoints to object storage through Ray Train."""

    storage_uri: str = Field(description="Root for Ray Train runs (path or s3://).")
    every_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps.")
    keep: int = Field(2, ge=1, description="Checkpoints to keep per run.")


class RegistryTarget(StrictModel):
    """Where the result is registered."""

    uri: str = Field(description="Registry root (path or s3://).")
    model_name: str = Field(description="Name the new version is registered under.")
    alias: str | None = Field(None, description="Point this alias at the new version.")


class MetricsConfig(StrictModel):
    """What is measured and how often it is logged."""

    log_every_steps: int = Field(10, ge=1)
    peak_flops_per_worker: float | None = Field(
        None, description="Peak FLOP/s of one worker for MFU; measured (matmul) when unset."
    )


Objective = Literal["lm", "sft", "dpo", "kto"]


class DpoSettings(StrictModel):
    """Direct preference optimisation (objective: dpo) on (prompt, chosen, rejected)."""

    beta: float = Field(0.1, gt=0, description="Strength of the pull towards the reference.")
    loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid",
        description="sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023), on "
        "length-averaged log-probabilities, more robust when preferences are noisy.",
    )
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Conservative DPO (sigmoid only): the share of preference labels assumed "
        "flipped, for noisy feedback.",
    )


class KtoSettings(StrictModel):
    """Kahneman-Tversky optimisation (objective: kto) on (prompt, completion, desirable)."""

    beta: float = Field(0.1, gt=0)
    desirable_weight: float | None = Field(
        None,
        gt=0,
        description="Weight of desirable examples; unset: balanced against the undesirable "
        "ones from the snapshot's counts (the KTO paper's advice).",
    )
    undesirable_weight: float = Field(1.0, gt=0)


class Stage(StrictModel):
    """One objective of a multi-stage run (e.g. sft then dpo), in order, in one job."""

    objective: Objective
    steps: int = Field(ge=1, description="Optimizer steps of this stage.")


class TrainConfig(StrictModel):
    """A whole training recipe (``jobs/configs/train-*.yaml``)."""

    schema_version: Literal[1] = 1
    run_name: str = Field(description="Ray Train run name: the same name resumes.", min_length=1)
    mode: Literal["pretrain", "full", "lora"]
    objective: Objective = Field(
        "lm",
        description="lm: next-token loss on packed text (a corpus snapshot, or a feedback "
        "snapshot's prompt and answer together); sft: the answer tokens only, examples packed "
        "without attention across them; dpo: preference pairs; kto: rated answers. The last "
        "three read a feedback snapshot.",
    )
    stages: list[Stage] = Field(
        default_factory=list,
        description="Several objectives in order (e.g. sft then dpo); their steps add up to "
        "optim.max_steps. Each preference stage takes the policy it starts from as reference.",
    )
    dpo: DpoSettings = Field(default_factory=DpoSettings)
    kto: KtoSettings = Field(default_factory=KtoSettings)
    seed: int = 0
    storage: StorageSettings = Field(default_factory=StorageSettings)
    model: ModelSource
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig
    registry: RegistryTarget
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts (-1: unlimited).")
    address: str | None = Field(None, description="Ray address; RAY_ADDRESS or local if unset.")

    @model_validator(mode="after")
    def _source_matches_mode(self) -> TrainConfig:
        m = self.model
        if self.mode == "pretrain" and not m.architecture:
            raise ValueError("mode pretrain needs model.architecture (a Hugging Face config)")
        if self.mode != "pretrain" and bool(m.registry_ref) == bool(m.uri):
            raise ValueError(f"mode {self.mode} needs exactly one of model.registry_ref, model.uri")
        if self.stages and sum(s.steps for s in self.stages) != self.optim.max_steps:
            total = sum(s.steps for s in self.stages)
            raise ValueError(
                f"stages' steps add up to {total}, not optim.max_steps {self.optim.max_steps}"
            )
        return self

    def plan(self) -> list[Stage]:
        """The stages to run: ``stages``, or the one ``objective`` for every step."""
        return list(self.stages) or [Stage(objective=self.objective, steps=self.optim.max_steps)]
