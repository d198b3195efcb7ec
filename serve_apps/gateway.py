"""The OpenAI-compatible gateway: FastAPI ingress in front of the generator deployment.

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream: true`` as server-sent events in OpenAI's chunk format), ``GET /v1/models``,
``POST /v1/feedback`` and ``GET /healthz``. Everything but ``/healthz`` needs an API key.

A request goes through three steps, each in its own module: :mod:`serve_apps.decode`
(validation, routing, the prompt), :mod:`serve_apps.predict` (generation through the
generator) and :mod:`serve_apps.encode` (OpenAI's bodies). :mod:`serve_apps.telemetry` turns
every response into metrics and a ``ServedOutput`` event, every feedback into a ``Feedback``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from actors.event_writer import WriterFull, start_event_writer
from core.registry import ModelRegistry
from core.wal import WalError
from schemas.events import Feedback
from schemas.openai import FeedbackAccepted, FeedbackRequest, ModelCard, ModelList
from schemas.serving import ServeConfig
from serve_apps import encode
from serve_apps.decode import ApiError, DecodedRequest, Endpoint, RequestDecoder, describe
from serve_apps.predict import Generation
from serve_apps.telemetry import GatewayTelemetry

app = FastAPI(title="Flywheel gateway", version="1")


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return encode.error_response(exc.message, exc.kind, exc.status, exc.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    # 400, as OpenAI and vLLM's OpenAI server answer a body that fails validation.
    return encode.error_response(describe(exc.errors()), "invalid_request_error", 400)


class Gateway:
    """The ingress deployment's class (Serve decorators applied in ``serve_apps.app``)."""

    def __init__(self, generator: Any, config: dict[str, Any]) -> None:
        self.cfg = ServeConfig.model_validate(config)
        self.generator = generator
        self.registry = ModelRegistry(self.cfg.registry_uri, self.cfg.storage)
        self.decoder = RequestDecoder(self.cfg, self.registry)
        writer = start_event_writer(
            self.cfg.event_log_uri,
            self.cfg.storage,
            wal_dir=self.cfg.event_wal_dir,
            acks=self.cfg.event_acks,
        )
        self.telemetry = GatewayTelemetry(writer)

    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    def cache_sizes(self) -> dict[str, int]:
        """Entries in this replica's caches, its pending events and its resident memory
        (through a Serve handle, not HTTP)."""
        import resource

        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pending = self.telemetry.pending_events
        return self.decoder.sizes() | {"pending_events": pending, "max_rss_kib": rss_kib}

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self.decoder.authorize(request)
        cards = []
        for name in await asyncio.to_thread(self.registry.models):
            cards.append(ModelCard(id=name))
            aliases = await asyncio.to_thread(self.registry.aliases, name)
            cards += [
                ModelCard(id=f"{name}@{a}", version=f"{name}:{v}")
                for a, v in sorted(aliases.items())
            ]
        # A plain name has no version: leave the key out rather than send null.
        return encode.json_response(ModelList(data=cards), exclude_none=True)

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Any:
        return await self._respond(request, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Any:
        return await self._respond(request, "chat.completions")

    @app.post("/v1/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """A rating of a response this API key was served, within the feedback window.

        The response id itself proves it (see ``serve_apps.principals.ResponseIds``), so an
        id the gateway never issued, or issued to another key, is a 404 and nothing is kept.
        A later rating of the same response replaces the earlier (the consumer keeps the last).
        """
        key, body = await self.decoder.body(request, FeedbackRequest, feedback=True)
        refused = self.decoder.response_ids.check(
            body.response_id, key.id, self.cfg.gateway.feedback_window_s
        )
        if refused:
            raise ApiError(404, f"response {body.response_id!r}: {refused}", "not_found_error")
        user = body.user or request.headers.get("x-user-id")
        caller = self.decoder.caller(key, user, body.session_id)
        event = Feedback(
            response_id=body.response_id,
            rating=body.rating,
            correction=body.correction,
            user=caller.user,
            session_id=caller.session,
            key_id=key.id,
            principal=caller.principal,
        )
        try:
            await self.telemetry.feedback(event)
        except (WriterFull, WalError) as e:
            # Not acknowledged: a retry makes no second rating (one per response counts).
            raise ApiError.unavailable(
                f"feedback not recorded, retry: {e}", WriterFull.retry_after_s
            ) from None
        return encode.json_response(FeedbackAccepted(id=event.event_id))

    async def _respond(self, request: Request, endpoint: Endpoint) -> Any:
        decoded = await self.decoder.generation(request, endpoint)
        if self.telemetry.saturated():
            self.telemetry.count(decoded, "503")
            raise ApiError.unavailable(
                "the event log is not taking events: retry shortly", WriterFull.retry_after_s
            )
        generation = Generation(self.generator, decoded, self.cfg.gateway.request_timeout_s)
        if decoded.body.stream:
            return StreamingResponse(
                self._events(decoded, generation), media_type="text/event-stream"
            )
        try:
            await generation.run()
        except ApiError as e:
            self.telemetry.count(decoded, str(e.status))
            raise
        self.telemetry.served(decoded, generation)
        return encode.json_response(encode.full_body(decoded, generation))

    async def _events(self, decoded: DecodedRequest, generation: Generation) -> AsyncIterator[str]:
        chunks = encode.ChunkEncoder(decoded)
        for opening in chunks.opening():
            yield opening
        try:
            async for piece in generation.stream():
                yield chunks.text(piece)
        except TimeoutError:  # the status line is gone: report in-band, as OpenAI does
            self.telemetry.count(decoded, "504")
            yield encode.stream_error("generation timed out", 504, "timeout_error")
            return
        except Exception as e:
            self.telemetry.count(decoded, "503")
            yield encode.stream_error(f"generation failed, retry: {type(e).__name__}")
            return
        yield chunks.finish(generation.finish_reason)
        options = decoded.body.stream_options
        if options is not None and options.include_usage:
            yield chunks.usage(decoded.prompt_tokens, generation.tokens)
        yield encode.SSE_DONE
        self.telemetry.served(decoded, generation)
