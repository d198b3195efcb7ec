"""The gateway's first step: a raw HTTP request decoded into what the generator gets.

Checks the API key (constant time, against every key) and the caller's rate limits, the
body's size, JSON and schema; pseudonymises the caller's user id; routes the requested model
to a version; renders the prompt (the chat template for chat), refuses text that carries the
model's special tokens (they would be parsed as control tokens, here and in training) and
counts its tokens against the limit. Every problem a client can cause is an :class:`ApiError`
with a message that says what to do.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from core.data.text import clean_text
from core.generation.loading import fetch
from core.registry import ModelRegistry, RegistryError
from schemas.openai import ChatCompletionRequest, CompletionRequest
from schemas.serving import ApiKey, GatewaySettings, ServeConfig
from serve_apps.principals import LRU, KeyRing, Pseudonyms, RateLimiter, ResponseIds, principal
from serve_apps.routing import Route, Router

Endpoint = Literal["completions", "chat.completions"]
Body = TypeVar("Body", bound=BaseModel)


class ApiError(Exception):
    """An error a client caused: an HTTP status and a message saying what to do."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers

    @classmethod
    def unavailable(cls, message: str, retry_after_s: float = 5) -> ApiError:
        """A 503 whose ``Retry-After`` says when to come back (nothing was kept)."""
        return cls(503, message, "server_error", {"Retry-After": str(math.ceil(retry_after_s))})


@dataclass(frozen=True)
class Caller:
    """Who sent a request: its API key, and its user and session as pseudonyms."""

    key: ApiKey
    user: str | None = None
    session: str | None = None

    @property
    def principal(self) -> str:
        return principal(self.key, self.user)


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
    caller: Caller
    user_text: str  # what the client wrote: message contents or the prompt


def describe(errors: list[Any]) -> str:
    """Pydantic's errors as one line a client can act on: ``field: message; ...``."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


class RequestDecoder:
    """Decodes requests for one gateway replica; caches the tokenizers it needs."""

    def __init__(self, cfg: ServeConfig, registry: ModelRegistry) -> None:
        self.limits: GatewaySettings = cfg.gateway
        self.registry = registry
        self.router = Router(registry, cfg.gateway.routing_ttl_s, cfg.gateway.max_cached_models)
        self.keyring = KeyRing(cfg.gateway)
        secret = self.keyring.secret()
        self.pseudonyms = Pseudonyms(secret)
        self.response_ids = ResponseIds(secret)
        self.limiter = RateLimiter(cfg.gateway.rate_limits)
        self._tokenizers: LRU[str, Any] = LRU(16)
        self._tokenizer_lock = asyncio.Lock()

    def authorize(self, request: Request, feedback: bool = False) -> ApiKey:
        """The request's API key, once its rate limit allows (feedback has its own)."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        key = self.keyring.find(token)
        if key is None:
            raise ApiError(
                401,
                "missing or invalid API key: send Authorization: Bearer KEY",
                "authentication_error",
            )
        limits = self.limits.rate_limits
        if feedback:
            rate = key.feedback_per_minute or limits.feedback_per_minute
            self._limit(f"feedback:{key.id}", rate, "feedback of this API key")
        else:
            rate = key.requests_per_minute or limits.key_per_minute
            self._limit(f"key:{key.id}", rate, "this API key")
        return key

    def caller(self, key: ApiKey, user: str | None, session: str | None = None) -> Caller:
        """The caller, its ids pseudonymised, once its user's rate limit allows."""
        if user is not None and len(user) > 128:
            raise ApiError(400, "user id over 128 characters")
        caller = Caller(
            key,
            self.pseudonyms("user", user, key.id),
            self.pseudonyms("session", session, key.id),
        )
        if caller.user:
            rate = self.limits.rate_limits.user_per_minute
            self._limit(f"user:{key.id}/{caller.user}", rate, "this user")
        return caller

    def _limit(self, bucket: str, per_minute: float, who: str) -> None:
        wait = self.limiter.take(bucket, per_minute)
        if wait is not None:
            raise ApiError(
                429,
                f"rate limit of {who} reached ({per_minute:g} requests a minute): "
                f"retry in {wait:.1f} s",
                "rate_limit_error",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )

    def sizes(self) -> dict[str, int]:
        """How much each cache holds: bounded whatever clients send."""
        return {
            "routes": len(self.router),
            "rate_buckets": len(self.limiter),
            "tokenizers": len(self._tokenizers),
        }

    async def body(
        self, request: Request, model: type[Body], feedback: bool = False
    ) -> tuple[ApiKey, Body]:
        """The authorized request's key and body, read up to the size limit and validated."""
        key = self.authorize(request, feedback)
        raw = await self._read(request)
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        try:
            return key, model.model_validate(data)
        except ValidationError as e:
            # 400 with the field and its allowed range, as OpenAI answers (FastAPI says 422).
            raise ApiError(400, describe(e.errors())) from None

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
        key, body = await self.body(request, ChatCompletionRequest if chat else CompletionRequest)
        caller = self.caller(key, body.user or request.headers.get("x-user-id"))
        route = await self._route(body.model, caller.user)
        tokenizer = await self._tokenizer(route.version)
        # What the client wrote (names go into the template too): never a special token.
        written = [m.content for m in body.messages] if chat else [body.prompt]
        names = [m.name for m in body.messages if m.name] if chat else []
        refuse_special_tokens(tokenizer, "\n".join(written + names))
        user_text = "\n".join(written)
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
            self.response_ids.issue(prefix, key.id),
            route,
            text,
            len(ids),
            self._payload(body, ids),
            caller,
            user_text,
        )

    async def _route(self, model: str, user: str | None) -> Route:
        try:
            return await asyncio.to_thread(self.router.resolve, model, user)
        except RegistryError as e:
            raise ApiError(404, f"model {model!r}: {e}", "not_found_error") from None
        except Exception as e:  # storage down, nothing cached to fall back on
            raise ApiError.unavailable(
                f"the model registry is unreachable ({type(e).__name__}): retry shortly"
            ) from None

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
            tokenizer = self._tokenizers.get(ref)
            if tokenizer is None:
                from transformers import AutoTokenizer

                try:
                    folder = await asyncio.to_thread(fetch, self.registry, ref)
                    tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, folder)
                except Exception as e:
                    raise ApiError.unavailable(
                        f"could not load {ref}'s tokenizer ({type(e).__name__}): retry shortly"
                    ) from None
                self._tokenizers.put(ref, tokenizer)
        return tokenizer


def special_tokens(tokenizer: Any) -> set[str]:
    """Every string ``tokenizer`` parses as a control token."""
    found = set(getattr(tokenizer, "all_special_tokens", []))
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    found |= {t.content for t in decoder.values() if getattr(t, "special", False)}
    return {t for t in found if t}


def refuse_special_tokens(tokenizer: Any, text: str) -> None:
    """A 400 if ``text`` holds one of the model's special tokens, as sent or once normalised
    as ingest normalises (NFKC, zero-width characters dropped): parsed, it would act as a
    role marker or end of text, when served and when trained on."""
    views = {text, clean_text(text)}
    for token in sorted(special_tokens(tokenizer)):
        if any(token in view for view in views):
            raise ApiError(
                400,
                f"the text holds the model's special token {token!r}: special tokens cannot "
                "be sent as text (remove it or break it up)",
            )
