"""Drift between what a model was trained on and what it is asked: pure.

A :class:`WordProfile` is a word-frequency profile (top words plus an "other" bucket) and the
length distribution of a set of texts. :func:`drift_score` compares a live profile with the
reference from the training snapshot: the Jensen-Shannon divergence of the word
distributions (0 to 1, base 2) averaged with a bounded length shift. The reference of a
snapshot (:func:`reference_profile`) is computed once and cached.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core import storage
from core.storage import Location
from schemas.storage import StorageSettings

_WORD = re.compile(r"[a-z0-9]+")
OTHER = "\0other"


@dataclass
class WordProfile:
    counts: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)

    def add(self, text: str) -> None:
        words = _WORD.findall(text.lower())
        self.counts.update(words)
        self.lengths.append(len(words))

    def top(self, k: int = 5000) -> WordProfile:
        """A bounded copy: the k most common words, the rest in one bucket."""
        keep = Counter(dict(self.counts.most_common(k)))
        rest = sum(self.counts.values()) - sum(keep.values())
        if rest:
            keep[OTHER] = rest
        return WordProfile(keep, self.lengths[-5000:])

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "lengths": self.lengths}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WordProfile:
        return cls(Counter(data["counts"]), list(data["lengths"]))


def profile(texts: Iterable[str]) -> WordProfile:
    p = WordProfile()
    for text in texts:
        p.add(text)
    return p


def js_divergence(reference: Counter, live: Counter) -> float:
    """Jensen-Shannon divergence (base 2) of two word counts; live words the reference does
    not know count as the reference's "other" bucket."""
    known = set(reference)
    folded = Counter()
    for word, n in live.items():
        folded[word if word in known else OTHER] += n
    total_r, total_l = sum(reference.values()), sum(folded.values())
    if not total_r or not total_l:
        return 0.0
    score = 0.0
    for word in known | set(folded):
        p, q = reference.get(word, 0) / total_r, folded.get(word, 0) / total_l
        m = (p + q) / 2
        score += 0.5 * (_term(p, m) + _term(q, m))
    return min(1.0, max(0.0, score))


def _term(p: float, m: float) -> float:
    return p * math.log2(p / m) if p > 0 else 0.0


def length_shift(reference: list[int], live: list[int]) -> float:
    """|mean difference| / reference spread, squashed into [0, 1)."""
    if not reference or not live:
        return 0.0
    mean_r = sum(reference) / len(reference)
    spread = math.sqrt(sum((x - mean_r) ** 2 for x in reference) / len(reference)) or 1.0
    z = abs(sum(live) / len(live) - mean_r) / spread
    return z / (1 + z)


def drift_score(reference: WordProfile, live: WordProfile) -> dict[str, float]:
    words = js_divergence(reference.counts, live.counts)
    lengths = length_shift(reference.lengths, live.lengths)
    return {
        "score": round((words + lengths) / 2, 4),
        "words_js": round(words, 4),
        "length_shift": round(lengths, 4),
    }


def reference_profile(
    snapshot_uri: str,
    cache: Location,
    settings: StorageSettings | None = None,
    max_docs: int = 2000,
) -> WordProfile:
    """Word profile of a training snapshot's documents (decoded), cached under ``cache``."""
    from core.data.snapshots import iter_documents, resolve_snapshot, snapshot_tokenizer

    snap, manifest = resolve_snapshot(snapshot_uri, settings)
    loc = cache.join(f"reference-{manifest.snapshot_id}.json")
    if storage.exists(loc):
        return WordProfile.from_json(storage.read_json(loc))
    tokenizer = snapshot_tokenizer(snap, manifest).tokenizer
    texts = []
    for ids in iter_documents(snap, manifest):
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        if len(texts) >= max_docs:
            break
    result = profile(texts).top(5000)
    storage.write_json(loc, result.to_json())
    return result
