"""Benchmark serving: the batched deployment against an unbatched one, and Serve's overhead
against calling the engine in-process, same model and workload, in one process run.

    python bench/serve.py                 # the demo model if prepared, else a 30 M random Llama
    python bench/serve.py --requests 32   # a quick look

Arms (through the real HTTP gateway, the OpenAI API):
- batched: the generator with max_batch_size 16, 16 requests in flight;
- unbatched: the same generator with max_batch_size 1, 16 requests in flight;
- overhead: one request at a time through Serve vs the same decode loop in this process.
Each generator replica has one CPU. Prints JSON with tokens/s, p50/p95 latency and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.registry import ModelRegistry
from jobs.runtime import (
    free_port,
    init_ray,
)
from serve_apps.engine import BatchDecoder, SamplingParams, load_version
from tests.tinymodel import make_tiny_model

KEY = "bench-key-0123456789"
PROMPTS = [
    f"Question {i}: how do I reset the Heron H2 thermostat after error E{i}?" for i in range(256)
]


def model_folder(work: Path) -> Path:
    demo = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")) / "models/smollm2-135m-instruct"
    if (demo / "model.safetensors").exists():
        return demo
    return make_tiny_model(work / "medium", vocab_size=2000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(url: str, n: int, concurrency: int, max_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    latencies, tokens = [], 0

    async with httpx.AsyncClient(timeout=600) as http:

        async def one(i: int) -> None:
            nonlocal tokens
            async with sem:
                t0 = time.perf_counter()
                r = await http.post(
                    f"{url}/v1/completions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={
                        "model": "bench:1",
                        "prompt": PROMPTS[i % 256],
                        "max_tokens": max_tokens,
                        "temperature": 0,
                    },
                )
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                tokens += r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - start
    return {
        "requests": n,
        "concurrency": concurrency,
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "p50_s": round(statistics.median(latencies), 4),
        "p95_s": round(percentile(latencies, 0.95), 4),
    }


def deploy(work: Path, name: str, max_batch: int, port: int) -> str:
    from ray import serve

    from serve_apps.app import build_app

    args = {
        "registry_uri": str(work / "registry"),
        "event_log_uri": str(work / f"events-{name}"),
        "event_wal_dir": str(work / f"wal-{name}"),
        "default_model": "bench",
        "generator": {
            "num_cpus": 1,
            "max_batch_size": max_batch,
            "batch_wait_timeout_s": 0.005,
            "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        },
        "gateway": {"api_keys": [KEY], "max_tokens_ceiling": 1024, "num_cpus": 0.1},
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")
    return f"http://127.0.0.1:{port}/{name}"


def in_process(registry: ModelRegistry, n: int, max_tokens: int) -> dict:
    import torch

    torch.set_num_threads(1)
    loaded = load_version(registry, "bench:1", torch.float32)
    latencies, tokens = [], 0
    for i in range(n):
        ids = loaded.tokenizer(PROMPTS[i % 256]).input_ids
        t0 = time.perf_counter()
        decoder = BatchDecoder(
            loaded, [ids], [SamplingParams(max_tokens=max_tokens, temperature=0)]
        )
        while not decoder.done:
            tokens += decoder.step()[0].tokens
        latencies.append(time.perf_counter() - t0)
    return {"requests": n, "tokens": tokens, "p50_s": round(statistics.median(latencies), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-serve-"))
    registry = ModelRegistry(str(work / "registry"), actor="bench")
    folder = model_folder(work)
    registry.register("bench", folder)
    init_ray(None)
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    results = {}
    for name, batch in (("batched", 16), ("unbatched", 1)):
        url = deploy(work, name, batch, port)
        asyncio.run(run_load(url, 8, 8, 4))  # warm up: model loaded, code paths hot
        results[name] = asyncio.run(run_load(url, args.requests, 16, args.max_tokens))
        serve.delete(name)
    url = deploy(work, "single", 16, port)
    asyncio.run(run_load(url, 4, 1, 4))
    through_serve = asyncio.run(run_load(url, 16, 1, args.max_tokens))
    serve.shutdown()
    local = in_process(registry, 16, args.max_tokens)
    b, u = results["batched"], results["unbatched"]
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": str(folder),
                "max_tokens": args.max_tokens,
                "arms": {**results, "serve_concurrency_1": through_serve, "in_process_1": local},
                "batched_vs_unbatched_throughput": round(b["tokens_per_s"] / u["tokens_per_s"], 2),
                "batched_vs_unbatched_p50": round(b["p50_s"] / u["p50_s"], 2),
                "serve_overhead_ms_at_concurrency_1": round(
                    (through_serve["p50_s"] - local["p50_s"]) * 1000, 1
                ),
                "goals": {
                    "throughput": ">= 4x unbatched",
                    "p50": "<= 1.5x unbatched",
                    "overhead_ms": "<= 20",
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
