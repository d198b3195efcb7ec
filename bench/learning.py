"""What one loop cycle teaches, by objective, on the demo's world (``bench/loop.py --part
learning``).

Production is the demo's model after the demo's own first fine-tune (``make demo``'s steps
1-4, reused from ``--home`` when it holds them). Simulated users then ask it, as in the demo:
the taught facts (``demo.world.FACTS[:24]``) by two phrasings each, rated and corrected when
wrong; the other facts by one phrasing, rated only. The answers come from production itself
(greedy, the served settings). Their feedback is curated by the consumer's functions and
published by ``jobs.feedback_snapshot``; each arm then runs the fine-tune the loop would
submit (``core.loop.recipes.train_config``, the demo's loop recipe) with only the objectives
changed, and every version is asked the held-out phrasings (never sent, never trained on).

Arms: ``lm`` (the loop before: prompt and answer as plain text), ``sft``, ``sft`` then
``dpo``, ``kto`` alone (ratings only: the snapshot's corrections are left out).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from core.config import load_config
from core.generation.greedy import ask
from core.generation.loading import load_version
from core.loop import recipes
from core.loop.curation import Candidate, Rating, curate, curate_ratings
from core.loop.state import Cycle
from core.registry import ModelRegistry
from demo import world
from jobs.evaluate import blocks, mean_loss
from jobs.feedback_snapshot import publish_feedback_snapshot
from jobs.runtime import Progress
from jobs.train import run_train
from schemas.loop import CuratedExample, FeedbackSnapshotConfig, LoopConfig, RatedAnswer
from schemas.train import Stage

MAX_NEW = 48  # tokens of a greedy answer: a fact and its sentence
REPO = Path(__file__).resolve().parent.parent
ARMS: dict[str, list[tuple[str, int]]] = {
    "lm": [("lm", 24)],
    "sft": [("sft", 24)],
    "sft+dpo": [("sft", 24), ("dpo", 8)],
    "kto": [("kto", 24)],
}


def production(home: Path, progress: Progress) -> tuple[ModelRegistry, str, str]:
    """(registry, production ref, its corpus snapshot uri): the demo's, made if missing."""
    import os

    os.environ["FLYWHEEL_HOME"] = str(home)
    cfg = load_config(LoopConfig, REPO / "jobs" / "configs" / "loop-demo.yaml")
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    if "production" not in registry.aliases("demo"):
        _demo_production(home, progress)
    ref = registry.get("demo@production").ref
    return registry, ref, recipes.corpus_snapshot(registry, ref, "<none>")


def _demo_production(home: Path, progress: Progress) -> None:
    from demo.model import prepare_demo_model
    from demo.run import CONFIGS, DEMO_MODEL_DIR, ensure_corpus
    from jobs.ingest import run_ingest
    from schemas.ingest import IngestConfig
    from schemas.train import TrainConfig

    ensure_corpus(home, 5.0)
    prepare_demo_model(home / DEMO_MODEL_DIR)
    manifest = run_ingest(load_config(IngestConfig, CONFIGS / "ingest-demo.yaml"), progress)
    snapshot = home / "store" / "datasets" / "demo" / "snapshots" / manifest.snapshot_id
    train = load_config(TrainConfig, CONFIGS / "train-demo.yaml", [f"data.snapshot_uri={snapshot}"])
    run_train(train, progress)


def chat_prompt(tok: Any, question: str) -> str:
    messages = [{"role": "user", "content": question}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def user_feedback(
    loaded: Any, taught: int = 24
) -> tuple[list[CuratedExample], list[RatedAnswer], dict[str, int]]:
    """What the demo's users send, curated as the consumer curates it."""
    asked = [(f, q, True) for f in world.FACTS[:taught] for q in f.questions[:2]]
    asked += [(f, f.questions[0], False) for f in world.FACTS[taught:]]
    answers = ask(loaded, [q for _, q, _ in asked], MAX_NEW)
    corrections, ratings = [], []
    for i, ((fact, question, corrects), answer) in enumerate(zip(asked, answers, strict=True)):
        prompt = chat_prompt(loaded.tokenizer, question)
        ok = world.is_correct(fact, answer)
        ids = [f"served-{i}", f"feedback-{i}"]
        user = f"{'user' if corrects else 'rater'}-{i}"
        ratings.append(Rating(prompt, answer, 5 if ok else 1, user, ids, loaded.ref))
        if corrects and not ok:
            corrections.append(
                Candidate(prompt, fact.answer_sentence, user, ids, loaded.ref, answer)
            )
    examples, _ = curate(corrections)
    rated, _ = curate_ratings(ratings)
    counts = {
        "asked": len(asked),
        "right": sum(r.rating == 5 for r in ratings),
        "corrected": len(corrections),
    }
    return (
        [CuratedExample.model_validate(vars(e) | {"key": e.key}) for e in examples],
        [RatedAnswer.model_validate(vars(r) | {"key": r.key}) for r in rated],
        counts,
    )


def accuracy(loaded: Any, facts: tuple[world.Fact, ...] | list[world.Fact]) -> dict[str, Any]:
    items = [(f, q) for f in facts for q in f.heldout_questions]
    answers = ask(loaded, [q for _, q in items], MAX_NEW)
    right = sum(world.is_correct(f, a) for (f, _), a in zip(items, answers, strict=True))
    return {"right": right, "asked": len(items), "accuracy": round(right / len(items), 3)}


def scores(registry: ModelRegistry, ref: str, corpus: list, taught: int) -> dict[str, Any]:
    loaded = load_version(registry, ref, torch.float32)
    out = {
        "corrected_heldout": accuracy(loaded, world.FACTS[:taught]),
        "uncorrected_heldout": accuracy(loaded, world.FACTS[taught:]),
        "corpus_loss": round(mean_loss(loaded, corpus), 4),
    }
    del loaded
    return out


def _parent_world(
    home: Path, registry: ModelRegistry, parent: str, corpus: list, taught: int
) -> tuple[list[CuratedExample], list[RatedAnswer], dict[str, int], dict[str, Any]]:
    """The users' feedback on ``parent`` and its scores: computed once per parent (greedy,
    deterministic) and kept in the home, so reruns spend their time on the arms."""
    import json

    cache = home / "bench" / f"parent-{parent.replace(':', '-')}-{taught}.json"
    if cache.is_file():
        raw = json.loads(cache.read_text())
        return (
            [CuratedExample.model_validate(e) for e in raw["examples"]],
            [RatedAnswer.model_validate(r) for r in raw["rated"]],
            raw["asked"],
            raw["scores"],
        )
    loaded = load_version(registry, parent, torch.float32)
    examples, rated, asked = user_feedback(loaded, taught)
    del loaded
    result = scores(registry, parent, corpus, taught)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({
        "examples": [e.model_dump() for e in examples], "rated": [r.model_dump() for r in rated],
        "asked": asked, "scores": result,
    }))  # fmt: skip
    return examples, rated, asked, result


