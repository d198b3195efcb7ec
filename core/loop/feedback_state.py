"""The feedback consumer's persisted state, typed (``<loop_uri>/consumer/state.json``).

One JSON document, written atomically after each batch (see ``actors/feedback.py``). Every
part of it is bounded: joins and ratings by the join window and a count, candidates by what
is not yet published. Files written before it was typed carried ``version: 1`` instead of
``schema_version``, and a window of plain 0/1 flags; :func:`load_consumer_state` reads them.
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
    user_text: str | None = Field(None, description="What the client wrote (curation checks).")
    principal: str | None = None
    key_id: str | None = None
    split: bool = Field(False, description="The traffic split chose its version.")


class FeedbackSummary(StrictModel):
    """A feedback event awaiting its served output."""

    event_id: str
    rating: int
    correction: str | None = None
    user: str | None = None
    at: float
    principal: str | None = None
    key_id: str | None = None


class RatingRecord(StrictModel):
    """The rating a response holds now: a later feedback on it replaces this one."""

    version: str
    rating: int
    principal: str | None = None
    split: bool = False
    at: float = Field(description="When the response was served (event time).")
    rating_index: int = Field(description="Absolute index of its RatingCandidate.")
    correction_index: int | None = Field(None, description="Of its CorrectionCandidate.")


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
    user_text: str | None = None
    superseded: bool = Field(False, description="A later feedback on its response replaced it.")


class RatingCandidate(StrictModel):
    """A rating joined with the answer it rates (``core.loop.curation.Rating``)."""

    prompt: str
    completion: str
    rating: int
    user: str | None = None
    event_ids: list[str]
    model_version: str
    user_text: str | None = None
    superseded: bool = Field(False, description="A later feedback on its response replaced it.")


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
    rated: dict[str, RatingRecord] = Field(
        default_factory=dict, description="Response id -> its current rating (join window)."
    )
    stats: dict[str, VersionCounters] = Field(default_factory=dict)
    recent: dict[str, list[tuple[str, int]]] = Field(
        default_factory=dict,
        description="Version -> last window of (response id, accepted 0/1), one per response.",
    )
    candidates: list[CorrectionCandidate] = Field(
        default_factory=list, description="Not yet published (from absolute index `published`)."
    )
    published: int = Field(0, description="Candidates already taken into feedback snapshots.")
    ratings: list[RatingCandidate] = Field(default_factory=list)
    ratings_published: int = Field(0, description="Ratings already taken into snapshots.")
    candidates_base: int = Field(0, description="Absolute index of candidates[0].")
    ratings_base: int = Field(0, description="Absolute index of ratings[0].")
    dropped: dict[str, int] = Field(
        default_factory=dict,
        description="What was let go to keep the state bounded, and feedback refused, by why.",
    )
    profiles: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Version -> live word profile of served prompts."
    )


def load_consumer_state(raw: dict[str, Any] | None) -> ConsumerState:
    if raw is None:
        return ConsumerState()
    if "version" in raw:  # the untyped shape: same fields, the version under another name
        raw = {k: v for k, v in raw.items() if k != "version"} | {"schema_version": 1}
    recent = raw.get("recent") or {}
    if any(isinstance(f, int) for flags in recent.values() for f in flags):
        # Windows before one rating per response: plain flags, their responses unknown.
        raw = raw | {"recent": {v: [["", f] for f in flags] for v, flags in recent.items()}}
    return ConsumerState.model_validate(raw)
