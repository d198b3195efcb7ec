"""The Hugging Face engine: versions loaded as PyTorch models, requests decoded in batches.

Requests that arrive together are gathered by ``@serve.batch`` and decoded as one batch a
token at a time (grouped per version, see :class:`core.generation.decoder.BatchDecoder`); every
request streams its own text as it comes. Portable (any CPU or GPU PyTorch runs on) and what
the fast tests use; :mod:`serve_apps.vllm_engine` is the faster engine.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from core.generation.decoder import BatchDecoder
from core.generation.loading import LoadedModel, load_version
from core.generation.sampling import SamplingParams
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
        async for chunk in self._batch((model, request)):
            yield chunk

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
        groups: dict[str, list[int]] = {}
        for i, (loaded, _) in enumerate(items):
            groups.setdefault(loaded.ref, []).append(i)
        decoders = {
            ref: BatchDecoder(
                items[idx[0]][0],
                [items[i][1]["prompt_ids"] for i in idx],
                [SamplingParams.from_request(items[i][1]) for i in idx],
            )
            for ref, idx in groups.items()
        }
        for ref, idx in groups.items():
            self._metrics.observe(len(idx), tags={"model_version": ref})
        finished: set[int] = set()
        while len(finished) < len(items):
            outputs: list[Any] = [StopIteration] * len(items)
            for ref, decoder in decoders.items():
                if decoder.done:
                    continue
                step = await asyncio.to_thread(decoder.step)
                for i, out in zip(groups[ref], step, strict=True):
                    if i in finished:
                        continue
                    outputs[i] = {
                        "text": out.text,
                        "tokens": out.tokens,
                        "finish_reason": out.finish_reason,
                    }
                    if out.finish_reason:
                        finished.add(i)
            yield outputs


def _batch_metric() -> Any:
    from ray.util import metrics

    return metrics.Histogram(
        "flywheel_batch_size",
        description="Requests decoded together in one batch, per model version.",
        boundaries=[1, 2, 4, 8, 16, 32, 64],
        tag_keys=("model_version",),
    )
