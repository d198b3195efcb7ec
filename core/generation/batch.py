"""Offline generation for many prompts at once: the engines a batch job runs in each actor.

Both take token-id prompts and sampling settings and return one :class:`Generated` per
prompt, in order. ``hf`` decodes with :class:`core.generation.decoder.BatchDecoder` (the
serving HF engine's decoder); ``vllm`` is vLLM's offline ``LLM`` (continuous batching,
paged KV cache, prefix caching), the engine Ray Data LLM runs too.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import xxhash

from core.generation.decoder import BatchDecoder, prepare
from core.generation.loading import LoadedModel
from core.generation.sampling import SamplingParams


@dataclass(frozen=True)
class Generated:
    """One prompt's completion; ``error`` set where the engine refused this prompt."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = ""
    error: str = ""


class BatchEngine(Protocol):
    def generate(
        self, prompts: list[list[int]], params: list[SamplingParams]
    ) -> list[Generated]: ...


def row_seed(seed: int | None, row_id: str) -> int | None:
    """A seed per row, stable across runs (a resumed job samples a row as the first run
    would have) and different between rows (one shared seed would repeat their noise)."""
    if seed is None:
        return None
    return (seed + xxhash.xxh32_intdigest(row_id.encode())) % 2**31


def encode(tokenizer: Any, prompt: str, messages_json: str) -> list[int]:
    """A row's prompt ids: a plain prompt as it is, a chat through the model's template."""
    if prompt:
        return list(tokenizer(prompt).input_ids)
    text = tokenizer.apply_chat_template(
        json.loads(messages_json), add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(text, add_special_tokens=False).input_ids)


class HFBatchEngine:
    """Hugging Face decoding, the batch padded once (rows sorted by length: less padding)."""

    def __init__(self, loaded: LoadedModel, max_batch: int = 32) -> None:
        self.loaded = loaded
        self.max_batch = max_batch

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generated]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generated] = [Generated()] * len(prompts)
        for k in range(0, len(order), self.max_batch):
            chunk = order[k : k + self.max_batch]
            results = self._decode([prompts[i] for i in chunk], [params[i] for i in chunk])
            for i, result in zip(chunk, results, strict=True):
                out[i] = result
        return out

    def _decode(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generated]:
        for p in prompts:  # out-of-vocabulary ids would fail the whole batch's forward pass
            prepare(self.loaded, {"prompt_ids": p, "max_tokens": 1})
        decoder = BatchDecoder(self.loaded, prompts, params)
        texts, tokens = [""] * len(prompts), [0] * len(prompts)
        reasons, errors = [""] * len(prompts), [""] * len(prompts)
        while not decoder.done:
            for j, step in enumerate(decoder.step()):
                texts[j] += step.text
                tokens[j] += step.tokens
                reasons[j] = step.finish_reason or reasons[j]
                if step.error is not None:
                    errors[j] = f"{type(step.error).__name__}: {step.error}"
        return [Generated(*row) for row in zip(texts, tokens, reasons, errors, strict=True)]


class VLLMBatchEngine:
    """vLLM's offline engine on one model folder, with an optional LoRA adapter."""

    def __init__(self, folder: str, settings: Any, lora_folder: str | None = None) -> None:
        from vllm import LLM

        self.lora = None
        if lora_folder is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, lora_folder)
        self.llm = LLM(
            model=folder,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            enable_prefix_caching=settings.enable_prefix_caching,
            enable_lora=lora_folder is not None,
            max_lora_rank=64,
            distributed_executor_backend="uni",
            disable_log_stats=True,
        )

    def generate(self, prompts: list[list[int]], params: list[SamplingParams]) -> list[Generated]:
        from vllm import SamplingParams as VLLMParams
        from vllm.inputs import TokensPrompt

        vparams = [
            VLLMParams(
                max_tokens=p.max_tokens,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed,
                stop=list(p.stop),
            )
            for p in params
        ]
        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        outs = self.llm.generate(inputs, vparams, lora_request=self.lora, use_tqdm=False)
        return [_vllm_generated(o.outputs[0]) for o in outs]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()


def _vllm_generated(choice: Any) -> Generated:
    # vLLM counts the EOS token that ended a sequence; the HF engine (and serving) do not.
    eos_ended = choice.finish_reason == "stop" and choice.stop_reason is None
    count = len(choice.token_ids) - (1 if eos_ended and choice.token_ids else 0)
    return Generated(choice.text, count, choice.finish_reason or "")
