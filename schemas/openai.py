"""The OpenAI-compatible bodies the gateway takes and returns.

Requests are strict: an unknown field is an error that names it, never silently ignored.
Responses keep OpenAI's field names and shapes, so the official ``openai`` client reads them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer

from schemas.base import StrictModel

# -- requests ---------------------------------------------------------------------------------


class StreamOptions(StrictModel):
    """Options of a streamed response."""

    include_usage: bool = Field(
        False, description="Send a last chunk with the token usage and no choices."
    )


class SamplingFields(StrictModel):
    """What completions and chat completions share: the model and how to sample."""

    model: str = Field(
        min_length=1, description="A version (name:3), an alias (name@canary) or a name."
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens to generate; None: the gateway's default, clamped."
    )
    temperature: float = Field(1.0, ge=0, le=2, description="0: greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: probability mass kept.")
    stop: str | list[str] | None = Field(
        None, description="Up to 4 strings that end the text (not included in it)."
    )
    seed: int | None = Field(None, description="Makes sampling repeatable.")
    stream: bool = Field(False, description="Answer as server-sent events, chunk by chunk.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, max_length=256, description="End user id: keeps the canary split sticky."
    )
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    presence_penalty: float | None = Field(
        0.0,
        ge=-2,
        le=2,
        description="Subtracted from the logit of every token already generated (None: 0).",
    )
    frequency_penalty: float | None = Field(
        0.0,
        ge=-2,
        le=2,
        description="Subtracted once per earlier occurrence of a generated token (None: 0).",
    )

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops and (len(stops) > 4 or any(not s for s in stops)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1, description="The text to continue, as given.")


class ChatMessage(StrictModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str
    name: str | None = Field(None, description="The speaker's name, passed to the template.")


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``: the messages go through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)


class FeedbackRequest(StrictModel):
    """``POST /v1/feedback``: a user's rating of a response, and optionally a better answer."""

    response_id: str = Field(min_length=1, max_length=128, description="The response's id.")
    rating: int = Field(ge=1, le=5, description="1 (bad) to 5 (good).")
    correction: str | None = Field(None, max_length=20_000, description="What it should say.")
    user: str | None = Field(None, max_length=256)
    session_id: str | None = Field(None, max_length=256)


# -- responses --------------------------------------------------------------------------------


class Usage(StrictModel):
    """Tokens of one request; the completion's exclude the EOS token."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )


class CompletionChoice(StrictModel):
    """The text of a completion, whole or (streamed) the piece this chunk adds."""

    index: int = Field(0, description="Always 0: one choice per request.")
    text: str
    finish_reason: str | None = Field(description="stop or length; None until the last chunk.")
    logprobs: None = Field(None, description="Not computed: always null.")


class Completion(StrictModel):
    """A completion (``object: text_completion``); streamed chunks have the same shape."""

    id: str = Field(description="cmpl-...: what feedback refers to.")
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(description="Unix time, seconds.")
    model: str = Field(description="The model as the request named it.")
    system_fingerprint: str | None = Field(None, description="The exact version that answered.")
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(StrictModel):
    """The generated message of a chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(StrictModel):
    """The one choice of a chat completion (``n`` is 1)."""

    index: int = Field(0, description="Always 0: one choice per request.")
    message: AssistantMessage
    finish_reason: str = Field(description="stop (EOS or a stop string) or length.")
    logprobs: None = Field(None, description="Not computed: always null.")


class ChatCompletion(StrictModel):
    """A whole chat completion."""

    id: str = Field(description="chatcmpl-...: what feedback refers to.")
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time, seconds.")
    model: str = Field(description="The model as the request named it.")
    system_fingerprint: str = Field(description="The exact version that answered.")
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(StrictModel):
    """What a chunk adds to the message: the role first, then content; nothing at the end."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _only_what_it_carries(self, handler: Any) -> dict[str, Any]:
        # OpenAI sends only the keys a delta carries: {} ends the message.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(StrictModel):
    """The one choice of a streamed chat chunk."""

    index: int = Field(0, description="Always 0: one choice per request.")
    delta: ChatDelta
    finish_reason: str | None = Field(description="stop or length; None until the last chunk.")
    logprobs: None = Field(None, description="Not computed: always null.")


class ChatCompletionChunk(StrictModel):
    """One server-sent event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = Field(None, description="Only on the usage chunk (no choices).")


class ModelCard(StrictModel):
    """A served model name, or one of its aliases (``name@alias``) with its version."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "flywheel"
    version: str | None = Field(None, description="For an alias: the version it points at.")


class ModelList(StrictModel):
    """``GET /v1/models``: every registered name and its aliases."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class FeedbackAccepted(StrictModel):
    """Feedback held durably by the event writer."""

    object: Literal["feedback"] = "feedback"
    id: str = Field(description="The feedback event's id.")
    status: Literal["accepted"] = "accepted"


class ErrorDetail(StrictModel):
    """What went wrong, in OpenAI's error shape."""

    message: str = Field(description="What went wrong and what to do.")
    type: str = Field(description="invalid_request_error, authentication_error, ...")
    code: int | None = Field(None, description="The HTTP status; None in a stream.")


class ErrorBody(StrictModel):
    """An error, as OpenAI sends it: the body of a 4xx/5xx, or in-band in a stream."""

    error: ErrorDetail
