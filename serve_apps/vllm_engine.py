"""The vLLM engine: continuous batching (requests join and leave the running batch at every
step), paged KV cache, vLLM's kernels; the engine Ray Serve LLM runs on.

A replica keeps one ``AsyncLLM`` per *base* model. A full-model version is served by its own
engine; a LoRA version is an adapter on its base's engine (vLLM's multi-LoRA), so production
and a LoRA canary share one copy of the weights. An engine stops when the last version that
uses it is unloaded (Serve's multiplexing evicts least-recently-used versions).

On CPU the replica claims whole cores for itself (a lock file per core, held while the
process lives) and binds vLLM's OpenMP threads to them, so two single-core replicas on a
two-core node compute on different cores instead of both on core 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import math
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.generation.loading import check_vllm_can_serve, fetch
from core.generation.sampling import SamplingParams
from core.registry import ModelRegistry
from schemas.serving import GeneratorSettings

log = logging.getLogger(__name__)


@dataclass
class _Engine:
    llm: Any  # vllm AsyncLLM
    eos: frozenset[int]
    users: set[str] = field(default_factory=set)


@dataclass
class VLLMModel:
    """A loaded version: the engine that serves it and, for an adapter, its LoRA request."""

    ref: str
    base: str
    lora: Any | None  # vllm LoRARequest


class VLLMEngine:
    """One replica's vLLM engines; streams ``{"text", "tokens", "finish_reason"}`` chunks."""

    def __init__(self, registry: ModelRegistry, settings: GeneratorSettings) -> None:
        self.registry = registry
        self.settings = settings
        self._engines: dict[str, _Engine] = {}
        self._lock = asyncio.Lock()
        self._lora_ids = itertools.count(1)
        self._core_locks: list[IO[str]] = []
        self.cores: list[int] = []
        if settings.num_gpus == 0:
            self.cores = self._configure_cpu()

    # -- placement -----------------------------------------------------------------------------

    def _configure_cpu(self) -> list[int]:
        """Size the KV cache; claim ``ceil(num_cpus)`` cores and bind vLLM's threads to them.

        The engine processes vLLM starts inherit this environment. Without enough free cores
        (more replicas than cores) it binds to the first ones, shared, and says so.
        """
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.vllm.kv_cache_space_gib)
        want = max(1, math.ceil(self.settings.num_cpus))
        if not self.settings.vllm.bind_cores:
            return []
        self._core_locks, cores = claim_cores(want)
        if len(cores) < want:
            log.warning("only %d free core(s) for %d wanted; sharing cores", len(cores), want)
            cores = sorted(os.sched_getaffinity(0))[:want]
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
        os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
        os.environ["OMP_NUM_THREADS"] = str(len(cores))
        return cores

    # -- versions ------------------------------------------------------------------------------

    async def load(self, ref: str) -> VLLMModel:
        version = self.registry.get(ref)
        check_vllm_can_serve(version)
        lora = None
        base = version.ref
        if version.format == "lora":
            if not self.settings.vllm.enable_lora:
                raise ValueError(f"{ref} is a LoRA adapter and vllm.enable_lora is off")
            from vllm.lora.request import LoRARequest

            base = self.registry.get(version.base).ref
            folder = await asyncio.to_thread(fetch, self.registry, version.ref)
            lora = LoRARequest(version.ref, next(self._lora_ids), str(folder))
        async with self._lock:  # engines start one at a time: each takes every core it has
            engine = self._engines.get(base) or await self._start(base)
            self._engines[base] = engine
            engine.users.add(version.ref)
        model = VLLMModel(version.ref, base, lora)
        if lora is not None:
            try:
                await engine.llm.add_lora(lora)  # load now, not on the first request
            except Exception:
                await self.unload(model)
                raise
        # Serve calls ``__del__`` of a model it evicts; set on the instance so that garbage
        # collection (which looks at the class) never runs it.
        model.__del__ = lambda: self.unload(model)  # type: ignore[method-assign]
        return model

    async def _start(self, ref: str) -> _Engine:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        folder = await asyncio.to_thread(fetch, self.registry, ref)
        v = self.settings.vllm
        if v.enable_lora and not v.enforce_eager and self.settings.num_gpus == 0:
            # vLLM 0.32's CPU platform turns compilation off whenever LoRA is enabled.
            log.warning(
                "%s: vLLM on CPU runs eager with LoRA enabled (measured ~2x slower decoding); "
                "set vllm.enable_lora: false where only full models are served",
                ref,
            )
        args = AsyncEngineArgs(
            model=str(folder),
            served_model_name=ref,
            dtype=self.settings.dtype,
            enforce_eager=v.enforce_eager,
            max_model_len=v.max_model_len,
            max_num_seqs=v.max_num_seqs,
            enable_lora=v.enable_lora,
            max_lora_rank=v.max_lora_rank,
            max_loras=v.max_loras,
            enable_prefix_caching=v.enable_prefix_caching,
            gpu_memory_utilization=v.gpu_memory_utilization,
            distributed_executor_backend="uni",  # one worker: no tensor parallelism here
            disable_log_stats=True,
        )
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        return _Engine(llm, await asyncio.to_thread(_eos_ids, folder))

    async def unload(self, model: VLLMModel) -> None:
        async with self._lock:
            engine = self._engines.get(model.base)
            if engine is None:
                return
            engine.users.discard(model.ref)
            if model.lora is not None:
                with contextlib.suppress(Exception):  # a dead engine has nothing to remove
                    await engine.llm.remove_lora(model.lora.lora_int_id)
            if not engine.users:
                del self._engines[model.base]
                engine.llm.shutdown()

    # -- generating ----------------------------------------------------------------------------

    async def stream(
        self, model: VLLMModel, request: dict[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        from vllm.inputs import TokensPrompt

        engine = self._engines[model.base]
        async for out in engine.llm.generate(
            TokensPrompt(prompt_token_ids=list(request["prompt_ids"])),
            vllm_sampling(request),
            request_id=uuid.uuid4().hex,
            lora_request=model.lora,
        ):
            choice = out.outputs[0]
            if choice.finish_reason == "abort":
                raise RuntimeError("the engine aborted the request")
            yield {
                "text": choice.text,
                # The EOS token ends the text but is not part of it (as in the HF engine).
                "tokens": sum(1 for t in choice.token_ids if t not in engine.eos),
                "finish_reason": choice.finish_reason if out.finished else None,
            }

    def reconfigure(self, max_batch_size: int | None, batch_wait_timeout_s: float | None) -> None:
        """Batching is continuous: ``vllm.max_num_seqs`` bounds it (fixed at engine start)."""

    def check_health(self) -> None:
        for ref, engine in self._engines.items():
            if engine.llm.errored:
                raise RuntimeError(f"vLLM engine for {ref} is dead")

    def shutdown(self) -> None:
        for engine in self._engines.values():
            with contextlib.suppress(Exception):
                engine.llm.shutdown()
        self._engines.clear()
        for handle in self._core_locks:
            handle.close()


def vllm_sampling(request: dict[str, Any]) -> Any:
    """vLLM sampling parameters for a generator request; text comes back as deltas."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.sampling_params import RequestOutputKind

    p = SamplingParams.from_request(request)
    return VLLMSamplingParams(
        max_tokens=p.max_tokens,
        temperature=p.temperature,
        top_p=p.top_p,
        stop=list(p.stop),
        seed=p.seed,
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        output_kind=RequestOutputKind.DELTA,
    )


def _eos_ids(folder: Path) -> frozenset[int]:
    """The ids that end generation: the generation config's and the model config's."""
    from transformers import AutoConfig, GenerationConfig

    found: list[Any] = [AutoConfig.from_pretrained(folder).eos_token_id]
    with contextlib.suppress(OSError):  # a model may ship no generation_config.json
        found.append(GenerationConfig.from_pretrained(folder).eos_token_id)
    flat = [i for f in found for i in (f if isinstance(f, list) else [f])]
    return frozenset(i for i in flat if i is not None)


def claim_cores(n: int, folder: Path | None = None) -> tuple[list[IO[str]], list[int]]:
    """Claim up to ``n`` of this process's cores that no other live process on the node holds.

    A claim is an exclusive ``flock`` on ``<tmp>/flywheel-cores/<core>``: the kernel drops it
    when the process dies, so a crashed replica never leaks its cores. Returns the open lock
    files (keep them open) and the cores.
    """
    folder = folder or Path(tempfile.gettempdir()) / "flywheel-cores"
    folder.mkdir(parents=True, exist_ok=True)
    handles, cores = [], []
    for core in sorted(os.sched_getaffinity(0)):
        if len(cores) == n:
            break
        handle = open(folder / str(core), "a")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        handles.append(handle)
        cores.append(core)
    return handles, cores
