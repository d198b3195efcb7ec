"""The two generator engines on the same registry versions, called directly (no Serve):
vLLM's greedy output agrees with the Hugging Face engine's, a LoRA version served as an
adapter on its base engine changes it, sampling is seeded, stop strings cut the text, and
unloading the last version stops the engine."""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

from core.generation.decoder import BatchDecoder
from core.generation.loading import load_version
from core.generation.sampling import SamplingParams
from core.registry import ModelRegistry
from schemas.serving import GeneratorSettings
from tests.tinymodel import make_lora_adapter, make_tiny_model

pytestmark = pytest.mark.slow
# Strong enough to change greedy answers of the tiny model, which repeats itself.
PENALTIES = {"presence_penalty": 1.5, "frequency_penalty": 1.0}
PROMPTS = ["The Heron H2", "What is the warranty?", "Reset the thermostat", "battery life"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> ModelRegistry:
    root = tmp_path_factory.mktemp("engines")
    base = make_tiny_model(root / "base")
    registry = ModelRegistry(str(root / "registry"), actor="test")
    registry.register("tiny", base)
    registry.register(
        "tiny", make_lora_adapter(base, root / "adapter"), format="lora", base="tiny:1"
    )
    return registry


@pytest.fixture
def clean_env():
    """The vLLM engine sets its thread binding in this process's environment: undo it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def hf_greedy(registry: ModelRegistry, ref: str, max_tokens: int, **penalties: float) -> list[str]:
    loaded = load_version(registry, ref, torch.float32)
    params = SamplingParams(max_tokens, temperature=0, **penalties)
    out = []
    for prompt in PROMPTS:
        ids = loaded.tokenizer(prompt).input_ids
        decoder = BatchDecoder(loaded, [ids], [params])
        text = ""
        while not decoder.done:
            text += decoder.step()[0].text
        out.append(text)
    return out


async def collect(engine, model, request: dict) -> tuple[str, int, str]:
    chunks = [c async for c in engine.stream(model, request)]
    assert all(c["finish_reason"] is None for c in chunks[:-1])
    return (
        "".join(c["text"] for c in chunks),
        sum(c["tokens"] for c in chunks),
        chunks[-1]["finish_reason"],
    )


def test_vllm_agrees_with_hf_and_serves_lora_on_its_base(registry, clean_env) -> None:
    pytest.importorskip("vllm", reason="the vllm extra is not installed (make installs it)")
    from serve_apps.vllm_engine import VLLMEngine

    settings = GeneratorSettings(engine="vllm", num_cpus=1, vllm={"enforce_eager": True})
    tokenizer = load_version(registry, "tiny:1", torch.float32).tokenizer
    expected = {ref: hf_greedy(registry, ref, 12) for ref in ("tiny:1", "tiny:2")}
    expected["penalized"] = hf_greedy(registry, "tiny:1", 12, **PENALTIES)

    async def run() -> dict:
        engine = VLLMEngine(registry, settings)
        assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == str(engine.cores[0])
        base, lora = await engine.load("tiny:1"), await engine.load("tiny:2")
        assert list(engine._engines) == ["tiny:1"]  # the adapter runs on its base's engine
        got: dict = {}
        for ref, model in (("tiny:1", base), ("tiny:2", lora)):
            got[ref] = [
                await collect(
                    engine,
                    model,
                    {"prompt_ids": tokenizer(p).input_ids, "max_tokens": 12, "temperature": 0},
                )
                for p in PROMPTS
            ]
        got["penalized"] = [
            await collect(
                engine,
                base,
                {
                    "prompt_ids": tokenizer(p).input_ids,
                    "max_tokens": 12,
                    "temperature": 0,
                    **PENALTIES,
                },
            )
            for p in PROMPTS
        ]
        sampled = {"prompt_ids": tokenizer("The").input_ids, "max_tokens": 12, "temperature": 1}
        got["seeded"] = [await collect(engine, base, {**sampled, "seed": 7}) for _ in range(2)]
        first = got["tiny:1"][0][0]
        stop = first[3:6] if len(first) >= 6 else first[-1]
        got["stopped"] = await collect(
            engine,
            base,
            {
                "prompt_ids": tokenizer(PROMPTS[0]).input_ids,
                "max_tokens": 12,
                "temperature": 0,
                "stop": [stop],
            },
        )
        got["stop_string"] = stop
        await lora.__del__()  # what Serve calls when it evicts a version
        got["after_lora_unload"] = list(engine._engines)
        await base.__del__()
        got["after_base_unload"] = list(engine._engines)
        engine.shutdown()
        return got

    got = asyncio.run(run())
    for ref in ("tiny:1", "tiny:2", "penalized"):
        for want, (text, tokens, finish) in zip(expected[ref], got[ref], strict=True):
            # Exactly the same tokens. Texts compare without U+FFFD: mid-character byte
            # tokens decode to it in HF, while vLLM holds them back until they complete.
            assert text.replace("\ufffd", "") == want.replace("\ufffd", "")
            assert tokens == 12 and finish == "length"
    assert got["tiny:1"] != got["tiny:2"]  # the adapter changes the answers
    assert got["penalized"] != got["tiny:1"]  # both engines apply OpenAI's penalties alike
    assert got["seeded"][0] == got["seeded"][1]
    text, _, finish = got["stopped"]
    assert finish == "stop" and got["stop_string"] not in text
    assert got["tiny:1"][0][0].startswith(text)
    assert got["after_lora_unload"] == ["tiny:1"] and got["after_base_unload"] == []
