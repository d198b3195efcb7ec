"""What a generator replica needs from an engine (Hugging Face or vLLM).

Chunks are plain dicts, ``{"text", "tokens", "finish_reason"}``: they cross processes
(replica -> gateway) and stay cheap to serialize.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol


class Engine(Protocol):
    """One replica's engine: loads registry versions and streams their generations."""

    async def load(self, ref: str) -> Any:
        """Make a registry version ready to generate; returns the handle ``stream`` takes."""

    def stream(self, model: Any, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``{"text", "tokens", "finish_reason"}`` chunks; the last has a reason."""

    def reconfigure(
        self, max_batch_size: int | None, batch_wait_timeout_s: float | None
    ) -> None: ...

    def check_health(self) -> None:
        """Raise if the engine can no longer serve (its replica is then replaced)."""

    def shutdown(self) -> None: ...
