"""The generator deployment: model replicas that load registry versions and generate.

Versions are *multiplexed*: a request carries the exact version (``name:3``) as its
multiplexed model id, Serve routes it to a replica that has it loaded when it can, and a
replica keeps up to ``max_models_per_replica`` versions (least recently used out). So
production and canary live side by side, and moving an alias needs no restart. Among the
replicas with the version, ``generator.routing`` picks by load or by prompt prefix
(:mod:`serve_apps.prefix_router`, so vLLM's prefix cache hits with several replicas).

The model runs through an engine (:class:`core.generation.engine.Engine`), chosen by
``generator.engine``: ``hf`` (:mod:`serve_apps.hf_engine`, PyTorch models decoded in
batches) or ``vllm`` (:mod:`serve_apps.vllm_engine`, continuous batching). The gateway,
events, canary split and limits do not know which.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from core.generation.engine import Engine
from core.registry import ModelRegistry, RegistryError
from schemas.serving import GeneratorSettings
from schemas.storage import StorageSettings

log = logging.getLogger(__name__)


def make_engine(registry: ModelRegistry, settings: GeneratorSettings) -> Engine:
    if settings.engine == "vllm":
        from serve_apps.vllm_engine import VLLMEngine

        return VLLMEngine(registry, settings)
    from serve_apps.hf_engine import HFEngine

    return HFEngine(registry, settings)


class Generator:
    """Serve deployment class (the decorator is applied in :func:`generator_deployment`)."""

    async def __init__(self, registry_uri: str, storage: dict, settings: dict) -> None:
        # Async: Serve awaits it, and the replica takes no traffic until preloading is done.
        self.settings = GeneratorSettings.model_validate(settings)
        self.registry = ModelRegistry(registry_uri, StorageSettings.model_validate(storage))
        self.engine = make_engine(self.registry, self.settings)
        self._load_lock = asyncio.Lock()
        for ref in self.settings.preload:
            await self._preload(ref)

    async def _preload(self, ref: str) -> None:
        try:
            version = await asyncio.to_thread(self.registry.get, ref)
        except RegistryError as e:  # nothing registered yet: start anyway, load on demand
            log.warning("not preloading %s: %s", ref, e)
            return
        await self.get_model(version.ref)  # the exact version: what requests are routed by

    async def _load(self, model_id: str) -> Any:
        async with self._load_lock:  # one load at a time: they are memory- and CPU-heavy
            return await self.engine.load(model_id)

    async def get_model(self, model_id: str) -> Any:
        """Replaced by a ``@serve.multiplexed`` method in :func:`generator_deployment`."""
        return await self._load(model_id)

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream ``{"text", "tokens", "finish_reason"}`` chunks for one request.

        ``request``: ``prompt_ids`` and sampling fields; the version is the multiplexed id.
        """
        model = await self.get_model(serve.get_multiplexed_model_id())
        chunks = self.engine.stream(model, request)
        async for chunk in coalesce(chunks, self.settings.stream_interval_ms / 1000):
            yield chunk

    def check_health(self) -> None:
        """Serve's health probe: fails when the engine has died."""
        self.engine.check_health()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Batch settings can change without a restart (Serve ``user_config``)."""
        size, wait = user_config.get("max_batch_size"), user_config.get("batch_wait_timeout_s")
        self.engine.reconfigure(
            None if size is None else int(size), None if wait is None else float(wait)
        )

    def __del__(self) -> None:
        # Serve calls this when it stops the replica: engine processes go with it.
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()


async def coalesce(
    chunks: AsyncIterator[dict[str, Any]], interval_s: float
) -> AsyncIterator[dict[str, Any]]:
    """Merge the engine's per-token chunks into one every ``interval_s`` (the first at once).

    Each chunk crosses two processes (replica -> gateway -> proxy); one per token costs the
    CPU the engine decodes with, as Ray Serve LLM's stream batching interval also avoids.
    """
    text: list[str] = []
    tokens, last = 0, None
    loop = asyncio.get_running_loop()
    async for chunk in chunks:
        text.append(chunk["text"])
        tokens += chunk["tokens"]
        now = loop.time()
        if chunk["finish_reason"] or last is None or now - last >= interval_s:
            yield {"text": "".join(text), "tokens": tokens, "finish_reason": chunk["finish_reason"]}
            text, tokens, last = [], 0, now
    if text:  # an engine that ended without a reason: pass on what it said
        yield {"text": "".join(text), "tokens": tokens, "finish_reason": None}


def router_options(settings: GeneratorSettings) -> dict[str, Any]:
    """``serve.deployment`` options for the request router: by prompt prefix where that can
    hit vLLM's prefix cache (``generator.routing``), else none (Serve's power of two)."""
    if not settings.routes_by_prefix:
        return {}
    from ray.serve.config import RequestRouterConfig

    from serve_apps.prefix_router import PrefixAffinityRouter  # imports ray.llm: only if used

    p = settings.prefix_affinity
    extra = p.max_extra_requests
    if extra is None:  # the load past which Serve would add a replica
        extra = settings.autoscaling.target_ongoing_requests
    kwargs = {
        "match_rate_threshold": p.match_rate_threshold,
        "max_extra_requests": extra,
        "history_tokens": p.history_tokens,
    }
    config = RequestRouterConfig(
        request_router_class=PrefixAffinityRouter, request_router_kwargs=kwargs
    )
    return {"request_router_config": config}


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
        async def get_model(self, model_id: str) -> Any:
            return await self._load(model_id)

    cls = MultiplexedGenerator
    return serve.deployment(
        cls,
        name="Generator",
        ray_actor_options={
            "num_cpus": settings.num_cpus,
            "num_gpus": settings.num_gpus,
            # OpenMP threads that spin at barriers hold their cores, and the gateway, the proxy
            # and vLLM's engine-core process wait for a time slice at every step (vLLM, 2
            # cores, 16 in flight: 22 -> 41 tokens/s). Sleeping threads leave them room.
            "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
        },
        autoscaling_config=autoscaling,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        health_check_period_s=5,
        graceful_shutdown_timeout_s=5,
        **router_options(settings),
    )
