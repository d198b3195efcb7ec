"""Quantized versions of registry versions (``flywheel models quantize NAME:V --method M``).

The source is built at full precision (a LoRA adapter merged into its base first: the
quantized version is a whole model), written in the method's format, and registered as the
next version of the same model, with the source as its ``lineage.parent`` and the method in
``quantization``. Methods:

- ``int8-dynamic``: Linear weights int8 with a scale per output channel after smoothing,
  the rest as the source stored it (``core.generation.int8``); the hf engine runs it with
  int8 matmuls, activations quantized per token, on CPU.
  vLLM refuses it (:func:`core.generation.loading.check_vllm_can_serve`).
- ``bf16``: every weight in bfloat16, a plain Hugging Face folder both engines serve (on CPU
  and GPU); half the size of a float32 source, the same as a source stored in bfloat16.

How much quality it costs is measured by ``jobs.evaluate`` with the source as ``baseline``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import get_args

import torch

from core.generation.int8 import CALIBRATION, RECORD, save_int8
from core.generation.loading import LoadedModel, fetch, load_version
from core.registry import ModelRegistry, RegistryError
from core.registry.provenance import code_version, package_versions
from schemas.registry import Lineage, ModelVersion, Quantization, QuantizationMethod

METHODS: tuple[str, ...] = get_args(QuantizationMethod)


def quantize_version(registry: ModelRegistry, ref: str, method: str) -> ModelVersion:
    """Register the ``method`` quantization of version ``ref``; quantizing the same version
    the same way again returns the version registered the first time."""
    source = registry.get(ref)
    if method not in METHODS:
        raise RegistryError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if source.quantization is not None:
        q = source.quantization
        raise RegistryError(f"{source.ref} is already quantized ({q.method}): quantize {q.source}")
    loaded = load_version(registry, source.ref, torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loaded.tokenizer.save_pretrained(folder)
        if method == "bf16":
            _save_bf16(loaded, folder, source.ref)
        else:
            _save_int8(loaded, folder, stored_dtype(registry, source), source.ref)
        return registry.register(
            source.name,
            folder,
            format="hf-int8" if method == "int8-dynamic" else "hf",
            lineage=Lineage(
                parent=source.ref, code_version=code_version(), packages=package_versions()
            ),
            # A quantization is a derivative: the source's license goes with it.
            metrics={k: v for k, v in source.metrics.items() if k == "license"},
            description=f"{source.ref} quantized with {method}",
            quantization=Quantization(
                method=method, source=source.ref, source_bytes=source_bytes(registry, source)
            ),
        )


def _save_int8(loaded: LoadedModel, folder: Path, rest_dtype: torch.dtype, source: str) -> None:
    loaded.model.config.save_pretrained(folder)
    loaded.model.generation_config.save_pretrained(folder)
    ids = loaded.tokenizer(CALIBRATION, return_tensors="pt").input_ids
    save_int8(loaded.model, folder, rest_dtype, source, ids)


def _save_bf16(loaded: LoadedModel, folder: Path, source: str) -> None:
    loaded.model.to(torch.bfloat16).save_pretrained(folder)
    record = {"method": "bf16", "source": source, "dtype": "bfloat16"}
    (folder / RECORD).write_text(json.dumps(record, indent=1))


def stored_dtype(registry: ModelRegistry, version: ModelVersion) -> torch.dtype:
    """The dtype the source's weights are stored in (its base's, for an adapter), by its
    config; float32 where the config does not say."""
    ref = version.base if version.format == "lora" and version.base else version.ref
    config = json.loads((fetch(registry, ref) / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def source_bytes(registry: ModelRegistry, version: ModelVersion) -> int:
    """Bytes on disk a version needs to serve: its files, and its base's for an adapter."""
    total = sum(f.size for f in version.files)
    if version.format == "lora" and version.base:
        total += sum(f.size for f in registry.get(version.base).files)
    return total


def version_bytes(version: ModelVersion) -> int:
    return sum(f.size for f in version.files)
