"""The gateway's second step: generation, through the generator deployment.

A :class:`Generation` streams the generator's chunks for one decoded request under the
request timeout and keeps the totals (text, tokens, finish reason, time to first token) that
the response and its event are encoded from. It knows nothing of OpenAI's bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_apps.decode import ApiError, DecodedRequest


class Generation:
    """One request's generation: its text as it comes, then its totals."""

    def __init__(self, generator: Any, decoded: DecodedRequest, timeout_s: float) -> None:
        self.generator = generator
        self.decoded = decoded
        self.timeout_s = timeout_s
        self.pieces: list[str] = []
        self.tokens = 0
        self.finish_reason = "length"
        self.ttft_s: float | None = None
        self._start = time.perf_counter()
        self._end: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def latency_s(self) -> float:
        return (self._end or time.perf_counter()) - self._start

    async def stream(self) -> AsyncIterator[str]:
        """The new text of each chunk that has some; raises what the generator raised."""
        self._start = time.perf_counter()
        handle = self.generator.options(
            multiplexed_model_id=self.decoded.route.version, stream=True
        )
        async with asyncio.timeout(self.timeout_s):
            async for chunk in handle.generate.remote(self.decoded.payload):
                if self.ttft_s is None and chunk["tokens"]:
                    self.ttft_s = time.perf_counter() - self._start
                self.pieces.append(chunk["text"])
                self.tokens += chunk["tokens"]
                self.finish_reason = chunk["finish_reason"] or self.finish_reason
                if chunk["text"]:
                    yield chunk["text"]
        self._end = time.perf_counter()

    async def run(self) -> None:
        """Generate to the end: a timeout is a 504, any other failure a 503 to retry."""
        try:
            async for _ in self.stream():
                pass
        except TimeoutError:
            raise ApiError(504, "generation timed out", "timeout_error") from None
        except Exception as e:
            raise ApiError(
                503, f"generation failed, retry: {type(e).__name__}", "server_error"
            ) from None
