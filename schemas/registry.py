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


class ModelVersion(StrictModel):
    """``manifest.json`` of a registered version; immutable once written."""

    schema_version: Literal[1] = 1
    kind: Literal["model_version"] = "model_version"
    name: str
    version: int
    format: Literal["hf", "lora"] = Field(
        description="hf: a whole Hugging Face model folder; lora: a PEFT adapter on `base`."
    )
    base: str | None = Field(None, description="For LoRA: the base version ('name:2').")
    content_sha256: str = Field(description="Hash over the files, for idempotent registration.")
    files: list[FileRecord]
    created_at: str
    created_by: str
    lineage: Lineage
    metrics: dict[str, Any] = Field(default_factory=dict)
    description: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


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
