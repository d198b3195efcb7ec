"""Ingest stage 2: exact and near duplicates across the whole dataset, decided from the
per-document keys that stage 1 (:mod:`core.data.stages`) wrote; writes ``dedup.parquet``."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

from core import storage
from core.data.dedup import candidate_pairs, exact_duplicates, near_duplicates
from core.storage import Location
from schemas.ingest import IngestConfig


def clean_parts(work: Location) -> list[Location]:
    return [e.location for e in storage.list_files(work.join("clean"), "*.parquet")]


Runner = Callable[[Callable[[int], np.ndarray], list[int]], list[np.ndarray]]


def _serially(fn: Callable[[int], np.ndarray], items: list[int]) -> list[np.ndarray]:
    return [fn(i) for i in items]


def find_duplicates(
    cfg: IngestConfig, work: Location, run_bands: Runner = _serially
) -> dict[str, int]:
    """Decide which documents are dropped as duplicates; writes ``dedup.parquet``.

    Sharded by band, as datatrove does: each LSH band's candidate pairs come from a task of
    their own (``run_bands`` runs them: in this process, or as Ray tasks), holding ordinals
    and that one band's hashes (16 bytes a document), never texts; signatures are re-read
    only for the candidates, one part at a time. The exact pass holds 16 bytes a document.
    """
    out = work.join("dedup.parquet")
    if storage.exists(out):
        return _dedup_counts(storage.read_parquet(out))
    parts = clean_parts(work)
    dropped: dict[int, tuple[int, str]] = {}
    if cfg.dedup.exact and parts:
        exact = _exact(parts)
        dropped.update({o: (s, "exact_duplicate") for o, s in exact.items()})
    if cfg.dedup.near and parts:
        gone = set(dropped)
        n_bands = _band_count(parts)
        found = run_bands(functools.partial(band_pairs, parts, gone), list(range(n_bands)))
        pairs = np.unique(np.concatenate([np.zeros((0, 2), np.int64), *found]), axis=0)
        signatures = _load_signatures(parts, set(pairs.ravel().tolist()))
        near = near_duplicates(pairs.tolist(), signatures, cfg.dedup.threshold)
        dropped.update({o: (s, "near_duplicate") for o, s in near.items()})
    result = pa.table(
        {
            "ordinal": pa.array(list(dropped), pa.int64()),
            "survivor": pa.array([s for s, _ in dropped.values()], pa.int64()),
            "reason": pa.array([r for _, r in dropped.values()], pa.string()),
        }
    )
    storage.write_parquet(out, result)
    return _dedup_counts(result)


def _exact(parts: list[Location]) -> dict[int, int]:
    keys = pa.concat_tables([storage.read_parquet(p, ["ordinal", "exact"]) for p in parts])
    return exact_duplicates(keys["ordinal"].to_numpy(), keys["exact"].to_pylist())


def _band_count(parts: list[Location]) -> int:
    """Bands per signature, from the first part holding a document (a split can keep none)."""
    for part in parts:
        column = storage.read_parquet(part, ["bands"])["bands"]
        if len(column):
            return len(column[0])
    return 0


def band_pairs(parts: list[Location], gone: set[int], band: int) -> np.ndarray:
    """Candidate pairs (smaller, larger ordinal) sharing hash ``band``, over every part."""
    ordinals, hashes = [], []
    for part in parts:
        t = storage.read_parquet(part, ["ordinal", "bands"])
        o = t["ordinal"].to_numpy()
        if not len(o):
            continue
        bands = t["bands"].combine_chunks().flatten().to_numpy().reshape(len(o), -1)
        keep = np.array([x not in gone for x in o.tolist()], dtype=bool)
        ordinals.append(o[keep])
        hashes.append(bands[keep, band])
    if not ordinals:
        return np.zeros((0, 2), dtype=np.int64)
    return candidate_pairs(np.concatenate(ordinals), np.concatenate(hashes)[:, None])


def _load_signatures(parts: list[Location], wanted: set[int]) -> dict[int, np.ndarray]:
    found: dict[int, np.ndarray] = {}
    for part in parts:
        found.update(signatures_of(storage.read_parquet(part, ["ordinal", "minhash"]), wanted))
    return found


def decide_duplicates(
    cfg: IngestConfig,
    keys: pa.Table | None,
    load_signatures: Callable[[set[int]], dict[int, np.ndarray]],
) -> dict[int, tuple[int, str]]:
    """Dropped ordinal -> (survivor, reason), from one table of ordinal, exact and bands (all
    in memory: the single-process arm of ``bench/ingest.py``)."""
    dropped: dict[int, tuple[int, str]] = {}
    if keys is None or not keys.num_rows:
        return dropped
    ordinals = keys["ordinal"].to_numpy()
    if cfg.dedup.exact:
        exact = exact_duplicates(ordinals, keys["exact"].to_pylist())
        dropped.update({o: (s, "exact_duplicate") for o, s in exact.items()})
    if cfg.dedup.near:
        bands = keys["bands"].combine_chunks().flatten().to_numpy().reshape(len(ordinals), -1)
        keep = np.array([o not in dropped for o in ordinals.tolist()], dtype=bool)
        pairs = candidate_pairs(ordinals[keep], bands[keep])
        signatures = load_signatures(set(pairs.ravel().tolist()))
        near = near_duplicates(pairs.tolist(), signatures, cfg.dedup.threshold)
        dropped.update({o: (s, "near_duplicate") for o, s in near.items()})
    return dropped


def signatures_of(table: pa.Table, wanted: set[int]) -> dict[int, np.ndarray]:
    """MinHash signatures of the ``wanted`` ordinals in a table of ordinal and minhash."""
    return {
        o: np.frombuffer(sig, dtype="<u4")
        for o, sig in zip(table["ordinal"].to_pylist(), table["minhash"].to_pylist(), strict=True)
        if o in wanted
    }


def _dedup_counts(table: pa.Table) -> dict[str, int]:
    return dict(Counter(table["reason"].to_pylist()))


def dropped_ordinals(work: Location) -> set[int]:
    return set(storage.read_parquet(work.join("dedup.parquet"), ["ordinal"])["ordinal"].to_pylist())


def kept_texts(work: Location, limit: int | None = None) -> Iterator[str]:
    """Texts that survived dedup, in input order, part by part (streamed)."""
    dropped = dropped_ordinals(work)
    n = 0
    for part in clean_parts(work):
        t = storage.read_parquet(part, ["ordinal", "text"])
        for o, text in zip(t["ordinal"].to_pylist(), t["text"].to_pylist(), strict=True):
            if o in dropped:
                continue
            if limit is not None and n >= limit:
                return
            n += 1
            yield text
