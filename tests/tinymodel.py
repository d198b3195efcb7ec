"""Tiny models built on the spot (nothing downloaded): a 2-layer Llama with a byte-level BPE
trained here, a chat template, and a LoRA adapter whose output differs from its base."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from schemas.events import ServedOutput

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def training_texts() -> list[str]:
    import random

    from demo.world import DOCUMENT_KINDS

    rng = random.Random(0)
    kinds = list(DOCUMENT_KINDS.values())
    return [kinds[i % len(kinds)](rng) for i in range(200)]


if TYPE_CHECKING:
    from core.registry import ModelRegistry
    from jobs.runtime import Progress
    from schemas.snapshot import SnapshotManifest


def make_tiny_model(
    folder: Path, seed: int = 0, vocab_size: int = 400, chat_template: bool = True
) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from core.data.tokenization import EOS_TOKEN, PAD_TOKEN, train_bpe

    bundle = train_bpe(training_texts(), vocab_size=vocab_size)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bundle.tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
    )
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=bundle.tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # head_dim 32: the smallest vLLM's CPU attention kernels take.
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        bos_token_id=bundle.eos_token_id,
        eos_token_id=bundle.eos_token_id,
        pad_token_id=bundle.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_lora_adapter(base: Path, folder: Path, seed: int = 1) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(
        r=4,
        lora_alpha=32,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(model, cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).exists():
            shutil.copy(base / name, folder / name)
    return folder


def tiny_production(
    root: Path, actor: str, progress: Progress | None = None
) -> tuple[ModelRegistry, Path, SnapshotManifest]:
    """A registry whose ``tiny@production`` is a fresh tiny model, and a held-out snapshot of
    the demo corpus in its tokenizer: the world the loop tests and bench start from.
    Returns (registry, base model folder, held-out snapshot manifest)."""
    from core.registry import ModelRegistry
    from demo.corpus import generate_corpus
    from jobs.ingest import run_ingest
    from schemas.ingest import IngestConfig

    base = make_tiny_model(root / "base")
    registry = ModelRegistry(str(root / "registry"), actor=actor)
    registry.register("tiny", base)
    registry.set_alias("tiny", "production", 1)
    generate_corpus(root / "corpus", target_bytes=150_000, seed=9)
    heldout = run_ingest(
        IngestConfig.model_validate(
            {
                "name": "heldout",
                "input": {"uri": str(root / "corpus" / "raw")},
                "output": {"uri": str(root / "heldout")},
                "tokenizer": {"kind": "pretrained", "uri": str(base)},
                "pack": {"block_size": 64},
                "execution": {"executor": "local"},
            }
        ),
        progress,
    )
    return registry, base, heldout


def write_finetune_recipe(
    path: Path,
    checkpoints: Path,
    target_modules: list[str],
    checkpoint_every: int,
    log_every: int,
) -> Path:
    """The loop's fine-tune recipe for the tiny model (one half-CPU worker, LoRA r=16, 30
    steps); the controller fills in the run, model, data and registry it trains."""
    import yaml

    unset = "set-by-the-controller"
    path.write_text(
        yaml.safe_dump(
            {
                "run_name": unset,
                "mode": "lora",
                "model": {"uri": unset},
                "data": {"snapshot_uri": unset, "micro_batch_size": 2},
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": target_modules},
                "optim": {"lr": 5e-2, "warmup_steps": 0, "max_steps": 30, "schedule": "constant"},
                "deepspeed": {"zero_stage": 0},
                "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
                "checkpoint": {"storage_uri": str(checkpoints), "every_steps": checkpoint_every},
                "registry": {"uri": unset, "model_name": "tiny"},
                "metrics": {"log_every_steps": log_every, "peak_flops_per_worker": 1e10},
            }
        )
    )
    return path


def loop_settings(root: Path, model: str = "m", **extra: Any) -> dict[str, Any]:
    """A loop recipe's body for tests, its stores under ``root``; ``extra`` sections added."""
    return {
        "model_name": model,
        "registry_uri": str(root / "registry"),
        "event_log_uri": str(root / "events"),
        "loop_uri": str(root / "loop"),
        "finetune": {"recipe": "jobs/configs/train-tiny.yaml"},
        **extra,
    }


def served_output(
    response_id: str,
    version: str,
    prompt: str,
    user: str,
    completion: str = "?",
    split: bool = True,
) -> ServedOutput:
    """A served chat completion event, as the gateway logs one, for tests that feed the loop:
    the split chose its version, and ``user`` is its principal (a key trusted to name users)."""
    return ServedOutput(
        response_id=response_id,
        model=version.split(":")[0],
        model_version=version,
        endpoint="chat.completions",
        prompt=prompt,
        completion=completion,
        prompt_tokens=1,
        completion_tokens=1,
        finish_reason="stop",
        latency_ms=1.0,
        user=user,
        principal=user,
        split=split,
    )


def model_dir(tmp_path: Path, tag: str) -> Path:
    """A stand-in model folder (a config and some bytes) for registry bookkeeping tests."""
    d = tmp_path / f"model-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({"tag": tag}))
    (d / "weights.bin").write_bytes(tag.encode() * 100)
    return d
