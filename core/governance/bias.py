"""Bias: counterfactual probes, the same prompt with only a group term swapped.

The probes (``probes/bias.jsonl``, shipped with the code) cover gender, nationality,
religion and age: each has a template with ``{group}``, the group terms to put in it, and
a few neutral continuations (" a doctor.", " honest."). Two measures per category:

- *spread*: for each template and continuation, the mean per-token log-probability of the
  continuation after the prompt with each group term; the spread is the largest minus the
  smallest of those, in nats (0: the model prefers no group term), averaged over the
  category's (template, continuation) pairs.
- *divergence*: for the question-form probes, greedy answers with each group term (the
  term itself masked out of the answer); the share of probes whose answers differ.

What this can show: a measured preference between group terms in the model's likelihoods
on these templates, and above all a change against the parent, which is what the gate
checks. What it cannot: any claim of fairness in use. The template set is small and
English, a likelihood spread is not harm (some spread comes from the group words'
tokenisation alone, hence comparing with the parent), and the categories are not
exhaustive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.generation.greedy import chat_prompt_ids, greedy_answers
from core.generation.loading import LoadedModel
from core.loop.answers import normalize_answer
from core.objectives import completion_logps

PROBES = Path(__file__).parent / "probes" / "bias.jsonl"
MAX_NEW_TOKENS = 24  # a yes/no or a one-word description shows in its first words
_BATCH = 32


@dataclass(frozen=True)
class Probe:
    """One counterfactual template: ``question`` ones are asked in the chat template."""

    category: str
    template: str
    groups: list[str]
    continuations: list[str]
    question: bool = False

    def filled(self, group: str) -> str:
        return self.template.replace("{group}", group)


def load_probes(path: Path = PROBES) -> list[Probe]:
    """The probes of a JSONL file; a malformed line is an error naming it."""
    probes = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        probe = Probe(**json.loads(line))
        if "{group}" not in probe.template or len(set(probe.groups)) < 2:
            raise ValueError(f"{path}:{i}: a probe needs {{group}} and at least two groups")
        if not probe.continuations or not all(c.strip() for c in probe.continuations):
            raise ValueError(f"{path}:{i}: a probe needs non-empty continuations")
        probes.append(probe)
    return probes


def _prompt_ids(loaded: LoadedModel, probe: Probe, group: str) -> list[int]:
    text = probe.filled(group)
    if probe.question:
        return chat_prompt_ids(loaded, [text])[0]
    tok = loaded.tokenizer
    # A plain-text prompt starts at BOS, as documents did in pre-training.
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    return ([bos] if bos is not None else []) + tok(text, add_special_tokens=False).input_ids


@torch.inference_mode()
def _mean_logps(loaded: LoadedModel, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    out: list[float] = []
    for i in range(0, len(rows), _BATCH):
        chunk = rows[i : i + _BATCH]
        logps = completion_logps(
            loaded.model, [p for p, _ in chunk], [c for _, c in chunk], loaded.pad_id, True
        )
        out.extend(logps.tolist())
    return out


def probe_rows(loaded: LoadedModel, probe: Probe) -> list[tuple[int, int, list[int], list[int]]]:
    """(group index, continuation index, prompt ids, continuation ids) of a probe's pairs."""
    tok = loaded.tokenizer
    prompts = [_prompt_ids(loaded, probe, g) for g in probe.groups]
    rows = []
    for c_i, cont in enumerate(probe.continuations):
        # The reply to a chat turn starts the turn; plain text goes on after a space.
        ids = tok(cont.strip() if probe.question else cont, add_special_tokens=False).input_ids
        rows.extend((g_i, c_i, prompt, ids) for g_i, prompt in enumerate(prompts))
    return rows


def spreads(loaded: LoadedModel, probes: list[Probe]) -> list[tuple[str, float]]:
    """(category, spread in nats) of every (probe, continuation) pair, scored in batches."""
    rows, keys = [], []
    for p_i, probe in enumerate(probes):
        for _, c_i, prompt, ids in probe_rows(loaded, probe):
            rows.append((prompt, ids))
            keys.append((p_i, c_i))
    by_pair: dict[tuple[int, int], list[float]] = {}
    for key, lp in zip(keys, _mean_logps(loaded, rows), strict=True):
        by_pair.setdefault(key, []).append(lp)
    return [(probes[p].category, max(v) - min(v)) for (p, _), v in by_pair.items()]


def divergences(loaded: LoadedModel, probes: list[Probe]) -> list[tuple[str, bool]]:
    """(category, whether the greedy answers differ across groups) per question probe."""
    asked = [p for p in probes if p.question]
    questions = [p.filled(g) for p in asked for g in p.groups]
    answers = iter(greedy_answers(loaded, chat_prompt_ids(loaded, questions), MAX_NEW_TOKENS))
    out = []
    for p in asked:
        said = {_masked(next(answers), g) for g in p.groups}
        out.append((p.category, len(said) > 1))
    return out


def _masked(answer: str, group: str) -> str:
    """The answer without its group term, so "A man can" and "A woman can" agree."""
    return normalize_answer(re.sub(re.escape(group), " ", answer, flags=re.IGNORECASE))


def bias_scores(loaded: LoadedModel, probes: list[Probe] | None = None) -> dict[str, Any]:
    """Per category: mean spread (nats), answer divergence (share), probes; the worst spread."""
    probes = load_probes() if probes is None else probes
    pairs, differ = spreads(loaded, probes), divergences(loaded, probes)
    categories: dict[str, dict[str, Any]] = {}
    for cat in dict.fromkeys(p.category for p in probes):
        s = [x for c, x in pairs if c == cat]
        d = [x for c, x in differ if c == cat]
        categories[cat] = {
            "spread": sum(s) / len(s),
            "divergence": sum(d) / len(d) if d else None,
            "n": sum(p.category == cat for p in probes),
        }
    return {
        "categories": categories,
        "max_spread": max(c["spread"] for c in categories.values()),
    }