def arm_stages(arm: str) -> list[Stage]:
    """``sft+dpo`` (the named arms' steps) or explicit ``sft:48+dpo:8``; an ``@...`` suffix
    holds the arm's own fine-tune overrides (``arm_overrides``)."""
    arm = arm.partition("@")[0]
    if arm in ARMS:
        return [Stage(objective=o, steps=n) for o, n in ARMS[arm]]
    return [
        Stage(objective=o, steps=int(n)) for o, n in (part.split(":") for part in arm.split("+"))
    ]


def arm_overrides(arm: str) -> list[str]:
    """``sft:80@data.micro_batch_size=1,data.replay_every=2`` -> those two overrides."""
    return [o for o in arm.partition("@")[2].split(",") if o]


def run_learning(
    home: Path,
    arms: list[str],
    taught: int = 24,
    overrides: list[str] | None = None,
    replay_blocks: int | None = None,
) -> dict[str, Any]:
    progress = Progress("bench")
    registry, parent, corpus_uri = production(home, progress)
    cfg = load_config(LoopConfig, REPO / "jobs" / "configs" / "loop-demo.yaml")
    # e.g. optim.lr=3e-3: a variant of the loop's fine-tune, the same for every arm
    tune: dict[str, Any] = {"overrides": [*cfg.finetune.overrides, *(overrides or [])]}
    if replay_blocks is not None:
        tune["replay_blocks"] = replay_blocks
    cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update=tune)})
    corpus = blocks(corpus_uri, cfg.storage, cfg.evaluate.max_heldout_blocks)
    examples, rated, asked, parent_scores = _parent_world(home, registry, parent, corpus, taught)
    table: dict[str, Any] = {"parent": {"version": parent, **parent_scores}}
    for arm in arms:
        only_kto = {st.objective for st in arm_stages(arm)} == {"kto"}
        job_examples = [] if only_kto else examples  # kto: what ratings alone teach
        job = FeedbackSnapshotConfig(
            loop=cfg, upto=len(examples), examples=job_examples, rated=rated,
            production_snapshot=corpus_uri,
        )  # fmt: skip
        published = publish_feedback_snapshot(job)
        stages = arm_stages(arm)
        update: dict[str, Any] = dict.fromkeys(("objectives", "ratings_only_objectives"), stages)
        update["overrides"] = [*cfg.finetune.overrides, *arm_overrides(arm)]
        arm_cfg = cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update=update)})
        cycle = Cycle(
            production=parent,
            snapshot_id=published["snapshot_id"],
            snapshot_uri=published["uri"],
            counts=published["counts"],
        )
        train, _ = recipes.train_config(arm_cfg, cycle, corpus_uri)
        name = arm.partition("@")[0].replace(":", "").replace("+", "-")
        train = train.model_copy(update={"run_name": f"bench-{name}-{int(time.time())}"})
        t0 = time.perf_counter()
        version = run_train(train, progress)
        wall = time.perf_counter() - t0
        table[arm] = {
            "version": version.ref,
            "stages": [f"{s.objective}:{s.steps}" for s in train.plan()],
            "overrides": arm_overrides(arm),
            "finetune_s": round(wall, 1),
            **scores(registry, version.ref, corpus, taught),
        }
        progress.say(f"{arm}: {table[arm]}")
    return {
        "users": asked, "examples": len(examples), "rated": len(rated),
        "finetune_overrides": cfg.finetune.overrides,
        "replay_blocks": cfg.finetune.replay_blocks, "arms": table,
    }  # fmt: skip


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Each arm against the goals: >= 60% of corrected held-out phrasings, uncorrected no
    worse than the parent, fine-tune no slower than the loop's before (210-370 s)."""
    parent = result["arms"]["parent"]
    goals = {}
    for arm, row in result["arms"].items():
        if arm == "parent":
            continue
        goals[arm] = {
            "corrected_ge_60pct": row["corrected_heldout"]["accuracy"] >= 0.6,
            "uncorrected_no_worse": row["uncorrected_heldout"]["right"]
            >= parent["uncorrected_heldout"]["right"],
            "finetune_le_370s": row["finetune_s"] <= 370,
        }
    return {"goals": goals}
