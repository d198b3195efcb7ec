"""Ingest stages 3 and 4: the tokenizer (trained on the kept documents or loaded), then
tokenize and pack each clean part into a snapshot shard."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from core import faults, storage
from core.data.dedup_stage import dropped_ordinals, kept_texts
from core.data.packing import pack_documents
from core.data.tokenization import TokenizerBundle, load_tokenizer, save_hf_folder, train_bpe
from core.storage import Location
from schemas.ingest import IngestConfig
from schemas.snapshot import ShardInfo, TokenizerInfo

SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("segment_lengths", pa.list_(pa.int32())),
        ("num_pad", pa.int32()),
    ]
)

# ---------------------------------------------------------------------------------------------
# Stage 3: the tokenizer


def prepare_tokenizer(cfg: IngestConfig, work: Location) -> TokenizerInfo:
    """Train or load the tokenizer once; saved as a Hugging Face folder in the work dir."""
    marker = work.join("tokenizer.json.info")
    if storage.exists(marker):
        return TokenizerInfo.model_validate(storage.read_json(marker))
    t = cfg.tokenizer
    if t.kind == "train":
        bundle = train_bpe(kept_texts(work, t.train_max_docs), t.vocab_size, t.min_frequency)
        source = "trained"
    else:
        bundle = load_tokenizer(t.uri, cfg.storage)
        source = t.uri
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer_folder(cfg, bundle, Path(tmp))
        storage.upload_dir(Path(tmp), work.join("tokenizer"))
    info = TokenizerInfo(
        source=source,
        sha256=bundle.sha256,
        vocab_size=bundle.tokenizer.get_vocab_size(),
        eos_token_id=bundle.eos_token_id,
        pad_token_id=bundle.pad_token_id,
    )
    storage.write_json(marker, info.model_dump())
    return info


def _write_tokenizer_folder(cfg: IngestConfig, bundle: TokenizerBundle, folder: Path) -> None:
    if cfg.tokenizer.kind == "train":
        save_hf_folder(bundle, folder)
        return
    # A pretrained tokenizer is copied as is: its config may hold a chat template and more.
    src = storage.resolve(cfg.tokenizer.uri, cfg.storage)
    for entry in storage.list_files(src):
        name = entry.relpath
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(storage.read_bytes(entry.location))


def tokenizer_hash(cfg: IngestConfig) -> str | None:
    """Hash of a pretrained tokenizer (part of the snapshot id); None when trained."""
    if cfg.tokenizer.kind != "pretrained":
        return None
    return load_tokenizer(cfg.tokenizer.uri, cfg.storage).sha256


# ---------------------------------------------------------------------------------------------
# Stage 4: tokenize and pack


class TokenizePack:
    """Stage 4 for one clean part at a time; loads the tokenizer once per worker."""

    def __init__(
        self, cfg: IngestConfig, work: Location, snapshot: Location, fault_spec: str | None = None
    ) -> None:
        self.cfg = cfg
        self.work = work
        self.snapshot = snapshot
        self.fault_spec = fault_spec
        self.bundle = load_tokenizer(work.join("tokenizer").uri, cfg.storage)
        self.dropped = dropped_ordinals(work)

    def __call__(self, part: Location) -> ShardInfo:
        name = part.name.removesuffix(".parquet")
        marker = self.work.join("stage4", name + ".json")
        if storage.exists(marker):
            return ShardInfo.model_validate(storage.read_json(marker))
        faults.maybe_fail("ingest.tokenize", self.fault_spec)
        t = storage.read_parquet(part, ["ordinal", "text"])
        texts = [
            text
            for o, text in zip(t["ordinal"].to_pylist(), t["text"].to_pylist(), strict=True)
            if o not in self.dropped
        ]
        info = self._write_shard(name, texts)
        storage.write_json(marker, info.model_dump())
        return info

    def _write_shard(self, name: str, texts: list[str]) -> ShardInfo:
        ids: list[list[int]] = []
        for start in range(0, len(texts), 1024):
            chunk = texts[start : start + 1024]
            ids.extend(self.bundle.encode_batch(chunk, self.cfg.tokenizer.parse_special_tokens))
        b = self.bundle
        packed = pack_documents(
            ids, self.cfg.pack.block_size, b.eos_token_id, b.pad_token_id, self.cfg.pack.add_eos
        )
        path = f"shards/{name}.parquet"
        if packed.input_ids.shape[0]:
            table = pa.table(
                {
                    "input_ids": _fixed_rows(packed.input_ids),
                    "segment_lengths": packed.segment_lengths,
                    "num_pad": packed.num_pad,
                },
                schema=SHARD_SCHEMA,
            )
            storage.write_parquet(self.snapshot.join(path), table)
        digest = hashlib.sha256(packed.input_ids.astype("<i4").tobytes()).hexdigest()
        return ShardInfo(
            path=path,
            blocks=int(packed.input_ids.shape[0]),
            tokens=packed.tokens,
            documents=len(texts),
            sha256=digest,
        )


def _fixed_rows(matrix: np.ndarray) -> pa.ListArray:
    """A (rows, width) int32 matrix as an Arrow list column, without a Python loop."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1)))
