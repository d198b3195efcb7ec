"""Batch generation: ``jobs.generate`` against vLLM's offline ``LLM.generate`` and Ray Data LLM.

    python bench/generate.py --prompts 64   # the demo model if prepared, else a tiny one
    python bench/generate.py --prompts 16 --max-tokens 16   # a quick look

Workload: ``--prompts`` chat prompts (one user turn each, a few dozen tokens), greedy, up to
``--max-tokens`` new tokens each. Arms, each in a fresh process, one after another, with the
same vLLM settings (eager, bf16, prefix caching on, ``max_num_seqs`` 64, threads on both
cores):

- ``llm_generate``: the peer: ``vllm.LLM`` on the model folder, one ``generate`` call over
  every prompt (token ids, as the job sends them).
- ``jobs_generate``: ``jobs.generate.run_generate`` on a registry holding the model: a local
  Ray, prompts read from a JSONL file by Ray Data, one engine actor with 2 CPUs, a Parquet
  part per batch.
- ``ray_data_llm``: Ray Data LLM's ``vLLMEngineProcessorConfig`` processor on the same
  prompts, rendered with the chat template in the driver (its template, tokenize and
  detokenize stages are CPU actors that a 2-CPU node cannot place beside the engine), the
  engine in one 1-CPU bundle with its threads on both cores; results taken to the driver.

Each arm's time runs from its process's start of work (before the engine loads) to the
last output: what a user waits for. ``engine_seconds`` is the time inside ``generate``
calls alone (the job sums its actors'): decoding without start-up. Prints JSON: seconds,
completion tokens and tokens/s per arm, and each arm's throughput over ``llm_generate``'s,
end to end and in the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENGINE = {"enforce_eager": True, "dtype": "bfloat16", "max_num_seqs": 64, "max_model_len": 1024}


def questions(n: int) -> list[str]:
    topics = ["a greenhouse thermostat", "the E4 error", "pairing a hub", "battery life"]
    return [f"Question {i}: explain {topics[i % len(topics)]} to a new user." for i in range(n)]


def cpu_env() -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    os.environ["OMP_NUM_THREADS"] = str(len(cores))


def arm_llm_generate(model: str, work: Path, max_tokens: int) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from core.generation.batch import encode

    cpu_env()
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (work / "prompts" / "p.jsonl").read_text().splitlines()]
    ids = [encode(tok, "", json.dumps(r["messages"])) for r in rows]
    llm = LLM(model=model, enable_prefix_caching=True, disable_log_stats=True, **ENGINE)
    params = SamplingParams(max_tokens=max_tokens, temperature=0)
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, use_tqdm=False)
    end = time.perf_counter()
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"seconds": end - start, "engine_seconds": end - t0, "tokens": tokens}


def arm_jobs_generate(model: str, work: Path, max_tokens: int) -> dict:
    from core.registry import ModelRegistry
    from jobs.generate import run_generate
    from jobs.runtime import Progress
    from schemas.generate import GenerateConfig

    registry = ModelRegistry(str(work / "registry"), actor="bench")
    if not registry.versions("bench"):
        registry.register("bench", Path(model))
    engine = {k: v for k, v in ENGINE.items() if k != "max_model_len"}
    cfg = GenerateConfig.model_validate(
        {
            "registry_uri": str(work / "registry"),
            "model": "bench:1",
            "input": {"uri": str(work / "prompts")},
            "output_uri": str(work / "out"),
            "sampling": {"max_tokens": max_tokens, "temperature": 0},
            "engine": {"kind": "vllm", "num_cpus": 1.9, "batch_size": 256, **engine,
                       "max_model_len": 1024, "kv_cache_space_gib": 2},
        }
    )  # fmt: skip
    start = time.perf_counter()
    manifest = run_generate(cfg, Progress("bench", stream=open(work / "jobs.log", "w")))  # noqa: SIM115
    seconds = time.perf_counter() - start
    # Same count as the peer's: vLLM's, with the EOS token that ended a sequence.
    eos_ended = _eos_stops(work / "out")
    tokens = manifest["completion_tokens"] + eos_ended
    engine = manifest["last_run"]["engine_seconds"]
    return {"seconds": seconds, "engine_seconds": engine, "tokens": tokens}


def _eos_stops(out: Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    for part in out.glob("part-*.parquet"):
        t = pq.read_table(part, columns=["finish_reason"])
        n += sum(1 for r in t["finish_reason"].to_pylist() if r == "stop")
    return n


def arm_ray_data_llm(model: str, work: Path, max_tokens: int) -> dict:
    import ray
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model)
    rows = [json.loads(line) for line in (work / "prompts" / "p.jsonl").read_text().splitlines()]
    # Rendered here: its chat-template, tokenize and detokenize stages are CPU actors of their
    # own, which a 2-CPU node cannot place beside the engine.
    texts = [
        tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
        for r in rows
    ]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    env = {"VLLM_CPU_KVCACHE_SPACE": "2", "OMP_NUM_THREADS": "2",
           "VLLM_CPU_OMP_THREADS_BIND": "0,1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}  # fmt: skip
    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs={**ENGINE, "enable_prefix_caching": True},
        concurrency=1,
        batch_size=64,
        placement_group_config={"bundles": [{"CPU": 1}]},  # the other CPU: its reads
        runtime_env={"env_vars": env},
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {
            "prompt": row["text"],
            "sampling_params": {"max_tokens": max_tokens, "temperature": 0},
        },
        postprocess=lambda row: {"tokens": row["num_generated_tokens"]},
    )
    out = processor(ray.data.from_items([{"text": t} for t in texts])).take_all()
    seconds = time.perf_counter() - start
    ray.shutdown()
    return {"seconds": seconds, "tokens": sum(r["tokens"] for r in out)}


ARMS = {
    "llm_generate": arm_llm_generate,
    "jobs_generate": arm_jobs_generate,
    "ray_data_llm": arm_ray_data_llm,
}


def model_folder(work: Path) -> str:
    demo = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")) / "models/smollm2-135m-instruct"
    if (demo / "model.safetensors").exists():
        return str(demo.resolve())
    from tests.tinymodel import make_tiny_model

    return str(make_tiny_model(work / "tiny", vocab_size=2000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # a child
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        raw = ARMS[args.arm](args.model, Path(args.work), args.max_tokens)
        (Path(args.work) / f"{args.arm}.json").write_text(json.dumps(raw))
        return
    with tempfile.TemporaryDirectory(prefix="benchgen-") as tmp:
        work = Path(tmp)
        model = model_folder(work)
        (work / "prompts").mkdir()
        chats = [{"messages": [{"role": "user", "content": q}]} for q in questions(args.prompts)]
        (work / "prompts" / "p.jsonl").write_text("\n".join(map(json.dumps, chats)) + "\n")
        arms = {}
        for arm in args.arms.split(","):
            cmd = [sys.executable, __file__, "--arm", arm, "--model", model, "--work", tmp]
            cmd += ["--max-tokens", str(args.max_tokens)]
            subprocess.run(cmd, capture_output=True, check=True)
            raw = json.loads((work / f"{arm}.json").read_text())
            arms[arm] = {**raw, "tokens_per_s": round(raw["tokens"] / raw["seconds"], 1)}
            if "engine_seconds" in raw:  # decoding alone, without start-up
                arms[arm]["engine_tokens_per_s"] = round(raw["tokens"] / raw["engine_seconds"], 1)
            arms[arm] = {
                k: round(v, 1) if isinstance(v, float) else v for k, v in arms[arm].items()
            }
    result = {"model": model, "prompts": args.prompts, "max_tokens": args.max_tokens, "arms": arms}
    if "llm_generate" in arms:
        peer = arms["llm_generate"]["tokens_per_s"]
        result["throughput_over_llm_generate"] = {
            a: round(v["tokens_per_s"] / peer, 3) for a, v in arms.items()
        }
        peer_engine = arms["llm_generate"]["engine_tokens_per_s"]
        result["engine_throughput_over_llm_generate"] = {
            a: round(v["engine_tokens_per_s"] / peer_engine, 3)
            for a, v in arms.items()
            if "engine_tokens_per_s" in v
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
