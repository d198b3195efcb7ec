"""What the gateway records about each request: Prometheus metrics (exported by Ray as
``ray_flywheel_*``) and a ``ServedOutput`` event per response, sent to the event writer.

A served event is sent off the response path and retried (the writer restarts, or sheds
while storage is down) for ``SEND_FOR_S``. At most ``MAX_PENDING`` are in flight: past that
the gateway is :meth:`GatewayTelemetry.saturated` and answers 503 before generating, rather
than serve responses it could not record."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schemas.events import Feedback, ServedOutput
from serve_apps.decode import DecodedRequest
from serve_apps.predict import Generation

log = logging.getLogger(__name__)
MAX_PENDING = 10_000
SEND_FOR_S = 300.0


class GatewayTelemetry:
    """One gateway replica's metrics and its handle on the event writer actor."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self.metrics = _gateway_metrics()
        self._pending: set[asyncio.Task] = set()

    def served(self, decoded: DecodedRequest, generation: Generation) -> None:
        """A response went out: count it, and log its event off the response path."""
        ttft = generation.ttft_s if decoded.body.stream else None
        event = ServedOutput(
            response_id=decoded.response_id,
            model=decoded.route.model,
            model_version=decoded.route.version,
            route=decoded.route.route,
            split=decoded.route.split,
            endpoint=decoded.endpoint,
            prompt=decoded.prompt_text,
            user_text=decoded.user_text,
            completion=generation.text,
            prompt_tokens=decoded.prompt_tokens,
            completion_tokens=generation.tokens,
            finish_reason=generation.finish_reason,
            latency_ms=generation.latency_s * 1000,
            ttft_ms=ttft * 1000 if ttft is not None else None,
            stream=decoded.body.stream,
            user=decoded.caller.user,
            key_id=decoded.caller.key.id,
            principal=decoded.caller.principal,
        )
        self.count(decoded, "200", generation.latency_s, ttft, generation.tokens)
        # The writer acknowledges once the event is durable; the client does not wait on it.
        task = asyncio.create_task(self._send(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @property
    def pending_events(self) -> int:
        """Served events still on their way to the writer."""
        return len(self._pending)

    def saturated(self) -> bool:
        """Too many served events wait for the writer: take no new requests for now."""
        return self.pending_events >= MAX_PENDING

    async def feedback(self, event: Feedback) -> None:
        """Feedback is acknowledged only once the writer holds it durably; a writer that shed
        it, or could not make it durable, kept none of it (the client may retry)."""
        await self.writer.append.remote([event.model_dump(mode="json")])
        self.metrics["feedback"].inc(tags={"rating": str(event.rating)})

    def count(
        self,
        decoded: DecodedRequest,
        status: str,
        latency: float = 0.0,
        ttft: float | None = None,
        tokens: int = 0,
    ) -> None:
        tags = {"model_version": decoded.route.version, "endpoint": decoded.endpoint}
        self.metrics["requests"].inc(tags={**tags, "status": status})
        if status != "200":
            self.metrics["errors"].inc(tags={**tags, "status": status})
            return
        self.metrics["latency"].observe(latency, tags=tags)
        if tokens:
            self.metrics["tokens"].inc(tokens, tags=tags)
        if ttft is not None:
            self.metrics["ttft"].observe(ttft, tags=tags)

    async def _send(self, event: ServedOutput, for_s: float = SEND_FOR_S) -> None:
        deadline = asyncio.get_running_loop().time() + for_s
        delay = 0.2
        while True:
            try:
                await self.writer.append.remote([event.model_dump(mode="json")])
                return
            except Exception as e:
                if asyncio.get_running_loop().time() + delay > deadline:
                    log.error("could not log event %s in %.0f s: %s", event.event_id, for_s, e)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


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
