"""Turning user corrections into training examples, and keeping attacks out: pure functions.

A correction (``Feedback.correction`` joined with the ``ServedOutput`` it rates) becomes a
supervised example: the served prompt (already rendered with the model's chat template)
followed by the corrected answer, and a preference pair: the correction chosen over the
served answer it corrects. A rating of a served answer becomes a KTO example: desirable when
its raters mostly gave 4-5, undesirable at 1-2 (:func:`curate_ratings`). Before anything is
trained on:

- PII is redacted (again: the event writer redacts too, curation must not depend on it);
- duplicates (the same prompt and the same answer, compared as
  :func:`core.loop.answers.normalize_answer` tokens) collapse into one example that keeps
  every source event id;
- feedback that looks like an attack on the model is quarantined with a reason and never
  trained on: ``instruction`` (text aimed at the model: "ignore previous instructions",
  role tags, special tokens), ``link`` (URLs), ``spam`` (repetition, shouting, oversize),
  ``flood`` (one user sending a large share of the corrections), ``outlier`` (a correction
  that contradicts the consensus of other users on the same prompt).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.data.pii import PiiRedactor
from core.loop.answers import normalize_answer

_INSTRUCTION = re.compile(
    r"ignore (all |any |the )?(previous|prior|above|earlier) (instructions|prompts?|rules)"
    r"|disregard (all |any |the )?(previous|prior|above|your) "
    r"|you are (now|no longer)\b|pretend (to be|you are)|act as (an?|the) "
    r"|system prompt|jailbreak|developer mode|do anything now"
    r"|<\|[a-z_]+\|>|\[/?inst\]|<</?sys>>|^\s*(system|assistant)\s*:",
    re.IGNORECASE | re.MULTILINE,
)
_LINK = re.compile(
    r"https?://|www\.|\b[a-z0-9-]+\.(com|net|org|io|ru|xyz|info|biz)\b", re.IGNORECASE
)
_REPEAT = re.compile(r"(.)\1{9,}|(\b\w+\b)(\W+\2\b){4,}", re.IGNORECASE)


@dataclass(frozen=True)
class CurationConfig:
    """Thresholds of the quarantine rules."""

    max_chars: int = 2000
    max_caps_ratio: float = 0.6
    flood_min_items: int = 8
    flood_max_share: float = 0.4
    consensus_min_votes: int = 2


@dataclass
class Candidate:
    """A correction joined with what was served."""

    prompt: str
    answer: str
    user: str | None
    event_ids: list[str]
    model_version: str
    rejected: str | None = None  # the served answer the correction replaces


@dataclass
class Example:
    """A curated supervised example and the events it came from."""

    prompt: str
    answer: str
    event_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # served answers it corrects

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.prompt}\0{self.answer}".encode()).hexdigest()[:16]


@dataclass
class Quarantined:
    """A correction that is not trained on, and why."""

    reason: str
    prompt: str
    answer: str
    user: str | None
    event_ids: list[str]


def text_reason(answer: str, cfg: CurationConfig) -> str | None:
    """Why one correction's text is unfit to train on, or None."""
    if _INSTRUCTION.search(answer):
        return "instruction"
    if _LINK.search(answer):
        return "link"
    letters = [c for c in answer if c.isalpha()]
    shouting = len(letters) >= 12 and sum(c.isupper() for c in letters) / len(letters)
    if len(answer) > cfg.max_chars or _REPEAT.search(answer) or shouting > cfg.max_caps_ratio:
        return "spam"
    if not answer.strip():
        return "spam"
    return None


def curate(
    candidates: Iterable[Candidate],
    cfg: CurationConfig | None = None,
    redactor: PiiRedactor | None = None,
) -> tuple[list[Example], list[Quarantined]]:
    """Curated examples (deduplicated, redacted) and the quarantined rest, deterministic."""
    cfg = cfg or CurationConfig()
    redactor = redactor or PiiRedactor()
    kept: list[Candidate] = []
    quarantined: list[Quarantined] = []
    for c in candidates:
        answer = redactor.redact(c.answer.strip())[0]
        prompt = redactor.redact(c.prompt)[0]
        reason = text_reason(answer, cfg)
        if reason:
            quarantined.append(Quarantined(reason, prompt, answer, c.user, c.event_ids))
        else:
            rejected = redactor.redact(c.rejected.strip())[0] if c.rejected else None
            kept.append(Candidate(prompt, answer, c.user, c.event_ids, c.model_version, rejected))
    kept, flooded = _drop_floods(kept, cfg)
    kept, outliers = _drop_outliers(kept, cfg)
    return _dedupe(kept), quarantined + flooded + outliers


