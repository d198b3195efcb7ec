"""Quantized versions: int8-dynamic and bf16 variants of a registry version, registered with
their lineage, smaller on disk, loaded by ``load_version`` and answering like their source;
vLLM refuses int8; ``jobs.evaluate`` scores one against its source and the card says so."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.ao.nn.quantized import dynamic as nnqd
from typer.testing import CliRunner

from cli.main import app
from core.generation.greedy import greedy_answers
from core.generation.int8 import RECORD, WEIGHTS, Int8Linear, dequantize, quantize_weight
from core.generation.loading import check_vllm_can_serve, fetch, load_version
from core.generation.quantize import quantize_version, version_bytes
from core.registry import ModelRegistry, RegistryError, card
from tests.tinymodel import make_lora_adapter, make_tiny_model, tiny_production, training_texts


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """tiny:1 a tiny model, tiny:2 a LoRA adapter on it (its outputs differ), tiny:3 another
    tiny model (a wrong answer to compare with)."""
    tmp = tmp_path_factory.mktemp("quantize")
    registry = ModelRegistry(str(tmp / "registry"), actor="tester")
    base = make_tiny_model(tmp / "base")
    registry.register("tiny", base, metrics={"license": "apache-2.0"})
    registry.register(
        "tiny", make_lora_adapter(base, tmp / "adapter"), format="lora", base="tiny:1"
    )
    registry.register("tiny", make_tiny_model(tmp / "other", seed=7))
    return registry


def prompts(reg: ModelRegistry) -> torch.Tensor:
    """Eight 24-token prompts of the tiny model's training text."""
    tok = load_version(reg, "tiny:1", torch.float32).tokenizer
    rows = [tok(text).input_ids[:24] for text in training_texts()[:8]]
    return torch.tensor(rows)


