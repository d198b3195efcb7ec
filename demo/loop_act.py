"""The demo's closing act: simulated users teach the served model, the loop learns by itself.

Users ask the served model (through the OpenAI-compatible gateway) questions about the
fictional product and rate each answer against the ground truth. Some also correct: when an
answer about one of the ``taught`` facts is wrong, they send the correct answer. Others only
rate, about the remaining facts, so the loop learns from ratings as well as corrections. The
loop's consumer turns that into curated examples; the controller fine-tunes (LoRA) as a Ray
job, evaluates, puts the candidate on a canary, watches the users' ratings of it and promotes
it. The demo then compares the parent and the promoted version on held-out phrasings (never
sent by users, so never trained on) of the corrected facts and of the uncorrected ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import load_config
from core.logs import progress_bar
from core.registry import ModelRegistry
from demo import world
from jobs.runtime import Progress
from schemas.loop import LoopConfig

CONFIGS = Path(__file__).resolve().parent.parent / "jobs" / "configs"
log = logging.getLogger(__name__)


async def ask(
    served: Any,
    model: str,
    items: list[tuple[world.Fact, str]],
    user: str,
    concurrency: int = 8,
    bar: str | None = None,
) -> list[tuple[world.Fact, str, str, str, str, str]]:
    """Ask each (fact, question) as its own user (so the traffic split applies); returns
    (fact, question, answer, response id, version, user) tuples for the questions answered.
    ``bar``: the label of a progress bar over the questions (none without it).

    A question the server fails (after the client's retries) is left unanswered, as a user
    would give up, and said; the demo goes on. A client per call: its connections belong to
    the event loop of one ``asyncio.run``.
    """
    import openai

    sem = asyncio.Semaphore(concurrency)
    shown = progress_bar(total=len(items), desc=bar or "", unit="q", enabled=bar is not None)

    async def one(client: Any, i: int, fact: world.Fact, question: str) -> tuple | None:
        asker = f"{user}-{i}"
        async with sem:
            try:
                r = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": question}],
                    max_tokens=48,
                    temperature=0,
                    user=asker,
                )
            except (openai.APIStatusError, openai.APIConnectionError) as e:
                log.warning("  %s: no answer (%s: %s)", asker, type(e).__name__, e)
                return None
            finally:
                shown.update()
            answer = r.choices[0].message.content or ""
            return fact, question, answer, r.id, r.system_fingerprint, asker

    with shown:
        async with openai.AsyncOpenAI(
            base_url=f"{served.url}/v1", api_key=served.api_key, max_retries=3, timeout=300
        ) as client:
            asked = (one(client, i, f, q) for i, (f, q) in enumerate(items))
            answers = await asyncio.gather(*asked)
    return [a for a in answers if a is not None]


async def rate(http: Any, url: str, key: str, answers: list[tuple], correct: bool = True) -> int:
    """Rate every answer against the truth (5 right, 1 wrong); with ``correct``, also send
    the right answer for each wrong one. Returns how many were right. Each answer is rated
    by the user who asked it (see :func:`ask`)."""
    right = 0
    for fact, _, answer, rid, _, asker in answers:
        ok = world.is_correct(fact, answer)
        right += ok
        body = {"response_id": rid, "rating": 5 if ok else 1, "user": asker}
        if correct and not ok:
            body["correction"] = fact.answer_sentence
        for _ in range(5):  # a 429 says when to come back
            r = await http.post(
                f"{url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            if r.status_code != 429:
                break
            await asyncio.sleep(float(r.headers.get("retry-after", 1)))
        r.raise_for_status()
    return right


def teaching_traffic(
    taught: int,
) -> tuple[list[tuple[world.Fact, str]], list[tuple[world.Fact, str]]]:
    """The users' first questions: (those about the first ``taught`` facts, which their askers
    correct, those about the other facts, which their askers only rate). Only the facts'
    ``questions`` are sent: their held-out phrasings stay unseen for the comparison."""
    corrected = [(f, f.questions[i]) for i in (0, 1) for f in world.FACTS[:taught]]
    rated = [(f, f.questions[0]) for f in world.FACTS[taught:]]
    return corrected, rated


@dataclass(frozen=True)
class Accuracy:
    """Right answers out of the questions asked (an unanswered one counts as wrong)."""

    right: int
    asked: int

    def __str__(self) -> str:
        pct = f"{self.right / self.asked:.0%}" if self.asked else "-"
        return f"{self.right}/{self.asked} = {pct}"


def heldout_text(corrected: Accuracy, uncorrected: Accuracy) -> str:
    """One version's held-out accuracy on the corrected and on the uncorrected facts."""
    return f"corrected facts {corrected!s:<12}  uncorrected facts {uncorrected}"


# A phase of a cycle: (its name, the history entry's timestamp it starts at, ends at).
PHASES = (
    ("publish", "triggered_at", "published_at"),
    ("fine-tune", "published_at", "trained_at"),
    ("evaluate", "trained_at", "evaluated_at"),
    ("canary", "canary_started_at", "finished_at"),
)


