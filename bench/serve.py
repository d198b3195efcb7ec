"""Benchmark serving engines side by side, same model and workload, in one process run.

    python bench/serve.py                  # the demo model if prepared, else a 30 M random Llama
    python bench/serve.py --requests 32    # a quick look
    python bench/serve.py --arms hf_static,hf_one_at_a_time   # HF only (no vLLM installed)

Workload: ``--requests`` chat completions of ``--max-tokens`` tokens, greedy, 16 in flight.
Arms (each through the real HTTP front of its server, the OpenAI API):
- vllm_1x2: the project's deployment (gateway -> generator), vLLM engine, 1 replica, 2 CPUs;
- vllm_2x1: the same, 2 replicas of 1 CPU, each bound to its own core;
- bare_vllm: vLLM's own OpenAI server (``vllm.entrypoints.openai.api_server``), defaults
  (on CPU: compute threads on all cores but one, which it keeps for its front end);
- bare_vllm_all_cores: the same server with its threads on every core (a reference: what the
  engine alone reaches on this machine);
- hf_static: the project's deployment, HF engine, static batches of up to 16, 2 CPUs;
- hf_one_at_a_time: the same with batches of 1.
Serve overhead: each vLLM deployment against the bare server, one request at a time (p50).
Prints JSON: tokens/s, p50/p95 latency, start-up time and ratios against bare vLLM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.registry import ModelRegistry
from jobs.runtime import free_port, init_ray
from tests.tinymodel import make_tiny_model

KEY = "bench-key-0123456789"
QUESTIONS = [
    f"Question {i}: how do I reset the Heron H2 thermostat after error E{i}?" for i in range(256)
]
ARMS = (
    "vllm_1x2",
    "vllm_2x1",
    "bare_vllm",
    "bare_vllm_all_cores",
    "hf_static",
    "hf_one_at_a_time",
)
# arm -> generator settings of the project's deployment. Serve routes a version to replicas
# that have it loaded until they hold max_ongoing_requests: 8 each makes 16 in flight spread.
# CPUs: 0.99 and 1.98 leave the gateway its 0.01 of the 2 Ray CPUs (a vLLM replica claims
# ceil(num_cpus) whole cores for its threads).
DEPLOYED = {
    "vllm_1x2": {"engine": "vllm", "num_cpus": 1.98, "replicas": 1},
    "vllm_2x1": {"engine": "vllm", "num_cpus": 0.99, "replicas": 2, "max_ongoing_requests": 8},
    "hf_static": {"engine": "hf", "num_cpus": 1.98, "replicas": 1, "max_batch_size": 16},
    "hf_one_at_a_time": {"engine": "hf", "num_cpus": 1.98, "replicas": 1, "max_batch_size": 1},
}


def model_folder(work: Path) -> Path:
    demo = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")) / "models/smollm2-135m-instruct"
    if (demo / "model.safetensors").exists():
        return demo.resolve()
    return make_tiny_model(work / "medium", vocab_size=2000)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_load(url: str, model: str, n: int, concurrency: int, max_tokens: int) -> dict:
    """``n`` greedy chat completions, ``concurrency`` in flight; every one must succeed."""
    sem = asyncio.Semaphore(concurrency)
    latencies, tokens = [], 0

    async with httpx.AsyncClient(timeout=900) as http:

        async def one(i: int) -> None:
            nonlocal tokens
            async with sem:
                t0 = time.perf_counter()
                r = await http.post(
                    f"{url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {KEY}"},
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": QUESTIONS[i % 256]}],
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


def deploy(work: Path, arm: str, port: int, args: argparse.Namespace) -> str:
    from ray import serve

    from serve_apps.app import build_app

    spec = {"max_ongoing_requests": 64, **DEPLOYED[arm]}
    replicas = spec.pop("replicas")
    args = {
        "registry_uri": str(work / "registry"),
        "event_log_uri": str(work / f"events-{arm}"),
        "event_wal_dir": str(work / f"wal-{arm}"),
        "default_model": "bench",
        "generator": {
            **spec,
            "dtype": args.dtype,
            "batch_wait_timeout_s": 0.005,
            # No LoRA: the workload is a full model, and vLLM 0.32 on CPU turns torch.compile
            # off when LoRA is enabled (bare vLLM runs compiled).
            "vllm": {"enforce_eager": args.eager, "kv_cache_space_gib": 2, "enable_lora": False},
            "autoscaling": {"min_replicas": replicas, "max_replicas": replicas},
        },
        # Requests queue behind slow arms (HF one at a time): no gateway timeout in the way.
        "gateway": {
            "api_keys": [KEY],
            "rate_limits": {"key_per_minute": 1e9, "user_per_minute": 1e9},  # load, not limits
            "max_tokens_ceiling": 1024,
            "num_cpus": 0.01,
            "request_timeout_s": 1800,
        },
    }
    serve.run(build_app(args), name=arm, route_prefix=f"/{arm}")
    return f"http://127.0.0.1:{port}/{arm}"


async def warm(url: str, model: str, replicas: int) -> None:
    """Load the model on every replica: requests in flight spread over the replicas."""
    await run_load(url, model, 32 * replicas, 16 * replicas, 4)


def bench_deployed(work: Path, arm: str, port: int, args: argparse.Namespace) -> dict:
    from ray import serve

    t0 = time.perf_counter()
    url = deploy(work, arm, port, args)
    asyncio.run(warm(url, "bench:1", DEPLOYED[arm]["replicas"]))
    startup = time.perf_counter() - t0
    result = asyncio.run(run_load(url, "bench:1", args.requests, 16, args.max_tokens))
    result["startup_s"] = round(startup, 1)
    if arm.startswith("vllm_"):
        result["concurrency_1"] = asyncio.run(run_load(url, "bench:1", 16, 1, args.max_tokens))
    serve.delete(arm)
    return result


def bench_bare_vllm(folder: Path, args: argparse.Namespace, all_cores: bool = False) -> dict:
    """vLLM's own OpenAI server on the same model, as its documentation starts it."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    cmd += ["--served-model-name", "bench", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--api-key", KEY, "--dtype", args.dtype, "--disable-log-stats"]
    cmd += ["--enforce-eager"] if args.eager else []
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    if all_cores:
        cores = sorted(os.sched_getaffinity(0))
        env |= {"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cores))}
        env |= {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": str(len(cores))}
    log = open(Path(tempfile.gettempdir()) / "flywheel-bench-bare-vllm.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.perf_counter()
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.perf_counter() - t0 > 900:
                raise RuntimeError(f"bare vLLM did not start; see {log.name}")
            time.sleep(1)
        asyncio.run(warm(url, "bench", 1))
        startup = time.perf_counter() - t0
        result = asyncio.run(run_load(url, "bench", args.requests, 16, args.max_tokens))
        result["startup_s"] = round(startup, 1)
        result["concurrency_1"] = asyncio.run(run_load(url, "bench", 16, 1, args.max_tokens))
        return result
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        proc.kill()
        log.close()


def ratios(arms: dict) -> dict:
    bare = arms.get("bare_vllm", {})
    if "tokens_per_s" not in bare:
        return {}
    out = {}
    for name, arm in arms.items():
        if name != "bare_vllm" and "tokens_per_s" in arm:
            out[name] = {
                "throughput_vs_bare_vllm": round(arm["tokens_per_s"] / bare["tokens_per_s"], 2),
                "p50_vs_bare_vllm": round(arm["p50_s"] / bare["p50_s"], 2),
            }
            reference = arms.get("bare_vllm_all_cores", {})
            if name.startswith("vllm_") and "tokens_per_s" in reference:
                out[name]["throughput_vs_bare_vllm_all_cores"] = round(
                    arm["tokens_per_s"] / reference["tokens_per_s"], 2
                )
    for name in ("vllm_1x2", "vllm_2x1"):
        if "concurrency_1" in arms.get(name, {}) and "concurrency_1" in bare:
            p50 = arms[name]["concurrency_1"]["p50_s"] - bare["concurrency_1"]["p50_s"]
            out[name]["serve_overhead_ms_at_concurrency_1"] = round(p50 * 1000, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset")
    parser.add_argument("--eager", action="store_true", help="vLLM without torch.compile")
    parser.add_argument("--dtype", default="float32", choices=["bfloat16", "float32"])
    args = parser.parse_args()
    chosen = [a for a in ARMS if a in args.arms.split(",")]
    work = Path(tempfile.mkdtemp(prefix="flywheel-bench-serve-"))
    registry = ModelRegistry(str(work / "registry"), actor="bench")
    folder = model_folder(work)
    registry.register("bench", folder)
    init_ray(None)
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    arms = {}
    for arm in chosen:  # one at a time: every arm has the whole machine
        print(f"arm {arm} ...", file=sys.stderr, flush=True)
        try:
            if arm.startswith("bare_vllm"):
                arms[arm] = bench_bare_vllm(folder, args, all_cores=arm == "bare_vllm_all_cores")
            else:
                arms[arm] = bench_deployed(work, arm, port, args)
        except Exception as e:  # one failed arm must not lose the others' figures
            arms[arm] = {"error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(Exception):
                serve.delete(arm)
        print(json.dumps({arm: arms[arm]}), file=sys.stderr, flush=True)
    serve.shutdown()
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": str(folder),
                "max_tokens": args.max_tokens,
                "eager": args.eager,
                "dtype": args.dtype,
                "cpus": os.cpu_count(),
                "arms": arms,
                "ratios": ratios(arms),
                "goals": {
                    "vllm deployment throughput at concurrency 16": ">= 1.0x bare vLLM",
                    "vllm deployment p50 at concurrency 16": "<= 1.2x bare vLLM",
                    "serve_overhead_ms_at_concurrency_1": "<= 20",
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
