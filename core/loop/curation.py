"""Turning user corrections into training examples, and keeping attacks out: pure functions.

A correction (``Feedback.correction`` joined with the ``ServedOutput`` it rates) becomes a
supervised example: the served prompt (already rendered with the model's chat template)
followed by the corrected answer, and a preference pair: the correction chosen over the
served answer it corrects. A rating of a served answer becomes a KTO example: desirable when
its raters mostly gave 4-5, undesirable at 1-2 (:func:`curate_ratings`). Before anything is
trained on:

- answers (corrections, the served answers they reject, rated completions) are put in
  ingest's normal form (``core.data.text.clean_text``), so training sees the corpus's form;
  prompts stay as served (the rendered chat template the model saw);
- PII is redacted (again: the event writer redacts too, curation must not depend on it);
- duplicates (the same prompt and the same answer, compared as
  :func:`core.loop.answers.normalize_answer` tokens) collapse into one example that keeps
  every source event id;
- feedback that looks like an attack on the model is quarantined with a reason and never
  trained on: ``instruction`` (text aimed at the model: "ignore previous instructions",
  role tags, special tokens), ``link`` (URLs), ``spam`` (repetition, shouting, oversize),
  ``flood`` (one principal sending a large share of the corrections), ``outlier`` (a
  correction that contradicts the consensus of other principals on the same prompt). The
  rules read :func:`check_view`, which undoes disguises (fullwidth and homoglyph letters,
  zero-width characters, defanged links). ``instruction`` and ``link`` also apply to what the
  client wrote in the prompt (``core.loop.rules``, where the rules are).

A principal is who the gateway says sent the feedback (``user``: the API key id, or key id and
pseudonymised user for keys trusted to name their users). Floods and votes count principals,
and events without one all count as one principal, so anonymous sock puppets are one voice.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from core.data.pii import PiiRedactor
from core.data.text import clean_text
from core.loop.answers import normalize_answer
from core.loop.rules import CurationConfig, check_view, prompt_reason, text_reason

__all__ = ["CurationConfig", "check_view", "curate", "curate_ratings", "text_reason"]


@dataclass
class Candidate:
    """A correction joined with what was served."""

    prompt: str
    answer: str
    user: str | None
    event_ids: list[str]
    model_version: str
    rejected: str | None = None  # the served answer the correction replaces
    # What the client wrote (message contents or the completion prompt), joined by newlines;
    # the prompt adds the chat template. None for events from before it was recorded.
    user_text: str | None = None


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
        # Answers in ingest's normal form, as the corpus is; the prompt is kept as served (it
        # is the rendered template the model saw, clean_text would change it).
        answer = _trained_form(c.answer, redactor)
        prompt = redactor.redact(c.prompt)[0]
        reason = text_reason(answer, cfg) or prompt_reason(prompt, c.user_text)
        if reason:
            quarantined.append(Quarantined(reason, prompt, answer, c.user, c.event_ids))
        else:
            rejected = _trained_form(c.rejected, redactor) if c.rejected else None
            kept.append(
                Candidate(
                    prompt, answer, c.user, c.event_ids, c.model_version, rejected, c.user_text
                )
            )
    kept, flooded = _drop_floods(kept, cfg)
    kept, outliers = _drop_outliers(kept, cfg)
    return _dedupe(kept), quarantined + flooded + outliers


def _trained_form(answer: str, redactor: PiiRedactor) -> str:
    """An answer as it is trained on: ingest's normal form, PII redacted."""
    return redactor.redact(clean_text(answer))[0]


# Who events without a principal count as: all of them together, one principal. Counting
# each such event as its own voice let anonymous sock puppets outvote named users. (A NUL
# keeps it apart from any id the gateway issues.)
ANONYMOUS = "\0anonymous"


def principal(user: str | None) -> str:
    """Whom an item counts for in floods and votes: its principal, or the shared anonymous."""
    return user or ANONYMOUS


def _drop_floods(items: list[Candidate], cfg: CurationConfig) -> tuple[list, list]:
    """Quarantine every item of a principal that sent a large share of them."""
    per_principal = Counter(principal(c.user) for c in items)
    total = len(items)
    flooders = {
        who
        for who, n in per_principal.items()
        if n >= cfg.flood_min_items and n / total > cfg.flood_max_share
    }
    keep = [c for c in items if principal(c.user) not in flooders]
    out = [
        Quarantined("flood", c.prompt, c.answer, c.user, c.event_ids)
        for c in items
        if principal(c.user) in flooders
    ]
    return keep, out


def _drop_outliers(items: list[Candidate], cfg: CurationConfig) -> tuple[list, list]:
    """On a prompt several principals corrected, keep the answers most principals agree on."""
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in items:
        by_prompt[normalize_answer(c.prompt)].append(c)
    keep, out = [], []
    for group in by_prompt.values():
        votes: dict[str, set] = defaultdict(set)
        for c in group:
            votes[normalize_answer(c.answer)].add(principal(c.user))
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
    # What the client wrote, as ``Candidate.user_text``.
    user_text: str | None = None


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
        completion = _trained_form(r.completion, redactor)
        prompt = redactor.redact(r.prompt)[0]
        # A bad rating trains on its prompt as well: the prompt rules apply to every rating.
        reason = text_reason(completion, cfg) if r.rating >= 4 else None
        reason = reason or prompt_reason(prompt, r.user_text)
        if reason:
            quarantined.append(Quarantined(reason, prompt, completion, r.user, r.event_ids))
            continue
        kept.append(
            Candidate(prompt, completion, r.user, r.event_ids, r.model_version, None, r.user_text)
        )
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
        # One vote per principal: the majority of its own ratings of this answer (a tie
        # abstains). Majority, not latest: the input order is not reliably time order, and
        # the verdict must not depend on it.
        own: dict[str, list[int]] = defaultdict(list)
        for c, rating in zip(group, ratings, strict=True):
            own[principal(c.user)].append(rating)
        leanings = [_leaning(mine) for mine in own.values()]
        good, bad = leanings.count(1), leanings.count(-1)
        if good == bad:
            continue
        users = list(dict.fromkeys(c.user for c in group if c.user))
        ids = [i for c in group for i in c.event_ids]
        first = group[0]
        out.append(Rated(first.prompt, first.answer, good > bad, ratings, ids, users))
    return sorted(out, key=lambda r: r.key)


def _leaning(ratings: list[int]) -> int:
    """1 when more of the ratings are good (4-5) than bad (1-2), -1 for the reverse, else 0."""
    good, bad = sum(r >= 4 for r in ratings), sum(r <= 2 for r in ratings)
    return (good > bad) - (bad > good)
