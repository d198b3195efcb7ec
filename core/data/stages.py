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
published (see ``jobs.ingest``). Stage 1 lives here; stage 2 in :mod:`core.data.dedup_stage`,
stages 3 and 4 in :mod:`core.data.tokenize_stage`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from core import faults, storage
from core.data.dedup import (
    MinHasher,
    band_hashes,
    lsh_params,
)
from core.data.pii import PiiRedactor, build_recognizers
from core.data.readers import InputSplit, Record, read_split
from core.data.text import clean_text, exact_key, quality_reason
from core.storage import Location
from schemas.ingest import IngestConfig

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
