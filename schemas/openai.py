"""The OpenAI-compatible bodies the gateway takes and returns.

Requests are strict: an unknown field is an error that names it, never silently ignored.
Responses keep OpenAI's field names and shapes, so the official ``openai`` client reads them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
)

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
        min_length=1,
        max_length=128,
        description="A version (name:3), an alias (name@canary) or a name.",
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Tokens to generate; None: the gateway's default, clamped."
    )
    # Not in (0, 0.01): float32 logits / temperature overflow into NaN from about 1e-35, and
    # vLLM raises anything under 0.01 to 0.01 (the two engines would disagree).
    temperature: float = Field(
        1.0, ge=0, le=2, description="0: greedy decoding; otherwise from 0.01 to 2."
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling: probability mass kept, in (0, 1]."
    )
    stop: str | list[str] | None = Field(
        None,
        description="Up to 4 strings of 1 to 64 characters that end the text (not included).",
    )
    # int64, not negative: torch takes -2**63..2**64-1 but wraps negatives (-1 is 2**64-1),
    # and vLLM reads -1 as no seed at all; every int64 tool (numpy, JSON parsers) takes it.
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Makes sampling repeatable: an integer from 0 to 2**63-1.",
    )
    stream: bool = Field(False, description="Answer as server-sent events, chunk by chunk.")
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, max_length=128, description="End user id: keeps the canary split sticky."
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
        # Long stops cost every step: each is searched for in the text, and up to its length
        # of text is held back from the stream in case it is the start of one.
        if stops and (len(stops) > 4 or any(not 1 <= len(s) <= 64 for s in stops)):
            raise ValueError("stop takes up to 4 strings of 1 to 64 characters each")
        return stops

    @field_validator(
        "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", mode="wrap"
    )
    @classmethod
    def _in_range(
        cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo
    ) -> Any:
        """A number out of bounds fails with its whole range (pydantic's names one bound)."""
        ranges = {
            "temperature": "0 (greedy) or from 0.01 to 2",
            "top_p": "greater than 0 and at most 1",
            "seed": f"an integer from 0 to 2**63-1 ({2**63 - 1})",
            "presence_penalty": "from -2 to 2",
            "frequency_penalty": "from -2 to 2",
        }
        bounds = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
        try:
            checked = handler(value)
        except ValidationError as e:
            if not any(err["type"] in bounds for err in e.errors()):
                raise  # not a number at all: pydantic's own message says so
        else:
            if not (info.field_name == "temperature" and 0 < checked < 0.01):
                return checked
        raise ValueError(f"{info.field_name} must be {ranges[info.field_name]}, got {value!r}")


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``."""

    prompt: str = Field(min_length=1, description="The text to continue, as given.")


class ChatMessage(StrictModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant"]
    content: str
    # The name reaches the chat template verbatim: no markup such as <|assistant|> in it.
    name: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The speaker's name (letters, digits, _ and -; up to 64), for the template.",
    )


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``: the messages go through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)


class FeedbackRequest(StrictModel):
    """``POST /v1/feedback``: a user's rating of a response, and optionally a better answer."""

    response_id: str = Field(
        min_length=1,
        max_length=128,
        description="The response's id; only the API key it was served to may rate it.",
    )
    rating: int = Field(ge=1, le=5, description="1 (bad) to 5 (good); a later one replaces it.")
    correction: str | None = Field(
        None, max_length=4000, description="What it should say (curation keeps up to 2,000)."
    )
    user: str | None = Field(None, max_length=128, description="End user id (pseudonymised).")
    session_id: str | None = Field(None, max_length=128, description="Pseudonymised too.")


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
