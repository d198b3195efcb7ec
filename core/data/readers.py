"""Reading raw files into records, never dying on a bad one.

Work is planned as *splits*: a JSONL file is cut into byte ranges read in parallel (a split
owns the lines that start inside its range, like Hadoop's line splits); a Parquet or text
file is one split. Reading yields good records ``(doc_id, text)`` and quarantined ones with
a reason: ``invalid_json``, ``invalid_utf8``, ``missing_field``, ``not_text``, ``oversized``.
A line longer than the limit is skipped without being held in memory.

Record ids say where a record came from: ``path@byte_offset`` (JSONL), ``path#row``
(Parquet) or ``path`` (text).

Compressed files (``.gz``, ``.zst``, ``.bz2``, as most public corpora ship) are read as a
stream, decompressed on the fly, by the format their inner name says (``part.jsonl.gz`` is
JSONL); a JSONL record's offset is then in the decompressed bytes. Such a file is one split:
gzip and zstd streams cannot be entered mid-way, and bz2's blocks do not start on a byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from core.storage import FileEntry, Location

QUARANTINE_REASONS = ("invalid_json", "invalid_utf8", "missing_field", "not_text", "oversized")
_CHUNK = 1 << 20
COMPRESSIONS = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}


def compression_of(relpath: str) -> str | None:
    """The codec a file's last suffix names (pyarrow's name for it), or None."""
    lower = relpath.lower()
    return next((c for suffix, c in COMPRESSIONS.items() if lower.endswith(suffix)), None)


def _inner_name(relpath: str) -> str:
    """``part.jsonl.gz`` -> ``part.jsonl``."""
    return relpath[: relpath.rfind(".")] if compression_of(relpath) else relpath


@dataclass(frozen=True)
class InputSplit:
    """A unit of reading work: a byte range of one file."""

    index: int
    relpath: str
    format: str
    start: int
    end: int
    compression: str | None = None


@dataclass(frozen=True)
class Record:
    """A record read from a split: ``text`` is set for good ones, ``reason`` for bad ones."""

    doc_id: str
    row: int
    text: str | None = None
    reason: str | None = None
    detail: str = ""
    offset: int = 0
    length: int = 0
    preview: str = ""


def detect_format(relpath: str, configured: str) -> str:
    if configured != "auto":
        return configured
    lower = _inner_name(relpath).lower()
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if lower.endswith(".parquet"):
        return "parquet"
    return "text"


def plan_splits(
    files: list[FileEntry], configured_format: str, split_bytes: int
) -> list[InputSplit]:
    """Cut files into splits in a stable order (files sorted, ranges ascending)."""
    splits: list[InputSplit] = []
    for entry in files:
        fmt = detect_format(entry.relpath, configured_format)
        codec = compression_of(entry.relpath)
        if fmt != "jsonl" or entry.size <= split_bytes or codec:
            splits.append(InputSplit(len(splits), entry.relpath, fmt, 0, entry.size, codec))
            continue
        for start in range(0, entry.size, split_bytes):
            end = min(start + split_bytes, entry.size)
            splits.append(InputSplit(len(splits), entry.relpath, fmt, start, end))
    return splits


def read_split(
    split: InputSplit, location: Location, text_field: str, max_record_bytes: int
) -> Iterator[Record]:
    """Yield the records of one split (``location`` is the split's file)."""
    if split.compression and split.format == "parquet":
        detail = "a compressed Parquet file: Parquet compresses inside; store it uncompressed"
        yield _bad(split.relpath, 0, "not_text", detail, 0, split.end, b"")
    elif split.compression:
        yield from _read_compressed(split, location, text_field, max_record_bytes)
    elif split.format == "jsonl":
        yield from _read_jsonl(split, location, text_field, max_record_bytes)
    elif split.format == "parquet":
        yield from _read_parquet(split, location, text_field, max_record_bytes)
    else:
        yield from _read_text(split, location, max_record_bytes)


# ---------------------------------------------------------------------------------------------
# JSONL


def iter_lines(
    f: pa.NativeFile, start: int, end: int, limit: int
) -> Iterator[tuple[int, bytes | int]]:
    """Lines starting in ``[start, end)`` as ``(offset, bytes)``; a line longer than ``limit``
    is given as ``(offset, length)`` instead, without being buffered whole."""
    pos = start
    if start > 0:
        f.seek(start - 1)
        if f.read(1) != b"\n":  # inside a line that the previous split owns
            pos += _skip_past_newline(f)
    f.seek(pos)
    buf, k, eof = b"", 0, False
    while pos < end:
        i = buf.find(b"\n", k)
        if i < 0 and not eof:
            if len(buf) - k > limit + 1:
                length = len(buf) - k + _skip_past_newline(f)
                yield pos, length
                pos, buf, k = pos + length, b"", 0
                continue
            chunk = f.read(_CHUNK)
            buf, k, eof = buf[k:] + chunk, 0, not chunk
            continue
        stop = len(buf) if i < 0 else i + 1
        if stop == k:
            return
        line = buf[k:stop]
        yield pos, (line if len(line) <= limit + 1 else len(line))
        pos, k = pos + stop - k, stop


def _skip_past_newline(f: pa.NativeFile) -> int:
    """Read up to and including the next newline (or EOF); return the bytes consumed."""
    consumed = 0
    while True:
        chunk = f.read(_CHUNK)
        if not chunk:
            return consumed
        i = chunk.find(b"\n")
        if i >= 0:
            f.seek(f.tell() - len(chunk) + i + 1)
            return consumed + i + 1
        consumed += len(chunk)


def _read_jsonl(split: InputSplit, loc: Location, field: str, limit: int) -> Iterator[Record]:
    with loc.fs.open_input_file(loc.path) as f:
        for row, (offset, line) in enumerate(iter_lines(f, split.start, split.end, limit)):
            yield from _jsonl_record(f"{split.relpath}@{offset}", row, offset, line, field, limit)


def _read_compressed(split: InputSplit, loc: Location, field: str, limit: int) -> Iterator[Record]:
    with loc.fs.open_input_stream(loc.path, compression=split.compression) as f:
        if split.format != "jsonl":  # one text document: at most limit bytes are held
            raw = f.read(limit + 1)
            yield _text_record(split.relpath, raw, limit, len(raw) + _drain(f))
            return
        for row, (offset, line) in enumerate(iter_stream_lines(f, limit)):
            yield from _jsonl_record(f"{split.relpath}@{offset}", row, offset, line, field, limit)


def _drain(f: pa.NativeFile) -> int:
    n = 0
    while chunk := f.read(_CHUNK):
        n += len(chunk)
    return n


def iter_stream_lines(f: pa.NativeFile, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """:func:`iter_lines` for a stream that cannot seek (a decompressing one): lines as
    ``(offset, bytes)``, one longer than ``limit`` as ``(offset, length)``, never held whole."""
    pos, buf, k, skipped = 0, b"", 0, 0  # skipped: bytes of an oversized line so far
    while chunk := f.read(_CHUNK):
        buf, k = buf[k:] + chunk, 0
        while (i := buf.find(b"\n", k)) >= 0:
            line = buf[k : i + 1]
            length = skipped + len(line)
            yield pos, (line if not skipped and len(line) <= limit + 1 else length)
            pos, k, skipped = pos + length, i + 1, 0
        if len(buf) - k > limit + 1:  # an oversized line: count it, hold none of it
            skipped, buf, k = skipped + len(buf) - k, b"", 0
    if skipped or k < len(buf):
        rest = buf[k:]
        yield pos, (rest if not skipped and len(rest) <= limit + 1 else skipped + len(rest))


def _jsonl_record(
    doc_id: str, row: int, offset: int, line: bytes | int, field: str, limit: int
) -> Iterator[Record]:
    if isinstance(line, int):
        yield _bad(doc_id, row, "oversized", f"{line} bytes > {limit}", offset, line, b"")
    elif line.strip():  # a blank line (often the last) is no record
        yield _parse_json_line(doc_id, row, line, field, offset)


def _parse_json_line(doc_id: str, row: int, line: bytes, field: str, offset: int) -> Record:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return _bad(doc_id, row, "invalid_utf8", str(e), offset, len(line), line)
    try:
        obj = json.loads(decoded)
    except json.JSONDecodeError as e:
        return _bad(doc_id, row, "invalid_json", str(e), offset, len(line), line)
    if not isinstance(obj, dict) or field not in obj:
        return _bad(doc_id, row, "missing_field", f"no {field!r} field", offset, len(line), line)
    value = obj[field]
    if not isinstance(value, str):
        detail = f"{field!r} is {type(value).__name__}, not a string"
        return _bad(doc_id, row, "not_text", detail, offset, len(line), line)
    return Record(doc_id, row, text=value, offset=offset, length=len(line))


def _bad(
    doc_id: str, row: int, reason: str, detail: str, offset: int, length: int, raw: bytes
) -> Record:
    preview = raw[:1024].decode("utf-8", errors="replace")
    return Record(doc_id, row, None, reason, detail[:500], offset, length, preview)


# ---------------------------------------------------------------------------------------------
# Parquet and plain text


def _read_parquet(split: InputSplit, loc: Location, field: str, limit: int) -> Iterator[Record]:
    with loc.fs.open_input_file(loc.path) as f:
        pf = pq.ParquetFile(f)
        if field not in pf.schema_arrow.names:
            yield _bad(split.relpath, 0, "missing_field", f"no column {field!r}", 0, split.end, b"")
            return
        row = 0
        for batch in pf.iter_batches(columns=[field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                yield _parquet_record(split.relpath, row, value, field, limit)
                row += 1


def _parquet_record(relpath: str, row: int, value: object, field: str, limit: int) -> Record:
    doc_id = f"{relpath}#{row}"
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return _bad(doc_id, row, "invalid_utf8", str(e), row, len(value), value)
    if not isinstance(value, str):
        detail = f"{field!r} is {type(value).__name__}, not a string"
        return _bad(doc_id, row, "not_text", detail, row, 0, repr(value).encode())
    size = len(value.encode("utf-8"))
    if size > limit:
        return _bad(doc_id, row, "oversized", f"{size} bytes > {limit}", row, size, b"")
    return Record(doc_id, row, text=value, offset=row, length=size)


def _read_text(split: InputSplit, loc: Location, limit: int) -> Iterator[Record]:
    if split.end > limit:
        detail = f"{split.end} bytes > {limit}"
        yield _bad(split.relpath, 0, "oversized", detail, 0, split.end, b"")
        return
    # No codec: pyarrow would otherwise guess one from the name ("detect").
    with loc.fs.open_input_stream(loc.path, compression=None) as f:
        raw = f.read()
    yield _text_record(split.relpath, raw, limit, len(raw))


def _text_record(relpath: str, raw: bytes, limit: int, size: int) -> Record:
    if size > limit:
        return _bad(relpath, 0, "oversized", f"{size} bytes > {limit}", 0, size, b"")
    try:
        return Record(relpath, 0, text=raw.decode("utf-8"), length=len(raw))
    except UnicodeDecodeError as e:
        return _bad(relpath, 0, "invalid_utf8", str(e), 0, len(raw), raw)
