"""The ingest pipeline's units of work, shared by the Ray and the one-process executors.

Each stage reads and writes object storage only, so it can run anywhere, and leaves a
completion marker (a small JSON file written last) so a rerun skips finished work:

1. ``process_split``: read one input split, quarantine unreadable records, clean, filter,
   redact PII, compute dedup keys; writes ``clean/part-N.parquet``.
2. ``find_duplicates``: exact and near-duplicate groups across all parts; writes
   ``dedup.parquet`` (dropped ordinal -> survivor, reason).
3. ``prepare_tokenizer``: train a BPE on the kept documents or load an existing tokenizer.
4. ``TokenizePack``: tokenize one clean part (kept documents only), pack, write a shard.

Everything lives under the run's work folder ``<output>/_work/<snapshot_id>/`` until it is
published (see ``jobs.ingest``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from core import faults, storage
from core.data.dedup import (
    MinHasher,
    band_hashes,
    candidate_pairs,
    exact_duplicates,
    lsh_params,
    near_duplicates,
)
from core.data.packing import pack_documents
from core.data.pii import PiiRedactor, build_recognizers
from core.data.readers import InputSplit, Record, read_split
from core.data.text import clean_text, exact_key, quality_reason
from core.data.tokenization import TokenizerBundle, load_tokenizer, save_hf_folder, train_bpe
from core.storage import Location
from schemas.ingest import IngestConfig
from schemas.snapshot import ShardInfo, TokenizerInfo

QUARANTINE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("preview", pa.string()),
    ]
)
SHARD_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("segment_lengths", pa.list_(pa.int32())),
        ("num_pad", pa.int32()),
    ]
)


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def ordinal(split_index: int, row: int) -> int:
    """Global input order of a record: stable whatever the scheduling."""
    return (split_index << 32) | row


@dataclass
class SplitStats:
    """What one split contributed; summed into the manifest's counts."""

    records_in: int = 0
    documents: int = 0
    chars_in: int = 0
    chars_out: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    pii: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Stage 1: read, quarantine, clean, filter, redact, sign


class DocumentTransform:
    """Clean, filter, redact and compute dedup keys for documents: no I/O, no Ray."""

    COLUMNS = ("ordinal", "doc_id", "text", "exact", "minhash", "bands")

    def __init__(self, cfg: IngestConfig) -> None:
        self.cfg = cfg
        self.redactor = (
            PiiRedactor(build_recognizers(cfg.pii.kinds, cfg.pii.presidio_model_path))
            if cfg.pii.enabled
            else None
        )
        d = cfg.dedup
        self.hasher = MinHasher(d.num_perm, d.shingle_words, d.seed)
        self.bands, self.rows = lsh_params(d.threshold, d.num_perm)

    def clean(self, raw: str) -> tuple[str | None, str | None, dict[str, int]]:
        """(text to keep or None, why it was removed, PII counts)."""
        text = clean_text(raw, self.cfg.clean.normalization)
        reason = quality_reason(text, self.cfg.clean)
        if reason:
            return None, reason, {}
        if self.redactor:
            text, counts = self.redactor.redact(text)
            return text, None, counts
        return text, None, {}

    def append(self, cols: dict[str, list], ordinal_: int, doc_id: str, text: str) -> None:
        """Add a kept document and its dedup keys to column lists (``COLUMNS``)."""
        sig = self.hasher.signature(text)
        cols["ordinal"].append(ordinal_)
        cols["doc_id"].append(doc_id)
        cols["text"].append(text)
        cols["exact"].append(exact_key(text))
        cols["minhash"].append(sig.astype("<u4").tobytes())
        cols["bands"].append(band_hashes(sig, self.bands, self.rows))

    def schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("ordinal", pa.int64()),
                ("doc_id", pa.string()),
                ("text", pa.large_string()),
                ("exact", pa.binary(16)),
                ("minhash", pa.binary(4 * self.cfg.dedup.num_perm)),
                ("bands", pa.list_(pa.uint64())),
            ]
        )


