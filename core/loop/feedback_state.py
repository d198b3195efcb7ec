"""The feedback consumer's persisted state, typed (``<loop_uri>/consumer/state.json``).

One JSON document, written atomically after each batch (see ``actors/feedback.py``). Files
written before it was typed carried ``version: 1`` instead of ``schema_version``; their
shape is otherwise the same and :func:`load_consumer_state` reads them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from core.events import Offset
from schemas.base import StrictModel


class ServedSummary(StrictModel):
    """A served output awaiting (or joined with) its feedback; ``at`` is event time."""

    event_id: str
    version: str = Field(description="The model version that served it.")
    prompt: str
    completion: str = Field("", description="The served answer (KTO and preference pairs).")
    user: str | None = None
    at: float


class FeedbackSummary(StrictModel):
    """A feedback event awaiting its served output."""

    event_id: str
    rating: int
    correction: str | None = None
    user: str | None = None
    at: float


class VersionCounters(StrictModel):
    """What one model version was asked and how users rated it (accepted: rating >= 4)."""

    requests: int = 0
    rated: int = 0
    rating_sum: int = 0
    accepted: int = 0
    corrections: int = 0


class CorrectionCandidate(StrictModel):
    """A correction joined with what was served (``core.loop.curation.Candidate``)."""

    prompt: str
    answer: str
    user: str | None = None
    event_ids: list[str]
    model_version: str
    rejected: str | None = Field(None, description="The served answer it corrects.")


class RatingCandidate(StrictModel):
    """A rating joined with the answer it rates (``core.loop.curation.Rating``)."""

    prompt: str
    completion: str
    rating: int
    user: str | None = None
    event_ids: list[str]
    model_version: str


class ConsumerState(StrictModel):
    schema_version: Literal[1] = 1
    offset: dict[str, int] = Field(
        default_factory=lambda: Offset().to_json(), description="The next event to read."
    )
    events: int = Field(0, description="Events applied (duplicates not counted).")
    last_event_at: float | None = None
    seen: dict[str, float] = Field(
        default_factory=dict, description="Event id -> event time, kept for the join window."
    )
    pending_served: dict[str, ServedSummary] = Field(
        default_factory=dict, description="Response id -> served output awaiting feedback."
    )
    pending_feedback: dict[str, list[FeedbackSummary]] = Field(
        default_factory=dict, description="Response id -> feedback awaiting its served output."
    )
    stats: dict[str, VersionCounters] = Field(default_factory=dict)
    recent: dict[str, list[int]] = Field(
        default_factory=dict, description="Version -> last window of accepted flags (0/1)."
    )
    candidates: list[CorrectionCandidate] = Field(default_factory=list)
    published: int = Field(0, description="Candidates already taken into feedback snapshots.")
    ratings: list[RatingCandidate] = Field(default_factory=list)
    ratings_published: int = Field(0, description="Ratings already taken into snapshots.")
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Version -> live word profile of served prompts."
    )


def load_consumer_state(raw: dict[str, Any] | None) -> ConsumerState:
    if raw is None:
        return ConsumerState()
    if "version" in raw:  # the untyped shape: same fields, the version under another name
        raw = {k: v for k, v in raw.items() if k != "version"} | {"schema_version": 1}
    return ConsumerState.model_validate(raw)
