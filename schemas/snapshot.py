"""The dataset snapshot manifest: what an ingest run published and how it got there.

A snapshot folder is ``<root>/snapshots/<snapshot_id>/`` with ``shards/``, ``tokenizer/``,
``quarantine/``, ``report.md`` and ``manifest.json``. The manifest is written last: a
snapshot exists when, and only when, its manifest does. Training reads only through it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from schemas.base import StrictModel

# Columns of every packed shard.
SHARD_COLUMNS = ("input_ids", "segment_lengths", "num_pad")


class InputFile(StrictModel):
    """One raw input file, identified by content so local and S3 copies agree."""

    path: str = Field(description="Path relative to the input uri.")
    size: int = Field(description="Bytes.")
    sha256: str = Field(description="Content hash.")


class ShardInfo(StrictModel):
    """One packed Parquet shard."""

    path: str = Field(description="Path relative to the snapshot folder.")
    blocks: int = Field(description="Rows (blocks of block_size tokens).")
    tokens: int = Field(description="Real tokens, EOS included, padding excluded.")
    documents: int = Field(description="Documents packed into this shard.")
    sha256: str = Field(description="Hash of the shard's token ids, for integrity checks.")


class TokenizerInfo(StrictModel):
    """The tokenizer the shards were made with (stored in the snapshot's tokenizer/ folder)."""

    path: str = Field("tokenizer", description="Folder relative to the snapshot.")
    source: str = Field(description="'trained' or the uri it was loaded from.")
    sha256: str = Field(description="Hash of tokenizer.json.")
    vocab_size: int
    eos_token_id: int
    pad_token_id: int


class SnapshotCounts(StrictModel):
    """What went in, what came out, and what was removed and why."""

    files: int = 0
    records_in: int = Field(0, description="Records read, quarantined ones included.")
    quarantined: dict[str, int] = Field(default_factory=dict, description="Unreadable, by reason.")
    removed: dict[str, int] = Field(
        default_factory=dict, description="Filtered or deduplicated, by reason."
    )
    pii: dict[str, int] = Field(default_factory=dict, description="Redactions by PII type.")
    documents: int = Field(0, description="Documents in the snapshot.")
    tokens: int = Field(0, description="Tokens in the snapshot (EOS included, padding not).")
    blocks: int = Field(0, description="Packed blocks.")
    chars_in: int = 0
    chars_out: int = 0


class SnapshotManifest(StrictModel):
    """``manifest.json`` of a dataset snapshot."""

    schema_version: Literal[1] = 1
    kind: Literal["dataset_snapshot"] = "dataset_snapshot"
    snapshot_id: str = Field(description="Hash of the inputs, the pipeline config and tokenizer.")
    name: str
    created_at: str = Field(description="UTC, ISO 8601.")
    input_uri: str
    inputs: list[InputFile]
    config: dict[str, Any] = Field(description="The pipeline settings that shaped the content.")
    config_hash: str
    code_version: str = Field(description="Git commit of the code, or 'unknown'.")
    tokenizer: TokenizerInfo
    block_size: int
    counts: SnapshotCounts
    shards: list[ShardInfo]
    token_checksum: str = Field(description="Hash over the shards' hashes, in order.")
    quarantine: list[str] = Field(default_factory=list, description="Quarantine files, relative.")
    parents: list[str] = Field(
        default_factory=list,
        description="Lineage beyond raw files, e.g. event ids or snapshot ids this one came from.",
    )
    timings_s: dict[str, float] = Field(default_factory=dict, description="Wall time per stage.")
