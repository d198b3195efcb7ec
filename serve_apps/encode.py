"""The gateway's third step: OpenAI's response bodies, whole or as server-sent events.

Builds the :mod:`schemas.openai` models from a decoded request and its generation; the
gateway only sends them.
"""

from __future__ import annotations

import time

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from schemas.openai import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    ErrorBody,
    ErrorDetail,
    Usage,
)
from serve_apps.decode import DecodedRequest
from serve_apps.predict import Generation

SSE_DONE = "data: [DONE]\n\n"


def json_response(body: BaseModel, status: int = 200, exclude_none: bool = False) -> JSONResponse:
    return JSONResponse(body.model_dump(mode="json", exclude_none=exclude_none), status)


def error_response(
    message: str, kind: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error body with its HTTP status (and headers: Retry-After), as OpenAI sends it."""
    response = json_response(
        ErrorBody(error=ErrorDetail(message=message, type=kind, code=status)), status
    )
    response.headers.update(headers or {})
    return response


def sse(event: BaseModel, exclude_none: bool = False) -> str:
    """One server-sent event carrying ``event`` as JSON."""
    return f"data: {event.model_dump_json(exclude_none=exclude_none)}\n\n"


def stream_error(message: str, code: int = 503, kind: str = "server_error") -> str:
    """An error once the status line (200) is gone: in-band, as OpenAI does, with the code
    the status would have had (503: retry, 504: timed out)."""
    return sse(ErrorBody(error=ErrorDetail(message=message, type=kind, code=code)), True)


def full_body(decoded: DecodedRequest, generation: Generation) -> Completion | ChatCompletion:
    """The whole response of a request that was not streamed."""
    usage = Usage.of(decoded.prompt_tokens, generation.tokens)
    common = {
        "id": decoded.response_id,
        "created": int(time.time()),
        "model": decoded.body.model,
        "system_fingerprint": decoded.route.version,
        "usage": usage,
    }
    finish = generation.finish_reason
    if decoded.endpoint == "chat.completions":
        message = AssistantMessage(content=generation.text)
        return ChatCompletion(**common, choices=[ChatChoice(message=message, finish_reason=finish)])
    return Completion(
        **common, choices=[CompletionChoice(text=generation.text, finish_reason=finish)]
    )


class ChunkEncoder:
    """The chunks of one streamed response: all share its id, creation time and model."""

    def __init__(self, decoded: DecodedRequest) -> None:
        self.chat = decoded.endpoint == "chat.completions"
        self.common = {
            "id": decoded.response_id,
            "created": int(time.time()),
            "model": decoded.body.model,
        }

    def opening(self) -> list[str]:
        """What goes before any text: a chat stream names the role first."""
        return [self._chunk(ChatDelta(role="assistant"), None)] if self.chat else []

    def text(self, piece: str) -> str:
        return self._chunk(ChatDelta(content=piece), None)

    def finish(self, reason: str) -> str:
        return self._chunk(ChatDelta(), reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        usage = Usage.of(prompt_tokens, completion_tokens)
        model = ChatCompletionChunk if self.chat else Completion
        return sse(model(**self.common, choices=[], usage=usage))

    def _chunk(self, delta: ChatDelta, finish: str | None) -> str:
        if self.chat:
            choice = ChatChunkChoice(delta=delta, finish_reason=finish)
            return sse(ChatCompletionChunk(**self.common, choices=[choice]))
        choice = CompletionChoice(text=delta.content or "", finish_reason=finish)
        return sse(Completion(**self.common, choices=[choice]))
