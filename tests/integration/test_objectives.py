"""Feedback snapshots and the feedback objectives end to end on the shared local Ray: curated
corrections and ratings published as token ids, then SFT then DPO (LoRA, ZeRO-2, two workers,
rehearsal) and KTO (full fine-tuning, ZeRO-3, two workers) through Ray Train + DeepSpeed,
then the evaluation job on what came out."""

from __future__ import annotations

import pytest

from core.data.feedback import open_feedback, read_rows
from core.loop.curation import Example, Rated
from demo.world import FACTS
from jobs.evaluate import evaluate
from jobs.feedback_snapshot import publish_feedback_snapshot
from jobs.train import run_train
from schemas.evaluate import EvalConfig
from schemas.loop import CuratedExample, FeedbackSnapshotConfig, LoopConfig, RatedAnswer
from schemas.train import TrainConfig
from tests.tinymodel import tiny_production, write_finetune_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("objectives")
    _, base, heldout = tiny_production(root, "test")
    tok = AutoTokenizer.from_pretrained(base)

    def prompt(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    examples = []
    for i, f in enumerate(FACTS[:10]):
        for j, q in enumerate(f.questions[:2]):
            ex = Example(prompt(q), f.answer_sentence, [f"s{i}{j}", f"f{i}{j}"], [f"u{i}{j}"])
            ex.rejected = ["I do not know."]
            examples.append(CuratedExample.model_validate(vars(ex) | {"key": ex.key}))
    rated = []
    for i, f in enumerate(FACTS[10:22]):
        good = i % 3 != 0  # twice as many desirable as undesirable: KTO weights balance them
        answer = f.answer_sentence if good else "No idea, sorry."
        r = Rated(prompt(f.questions[0]), answer, good, [5 if good else 1], [f"rs{i}", f"rf{i}"])
        rated.append(RatedAnswer.model_validate(vars(r) | {"key": r.key}))
    cfg = LoopConfig.model_validate(
        {
            "model_name": "tiny",
            "registry_uri": str(root / "registry"),
            "event_log_uri": str(root / "events"),
            "loop_uri": str(root / "loop"),
            "finetune": {"recipe": "unused.yaml", "block_size": 64},
        }
    )
    job = FeedbackSnapshotConfig(loop=cfg, upto=20, ratings_upto=12, examples=examples, rated=rated)
    result = publish_feedback_snapshot(job)
    recipe = write_finetune_recipe(
        root / "finetune.yaml", root / "ckpt", ["q_proj", "v_proj"], 100, 2
    )
    heldout_uri = str(root / "heldout" / "snapshots" / heldout.snapshot_id)
    return {"root": root, "result": result, "recipe": recipe, "heldout": heldout_uri, "tok": tok}


def test_feedback_snapshot_holds_token_ids_traced_to_events(published) -> None:
    result, tok = published["result"], published["tok"]
    train, train_m = open_feedback(result["train_uri"])
    held, held_m = open_feedback(result["eval_uri"])
    assert train_m.counts.sft + held_m.counts.sft == 20
    assert train_m.counts.preference == train_m.counts.sft  # one served answer per correction
    assert train_m.counts.kto_desirable + held_m.counts.kto_desirable == 8
    assert train_m.counts.kto_undesirable == 4
    assert held_m.counts.sft > 0, "some corrections are held back to judge candidates"
    sft = read_rows(train, train_m, "sft")
    trained_prompts = {r["prompt"] for r in sft}
    assert not trained_prompts & {r["prompt"] for r in read_rows(held, held_m, "sft")}
    # Every fact is taught by at least one phrasing: holding one out tests a new phrasing.
    answers = {r["completion"] for r in sft}
    assert {r["completion"] for r in read_rows(held, held_m, "sft")} <= answers
    row = sft[0]
    assert row["completion_ids"][-1] == train_m.tokenizer.eos_token_id
    assert tok.decode(row["prompt_ids"]) == row["prompt"]
    assert set(row["event_ids"]) <= set(train_m.parents)


def _train(published: dict, run: str, **update) -> TrainConfig:
    from core.config import load_config

    root = published["root"]
    base = load_config(TrainConfig, published["recipe"])
    body = base.model_dump(mode="json") | {
        "run_name": run,
        "model": {"registry_ref": "tiny@production"},
        "registry": {"uri": str(root / "registry"), "model_name": "tiny"},
    }
    body["data"] |= {"snapshot_uri": published["result"]["train_uri"], "block_size": 64}
    for key, value in update.items():
        section, _, field = key.partition("__")
        body[section] = {**body.get(section, {}), field: value} if field else value
    return TrainConfig.model_validate(body)


def test_sft_then_dpo_widens_the_margin_and_passes_evaluation(ray_session, published) -> None:
    cfg = _train(
        published,
        "sft-dpo",
        stages=[{"objective": "sft", "steps": 10}, {"objective": "dpo", "steps": 8}],
        optim__max_steps=18,
        scaling__num_workers=2,
        scaling__resources_per_worker={"CPU": 0.5},
        deepspeed__zero_stage=2,
        data__replay_snapshot_uri=published["heldout"],
        data__replay_blocks=4,
        dpo__beta=0.5,
    )
    version = run_train(cfg)
    curve = version.metrics["curve"]
    assert all("replay_loss" in c for c in curve), "rehearsal adds its loss to every step"
    dpo = [c for c in curve if "rewards/margin" in c]
    assert [c["step"] for c in dpo] == list(range(11, 19)), "dpo runs after the sft stage"
    assert dpo[-1]["rewards/margin"] > dpo[0]["rewards/margin"]
    assert dpo[-1]["rewards/margin"] > 0 and dpo[-1]["rewards/accuracy"] >= 0.5

    report = evaluate(
        EvalConfig(
            registry_uri=str(published["root"] / "registry"),
            candidate=version.ref,
            production="tiny:1",
            feedback_snapshot_uri=published["result"]["eval_uri"],
            heldout_snapshot_uri=published["heldout"],
            max_heldout_blocks=8,
            max_new_tokens=24,
        )
    )
    for role in ("candidate", "production"):
        assert report[role]["corrected"]["n"] == report["feedback_rows"]["sft"]
    # The answer tokens of held-back corrections got likelier: SFT learned what users said.
    assert report["candidate"]["feedback_loss"] < report["production"]["feedback_loss"]


def test_kto_from_ratings_alone_under_zero3(ray_session, published) -> None:
    cfg = _train(
        published,
        "kto",
        mode="full",
        objective="kto",
        optim__max_steps=6,
        optim__lr=1e-3,
        scaling__num_workers=2,
        scaling__resources_per_worker={"CPU": 0.5},
        deepspeed__zero_stage=3,
    )
    version = run_train(cfg)
    curve = version.metrics["curve"]
    assert len(curve) == 6 and all("kl" in c for c in curve)
    assert any("rewards/desirable" in c for c in curve)
    assert version.format == "hf"
