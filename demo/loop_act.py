"""The demo's closing act: simulated users teach the served model, the loop learns by itself.

Users ask the served model (through the OpenAI-compatible gateway) questions about the
fictional product, rate each answer against the ground truth and, when it is wrong, send
the correct answer as a correction. The loop's consumer turns that into curated examples;
the controller fine-tunes (LoRA) as a Ray job, evaluates, puts the candidate on a canary,
watches the users' ratings of it and promotes it. The demo then compares the parent and the
promoted version on held-out phrasings of the corrected facts.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


async def rate(http: Any, url: str, key: str, answers: list[tuple]) -> int:
    """Rate every answer against the truth; correct the wrong ones. Returns how many right.
    Each answer is rated by the user who asked it (see :func:`ask`)."""
    right = 0
    for fact, _, answer, rid, _, asker in answers:
        ok = world.is_correct(fact, answer)
        right += ok
        body = {"response_id": rid, "rating": 5 if ok else 1, "user": asker}
        if not ok:
            body["correction"] = fact.answer_sentence
        r = await http.post(
            f"{url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        r.raise_for_status()
    return right


@dataclass
class LoopActResult:
    """What the closing act showed, for the demo's summary."""

    outcome: str  # "promoted demo:3: <reason>", or that no cycle finished in time
    heldout: dict[str, str] = field(default_factory=dict)  # version -> "right/asked = pct"


def run_loop_demo(progress: Progress, served: Any, model: str, taught: int = 24) -> LoopActResult:
    """Users teach ``model``; wait for the loop to promote; compare parent and child."""
    import httpx
    import ray

    from actors.loop import start_loop, stop_loop

    cfg = load_config(LoopConfig, CONFIGS / "loop-demo.yaml")
    registry = ModelRegistry(cfg.registry_uri, cfg.storage)
    parent = registry.get(f"{model}@production").ref
    facts = list(world.FACTS[:taught])
    _, controller = start_loop(cfg)
    # A reused home keeps the loop's earlier cycles: only a cycle finished from now on counts.
    before = len(ray.get(controller.status.remote())["history"])

    def finished(state: dict) -> bool:
        return len(state["history"]) > before

    progress.say(f"feedback loop running for {model} (production {parent}); users start asking")

    async def teach_round(
        questions: list[tuple[world.Fact, str]], user: str, bar: str | None = None
    ) -> tuple[int, int]:
        answers = await ask(served, model, questions, user, bar=bar)
        async with httpx.AsyncClient(timeout=60) as http:
            return len(answers), await rate(http, served.url, served.api_key, answers)

    rounds = [(f, f.questions[i]) for i in (0, 1) for f in facts]
    answered, right = asyncio.run(teach_round(rounds, "user-a", bar="users ask and rate"))
    unanswered = f", {len(rounds) - answered} unanswered" if answered < len(rounds) else ""
    progress.say(
        f"users asked {len(rounds)} questions: {right} answered right, "
        f"{answered - right} corrected{unanswered}"
    )
    state = _follow(
        progress, controller, lambda s: s["phase"] == "canary" or finished(s), timeout_s=900
    )
    if state["phase"] == "canary":
        candidate = state["current"]["candidate"]
        progress.say(
            f"canary {candidate} gets {cfg.canary.weight:g}% of traffic; users keep "
            "asking and rating"
        )
        deadline = time.time() + 600
        asked = 0
        while not finished(state) and time.time() < deadline:
            extra = [(f, f.questions[-1]) for f in facts]
            asyncio.run(teach_round(extra, f"user-{int(time.time())}"))
            asked += len(extra)
            state = _follow(progress, controller, finished, timeout_s=20, quiet=True)
        progress.say(f"users asked and rated {asked} more questions during the canary")
    outcome = state["history"][-1] if finished(state) else None
    ray.get(controller.stop.remote())
    stop_loop(model)
    return _report(progress, registry, served, parent, outcome, facts)


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
    facts: list[world.Fact],
) -> LoopActResult:
    if outcome is None:
        progress.say("the loop did not finish a cycle in time")
        return LoopActResult("no cycle finished in time")
    said = f"{outcome['outcome']} {outcome.get('candidate')}: {outcome['outcome_reason']}"
    progress.say(f"loop outcome: {said}")
    result = LoopActResult(said)
    child = outcome.get("candidate")
    heldout = [(f, q) for f in facts for q in f.heldout_questions]
    log.info("Held-out questions about the corrected facts (%d):", len(heldout))
    for ref in filter(None, [parent, child]):
        answers = asyncio.run(ask(served, ref, heldout, "eval", bar=f"held-out: {ref}"))
        right = sum(world.is_correct(f, a) for f, _, a, *_ in answers)
        result.heldout[ref] = f"accuracy {right}/{len(heldout)} = {right / len(heldout):.0%}"
        log.info("  %-12s %s", ref, result.heldout[ref])
    if child:
        log.info(lineage_text(registry, child))
    return result


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