def logits(reg: ModelRegistry, ref: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return load_version(reg, ref, torch.float32).model(ids).logits.float()


def test_int8_weights_are_within_half_a_step_per_channel() -> None:
    w = torch.randn(48, 32) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different size
    w[5] = 0  # an all-zero row must not divide by zero
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    err = (dequantize(q, scale) - w).abs()
    assert torch.all(err <= scale[:, None] / 2 + 1e-7)
    assert torch.all(dequantize(q, scale)[5] == 0)


def test_an_int8_version_serves_exactly_its_stored_int8_weights(reg: ModelRegistry) -> None:
    version = quantize_version(reg, "tiny:1", "int8-dynamic")
    folder = fetch(reg, version.ref)
    record, stored = json.loads((folder / RECORD).read_text()), load_file(folder / WEIGHTS)
    model = load_version(reg, version.ref, torch.float32).model
    assert record["modules"] and "lm_head" not in record["modules"]
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head stays float
    for name in record["modules"]:
        module = model.get_submodule(name)
        assert isinstance(module, Int8Linear) and isinstance(module.inner, nnqd.Linear), name
        weight = module.inner.weight()  # requantized from the dequantized weights at load
        assert torch.equal(weight.int_repr(), stored[f"{name}.weight.int8"]), name
        assert torch.allclose(weight.q_per_channel_scales().float(), stored[f"{name}.weight.scale"])
    assert not any(
        k.endswith(".weight") and k[: -len(".weight")] in record["modules"] for k in stored
    )


def test_an_int8_version_is_smaller_and_answers_like_its_source(reg: ModelRegistry) -> None:
    version = quantize_version(reg, "tiny:1", "int8-dynamic")
    assert version.format == "hf-int8" and version.quantization.method == "int8-dynamic"
    assert version_bytes(version) < 0.65 * version.quantization.source_bytes
    ids = prompts(reg)
    source, quantized = logits(reg, "tiny:1", ids), logits(reg, version.ref, ids)
    other = logits(reg, "tiny:3", ids)  # a different model: what "not close" looks like
    scale = source.abs().max()
    assert (quantized - source).abs().max() < 0.1 * scale
    assert (other - source).abs().max() > 0.5 * scale
    # Where the source is decisive (its top two tokens further apart than the int8 error
    # twice over), the quantized model picks the same next token.
    top2 = source.topk(2, dim=-1).values
    decisive = (top2[..., 0] - top2[..., 1]) > 2 * (quantized - source).abs().max()
    assert decisive.sum() > 20
    assert torch.equal(quantized.argmax(-1)[decisive], source.argmax(-1)[decisive])
    answers = greedy_answers(load_version(reg, version.ref, torch.float32), ids[:2].tolist(), 6)
    assert all(answers)


def test_a_lora_version_is_merged_into_its_base_then_quantized(reg: ModelRegistry) -> None:
    version = quantize_version(reg, "tiny:2", "int8-dynamic")
    assert version.format == "hf-int8" and version.base is None  # a whole model now
    assert version.quantization.source_bytes > sum(f.size for f in reg.get("tiny:2").files)
    ids = prompts(reg)
    merged, base = logits(reg, "tiny:2", ids), logits(reg, "tiny:1", ids)
    quantized = logits(reg, version.ref, ids)
    assert (quantized - merged).abs().max() < 0.5 * (base - merged).abs().max()


def test_a_bf16_version_is_a_plain_hf_folder_of_half_the_size(reg: ModelRegistry) -> None:
    from transformers import AutoModelForCausalLM

    version = quantize_version(reg, "tiny:1", "bf16")
    assert version.format == "hf" and version.quantization.method == "bf16"
    assert version_bytes(version) < 0.55 * version.quantization.source_bytes
    check_vllm_can_serve(version)  # a plain folder: vLLM takes it
    plain = AutoModelForCausalLM.from_pretrained(fetch(reg, version.ref), dtype="auto")
    assert plain.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = prompts(reg)
    source, bf16 = logits(reg, "tiny:1", ids), logits(reg, version.ref, ids)
    assert (bf16 - source).abs().max() < 0.03 * source.abs().max()


def test_quantizing_again_returns_the_version_and_a_quantized_one_is_refused(
    reg: ModelRegistry,
) -> None:
    first = quantize_version(reg, "tiny:1", "bf16")
    assert quantize_version(reg, "tiny:1", "bf16").ref == first.ref
    with pytest.raises(RegistryError, match=r"already quantized.*quantize tiny:1"):
        quantize_version(reg, first.ref, "int8-dynamic")
    with pytest.raises(RegistryError, match="unknown method"):
        quantize_version(reg, "tiny:1", "int4")


def test_lineage_and_card_name_the_source_the_method_and_the_sizes(reg: ModelRegistry) -> None:
    version = quantize_version(reg, "tiny:1", "int8-dynamic")
    assert version.lineage.parent == "tiny:1" and version.metrics == {"license": "apache-2.0"}
    nodes = reg.lineage(version.ref)
    assert nodes[0]["detail"].startswith("hf-int8 (int8-dynamic of tiny:1)")
    assert [n["id"] for n in nodes if n["depth"] == 1] == ["tiny:1"]
    text = card.build_card(reg, version.ref)
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["base_model"] == "tiny:1" and meta["base_model_relation"] == "quantized"
    assert "quantized-int8-dynamic" in meta["tags"] and "library_name" not in meta
    assert "Quantized from `tiny:1` with `int8-dynamic`" in text
    assert f"{version_bytes(version):,} bytes" in text and "## Training procedure" not in text
    assert "not measured" in text


def test_vllm_refuses_an_int8_version_and_names_the_hf_engine(
    reg: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from schemas.serving import GeneratorSettings
    from serve_apps.vllm_engine import VLLMEngine

    version = quantize_version(reg, "tiny:1", "int8-dynamic")
    with pytest.raises(ValueError, match=r"generator\.engine: hf"):
        check_vllm_can_serve(version)
    check_vllm_can_serve(reg.get("tiny:1"))
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # the engine sets it: restored after
    engine = VLLMEngine(reg, GeneratorSettings(engine="vllm", vllm={"bind_cores": False}))
    with pytest.raises(ValueError, match="only the hf engine runs"):
        asyncio.run(engine.load(version.ref))  # refused before any vLLM import


def test_training_from_an_int8_version_is_refused(reg: ModelRegistry) -> None:
    from jobs.train import _base_ref

    version = quantize_version(reg, "tiny:1", "int8-dynamic")
    cfg = SimpleNamespace(model=SimpleNamespace(registry_ref=version.ref))
    with pytest.raises(RegistryError, match="train from its source \\(tiny:1\\)"):
        _base_ref(cfg, reg)


def test_cli_quantizes_and_evaluates_against_the_source(tmp_path: Path) -> None:
    registry, _, heldout = tiny_production(tmp_path, "tester")
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "registry_uri": "replaced-by-the-command",
                "candidate": "replaced-by-the-command",
                "production": "tiny:1",  # a gate recipe: the command compares instead
                "heldout_snapshot_uri": str(tmp_path / "heldout/snapshots" / heldout.snapshot_id),
                "max_heldout_blocks": 4,
                "max_new_tokens": 4,
            }
        )
    )
    args = ["models", "quantize", "tiny:1", "--method", "int8-dynamic", "--evaluate", str(recipe)]
    result = CliRunner().invoke(app, [*args, "--registry", str(tmp_path / "registry")])
    assert result.exit_code == 0, result.output
    assert "registered tiny:2: hf-int8 (int8-dynamic of tiny:1);" in result.output
    (report,) = registry.eval_reports("tiny:2")
    assert report["gate"] is None and "production" not in report
    assert report["baseline"]["version"] == "tiny:1"
    delta = report["delta"]
    assert (
        delta["heldout_loss"]
        == report["candidate"]["heldout_loss"] - report["baseline"]["heldout_loss"]
    )
    assert abs(delta["heldout_loss"]) < 0.05 and 0.5 < delta["top1_agreement"] <= 1
    text = registry.card("tiny:2")
    assert "against the baseline tiny:1" in text and "same next token as the source at" in text
    assert f"{delta['top1_agreement']:.2%}" in text
