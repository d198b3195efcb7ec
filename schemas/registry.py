"""Model registry records: versions with lineage, alias moves, audit entries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.base import StrictModel


class FileRecord(StrictModel):
    """One file of a model version."""

    path: str
    size: int
    sha256: str


class SnapshotRef(StrictModel):
    """A dataset snapshot a version was trained on."""

    snapshot_id: str
    uri: str = Field(description="Snapshot folder, for walking lineage back to raw inputs.")


class Lineage(StrictModel):
    """Where a version came from."""

    dataset_snapshots: list[SnapshotRef] = Field(default_factory=list)
    parent: str | None = Field(None, description="Version it was trained from ('name:3').")
    base_model: str | None = Field(
        None, description="External starting point (HF folder or URI) when not a version."
    )
    training_config: dict[str, Any] = Field(default_factory=dict)
    training_config_hash: str | None = None
    code_version: str = "unknown"
    packages: dict[str, str] = Field(default_factory=dict)
    job: str | None = Field(None, description="Ray job submission id or run name.")


QuantizationMethod = Literal["int8-dynamic", "bf16"]


class Quantization(StrictModel):
    """How a quantized version was made from its source (``flywheel models quantize``)."""

    method: QuantizationMethod = Field(
        description="int8-dynamic: Linear weights int8 with a scale per output channel, run "
        "with PyTorch's dynamic int8 kernels (CPU, hf engine only); bf16: weights in bfloat16."
    )
    source: str = Field(description="Version it was quantized from ('name:3').")
    source_bytes: int = Field(
        ge=0, description="Bytes on disk the source needs (a LoRA adapter: with its base)."
    )


class ModelVersion(StrictModel):
    """``manifest.json`` of a registered version; immutable once written."""

    schema_version: Literal[1] = 1
    kind: Literal["model_version"] = "model_version"
    name: str
    version: int
    format: Literal["hf", "lora", "hf-int8"] = Field(
        description="hf: a whole Hugging Face model folder; lora: a PEFT adapter on `base`; "
        "hf-int8: a Hugging Face folder whose Linear weights are int8 (core.generation.int8)."
    )
    base: str | None = Field(None, description="For LoRA: the base version ('name:2').")
    content_sha256: str = Field(description="Hash over the files, for idempotent registration.")
    files: list[FileRecord]
    created_at: str
    created_by: str
    lineage: Lineage
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = ""
    quantization: Quantization | None = Field(
        None, description="Set on a quantized version: its method and source."
    )

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def layout(self) -> str:
        """The format, and for a quantized version how: 'hf-int8 (int8-dynamic of m:1)'."""
        q = self.quantization
        return f"{self.format} ({q.method} of {q.source})" if q else self.format


class AliasRecord(StrictModel):
    """One move of an alias; the records of an alias form its history."""

    name: str
    alias: str
    seq: int = Field(description="1 for the first move; each move adds one.")
    version: int | None = Field(description="Version it points to now; None: unset.")
    previous: int | None = Field(description="Version it pointed to before this move.")
    at: str
    actor: str
    reason: str = ""


class AuditEntry(StrictModel):
    """An append-only, hash-chained audit log entry."""

    seq: int
    at: str
    actor: str
    action: str = Field(description="e.g. register, alias.move, job.submit, eval.report")
    subject: str = Field(description="What it is about, e.g. 'demo:3' or a job id.")
    details: dict[str, Any] = Field(default_factory=dict)
    prev_hash: str
    hash: str = ""
