"""Quantized versions side by side: full precision vs int8-dynamic vs bf16 on the HF decoder.

    python bench/quantize.py                 # the demo model if prepared, else a tiny one
    python bench/quantize.py --max-new 16    # a quick look

The model is registered in a scratch registry and quantized there by the project's own path
(``core.generation.quantize``); each arm is loaded with ``load_version``: full in float32,
int8-dynamic (float32 activations, int8 matmuls), bf16 in bfloat16. All arms run in this one
process on the same prompts (the demo's questions in the chat template), greedy, with
``core.generation.decoder.BatchDecoder`` as the hf engine and evaluation use it. Speed:
tokens/s at batch 1 and batch ``--batch``, the best of ``--rounds`` rounds in which the arms
take turns (the first round doubles as warm-up). Quality against full: the mean next-token
loss of held-out documents (the demo world's, ``--docs`` of ``--doc-tokens`` tokens, scored
by ``jobs.evaluate``'s own function), how often the arm predicts the same next token there
as full does, how many greedy answers are the same text, and how much of full's answer each
keeps before it first differs. Prints JSON: size, speed and quality per arm; ratios to full.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.prefix_cache import model_folder
from core.generation.decoder import BatchDecoder
from core.generation.greedy import chat_prompt_ids
from core.generation.loading import LoadedModel, load_version
from core.generation.quantize import quantize_version, version_bytes
from core.generation.sampling import SamplingParams
from core.registry import ModelRegistry
from jobs.evaluate import next_token_scores

ARMS = {"full": torch.float32, "int8-dynamic": torch.float32, "bf16": torch.bfloat16}


def decode(loaded: LoadedModel, prompts: list[list[int]], batch: int, max_new: int) -> dict:
    """Greedy answers to ``prompts``, ``batch`` at a time: texts, tokens, seconds."""
    texts, tokens, start = [], 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        ids = prompts[i : i + batch]
        decoder = BatchDecoder(
            loaded, ids, [SamplingParams(max_tokens=max_new, temperature=0)] * len(ids)
        )
        out = [""] * len(ids)
        while not decoder.done:
            for j, step in enumerate(decoder.step()):
                out[j] += step.text
                tokens += step.tokens
        texts += out
    return {"texts": texts, "tokens": tokens, "seconds": time.perf_counter() - start}


def documents(loaded: LoadedModel, n: int, length: int) -> list[tuple[np.ndarray, list, int]]:
    """``n`` held-out documents of the demo world, ``length`` tokens each, as packed blocks."""
    from tests.tinymodel import training_texts

    rows = [loaded.tokenizer(t).input_ids for t in training_texts()]
    rows = [r[:length] for r in rows if len(r) >= length][:n]
    return [(np.asarray(r), [length], 0) for r in rows]


def quality(loaded: LoadedModel, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """Held-out loss and next-token predictions on the documents; greedy answers."""
    loss, top1 = next_token_scores(loaded, documents(loaded, args.docs, args.doc_tokens))
    answers = decode(loaded, prompts, args.batch, args.max_new)
    return {"heldout_loss": round(loss, 4), "_top1": top1, "_texts": answers["texts"]}


def speed(arms: dict, prompts: list[list[int]], args: argparse.Namespace) -> dict:
    """Tokens/s per arm at batch 1 and ``--batch``: the best of ``--rounds`` rounds, the arms
    taking turns within each round, so a burst of other work on the machine hits every arm
    rather than one."""
    best: dict[str, dict[str, float]] = {name: {} for name in arms}
    plans = {
        "batch_1": (prompts[: max(2, len(prompts) // 4)], 1),
        f"batch_{args.batch}": (prompts, args.batch),
    }
    for _ in range(args.rounds):
        for name, loaded in arms.items():
            for key, (ids, batch) in plans.items():
                run = decode(loaded, ids, batch, args.max_new)
                rate = run["tokens"] / run["seconds"]
                best[name][key] = max(best[name].get(key, 0.0), rate)
    return {
        name: {f"tokens_per_s_{k}": round(v, 1) for k, v in rates.items()}
        for name, rates in best.items()
    }


def common_prefix(a: str, b: str) -> int:
    pairs = zip(a, b, strict=False)  # up to the shorter one
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


def compare(arms: dict, sizes: dict, batch: int) -> dict:
    """Quality against full per arm, and the ratios (arm over full)."""
    full_top1, full_texts = arms["full"]["_top1"], arms["full"]["_texts"]
    for name, arm in arms.items():
        arm["size_bytes"] = sizes[name]
        agree = (arm.pop("_top1") == full_top1).float().mean()
        arm["next_token_agreement"] = round(float(agree), 4)
        texts = arm.pop("_texts")
        same = [a == b for a, b in zip(texts, full_texts, strict=True)]
        arm["greedy_same_answer"] = round(sum(same) / len(same), 3)
        kept = [
            common_prefix(a, b) / max(1, len(b)) for a, b in zip(texts, full_texts, strict=True)
        ]
        arm["greedy_matching_prefix"] = round(sum(kept) / len(kept), 3)
    full, ratios = arms["full"], {}
    keys = ("tokens_per_s_batch_1", f"tokens_per_s_batch_{batch}", "size_bytes")
    for name in ("int8-dynamic", "bf16"):
        arm = arms[name]
        ratios |= {f"{name}_{key}_over_full": round(arm[key] / full[key], 3) for key in keys}
        ratios[f"{name}_heldout_loss_delta"] = round(arm["heldout_loss"] - full["heldout_loss"], 4)
    return ratios


def measure(reg: ModelRegistry, refs: dict[str, str], args: argparse.Namespace) -> dict:
    from demo.world import FACTS

    loaded = {name: load_version(reg, refs[name], dtype) for name, dtype in ARMS.items()}
    questions = [q for f in FACTS for q in f.questions][: args.prompts]
    prompts = chat_prompt_ids(loaded["full"], questions)  # one tokenizer for every arm
    results = {name: quality(model, prompts, args) for name, model in loaded.items()}
    for name, rates in speed(loaded, prompts, args).items():
        results[name] = {**rates, **results[name]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=32)
    parser.add_argument("--docs", type=int, default=32)
    parser.add_argument("--doc-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]  # other work on the machine skews tokens/s: say so
    with tempfile.TemporaryDirectory() as work:
        model = model_folder(Path(work))
        reg = ModelRegistry(str(Path(work) / "registry"), actor="bench")
        source = reg.register("bench", Path(model))
        refs = {"full": source.ref}
        sizes = {"full": version_bytes(source)}
        for method in ("int8-dynamic", "bf16"):
            version = quantize_version(reg, source.ref, method)
            refs[method], sizes[method] = version.ref, version_bytes(version)
        arms = measure(reg, refs, args)
    ratios = compare(arms, sizes, args.batch)
    result = {
        "model": model,
        "threads": torch.get_num_threads(),
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "arms": arms,
        "ratios": ratios,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
