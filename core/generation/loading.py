"""A registry version made ready to generate: fetched into a local cache, then built.

A version is a whole Hugging Face model, a LoRA adapter plus its base, or an int8-dynamic
quantized model (``core.generation.int8``). The cache is shared by every process on a node
(the gateway's tokenizers, generator replicas, evaluation jobs).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.registry import ModelRegistry
from schemas.registry import ModelVersion

if TYPE_CHECKING:  # torch is imported by whoever builds a model, not by a fetch
    import torch


@dataclass
class LoadedModel:
    """A model ready to generate, with what the decoder needs to know about it."""

    ref: str
    model: Any
    tokenizer: Any
    eos_ids: frozenset[int]
    pad_id: int


def cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "flywheel-serve-cache"


def fetch(registry: ModelRegistry, ref: str) -> Path:
    """A local copy of a version's files (downloaded once per content hash).

    The gateway and every generator replica on a node share the cache, and may fetch the
    same version at once: each downloads into a folder of its own and renames it into
    place, so nobody reads a file another process is still writing.
    """
    version = registry.get(ref)
    target = cache_dir() / hashlib.sha256(version.content_sha256.encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    if target.exists():  # left by a crash of the old in-place download: never complete
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        registry.download(version.ref, tmp)
        (tmp / ".complete").touch()
        with contextlib.suppress(OSError):  # another process published it first
            os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_version(registry: ModelRegistry, ref: str, dtype: torch.dtype) -> LoadedModel:
    """Build a registered version: an HF model, a base with its LoRA adapter merged, or an
    int8-dynamic model, which runs in float32 whatever ``dtype`` says (its int8 kernels take
    float32 activations)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    version = registry.get(ref)
    folder = fetch(registry, version.ref)
    if version.format == "lora":
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(fetch(registry, version.base), dtype=dtype)
        # Merged once at load: no adapter overhead per token afterwards.
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    elif version.format == "hf-int8":
        from core.generation.int8 import load_int8

        model = load_int8(folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return LoadedModel(
        version.ref, model, tokenizer, frozenset(i for i in eos_ids if i is not None), pad
    )


def check_vllm_can_serve(version: ModelVersion) -> None:
    """vLLM loads Hugging Face folders; an int8-dynamic version's int8 weights are laid out for
    PyTorch's dynamic int8 kernels (CPU), which vLLM neither reads nor has."""
    if version.format == "hf-int8":
        q = version.quantization
        source = q.source if q else "its source"
        raise ValueError(
            f"{version.ref} is quantized int8-dynamic, which only the hf engine runs (on CPU): "
            f"serve it with generator.engine: hf, or for vLLM quantize {source} with "
            "--method bf16"
        )
