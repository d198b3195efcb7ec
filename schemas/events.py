"""Events: what was served and what users said about it. Versioned, strict."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from schemas.base import StrictModel


def new_event_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ServedOutput(StrictModel):
    """One response the gateway served (streamed or not)."""

    schema_version: Literal[1] = 1
    type: Literal["served_output"] = "served_output"
    event_id: str = Field(default_factory=new_event_id)
    response_id: str = Field(description="The id the client got; feedback refers to it.")
    model: str = Field(description="Model name the client asked for.")
    model_version: str = Field(description="The exact version that answered ('name:3').")
    route: str = Field("", description="How it was chosen: alias name, 'explicit' or 'latest'.")
    split: bool = Field(
        False,
        description="The traffic split chose the version (not the client): only these count "
        "in a canary's statistics.",
    )
    endpoint: Literal["completions", "chat.completions"]
    prompt: str = Field(description="The prompt text (chat turns rendered), PII redacted.")
    user_text: str | None = Field(
        None,
        description="What the client wrote (message contents, or the prompt), joined by "
        "newlines, PII redacted: what curation checks; the prompt adds the chat template.",
    )
    completion: str = Field(description="The generated text, PII redacted.")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    latency_ms: float
    ttft_ms: float | None = Field(None, description="Time to first token, streamed responses.")
    stream: bool = False
    user: str | None = Field(None, description="The end user, pseudonymised (keyed hash).")
    key_id: str | None = Field(None, description="The API key's id (never the key).")
    principal: str | None = Field(
        None, description="Who this counts as in votes and limits (see Feedback.principal)."
    )
    created_at: str = Field(default_factory=utc_now)


class Feedback(StrictModel):
    """A user's rating (and optional correction) of a served response."""

    schema_version: Literal[1] = 1
    type: Literal["feedback"] = "feedback"
    event_id: str = Field(default_factory=new_event_id)
    response_id: str
    rating: int = Field(ge=1, le=5, description="1 (bad) to 5 (good); 4 and up is accepted.")
    correction: str | None = Field(None, description="What the answer should have been.")
    user: str | None = Field(None, description="The end user, pseudonymised (keyed hash).")
    session_id: str | None = Field(None, description="Pseudonymised like the user.")
    key_id: str | None = Field(None, description="The API key's id (never the key).")
    principal: str | None = Field(
        None,
        description="Who this counts as in curation and canary votes: the key id, or "
        "`key id/pseudonymous user` for a key trusted to name its users. None: an event from "
        "before principals (all such count as one).",
    )
    created_at: str = Field(default_factory=utc_now)


class Erased(StrictModel):
    """A tombstone where an event was (``core.erasure``): erased for its user, or past the
    retention window. It keeps the event's line, so offsets never move, and its id; nothing
    else of it. Readers of the log skip it."""

    schema_version: Literal[1] = 1
    type: Literal["erased"] = "erased"
    event_id: str
    erasure: str = Field(description="The ledger record or retention run that erased it.")


Event = Annotated[ServedOutput | Feedback, Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[ServedOutput | Feedback] = TypeAdapter(Event)
Line = Annotated[ServedOutput | Feedback | Erased, Field(discriminator="type")]
LINE_ADAPTER: TypeAdapter[ServedOutput | Feedback | Erased] = TypeAdapter(Line)


def parse_event(raw: str | bytes) -> ServedOutput | Feedback:
    return EVENT_ADAPTER.validate_json(raw)


def parse_line(raw: str | bytes) -> ServedOutput | Feedback | Erased:
    """A segment's line: an event or the tombstone of one."""
    return LINE_ADAPTER.validate_json(raw)
