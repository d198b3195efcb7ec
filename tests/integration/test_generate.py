"""Batch generation (jobs.generate) end to end on real Ray Data, a tiny model, local disk and
the S3 server: every prompt answered once, bad rows kept with their reason, and a run killed
mid-way resumed without a row twice."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from core import storage
from core.registry import ModelRegistry
from jobs.generate import GenerateError, run_generate
from jobs.runtime import Progress
from schemas.generate import GenerateConfig
from schemas.storage import StorageSettings
from tests.conftest import Store
from tests.tinymodel import make_lora_adapter, make_tiny_model

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("genreg")
    registry = ModelRegistry(str(root / "registry"), actor="test")
    base = make_tiny_model(root / "base")
    registry.register("tiny", base)
    registry.set_alias("tiny", "production", 1)
    adapter = make_lora_adapter(base, root / "adapter")
    registry.register("tiny", adapter, format="lora", base="tiny:1")
    return str(root / "registry")


def write_prompts(store, n_jsonl: int = 30) -> set[str]:
    """A JSONL file (a blank last line, one broken line), its gzipped sibling, a Parquet file
    of chats; returns the ids every good and bad row should come back under."""
    settings = store.settings
    lines = [json.dumps({"prompt": f"The hub number {i} pairs with"}) for i in range(n_jsonl)]
    lines.insert(3, '{"prompt": "broken')
    plain = ("\n".join(lines) + "\n\n").encode()
    storage.write_bytes(storage.resolve(store.uri("prompts", "a.jsonl"), settings), plain)
    zipped = [json.dumps({"prompt": f"Error E{i} means"}) for i in range(10)]
    path = storage.resolve(store.uri("prompts", "b.jsonl.gz"), settings)
    storage.write_bytes(path, gzip.compress("\n".join(zipped).encode()))
    chats = [[{"role": "user", "content": f"What is greenhouse {i}?"}] for i in range(8)]
    table = pa.table({"messages": chats})
    storage.write_parquet(storage.resolve(store.uri("prompts", "c.parquet"), settings), table)
    return (
        {f"a.jsonl@{o}" for o in offsets(lines)}
        | {f"b.jsonl.gz@{o}" for o in offsets(zipped)}  # offsets in the decompressed bytes
        | {f"c.parquet#{i}" for i in range(8)}
    )


def offsets(lines: list[str]) -> list[int]:
    out, pos = [], 0
    for line in lines:
        out.append(pos)
        pos += len(line.encode()) + 1
    return out


def recipe(store, registry_uri: str, out: str, **engine) -> GenerateConfig:
    return GenerateConfig.model_validate(
        {
            "registry_uri": registry_uri,
            "model": "tiny@production",
            "storage": store.settings.model_dump(),
            "input": {"uri": store.uri("prompts")},
            "output_uri": store.uri(out),
            "sampling": {"max_tokens": 12, "temperature": 0.8, "seed": 7},
            "engine": {"kind": "hf", "num_cpus": 0.5, "batch_size": 8, **engine},
        }
    )


def quiet() -> Progress:
    return Progress("t", stream=io.StringIO())


def read_output(store, out: str) -> pa.Table:
    loc = storage.resolve(store.uri(out), store.settings)
    parts = storage.list_files(loc, "part-*.parquet")
    return pa.concat_tables([storage.read_parquet(p.location) for p in parts])


def test_every_prompt_answered_once_with_its_settings(ray_session, store, registry_uri) -> None:
    expected = write_prompts(store)
    cfg = recipe(store, registry_uri, "out")
    manifest = run_generate(cfg, quiet())
    table = read_output(store, "out")
    ids = table["id"].to_pylist()
    assert len(ids) == len(set(ids)) == manifest["rows"] == len(expected)
    assert set(ids) == expected
    rows = table.to_pylist()
    bad = [r for r in rows if r["error"]]
    assert [r["error"][:12] for r in bad] == ["invalid JSON"]
    good = [r for r in rows if not r["error"]]
    assert all(r["completion_tokens"] > 0 and r["text"] for r in good)
    assert all(r["finish_reason"] in ("stop", "length") for r in good)
    assert {r["model"] for r in rows} == {"tiny:1"}
    assert json.loads(rows[0]["sampling"])["seed"] == 7
    assert manifest["duplicates"] == 0 and manifest["errors"] == 1
    assert manifest["model"] == "tiny:1" and manifest["requested_model"] == "tiny@production"
    assert manifest["completion_tokens"] == sum(r["completion_tokens"] for r in rows)
    assert {f for f, _ in manifest["input"]["files"]} == {"a.jsonl", "b.jsonl.gz", "c.parquet"}
    chat = next(r for r in rows if r["id"] == "c.parquet#0")
    assert json.loads(chat["messages"])[0]["content"] == "What is greenhouse 0?"

    again = run_generate(cfg, quiet())
    assert again["parts"] == manifest["parts"] and again["rows"] == manifest["rows"]
    other = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"seed": 8})})
    with pytest.raises(GenerateError, match="sampling"):
        run_generate(other)


def test_an_engine_dying_after_its_write_leaves_no_row_twice(
    ray_session, tmp_path, registry_uri, monkeypatch
) -> None:
    """The actor exits once right after writing a part, before it reports the batch: Ray Data
    restarts it and retries that batch, which lands on the same part name."""
    store = Store("local", str(tmp_path / "store"), StorageSettings())
    expected = write_prompts(store)
    marker = tmp_path / "fault"
    monkeypatch.setenv("FLYWHEEL_FAULTS", f"generate.part_written=exit:{marker}")
    manifest = run_generate(recipe(store, registry_uri, "out"), quiet())
    assert marker.exists()  # the fault fired
    ids = read_output(store, "out")["id"].to_pylist()
    assert sorted(ids) == sorted(expected) and manifest["duplicates"] == 0


def test_killed_mid_run_and_resumed_without_a_row_twice(
    ray_session, tmp_path, registry_uri
) -> None:
    store = Store("local", str(tmp_path / "store"), StorageSettings())
    lines = [json.dumps({"prompt": f"The hub number {i} pairs with"}) for i in range(240)]
    prompts = tmp_path / "store" / "prompts"
    prompts.mkdir(parents=True)
    (prompts / "a.jsonl").write_text("\n".join(lines) + "\n")
    cfg = recipe(store, registry_uri, "out", batch_size=4)
    cfg = cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"max_tokens": 24})})
    address = ray_session.get_runtime_context().gcs_address
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({**cfg.model_dump(), "ray_address": address}))
    out = tmp_path / "store" / "out"
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.generate", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(list(out.glob("part-*.parquet"))) < 3:
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no parts written"
            time.sleep(0.1)
    finally:
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
    before = {p.name for p in out.glob("part-*.parquet")}
    first_rows = sum(pq.read_metadata(out / p).num_rows for p in before)
    assert 0 < first_rows < 240 and not (out / "_manifest.json").exists()

    manifest = run_generate(cfg, quiet())
    ids = read_output(store, "out")["id"].to_pylist()
    assert len(ids) == len(set(ids)) == 240 and manifest["duplicates"] == 0
    assert before <= set(manifest["parts"])  # the first run's parts were kept, not redone


@pytest.mark.slow
def test_vllm_engine_answers_a_lora_version_as_hf_does(ray_session, tmp_path, registry_uri) -> None:
    """The default engine on a LoRA version (an adapter on its base's vLLM engine): greedy
    answers equal the HF decoder's on the merged model."""
    pytest.importorskip("vllm", reason="the vllm extra is not installed (make installs it)")
    store = Store("local", str(tmp_path / "store"), StorageSettings())
    prompts = tmp_path / "store" / "prompts"
    prompts.mkdir(parents=True)
    lines = [json.dumps({"prompt": p}) for p in ("The Heron H2", "Reset the", "battery life")]
    chat = [{"role": "user", "content": "What is the warranty?"}]
    (prompts / "p.jsonl").write_text("\n".join([*lines, json.dumps({"messages": chat})]) + "\n")
    texts = {}
    for kind in ("hf", "vllm"):
        cfg = recipe(store, registry_uri, f"out-{kind}", kind=kind, num_cpus=1, dtype="float32")
        cfg = cfg.model_copy(
            update={
                "model": "tiny:2",
                "sampling": cfg.sampling.model_copy(update={"temperature": 0, "seed": None}),
            }
        )
        manifest = run_generate(cfg, quiet())
        assert manifest["model"] == "tiny:2" and manifest["errors"] == 0
        rows = read_output(store, f"out-{kind}").to_pylist()
        # The tiny model emits byte tokens that are no valid UTF-8; vLLM renders them as
        # U+FFFD where HF's decoder drops them: compare what both can spell.
        texts[kind] = {
            r["id"]: (r["text"].replace("\ufffd", ""), r["completion_tokens"]) for r in rows
        }
    assert texts["vllm"] == texts["hf"] and len(texts["hf"]) == 4
