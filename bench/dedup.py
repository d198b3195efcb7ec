"""Near-duplicate detection: precision and recall per threshold on a planted corpus.

    python bench/dedup.py                # 1,500 short documents, thresholds 0.60 to 0.85
    python bench/dedup.py --docs 400     # a quick look

The corpus is short documents (40 to 80 words, Zipf-distributed from a 3,000-word
vocabulary, seeded). Planted near duplicates of a document: one word replaced, two words
replaced, a sentence's worth of words appended. Planted *non*-duplicates: pairs that share a
long boilerplate (half a document) with different bodies, the false positives templated
text (tickets, product pages) invites. Every arm runs the project's own MinHash, LSH
banding and verification (``core.data.dedup``) at one threshold, with the bands and rows
``lsh_params`` picks for it, plus datatrove's default banding (14 bands x 8 rows, 112
permutations) as a reference arm. Prints JSON: per arm and kind of planted pair, recall;
precision over all pairs found; the true Jaccard of each kind; and the threshold the
defaults should use: the most recall with no boilerplate pair found.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.dedup import MinHasher, band_hashes, candidate_pairs, lsh_params, near_duplicates

EDITS = ("one_word", "two_words", "appended")


def _words(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, n), len(vocab)) - 1
    return [vocab[r] for r in ranks]


def planted_corpus(docs: int, seed: int) -> tuple[list[str], dict[tuple[int, int], str]]:
    """Texts and the planted pairs (index a < b) -> kind: an edit kind or "boilerplate"."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts, pairs = [], {}
    for _ in range(docs):
        base = _words(rng, vocab, int(rng.integers(40, 81)))
        i = len(texts)
        texts.append(" ".join(base))
        kind = EDITS[int(rng.integers(0, len(EDITS)))] if rng.random() < 0.5 else None
        if kind is None:
            continue
        edited = list(base)
        for pos in rng.choice(len(base), 1 if kind == "one_word" else 2, replace=False):
            edited[pos] = f"x{rng.integers(1 << 30)}"  # a word found nowhere else
        if kind == "appended":
            edited = base + _words(rng, vocab, 8)
        pairs[(i, len(texts))] = kind
        texts.append(" ".join(edited))
    for i in range(docs // 5):  # shared boilerplate: similar-looking, not duplicates
        share = (0.5, 0.6, 0.7)[i % 3]
        n = int(rng.integers(40, 81))
        shared = _words(rng, vocab, int(share * n))
        a = len(texts)
        texts += [" ".join(shared + _words(rng, vocab, n - len(shared))) for _ in range(2)]
        pairs[(a, a + 1)] = "boilerplate"
    return texts, pairs


def jaccard(a: str, b: str, k: int = 5) -> float:
    """True Jaccard similarity of two texts' word ``k``-shingles."""
    sa, sb = (
        {tuple(w[i : i + k]) for i in range(max(1, len(w) - k + 1))} for w in (a.split(), b.split())
    )
    return len(sa & sb) / len(sa | sb)


def run_arm(
    sigs: np.ndarray, threshold: float, bands: int, rows: int
) -> tuple[set[tuple[int, int]], float]:
    """Pairs found (by group: every member with its survivor) and seconds taken."""
    start = time.perf_counter()
    ordinals = np.arange(len(sigs), dtype=np.int64)
    keys = np.array([band_hashes(s[: bands * rows], bands, rows) for s in sigs], dtype=np.uint64)
    pairs = candidate_pairs(ordinals, keys)
    dropped = near_duplicates(pairs.tolist(), dict(enumerate(sigs)), threshold)
    groups: dict[int, list[int]] = {}
    for member, survivor in dropped.items():
        groups.setdefault(survivor, [survivor]).append(member)
    found = {tuple(sorted(p)) for g in groups.values() for p in itertools.combinations(g, 2)}
    return found, time.perf_counter() - start


def score(found: set, planted: dict[tuple[int, int], str]) -> dict[str, float | int | None]:
    true = {p for p, kind in planted.items() if kind != "boilerplate"}
    out: dict[str, float | int | None] = {}
    for kind in EDITS:
        wanted = [p for p, k in planted.items() if k == kind]
        out[f"recall_{kind}"] = round(sum(p in found for p in wanted) / len(wanted), 3)
    out["recall"] = round(len(found & true) / len(true), 3)
    out["precision"] = round(len(found & true) / len(found), 3) if found else None
    out["boilerplate_pairs_found"] = sum(planted.get(p) == "boilerplate" for p in found)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    texts, planted = planted_corpus(args.docs, args.seed)
    hasher = MinHasher(num_perm=128, shingle_words=5)
    sigs = np.stack([hasher.signature(t) for t in texts])
    arms = {}
    for threshold in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
        bands, rows = lsh_params(threshold, 128)
        found, seconds = run_arm(sigs, threshold, bands, rows)
        arm = {"bands": bands, "rows": rows, "seconds": round(seconds, 3)}
        arms[f"threshold_{threshold}"] = arm | score(found, planted)
    found, seconds = run_arm(sigs, 0.72, 14, 8)
    arms["datatrove_14x8_at_0.72"] = {"bands": 14, "rows": 8, "seconds": round(seconds, 3),
                                      **score(found, planted)}  # fmt: skip
    # The default: the most recall without one planted boilerplate pair taken for a duplicate.
    precise = [
        a for a in arms if a.startswith("threshold_") and arms[a]["boilerplate_pairs_found"] == 0
    ]
    pick = max(precise, key=lambda a: (arms[a]["recall"], -float(a.split("_")[1])), default=None)
    kinds = {
        k: {
            "pairs": sum(v == k for v in planted.values()),
            "mean_jaccard": round(
                float(
                    np.mean(
                        [jaccard(texts[a], texts[b]) for (a, b), v in planted.items() if v == k]
                    )
                ),
                3,
            ),
        }
        for k in (*EDITS, "boilerplate")
    }
    print(json.dumps({"documents": len(texts), "planted_pairs": kinds, "arms": arms,
                      "suggested_default": pick}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
