"""Exact and near-duplicate detection: MinHash signatures, LSH banding, deterministic choice.

Documents are identified by an *ordinal*, a 64-bit integer giving their place in the input
order (``split_index << 32 | row``). Within every group of duplicates the document with the
smallest ordinal survives, so the result does not depend on how work was scheduled.

Near-duplicates: word shingles are hashed (xxh64), permuted with ``(a*h + b) mod P`` (P the
largest 32-bit prime) and reduced to a MinHash signature. Signatures are split into
``bands`` of ``rows`` values (chosen for the threshold like datasketch does); documents that
share a band hash are candidates, and a candidate pair counts only if its estimated Jaccard
similarity reaches the threshold. Duplicate pairs are merged into groups with union-find.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xxhash

# The largest prime below 2^32: with a, b, h < P every a*h + b fits in 64 bits exactly, so
# (a*h + b) mod P is a true universal hash family. (A 61-bit Mersenne prime with 32-bit a and h
# keeps a*h below the modulus for small h, and the minimum then tracks the smallest hash.)
_PRIME = np.uint64(4294967291)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class MinHasher:
    """Computes MinHash signatures (uint32, ``num_perm`` values) of word shingles."""

    num_perm: int = 128
    shingle_words: int = 5
    seed: int = 1
    _a: np.ndarray = field(init=False, repr=False, compare=False)
    _b: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        object.__setattr__(self, "_a", rng.integers(1, _PRIME, self.num_perm, dtype=np.uint64))
        object.__setattr__(self, "_b", rng.integers(0, _PRIME, self.num_perm, dtype=np.uint64))

    def shingle_hashes(self, text: str) -> np.ndarray:
        """Hashes (below the prime) of the text's lower-cased word shingles, unique."""
        words = _WORD.findall(text.lower())
        if not words:
            return np.zeros(1, dtype=np.uint64)
        hashes = np.fromiter((_word_hash(w) for w in words), dtype=np.uint64, count=len(words))
        k = min(self.shingle_words, len(words))
        n = len(words) - k + 1
        combined = hashes[:n].copy()
        for j in range(1, k):
            # Polynomial combination of consecutive word hashes (wraps mod 2^64 on purpose).
            combined = combined * np.uint64(0x9E3779B97F4A7C15) + hashes[j : j + n]
        return np.unique((combined >> np.uint64(32)) % _PRIME)

    def signature(self, text: str) -> np.ndarray:
        h = self.shingle_hashes(text)
        permuted = (self._a[:, None] * h[None, :] + self._b[:, None]) % _PRIME
        return permuted.min(axis=1).astype(np.uint32)


@functools.lru_cache(maxsize=1 << 18)
def _word_hash(word: str) -> int:
    return xxhash.xxh64_intdigest(word.encode())


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false positives + negatives."""
    xs = np.linspace(0.0, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            prob = 1.0 - (1.0 - xs**rows) ** bands
            fp = np.trapezoid(np.where(xs < threshold, prob, 0.0), xs)
            fn = np.trapezoid(np.where(xs >= threshold, 1.0 - prob, 0.0), xs)
            if fp + fn < best_err:
                best, best_err = (bands, rows), fp + fn
    return best


def band_hashes(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One 64-bit hash per band of a signature."""
    raw = signature.astype("<u4").tobytes()
    width = rows * 4
    return [xxhash.xxh64_intdigest(raw[i * width : (i + 1) * width]) for i in range(bands)]


def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Estimated Jaccard similarity of two signatures."""
    return float(np.mean(sig_a == sig_b))


# ---------------------------------------------------------------------------------------------
# Finding duplicate groups


def exact_duplicates(ordinals: np.ndarray, keys: Sequence[bytes]) -> dict[int, int]:
    """Map each duplicate's ordinal to the ordinal of the surviving copy (the smallest)."""
    order = np.argsort(ordinals, kind="stable")
    first: dict[bytes, int] = {}
    dropped = {}
    for i in order:
        ordinal = int(ordinals[i])
        survivor = first.setdefault(keys[i], ordinal)
        if survivor != ordinal:
            dropped[ordinal] = survivor
    return dropped


def candidate_pairs(ordinals: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Pairs (smaller, larger ordinal) that share at least one band hash.

    ``bands`` has one row per document. Each member of a bucket is paired with the bucket's
    first member and with its predecessor, which connects every bucket without n^2 pairs.
    """
    pairs = []
    for j in range(bands.shape[1]):
        order = np.lexsort((ordinals, bands[:, j]))
        h, o = bands[order, j], ordinals[order]
        same = np.concatenate([[False], h[1:] == h[:-1]])
        if not same.any():
            continue
        starts = np.maximum.accumulate(np.where(~same, np.arange(len(h)), 0))
        idx = np.nonzero(same)[0]
        pairs.append(np.stack([o[starts[idx]], o[idx]], axis=1))
        pairs.append(np.stack([o[idx - 1], o[idx]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


class UnionFind:
    """Disjoint sets over ordinals whose root is always the smallest member."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while x != root:  # path compression
            self.parent[x], x = root, self.parent.get(x, x)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo

    def dropped(self) -> dict[int, int]:
        """Every non-root member mapped to its group's root (the survivor)."""
        return {x: self.find(x) for x in list(self.parent) if self.find(x) != x}


def near_duplicates(
    pairs: Iterable[tuple[int, int]],
    signatures: dict[int, np.ndarray],
    threshold: float,
) -> dict[int, int]:
    """Group candidate pairs whose estimated similarity reaches ``threshold``."""
    groups = UnionFind()
    for a, b in pairs:
        if similarity(signatures[a], signatures[b]) >= threshold:
            groups.union(int(a), int(b))
    return groups.dropped()
