"""MinHash, LSH banding and deterministic duplicate groups."""

from __future__ import annotations

import random

import numpy as np

from core.data.dedup import (
    MinHasher,
    UnionFind,
    band_hashes,
    candidate_pairs,
    exact_duplicates,
    lsh_params,
    near_duplicates,
    similarity,
)

WORDS = [f"w{i}" for i in range(5000)]


def doc(rng: random.Random, n: int = 200) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def jaccard(a: str, b: str, k: int = 5) -> float:
    def sh(t: str) -> set[tuple[str, ...]]:
        w = t.lower().split()
        return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}

    x, y = sh(a), sh(b)
    return len(x & y) / len(x | y)


def test_signature_estimates_jaccard() -> None:
    rng = random.Random(0)
    h = MinHasher(num_perm=256)
    base = doc(rng).split()
    for changes in (1, 5, 20, 60):
        other = base.copy()
        for i in rng.sample(range(len(other)), changes):
            other[i] = "changed"
        a, b = " ".join(base), " ".join(other)
        assert abs(similarity(h.signature(a), h.signature(b)) - jaccard(a, b)) < 0.1


def test_signature_is_deterministic_and_seeded() -> None:
    text = "the heron thermostat keeps the garden warm all night long"
    assert np.array_equal(MinHasher().signature(text), MinHasher().signature(text))
    assert not np.array_equal(MinHasher(seed=1).signature(text), MinHasher(seed=2).signature(text))
    assert MinHasher().signature("").shape == (128,)


def test_lsh_params_track_threshold() -> None:
    b_low, r_low = lsh_params(0.5, 128)
    b_high, r_high = lsh_params(0.9, 128)
    assert b_low * r_low <= 128 and b_high * r_high <= 128
    assert r_high > r_low  # stricter threshold: more rows per band


def test_exact_duplicates_keep_smallest_ordinal() -> None:
    ordinals = np.array([30, 10, 20, 40])
    keys = [b"a", b"a", b"b", b"a"]
    assert exact_duplicates(ordinals, keys) == {30: 10, 40: 10}


def test_near_duplicates_end_to_end() -> None:
    rng = random.Random(1)
    h = MinHasher()
    bands, rows = lsh_params(0.8, 128)
    texts = [doc(rng) for _ in range(50)]
    words = texts[7].split()
    words[100] = "edited"
    texts.append(" ".join(words))  # ordinal 50 near-duplicates ordinal 7
    texts.append(texts[3] + " thanks")  # ordinal 51 near-duplicates ordinal 3
    sigs = {i: h.signature(t) for i, t in enumerate(texts)}
    band_matrix = np.array(
        [band_hashes(sigs[i], bands, rows) for i in range(len(texts))], dtype=np.uint64
    )
    ordinals = np.arange(len(texts), dtype=np.int64)
    pairs = candidate_pairs(ordinals, band_matrix)
    dropped = near_duplicates(pairs.tolist(), sigs, 0.8)
    assert dropped == {50: 7, 51: 3}
    # Input order does not matter: shuffle rows, same result.
    perm = np.random.default_rng(0).permutation(len(texts))
    pairs2 = candidate_pairs(ordinals[perm], band_matrix[perm])
    assert near_duplicates(pairs2.tolist(), sigs, 0.8) == dropped


def test_union_find_root_is_smallest() -> None:
    uf = UnionFind()
    uf.union(5, 9)
    uf.union(9, 2)
    uf.union(7, 8)
    assert uf.dropped() == {5: 2, 9: 2, 8: 7}