def _drop_floods(items: list[Candidate], cfg: CurationConfig) -> tuple[list, list]:
    per_user = Counter(c.user for c in items if c.user)
    total = len(items)
    flooders = {
        u
        for u, n in per_user.items()
        if n >= cfg.flood_min_items and n / total > cfg.flood_max_share
    }
    keep = [c for c in items if c.user not in flooders]
    out = [
        Quarantined("flood", c.prompt, c.answer, c.user, c.event_ids)
        for c in items
        if c.user in flooders
    ]
    return keep, out


def _drop_outliers(items: list[Candidate], cfg: CurationConfig) -> tuple[list, list]:
    """On a prompt several users corrected, keep the answers the most users agree on."""
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in items:
        by_prompt[normalize_answer(c.prompt)].append(c)
    keep, out = [], []
    for group in by_prompt.values():
        votes: dict[str, set] = defaultdict(set)
        for c in group:
            votes[normalize_answer(c.answer)].add(c.user or c.event_ids[0])
        top = max(len(v) for v in votes.values())
        contested = len(votes) > 1 and top >= cfg.consensus_min_votes
        for c in group:
            if contested and len(votes[normalize_answer(c.answer)]) < top:
                out.append(Quarantined("outlier", c.prompt, c.answer, c.user, c.event_ids))
            else:
                keep.append(c)
    return keep, out


def _dedupe(items: list[Candidate]) -> list[Example]:
    examples: dict[tuple[str, str], Example] = {}
    for c in items:
        ex = examples.setdefault(
            (c.prompt, normalize_answer(c.answer)), Example(c.prompt, c.answer)
        )
        ex.event_ids.extend(c.event_ids)
        if c.user and c.user not in ex.users:
            ex.users.append(c.user)
        wrong = c.rejected and normalize_answer(c.rejected) != normalize_answer(c.answer)
        if wrong and normalize_answer(c.rejected) not in map(normalize_answer, ex.rejected):
            ex.rejected.append(c.rejected)
    return sorted(examples.values(), key=lambda e: e.key)


# ---------------------------------------------------------------------------------------------
# Ratings


@dataclass
class Rating:
    """A rating joined with the served answer it rates."""

    prompt: str
    completion: str
    rating: int
    user: str | None
    event_ids: list[str]
    model_version: str


@dataclass
class Rated:
    """A served answer and its raters' verdict: a KTO example."""

    prompt: str
    completion: str
    desirable: bool
    ratings: list[int] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        text = f"{self.prompt}\0{self.completion}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def curate_ratings(
    ratings: Iterable[Rating],
    cfg: CurationConfig | None = None,
    redactor: PiiRedactor | None = None,
) -> tuple[list[Rated], list[Quarantined]]:
    """KTO examples from ratings: one per (prompt, answer), by the majority of its raters.

    A 3, or as many good as bad ratings, says nothing and is dropped. An answer rated good
    passes the same text rules as a correction (it will be reinforced); one user's flood of
    ratings is quarantined as a flood of corrections is.
    """
    cfg = cfg or CurationConfig()
    redactor = redactor or PiiRedactor()
    kept: list[Candidate] = []
    quarantined: list[Quarantined] = []
    scores: dict[str, int] = {}
    for r in ratings:
        completion = redactor.redact(r.completion.strip())[0]
        prompt = redactor.redact(r.prompt)[0]
        reason = text_reason(completion, cfg) if r.rating >= 4 else None
        if reason:
            quarantined.append(Quarantined(reason, prompt, completion, r.user, r.event_ids))
            continue
        kept.append(Candidate(prompt, completion, r.user, r.event_ids, r.model_version))
        scores[r.event_ids[-1]] = r.rating
    kept, flooded = _drop_floods(kept, cfg)
    return _vote(kept, scores), quarantined + flooded


def _vote(items: list[Candidate], scores: dict[str, int]) -> list[Rated]:
    groups: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in items:
        groups[(c.prompt, normalize_answer(c.answer))].append(c)
    out = []
    for group in groups.values():
        ratings = [scores[c.event_ids[-1]] for c in group]
        good, bad = sum(r >= 4 for r in ratings), sum(r <= 2 for r in ratings)
        if good == bad:
            continue
        users = list(dict.fromkeys(c.user for c in group if c.user))
        ids = [i for c in group for i in c.event_ids]
        first = group[0]
        out.append(Rated(first.prompt, first.answer, good > bad, ratings, ids, users))
    return sorted(out, key=lambda r: r.key)
