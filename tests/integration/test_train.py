"""Training end to end on a shared local Ray: DeepSpeed ZeRO-2/3 and LoRA with two workers,
fault recovery, registration with lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import faults
from core.registry import ModelRegistry
from demo.corpus import generate_corpus
from jobs.ingest import run_ingest
from jobs.train import run_train
from schemas.ingest import IngestConfig
from schemas.train import TrainConfig

pytestmark = pytest.mark.slow

ARCH = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("data")
    generate_corpus(root / "corpus", target_bytes=200_000, seed=5)
    cfg = IngestConfig.model_validate(
        {
            "name": "t",
            "input": {"uri": str(root / "corpus" / "raw")},
            "output": {"uri": str(root / "dataset")},
            "tokenizer": {"kind": "train", "vocab_size": 512},
            "pack": {"block_size": 64},
            "execution": {"executor": "local"},
        }
    )
    m = run_ingest(cfg)
    return str(root / "dataset" / "snapshots" / m.snapshot_id)


def recipe(tmp: Path, snapshot: str, store=None, **overrides) -> TrainConfig:
    base = store.uri if store else (lambda *p: str(tmp.joinpath(*p)))
    cfg = {
        "run_name": "run",
        "mode": "pretrain",
        "storage": store.settings.model_dump() if store else {},
        "model": {"architecture": ARCH},
        "data": {"snapshot_uri": snapshot, "micro_batch_size": 4},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 12},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        "checkpoint": {"storage_uri": base("ckpt"), "every_steps": 4},
        "registry": {"uri": base("registry"), "model_name": "tiny"},
        "metrics": {"log_every_steps": 4, "peak_flops_per_worker": 1e10},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            cfg[section] = {**cfg[section], field: value}
        else:
            cfg[section] = value
    return TrainConfig.model_validate(cfg)


def generate(folder: Path, base: Path | None = None) -> str:
    tok = AutoTokenizer.from_pretrained(folder)
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    ids = tok("The Heron H2", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0][ids.shape[1] :])


def test_zero2_fault_recovery_and_lineage(ray_session, snapshot, tmp_path) -> None:
    marker = tmp_path / "fault"
    cfg = recipe(tmp_path, snapshot, run_name="faulty")
    faults_env = f"train.step6=raise:{marker}"
    import os

    os.environ[faults.ENV] = faults_env
    try:
        faulty = run_train(cfg)
    finally:
        del os.environ[faults.ENV]
    assert marker.exists(), "the worker raised at step 6"
    # Under its own name: a resumed run can end bit-identical to a clean one, and the
    # registry would then return the faulty run's version (same content) for the clean one.
    clean = run_train(
        recipe(tmp_path, snapshot, run_name="clean", registry__model_name="tiny-clean")
    )
    curve_f = [p["loss"] for p in faulty.metrics["curve"]]
    curve_c = [p["loss"] for p in clean.metrics["curve"]]
    assert len(curve_c) == len(curve_f) == 12
    assert faulty.metrics["resumed_at"] == [4] and clean.metrics["resumed_at"] == []
    assert abs(curve_f[-1] - curve_c[-1]) < 0.05 * curve_c[-1]
    assert curve_c[-1] < curve_c[0]

    reg = ModelRegistry(cfg.registry.uri)
    assert [v.version for v in reg.versions("tiny")] == [1]
    assert [v.version for v in reg.versions("tiny-clean")] == [1]
    folder = reg.download("tiny:1", tmp_path / "v1")
    assert isinstance(generate(folder), str)
    kinds = [n["kind"] for n in reg.lineage("tiny:1")]
    assert kinds[:2] == ["version", "snapshot"] and "raw" in kinds
    v = reg.get("tiny:1")
    assert v.lineage.training_config_hash and v.metrics["tokens_per_s"] > 0
    assert 0 < v.metrics["mfu"] < 1


def test_zero3_on_s3_consolidates(ray_session, snapshot, tmp_path, moto_server) -> None:
    from tests.conftest import Store, make_bucket

    store = Store("s3", f"s3://{make_bucket(moto_server)}/x", moto_server.settings)
    cfg = recipe(tmp_path, snapshot, store, deepspeed={"zero_stage": 3}, run_name="z3")
    version = run_train(cfg)
    reg = ModelRegistry(cfg.registry.uri, cfg.storage)
    folder = reg.download(version.ref, tmp_path / "z3")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == version.metrics["params"]
    assert isinstance(generate(folder), str)


def test_lora_adapter_loads_on_its_base(ray_session, snapshot, tmp_path) -> None:
    base = run_train(recipe(tmp_path, snapshot, run_name="base"))
    cfg = recipe(
        tmp_path,
        snapshot,
        run_name="lora",
        mode="lora",
        model={"registry_ref": base.ref},
        lora={"r": 4, "alpha": 8, "dropout": 0.0},
        optim={"lr": 1e-2, "warmup_steps": 0, "max_steps": 6},
        # Rehearsal as the loop does it (here the snapshot replays itself: the mechanism).
        data={
            "snapshot_uri": snapshot,
            "micro_batch_size": 4,
            "replay_snapshot_uri": snapshot,
            "replay_blocks": 8,
            "shuffle_buffer_blocks": 32,
        },
    )
    adapter = run_train(cfg)
    assert (adapter.format, adapter.base) == ("lora", base.ref)
    assert [s.uri for s in adapter.lineage.dataset_snapshots] == [snapshot, snapshot]
    assert adapter.metrics["trainable_params"] < adapter.metrics["params"] / 5
    reg = ModelRegistry(cfg.registry.uri)
    base_dir = reg.download(base.ref, tmp_path / "b")
    adapter_dir = reg.download(adapter.ref, tmp_path / "a")
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    assert not (adapter_dir / "model.safetensors").exists()
    with torch.no_grad():
        assert isinstance(generate(adapter_dir, base=base_dir), str)
