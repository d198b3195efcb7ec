"""Benchmark the ingest pipeline: Ray Data vs the same steps in one process vs Hugging Face
``datasets`` ``map(num_proc=2)``, on the same generated corpus, in one process run.

    python bench/ingest.py                 # 50 MB and 100 MB corpora
    python bench/ingest.py --size-mb 5     # a quick look

Every arm runs the same step functions (read + quarantine, clean, filter, redact, MinHash,
global dedup, tokenize with the demo model's tokenizer, pack) and writes Parquet shards.
Prints JSON: seconds, MB/s, time to first packed block and peak memory (sum of PSS over this
process and all its descendants: Ray's raylet, GCS and workers, or datasets' pool) per arm
and size, the throughput ratios, and how peak memory grows from 1x to 2x the input.
Ray's start-up is measured separately and not counted in the Ray arm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_datasets import run_datasets_arm
from core.config import load_config
from core.models import prepare_demo_model
from jobs.ingest import run_ingest
from jobs.make_corpus import generate_corpus
from jobs.runtime import Progress, init_ray
from schemas.ingest import IngestConfig

REPO = Path(__file__).resolve().parent.parent


class Sampler:
    """Samples the memory of this process tree and watches for the first packed shard, from
    a separate process so the sampling neither takes this process's GIL nor its CPU time."""

    def __init__(self, watch: Path, interval: float = 0.5) -> None:
        self.watch = watch
        self.interval = interval
        self.peak_bytes = 0
        self.first_block_at: float | None = None

    def __enter__(self) -> Sampler:
        self.result = Path(tempfile.mkstemp(suffix=".json")[1])
        self.start = time.perf_counter()
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--sample",
                str(os.getpid()),
                str(self.watch),
                str(self.interval),
                str(self.result),
            ]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        data = json.loads(self.result.read_text() or "{}")
        self.result.unlink()
        self.peak_bytes = data.get("peak_bytes", 0)
        first = data.get("first_block_unix")
        if first is not None:
            self.first_block_at = first - (time.time() - (time.perf_counter() - self.start))


def sample_forever(pid: int, watch: Path, interval: float, result: Path) -> None:
    """The sampler process: PSS of ``pid`` and descendants, and the first shard's time."""
    state = {"peak_bytes": 0, "first_block_unix": None}

    def finish(*_: object) -> None:
        result.write_text(json.dumps(state))
        sys.exit(0)

    signal.signal(signal.SIGTERM, finish)
    root = psutil.Process(pid)
    while True:
        state["peak_bytes"] = max(state["peak_bytes"], tree_pss(root))
        if state["first_block_unix"] is None and any(watch.glob("**/shards/*.parquet")):
            state["first_block_unix"] = time.time()
        time.sleep(interval)


def tree_pss(root: psutil.Process) -> int:
    """Proportional set size of a process and its descendants (shared pages split)."""
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def measure(name: str, out: Path, size_bytes: int, fn: Callable[[], object]) -> dict:
    with Sampler(out) as sampler:
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
    result = {
        "seconds": round(seconds, 2),
        "mb_per_s": round(size_bytes / 1e6 / seconds, 3),
        "time_to_first_block_s": round(sampler.first_block_at or seconds, 2),
        "peak_memory_mb": round(sampler.peak_bytes / 1e6, 1),
    }
    print(f"  {name}: {result}", file=sys.stderr, flush=True)
    return result


def recipe(raw: Path, out: Path, tokenizer: Path, executor: str) -> IngestConfig:
    return load_config(
        IngestConfig,
        REPO / "jobs" / "configs" / "ingest-demo.yaml",
        [
            f"input.uri={raw}",
            f"output.uri={out}",
            f"tokenizer.uri={tokenizer}",
            f"execution.executor={executor}",
        ],
    )


def run_size(size_mb: float, work: Path, tokenizer: Path) -> dict:
    corpus = work / f"corpus-{size_mb:g}"
    if not (corpus / "planted.json").exists():
        generate_corpus(corpus, target_bytes=int(size_mb * 1e6), seed=0)
    raw = corpus / "raw"
    size_bytes = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
    print(f"corpus {size_mb:g} MB ({size_bytes} bytes)", file=sys.stderr, flush=True)
    results = {}
    quiet = Progress("bench", stream=open(os.devnull, "w"))  # noqa: SIM115
    for arm in ("local", "ray"):
        out = work / f"out-{arm}-{size_mb:g}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = recipe(raw, out, tokenizer, arm)
        results[arm] = measure(arm, out, size_bytes, lambda cfg=cfg: run_ingest(cfg, quiet))
    out = work / f"out-datasets-{size_mb:g}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = recipe(raw, out, tokenizer, "local")
    results["datasets"] = measure(
        "datasets", out, size_bytes, lambda: run_datasets_arm(cfg, out, num_proc=2)
    )
    return {"input_bytes": size_bytes, "arms": results}


def main() -> None:
    if sys.argv[1:2] == ["--sample"]:
        pid, watch, interval, result = sys.argv[2:6]
        sample_forever(int(pid), Path(watch), float(interval), Path(result))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    tokenizer = prepare_demo_model(work / "tokenizer", with_weights=False)
    t0 = time.perf_counter()
    init_ray(None, num_cpus=os.cpu_count())
    ray_start = time.perf_counter() - t0
    sizes = {"1x": run_size(args.size_mb, work, tokenizer)}
    sizes["2x"] = run_size(2 * args.size_mb, work, tokenizer)
    print(json.dumps(report(sizes, ray_start), indent=2))


def report(sizes: dict, ray_start: float) -> dict:
    ratios = {}
    for key, size in sizes.items():
        a = size["arms"]
        ratios[key] = {
            "ray_vs_one_process": round(a["ray"]["mb_per_s"] / a["local"]["mb_per_s"], 3),
            "ray_vs_datasets": round(a["ray"]["mb_per_s"] / a["datasets"]["mb_per_s"], 3),
        }
    growth = {
        arm: round(
            sizes["2x"]["arms"][arm]["peak_memory_mb"] / sizes["1x"]["arms"][arm]["peak_memory_mb"],
            3,
        )
        for arm in sizes["1x"]["arms"]
    }
    return {
        "benchmark": "ingest",
        "cpus": os.cpu_count(),
        "ray_start_s": round(ray_start, 2),
        "sizes": sizes,
        "throughput_ratios": ratios,
        "peak_memory_growth_2x_over_1x": growth,
        "goals": {"ray_vs_one_process": ">= 0.8", "ray_vs_datasets": ">= 1.0"},
    }


if __name__ == "__main__":
    main()
