"""Feedback snapshots: what users taught, as token ids ready for the training objectives.

A feedback snapshot folder is ``<root>/snapshots/<snapshot_id>/`` with one Parquet file per
kind of example, the tokenizer they were made with (``tokenizer/``) and ``manifest.json``,
written last (a snapshot exists when, and only when, its manifest does). Unlike a corpus
snapshot nothing is packed: each row is one example, prompt and completion apart, so the
trainer chooses the loss mask (SFT and the preference losses score the completion only)
and the packing. Every row names the events it came from.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import StrictModel
from schemas.snapshot import TokenizerInfo

# Row columns by kind. ``*_ids`` are token ids; the completions end with the end-of-turn token.
COMMON_COLUMNS = ("key", "event_ids", "prompt", "prompt_ids")
KIND_COLUMNS = {
    # A correction: the prompt and the answer the user gave.
    "sft": (*COMMON_COLUMNS, "completion", "completion_ids"),
    # The correction preferred over the served answer it corrects.
    "preference": (*COMMON_COLUMNS, "chosen", "chosen_ids", "rejected", "rejected_ids"),
    # A rated served answer: desirable at 4-5, undesirable at 1-2. ``kl_completion_ids`` is
    # another example's completion, the mismatched pair KTO's reference point is taken on.
    "kto": (*COMMON_COLUMNS, "completion", "completion_ids", "desirable", "kl_completion_ids"),
}
Kind = Literal["sft", "preference", "kto"]


class FeedbackFile(StrictModel):
    kind: Kind
    path: str = Field(description="Parquet file relative to the snapshot folder.")
    rows: int
    sha256: str = Field(description="Hash of the file's bytes.")


class FeedbackCounts(StrictModel):
    """Examples by kind, and what curation kept out, by reason."""

    sft: int = 0
    preference: int = 0
    kto_desirable: int = 0
    kto_undesirable: int = 0
    quarantined: dict[str, int] = Field(default_factory=dict)


class FeedbackManifest(StrictModel):
    """``manifest.json`` of a feedback snapshot."""

    schema_version: Literal[1] = 1
    kind: Literal["feedback_snapshot"] = "feedback_snapshot"
    snapshot_id: str = Field(description="Hash of the examples' content and the tokenizer.")
    name: str
    role: Literal["train", "eval"] = Field(description="eval: held back to judge candidates.")
    created_at: str = Field(description="UTC, ISO 8601.")
    tokenizer: TokenizerInfo
    counts: FeedbackCounts
    files: list[FeedbackFile]
    parents: list[str] = Field(description="Every event id the examples came from.")
    principals: int | None = Field(
        None,
        description="Distinct principals the examples came from (events without one count as "
        "one, as in curation); None in snapshots published before it was recorded.",
    )
    corpus_snapshot: str | None = Field(
        None, description="The corpus snapshot production learned from, for rehearsal."
    )
    code_version: str = "unknown"
