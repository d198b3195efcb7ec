"""The batch generation job's recipe (``jobs.generate``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel
from schemas.storage import StorageSettings


class PromptInput(StrictModel):
    """Where the prompts are: JSONL or Parquet files under a folder (local path or s3://)."""

    uri: str = Field(description="A folder (every file under it) or one file.")
    format: Literal["auto", "jsonl", "parquet"] = Field(
        "auto", description="auto: by extension (.jsonl/.json/.ndjson, .parquet)."
    )
    prompt_field: str = Field(
        "prompt", description="A string, sent as it is (a completion prompt)."
    )
    messages_field: str = Field(
        "messages",
        description="A list of {role, content}: rendered with the model's chat template. "
        "Used where a row has no prompt_field.",
    )
    id_field: str | None = Field(
        None,
        description="A row's id in the output; unset: where it was read (path@offset, path#row).",
    )
    split_bytes: int = Field(8 << 20, ge=1 << 12, description="JSONL files are read in ranges.")


class SamplingSettings(StrictModel):
    """The same for every prompt; OpenAI's meaning."""

    max_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, description="0: greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(None, description="Set: each row samples with seed + its index.")
    stop: list[str] = Field(default_factory=list)


class GenerateEngine(StrictModel):
    """Which engine decodes, and how many of them."""

    kind: Literal["vllm", "hf"] = Field(
        "vllm", description="vllm: vLLM's offline engine; hf: Hugging Face, batched."
    )
    concurrency: int = Field(1, ge=1, description="Engine actors (one model copy each).")
    num_cpus: float = Field(1, gt=0, description="CPUs per actor (its threads use them).")
    num_gpus: float = Field(0, ge=0, description="GPUs per actor.")
    batch_size: int = Field(64, ge=1, description="Rows per batch: one output file each.")
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    max_model_len: int | None = Field(None, ge=16, description="vllm: None is the model's.")
    max_num_seqs: int = Field(64, ge=1, description="vllm: sequences decoded together.")
    kv_cache_space_gib: int = Field(1, ge=1, description="vllm on CPU: KV cache per actor.")
    enforce_eager: bool = Field(True, description="vllm: no torch.compile (starts faster).")
    enable_prefix_caching: bool = Field(True, description="vllm: reuse shared prefixes.")


class GenerateConfig(StrictModel):
    """Generate for every prompt under ``input`` with one registry version."""

    schema_version: Literal[1] = 1
    name: str = Field("generate", description="Named in progress lines and the manifest.")
    registry_uri: str
    model: str = Field(description="'name:3', 'name@production' or 'name' (latest).")
    storage: StorageSettings = Field(default_factory=StorageSettings)
    input: PromptInput
    output_uri: str = Field(description="A folder: Parquet parts and _manifest.json.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    engine: GenerateEngine = Field(default_factory=GenerateEngine)
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longer prompts are not generated for (an error row)."
    )
    ray_address: str | None = Field(None, description="None: the job's cluster or local Ray.")