class SplitProcessor:
    """Stage 1 for one split at a time."""

    def __init__(self, cfg: IngestConfig, input_root: Location, work: Location) -> None:
        self.cfg = cfg
        self.input_root = input_root
        self.work = work
        self.transform = DocumentTransform(cfg)
        self.redactor = self.transform.redactor

    def __call__(self, split: InputSplit) -> SplitStats:
        marker = self.work.join("stage1", part_name(split.index) + ".json")
        if storage.exists(marker):
            return SplitStats(**storage.read_json(marker))
        faults.maybe_fail("ingest.split")
        stats, good, bad = self._read(split)
        self._write_clean(split, self._transform(split, good, stats))
        if bad:
            storage.write_parquet(
                self.work.join("quarantine", part_name(split.index) + ".parquet"),
                pa.Table.from_pylist(bad, schema=QUARANTINE_SCHEMA),
            )
        storage.write_json(marker, asdict(stats))
        return stats

    def _read(self, split: InputSplit) -> tuple[SplitStats, list[Record], list[dict]]:
        stats, good, bad = SplitStats(), [], []
        quarantined: Counter[str] = Counter()
        records = read_split(
            split,
            self.input_root.join(split.relpath),
            self.cfg.input.text_field,
            self.cfg.input.max_record_bytes,
        )
        for rec in records:
            stats.records_in += 1
            if rec.reason is None:
                good.append(rec)
                continue
            quarantined[rec.reason] += 1
            bad.append(self._quarantine_row(rec))
        stats.quarantined = dict(quarantined)
        return stats, good, bad

    def _quarantine_row(self, rec: Record) -> dict:
        # The preview is redacted too: quarantine must not become a PII leak. The raw record
        # stays recoverable from its source via doc_id (path and byte offset) and length.
        preview = self.redactor.redact(rec.preview)[0] if self.redactor else rec.preview
        return {
            "doc_id": rec.doc_id,
            "reason": rec.reason,
            "detail": rec.detail,
            "offset": rec.offset,
            "length": rec.length,
            "preview": preview,
        }

    def _transform(self, split: InputSplit, records: list[Record], stats: SplitStats) -> dict:
        cols: dict[str, list] = {k: [] for k in DocumentTransform.COLUMNS}
        removed: Counter[str] = Counter()
        pii: Counter[str] = Counter()
        for rec in records:
            stats.chars_in += len(rec.text)
            text, reason, counts = self.transform.clean(rec.text)
            if text is None:
                removed[reason] += 1
                continue
            pii.update(counts)
            self.transform.append(cols, ordinal(split.index, rec.row), rec.doc_id, text)
            stats.chars_out += len(text)
        stats.documents = len(cols["text"])
        stats.removed, stats.pii = dict(removed), dict(pii)
        return cols

    def _write_clean(self, split: InputSplit, cols: dict) -> None:
        table = pa.Table.from_pydict(cols, schema=self.transform.schema())
        storage.write_parquet(self.work.join("clean", part_name(split.index) + ".parquet"), table)


# ---------------------------------------------------------------------------------------------
# Stage 2: duplicates across the whole dataset


def clean_parts(work: Location) -> list[Location]:
    return [e.location for e in storage.list_files(work.join("clean"), "*.parquet")]


def find_duplicates(cfg: IngestConfig, work: Location) -> dict[str, int]:
    """Decide which documents are dropped as duplicates; writes ``dedup.parquet``.

    Holds per-document keys (16 + 8*bands bytes), never texts; signatures are re-read only
    for the candidates of near-duplicate pairs, one part at a time.
    """
    out = work.join("dedup.parquet")
    if storage.exists(out):
        return _dedup_counts(storage.read_parquet(out))
    parts = clean_parts(work)
    keys = [storage.read_parquet(p, ["ordinal", "exact", "bands"]) for p in parts]

    def load_signatures(wanted: set[int]) -> dict[int, np.ndarray]:
        found = {}
        for part in parts:
            found.update(signatures_of(storage.read_parquet(part, ["ordinal", "minhash"]), wanted))
        return found

    dropped = decide_duplicates(cfg, pa.concat_tables(keys) if keys else None, load_signatures)
    result = pa.table(
        {
            "ordinal": pa.array(list(dropped), pa.int64()),
            "survivor": pa.array([s for s, _ in dropped.values()], pa.int64()),
            "reason": pa.array([r for _, r in dropped.values()], pa.string()),
        }
    )
    storage.write_parquet(out, result)
    return _dedup_counts(result)


def decide_duplicates(
    cfg: IngestConfig,
    keys: pa.Table | None,
    load_signatures: Callable[[set[int]], dict[int, np.ndarray]],
) -> dict[int, tuple[int, str]]:
    """Dropped ordinal -> (survivor, reason), from a table of ordinal, exact and bands."""
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


def sum_stats(items: list[SplitStats]) -> SplitStats:
    total = SplitStats()
    counters: dict[str, Counter[str]] = {
        "quarantined": Counter(),
        "removed": Counter(),
        "pii": Counter(),
    }
    for s in items:
        total.records_in += s.records_in
        total.documents += s.documents
        total.chars_in += s.chars_in
        total.chars_out += s.chars_out
        for name, counter in counters.items():
            counter.update(getattr(s, name))
    for name, counter in counters.items():
        setattr(total, name, dict(sorted(counter.items())))
    return total


def split_to_json(split: InputSplit) -> str:
    return json.dumps(asdict(split))


def split_from_json(raw: str) -> InputSplit:
    return InputSplit(**json.loads(raw))
