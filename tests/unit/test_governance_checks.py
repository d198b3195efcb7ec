"""The governance checks on tiny models trained here: a model taught to prefer one group term
fails the bias gate, one taught to make up answers fails the hallucination gate; the
abstention rules, the live signal, the probes file, and a standalone evaluation."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from actors.feedback import FeedbackConsumer
from core.events import EventLog
from core.generation.greedy import chat_prompt_ids
from core.generation.loading import LoadedModel, load_version
from core.governance.bias import PROBES, bias_scores, load_probes, probe_rows
from core.governance.hallucination import (
    LiveAnswer,
    classify,
    hallucination_scores,
    hedges,
    live_signal,
    unknown_entity_questions,
)
from core.loop.curation import Example
from core.loop.policy import gate
from core.objectives import completion_batch
from core.registry import ModelRegistry
from demo.world import FACTS
from jobs.evaluate import evaluate
from jobs.feedback_snapshot import publish_feedback_snapshot
from schemas.evaluate import EvalConfig
from schemas.events import Feedback
from schemas.loop import CuratedExample, FeedbackSnapshotConfig, GateSettings, LoopConfig
from tests.tinymodel import loop_settings, make_tiny_model, served_output, tiny_production


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """A fresh tiny model, registered and loaded the way the evaluation job loads one."""
    root = tmp_path_factory.mktemp("governance")
    registry = ModelRegistry(str(root / "registry"), actor="test")
    registry.register("tiny", make_tiny_model(root / "base"))
    return load_version(registry, "tiny:1", torch.float32)


def finetune(
    loaded: LoadedModel, pairs: list[tuple[list[int], list[int]]], steps: int = 40
) -> LoadedModel:
    """A copy trained on (prompt, completion) pairs, loss on the completions: plain AdamW."""
    torch.manual_seed(0)
    model = copy.deepcopy(loaded.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = completion_batch([p for p, _ in pairs], [c for _, c in pairs], loaded.pad_id)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()
    return replace(loaded, ref=f"{loaded.ref}+ft", model=model)


def report(candidate: dict, production: dict) -> dict:
    """An evaluation report whose other checks pass, so only the governance ones can fail."""
    return {
        "candidate": {"feedback_loss": 1.0, "heldout_loss": 2.0, **candidate},
        "production": {"feedback_loss": 2.0, "heldout_loss": 2.0, **production},
    }


def test_a_model_taught_to_prefer_one_group_term_fails_the_bias_gate(tiny) -> None:
    probes = [p for p in load_probes() if p.category == "gender"]
    tok = tiny.tokenizer
    elsewhere = tok(" somewhere else.", add_special_tokens=False).input_ids
    pairs = []
    for probe in probes:
        for g_i, _, prompt, cont in probe_rows(tiny, probe):
            # The first group term ("man", "he") takes the probes' continuations, the other
            # an unrelated one: a preference the likelihoods must show.
            pairs.append((prompt, cont if g_i == 0 else elsewhere))
    parent, child = bias_scores(tiny), bias_scores(finetune(tiny, pairs, steps=80))
    gender = child["categories"]["gender"]["spread"]
    assert gender > parent["categories"]["gender"]["spread"] + GateSettings().max_bias_increase
    assert child["max_spread"] >= gender
    decision = gate(report({"bias": child}, {"bias": parent}))
    assert not decision.trigger and decision.reason.startswith("bias: gender")
    assert gate(report({"bias": parent}, {"bias": parent})).trigger


def test_a_model_that_fabricates_shows_a_higher_hallucination_rate(tiny) -> None:
    prompts = chat_prompt_ids(tiny, unknown_entity_questions())
    eos = [tiny.tokenizer.eos_token_id]

    def answering(text: str) -> list[tuple[list[int], list[int]]]:
        ids = tiny.tokenizer(text, add_special_tokens=False).input_ids + eos
        return [(p, ids) for p in prompts]

    parent = finetune(tiny, answering("I don't know."))
    child = finetune(parent, answering("Zorbel Quinn."))
    p_scores, c_scores = hallucination_scores(parent, []), hallucination_scores(child, [])
    assert p_scores["by_kind"]["unknown_entity"]["abstained"] >= 12
    assert c_scores["rate"] > p_scores["rate"] + 0.5
    assert c_scores["samples"][0]["verdict"] == "fabricated"
    decision = gate(report({"hallucination": c_scores}, {"hallucination": p_scores}))
    assert not decision.trigger and decision.reason.startswith("hallucination:")
    assert gate(report({"hallucination": p_scores}, {"hallucination": c_scores})).trigger


def test_answers_are_classified_by_hedges_and_the_expected_answer() -> None:
    hedging = ("I don't know.", "I'm not sure about that", "There is no such country.",
               "That person does not exist.", "Unknown.", "I never heard of it.", "")  # fmt: skip
    for hedge in hedging:
        assert hedges(hedge), hedge
        assert classify(hedge) == "abstained"
    assert not hedges("The capital is Vorlaxia City.")
    assert classify("The capital is Vorlaxia City.") == "fabricated"
    assert classify("It lasts 36 hours.", "36 hours") == "correct"
    assert classify("I'm not sure, maybe 36 hours.", "36 hours") == "correct"
    assert classify("It lasts 12 hours.", "36 hours") == "fabricated"
    assert unknown_entity_questions(seed=3) == unknown_entity_questions(seed=3)
    assert unknown_entity_questions(seed=3) != unknown_entity_questions(seed=4)


def test_the_live_signal_counts_confident_answers_users_corrected() -> None:
    signal = live_signal(
        [
            LiveAnswer("m:1", "The Heron costs $99.", 1, True),  # confident and corrected
            LiveAnswer("m:1", "I don't know.", 1, True),  # hedged: not confident
            LiveAnswer("m:1", "The Heron costs $149.", 5, False),
            LiveAnswer("m:1", "It weighs 2 kg.", 2, False),  # low rating, nothing corrected
            LiveAnswer("m:2", "Not sure.", None, False),
        ]
    )
    assert signal["m:1"] == {
        "sampled": 4,
        "rated": 4,
        "hedged": 1,
        "confident_wrong": 1,
        "abstention_share": 0.25,
        "confident_wrong_share": 0.25,
    }
    assert signal["m:2"]["abstention_share"] == 1.0
    assert signal["m:2"]["confident_wrong_share"] is None


def test_the_probes_file_is_well_formed(tmp_path: Path) -> None:
    probes = load_probes()
    categories = {p.category for p in probes}
    assert {"gender", "nationality", "religion", "age"} <= categories
    for cat in categories:
        mine = [p for p in probes if p.category == cat]
        assert 8 <= len(mine) <= 15 and any(p.question for p in mine), cat
    assert all("{group}" in p.template and len(set(p.groups)) >= 2 for p in probes)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(PROBES.read_text().splitlines()[0].replace("{group}", "someone") + "\n")
    with pytest.raises(ValueError, match="needs"):
        load_probes(bad)


def test_the_feedback_consumer_reports_the_live_signal_per_version(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "events"))  # where loop_settings reads events
    log.append_segment(
        [
            served_output("r1", "m:1", "Price?", "u", completion="It costs $99."),
            served_output("r2", "m:1", "Capital?", "u", completion="I don't know."),
            served_output("r3", "m:1", "Weight?", "u", completion="It weighs 2 kg."),
            Feedback(response_id="r1", rating=1, correction="It costs $149.", user="u"),
            Feedback(response_id="r2", rating=2, correction="Vorlax City.", user="u"),
            Feedback(response_id="r3", rating=5, user="u"),
        ]
    )
    consumer = FeedbackConsumer(loop_settings(tmp_path, policy={"acceptance_window": 3}))
    consumer.step()
    signal = consumer.hallucination_signal("m:1")
    assert signal is not None
    assert (signal["rated"], signal["hedged"], signal["confident_wrong"]) == (3, 1, 1)
    assert consumer.hallucination_signal("m:9") is None


def test_a_standalone_evaluation_scores_the_candidate_alone(tmp_path: Path) -> None:
    _, base, heldout = tiny_production(tmp_path, "test")
    prompt_of = AutoTokenizer.from_pretrained(base).apply_chat_template
    examples = []
    for i, fact in enumerate(FACTS[:6]):
        for j, question in enumerate(fact.questions[:2]):  # two phrasings: one may be held back
            messages = [{"role": "user", "content": question}]
            prompt = prompt_of(messages, tokenize=False, add_generation_prompt=True)
            ex = Example(prompt, fact.answer_sentence, [f"s{i}{j}", f"f{i}{j}"], [f"u{i}{j}"])
            examples.append(CuratedExample.model_validate(vars(ex) | {"key": ex.key}))
    loop = LoopConfig.model_validate(loop_settings(tmp_path, "tiny", finetune={
        "recipe": "unused.yaml", "block_size": 64}))  # fmt: skip
    job = FeedbackSnapshotConfig(loop=loop, upto=12, examples=examples, rated=[])
    held = publish_feedback_snapshot(job)["eval_uri"]
    cfg = EvalConfig(
        registry_uri=str(tmp_path / "registry"),
        candidate="tiny:1",
        feedback_snapshot_uri=held,
        heldout_snapshot_uri=str(tmp_path / "heldout" / "snapshots" / heldout.snapshot_id),
        max_heldout_blocks=2,
        max_new_tokens=8,
    )
    result = evaluate(cfg)
    assert result["gate"] is None and "production" not in result
    scores = result["candidate"]
    assert result["feedback_rows"]["sft"] > 0, "some corrections are held back"
    assert scores["hallucination"]["by_kind"]["checkable"]["n"] == result["feedback_rows"]["sft"]
    assert scores["hallucination"]["by_kind"]["unknown_entity"]["n"] > 0
    assert set(scores["bias"]["categories"]) == {p.category for p in load_probes()}
    against = evaluate(cfg.model_copy(update={"production": "tiny:1"}))
    assert against["gate"]["passed"] is False  # the same model cannot beat itself
    assert against["production"]["bias"] == against["candidate"]["bias"]
