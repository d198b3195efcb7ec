"""The evaluation job's recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel
from schemas.loop import GateSettings
from schemas.storage import StorageSettings


class EvalConfig(StrictModel):
    """Candidate vs production on a feedback snapshot and a held-out snapshot."""

    schema_version: Literal[1] = 1
    registry_uri: str
    storage: StorageSettings = Field(default_factory=StorageSettings)
    candidate: str = Field(description="Version under test ('name:4').")
    production: str | None = Field(
        None,
        description="Version it must beat ('name:3'); unset: score the candidate alone, no gate.",
    )
    feedback_snapshot_uri: str = Field(description="What users corrected (a snapshot).")
    heldout_snapshot_uri: str = Field(description="What must not regress (a snapshot).")
    max_heldout_blocks: int = Field(64, ge=1)
    qa_uri: str | None = Field(None, description="Optional JSONL of {question, answer}.")
    max_new_tokens: int = Field(48, ge=1)
    gate: GateSettings = Field(default_factory=GateSettings)
