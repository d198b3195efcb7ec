"""The OpenAI-compatible gateway: FastAPI ingress in front of the generator deployment.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events in OpenAI's chunk format), ``GET /v1/models``,
``POST /v1/feedback`` and ``GET /healthz``. Everything but ``/healthz`` needs an API key
(``Authorization: Bearer KEY``, compared in constant time). Each request is decoded
(validated, routed to a version, prompt rendered and counted), generated, then encoded into
OpenAI's body; every response becomes a ``ServedOutput`` event and every accepted feedback a
``Feedback`` event, sent to the event writer actor.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from core.registry import ModelRegistry, RegistryError
from schemas.events import Feedback, ServedOutput
from schemas.serving import (
    ChatCompletionRequest,
    CompletionRequest,
    FeedbackRequest,
    ServeConfig,
)
from serve_apps.routing import Route, Router

app = FastAPI(title="Flywheel gateway", version="1")


class ApiError(Exception):
    """An error a client caused: an HTTP status and a message saying what to do."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def error_body(message: str, kind: str, status: int) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": status}}, status_code=status
    )


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_body(exc.message, exc.kind, exc.status)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return error_body(_describe(exc.errors()), "invalid_request_error", 422)


def _describe(errors: list[Any]) -> str:
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


@dataclass
class Prepared:
    """A decoded request: where it goes and what the generator gets."""

    route: Route
    prompt_text: str
    payload: dict[str, Any]
    prompt_tokens: int


