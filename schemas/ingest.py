"""The ingest recipe: raw text in object storage -> a tokenized, packed dataset snapshot."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from schemas.base import StrictModel
from schemas.storage import StorageSettings


class InputConfig(StrictModel):
    """Which raw files to read and how to parse them."""

    uri: str = Field(description="Folder or prefix holding the raw files (path, file://, s3://).")
    glob: str = Field(
        "**/*", description="Files under uri to read; '**/' spans folders, '*' does not."
    )
    format: Literal["auto", "jsonl", "parquet", "text"] = Field(
        "auto",
        description="auto picks by extension: .jsonl/.json -> jsonl, .parquet -> parquet, "
        "anything else -> text (one document per file).",
    )
    text_field: str = Field("text", description="Field (JSONL) or column (Parquet) with the text.")
    max_record_bytes: int = Field(
        2_000_000, gt=0, description="Records larger than this (bytes) are quarantined."
    )
    split_bytes: int = Field(
        8_000_000,
        ge=1_000_000,
        description="Large JSONL files are read in byte ranges of about this size, in parallel.",
    )


class OutputConfig(StrictModel):
    """Where snapshots are published."""

    uri: str = Field(description="Dataset root; snapshots go to <uri>/snapshots/<snapshot_id>/.")
    keep_work: bool = Field(
        False, description="Keep the intermediate work folder after publishing (debugging)."
    )


class CleanConfig(StrictModel):
    """Normalisation and quality filters."""

    normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFKC", description="Unicode normal form applied to every document."
    )
    min_chars: int = Field(32, ge=0, description="Documents shorter than this are removed.")
    max_chars: int = Field(200_000, gt=0, description="Documents longer than this are removed.")
    min_alpha_ratio: float = Field(
        0.6, ge=0, le=1, description="Minimum share of letters among non-space characters."
    )
    max_repeated_line_ratio: float = Field(
        0.3, ge=0, le=1, description="Maximum share of lines repeating an earlier line."
    )

    @model_validator(mode="after")
    def _bounds(self) -> CleanConfig:
        if self.min_chars >= self.max_chars:
            raise ValueError("clean.min_chars must be smaller than clean.max_chars")
        return self


class PiiConfig(StrictModel):
    """PII and secret redaction."""

    enabled: bool = Field(True, description="Redact PII into typed placeholders like <EMAIL>.")
    kinds: list[str] | None = Field(None, description="Recognisers to run; all built-ins if unset.")
    presidio_model_path: str | None = Field(
        None, description="Local spaCy pipeline folder; adds presidio's recognisers when set."
    )


class DedupConfig(StrictModel):
    """Exact and near-duplicate removal across the whole dataset."""

    exact: bool = Field(True, description="Drop documents equal after case and space folding.")
    near: bool = Field(True, description="Drop near-duplicates found with MinHash + LSH.")
    threshold: float = Field(
        0.65,
        gt=0,
        lt=1,
        description="Estimated Jaccard similarity (word shingles) from which a pair is a near "
        "duplicate. 0.65 finds one-word edits of 60-word documents (Jaccard ~0.84) 98% of the "
        "time and no boilerplate-sharing pair (bench/dedup.py); 0.8 found about half.",
    )
    num_perm: int = Field(128, ge=16, le=512, description="MinHash permutations.")
    shingle_words: int = Field(5, ge=1, le=16, description="Words per shingle.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")


class TokenizerConfig(StrictModel):
    """Train a byte-level BPE tokenizer on the cleaned data, or load an existing one."""

    kind: Literal["train", "pretrained"] = Field(
        "train", description="train: byte-level BPE on the cleaned data; pretrained: load uri."
    )
    uri: str | None = Field(None, description="HF tokenizer folder (path or s3://) if pretrained.")
    vocab_size: int = Field(8192, ge=300, description="Vocabulary size when training.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair frequency when training.")
    train_max_docs: int = Field(
        200_000, gt=0, description="Train on at most this many cleaned documents."
    )
    parse_special_tokens: bool = Field(
        False,
        description="Encode special-token strings in the text as special tokens. Off for raw "
        "data (it must not forge document boundaries); on for text our own chat template "
        "rendered, such as curated feedback.",
    )

    @model_validator(mode="after")
    def _uri_needed(self) -> TokenizerConfig:
        if self.kind == "pretrained" and not self.uri:
            raise ValueError("tokenizer.uri is required when tokenizer.kind is 'pretrained'")
        return self


class PackConfig(StrictModel):
    """Packing documents into fixed-length training blocks."""

    block_size: int = Field(512, ge=8, description="Tokens per block.")
    add_eos: bool = Field(True, description="Append EOS after each document.")


class ExecutionConfig(StrictModel):
    """How the pipeline runs."""

    executor: Literal["ray", "local"] = Field(
        "ray", description="ray: Ray Data on the cluster; local: the same steps in one process."
    )
    address: str | None = Field(
        None, description="Ray address; RAY_ADDRESS or a local Ray if unset."
    )
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs per read/clean task.")
    tokenize_actors: int = Field(2, ge=1, description="Size of the tokenizer actor pool.")
    cpus_per_tokenize_actor: float = Field(1.0, gt=0, description="CPUs per tokenizer actor.")


class IngestConfig(StrictModel):
    """A whole ingest recipe (``jobs/configs/ingest-*.yaml``)."""

    schema_version: Literal[1] = Field(1, description="Version of this schema.")
    name: str = Field(description="Dataset name; shown in reports and lineage.", min_length=1)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    input: InputConfig
    output: OutputConfig
    clean: CleanConfig = Field(default_factory=CleanConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    pack: PackConfig = Field(default_factory=PackConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    parents: list[str] = Field(
        default_factory=list,
        description="Lineage beyond the raw files (e.g. the event ids feedback came from); "
        "recorded in the manifest, not part of the snapshot id.",
    )
