"""Ray Data adapters for the ingest stages: batches of work items in, JSON results out.

Kept apart from ``core.data.stages`` so the stages stay plain Python; this is the only
ingest module that knows the shape of a Ray Data batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from typing import Any

import numpy as np

from core.data.stages import SplitProcessor, split_from_json
from core.data.tokenize_stage import TokenizePack
from core.storage import Location
from schemas.ingest import IngestConfig

# Task workers are reused: keep one processor (compiled regexes, MinHash permutations) per
# process and configuration instead of rebuilding it for every split.
_processors: dict[tuple[str, str, str], SplitProcessor] = {}


def process_split_batch(
    batch: dict[str, np.ndarray], cfg: IngestConfig, root: Location, work: Location
) -> dict[str, Any]:
    key = (cfg.model_dump_json(), root.uri, work.uri)
    processor = _processors.get(key)
    if processor is None:
        processor = _processors[key] = SplitProcessor(cfg, root, work)
    stats = [json.dumps(asdict(processor(split_from_json(s)))) for s in batch["split"]]
    return {"stats": np.array(stats, dtype=object)}


class TokenizePackUDF:
    """Actor-pool UDF: the tokenizer is loaded once per actor."""

    def __init__(
        self, cfg: IngestConfig, work: Location, snap: Location, fault_spec: str | None
    ) -> None:
        # tokenizers sizes its thread pool to every core by default; several actors on one
        # node would then oversubscribe it. Each actor uses the CPUs it was given (before the
        # pool starts on the first encode).
        cpus = max(1, round(cfg.execution.cpus_per_tokenize_actor))
        os.environ.setdefault("RAYON_NUM_THREADS", str(cpus))
        self.worker = TokenizePack(cfg, work, snap, fault_spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        root = self.worker.work
        shards = [
            self.worker(Location(root.scheme, str(path), root.s3)).model_dump_json()
            for path in batch["part"]
        ]
        return {"shard": np.array(shards, dtype=object)}
