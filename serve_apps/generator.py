"""The generator deployment: model replicas that load registry versions and generate.

Versions are *multiplexed*: a request carries the exact version (``name:3``) as its
multiplexed model id, Serve routes it to a replica that has it loaded when it can, and a
replica keeps up to ``max_models_per_replica`` versions (least recently used out). So
production and canary live side by side, and moving an alias needs no restart.

Requests are batched with ``@serve.batch``: the batch handler decodes all of them together,
a token at a time (grouped per version), and streams each request its own text as it comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from core.registry import ModelRegistry
from schemas.serving import GeneratorSettings
from schemas.storage import StorageSettings
from serve_apps.engine import BatchDecoder, LoadedModel, SamplingParams, load_version


class Generator:
    """Serve deployment class (the decorator is applied in :func:`generator_deployment`)."""

    def __init__(self, registry_uri: str, storage: dict, settings: dict) -> None:
        import torch

        self.settings = GeneratorSettings.model_validate(settings)
        self.registry = ModelRegistry(registry_uri, StorageSettings.model_validate(storage))
        self.dtype = getattr(torch, self.settings.dtype)
        # One intra-op thread per CPU this replica was given: replicas share the machine.
        torch.set_num_threads(max(1, int(self.settings.num_cpus)))
        self._load_lock = asyncio.Lock()
        self._metrics = _generator_metrics()
        self._generate_batch.set_max_batch_size(self.settings.max_batch_size)
        self._generate_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)

    async def _load(self, model_id: str) -> LoadedModel:
        async with self._load_lock:  # one load at a time: they are memory- and CPU-heavy
            return await asyncio.to_thread(load_version, self.registry, model_id, self.dtype)

    async def get_model(self, model_id: str) -> LoadedModel:
        """Replaced by a ``@serve.multiplexed`` method in :func:`generator_deployment`."""
        return await self._load(model_id)

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``{"text", "tokens", "finish_reason"}`` chunks for one request.

        ``request``: ``prompt_ids`` and sampling fields; the version is the multiplexed id.
        """
        model_id = serve.get_multiplexed_model_id()
        loaded = await self.get_model(model_id)
        async for chunk in self._generate_batch((loaded, request)):
            yield chunk

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _generate_batch(
        self, items: list[tuple[LoadedModel, dict[str, Any]]]
    ) -> AsyncIterator[list[Any]]:
        groups: dict[str, list[int]] = {}
        for i, (loaded, _) in enumerate(items):
            groups.setdefault(loaded.ref, []).append(i)
        decoders = {
            ref: BatchDecoder(
                items[idx[0]][0],
                [items[i][1]["prompt_ids"] for i in idx],
                [_params(items[i][1]) for i in idx],
            )
            for ref, idx in groups.items()
        }
        for ref, idx in groups.items():
            self._metrics["batch"].observe(len(idx), tags={"model_version": ref})
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

    def check_health(self) -> None:
        """Serve's health probe: the replica answers as long as its event loop runs."""

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings can change without a restart (Serve ``user_config``)."""
        if "max_batch_size" in user_config:
            self._generate_batch.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self._generate_batch.set_batch_wait_timeout_s(
                float(user_config["batch_wait_timeout_s"])
            )


def _params(request: dict[str, Any]) -> SamplingParams:
    return SamplingParams(
        max_tokens=int(request["max_tokens"]),
        temperature=float(request.get("temperature", 1.0)),
        top_p=float(request.get("top_p", 1.0)),
        stop=tuple(request.get("stop") or ()),
        seed=request.get("seed"),
    )


def _generator_metrics() -> dict[str, Any]:
    from ray.util import metrics

    return {
        "batch": metrics.Histogram(
            "flywheel_batch_size",
            description="Requests decoded together in one batch, per model version.",
            boundaries=[1, 2, 4, 8, 16, 32, 64],
            tag_keys=("model_version",),
        ),
    }


def generator_deployment(settings: GeneratorSettings) -> Any:
    """The Serve deployment for ``settings`` (resources, autoscaling, multiplexing)."""
    a = settings.autoscaling
    autoscaling = {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "target_ongoing_requests": a.target_ongoing_requests,
        "upscale_delay_s": a.upscale_delay_s,
        "downscale_delay_s": a.downscale_delay_s,
    }
    if a.initial_replicas is not None:
        autoscaling["initial_replicas"] = a.initial_replicas

    class MultiplexedGenerator(Generator):
        # Serve recognises a multiplexed method by its name on the instance: it must be
        # defined here, under the name it is called by.
        @serve.multiplexed(max_num_models_per_replica=settings.max_models_per_replica)
        async def get_model(self, model_id: str) -> LoadedModel:
            return await self._load(model_id)

    cls = MultiplexedGenerator
    return serve.deployment(
        cls,
        name="Generator",
        ray_actor_options={"num_cpus": settings.num_cpus, "num_gpus": settings.num_gpus},
        autoscaling_config=autoscaling,
        max_ongoing_requests=settings.max_ongoing_requests,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=5,
    )
