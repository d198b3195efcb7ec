"""Benchmark the ingest pipeline: Ray Data vs the same steps in one process vs Hugging Face
``datasets`` ``map(num_proc=2)``, on the same generated corpus, in one process run.

    python bench/ingest.py                 # 50 MB and 100 MB corpora
    python bench/ingest.py --size-mb 5     # a quick look

Every arm runs the same step functions (read + quarantine, clean, filter, redact, MinHash,
global dedup, tokenize with the demo model's tokenizer, pack) and writes Parquet shards.
Each arm runs in a fresh process. Prints JSON: seconds, MB/s, time to the first packed block
and peak memory (PSS summed over the arm's process and all its descendants: Ray's raylet,
GCS and workers, or datasets' pool) per arm and size, the throughput ratios, and how peak
memory grows from 1x to 2x the input. Ray's start-up is reported, not counted.
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
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest_datasets import run_datasets_arm
from core.config import load_config
from demo.corpus import generate_corpus
from demo.model import prepare_demo_model
from jobs.ingest import run_ingest
from jobs.runtime import Progress, init_ray
from schemas.ingest import IngestConfig

REPO = Path(__file__).resolve().parent.parent


class Sampler:
    """Samples the memory of a process tree and watches for the first packed shard, from a
    separate process so sampling takes neither the measured process's GIL nor its CPU."""

    def __init__(self, pid: int, watch: Path, interval: float = 0.5) -> None:
        self.pid, self.watch, self.interval = pid, watch, interval
        self.peak_bytes = 0
        self.first_block_unix: float | None = None

    def __enter__(self) -> Sampler:
        self.result = Path(tempfile.mkstemp(suffix=".json")[1])
        self.process = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--sample",
                str(self.pid),
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
        self.first_block_unix = data.get("first_block_unix")


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


def run_arm(arm: str, raw: Path, out: Path, tokenizer: Path, report_file: Path) -> None:
    """One arm in this (fresh) process; writes its timings to ``report_file``."""
    ray_start = 0.0
    if arm == "ray":
        t0 = time.perf_counter()
        init_ray(None, num_cpus=os.cpu_count())
        ray_start = time.perf_counter() - t0
    cfg = recipe(raw, out, tokenizer, "local" if arm == "datasets" else arm)
    start_unix, t0 = time.time(), time.perf_counter()
    if arm == "datasets":
        run_datasets_arm(cfg, out, num_proc=2)
    else:
        run_ingest(cfg, Progress("bench", stream=open(os.devnull, "w")))  # noqa: SIM115
    report_file.write_text(
        json.dumps(
            {
                "seconds": time.perf_counter() - t0,
                "start_unix": start_unix,
                "ray_start_s": ray_start,
            }
        )
    )


def measure(arm: str, raw: Path, out: Path, tokenizer: Path, size_bytes: int) -> dict:
    report_file = Path(tempfile.mkstemp(suffix=".json")[1])
    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--arm",
            arm,
            str(raw),
            str(out),
            str(tokenizer),
            str(report_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    with Sampler(child.pid, out) as sampler:
        child.wait()
    if child.returncode:
        raise RuntimeError(f"arm {arm} failed with exit code {child.returncode}")
    timing = json.loads(report_file.read_text())
    first = sampler.first_block_unix
    result = {
        "seconds": round(timing["seconds"], 2),
        "mb_per_s": round(size_bytes / 1e6 / timing["seconds"], 3),
        "time_to_first_block_s": round(first - timing["start_unix"], 2) if first else None,
        "peak_memory_mb": round(sampler.peak_bytes / 1e6, 1),
    }
    if arm == "ray":
        result["ray_start_s_not_counted"] = round(timing["ray_start_s"], 2)
    print(f"  {arm}: {result}", file=sys.stderr, flush=True)
    return result


def run_size(size_mb: float, work: Path, tokenizer: Path) -> dict:
    corpus = work / f"corpus-{size_mb:g}"
    if not (corpus / "planted.json").exists():
        generate_corpus(corpus, target_bytes=int(size_mb * 1e6), seed=0)
    raw = corpus / "raw"
    size_bytes = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file())
    print(f"corpus {size_mb:g} MB ({size_bytes} bytes)", file=sys.stderr, flush=True)
    results = {}
    for arm in ("local", "ray", "datasets"):
        out = work / f"out-{arm}-{size_mb:g}"
        shutil.rmtree(out, ignore_errors=True)
        results[arm] = measure(arm, raw, out, tokenizer, size_bytes)
    return {"input_bytes": size_bytes, "arms": results}


def main() -> None:
    if sys.argv[1:2] == ["--sample"]:
        pid, watch, interval, result = sys.argv[2:6]
        sample_forever(int(pid), Path(watch), float(interval), Path(result))
    if sys.argv[1:2] == ["--arm"]:
        arm, raw, out, tokenizer, report_file = sys.argv[2:7]
        run_arm(arm, Path(raw), Path(out), Path(tokenizer), Path(report_file))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=50.0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (a temp dir)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="flywheel-bench-"))
    tokenizer = prepare_demo_model(work / "tokenizer", with_weights=False)
    sizes = {"1x": run_size(args.size_mb, work, tokenizer)}
    sizes["2x"] = run_size(2 * args.size_mb, work, tokenizer)
    print(json.dumps(report(sizes), indent=2))


def report(sizes: dict) -> dict:
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
        "sizes": sizes,
        "throughput_ratios": ratios,
        "peak_memory_growth_2x_over_1x": growth,
        "goals": {"ray_vs_one_process": ">= 0.8", "ray_vs_datasets": ">= 1.0"},
    }


if __name__ == "__main__":
    main()
