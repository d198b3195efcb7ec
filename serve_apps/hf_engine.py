"""The Hugging Face engine: versions loaded as PyTorch models, requests decoded in batches.

Requests that arrive together are gathered by ``@serve.batch`` and decoded as one batch a
token at a time (grouped per version, see :class:`core.generation.decoder.BatchDecoder`); every
request streams its own text as it comes, and a bad request fails alone (see
:class:`core.generation.decoder.RequestBatch`). Portable (any CPU or GPU PyTorch runs on) and what
the fast tests use; :mod:`serve_apps.vllm_engine` is the faster engine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from core.generation.decoder import RequestBatch
from core.generation.loading import LoadedModel, load_version
from core.registry import ModelRegistry
from schemas.serving import GeneratorSettings


class HFEngine:
    """One replica's engine: loads versions, streams ``{"text", "tokens", "finish_reason"}``."""

    def __init__(self, registry: ModelRegistry, settings: GeneratorSettings) -> None:
        import torch

        self.registry = registry
        self.dtype = getattr(torch, settings.dtype)
        # One intra-op thread per CPU this replica was given: replicas share the machine.
        torch.set_num_threads(max(1, math.ceil(settings.num_cpus)))
        self._metrics = _batch_metric()
        self.reconfigure(settings.max_batch_size, settings.batch_wait_timeout_s)

    async def load(self, ref: str) -> LoadedModel:
        return await asyncio.to_thread(load_version, self.registry, ref, self.dtype)

    async def stream(
        self, model: LoadedModel, request: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        # ``@serve.batch`` hands an exception the batch yields for this request over as a
        # value, to this caller only; the batch's next step ends the stream (StopIteration).
        # It is raised then: left unread, that end would log "exception never retrieved".
        error: Exception | None = None
        async for chunk in self._batch((model, request)):
            if isinstance(chunk, Exception):
                error = chunk
            else:
                yield chunk
        if error is not None:
            raise error

    def reconfigure(self, max_batch_size: int | None, batch_wait_timeout_s: float | None) -> None:
        if max_batch_size is not None:
            self._batch.set_max_batch_size(max_batch_size)
        if batch_wait_timeout_s is not None:
            self._batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def check_health(self) -> None:
        """Nothing runs outside the replica's process."""

    def shutdown(self) -> None:
        """Models are freed with the replica."""

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batch(
        self, items: list[tuple[LoadedModel, dict[str, Any]]]
    ) -> AsyncIterator[list[Any]]:
        """One output per request and step: a chunk, its exception, or StopIteration (ended)."""
        batch = RequestBatch(items)
        for ref, idx in batch.groups.items():
            self._metrics.observe(len(idx), tags={"model_version": ref})
        while not batch.done:
            yield await asyncio.to_thread(batch.step)


def _batch_metric() -> Any:
    from ray.util import metrics

    return metrics.Histogram(
        "flywheel_batch_size",
        description="Requests decoded together in one batch, per model version.",
        boundaries=[1, 2, 4, 8, 16, 32, 64],
        tag_keys=("model_version",),
    )
