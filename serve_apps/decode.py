"""The gateway's first step: a raw HTTP request decoded into what the generator gets.

Checks the API key (constant time, against every key), the body's size, JSON and schema;
routes the requested model to a version; renders the prompt (the chat template for chat) and
counts its tokens against the limit. Every problem a client can cause is an :class:`ApiError`
with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from core.generation.loading import fetch
from core.registry import ModelRegistry, RegistryError
from schemas.openai import ChatCompletionRequest, CompletionRequest
from schemas.serving import GatewaySettings, ServeConfig
from serve_apps.routing import Route, Router

Endpoint = Literal["completions", "chat.completions"]
Body = TypeVar("Body", bound=BaseModel)


class ApiError(Exception):
    """An error a client caused: an HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass
class DecodedRequest:
    """A validated request: where it goes and what the generator gets."""

    body: CompletionRequest | ChatCompletionRequest
    endpoint: Endpoint
    response_id: str
    route: Route
    prompt_text: str
    prompt_tokens: int
    payload: dict[str, Any]  # the generator's request: prompt ids and sampling fields


def describe(errors: list[Any]) -> str:
    """Pydantic's errors as one line a client can act on: ``field: message; ...``."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def api_keys(cfg: ServeConfig) -> list[str]:
    """The keys from config and from the environment variable it names."""
    keys = list(cfg.gateway.api_keys)
    keys += [
        k.strip() for k in os.environ.get(cfg.gateway.api_keys_env, "").split(",") if k.strip()
    ]
    if not keys:
        raise ValueError(
            f"no API keys: set {cfg.gateway.api_keys_env}=key1,key2 (or gateway.api_keys)"
        )
    return keys


class RequestDecoder:
    """Decodes requests for one gateway replica; caches the tokenizers it needs."""

    def __init__(self, cfg: ServeConfig, registry: ModelRegistry) -> None:
        self.limits: GatewaySettings = cfg.gateway
        self.registry = registry
        self.router = Router(registry, cfg.gateway.routing_ttl_s)
        self.keys = api_keys(cfg)
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = asyncio.Lock()

    def authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        # Compare against every key, always, in constant time.
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(token.encode(), key.encode())
        if not ok or not token:
            raise ApiError(
                401,
                "missing or invalid API key: send Authorization: Bearer KEY",
                "authentication_error",
            )

    async def body(self, request: Request, model: type[Body]) -> Body:
        """The authorized request's body, read up to the size limit and validated."""
        self.authorize(request)
        raw = await self._read(request)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ApiError(422, describe(e.errors())) from None

    async def _read(self, request: Request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body over {limit} bytes")
        return raw

    async def generation(self, request: Request, endpoint: Endpoint) -> DecodedRequest:
        """A completion or chat completion request, decoded down to the generator's input."""
        chat = endpoint == "chat.completions"
        body = await self.body(request, ChatCompletionRequest if chat else CompletionRequest)
        route = await self._route(body.model, body.user or request.headers.get("x-user-id"))
        tokenizer = await self._tokenizer(route.version)
        text = self._chat_prompt(tokenizer, body, route) if chat else body.prompt
        ids = tokenizer(text, add_special_tokens=not chat).input_ids
        if len(ids) > self.limits.max_prompt_tokens:
            raise ApiError(
                400, f"prompt is {len(ids)} tokens; the limit is {self.limits.max_prompt_tokens}"
            )
        prefix = "chatcmpl-" if chat else "cmpl-"
        return DecodedRequest(
            body,
            endpoint,
            prefix + uuid.uuid4().hex,
            route,
            text,
            len(ids),
            self._payload(body, ids),
        )

    async def _route(self, model: str, user: str | None) -> Route:
        try:
            return await asyncio.to_thread(self.router.resolve, model, user)
        except RegistryError as e:
            raise ApiError(404, f"model {model!r}: {e}", "not_found_error") from None

    def _chat_prompt(self, tokenizer: Any, body: Any, route: Route) -> str:
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(
                400,
                f"model {route.version} has no chat template (a model trained from scratch "
                "on a trained tokenizer); use /v1/completions with a plain prompt",
            )
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _payload(self, body: CompletionRequest | ChatCompletionRequest, ids: list[int]) -> dict:
        g = self.limits
        return {
            "prompt_ids": ids,
            "max_tokens": min(body.max_tokens or g.default_max_tokens, g.max_tokens_ceiling),
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop or [],
            "seed": body.seed,
            "presence_penalty": body.presence_penalty or 0.0,
            "frequency_penalty": body.frequency_penalty or 0.0,
        }

    async def _tokenizer(self, ref: str) -> Any:
        async with self._tokenizer_lock:  # concurrent first requests load it once
            if ref not in self._tokenizers:
                from transformers import AutoTokenizer

                folder = await asyncio.to_thread(fetch, self.registry, ref)
                self._tokenizers[ref] = await asyncio.to_thread(
                    AutoTokenizer.from_pretrained, folder
                )
        return self._tokenizers[ref]