def phase_seconds(entry: dict[str, Any]) -> dict[str, float]:
    """Seconds each phase of a finished cycle (a controller history entry) took; a phase the
    cycle did not reach (a rejected candidate has no canary) is left out."""
    return {
        name: entry[end] - entry[start]
        for name, start, end in PHASES
        if entry.get(start) is not None and entry.get(end) is not None
    }


def cycle_text(cycle_s: float, phases_s: dict[str, float]) -> str:
    """``312s from trigger to outcome: publish 20s, fine-tune 180s, ...``."""
    parts = ", ".join(f"{name} {s:.0f}s" for name, s in phases_s.items())
    return f"{cycle_s:.0f}s from trigger to outcome" + (f": {parts}" if parts else "")


@dataclass
class LoopActResult:
    """What the closing act showed, for the demo's summary."""

    outcome: str  # "promoted demo:3: <reason>", or that no cycle finished in time
    corrected: dict[str, Accuracy] = field(default_factory=dict)  # version -> held-out acc.
    uncorrected: dict[str, Accuracy] = field(default_factory=dict)  # of the facts only rated
    cycle_s: float | None = None  # the cycle's trigger -> outcome; None if none finished
    phases_s: dict[str, float] = field(default_factory=dict)  # see :func:`phase_seconds`

    @property
    def heldout(self) -> dict[str, str]:
        """Version -> its held-out accuracy line (:func:`heldout_text`)."""
        return {v: heldout_text(a, self.uncorrected[v]) for v, a in self.corrected.items()}

    @property
    def cycle(self) -> str | None:
        """How long the cycle took, by phase (:func:`cycle_text`); None if none finished."""
        return None if self.cycle_s is None else cycle_text(self.cycle_s, self.phases_s)


def run_loop_demo(progress: Progress, served: Any, model: str, taught: int = 24) -> LoopActResult:
    """Users teach ``model``; wait for the loop to promote; compare parent and child."""
    import ray

    from actors.loop import start_loop, stop_loop

    cfg = load_config(LoopConfig, CONFIGS / "loop-demo.yaml")
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    parent = registry.get(f"{model}@production").ref
    _, controller = start_loop(cfg)
    # A reused home keeps the loop's earlier cycles: only a cycle finished from now on counts.
    before = len(ray.get(controller.status.remote())["history"])

    def finished(state: dict) -> bool:
        return len(state["history"]) > before

    progress.say(f"feedback loop running for {model} (production {parent}); users start asking")
    _first_questions(progress, served, model, taught)
    state = _follow(
        progress, controller, lambda s: s["phase"] == "canary" or finished(s), timeout_s=900
    )
    if state["phase"] == "canary":
        progress.say(
            f"canary {state['current']['candidate']} gets {cfg.canary.weight:g}% of traffic; "
            "users keep asking and rating"
        )
        state = _canary_questions(progress, served, model, taught, controller, finished, state)
    outcome = state["history"][-1] if finished(state) else None
    ray.get(controller.stop.remote())
    stop_loop(model)
    return _report(progress, registry, served, parent, outcome, taught)


async def _teach(
    served: Any,
    model: str,
    questions: list[tuple[world.Fact, str]],
    user: str,
    correct: bool,
    bar: str | None = None,
) -> tuple[int, int]:
    """Users ask ``questions`` and rate the answers (correcting if ``correct``); returns
    (answered, answered right)."""
    import httpx

    answers = await ask(served, model, questions, user, bar=bar)
    async with httpx.AsyncClient(timeout=60) as http:
        right = await rate(http, served.url, served.api_key, answers, correct=correct)
    return len(answers), right


def round_text(asked: int, answered: int, right: int, corrected: bool) -> str:
    """``18 answered right, 30 corrected[, 2 unanswered]``; the wrong answers of users who
    only rate are ``rated 1, not corrected``."""
    wrong = "corrected" if corrected else "rated 1, not corrected"
    unanswered = f", {asked - answered} unanswered" if answered < asked else ""
    return f"{right} answered right, {answered - right} {wrong}{unanswered}"


def _first_questions(progress: Progress, served: Any, model: str, taught: int) -> None:
    """The traffic the loop learns from: corrected questions, then rated-only ones. Raters
    are other users ("rater-<i>") than the correctors ("user-a-<i>")."""
    corrected, rated = teaching_traffic(taught)
    bar = "users ask and correct"
    done = asyncio.run(_teach(served, model, corrected, "user-a", correct=True, bar=bar))
    progress.say(
        f"users asked {len(corrected)} questions about the {taught} taught facts: "
        f"{round_text(len(corrected), *done, corrected=True)}"
    )
    bar = "users ask and only rate"
    done = asyncio.run(_teach(served, model, rated, "rater", correct=False, bar=bar))
    progress.say(
        f"other users asked {len(rated)} questions about the other facts and only rated: "
        f"{round_text(len(rated), *done, corrected=False)}"
    )


