"""The evaluation job's recipe."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.loop import GateSettings
from schemas.storage import StorageSettings


class EvalConfig(StrictModel):
    """Candidate vs production (or a baseline) on a feedback snapshot and a held-out snapshot."""

    schema_version: Literal[1] = 1
    registry_uri: str
    storage: StorageSettings = Field(default_factory=StorageSettings)
    candidate: str = Field(description="Version under test ('name:4').")
    production: str | None = Field(
        None,
        description="Version it must beat ('name:3'); unset: score the candidate alone, no gate.",
    )
    baseline: str | None = Field(
        None,
        description="A version to compare with, no gate ('name:3'; a quantized version's "
        "source): the report holds its scores, the candidate's differences from them and how "
        "often both predict the same next held-out token. Not together with production.",
    )
    feedback_snapshot_uri: str | None = Field(
        None,
        description="What users corrected (a snapshot); unset: no feedback scores (a gate then "
        "fails for want of them).",
    )
    heldout_snapshot_uri: str = Field(description="What must not regress (a snapshot).")
    max_heldout_blocks: int = Field(64, ge=1)
    qa_uri: str | None = Field(None, description="Optional JSONL of {question, answer}.")
    max_new_tokens: int = Field(48, ge=1)
    gate: GateSettings = Field(default_factory=GateSettings)

    @model_validator(mode="after")
    def _one_comparison(self) -> EvalConfig:
        if self.production and self.baseline:
            raise ValueError(
                "set production (a gate the candidate must pass) or baseline (differences "
                "only), not both"
            )
        return self
