"""The Hugging Face ``datasets`` arm of bench/ingest.py: the same step functions as the
pipeline, run with ``Dataset.from_generator`` and ``map(num_proc=N)``.

Bench-only code: it exists to compare executors, not to be used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from core import storage
from core.data.dedup_stage import decide_duplicates, signatures_of
from core.data.packing import pack_documents
from core.data.readers import InputSplit, plan_splits, read_split
from core.data.stages import DocumentTransform, ordinal
from core.data.tokenization import TokenizerBundle, load_tokenizer
from core.data.tokenize_stage import SHARD_SCHEMA
from jobs.ingest import discover_inputs
from schemas.ingest import IngestConfig

_cache: dict[str, object] = {}  # per worker process: built once, reused by every batch


def _transform(cfg: IngestConfig) -> DocumentTransform:
    if "transform" not in _cache:
        _cache["transform"] = DocumentTransform(cfg)
    return _cache["transform"]


def _tokenizer(uri: str) -> TokenizerBundle:
    if "tokenizer" not in _cache:
        _cache["tokenizer"] = load_tokenizer(uri)
    return _cache["tokenizer"]


def _records(splits: list[dict], root: str, field: str, limit: int):
    loc = storage.resolve(root)
    for raw in splits:
        split = InputSplit(**raw)
        for rec in read_split(split, loc.join(split.relpath), field, limit):
            if rec.reason is None:
                yield {
                    "ordinal": ordinal(split.index, rec.row),
                    "doc_id": rec.doc_id,
                    "text": rec.text,
                }


def _clean_batch(batch: dict, cfg: IngestConfig) -> dict:
    transform = _transform(cfg)
    cols: dict[str, list] = {k: [] for k in DocumentTransform.COLUMNS}
    for o, doc_id, raw in zip(batch["ordinal"], batch["doc_id"], batch["text"], strict=True):
        text, _, _ = transform.clean(raw)
        if text is not None:
            transform.append(cols, o, doc_id, text)
    # 64-bit band hashes exceed int64: hand them over as uint64 arrays, not Python ints.
    cols["bands"] = [np.asarray(b, dtype=np.uint64) for b in cols["bands"]]
    return cols


def _pack_batch(batch: dict, cfg: IngestConfig, out: str) -> dict:
    bundle = _tokenizer(cfg.tokenizer.uri)
    packed = pack_documents(
        bundle.encode_batch(batch["text"]),
        cfg.pack.block_size,
        bundle.eos_token_id,
        bundle.pad_token_id,
    )
    rows, width = packed.input_ids.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    table = pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(offsets, pa.array(packed.input_ids.ravel())),
            "segment_lengths": packed.segment_lengths,
            "num_pad": packed.num_pad,
        },
        schema=SHARD_SCHEMA,
    )
    name = f"part-{os.getpid()}-{batch['ordinal'][0]}.parquet"
    storage.write_parquet(storage.resolve(out).join("shards", name), table)
    return {"blocks": [rows], "tokens": [packed.tokens]}


def run_datasets_arm(cfg: IngestConfig, out: Path, num_proc: int = 2) -> dict:
    """Run the pipeline's steps with ``datasets``; returns document and token counts."""
    from datasets import Dataset, disable_progress_bars

    disable_progress_bars()
    cache = out / "hf-cache"
    root, files = discover_inputs(cfg)
    splits = [s.__dict__ for s in plan_splits(files, cfg.input.format, cfg.input.split_bytes)]
    ds = Dataset.from_generator(
        _records,
        gen_kwargs={
            "splits": splits,
            "root": root.uri,
            "field": cfg.input.text_field,
            "limit": cfg.input.max_record_bytes,
        },
        num_proc=min(num_proc, len(splits)),
        cache_dir=str(cache),
    )
    ds = ds.map(
        _clean_batch,
        batched=True,
        batch_size=500,
        num_proc=num_proc,
        fn_kwargs={"cfg": cfg},
        remove_columns=ds.column_names,
    )
    keys = ds.data.table.select(["ordinal", "exact", "bands"])
    table = ds.data.table.select(["ordinal", "minhash"])
    dropped = set(decide_duplicates(cfg, keys, lambda wanted: signatures_of(table, wanted)))
    ds = ds.filter(
        lambda b: [o not in dropped for o in b["ordinal"]], batched=True, num_proc=num_proc
    )
    documents = len(ds)
    ds = ds.map(
        _pack_batch,
        batched=True,
        batch_size=2000,
        num_proc=num_proc,
        fn_kwargs={"cfg": cfg, "out": str(out)},
        remove_columns=ds.column_names,
    )
    return {"documents": documents, "blocks": sum(ds["blocks"]), "tokens": sum(ds["tokens"])}