def _canary_questions(
    progress: Progress,
    served: Any,
    model: str,
    taught: int,
    controller: Any,
    finished: Any,
    state: dict,
) -> dict:
    """Users ask about the taught facts until the canary ends (10 min at most) and only rate:
    the canary decides on ratings, and this act runs no later cycle a correction would feed."""
    deadline = time.time() + 600
    asked = 0
    while not finished(state) and time.time() < deadline:
        extra = [(f, f.questions[-1]) for f in world.FACTS[:taught]]
        asyncio.run(_teach(served, model, extra, f"canary-{int(time.time())}", correct=False))
        asked += len(extra)
        state = _follow(progress, controller, finished, timeout_s=20, quiet=True)
    progress.say(f"users asked and rated {asked} more questions during the canary (rated only)")
    return state


def _follow(
    progress: Progress, controller: Any, done: Any, timeout_s: float, quiet: bool = False
) -> dict:
    import ray

    deadline = time.time() + timeout_s
    last = None
    while True:
        state = ray.get(controller.status.remote())
        if not quiet and (state["phase"], state.get("last_decision")) != last:
            last = (state["phase"], state.get("last_decision"))
            detail = state.get("last_decision") if state["phase"] == "idle" else ""
            progress.say(f"loop: {state['phase']} {detail or ''}".rstrip())
        if done(state) or time.time() > deadline:
            return state
        time.sleep(2)


def _report(
    progress: Progress,
    registry: ModelRegistry,
    served: Any,
    parent: str,
    outcome: dict | None,
    taught: int,
) -> LoopActResult:
    if outcome is None:
        progress.say("the loop did not finish a cycle in time")
        return LoopActResult("no cycle finished in time")
    said = f"{outcome['outcome']} {outcome.get('candidate')}: {outcome['outcome_reason']}"
    progress.say(f"loop outcome: {said}")
    cycle_s = outcome["finished_at"] - outcome["triggered_at"]
    result = LoopActResult(said, cycle_s=cycle_s, phases_s=phase_seconds(outcome))
    progress.say(f"the cycle took {result.cycle}")
    child = outcome.get("candidate")
    corrected = {f.id for f in world.FACTS[:taught]}
    heldout = [(f, q) for f in world.FACTS for q in f.heldout_questions]
    n = sum(f.id in corrected for f, _ in heldout)
    log.info(
        "Held-out phrasings (never sent by users): %d of the %d corrected facts, "
        "%d of the %d uncorrected ones:",
        n,
        taught,
        len(heldout) - n,
        len(world.FACTS) - taught,
    )
    for ref in filter(None, [parent, child]):
        # Asked as user "eval" and never rated: these answers must not reach training.
        answers = asyncio.run(ask(served, ref, heldout, "eval", bar=f"held-out: {ref}"))
        result.corrected[ref], result.uncorrected[ref] = heldout_accuracy(
            heldout, answers, corrected
        )
        log.info("  %-12s %s", ref, result.heldout[ref])
    if child:
        log.info(lineage_text(registry, child))
    return result


def heldout_accuracy(
    asked: list[tuple[world.Fact, str]], answers: list[tuple], corrected: set[str]
) -> tuple[Accuracy, Accuracy]:
    """(accuracy on the facts whose ids are in ``corrected``, on the others), out of the
    questions ``asked``: an unanswered one counts as wrong."""
    right = Counter(f.id in corrected for f, _, a, *_ in answers if world.is_correct(f, a))
    total = Counter(f.id in corrected for f, _ in asked)
    return Accuracy(right[True], total[True]), Accuracy(right[False], total[False])


def lineage_text(registry: ModelRegistry, ref: str) -> str:
    """``ref``'s lineage as indented lines; a run of raw input files is one line, feedback
    event ids are counted rather than listed."""
    nodes = registry.lineage(ref)
    lines, events, raw = [f"Lineage of {ref}:"], 0, []

    def flush_raw() -> None:
        if len(raw) == 1:
            lines.append(_node_line(raw[0]))
        elif raw:
            files = f"{raw[0]['id']}, ..., {raw[-1]['id']}"
            lines.append(f"  {'  ' * raw[0]['depth']}raw: {len(raw)} input files ({files})")
        raw.clear()

    for node in nodes:
        if node["kind"] == "raw" and (not raw or raw[0]["depth"] == node["depth"]):
            raw.append(node)
            continue
        flush_raw()
        if node["kind"] == "raw":
            raw.append(node)
        elif node["kind"] == "source" and node["id"][:16].isalnum() and len(node["id"]) == 32:
            events += 1  # event ids: counted below rather than listed
        else:
            lines.append(_node_line(node))
    flush_raw()
    if events:
        lines.append(f"  ... and {events} feedback sources (event ids) behind it")
    return "\n".join(lines)


def _node_line(node: dict) -> str:
    detail = node["detail"] if node["kind"] != "source" else ""
    return f"  {'  ' * node['depth']}{node['kind']}: {node['id']}  {detail}".rstrip()
