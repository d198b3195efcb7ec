"""Benchmark the feedback loop: what one cycle teaches by objective, when each stage happened
after the last event, and the loop's overhead against running the same jobs directly.

    python bench/loop.py                          # both parts
    python bench/loop.py --part learning --home .flywheel-bench --arms lm sft sft+dpo kto
    python bench/loop.py --part overhead

Learning (``bench/learning.py``): on the demo's world and model, the held-out accuracy on
corrected and uncorrected facts, the corpus loss and the fine-tune's wall time per objective.
Goals: at least 60% of the corrected facts' held-out phrasings right after one cycle, the
uncorrected facts no worse than the parent, the fine-tune no slower than before (210-370 s).

Overhead:
A tiny model (2 layers) is production; simulated users send corrections straight to the
event log until the policy triggers. Stages, in seconds after the last event: trigger, job
submitted, first training step, checkpoint, registered, evaluated, serving (canary alias and
traffic split moved). Then the same publish, train and eval configs the controller wrote
are run directly (``python -m jobs.feedback_snapshot`` / ``jobs.train`` / ``jobs.evaluate``
on the same Ray cluster). Prints JSON with the outcome, the timeline and the ratio of loop
time (trigger to evaluated) to direct time. Goal: at most 1.2x, or at most 10 s added.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.loop import start_loop, stop_loop
from core import storage
from core.events import EventLog
from core.registry import ModelRegistry
from demo.world import FACTS
from jobs.runtime import Progress, init_ray
from schemas.events import Feedback
from schemas.loop import LoopConfig
from tests.tinymodel import served_output, tiny_production, write_finetune_recipe

QUIET = Progress("bench", stream=open(os.devnull, "w"))  # noqa: SIM115


def setup(root: Path) -> tuple[ModelRegistry, str, Path, Path]:
    registry, base, heldout = tiny_production(root, "bench", QUIET)
    recipe = write_finetune_recipe(
        root / "finetune.yaml",
        root / "ckpt",
        target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"],
        checkpoint_every=10,
        log_every=10,
    )
    return registry, str(root / "heldout" / "snapshots" / heldout.snapshot_id), base, recipe


def send_corrections(log: EventLog, tokenizer: object, n: int) -> float:
    batch = []
    for i, fact in enumerate(FACTS[:n]):
        prompt = tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": fact.questions[0]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        rid = f"b-{i}"
        batch.append(served_output(rid, "tiny:1", prompt, f"u{i}"))
        batch.append(
            Feedback(
                response_id=rid,
                rating=1,
                user=f"u{i}",
                correction="Please check the Verdantia Grow app settings page.",
            )
        )
    log.append_segment(batch)
    return time.time()


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def timeline(registry: ModelRegistry, history: dict, last_event: float, ckpt: Path) -> dict:
    job = history["train_job"]
    submits = [e for e in registry.audit.entries() if e.action == "job.submit" and e.subject == job]
    candidate = registry.get(history["candidate"])
    curve = candidate.metrics.get("curve", [])
    checkpoints = sorted(p.stat().st_mtime for p in (ckpt / job).glob("checkpoint_*"))
    stamps = {
        "trigger": history["triggered_at"],
        "job_submitted": _unix(submits[0].at),
        "first_step": curve[0]["t"] if curve else None,
        "checkpoint": checkpoints[0] if checkpoints else None,
        "registered": _unix(candidate.created_at),
        "evaluated": history["evaluated_at"],
        "serving": history.get("canary_started_at"),
    }
    return {k: round(v - last_event, 2) if v else None for k, v in stamps.items()}


def run_direct(args: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["learning", "overhead", "all"], default="all")
    parser.add_argument("--home", default=".flywheel-bench", help="Demo home (reused).")
    parser.add_argument(
        "--arms",
        nargs="+",
        default=["lm", "sft", "sft+dpo", "kto"],
        help="or e.g. sft:48+dpo:8, sft:80@data.replay_every=2 (that arm's overrides)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="fine-tune override"
    )
    parser.add_argument(
        "--replay-blocks", type=int, default=None, help="rehearsal blocks (the loop's default)"
    )
    args = parser.parse_args()
    if args.part in ("learning", "all"):
        from bench.learning import run_learning, summary

        init_ray(None)
        result = run_learning(
            Path(args.home).resolve(), args.arms, overrides=args.overrides,
            replay_blocks=args.replay_blocks,
        )  # fmt: skip
        print(json.dumps({"benchmark": "loop_learning", **result, **summary(result)}, indent=2))
    if args.part in ("overhead", "all"):
        overhead()


def overhead() -> None:
    import ray
    from transformers import AutoTokenizer

    root = Path(tempfile.mkdtemp(prefix="flywheel-bench-loop-"))
    registry, heldout, base, recipe = setup(root)
    init_ray(None)
    dashboard = f"http://{ray._private.worker.get_dashboard_url()}"
    cfg = LoopConfig.model_validate(
        {
            "model_name": "tiny",
            "registry_uri": str(root / "registry"),
            "event_log_uri": str(root / "events"),
            "loop_uri": str(root / "loop"),
            "tick_interval_s": 0.5,
            "policy": {"min_new_examples": 10, "cooldown_s": 0},
            # The tiny model answers nothing right: a gate that only checks the jobs ran.
            "gate": {"margin": 0.0, "tolerance": 1.0, "min_accuracy_gain": 0.0},
            "canary": {"weight": 50, "min_rated": 1000},
            "finetune": {"recipe": str(recipe), "block_size": 64},
            "evaluate": {"heldout_snapshot_uri": heldout, "max_heldout_blocks": 16},
            "jobs": {"python": sys.executable, "address": dashboard},
        }
    )
    _, controller = start_loop(cfg)
    last_event = send_corrections(
        EventLog(cfg.event_log_uri), AutoTokenizer.from_pretrained(base), 12
    )
    deadline = time.time() + 900
    while True:
        state = ray.get(controller.status.remote())
        cur = state["current"] or (state["history"][-1] if state["history"] else {})
        if cur.get("canary_started_at") or cur.get("outcome"):
            break
        if time.time() > deadline:
            raise TimeoutError(f"loop stuck in {state['phase']}")
        time.sleep(0.5)
    stop_loop("tiny")
    stamps = timeline(registry, cur, last_event, root / "ckpt")
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    train_cfg = storage.read_json(storage.resolve(cur["train_config"]))
    train_cfg["run_name"] = "direct-run"
    direct_cfg = root / "direct-train.json"
    direct_cfg.write_text(json.dumps(train_cfg))
    # The loop's first job publishes the feedback snapshot; directly, into another folder
    # (the same one would find the snapshot there and skip the work).
    publish_cfg = storage.read_json(storage.resolve(cur["publish_config"]))
    publish_cfg["loop"]["loop_uri"] = str(root / "direct-loop")
    direct_publish_cfg = root / "direct-publish.json"
    direct_publish_cfg.write_text(json.dumps(publish_cfg))
    direct_publish = run_direct(
        ["-m", "jobs.feedback_snapshot", "--config", str(direct_publish_cfg)], env
    )
    direct_train = run_direct(["-m", "jobs.train", "--config", str(direct_cfg)], env)
    direct_eval = run_direct(["-m", "jobs.evaluate", "--config", cur["eval_config"]], env)
    loop_s = cur["evaluated_at"] - cur["triggered_at"]
    direct_s = direct_publish + direct_train + direct_eval
    print(
        json.dumps(
            {
                "benchmark": "loop",
                "outcome": cur.get("outcome") or "canary",
                "outcome_reason": cur.get("outcome_reason"),
                "seconds_after_last_event": stamps,
                "loop_trigger_to_evaluated_s": round(loop_s, 2),
                "direct_publish_s": round(direct_publish, 2),
                "direct_train_s": round(direct_train, 2),
                "direct_evaluate_s": round(direct_eval, 2),
                "overhead_ratio": round(loop_s / direct_s, 3),
                "overhead_s": round(loop_s - direct_s, 2),
                "goal": "<= 1.2x or <= 10 s added",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
