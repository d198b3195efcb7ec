"""vLLM's prefix cache on and off: time to first token with a shared system prompt.

    python bench/prefix_cache.py                 # the demo model if prepared, else a tiny one
    python bench/prefix_cache.py --requests 8    # a quick look

Workload: ``--requests`` chat requests that share one long system prompt (a support
assistant's instructions and product sheet, about ``--system-words`` words) and differ in
the user's question, sent one at a time, each asking for one token: its latency is the time
to first token (prefill plus one step). The first request of each arm fills the cache and is
not counted. Arms, each in a fresh process with the same engine settings as the project's
vLLM engine on CPU (eager): ``enable_prefix_caching`` true and false. Prints JSON: p50 and
p95 time to first token per arm, the prompt's length in tokens, and the on/off ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHEET = (
    "The Heron H2 thermostat keeps a greenhouse between 4 and 35 degrees. It pairs with one "
    "hub at up to 60 meters, runs two years on four AA cells and shows error E1 to E9 when a "
    "sensor, the radio or the battery needs attention. "
)


def system_prompt(words: int) -> str:
    text = "You are the support assistant of a garden electronics shop. Answer briefly. "
    while len(text.split()) < words:
        text += SHEET
    return text


def run_arm(model: str, caching: bool, requests: int, words: int) -> dict:
    """One engine, ``requests`` one-token requests in turn; seconds of each but the first."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, enforce_eager=True, enable_prefix_caching=caching, max_model_len=2048,
              max_num_seqs=4, dtype="bfloat16", disable_log_stats=True)  # fmt: skip
    system = system_prompt(words)
    params = SamplingParams(max_tokens=1, temperature=0)
    seconds, prompt_tokens = [], 0
    for i in range(requests + 1):
        question = f"Question {i}: what does error E{i % 9 + 1} mean?"
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        start = time.perf_counter()
        (out,) = llm.chat(messages, params, use_tqdm=False)
        if i:  # the first one fills the cache
            seconds.append(time.perf_counter() - start)
        prompt_tokens = len(out.prompt_token_ids)
    return {"prompt_tokens": prompt_tokens, "ttft_s": seconds}


def model_folder(work: Path) -> str:
    demo = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")) / "models/smollm2-135m-instruct"
    if (demo / "model.safetensors").exists():
        return str(demo.resolve())
    from tests.tinymodel import make_tiny_model

    return str(make_tiny_model(work / "tiny", vocab_size=2000))


def summary(raw: dict) -> dict:
    ttft = sorted(raw["ttft_s"])
    return {
        "prompt_tokens": raw["prompt_tokens"],
        "requests": len(ttft),
        "ttft_p50_ms": round(1000 * statistics.median(ttft), 1),
        "ttft_p95_ms": round(1000 * ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--system-words", type=int, default=900)
    parser.add_argument("--arm", choices=["on", "off"], help=argparse.SUPPRESS)  # a child
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        raw = run_arm(args.model, args.arm == "on", args.requests, args.system_words)
        Path(args.out).write_text(json.dumps(raw))  # vLLM logs to stdout: a file of its own
        return
    with tempfile.TemporaryDirectory() as work:
        model = model_folder(Path(work))
        arms = {}
        for arm in ("on", "off"):
            out = Path(work) / f"{arm}.json"
            sizes = ["--requests", str(args.requests), "--system-words", str(args.system_words)]
            cmd = [sys.executable, __file__, "--arm", arm, "--model", model, "--out", str(out)]
            cmd += sizes
            subprocess.run(cmd, capture_output=True, check=True)
            arms[f"prefix_cache_{arm}"] = summary(json.loads(out.read_text()))
    on, off = arms["prefix_cache_on"]["ttft_p50_ms"], arms["prefix_cache_off"]["ttft_p50_ms"]
    result = {"model": model, "arms": arms, "ttft_p50_on_over_off": round(on / off, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