class Gateway:
    """The ingress deployment's class (Serve decorators applied in ``serve_apps.app``)."""

    def __init__(self, generator: Any, config: dict[str, Any]) -> None:
        from actors.event_writer import start_event_writer

        self.cfg = ServeConfig.model_validate(config)
        self.generator = generator
        self.registry = ModelRegistry(self.cfg.registry_uri, self.cfg.storage)
        self.router = Router(self.registry, self.cfg.gateway.routing_ttl_s)
        self.keys = _api_keys(self.cfg)
        self.writer = start_event_writer(
            self.cfg.event_log_uri, self.cfg.storage, wal_dir=self.cfg.event_wal_dir
        )
        self.tokenizers: dict[str, Any] = {}
        self._tokenizer_lock = asyncio.Lock()
        self.metrics = _gateway_metrics()
        self._pending: set[asyncio.Task] = set()

    # -- endpoints -----------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        data = []
        for name in await asyncio.to_thread(self.registry.models):
            data.append({"id": name, "object": "model", "owned_by": "flywheel"})
            aliases = await asyncio.to_thread(self.registry.aliases, name)
            data += [
                {
                    "id": f"{name}@{a}",
                    "object": "model",
                    "owned_by": "flywheel",
                    "version": f"{name}:{v}",
                }
                for a, v in sorted(aliases.items())
            ]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        body = await self._body(request, CompletionRequest)
        prepared = await self._prepare(body, request, body.prompt, chat=False)
        return await self._respond(body, prepared, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        body = await self._body(request, ChatCompletionRequest)
        prepared = await self._prepare(body, request, body.messages, chat=True)
        return await self._respond(body, prepared, "chat.completions")

    @app.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict[str, Any]:
        body = await self._body(request, FeedbackRequest)
        event = Feedback(
            response_id=body.response_id,
            rating=body.rating,
            correction=body.correction,
            user=body.user,
            session_id=body.session_id,
        )
        # Feedback is acknowledged only once the writer holds it durably.
        await self.writer.append.remote([event.model_dump(mode="json")])
        self.metrics["feedback"].inc(tags={"rating": str(body.rating)})
        return {"object": "feedback", "id": event.event_id, "status": "accepted"}

    # -- decoding ------------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
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

    async def _body(self, request: Request, model: type) -> Any:
        self._authorize(request)
        limit = self.cfg.gateway.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body over {limit} bytes")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(400, f"body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ApiError(400, "body must be a JSON object")
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise ApiError(422, _describe(e.errors())) from None

    async def _prepare(self, body: Any, request: Request, content: Any, chat: bool) -> Prepared:
        user = body.user or request.headers.get("x-user-id")
        try:
            route = await asyncio.to_thread(self.router.resolve, body.model, user)
        except RegistryError as e:
            raise ApiError(404, f"model {body.model!r}: {e}", "not_found_error") from None
        tokenizer = await self._tokenizer(route.version)
        if chat:
            if not getattr(tokenizer, "chat_template", None):
                raise ApiError(
                    400,
                    f"model {route.version} has no chat template (a model trained from scratch "
                    "on a trained tokenizer); use /v1/completions with a plain prompt",
                )
            messages = [m.model_dump(exclude_none=True) for m in content]
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        else:
            text = content
        ids = tokenizer(text, add_special_tokens=not chat).input_ids
        limit = self.cfg.gateway.max_prompt_tokens
        if len(ids) > limit:
            raise ApiError(400, f"prompt is {len(ids)} tokens; the limit is {limit}")
        g = self.cfg.gateway
        max_tokens = min(body.max_tokens or g.default_max_tokens, g.max_tokens_ceiling)
        payload = {
            "prompt_ids": ids,
            "max_tokens": max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "stop": body.stop or [],
            "seed": body.seed,
        }
        return Prepared(route, text, payload, len(ids))

    async def _tokenizer(self, ref: str) -> Any:
        async with self._tokenizer_lock:  # concurrent first requests load it once
            if ref not in self.tokenizers:
                from transformers import AutoTokenizer

                from serve_apps.engine import fetch

                folder = await asyncio.to_thread(fetch, self.registry, ref)
                self.tokenizers[ref] = await asyncio.to_thread(
                    AutoTokenizer.from_pretrained, folder
                )
        return self.tokenizers[ref]

    # -- generating and encoding ---------------------------------------------------------------

    def _stream(self, prepared: Prepared) -> AsyncIterator[dict[str, Any]]:
        handle = self.generator.options(multiplexed_model_id=prepared.route.version, stream=True)
        return handle.generate.remote(prepared.payload)

    async def _respond(self, body: Any, prepared: Prepared, endpoint: str) -> Any:
        rid = ("chatcmpl-" if endpoint == "chat.completions" else "cmpl-") + uuid.uuid4().hex
        if body.stream:
            return StreamingResponse(
                self._sse(body, prepared, endpoint, rid), media_type="text/event-stream"
            )
        start = time.perf_counter()
        text, tokens, finish = [], 0, "length"
        try:
            async with asyncio.timeout(self.cfg.gateway.request_timeout_s):
                async for chunk in self._stream(prepared):
                    text.append(chunk["text"])
                    tokens += chunk["tokens"]
                    finish = chunk["finish_reason"] or finish
        except TimeoutError:
            self._count(prepared, endpoint, "504")
            raise ApiError(504, "generation timed out", "timeout_error") from None
        except Exception as e:
            self._count(prepared, endpoint, "503")
            raise ApiError(
                503, f"generation failed, retry: {type(e).__name__}", "server_error"
            ) from None
        completion = "".join(text)
        latency = time.perf_counter() - start
        self._record(body, prepared, endpoint, rid, completion, tokens, finish, latency, None)
        return _full_body(endpoint, rid, body.model, prepared, completion, tokens, finish)

    async def _sse(
        self, body: Any, prepared: Prepared, endpoint: str, rid: str
    ) -> AsyncIterator[str]:
        start = time.perf_counter()
        ttft, text, tokens, finish = None, [], 0, "length"
        created = int(time.time())
        if endpoint == "chat.completions":
            yield _sse(_chunk(endpoint, rid, created, body.model, {"role": "assistant"}, None))
        try:
            async with asyncio.timeout(self.cfg.gateway.request_timeout_s):
                async for chunk in self._stream(prepared):
                    if ttft is None and chunk["tokens"]:
                        ttft = time.perf_counter() - start
                    text.append(chunk["text"])
                    tokens += chunk["tokens"]
                    finish = chunk["finish_reason"] or finish
                    if chunk["text"]:
                        delta = {"content": chunk["text"]}
                        yield _sse(_chunk(endpoint, rid, created, body.model, delta, None))
        except Exception as e:  # the status line is gone: report in-band, as OpenAI does
            self._count(prepared, endpoint, "503")
            yield _sse(
                {
                    "error": {
                        "message": f"generation failed: {type(e).__name__}",
                        "type": "server_error",
                    }
                }
            )
            return
        yield _sse(_chunk(endpoint, rid, created, body.model, {}, finish))
        if (body.stream_options or {}).get("include_usage"):
            usage = _usage(prepared.prompt_tokens, tokens)
            yield _sse(
                {
                    **_chunk(endpoint, rid, created, body.model, {}, None),
                    "choices": [],
                    "usage": usage,
                }
            )
        yield "data: [DONE]\n\n"
        latency = time.perf_counter() - start
        self._record(body, prepared, endpoint, rid, "".join(text), tokens, finish, latency, ttft)

    def _record(
        self,
        body: Any,
        prepared: Prepared,
        endpoint: str,
        rid: str,
        completion: str,
        tokens: int,
        finish: str,
        latency: float,
        ttft: float | None,
    ) -> None:
        event = ServedOutput(
            response_id=rid,
            model=prepared.route.model,
            model_version=prepared.route.version,
            route=prepared.route.route,
            endpoint=endpoint,
            prompt=prepared.prompt_text,
            completion=completion,
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=tokens,
            finish_reason=finish,
            latency_ms=latency * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            stream=body.stream,
            user=body.user,
        )
        self._count(prepared, endpoint, "200", latency, ttft, tokens)
        # Sent off the response path; the writer acknowledges once it is durable.
        task = asyncio.create_task(self._send(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, event: ServedOutput, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                await self.writer.append.remote([event.model_dump(mode="json")])
                return
            except Exception:
                await asyncio.sleep(0.2 * 2**attempt)
        print(f"[gateway] could not log event {event.event_id}", flush=True)

    def _count(
        self,
        prepared: Prepared,
        endpoint: str,
        status: str,
        latency: float = 0.0,
        ttft: float | None = None,
        tokens: int = 0,
    ) -> None:
        tags = {"model_version": prepared.route.version, "endpoint": endpoint}
        self.metrics["requests"].inc(tags={**tags, "status": status})
        if status != "200":
            self.metrics["errors"].inc(tags={**tags, "status": status})
            return
        self.metrics["latency"].observe(latency, tags=tags)
        if tokens:
            self.metrics["tokens"].inc(tokens, tags=tags)
        if ttft is not None:
            self.metrics["ttft"].observe(ttft, tags=tags)


def _api_keys(cfg: ServeConfig) -> list[str]:
    keys = list(cfg.gateway.api_keys)
    keys += [
        k.strip() for k in os.environ.get(cfg.gateway.api_keys_env, "").split(",") if k.strip()
    ]
    if not keys:
        raise ValueError(
            f"no API keys: set {cfg.gateway.api_keys_env}=key1,key2 (or gateway.api_keys)"
        )
    return keys


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunk(
    endpoint: str, rid: str, created: int, model: str, delta: dict, finish: str | None
) -> dict[str, Any]:
    if endpoint == "chat.completions":
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
    choice = {
        "index": 0,
        "text": delta.get("content", ""),
        "finish_reason": finish,
        "logprobs": None,
    }
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _full_body(
    endpoint: str,
    rid: str,
    model: str,
    prepared: Prepared,
    completion: str,
    tokens: int,
    finish: str,
) -> dict[str, Any]:
    usage = _usage(prepared.prompt_tokens, tokens)
    created = int(time.time())
    if endpoint == "chat.completions":
        message = {"role": "assistant", "content": completion}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": prepared.route.version,
            "choices": [choice],
            "usage": usage,
        }
    choice = {"index": 0, "text": completion, "finish_reason": finish, "logprobs": None}
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": prepared.route.version,
        "choices": [choice],
        "usage": usage,
    }


def _gateway_metrics() -> dict[str, Any]:
    from ray.util import metrics

    keys = ("model_version", "endpoint")
    return {
        "requests": metrics.Counter(
            "flywheel_requests_total",
            description="Requests by version, endpoint and status.",
            tag_keys=(*keys, "status"),
        ),
        "errors": metrics.Counter(
            "flywheel_request_errors_total",
            description="Failed requests by version, endpoint and status.",
            tag_keys=(*keys, "status"),
        ),
        "latency": metrics.Histogram(
            "flywheel_request_latency_seconds",
            description="End-to-end request latency.",
            boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64],
            tag_keys=keys,
        ),
        "ttft": metrics.Histogram(
            "flywheel_time_to_first_token_seconds",
            description="Time to first token, streamed requests.",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8],
            tag_keys=keys,
        ),
        "tokens": metrics.Counter(
            "flywheel_generated_tokens_total", description="Tokens generated.", tag_keys=keys
        ),
        "feedback": metrics.Counter(
            "flywheel_feedback_total",
            description="Feedback accepted, by rating.",
            tag_keys=("rating",),
        ),
    }
