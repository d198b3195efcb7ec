"""The demo's closing act: what users send, what the comparison counts, how it is printed."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest

from demo import loop_act, world
from demo.loop_act import (
    Accuracy,
    LoopActResult,
    cycle_text,
    heldout_accuracy,
    heldout_text,
    phase_seconds,
    round_text,
    teaching_traffic,
)
from jobs.runtime import Progress

ENTRY = {
    "outcome": "promoted",
    "outcome_reason": "canary rated as well as production",
    "candidate": "demo:2",
    "triggered_at": 1000.0,
    "published_at": 1021.4,
    "trained_at": 1201.0,
    "evaluated_at": 1262.0,
    "canary_started_at": 1264.0,
    "finished_at": 1316.0,
}


def test_users_send_no_heldout_question() -> None:
    corrected, rated = teaching_traffic(24)
    heldout = {q for f in world.FACTS for q in f.heldout_questions}
    assert not {q for _, q in corrected + rated} & heldout
    assert corrected == [(f, f.questions[i]) for i in (0, 1) for f in world.FACTS[:24]]
    assert rated == [(f, f.questions[0]) for f in world.FACTS[24:]]


class _Http:
    """Records the feedback bodies ``rate`` posts."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status_code = 200

    async def post(self, url: str, json: dict[str, Any], headers: dict[str, str]) -> Any:
        assert url.endswith("/v1/feedback")
        self.bodies.append(json)
        return self

    def raise_for_status(self) -> None:
        pass


@pytest.mark.parametrize("correct", [True, False])
def test_rate_corrects_only_when_asked_to(correct: bool) -> None:
    right, wrong = world.FACTS[:2]
    answers = [
        (right, right.questions[0], right.answer_sentence, "r1", "demo:1", "u-0"),
        (wrong, wrong.questions[0], "I do not know.", "r2", "demo:1", "u-1"),
    ]
    http = _Http()
    assert asyncio.run(loop_act.rate(http, "http://x", "key", answers, correct=correct)) == 1
    expected = [
        {"response_id": "r1", "rating": 5, "user": "u-0"},
        {"response_id": "r2", "rating": 1, "user": "u-1"},
    ]
    if correct:
        expected[1]["correction"] = wrong.answer_sentence
    assert http.bodies == expected


def test_round_text_says_what_the_wrong_answers_got() -> None:
    assert round_text(48, 48, 18, corrected=True) == "18 answered right, 30 corrected"
    assert (
        round_text(36, 34, 12, corrected=False)
        == "12 answered right, 22 rated 1, not corrected, 2 unanswered"
    )


def test_heldout_accuracy_splits_corrected_from_uncorrected_and_counts_unanswered() -> None:
    a, b, c = world.FACTS[:3]
    asked = [(a, "qa1"), (a, "qa2"), (b, "qb"), (c, "qc")]
    answers = [  # qa2 went unanswered
        (a, "qa1", a.answer_sentence, "r1", "demo:1", "eval-0"),
        (b, "qb", "no idea", "r3", "demo:1", "eval-2"),
        (c, "qc", c.answer_sentence, "r4", "demo:1", "eval-3"),
    ]
    assert heldout_accuracy(asked, answers, {a.id, b.id}) == (Accuracy(1, 3), Accuracy(1, 1))


def test_accuracy_lines_align() -> None:
    assert str(Accuracy(5, 48)) == "5/48 = 10%"
    assert str(Accuracy(0, 0)) == "0/0 = -"
    line = heldout_text(Accuracy(5, 48), Accuracy(20, 72))
    assert line == "corrected facts 5/48 = 10%    uncorrected facts 20/72 = 28%"
    wider = heldout_text(Accuracy(47, 47), Accuracy(1, 68))
    assert wider.index("uncorrected") == line.index("uncorrected")


def test_phase_seconds_from_a_history_entry() -> None:
    assert phase_seconds(ENTRY) == pytest.approx(
        {"publish": 21.4, "fine-tune": 179.6, "evaluate": 61.0, "canary": 52.0}
    )
    rejected = {k: v for k, v in ENTRY.items() if k != "canary_started_at"}
    assert list(phase_seconds(rejected)) == ["publish", "fine-tune", "evaluate"]


def test_cycle_text() -> None:
    assert (
        cycle_text(316.0, phase_seconds(ENTRY))
        == "316s from trigger to outcome: publish 21s, fine-tune 180s, evaluate 61s, canary 52s"
    )
    assert cycle_text(12.0, {}) == "12s from trigger to outcome"
    assert LoopActResult("no cycle finished in time").cycle is None


class _Registry:
    def lineage(self, ref: str) -> list[dict[str, Any]]:
        return []


def test_report_asks_every_heldout_question_as_eval_and_rates_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, str, int]] = []

    async def ask(served: Any, model: str, items: list, user: str, **_: Any) -> list[tuple]:
        asked.append((model, user, len(items)))
        # The child knows the corrected facts, the parent nothing.
        knows = world.FACTS[:24] if model == "demo:2" else ()
        return [
            (f, q, f.answer_sentence if f in knows else "?", "id", model, f"{user}-{i}")
            for i, (f, q) in enumerate(items)
        ]

    async def rate(*_: Any, **__: Any) -> int:
        raise AssertionError("the held-out answers must not be rated")

    monkeypatch.setattr(loop_act, "ask", ask)
    monkeypatch.setattr(loop_act, "rate", rate)
    progress = Progress("demo", stream=io.StringIO())
    result = loop_act._report(progress, _Registry(), None, "demo:1", ENTRY, 24)
    n = sum(len(f.heldout_questions) for f in world.FACTS)
    assert asked == [("demo:1", "eval", n), ("demo:2", "eval", n)]
    corrected = sum(len(f.heldout_questions) for f in world.FACTS[:24])
    assert result.corrected == {
        "demo:1": Accuracy(0, corrected),
        "demo:2": Accuracy(corrected, corrected),
    }
    assert result.uncorrected == {v: Accuracy(0, n - corrected) for v in ("demo:1", "demo:2")}
    assert result.cycle_s == 316.0 and result.phases_s == phase_seconds(ENTRY)
    assert "the cycle took 316s" in progress.stream.getvalue()
