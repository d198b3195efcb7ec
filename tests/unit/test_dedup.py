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


def test_the_default_finds_one_word_edits_of_short_documents() -> None:
    """20 documents of 60 words, each with a copy one word apart (5-word shingles: Jaccard
    about 0.84): the old default (0.8) found 15 of these 20; the default, picked from
    bench/dedup.py's precision/recall curve, finds all but at most one, and no pair of
    documents that share only boilerplate (half their words)."""
    from schemas.ingest import DedupConfig

    cfg, rng = DedupConfig(), random.Random(7)
    hasher = MinHasher(num_perm=cfg.num_perm, shingle_words=cfg.shingle_words, seed=cfg.seed)
    texts = []
    for i in range(20):
        base = doc(rng, 60).split()
        edited = base.copy()
        edited[rng.randrange(60)] = f"edit{i}"
        texts += [" ".join(base), " ".join(edited)]
    shared = doc(rng, 30)
    texts += [f"{shared} {doc(rng, 30)}" for _ in range(10)]  # boilerplate, different bodies
    sigs = {i: hasher.signature(t) for i, t in enumerate(texts)}
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    keys = np.array([band_hashes(sigs[i], bands, rows) for i in range(len(texts))], np.uint64)
    pairs = candidate_pairs(np.arange(len(texts), dtype=np.int64), keys)
    dropped = near_duplicates(pairs.tolist(), sigs, cfg.threshold)
    found = {(s, d) for d, s in dropped.items()}
    assert len(found & {(2 * i, 2 * i + 1) for i in range(20)}) >= 19
    assert not [d for d in dropped if d >= 40], "boilerplate is not a duplicate"


def test_dedup_sharded_by_band_decides_as_one_pass_does(tmp_path) -> None:
    """Each LSH band's candidates come from a task of their own (datatrove's sharding); the
    groups decided are those of one pass over every band in memory."""
    import pyarrow as pa

    from core import storage
    from core.data.dedup_stage import decide_duplicates, find_duplicates, signatures_of
    from core.data.text import exact_key
    from schemas.ingest import IngestConfig

    cfg = IngestConfig.model_validate({"name": "t", "input": {"uri": "x"}, "output": {"uri": "y"}})
    hasher, rng = MinHasher(num_perm=cfg.dedup.num_perm), random.Random(3)
    bands, rows = lsh_params(cfg.dedup.threshold, cfg.dedup.num_perm)
    texts = [doc(rng, 60) for _ in range(30)]
    texts += [t.replace(t.split()[5], "edited", 1) for t in texts[:10]] + texts[
        10:13
    ]  # near, exact
    work = storage.resolve(str(tmp_path / "work"))
    tables = []
    for part, chunk in enumerate((texts[:25], texts[25:])):
        sigs = [hasher.signature(t) for t in chunk]
        table = pa.table({
            "ordinal": pa.array([part << 32 | i for i in range(len(chunk))], pa.int64()),
            "exact": pa.array([exact_key(t) for t in chunk], pa.binary(16)),
            "minhash": pa.array([s.astype("<u4").tobytes() for s in sigs]),
            "bands": pa.array([band_hashes(s, bands, rows) for s in sigs], pa.list_(pa.uint64())),
        })  # fmt: skip
        storage.write_parquet(work.join("clean", f"part-{part}.parquet"), table)
        tables.append(table)
    ran: list[int] = []

    def run_bands(fn, items):
        ran.extend(items)
        return [fn(i) for i in items]

    counts = find_duplicates(cfg, work, run_bands)
    assert ran == list(range(bands)), "one task per band"
    assert counts == {"exact_duplicate": 3, "near_duplicate": 10}
    result = storage.read_parquet(work.join("dedup.parquet")).to_pylist()
    both = pa.concat_tables(tables)
    one_pass = decide_duplicates(cfg, both, lambda wanted: signatures_of(both, wanted))
    assert {r["ordinal"]: (r["survivor"], r["reason"]) for r in result} == one_pass
