"""The Ray Data side of batch generation: reading prompt splits, and the engine actors.

An engine actor loads the registry version once, then for every batch of prompt rows
generates and writes one Parquet part itself. The part's name is a hash of the batch's row
ids, so a batch that Ray Data retries after its actor died mid-write lands on the same name
(an atomic overwrite, never a second copy); a resumed job skips every id already in a part.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from core import faults, storage
from core.data.readers import InputSplit
from core.generation.batch import BatchEngine, Generated, encode, row_seed
from core.generation.prompts import read_prompts
from core.generation.sampling import SamplingParams
from core.registry import ModelRegistry
from core.storage import Location
from schemas.generate import GenerateConfig

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("messages", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("error", pa.string()),
        ("model", pa.string()),
        ("sampling", pa.string()),
    ]
)
PROMPT_COLUMNS = ("id", "prompt", "messages", "error")


def read_split_rows(
    batch: dict[str, np.ndarray], cfg: GenerateConfig, done: frozenset[str]
) -> dict[str, np.ndarray]:
    """Prompt rows of a batch of splits, less the ids a part already holds.

    A batch row is ``{"split": JSON of an InputSplit, "file": the URI of its file}``."""
    f, rows = cfg.input, []
    for raw, uri in zip(batch["split"], batch["file"], strict=True):
        split = InputSplit(**json.loads(raw))
        loc = storage.resolve(str(uri), cfg.storage)
        for row in read_prompts(split, loc, f.prompt_field, f.messages_field, f.id_field):
            if row["id"] not in done:
                rows.append(row)
    return {k: np.array([r[k] for r in rows], dtype=object) for k in PROMPT_COLUMNS}


class GenerateUDF:
    """One engine actor: a registry version loaded once, a Parquet part per batch."""

    def __init__(
        self, cfg: GenerateConfig, version_ref: str, out: Location, fault_spec: str | None = None
    ) -> None:
        self.cfg, self.ref, self.out, self.fault_spec = cfg, version_ref, out, fault_spec
        cpus = max(1, math.ceil(cfg.engine.num_cpus))  # 1.9 CPUs: threads on 2 cores
        os.environ.setdefault("OMP_NUM_THREADS", str(cpus))
        registry = ModelRegistry(cfg.registry_uri, cfg.storage)
        self.engine, self.tokenizer = _build_engine(cfg, registry, version_ref, cpus)
        s = cfg.sampling
        self.sampling_json = json.dumps(s.model_dump(), sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        ids = [str(i) for i in batch["id"]]
        if not ids:  # every row of its splits was done already
            return {"part": [], "rows": [], "errors": [], "completion_tokens": [], "engine_s": []}
        prompts, params, todo, errors = [], [], [], [str(e) for e in batch["error"]]
        for i, (prompt, messages) in enumerate(
            zip(batch["prompt"], batch["messages"], strict=True)
        ):
            if errors[i]:
                continue
            ptoks = encode(self.tokenizer, str(prompt), str(messages))
            limit = self.cfg.max_prompt_tokens
            if limit is not None and len(ptoks) > limit:
                errors[i] = f"prompt of {len(ptoks)} tokens > max_prompt_tokens {limit}"
                continue
            prompts.append(ptoks)
            params.append(self._params(ids[i]))
            todo.append(i)
        generated: list[Generated] = [Generated(error=e) for e in errors]
        prompt_tokens = [0] * len(ids)
        start = time.perf_counter()
        outs = self.engine.generate(prompts, params) if prompts else []
        engine_s = time.perf_counter() - start
        for i, g, p in zip(todo, outs, prompts, strict=True):
            generated[i], prompt_tokens[i] = g, len(p)
        part = self._write(batch, ids, generated, prompt_tokens)
        return {
            "part": [part],
            "rows": [len(ids)],
            "errors": [sum(1 for g in generated if g.error)],
            "completion_tokens": [sum(g.completion_tokens for g in generated)],
            "engine_s": [engine_s],
        }

    def _params(self, row_id: str) -> SamplingParams:
        s = self.cfg.sampling
        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            stop=tuple(s.stop),
            seed=row_seed(s.seed, row_id),
        )

    def _write(
        self, batch: dict[str, np.ndarray], ids: list[str], gen: list[Generated], ptoks: list[int]
    ) -> str:
        n = len(ids)
        table = pa.table(
            {
                "id": ids,
                "prompt": [str(p) for p in batch["prompt"]],
                "messages": [str(m) for m in batch["messages"]],
                "text": [g.text for g in gen],
                "finish_reason": [g.finish_reason for g in gen],
                "prompt_tokens": ptoks,
                "completion_tokens": [g.completion_tokens for g in gen],
                "error": [g.error for g in gen],
                "model": [self.ref] * n,
                "sampling": [self.sampling_json] * n,
            },
            schema=OUTPUT_SCHEMA,
        )
        name = f"part-{xxhash.xxh3_64_hexdigest(chr(0).join(ids).encode())}.parquet"
        storage.write_parquet(self.out.join(name), table)
        faults.maybe_fail("generate.part_written", self.fault_spec)  # dies before it reports
        return name


def _build_engine(
    cfg: GenerateConfig, registry: ModelRegistry, ref: str, cpus: int
) -> tuple[BatchEngine, Any]:
    """The configured engine for ``ref`` and the tokenizer prompts are encoded with."""
    import torch
    from transformers import AutoTokenizer

    from core.generation.loading import fetch, load_version

    e = cfg.engine
    if e.kind == "hf":
        from core.generation.batch import HFBatchEngine

        torch.set_num_threads(cpus)
        dtype = torch.bfloat16 if e.dtype == "bfloat16" else torch.float32
        loaded = load_version(registry, ref, dtype)
        return HFBatchEngine(loaded), loaded.tokenizer
    from core.generation.batch import VLLMBatchEngine

    version = registry.get(ref)
    if e.num_gpus == 0:  # vLLM's CPU backend: its threads on this actor's cores
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(e.kv_cache_space_gib))
        cores = sorted(os.sched_getaffinity(0))[:cpus]
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, cores)))
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    if version.format == "lora":
        base = str(fetch(registry, version.base))
        adapter = str(fetch(registry, version.ref))
        # The adapter's own tokenizer where training saved one (added tokens), else the base's.
        has_own = (Path(adapter) / "tokenizer_config.json").exists()
        tokenizer = AutoTokenizer.from_pretrained(adapter if has_own else base)
        return VLLMBatchEngine(base, e, adapter), tokenizer
    folder = str(fetch(registry, version.ref))
    return VLLMBatchEngine(folder, e), AutoTokenizer.from_pretrained(folder)
