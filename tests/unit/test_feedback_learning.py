"""From feedback to training rows, without Ray: corrections become SFT examples and preference
pairs, ratings become KTO examples, the held-back split, the SFT loss mask, the loop's choice
of objectives, and the gate on what users taught."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from actors.feedback import FeedbackConsumer
from core.events import EventLog
from core.loop.answers import answer_matches, expected_answer
from core.loop.curation import Candidate, Rating, curate, curate_ratings
from core.loop.policy import gate
from core.loop.recipes import objective_plan
from core.training import batch_tensors, pack_examples
from demo import world
from jobs.feedback_snapshot import held_prompts
from jobs.train_feedback import has_targets, rank_rows, replay_block, row_chunks
from schemas.events import Feedback
from schemas.loop import CuratedExample, GateSettings, LoopConfig, RatedAnswer
from schemas.train import TrainConfig
from tests.tinymodel import served_output


def test_a_correction_keeps_the_served_answer_it_corrects() -> None:
    wrong = Candidate("Q: price?", "It costs $149.", "u1", ["s1", "f1"], "m:1", "It costs $99.")
    same = Candidate("Q: price?", "It costs $149.", "u2", ["s2", "f2"], "m:1", "it costs 149")
    (example,), _ = curate([wrong, same])
    assert example.rejected == ["It costs $99."], "a served answer equal to the fix is no loser"
    assert example.event_ids == ["s1", "f1", "s2", "f2"]


def test_ratings_become_kto_examples_by_majority() -> None:
    def r(answer: str, rating: int, user: str, prompt: str = "Q?") -> Rating:
        return Rating(prompt, answer, rating, user, [f"s-{user}", f"f-{user}"], "m:1")

    rated, quarantined = curate_ratings(
        [
            r("Good answer.", 5, "a"),
            r("good answer", 4, "b"),
            r("Good answer.", 1, "c"),  # outvoted
            r("Bad answer.", 1, "d"),
            r("So-so.", 3, "e"),  # a 3 says nothing
            r("Visit https://spam.example.com now", 5, "f", "Other?"),
        ]
    )
    assert [(x.completion, x.desirable, sorted(x.ratings)) for x in rated] == sorted(
        [("Good answer.", True, [1, 4, 5]), ("Bad answer.", False, [1])],
        key=lambda t: next(x.key for x in rated if x.completion == t[0]),
    )
    assert [q.reason for q in quarantined] == ["link"], "a good rating does not launder spam"


def test_the_consumer_records_ratings_and_publishes_them_once(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "log"))
    log.append_segment(
        [
            served_output("r1", "m:1", "Q1?", "u1", completion="Answer one."),
            Feedback(response_id="r1", rating=5, user="u1"),
            served_output("r2", "m:1", "Q2?", "u2", completion="Wrong."),
            Feedback(response_id="r2", rating=1, correction="Right answer.", user="u2"),
        ]
    )
    cfg = {
        "model_name": "m",
        "registry_uri": str(tmp_path / "reg"),
        "event_log_uri": str(tmp_path / "log"),
        "loop_uri": str(tmp_path / "loop"),
        "finetune": {"recipe": "x.yaml"},
    }
    c = FeedbackConsumer(cfg)
    c.step()
    pending = c.pending_examples()
    assert [e["rejected"] for e in pending["examples"]] == [["Wrong."]]
    assert sorted((r["completion"], r["desirable"]) for r in pending["rated"]) == [
        ("Answer one.", True),
        ("Wrong.", False),
    ]
    c.mark_published(pending["upto"], pending["ratings_upto"])
    again = c.pending_examples()
    assert again["examples"] == [] and again["rated"] == []


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _example(prompt: str, answer: str) -> CuratedExample:
    key = _key(prompt + answer)
    return CuratedExample(prompt=prompt, answer=answer, event_ids=[prompt], key=key)


def test_held_back_corrections_test_new_phrasings_of_taught_facts() -> None:
    examples = [_example(q, f.answer_sentence) for f in world.FACTS[:20] for q in f.questions]
    examples.append(_example("Only once?", "A fact with one phrasing."))
    held = held_prompts(examples, [])
    assert held, "some corrections are held back"
    assert "Only once?" not in held, "a fact taught once stays in training"
    for answer in {e.answer for e in examples}:
        phrasings = {e.prompt for e in examples if e.answer == answer}
        assert phrasings - held, f"every fact keeps a trained phrasing: {answer}"
    rated = [
        RatedAnswer(prompt=f"R{i}?", completion="ok", desirable=True, ratings=[5],
                    event_ids=[str(i)], key=_key(str(i)))
        for i in range(40)
    ]  # fmt: skip
    assert 0 < len(held_prompts([], rated)) < 40, "some accepted answers are held back too"


def test_the_sft_mask_leaves_the_prompt_out_of_the_loss() -> None:
    packed = pack_examples([([1, 2, 3], [4, 5]), ([6, 7], [8, 9, 10])], block_size=12, pad_id=0)
    assert packed.segment_lengths == [[5, 5]] and packed.num_pad == [2]
    inputs = batch_tensors(
        packed.input_ids, packed.segment_lengths, packed.num_pad, loss_mask=packed.loss_mask
    )
    targets = inputs["labels"][0].tolist()
    assert targets == [-100, -100, -100, 4, 5, -100, -100, 8, 9, 10, -100, -100]
    # Examples do not attend to each other: the second starts its own causal block.
    mask = inputs["attention_mask"][0, 0]
    assert mask[6, 4] < 0 and mask[6, 5] == 0 and inputs["position_ids"][0, 5] == 0
    lm = pack_examples([([1, 2, 3], [4, 5])], 8, 0, loss_on_prompt=True)
    assert np.array_equal(lm.loss_mask[0], [1, 1, 1, 1, 1, 0, 0, 0])


def test_rows_split_evenly_across_ranks() -> None:
    rows = list(range(5))
    shares = [rank_rows(rows, r, 2) for r in range(2)]
    assert shares == [[0, 2, 4], [1, 3, 0]], "wrapping round: every rank runs as many forwards"
    assert rank_rows([7], 1, 2) == [7]


def test_row_chunks_are_full_and_cover_every_epoch() -> None:
    chunks = list(itertools.islice(row_chunks(5, 4, seed=0), 5))  # 20 rows: 4 epochs
    assert all(len(c) == 4 for c in chunks), "no short chunk at an epoch's end"
    flat = [i for c in chunks for i in c]
    assert all(sorted(flat[e * 5 : e * 5 + 5]) == list(range(5)) for e in range(4))
    assert flat[:5] != flat[5:10], "each epoch reshuffled"
    assert list(itertools.islice(row_chunks(5, 4, 0), 5)) == chunks, "deterministic (resume)"


def test_a_block_without_a_target_is_not_rehearsed() -> None:
    # The demo snapshot's last block: one token and 255 of padding; its loss would be NaN.
    inputs = batch_tensors(np.asarray([[5] + [0] * 7]), [[1]], [7])
    assert (inputs["labels"][0, 1:] == -100).all(), "nothing to predict in it"
    assert not has_targets([1]) and has_targets([1, 2]) and has_targets([246, 10])


def test_rehearsal_every_kth_micro_batch_takes_each_block_in_turn() -> None:
    blocks = ["a", "b", "c"]
    assert [replay_block(blocks, n, 1) for n in range(1, 5)] == ["a", "b", "c", "a"]
    assert [replay_block(blocks, n, 2) for n in range(1, 8)] == [
        "a", None, "b", None, "c", None, "a"
    ]  # fmt: skip
    assert replay_block([], 1, 1) is None


def _loop(**finetune) -> LoopConfig:
    return LoopConfig.model_validate(
        {
            "model_name": "m",
            "registry_uri": "r",
            "event_log_uri": "e",
            "loop_uri": "l",
            "finetune": {"recipe": "x.yaml", **finetune},
        }
    )


def _train(**update) -> TrainConfig:
    body = {
        "run_name": "r",
        "mode": "lora",
        "model": {"uri": "m"},
        "data": {"snapshot_uri": "s"},
        "checkpoint": {"storage_uri": "c"},
        "registry": {"uri": "r", "model_name": "m"},
    }
    return TrainConfig.model_validate(body | update)


def test_the_loop_picks_objectives_by_what_users_sent() -> None:
    loop = _loop(
        objectives=[{"objective": "sft", "steps": 20}, {"objective": "dpo", "steps": 6}],
        ratings_only_objectives=[{"objective": "kto", "steps": 12}],
    )
    both = objective_plan(loop, _train(), {"sft": 9, "preference": 9, "kto_desirable": 4})
    assert [s.objective for s in both["stages"]] == ["sft", "dpo"]
    assert both["optim"].max_steps == 26
    no_pairs = objective_plan(loop, _train(), {"sft": 9, "preference": 0})
    assert [s.objective for s in no_pairs["stages"]] == ["sft"]
    ratings = objective_plan(loop, _train(), {"kto_desirable": 3, "kto_undesirable": 5})
    assert [s.objective for s in ratings["stages"]] == ["kto"]
    with pytest.raises(ValueError, match="no rows"):
        objective_plan(loop, _train(), {})
    assert objective_plan(_loop(), _train(), {"sft": 3}) == {}, "unset: the recipe decides"


def test_stages_must_add_up_to_max_steps() -> None:
    stages = [{"objective": "sft", "steps": 5}, {"objective": "dpo", "steps": 5}]
    assert [s.objective for s in _train(stages=stages, optim={"max_steps": 10}).plan()] == [
        "sft",
        "dpo",
    ]
    with pytest.raises(ValidationError, match="add up"):
        _train(stages=stages, optim={"max_steps": 12})
    assert [s.objective for s in _train(objective="kto").plan()] == ["kto"]


@pytest.mark.parametrize("fact", world.FACTS[::5], ids=lambda f: f.id)
def test_the_gate_expects_what_a_correction_adds(fact: world.Fact) -> None:
    expected = expected_answer(fact.questions[0], fact.answer_sentence)
    assert answer_matches(expected, fact.answer_sentence)
    assert answer_matches(fact.answer, expected) or answer_matches(expected, fact.answer)


def test_expected_answer_examples() -> None:
    assert expected_answer("How much does the Heron H2 cost?", "The Heron H2 costs $149.") == "149"
    assert expected_answer("What warranty does the Heron H2 have?", "2 years for the H2.") == (
        "2 year"
    )
    assert expected_answer("Q?", "") == ""


def _report(corrected: tuple[float, float], accepted: tuple[float, float], heldout: float):
    def role(i: int, loss: float) -> dict:
        return {
            "feedback_loss": 1.0,
            "heldout_loss": loss,
            "corrected": {"accuracy": corrected[i]},
            "accepted": {"accuracy": accepted[i], "n": 20},
        }

    report = {"candidate": role(0, heldout), "production": role(1, 2.0)}
    report["candidate"]["feedback_loss"] = 0.5
    return report


def test_the_gate_judges_what_users_taught() -> None:
    cfg = GateSettings(min_accuracy_gain=0.2, max_accepted_drop=0.1, tolerance=0.05)
    assert gate(_report((0.7, 0.1), (0.9, 0.9), 2.05), cfg).trigger
    no_gain = gate(_report((0.2, 0.1), (0.9, 0.9), 2.0), cfg)
    assert not no_gain.trigger and "corrections" in no_gain.reason
    forgot = gate(_report((0.7, 0.1), (0.6, 0.9), 2.0), cfg)
    assert not forgot.trigger and "accepted" in forgot.reason
    few = _report((0.7, 0.1), (0.75, 1.0), 2.0)
    few["candidate"]["accepted"]["n"] = 4
    assert gate(few, cfg).trigger, "one answer of four is allowed to change"
    no_loss_gain = _report((0.7, 0.1), (0.9, 0.9), 2.0)
    no_loss_gain["candidate"]["feedback_loss"] = 1.0
    assert "margin" in gate(no_loss_gain, cfg).reason
    regress = gate(_report((0.7, 0.1), (0.9, 0.9), 2.5), cfg)
    assert not regress.trigger and "held-out" in regress.reason
